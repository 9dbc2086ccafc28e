//! The dashboard's pages: the layout every page shares, and one handler per address. Handlers read
//! published rounds through the same use cases as the API (`app::rounds`) and render them; none
//! computes a figure. Every figure on a page is a released cell's own text, marked
//! `<span class="figure" data-cell="SCOPE|GROUP|CRITERION">` so that tests can hold it against the API.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Form;
use kwm_schemas::criteria::{Criterion, CriterionKind, Direction};
use kwm_schemas::release::{CellStatus, Period, PeriodSpan, Release, ReleaseCell, ReleaseScope};
use kwm_schemas::{AgbCode, MunicipalityCode, RegionConfig, Role};
use maud::{html, Markup, PreEscaped, DOCTYPE};
use serde::Deserialize;

use crate::app::rounds::{self, CachedRelease};
use crate::http::dashboard::charts::{self, HeatCell, IntervalRow, Point, TrendPoint};
use crate::http::dashboard::i18n::Lang;
use crate::http::dashboard::session::{see_other, Viewer};
use crate::http::dashboard::{PageError, PAGE_CSP};
use crate::http::forbidden::SessionRefusal;
use crate::http::routes::releases::{download, Format};
use crate::http::startup::AppState;

/// A page's query parameters, or their defaults when they do not parse (an old bookmark, an address
/// edited by hand): the page then shows the newest period and the total rather than an error.
#[derive(Debug)]
pub struct Params<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Default> axum::extract::FromRequestParts<S>
    for Params<T>
{
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self(
            Query::<T>::from_request_parts(parts, state)
                .await
                .map(|Query(q)| q)
                .unwrap_or_default(),
        ))
    }
}

/// A page as a response: HTML under the dashboard's policy.
pub fn html(status: StatusCode, body: Markup) -> Response {
    (
        status,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(PAGE_CSP),
            ),
        ],
        body.into_string(),
    )
        .into_response()
}

/// A handler's answer in the request's language.
fn answer(lang: Lang, result: Result<Response, PageError>) -> Response {
    result.unwrap_or_else(|e| e.into_response_in(lang))
}

/// The frame of every page: header with the person's places, the language switch and sign-out; the
/// page; a footer.
fn layout(lang: Lang, title: &str, viewer: Option<&Viewer>, here: &str, main: Markup) -> Markup {
    let nav: Vec<(String, &str)> = match viewer.map(|v| v.caller.role) {
        Some(Role::Municipality) => vec![
            (
                viewer.map(Viewer::home).unwrap_or_default(),
                lang.t("Mijn gemeente", "My municipality"),
            ),
            ("/uitleg".into(), lang.t("Uitleg", "About the figures")),
        ],
        Some(Role::Region) => vec![
            ("/regio".into(), lang.t("Regio", "Region")),
            ("/regio/rondes".into(), lang.t("Rondes", "Rounds")),
            (
                "/regio/privacy".into(),
                lang.t("Privacybudget", "Privacy budget"),
            ),
            ("/uitleg".into(), lang.t("Uitleg", "About the figures")),
        ],
        Some(Role::Provider) => vec![
            ("/aanbieder".into(), lang.t("Mijn scores", "My scores")),
            ("/uitleg".into(), lang.t("Uitleg", "About the figures")),
        ],
        _ => vec![("/uitleg".into(), lang.t("Uitleg", "About the figures"))],
    };
    let other = lang.other();
    let switch = format!("/taal?taal={}&terug={}", other.code(), url_encode(here));
    html! {
        (DOCTYPE)
        html lang=(lang.code()) {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Kwaliteitsmonitor" }
                link rel="stylesheet" href="/static/dashboard.css";
            }
            body {
                a class="skip" href="#inhoud" { (lang.t("Naar de inhoud", "Skip to content")) }
                header class="top" {
                    a class="brand" href="/" { "Kwaliteitsmonitor" }
                    nav aria-label=(lang.t("Hoofdmenu", "Main menu")) {
                        ul {
                            @for (href, name) in &nav {
                                li {
                                    @if href.as_str() == here.split('?').next().unwrap_or(here) {
                                        a href=(href) aria-current="page" { (name) }
                                    } @else {
                                        a href=(href) { (name) }
                                    }
                                }
                            }
                        }
                    }
                    div class="tools" {
                        a id="language-switch" href=(switch) lang=(other.code()) hreflang=(other.code()) {
                            (lang.t("English", "Nederlands"))
                        }
                        @if let Some(v) = viewer {
                            form id="sign-out" method="post" action="/uitloggen" {
                                input type="hidden" name="csrf" value=(v.csrf);
                                button type="submit" id="sign-out-button" { (lang.t("Uitloggen", "Sign out")) }
                            }
                        }
                    }
                }
                main id="inhoud" { (main) }
                footer {
                    p {
                        (lang.t(
                            "Alle cijfers zijn geaggregeerd, afgerond en met ruis beschermd: geen cijfer gaat over één kind.",
                            "Every figure is aggregated, rounded and protected by noise: no figure is about one child.",
                        ))
                        " "
                        a href="/uitleg" { (lang.t("Hoe lees ik de cijfers?", "How do I read the figures?")) }
                    }
                }
            }
        }
    }
}

fn url_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"/-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The sign-in page.
pub fn sign_in(lang: Lang, region: &RegionConfig, csrf: &str, error: Option<&str>) -> Markup {
    let main = html! {
        h1 { (lang.t("Inloggen", "Sign in")) }
        p class="lead" {
            (lang.t("Kwaliteitsmonitor jeugdhulp van ", "Youth care quality monitor of "))
            (region.name) "."
        }
        @if let Some(e) = error {
            p class="error" role="alert" { (e) }
        }
        form id="sign-in" method="post" action="/inloggen" class="card narrow" {
            input type="hidden" name="csrf" value=(csrf);
            label for="token" { (lang.t("Uw token", "Your token")) }
            input type="password" name="token" id="token" autocomplete="off" required
                aria-describedby="token-hint";
            p id="token-hint" class="hint" {
                (lang.t(
                    "Het token dat u van de beheerder van de monitor kreeg. Het blijft op deze server; uw browser krijgt alleen een sessiecookie.",
                    "The token the monitor's operator gave you. It stays on this server; your browser only gets a session cookie.",
                ))
            }
            button type="submit" id="sign-in-button" { (lang.t("Inloggen", "Sign in")) }
        }
    };
    layout(lang, lang.t("Inloggen", "Sign in"), None, "/", main)
}

/// An error page: what went wrong, and the way back.
pub fn error_page(lang: Lang, title: &str, detail: &str) -> Markup {
    let main = html! {
        h1 { (title) }
        p class="error" role="alert" { (detail) }
        p { a href="/" { (lang.t("Naar de startpagina", "To the start page")) } }
    };
    layout(lang, title, None, "/", main)
}

/// Content that scrolls sideways on a narrow screen: a named region the keyboard can reach.
fn scrolling(label: &str, content: Markup) -> Markup {
    html! {
        div class="scroll" role="region" aria-label=(label) tabindex="0" { (content) }
    }
}

/// A table with a header row of `head`, scrolling sideways on a narrow screen.
fn table(label: &str, id: &str, head: &[&str], rows: Markup) -> Markup {
    scrolling(
        label,
        html! {
            table id=(id) {
                thead { tr { @for h in head { th scope="col" { (h) } } } }
                tbody { (rows) }
            }
        },
    )
}

// ---------------------------------------------------------------------------------------------
// Figures

/// The criterion's label in `lang`, with its national number where it has one.
fn criterion_label(lang: Lang, c: &Criterion) -> String {
    let label = lang.pick(&c.label_nl, &c.label_en);
    match &c.national_number {
        Some(n) => format!("{n} {label}"),
        None => label.to_string(),
    }
}

