//! The downloads a policy adviser forwards as they are, read back the way a spreadsheet program reads
//! them: the workbook (figures with intervals and n, Dutch names and units, a legend, the round and its
//! privacy guarantee) through a real XLSX reader, the CSV in its Dutch dialect (`;`, decimal commas),
//! both addressed by scope and period (`/v1/releases/GM0748/2025.xlsx`), and a provider's own scores
//! next to the region's in the same forms.

use std::io::Cursor;

use calamine::{open_workbook_from_rs, Data, Reader, Xlsx};
use kwm_schemas::criteria::{Criterion, CriterionKind};
use kwm_schemas::problem::ProblemType;
use kwm_schemas::release::{CellStatus, Figure, ProviderScores, Release, ReleaseCell, ReleaseRow};
use kwm_schemas::{Code, RegionConfig, Role};
use reqwest::StatusCode;

use crate::helpers::{
    get, get_json, get_problem, publish_round, spawn_app_on, synth_exports, upload_providers,
    Backend,
};

const XLSX: &str = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet";

/// The header row of the sheet "Cijfers" (0-based): a title, a line on the round, the headings of
/// the column groups, then this.
const HEADER_ROW: usize = 4;

/// The sheets of a workbook, each as rows of cells from A1.
pub struct Book {
    pub names: Vec<String>,
    sheets: Vec<Vec<Vec<Data>>>,
}

impl Book {
    pub fn open(bytes: &[u8]) -> Book {
        let mut wb: Xlsx<_> =
            open_workbook_from_rs(Cursor::new(bytes.to_vec())).expect("a workbook Excel opens");
        let names = wb.sheet_names().to_vec();
        let sheets = names
            .iter()
            .map(|n| {
                let range = wb.worksheet_range(n).expect("a sheet");
                assert_eq!(range.start(), Some((0, 0)), "{n} starts at A1");
                range.rows().map(<[Data]>::to_vec).collect()
            })
            .collect();
        Book { names, sheets }
    }

    pub fn sheet(&self, name: &str) -> &[Vec<Data>] {
        let i = self
            .names
            .iter()
            .position(|n| n == name)
            .unwrap_or_else(|| panic!("no sheet {name}: {:?}", self.names));
        &self.sheets[i]
    }
}

pub fn text(d: &Data) -> String {
    match d {
        Data::String(s) => s.clone(),
        Data::Empty => String::new(),
        other => other.to_string(),
    }
}

fn cell(rows: &[Vec<Data>], y: usize, x: usize) -> &Data {
    rows.get(y).and_then(|r| r.get(x)).unwrap_or(&Data::Empty)
}

/// The value on a two-column sheet (term in A, text in B) of the first row whose term is `term`.
fn entry(rows: &[Vec<Data>], term: &str) -> String {
    rows.iter()
        .find(|r| r.first().map(text).as_deref() == Some(term))
        .map(|r| text(&r[1]))
        .unwrap_or_else(|| panic!("no line {term:?}"))
}

fn status_nl(c: &ReleaseCell) -> &'static str {
    match c.status {
        CellStatus::Published if c.exact => "exact (eigen gegevens)",
        CellStatus::Published => "gepubliceerd",
        CellStatus::Suppressed => "niet getoond: te weinig kinderen",
        CellStatus::Unreliable => "niet getoond: te onzeker",
    }
}

fn unit(c: &Criterion) -> &'static str {
    match c.kind {
        CriterionKind::Percentage => "%",
        CriterionKind::Mean if c.upper == 10 => "rapportcijfer 1-10",
        CriterionKind::Mean => "% (gemiddeld per traject)",
        CriterionKind::Count => "aantal trajecten",
    }
}

/// The name of a target group row as an adviser reads it.
fn group_name(region: &RegionConfig, key: Option<&Code>) -> String {
    match key {
        None => "Totaal (alle doelgroepen)".into(),
        Some(code) => {
            let label = &region
                .target_group(code)
                .expect("a group of the region")
                .label_nl;
            if label.starts_with(code.as_str()) {
                label.clone()
            } else {
                format!("{code} {label}")
            }
        }
    }
}