fn unit(c: &Criterion) -> &'static str {
    match c.kind {
        CriterionKind::Percentage => "%",
        _ => "",
    }
}

fn direction(lang: Lang, c: &Criterion) -> &'static str {
    match c.direction {
        Direction::HigherIsBetter => lang.t("hoger is beter", "higher is better"),
        Direction::LowerIsBetter => lang.t("lager is beter", "lower is better"),
        Direction::Neutral => "",
    }
}

/// Why a cell is held back, in a word or two (where room is short: the heat map).
fn held_back_short(lang: Lang, status: CellStatus) -> &'static str {
    match status {
        CellStatus::Suppressed => lang.t("te weinig", "too few"),
        CellStatus::Unreliable => lang.t("onzeker", "uncertain"),
        CellStatus::Published => "",
    }
}

/// Why a cell is held back, in words.
fn held_back(lang: Lang, status: CellStatus) -> &'static str {
    match status {
        CellStatus::Suppressed => lang.t("te weinig kinderen", "too few children"),
        CellStatus::Unreliable => lang.t("te onzeker", "too uncertain"),
        CellStatus::Published => "",
    }
}

fn row_key(row: &kwm_schemas::release::ReleaseRow) -> String {
    row.target_group
        .as_ref()
        .map(|c| c.as_str().to_string())
        .unwrap_or_else(|| "total".into())
}

fn find_cell<'a>(release: &'a Release, group: &str, criterion: &str) -> Option<&'a ReleaseCell> {
    release
        .rows
        .iter()
        .filter(|r| r.provider.is_none())
        .find(|r| row_key(r) == group)
        .and_then(|r| r.cells.iter().find(|c| c.criterion == criterion))
}

fn point(lang: Lang, cell: &ReleaseCell) -> Option<Point> {
    let v = cell.value.filter(|_| cell.status.is_published())?;
    Some(Point {
        tenths: v.tenths(),
        low: cell.ci95_low.map(|f| f.tenths()),
        high: cell.ci95_high.map(|f| f.tenths()),
        text: lang.figure(v),
    })
}

/// A cell as text: the figure (marked for tests) with its unit and interval, or why it is held back.
fn figure(
    lang: Lang,
    scope: &str,
    group: &str,
    c: &Criterion,
    cell: Option<&ReleaseCell>,
) -> Markup {
    let key = format!("{scope}|{group}|{}", c.code);
    match cell {
        Some(cell) if cell.status.is_published() => {
            let Some(v) = cell.value else {
                return html! { span class="heldback" data-cell=(key) { "–" } };
            };
            html! {
                span class="figure" data-cell=(key) { (lang.figure(v)) } (unit(c))
                @if let (Some(lo), Some(hi)) = (cell.ci95_low, cell.ci95_high) {
                    " " span class="interval" title=(lang.t("95%-interval", "95% interval")) {
                        "(" (lang.figure(lo)) "–" (lang.figure(hi)) ")"
                    }
                }
                @if cell.exact {
                    " " span class="exact" { (lang.t("exact, eigen gegevens", "exact, own data")) }
                }
                @if let Some(n) = cell.count {
                    " " span class="count" { "n≈" (lang.count(n)) }
                }
            }
        }
        Some(cell) => html! {
            span class="heldback" data-cell=(key) data-status=(cell.status.as_str()) {
                (held_back(lang, cell.status))
            }
        },
        None => html! { span class="heldback" data-cell=(key) { "–" } },
    }
}

/// The ledger's rounds as the pages see them: which periods are published and which release is the
/// newest of each scope and period. The releases themselves come from the release cache.
#[derive(Debug)]
pub struct Ledger {
    rounds: Vec<crate::store::RoundRecord>,
    /// Names this state of the ledger (its round ids), for the page cache.
    fingerprint: u64,
}

/// How long a read of the ledger serves pages before it is read again. Rounds are published a few
/// times a year; a round published on another instance shows here within this time (one published
/// through this instance's form at once).
const LEDGER_TTL: std::time::Duration = std::time::Duration::from_secs(1);
/// Rendered page contents kept; when full, the cache starts over.
const PAGE_CACHE_CAPACITY: usize = 512;

/// What the dashboard keeps between requests: the last read of the ledger, and the contents of pages
/// rendered from it (keyed by the ledger's state, so a new round renders anew). Only published
/// figures are kept, and a page is taken from it only after the viewer's access is checked.
#[derive(Debug, Default)]
pub struct PageCache {
    ledger: std::sync::Mutex<Option<(std::time::Instant, Arc<Ledger>)>>,
    pages: std::sync::Mutex<std::collections::HashMap<String, Arc<str>>>,
}

impl PageCache {
    /// Forgets the ledger read, after this instance published a round.
    pub fn invalidate(&self) {
        *self
            .ledger
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }

    async fn ledger(&self, state: &AppState) -> Result<Arc<Ledger>, PageError> {
        if let Some((at, l)) = self
            .ledger
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
        {
            if at.elapsed() < LEDGER_TTL {
                return Ok(l.clone());
            }
        }
        let rounds = state.store.list_rounds(None).await?;
        let mut h = rustc_hash::FxHasher::default();
        for r in &rounds {
            std::hash::Hash::hash(&r.id, &mut h);
        }
        let fresh = Arc::new(Ledger {
            rounds,
            fingerprint: std::hash::Hasher::finish(&h),
        });
        *self
            .ledger
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some((std::time::Instant::now(), fresh.clone()));
        Ok(fresh)
    }

    /// The contents under `key` rendered from `ledger`, rendered now if not kept.
    async fn page<F, Fut>(
        &self,
        ledger: &Ledger,
        key: String,
        render: F,
    ) -> Result<Arc<str>, PageError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Markup, PageError>>,
    {
        let key = format!("{:016x}|{key}", ledger.fingerprint);
        if let Some(hit) = self
            .pages
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&key)
        {
            return Ok(hit.clone());
        }
        let body: Arc<str> = render().await?.into_string().into();
        let mut pages = self
            .pages
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if pages.len() >= PAGE_CACHE_CAPACITY {
            pages.clear();
        }
        pages.insert(key, body.clone());
        Ok(body)
    }
}

impl Ledger {
    async fn read(state: &AppState) -> Result<Arc<Self>, PageError> {
        state.dashboard.ledger(state).await
    }

    /// Every published period, oldest first (every round publishes every scope).
    fn periods(&self) -> Vec<Period> {
        let set: BTreeSet<Period> = self
            .rounds
            .iter()
            .filter_map(|r| r.period.parse().ok())
            .collect();
        let mut v: Vec<Period> = set.into_iter().collect();
        v.sort_by_key(|p| (p.year(), span_rank(p.span())));
        v
    }

    /// The release of `scope` in the newest version of `period`'s round.
    async fn release(
        &self,
        state: &AppState,
        scope: ReleaseScope,
        period: Period,
    ) -> Result<Arc<CachedRelease>, PageError> {
        let (key, text) = (scope.to_string(), period.to_string());
        let newest = self
            .rounds
            .iter()
            .filter(|r| r.period == text)
            .max_by_key(|r| r.version)
            .and_then(|r| r.releases.iter().find(|(s, _)| *s == key))
            .map(|(_, id)| *id);
        if let Some(id) = newest {
            if let Some(hit) = state.releases.get(state.store.as_ref(), id).await? {
                return Ok(hit);
            }
        }
        // Not in this read of the ledger: the use case says why (not released, planned when).
        Ok(rounds::latest_release(
            state.store.as_ref(),
            &state.releases,
            &state.region,
            scope,
            period,
        )
        .await?)
    }
}