fn number(d: &Data) -> Option<i64> {
    match d {
        Data::Float(f) => Some((f * 10.0).round() as i64),
        Data::Int(i) => Some(i * 10),
        Data::Empty => None,
        other => panic!("not a number: {other:?}"),
    }
}

/// The sheet "Cijfers" holds, for every target group and indicator, each source's figures exactly as
/// the releases hold them: value, interval and n as numbers, the status in Dutch; names and units in
/// words.
fn check_figures(
    rows: &[Vec<Data>],
    region: &RegionConfig,
    criteria: &[Criterion],
    sources: &[(&str, Vec<&ReleaseRow>)],
) {
    let headers: Vec<String> = rows[HEADER_ROW].iter().map(text).collect();
    assert_eq!(headers[..3], ["Doelgroep", "Indicator", "Eenheid"]);
    for (i, (heading, _)) in sources.iter().enumerate() {
        let c0 = 3 + 5 * i;
        assert_eq!(text(cell(rows, HEADER_ROW - 1, c0)), *heading);
        assert_eq!(
            headers[c0..c0 + 5],
            [
                "Waarde",
                "95%-interval ondergrens",
                "95%-interval bovengrens",
                "Aantal trajecten (n)",
                "Status"
            ]
        );
    }
    // The keys in the order of the release: target groups, then the total.
    let keys: Vec<Option<&Code>> = sources
        .last()
        .expect("a source")
        .1
        .iter()
        .map(|r| r.target_group.as_ref())
        .collect();
    assert_eq!(
        rows.len(),
        HEADER_ROW + 1 + keys.len() * criteria.len(),
        "a line per target group and indicator"
    );
    let mut checked = 0;
    for (k, key) in keys.iter().enumerate() {
        for (ci, crit) in criteria.iter().enumerate() {
            let y = HEADER_ROW + 1 + k * criteria.len() + ci;
            assert_eq!(text(cell(rows, y, 0)), group_name(region, *key), "line {y}");
            let name = match &crit.national_number {
                Some(n) => format!("{n} {}", crit.label_nl),
                None => crit.label_nl.clone(),
            };
            assert_eq!(text(cell(rows, y, 1)), name);
            assert_eq!(text(cell(rows, y, 2)), unit(crit));
            for (i, (_, source_rows)) in sources.iter().enumerate() {
                let c0 = 3 + 5 * i;
                let Some(c) = source_rows
                    .iter()
                    .find(|r| r.target_group.as_ref() == *key)
                    .map(|r| &r.cells[ci])
                else {
                    assert_eq!(text(cell(rows, y, c0 + 4)), "geen trajecten");
                    continue;
                };
                assert_eq!(c.criterion, crit.code);
                let tenths = |f: Option<Figure>| f.map(Figure::tenths);
                assert_eq!(number(cell(rows, y, c0)), tenths(c.value), "{c:?}");
                assert_eq!(number(cell(rows, y, c0 + 1)), tenths(c.ci95_low), "{c:?}");
                assert_eq!(number(cell(rows, y, c0 + 2)), tenths(c.ci95_high), "{c:?}");
                assert_eq!(
                    number(cell(rows, y, c0 + 3)),
                    c.count.map(|n| n as i64 * 10),
                    "{c:?}"
                );
                assert_eq!(text(cell(rows, y, c0 + 4)), status_nl(c));
                checked += 1;
            }
        }
    }
    assert!(checked >= criteria.len() * keys.len());
}

/// The legend explains every status the figures show, the interval and n, in plain Dutch.
fn check_legend(book: &Book) {
    let legend = book.sheet("Toelichting");
    let terms: Vec<String> = legend
        .iter()
        .map(|r| r.first().map(text).unwrap_or_default())
        .collect();
    let figures = book.sheet("Cijfers");
    for row in &figures[HEADER_ROW + 1..] {
        for (x, d) in row.iter().enumerate() {
            if x >= 3 && (x - 3) % 5 == 4 {
                let status = text(d);
                assert!(terms.contains(&status), "the legend explains {status:?}");
            }
        }
    }
    for term in [
        "gepubliceerd",
        "niet getoond: te weinig kinderen",
        "niet getoond: te onzeker",
        "95%-interval",
        "Aantal trajecten (n)",
    ] {
        assert!(terms.iter().any(|t| t == term), "{term} in {terms:?}");
    }
    let interval = entry(legend, "95%-interval");
    assert!(interval.contains("95% zekerheid tussen de ondergrens en de bovengrens"));
    assert!(entry(legend, "niet getoond: te weinig kinderen").contains("te weinig kinderen"));
    assert!(entry(legend, "niet getoond: te onzeker").contains("40 procentpunten"));
    // Never the English codes or the mechanism's jargon alone.
    for row in legend {
        for d in row {
            let t = text(d);
            assert!(!["suppressed", "unreliable", "published"].contains(&t.as_str()));
        }
    }
}

/// The round: version, date, ids and the guarantee in words.
fn check_round(book: &Book, r: &Release) {
    let round = book.sheet("Publicatieronde");
    assert!(entry(round, "Versie").starts_with(&format!("{} ", r.version.expect("version"))));
    let year = r.created_at.expect("published").year().to_string();
    assert!(entry(round, "Gepubliceerd op").contains(&year));
    assert_eq!(
        entry(round, "Kenmerk van de ronde"),
        r.round.expect("a round").to_string()
    );
    assert_eq!(entry(round, "Privacygarantie"), r.privacy.guarantee_nl);
    assert!(entry(round, "In gewone woorden").contains("toevalsruis"));
    assert!(entry(round, "Periode").starts_with("2025 (januari t/m december 2025)"));
}

/// Parses the Dutch CSV as Excel in a Dutch locale does: BOM, `;`, decimal commas.
pub fn dutch_csv(bytes: &[u8]) -> Vec<Vec<String>> {
    let body = bytes
        .strip_prefix("\u{feff}".as_bytes())
        .expect("UTF-8 with a byte order mark, so that Excel reads the accents");
    let mut r = csv::ReaderBuilder::new()
        .delimiter(b';')
        .has_headers(false)
        .from_reader(body);
    r.records()
        .map(|rec| rec.expect("a record").iter().map(str::to_string).collect())
        .collect()
}

/// A figure field of the Dutch CSV in tenths: a decimal comma, never a point.
fn csv_tenths(field: &str) -> Option<i64> {
    if field.is_empty() {
        return None;
    }
    assert!(!field.contains('.'), "a decimal comma: {field}");
    let f: Figure = field.replace(',', ".").parse().expect("a number");
    Some(f.tenths())
}

/// The CSV holds, per source, target group and criterion, the releases' figures.
pub fn check_csv(
    records: &[Vec<String>],
    subject: &str,
    region: &RegionConfig,
    criteria: &[Criterion],
    sources: &[(&str, Vec<&ReleaseRow>)],
) {
    assert_eq!(
        records[0],
        [
            "Gebied",
            "Periode",
            "Versie",
            "Cijfers van",
            "Doelgroepcode",
            "Doelgroep",
            "Indicator",
            "Eenheid",
            "Waarde",
            "Ondergrens 95%-interval",
            "Bovengrens 95%-interval",
            "Aantal trajecten (n)",
            "Status"
        ]
    );
    let mut lines = records[1..].iter();
    let (mut commas, mut tenths) = (0, 0);
    for (heading, rows) in sources {
        for row in rows {
            for (c, crit) in row.cells.iter().zip(criteria) {
                let rec = lines.next().expect("a line per cell");
                assert_eq!(rec.len(), 13, "{rec:?}");
                assert_eq!((rec[0].as_str(), rec[1].as_str()), (subject, "2025"));
                assert_eq!(rec[3], *heading);
                let key = row.target_group.as_ref();
                assert_eq!(
                    rec[4],
                    key.map_or("totaal".to_string(), ToString::to_string)
                );
                assert_eq!(rec[5], group_name(region, key));
                assert!(rec[6].ends_with(&crit.label_nl));
                assert_eq!(rec[7], unit(crit));
                assert_eq!(csv_tenths(&rec[8]), c.value.map(Figure::tenths), "{rec:?}");
                assert_eq!(csv_tenths(&rec[9]), c.ci95_low.map(Figure::tenths));
                assert_eq!(csv_tenths(&rec[10]), c.ci95_high.map(Figure::tenths));
                assert_eq!(rec[11], c.count.map(|n| n.to_string()).unwrap_or_default());
                assert_eq!(rec[12], status_nl(c));
                commas += usize::from(rec[8].contains(','));
                tenths += usize::from(matches!(c.value, Some(Figure::Tenths(_))));
            }
        }
    }
    assert!(lines.next().is_none(), "no more lines than cells");
    assert_eq!(
        commas, tenths,
        "every published percentage and mean, and only those, has a decimal comma"
    );
}