fn span_rank(s: PeriodSpan) -> u8 {
    match s {
        PeriodSpan::Year => 0,
        PeriodSpan::Half(h) => h,
        PeriodSpan::Quarter(q) => 2 + q,
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct PeriodQuery {
    periode: Option<String>,
    /// The provider's audit page: entries after this sequence number.
    na: Option<i64>,
    /// The target group shown in detail (`total` when absent or unknown).
    doelgroep: Option<String>,
}

/// The group to show in detail: the one asked for if the release has it, else the total.
fn chosen_group(q: &PeriodQuery, groups: &[(String, String)]) -> String {
    q.doelgroep
        .as_deref()
        .filter(|g| groups.iter().any(|(k, _)| k == g))
        .unwrap_or("total")
        .to_string()
}

/// The choice of the group shown in detail: a small form (no script), compact on a phone.
fn group_nav(
    lang: Lang,
    r: &Release,
    base: &str,
    period: Period,
    groups: &[(String, String)],
    current: &str,
) -> Markup {
    html! {
        form class="groups" method="get" action=(base) {
            input type="hidden" name="periode" value=(period);
            label for="doelgroep" { (lang.t("Doelgroep", "Target group")) }
            div class="pick" {
                select id="doelgroep" name="doelgroep" {
                    @for (key, _) in groups {
                        option value=(key) selected[key == current] { (group_label(lang, r, key)) }
                    }
                }
                button type="submit" id="group-button" { (lang.t("Tonen", "Show")) }
            }
        }
    }
}

/// Every group by every criterion, the reader's figures only: the whole release at a glance.
fn overview(
    lang: Lang,
    r: &Release,
    scope: &str,
    name: &str,
    cells: &dyn Fn(&str, &str) -> Option<ReleaseCell>,
    groups: &[(String, String)],
) -> Markup {
    let caption = format!(
        "{name}: {}",
        lang.t(
            "alle doelgroepen en criteria",
            "every target group and criterion"
        )
    );
    html! {
        section aria-labelledby="overview" {
            h2 id="overview" { (lang.t("Alle doelgroepen", "Every target group")) }
            (scrolling(&caption, html! {
                table class="overview" {
                    caption { (caption) }
                    thead { tr {
                        th scope="col" { (lang.t("Doelgroep", "Target group")) }
                        @for c in &r.criteria { th scope="col" { (criterion_label(lang, c)) } }
                    } }
                    tbody {
                        @for (key, _) in groups {
                            tr {
                                th scope="row" { (group_label(lang, r, key)) }
                                @for c in &r.criteria {
                                    td { (figure(lang, scope, key, c, cells(key, &c.code).as_ref())) }
                                }
                            }
                        }
                    }
                } }))
        }
    }
}

/// The period asked for, or the newest full year published (else the newest period).
fn chosen(q: &PeriodQuery, published: &[Period]) -> Result<Option<Period>, PageError> {
    if let Some(text) = q.periode.as_deref().filter(|t| !t.is_empty()) {
        let p: Period = text.parse().map_err(|_| PageError::NotFound {
            nl: format!("{text:?} is geen periode: gebruik een jaar (2025), halfjaar (2025-H1) of kwartaal (2025-Q3)."),
            en: format!("{text:?} is not a period: use a year (2025), half-year (2025-H1) or quarter (2025-Q3)."),
        })?;
        return Ok(Some(p));
    }
    Ok(published
        .iter()
        .rev()
        .find(|p| p.span() == PeriodSpan::Year)
        .or(published.last())
        .copied())
}

fn period_nav(lang: Lang, base: &str, published: &[Period], current: Period) -> Markup {
    html! {
        nav class="periods" aria-label=(lang.t("Periode", "Period")) {
            span { (lang.t("Periode:", "Period:")) }
            ul {
                @for p in published {
                    li {
                        @if *p == current {
                            a href={(base) "?periode=" (p)} aria-current="page" { (p) }
                        } @else {
                            a href={(base) "?periode=" (p)} { (p) }
                        }
                    }
                }
            }
        }
    }
}

fn release_note(lang: Lang, r: &Release) -> Markup {
    html! {
        p class="meta" {
            (lang.t("Ronde ", "Round ")) (r.period)
            @if let Some(v) = r.version { ", " (lang.t("versie ", "version ")) (v) }
            @if let Some(at) = r.created_at { ", " (lang.t("gepubliceerd ", "published ")) (lang.moment(at)) }
            ". " (lang.t("Gegevens tot en met ", "Data up to and including ")) (r.as_of) "."
        }
    }
}

fn downloads(lang: Lang, base: &str, period: Period) -> Markup {
    html! {
        p class="downloads" {
            (lang.t("Download: ", "Download: "))
            a href={(base) "/download/" (period) ".csv"} download { "CSV" }
            " · "
            a href={(base) "/download/" (period) ".xlsx"} download { "XLSX (Excel)" }
        }
    }
}

fn legend(lang: Lang) -> Markup {
    html! {
        details class="legend" {
            summary { (lang.t("Zo leest u de cijfers", "How to read the figures")) }
            ul {
                li { (lang.t("Tussen haakjes: het 95%-interval. De werkelijke waarde ligt daar met 95% zekerheid binnen.", "In brackets: the 95% interval. The true value lies within it with 95% certainty.")) }
                li { "n≈ " (lang.t("het (afgeronde) aantal trajecten waar het cijfer over gaat.", "the (rounded) number of trajectories the figure is about.")) }
                li { strong { (held_back(lang, CellStatus::Suppressed)) } ": " (lang.t("dit cijfer gaat over te weinig kinderen om het te tonen zonder dat iemand herkenbaar wordt.", "this figure is about too few children to show without anyone becoming recognisable.")) }
                li { strong { (held_back(lang, CellStatus::Unreliable)) } ": " (lang.t("de onzekerheid is zo groot dat het cijfer niets zou zeggen; het wordt niet getoond.", "the uncertainty is so large that the figure would say nothing; it is not shown.")) }
            }
            p { a href="/uitleg" { (lang.t("Meer uitleg", "More about the figures")) } }
        }
    }
}

fn rates(criteria: &[Criterion]) -> impl Iterator<Item = &Criterion> {
    criteria.iter().filter(|c| c.kind != CriterionKind::Count)
}

fn volumes(criteria: &[Criterion]) -> impl Iterator<Item = &Criterion> {
    criteria.iter().filter(|c| c.kind == CriterionKind::Count)
}

/// The rows of a release to show as groups: the total first, then every target group.
fn groups(r: &Release) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let rows = r.rows.iter().filter(|row| row.provider.is_none());
    for row in rows.clone().filter(|row| row.target_group.is_none()) {
        out.push((row_key(row), row.label_nl.clone()));
    }
    for row in rows.filter(|row| row.target_group.is_some()) {
        out.push((row_key(row), row.label_nl.clone()));
    }
    out
}

fn group_label(lang: Lang, r: &Release, key: &str) -> String {
    r.rows
        .iter()
        .find(|row| row.provider.is_none() && row_key(row) == key)
        .map(|row| lang.pick(&row.label_nl, &row.label_en).to_string())
        .unwrap_or_else(|| key.to_string())
}

/// One group's comparison: a chart of the rates and a table of every criterion.
#[allow(clippy::too_many_arguments)]
fn comparison(
    lang: Lang,
    idx: usize,
    own_scope: &str,
    own_name: &str,
    own_rows: &dyn Fn(&str, &str) -> Option<ReleaseCell>,
    bench: &Release,
    group: &str,
) -> Markup {
    let criteria = &bench.criteria;
    let label = group_label(lang, bench, group);
    let region_name = lang.t("Regio", "Region");
    let rows: Vec<IntervalRow> = rates(criteria)
        .map(|c| {
            let cell = own_rows(group, &c.code);
            let own_point = match &cell {
                Some(cell) if cell.status.is_published() => {
                    point(lang, cell).ok_or_else(|| "–".to_string())
                }
                Some(cell) => Err(held_back(lang, cell.status).to_string()),
                None => Err("–".to_string()),
            };
            IntervalRow {
                label: criterion_label(lang, c),
                own: own_point,
                benchmark: find_cell(bench, group, &c.code).and_then(|cell| point(lang, cell)),
                lower: c.lower * 10,
                upper: c.upper * 10,
            }
        })
        .collect();
    let heading_id = format!("groep-{idx}");
    html! {
        section class="group" aria-labelledby=(heading_id) {
            h3 id=(heading_id) { (label) }
            div class="scroll" role="region" aria-label={(label) ": " (lang.t("grafiek", "chart"))} tabindex="0" {
                (charts::interval_chart(lang, &format!("chart-{idx}"), &format!("{label}: {own_name} {} {region_name}", lang.t("naast", "beside")), own_name, region_name, &rows))
            }
            div class="scroll" role="region" aria-label={(label) ": " (lang.t("tabel", "table"))} tabindex="0" {
                table {
                    caption { (label) ": " (own_name) " " (lang.t("en regio", "and region")) }
                    thead { tr {
                        th scope="col" { (lang.t("Criterium", "Criterion")) }
                        th scope="col" { (own_name) }
                        th scope="col" { (region_name) }
                    } }
                    tbody {
                        @for c in criteria {
                            tr {
                                th scope="row" {
                                    (criterion_label(lang, c))
                                    @let d = direction(lang, c);
                                    @if !d.is_empty() { br; span class="hint" { (d) } }
                                }
                                td { (figure(lang, own_scope, group, c, own_rows(group, &c.code).as_ref())) }
                                td { (figure(lang, "region", group, c, find_cell(bench, group, &c.code))) }
                            }
                        }
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Municipality

fn refuse(viewer: &Viewer, nl: String, en: String) -> PageError {
    PageError::Forbidden {
        nl,
        en,
        refusal: Some(SessionRefusal {
            key: viewer.session_hash,
            caller: viewer.caller.clone(),
        }),
    }
}

fn municipality_of(
    state: &AppState,
    viewer: &Viewer,
    code: &str,
) -> Result<(MunicipalityCode, String), PageError> {
    let not_found = || PageError::NotFound {
        nl: format!("{code} is geen gemeente van regio {}.", state.region.name),
        en: format!(
            "{code} is not a municipality of region {}.",
            state.region.name
        ),
    };
    let m: MunicipalityCode = code.parse().map_err(|_| not_found())?;
    let name = state
        .region
        .municipality(m)
        .map(|m| m.name.clone())
        .ok_or_else(not_found)?;
    if viewer
        .caller
        .may_read_release_scope(&m.to_string())
        .is_err()
    {
        return Err(refuse(
            viewer,
            format!(
                "U bent ingelogd voor {}; de cijfers van {name} zijn niet voor u.",
                viewer.municipality().unwrap_or("een andere rol")
            ),
            format!(
                "You are signed in for {}; the figures of {name} are not yours to see.",
                viewer.municipality().unwrap_or("another role")
            ),
        ));
    }
    Ok((m, name))
}

fn nothing_yet(lang: Lang) -> Markup {
    html! {
        p class="notice" role="status" {
            (lang.t(
                "Er is nog geen ronde gepubliceerd. Zodra de regio een ronde publiceert, staan de cijfers hier.",
                "No round has been published yet. As soon as the region publishes one, the figures are here.",
            ))
        }
    }
}

/// `GET /gemeente/{code}`: a municipality's figures against the region's, per target group, with
/// volumes, trends and downloads.
pub async fn municipality(
    State(state): State<AppState>,
    lang: Lang,
    viewer: Viewer,
    Path(code): Path<String>,
    Params(q): Params<PeriodQuery>,
) -> Response {
    answer(
        lang,
        municipality_page(&state, lang, &viewer, &code, &q).await,
    )
}

async fn municipality_page(
    state: &AppState,
    lang: Lang,
    viewer: &Viewer,
    code: &str,
    q: &PeriodQuery,
) -> Result<Response, PageError> {
    let (m, name) = municipality_of(state, viewer, code)?;
    let scope = ReleaseScope::Municipality(m);
    let base = format!("/gemeente/{m}");
    let ledger = Ledger::read(state).await?;
    let published = ledger.periods();
    let title = format!("{name} ({m})");
    let Some(period) = chosen(q, &published)? else {
        let main = html! { h1 { (title) } (nothing_yet(lang)) };
        return Ok(html(
            StatusCode::OK,
            layout(lang, &title, Some(viewer), &base, main),
        ));
    };
    let own = ledger.release(state, scope, period).await?;
    let all_groups = groups(&own.release);
    let group = chosen_group(q, &all_groups);
    // The contents are the same for everyone who may see them: rendered once per state of the
    // ledger, period, group and language.
    let key = format!("gemeente|{m}|{period}|{group}|{}", lang.code());
    let content = state
        .dashboard
        .page(&ledger, key, || async {
            let bench = ledger.release(state, ReleaseScope::Region, period).await?;
            let scope_key = m.to_string();
            let own_cells = |g: &str, c: &str| find_cell(&own.release, g, c).cloned();
            let trend =
                trend_section(state, &ledger, lang, scope, &name, &published, period).await?;
            Ok(html! {
                h1 { (title) }
                (period_nav(lang, &base, &published, period))
                (release_note(lang, &own.release))
                (downloads(lang, &base, period))
                (legend(lang))
                section class="volumes" aria-labelledby="volumes" {
                    h2 id="volumes" { (lang.t("Aantallen trajecten", "Numbers of trajectories")) }
                    div class="cards" {
                        @for c in volumes(&bench.release.criteria) {
                            div class="card" {
                                h3 { (criterion_label(lang, c)) }
                                p class="big" { (figure(lang, &scope_key, "total", c, find_cell(&own.release, "total", &c.code))) }
                                p class="hint" { (lang.t("Regio: ", "Region: ")) (figure(lang, "region", "total", c, find_cell(&bench.release, "total", &c.code))) }
                            }
                        }
                    }
                }
                section id="detail" aria-labelledby="detail-heading" {
                    h2 id="detail-heading" { (lang.t("Vergeleken met de regio", "Compared with the region")) }
                    (group_nav(lang, &bench.release, &base, period, &all_groups, &group))
                    (comparison(lang, 0, &scope_key, &name, &own_cells, &bench.release, &group))
                }
                (overview(lang, &bench.release, &scope_key, &name, &own_cells, &all_groups))
                (trend)
                section class="privacy" aria-labelledby="privacy" {
                    h2 id="privacy" { (lang.t("Privacy", "Privacy")) }
                    p { (lang.pick(&own.release.privacy.guarantee_nl, &own.release.privacy.guarantee_en)) }
                }
            })
        })
        .await?;
    let main = PreEscaped(content.to_string());
    let here = format!("{base}?periode={period}");
    Ok(html(
        StatusCode::OK,
        layout(lang, &title, Some(viewer), &here, main),
    ))
}

/// The trend of every rate over the published periods of the same kind as `period` (years with years):
/// the total row of `scope` against the region's.
async fn trend_section(
    state: &AppState,
    ledger: &Ledger,
    lang: Lang,
    scope: ReleaseScope,
    name: &str,
    published: &[Period],
    period: Period,
) -> Result<Markup, PageError> {
    let same_kind: Vec<Period> = published
        .iter()
        .filter(|p| std::mem::discriminant(&p.span()) == std::mem::discriminant(&period.span()))
        .copied()
        .collect();
    if same_kind.len() < 2 {
        return Ok(html! {});
    }
    let mut pairs = Vec::new();
    for p in &same_kind {
        let own = ledger.release(state, scope, *p).await?;
        let bench = ledger.release(state, ReleaseScope::Region, *p).await?;
        pairs.push((*p, own, bench));
    }
    let criteria = pairs[0].2.release.criteria.clone();
    Ok(html! {
        section class="trend" aria-labelledby="trend" {
            h2 id="trend" { (lang.t("Verloop over de perioden", "Over the periods")) }
            div class="trend-grid" {
                @for (i, c) in rates(&criteria).enumerate() {
                    @let points: Vec<TrendPoint> = pairs.iter().map(|(p, own, bench)| TrendPoint {
                        period: p.to_string(),
                        own: find_cell(&own.release, "total", &c.code).and_then(|cell| point(lang, cell)),
                        benchmark: find_cell(&bench.release, "total", &c.code).and_then(|cell| point(lang, cell)),
                    }).collect();
                    figure class="trend-item" {
                        (charts::trend_chart(lang, &format!("trend-{i}"), &criterion_label(lang, c), name, lang.t("Regio", "Region"), c.lower * 10, c.upper * 10, &points))
                        figcaption { (criterion_label(lang, c)) (if unit(c).is_empty() { String::new() } else { format!(" ({})", unit(c)) }) }
                    }
                }
            }
        }
    })
}

#[derive(Debug, Deserialize)]
pub struct MunicipalityFile {
    code: String,
    file: String,
}

/// `GET /gemeente/{code}/download/{period}.{csv|xlsx}`.
pub async fn municipality_download(
    State(state): State<AppState>,
    lang: Lang,
    viewer: Viewer,
    Path(p): Path<MunicipalityFile>,
) -> Response {
    let result = async {
        let (m, _) = municipality_of(&state, &viewer, &p.code)?;
        release_file(&state, ReleaseScope::Municipality(m), &p.file).await
    }
    .await;
    answer(lang, result)
}

fn file_of(file: &str) -> Result<(Period, Format), PageError> {
    let bad = || PageError::NotFound {
        nl: format!("{file:?}: een download heet PERIODE.csv of PERIODE.xlsx, zoals 2025.xlsx."),
        en: format!("{file:?}: a download is named PERIOD.csv or PERIOD.xlsx, such as 2025.xlsx."),
    };
    let (period, format) = Format::split(file).map_err(|_| bad())?;
    if format == Format::Json {
        return Err(bad());
    }
    Ok((period.parse().map_err(|_| bad())?, format))
}

async fn release_file(
    state: &AppState,
    scope: ReleaseScope,
    file: &str,
) -> Result<Response, PageError> {
    let (period, format) = file_of(file)?;
    let cached = Ledger::read(state)
        .await?
        .release(state, scope, period)
        .await?;
    let report = crate::tables::Report::of_release(&state.region, &cached.release);
    Ok(download(&report, format)?)
}

// ---------------------------------------------------------------------------------------------
// Region

fn region_only(viewer: &Viewer, what_nl: &str, what_en: &str) -> Result<(), PageError> {
    if viewer.caller.role == Role::Region {
        return Ok(());
    }
    Err(refuse(
        viewer,
        format!("{what_nl} is voor het regioteam."),
        format!("{what_en} is for the region team."),
    ))
}

/// `GET /regio`: the heat map of every municipality by criterion, and the way to each one's page.
pub async fn region(
    State(state): State<AppState>,
    lang: Lang,
    viewer: Viewer,
    Params(q): Params<PeriodQuery>,
) -> Response {
    answer(lang, region_page(&state, lang, &viewer, &q).await)
}

async fn region_page(
    state: &AppState,
    lang: Lang,
    viewer: &Viewer,
    q: &PeriodQuery,
) -> Result<Response, PageError> {
    region_only(viewer, "Het regio-overzicht", "The region overview")?;
    let title = state.region.name.clone();
    let ledger = Ledger::read(state).await?;
    let published = ledger.periods();
    let Some(period) = chosen(q, &published)? else {
        let main = html! {
            h1 { (title) } (nothing_yet(lang))
            p { a href="/regio/rondes" { (lang.t("Een ronde publiceren", "Publish a round")) } }
        };
        return Ok(html(
            StatusCode::OK,
            layout(lang, &title, Some(viewer), "/regio", main),
        ));
    };
    let bench = ledger.release(state, ReleaseScope::Region, period).await?;
    let criteria: Vec<&Criterion> = bench.release.criteria.iter().collect();
    let mut releases = Vec::new();
    for m in &state.region.municipalities {
        let r = ledger
            .release(state, ReleaseScope::Municipality(m.code), period)
            .await?;
        releases.push((m, r));
    }
    let columns: Vec<String> = criteria.iter().map(|c| criterion_label(lang, c)).collect();
    let rows: Vec<(String, Vec<HeatCell>)> = releases
        .iter()
        .map(|(m, r)| {
            let cells = criteria
                .iter()
                .map(|c| match find_cell(&r.release, "total", &c.code) {
                    Some(cell) => match (cell.status.is_published(), cell.value) {
                        (true, Some(v)) => HeatCell::Figure {
                            tenths: v.tenths(),
                            text: lang.figure(v),
                        },
                        _ => HeatCell::HeldBack(held_back_short(lang, cell.status).to_string()),
                    },
                    None => HeatCell::HeldBack("–".into()),
                })
                .collect();
            (m.name.clone(), cells)
        })
        .collect();
    let map_title = format!(
        "{} {period}",
        lang.t("Gemeenten naar criterium,", "Municipalities by criterion,")
    );
    let main = html! {
        h1 { (title) }
        (period_nav(lang, "/regio", &published, period))
        (release_note(lang, &bench.release))
        (downloads(lang, "/regio", period))
        (legend(lang))
        section aria-labelledby="heatmap" {
            h2 id="heatmap" { (map_title) }
            (scrolling(&map_title, html! {
                (charts::heat_map(lang, "heat", &map_title, &columns, &rows)) }))
        }
        section aria-labelledby="table" {
            h2 id="table" { (lang.t("Alle gemeenten, alle trajecten", "Every municipality, all trajectories")) }
            (scrolling(lang.t("Tabel per gemeente", "Table per municipality"), html! {
                table {
                    caption { (lang.t("Per gemeente het totaal over alle doelgroepen; de regio onderaan.", "Per municipality the total over all target groups; the region at the bottom.")) }
                    thead { tr {
                        th scope="col" { (lang.t("Gemeente", "Municipality")) }
                        @for c in &criteria { th scope="col" { (criterion_label(lang, c)) } }
                    } }
                    tbody {
                        @for (m, r) in &releases {
                            tr {
                                th scope="row" { a href={"/gemeente/" (m.code) "?periode=" (period)} { (m.name) } }
                                @for c in &criteria {
                                    td { (figure(lang, &m.code.to_string(), "total", c, find_cell(&r.release, "total", &c.code))) }
                                }
                            }
                        }
                        tr class="total" {
                            th scope="row" { (lang.t("Regio", "Region")) }
                            @for c in &criteria {
                                td { (figure(lang, "region", "total", c, find_cell(&bench.release, "total", &c.code))) }
                            }
                        }
                    }
                } }))
        }
    };
    let here = format!("/regio?periode={period}");
    Ok(html(
        StatusCode::OK,
        layout(lang, &title, Some(viewer), &here, main),
    ))
}

#[derive(Debug, Deserialize)]
pub struct FileName {
    file: String,
}

/// `GET /regio/download/{period}.{csv|xlsx}`.
pub async fn region_download(
    State(state): State<AppState>,
    lang: Lang,
    viewer: Viewer,
    Path(p): Path<FileName>,
) -> Response {
    let result = async {
        region_only(&viewer, "Deze download", "This download")?;
        release_file(&state, ReleaseScope::Region, &p.file).await
    }
    .await;
    answer(lang, result)
}

#[derive(Debug, Default, Deserialize)]
pub struct RoundsQuery {
    /// After a publish: the period and version published, or `ongewijzigd` (unchanged).
    gepubliceerd: Option<String>,
    versie: Option<u32>,
    uitkomst: Option<String>,
}

/// `GET /regio/rondes`: every round and its versions, the rounds planned, and the publish form.
pub async fn rounds(
    State(state): State<AppState>,
    lang: Lang,
    viewer: Viewer,
    Params(q): Params<RoundsQuery>,
) -> Response {
    let message = match (
        q.gepubliceerd
            .as_deref()
            .and_then(|p| p.parse::<Period>().ok()),
        q.versie,
        q.uitkomst.as_deref(),
    ) {
        (Some(p), Some(v), Some("published")) => Some((
            false,
            format!(
                "{} {p}, {} {v}.",
                lang.t("Gepubliceerd:", "Published:"),
                lang.t("versie", "version")
            ),
        )),
        (Some(p), Some(v), Some("unchanged")) => Some((
            false,
            format!(
                "{p}: {} {v} {}",
                lang.t(
                    "de gegevens zijn niet veranderd sinds versie",
                    "the data have not changed since version"
                ),
                lang.t(
                    "; er is niets opnieuw berekend en geen budget besteed.",
                    "; nothing was computed again and no budget spent."
                )
            ),
        )),
        _ => None,
    };
    answer(
        lang,
        rounds_page(&state, lang, &viewer, StatusCode::OK, message).await,
    )
}

async fn rounds_page(
    state: &AppState,
    lang: Lang,
    viewer: &Viewer,
    status: StatusCode,
    message: Option<(bool, String)>,
) -> Result<Response, PageError> {
    region_only(viewer, "Rondes publiceren", "Publishing rounds")?;
    let (list, planned) = rounds::list_rounds(state.store.as_ref(), &state.region).await?;
    let today = state.clock.now().date();
    let candidates = publishable_periods(&state.region, today);
    let title = lang.t("Rondes", "Rounds");
    let main = html! {
        h1 { (title) }
        @if let Some((is_error, text)) = &message {
            @if *is_error {
                p class="error" role="alert" { (text) }
            } @else {
                p class="notice" role="status" { (text) }
            }
        }
        section aria-labelledby="publish" {
            h2 id="publish" { (lang.t("Een ronde publiceren", "Publish a round")) }
            p { (lang.t(
                "Publiceren berekent alle tabellen van de periode uit één meting met ruis en besteedt privacybudget van de datajaren die de periode raakt. Publiceert u een periode opnieuw terwijl er gegevens zijn veranderd, dan ontstaat een nieuwe versie (en wordt opnieuw budget besteed); zijn de gegevens niet veranderd, dan gebeurt er niets.",
                "Publishing computes every table of the period from one noisy measurement and spends privacy budget of the data years the period touches. Publishing a period again after the data changed makes a new version (and spends budget again); if the data did not change, nothing happens.",
            )) }
            form id="publish-round" method="post" action="/regio/rondes" class="card narrow" {
                input type="hidden" name="csrf" value=(viewer.csrf);
                label for="periode" { (lang.t("Periode", "Period")) }
                select id="periode" name="periode" {
                    @for p in &candidates { option value=(p) { (p) } }
                }
                button type="submit" id="publish-button" { (lang.t("Publiceren", "Publish")) }
            }
        }
        section aria-labelledby="published" {
            h2 id="published" { (lang.t("Gepubliceerde rondes", "Published rounds")) }
            @if list.is_empty() {
                p { (lang.t("Nog geen.", "None yet.")) }
            } @else {
                (table(lang.t("Gepubliceerde rondes", "Published rounds"), "rounds", &[lang.t("Periode", "Period"), lang.t("Versie", "Version"), lang.t("Gepubliceerd", "Published"), lang.t("Door", "By"), lang.t("Budget (ρ per datajaar)", "Budget (ρ per data year)")], html! {
                            @for r in &list {
                                tr data-round=(r.id) {
                                    th scope="row" { a href={"/regio?periode=" (r.period)} { (r.period) } }
                                    td { (r.version) }
                                    td { (lang.moment(r.created_at)) }
                                    td { (r.published_by) }
                                    td { @for (i, c) in r.charges.iter().enumerate() { @if i > 0 { ", " } (c.data_year) ": " (c.rho) } }
                                }
                            }
                }))
            }
        }
        @if !planned.is_empty() {
            section aria-labelledby="planned" {
                h2 id="planned" { (lang.t("Gepland", "Planned")) }
                ul { @for p in &planned { li { (p.period) ": " (lang.t("vanaf ", "from ")) (p.publish_after) } } }
            }
        }
    };
    Ok(html(
        status,
        layout(lang, title, Some(viewer), "/regio/rondes", main),
    ))
}

/// The periods the form offers: the region's kinds of round, of the last six years, that are final.
fn publishable_periods(region: &RegionConfig, today: time::Date) -> Vec<Period> {
    let year = u16::try_from(today.year()).unwrap_or(2000);
    let mut out = Vec::new();
    for y in (year.saturating_sub(6)..=year).rev() {
        let mut spans = vec![PeriodSpan::Year];
        if region.privacy.half_year_round.is_some() {
            spans.extend([PeriodSpan::Half(2), PeriodSpan::Half(1)]);
        }
        if region.privacy.quarter_round.is_some() {
            spans.extend((1..=4).rev().map(PeriodSpan::Quarter));
        }
        for s in spans {
            if let Ok(p) = Period::new(y, s) {
                if rounds::publishable_from(region, p) <= today && region.round_rho(p).is_some() {
                    out.push(p);
                }
            }
        }
    }
    out
}

#[derive(Debug, Deserialize)]
pub struct PublishForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    periode: String,
}

/// `POST /regio/rondes`: publishes a round (the region team only), then shows the rounds.
pub async fn publish(
    State(state): State<AppState>,
    lang: Lang,
    viewer: Viewer,
    form: Result<Form<PublishForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let result = async {
        let Ok(Form(form)) = form else {
            return Err(PageError::BadForm);
        };
        viewer.check_csrf(&form.csrf)?;
        region_only(&viewer, "Rondes publiceren", "Publishing rounds")?;
        let period: Period = match form.periode.parse() {
            Ok(p) => p,
            Err(_) => {
                let text = format!(
                    "{:?}: {}",
                    form.periode,
                    lang.t(
                        "kies een periode uit de lijst.",
                        "choose a period from the list."
                    )
                );
                return rounds_page(
                    &state,
                    lang,
                    &viewer,
                    StatusCode::BAD_REQUEST,
                    Some((true, text)),
                )
                .await;
            }
        };
        let actor = crate::app::audit_trail::api_actor(&viewer.caller);
        match rounds::publish_round(&state.round_deps(), period, &actor, false).await {
            Ok(o) => {
                state.dashboard.invalidate();
                Ok(see_other(&format!(
                    "/regio/rondes?gepubliceerd={period}&versie={}&uitkomst={}",
                    o.round.version,
                    if o.outcome == "published" {
                        "published"
                    } else {
                        "unchanged"
                    }
                )))
            }
            Err(e) => {
                let p = e.to_problem();
                let status = StatusCode::from_u16(p.status).unwrap_or(StatusCode::BAD_REQUEST);
                let text = format!(
                    "{} {period}: {}",
                    lang.t("Niet gepubliceerd:", "Not published:"),
                    p.detail
                );
                rounds_page(&state, lang, &viewer, status, Some((true, text))).await
            }
        }
    }
    .await;
    answer(lang, result)
}

/// `GET /regio/privacy`: the privacy budget per data year, as a chart and a table.
pub async fn privacy(State(state): State<AppState>, lang: Lang, viewer: Viewer) -> Response {
    answer(lang, privacy_page(&state, lang, &viewer).await)
}

async fn privacy_page(
    state: &AppState,
    lang: Lang,
    viewer: &Viewer,
) -> Result<Response, PageError> {
    region_only(viewer, "Het privacybudget", "The privacy budget")?;
    let report = rounds::privacy_report(state.store.as_ref(), &state.region).await?;
    let charges = state.store.list_privacy_charges().await?;
    let research = state.store.list_research_spend().await?;
    let cap = state
        .region
        .privacy
        .rho_per_data_year
        .to_nanos()
        .unwrap_or(0);
    let round_cap = state.region.round_cap_nanos();
    let mut years: Vec<charts::BudgetYear> = Vec::new();
    let all_years: BTreeSet<u16> = charges
        .iter()
        .map(|c| c.data_year)
        .chain(research.iter().map(|(y, _)| *y))
        .collect();
    for y in all_years {
        years.push(charts::BudgetYear {
            year: y,
            rounds: charges
                .iter()
                .filter(|c| c.data_year == y)
                .map(|c| c.rho_nanos)
                .sum(),
            research: research
                .iter()
                .filter(|(ry, _)| *ry == y)
                .map(|(_, n)| *n)
                .sum(),
        });
    }
    let rho = |n: i64| {
        kwm_schemas::region::Decimal::from_nanos(n)
            .map(|d| d.to_string())
            .unwrap_or_else(|| "0".into())
    };
    let title = lang.t("Privacybudget", "Privacy budget");
    let main = html! {
        h1 { (title) }
        p { (lang.pick(&report.guarantee_nl, &report.guarantee_en)) }
        p class="meta" {
            (lang.t("Mechanisme: ", "Mechanism: ")) (report.mechanism)
            ". ρ " (lang.t("per datajaar: ", "per data year: ")) (report.rho_per_data_year)
            @if let Some(r) = report.research_reserve { ", " (lang.t("waarvan voor onderzoek: ", "of which for research: ")) (r) }
            ". ε " (lang.t("per datajaar: ", "per data year: ")) (lang.figure(report.epsilon_per_data_year)) " (δ = " (report.delta) ")."
        }
        @if years.is_empty() {
            p { (lang.t("Er is nog geen budget besteed.", "No budget has been spent yet.")) }
        } @else {
            (scrolling(title, html! {
                (charts::budget_chart(lang, "budget", &format!("{title} {}", lang.t("per datajaar", "per data year")), &years, cap, round_cap)) }))
            (table(lang.t("Budget per datajaar, tabel", "Budget per data year, table"), "budget", &[lang.t("Datajaar", "Data year"), lang.t("Besteed aan rondes", "Spent by rounds"), lang.t("Besteed aan onderzoek", "Spent by research"), lang.t("Vrij voor rondes", "Left for rounds"), lang.t("Plafond", "Cap")], html! {
                        @for y in &years {
                            tr data-year=(y.year) {
                                th scope="row" { (y.year) }
                                td { (rho(y.rounds)) }
                                td { (rho(y.research)) }
                                td { (rho((round_cap - y.rounds).max(0))) }
                                td { (rho(cap)) }
                            }
                        }
            }))
        }
    };
    Ok(html(
        StatusCode::OK,
        layout(lang, title, Some(viewer), "/regio/privacy", main),
    ))
}

// ---------------------------------------------------------------------------------------------
// Provider

fn provider_of(viewer: &Viewer) -> Result<AgbCode, PageError> {
    viewer.caller.provider().map_err(|_| {
        refuse(
            viewer,
            "Deze pagina is voor zorgaanbieders.".into(),
            "This page is for care providers.".into(),
        )
    })
}

const AUDIT_PAGE: u32 = 50;

/// `GET /aanbieder`: the provider's own scores against the benchmark, its batches, its audit entries.
pub async fn provider(
    State(state): State<AppState>,
    lang: Lang,
    viewer: Viewer,
    Params(q): Params<PeriodQuery>,
) -> Response {
    answer(lang, provider_page(&state, lang, &viewer, &q).await)
}

async fn provider_page(
    state: &AppState,
    lang: Lang,
    viewer: &Viewer,
    q: &PeriodQuery,
) -> Result<Response, PageError> {
    let agb = provider_of(viewer)?;
    let name = state
        .store
        .get_provider(agb)
        .await?
        .map(|p| p.name)
        .unwrap_or_else(|| agb.to_string());
    // The provider reads the per-provider table of every round (its own rows) and the region's.
    let ledger = Ledger::read(state).await?;
    let published = ledger.periods();
    let batches = state.store.list_batches(agb).await?;
    let after = q.na.unwrap_or(0).max(0);
    let mut audit = state
        .store
        .list_audit(after, AUDIT_PAGE + 1, Some(agb))
        .await?;
    let more = audit.len() > AUDIT_PAGE as usize;
    audit.truncate(AUDIT_PAGE as usize);
    let title = format!("{name} (AGB {agb})");
    let own_name = lang.t("Eigen", "Own");
    let scores = match chosen(q, &published)? {
        None => nothing_yet(lang),
        Some(period) => {
            let own = ledger
                .release(state, ReleaseScope::Providers, period)
                .await?;
            let bench = ledger.release(state, ReleaseScope::Region, period).await?;
            let scope_key = agb.to_string();
            let own_cells = |g: &str, c: &str| {
                own.release
                    .rows
                    .iter()
                    .filter(|r| r.provider == Some(agb))
                    .find(|r| row_key(r) == g)
                    .and_then(|r| r.cells.iter().find(|cell| cell.criterion == c))
                    .cloned()
            };
            let has_rows = own.release.rows.iter().any(|r| r.provider == Some(agb));
            let own_groups: Vec<(String, String)> = groups(&bench.release)
                .into_iter()
                .filter(|(g, _)| own_cells(g, "in_zorg").is_some())
                .collect();
            let group = chosen_group(q, &own_groups);
            html! {
                (period_nav(lang, "/aanbieder", &published, period))
                (release_note(lang, &bench.release))
                (downloads(lang, "/aanbieder", period))
                (legend(lang))
                @if has_rows {
                    section id="detail" aria-labelledby="detail-heading" {
                        h2 id="detail-heading" { (lang.t("Vergeleken met de regio", "Compared with the region")) }
                        (group_nav(lang, &bench.release, "/aanbieder", period, &own_groups, &group))
                        (comparison(lang, 0, &scope_key, own_name, &own_cells, &bench.release, &group))
                    }
                    (overview(lang, &bench.release, &scope_key, own_name, &own_cells, &own_groups))
                } @else {
                    p class="notice" role="status" { (lang.t("Deze ronde bevat geen trajecten van u.", "This round holds no trajectories of yours.")) }
                }
            }
        }
    };
    let main = html! {
        h1 { (title) }
        (scores)
        section aria-labelledby="batches" {
            h2 id="batches" { (lang.t("Uw aanleveringen", "Your batches")) }
            @if batches.is_empty() {
                p { (lang.t("Nog geen aanleveringen.", "No batches yet.")) }
            } @else {
                (table(lang.t("Aanleveringen", "Batches"), "batch-list", &[lang.t("Ontvangen", "Received"), lang.t("Aanlevering", "Batch"), lang.t("Trajecten", "Trajectories"), lang.t("Nieuw", "New"), lang.t("Gecorrigeerd", "Corrected"), lang.t("Ongewijzigd", "Unchanged")], html! {
                            @for b in &batches {
                                tr data-batch=(b.batch_id) {
                                    td { (lang.moment(b.received_at)) }
                                    td { code { (b.batch_id) } }
                                    td { (lang.count(u64::from(b.record_count))) }
                                    td { (lang.count(u64::from(b.stored))) }
                                    td { (lang.count(u64::from(b.corrected))) }
                                    td { (lang.count(u64::from(b.unchanged))) }
                                }
                            }
                }))
            }
        }
        section aria-labelledby="audit" {
            h2 id="audit" { (lang.t("Logboek", "Audit log")) }
            p class="hint" { (lang.t("Alles wat met uw gegevens gebeurde, in de volgorde van de keten. Elke regel is vastgeketend aan de vorige.", "Everything that happened to your data, in the chain's order. Every entry is chained to the one before.")) }
            (table(lang.t("Logboek", "Audit log"), "audit-list", &["#", lang.t("Moment", "When"), lang.t("Door", "By"), lang.t("Handeling", "Action"), lang.t("Betreft", "Subject")], html! {
                        @for e in audit.iter().map(crate::app::audit_trail::to_provider_record) {
                            tr data-seq=(e.seq) {
                                td { (e.seq) }
                                td { (lang.moment(e.at)) }
                                td { (e.actor_role) " " (e.actor_id) }
                                td { (e.action) }
                                td { code { (e.subject) } }
                            }
                        }
            }))
            @if more {
                @if let Some(last) = audit.last() {
                    p { a href={"/aanbieder?na=" (last.seq)} { (lang.t("Volgende regels", "Next entries")) } }
                }
            }
        }
    };
    Ok(html(
        StatusCode::OK,
        layout(lang, &title, Some(viewer), "/aanbieder", main),
    ))
}

/// `GET /aanbieder/download/{period}.{csv|xlsx}`: the provider's own scores with the benchmark.
pub async fn provider_download(
    State(state): State<AppState>,
    lang: Lang,
    viewer: Viewer,
    Path(p): Path<FileName>,
) -> Response {
    let result = async {
        let agb = provider_of(&viewer)?;
        let (period, format) = file_of(&p.file)?;
        let ledger = Ledger::read(&state).await?;
        let own = ledger
            .release(&state, ReleaseScope::Providers, period)
            .await?;
        let bench = ledger.release(&state, ReleaseScope::Region, period).await?;
        let report =
            crate::tables::Report::of_scores(&state.region, agb, &own.release, &bench.release);
        Ok(download(&report, format)?)
    }
    .await;
    answer(lang, result)
}

// ---------------------------------------------------------------------------------------------
// Explainer

/// `GET /uitleg`: what the figures mean, in plain words (open to everyone).
pub async fn explainer(
    State(state): State<AppState>,
    lang: Lang,
    headers: axum::http::HeaderMap,
) -> Response {
    let viewer = crate::http::dashboard::session::viewer(&state, &headers)
        .await
        .ok()
        .flatten();
    let criteria = kwm_schemas::criteria::catalogue();
    let policy = &state.region.policy;
    let title = lang.t("Uitleg bij de cijfers", "About the figures");
    let main = html! {
        h1 { (title) }
        section class="prose" {
            h2 { (lang.t("Waar komen de cijfers vandaan?", "Where do the figures come from?")) }
            p { (lang.t(
                "Jeugdhulpaanbieders leveren per traject de uitkomsten aan: hoe de hulp eindigde, of doelen zijn gehaald, hoe tevreden het gezin was. Zij doen dat versleuteld en met een pseudoniem in plaats van een BSN. De monitor telt die trajecten op per gemeente, per doelgroep en voor de hele regio.",
                "Youth care providers supply the outcomes of every trajectory: how care ended, whether goals were met, how satisfied the family was. They do so encrypted, with a pseudonym instead of a citizen service number. The monitor adds those trajectories up per municipality, per target group and for the whole region.",
            )) }
            h2 { (lang.t("Waarom zit er ruis op?", "Why is there noise?")) }
            p { (lang.t(
                "Een klein aantal kinderen kan herkenbaar zijn, zeker in een kleine gemeente. Daarom krijgt elk cijfer een kleine, willekeurige afwijking (ruis) voordat het gepubliceerd wordt, en worden aantallen afgerond. Zo kan niemand uit de cijfers afleiden of één bepaald kind in de gegevens zit. Hoeveel ruis er samen mag zijn, ligt vast per jaar van gegevens: het privacybudget. Is dat op, dan wordt er over dat jaar niets meer gepubliceerd.",
                "A small number of children can be recognisable, especially in a small municipality. So every figure gets a small random deviation (noise) before it is published, and counts are rounded. That way nobody can tell from the figures whether one particular child is in the data. How much may be published in total is fixed per year of data: the privacy budget. When it is spent, nothing more is published about that year.",
            )) }
            h2 { (lang.t("Het 95%-interval", "The 95% interval")) }
            p { (lang.t(
                "Naast elk percentage en gemiddelde staat tussen haakjes een interval. Met 95% zekerheid ligt de werkelijke waarde daarbinnen. Een breed interval betekent: dit cijfer is onzeker, trek er geen harde conclusies uit. Verschillen tussen gemeenten zijn pas betekenisvol als de intervallen elkaar niet of nauwelijks overlappen.",
                "Beside every percentage and mean is an interval in brackets. With 95% certainty the true value lies within it. A wide interval means: this figure is uncertain, draw no firm conclusions from it. Differences between municipalities only mean something when the intervals barely overlap, if at all.",
            )) }
            h2 { (lang.t("Ingehouden cijfers", "Held-back figures")) }
            ul {
                li { strong { (held_back(lang, CellStatus::Suppressed)) } ": "
                    (lang.t("het cijfer gaat over minder dan ongeveer ", "the figure is about fewer than about "))
                    (policy.k)
                    (lang.t(" kinderen. Of het er nul of een paar zijn, wordt niet verteld.", " children. Whether there are none or a few is not told.")) }
                li { strong { (held_back(lang, CellStatus::Unreliable)) } ": "
                    (lang.t("het interval zou zo breed zijn dat het cijfer niets zegt.", "the interval would be so wide that the figure says nothing.")) }
            }
            p { (lang.t(
                "Of een cijfer wordt ingehouden, wordt beslist op de cijfers met ruis, nooit op de echte aantallen: ook die beslissing verraadt dus niets.",
                "Whether a figure is held back is decided on the noisy figures, never on the true counts: so that decision gives nothing away either.",
            )) }
            h2 { (lang.t("De criteria", "The criteria")) }
            dl {
                @for c in &criteria {
                    dt { (criterion_label(lang, c)) }
                    dd {
                        @match c.kind {
                            CriterionKind::Percentage => { (lang.t("Percentage van ", "Percentage of ")) (c.denominator_nl) }
                            CriterionKind::Mean => { (lang.t("Gemiddelde over ", "Mean over ")) (c.denominator_nl) " (" (c.lower) "–" (c.upper) ")" }
                            CriterionKind::Count => { (lang.t("Aantal ", "Number of ")) (c.denominator_nl) }
                        }
                        @let d = direction(lang, c);
                        @if !d.is_empty() { "; " (d) }
                        "."
                    }
                }
            }
            @if lang == Lang::En {
                p class="hint" { "The descriptions of what a figure is taken over are the catalogue's Dutch terms." }
            }
        }
    };
    html(
        StatusCode::OK,
        layout(lang, title, viewer.as_ref(), "/uitleg", main),
    )
}