async fn reports(backend: Backend) {
    let Some(app) = spawn_app_on(backend).await else {
        return;
    };
    let (_dir, out) = synth_exports(3, 4_000, 14);
    let regional = kwm_tests::regional_key();
    let providers = upload_providers(&app, &out, 0..3, &regional).await;
    let muni = app.issue_token(Role::Municipality, Some("GM0748")).await;
    let region_token = app.issue_token(Role::Region, None).await;
    let wbw = RegionConfig::wbw();

    // Before the round: the addressed download says when it can be published.
    let (status, p) = get_problem(&app, &muni, "/v1/releases/GM0748/2025.xlsx").await;
    assert_eq!(
        (status, p.kind()),
        (StatusCode::NOT_FOUND, Some(ProblemType::NotReleased))
    );
    let round = publish_round(&app, &region_token, "2025").await.round;

    // Addressed by name, the same frozen release as by scope and period.
    let release: Release = get_json(&app, &muni, "/v1/releases?scope=GM0748&period=2025").await;
    for path in ["/v1/releases/GM0748/2025", "/v1/releases/GM0748/2025.json"] {
        let by_name: Release = get_json(&app, &muni, path).await;
        assert_eq!(by_name, release, "{path}");
    }
    assert_eq!(release.round, Some(round.id));

    // The workbook.
    let res = get(&app, &muni, "/v1/releases/GM0748/2025.xlsx").await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], XLSX);
    assert_eq!(
        res.headers()["content-disposition"],
        "attachment; filename=\"kwm-GM0748-2025-v1.xlsx\""
    );
    let book = Book::open(&res.bytes().await.expect("xlsx"));
    assert_eq!(book.names, ["Cijfers", "Toelichting", "Publicatieronde"]);
    let figures = book.sheet("Cijfers");
    let title = text(&figures[0][0]);
    assert!(
        title.contains("Jeugdhulpregio West-Brabant West")
            && title.contains("Gemeente Bergen op Zoom")
            && title.contains("2025"),
        "names in the title: {title}"
    );
    let subject = "Gemeente Bergen op Zoom (GM0748)";
    let rows: Vec<&ReleaseRow> = release.rows.iter().collect();
    check_figures(figures, &wbw, &release.criteria, &[(subject, rows.clone())]);
    // Names, not placeholders: the region's names, and a named code where the region has none yet.
    let names: Vec<String> = figures[HEADER_ROW + 1..]
        .iter()
        .map(|r| text(&r[0]))
        .collect();
    assert!(names
        .iter()
        .any(|n| n.starts_with("P01 Psychosociale problemen")));
    assert!(names.iter().any(|n| n == "P03 (naam volgt van de regio)"));
    assert!(names.iter().any(|n| n == "C06 (naam volgt van de regio)"));
    assert!(!names
        .iter()
        .any(|n| n.starts_with("Profiel ") || n.starts_with("Zorgcombinatie ")));
    let published_with_interval = figures[HEADER_ROW + 1..]
        .iter()
        .filter(|r| text(&r[7]) == "gepubliceerd" && matches!(r[4], Data::Float(_)))
        .count();
    assert!(
        published_with_interval > 0,
        "published figures carry their interval"
    );
    check_legend(&book);
    check_round(&book, &release);

    // The Dutch CSV.
    let res = get(&app, &muni, "/v1/releases/GM0748/2025.csv").await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "text/csv; charset=utf-8");
    let records = dutch_csv(&res.bytes().await.expect("csv"));
    check_csv(
        &records,
        subject,
        &wbw,
        &release.criteria,
        &[(subject, rows)],
    );
    // Figures in the Dutch form: a decimal comma, never a point (which figures are published at all
    // is up to the noise; `check_csv` compares each with the release).
    for r in &records[1..] {
        for cell in &r[8..=11] {
            assert!(
                cell.chars()
                    .all(|c| c.is_ascii_digit() || c == ',' || c == '-'),
                "a figure in the Dutch form: {cell:?} in {r:?}"
            );
        }
    }

    // The benchmark the same way; another municipality's is refused, by role.
    let benchmark: Release = get_json(&app, &muni, "/v1/releases?scope=region&period=2025").await;
    let res = get(&app, &muni, "/v1/releases/region/2025.xlsx").await;
    assert_eq!(res.status(), StatusCode::OK);
    let book = Book::open(&res.bytes().await.expect("xlsx"));
    let region_subject = "Jeugdhulpregio West-Brabant West (regio)";
    check_figures(
        book.sheet("Cijfers"),
        &wbw,
        &benchmark.criteria,
        &[(region_subject, benchmark.rows.iter().collect())],
    );
    for path in [
        "/v1/releases/GM0777/2025.xlsx",
        "/v1/releases/GM0777/2025",
        "/v1/releases/providers/2025.csv",
    ] {
        let (status, p) = get_problem(&app, &muni, path).await;
        assert_eq!(
            (status, p.kind()),
            (StatusCode::FORBIDDEN, Some(ProblemType::Forbidden)),
            "{path}"
        );
    }
    let other = get(&app, &region_token, "/v1/releases/GM0777/2025.csv").await;
    assert_eq!(
        other.status(),
        StatusCode::OK,
        "the region team reads every municipality"
    );
    for (path, kind) in [
        ("/v1/releases/GM0748/2025.pdf", ProblemType::BadRequest),
        ("/v1/releases/GM0748/2025-M1.csv", ProblemType::BadRequest),
        ("/v1/releases/GM07/2025.csv", ProblemType::BadRequest),
        ("/v1/releases/GM0748/2024.xlsx", ProblemType::NotReleased),
    ] {
        let (_, p) = get_problem(&app, &muni, path).await;
        assert_eq!(p.kind(), Some(kind), "{path}: {}", p.detail);
    }

    // A provider's own scores next to the region's, as a workbook and as CSV.
    let p = &providers[0];
    let scores: ProviderScores =
        get_json(&app, &p.token, "/v1/providers/me/scores?period=2025").await;
    let own_heading = format!("Eigen cijfers (AGB {})", p.agb);
    let benchmark_heading = "Jeugdhulpregio West-Brabant West (regio) (benchmark)";
    let sources = [
        (
            own_heading.as_str(),
            scores.own.rows.iter().collect::<Vec<_>>(),
        ),
        (benchmark_heading, scores.benchmark.rows.iter().collect()),
    ];
    let res = get(
        &app,
        &p.token,
        "/v1/providers/me/scores?period=2025&format=xlsx",
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], XLSX);
    let book = Book::open(&res.bytes().await.expect("xlsx"));
    check_figures(book.sheet("Cijfers"), &wbw, &scores.criteria, &sources);
    check_legend(&book);
    check_round(&book, &benchmark);
    assert!(
        book.sheet("Cijfers")[HEADER_ROW + 1..]
            .iter()
            .any(|r| text(&r[7]) == "exact (eigen gegevens)"),
        "a provider's own figures are exact"
    );
    let res = get(
        &app,
        &p.token,
        "/v1/providers/me/scores?period=2025&format=csv",
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let records = dutch_csv(&res.bytes().await.expect("csv"));
    let subject = format!("Aanbieder AGB {}", p.agb);
    check_csv(&records, &subject, &wbw, &scores.criteria, &sources);
    let (status, _) = get_problem(
        &app,
        &p.token,
        "/v1/providers/me/scores?period=2025&format=pdf",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    app.assert_logs_free_of(&[]);
}

#[tokio::test]
async fn downloads_read_back_as_a_dutch_report_on_sqlite() {
    reports(Backend::Sqlite).await;
}

#[tokio::test]
async fn downloads_read_back_as_a_dutch_report_on_postgres() {
    reports(Backend::Postgres).await;
}
