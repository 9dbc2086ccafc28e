//! `kwm-service demo`: the whole flow on one machine. Starts the service on its embedded SQLite default,
//! registers synthetic providers, generates a few years of West-Brabant West exports with the SDK's
//! generator, uploads them through the SDK over HTTP, prints what happened, and serves until Ctrl-C.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use kwm_schemas::Role;
use kwm_sdk::synth::{generate, SynthOptions};
use kwm_sdk::{upload_file, ProviderKeys, RegionalKey, Token, UploadOptions};

use kwm_schemas::release::ReleaseScope;
use kwm_schemas::Period;

use crate::app::audit_trail::issue_token;
use crate::app::operator;
use crate::app::rounds::{latest_release, publish_round, Actor};
use crate::config::Config;
use crate::http::startup::Application;
use crate::tables;

/// Who the demo's own actions are recorded as in the audit chain.
fn demo_actor() -> Actor {
    Actor {
        role: "admin".into(),
        id: "demo".into(),
    }
}

/// Marks a directory as the demo's own, so that a re-run may wipe it and nothing else.
const MARKER: &str = ".kwm-demo";

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub dir: PathBuf,
    pub providers: u32,
    pub trajectories: u64,
    pub seed: u64,
    pub listen: SocketAddr,
    /// Stop after printing instead of serving.
    pub exit: bool,
    /// The period whose releases are published (`2025`).
    pub period: String,
}

/// Fictional provider names for the synthetic exports.
const NAMES: [&str; 16] = [
    "Jeugdhulp De Brug",
    "Kompas Gezinshulp",
    "Stichting Opgroeien West",
    "Praktijk Zeewind",
    "Gezinscentrum De Linde",
    "Jeugd & Co Roosendaal",
    "Ambulant Team Markiezaat",
    "Orthopedagogisch Centrum Vliet",
    "Stichting Thuisbasis",
    "Jeugdzorg Brabantse Wal",
    "Praktijk Het Anker",
    "Zorgcombinatie Schelde",
    "Gezinsbegeleiding Aa",
    "Kindpraktijk De Vaart",
    "Jeugdteam Baronie",
    "Stichting Samen Verder",
];

/// The exact commands that go on with the demo's data after it stops: its directory is the data dir
/// of `serve` and `admin` (absolute, so they work from any directory).
fn go_on_commands(dir: &Path, region: Option<&Path>) -> String {
    let abs = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let mut base = format!("kwm-service --data-dir {}", shell_word(&abs(dir)));
    if let Some(r) = region {
        base.push_str(&format!(" --region {}", shell_word(&abs(r))));
    }
    format!(
        "To go on with this data (database and keys in {}), run:\n\
         \x20 {base} serve\n\
         \x20 {base} admin token issue --role municipality --scope GM0748\n\
         \x20 {base} admin provider list\n",
        abs(dir).display()
    )
}

/// A path as one shell word: quoted when it holds anything but plain characters.
fn shell_word(p: &Path) -> String {
    let s = p.display().to_string();
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:,@".contains(c))
    {
        s
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

fn prepare_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        if !dir.join(MARKER).exists() {
            anyhow::bail!(
                "{} exists and is not a demo directory; choose another with --data-dir",
                dir.display()
            );
        }
        if crate::http::startup::data_dir_in_use(dir)? {
            anyhow::bail!(
                "a service is running on {} (an earlier demo, or `kwm-service serve`): stop it \
                 first, or choose another directory with --data-dir",
                dir.display()
            );
        }
        std::fs::remove_dir_all(dir)
            .with_context(|| format!("removing the previous demo in {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(
        dir.join(MARKER),
        "created by kwm-service demo; removed by the next demo\n",
    )?;
    Ok(())
}

pub async fn run(mut config: Config, opts: DemoOptions) -> anyhow::Result<()> {
    let started = Instant::now();
    prepare_dir(&opts.dir)?;
    // The demo's directory is the service's data dir, as `--data-dir` says: `kwm-service --data-dir
    // DIR serve` and `admin ...` afterwards open this database and these keys.
    config.data_dir = opts.dir.clone();
    config.database_url = None;
    config.listen = opts.listen;
    config.metrics_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));

    println!("Kwaliteitsmonitor demo");
    println!("======================");
    let app = match Application::build(config.clone()).await {
        Ok(app) => app,
        Err(e) if opts.listen.port() != 0 => {
            eprintln!("note: {e:#}; using a free port instead");
            config.listen = SocketAddr::new(opts.listen.ip(), 0);
            Application::build(config.clone()).await?
        }
        Err(e) => return Err(e),
    };
    let base = format!("http://{}", app.local_addr());
    let state = app.state().clone();
    println!(
        "service     {base} on SQLite at {}",
        config.database_url_redacted()
    );
    let server = tokio::spawn(app.run_until_stopped());

    // The providers' side: exports, keys, registration.
    let exports = opts.dir.join("exports");
    let mut synth = SynthOptions::new(&exports, opts.providers, opts.trajectories, opts.seed);
    synth.region = state.region.as_ref().clone();
    let out = tokio::task::spawn_blocking(move || generate(&synth))
        .await
        .context("generator task")??;
    println!(
        "exports     {} providers, {} trajectories of {} children in {}",
        out.providers.len(),
        out.trajectories,
        out.children,
        exports.display()
    );
    let regional = RegionalKey::generate()?;
    regional.write_to(&opts.dir.join("regional.key"), true)?;
    // As the operator does: register the check value of the region's key (never the key), and
    // each provider with its signing key.
    let actor = demo_actor();
    let desk = operator::Desk {
        store: state.store.as_ref(),
        region: &state.region,
        actor: &actor,
        clock: state.clock.as_ref(),
    };
    operator::set_regional_key_check(desk, &regional.check_value(), true)
        .await
        .context("registering the regional key's check value")?;

    println!();
    println!(
        "{:<10} {:<32} {:>7} {:>8} {:>7} {:>7}",
        "AGB", "provider", "rows", "batches", "stored", "ms"
    );
    let mut provider_token = None;
    let mut total_stored = 0u64;
    for (i, p) in out.providers.iter().enumerate() {
        let name = NAMES[i % NAMES.len()];
        let keys = ProviderKeys::generate()?;
        let key_dir = opts.dir.join("providers").join(p.agb.as_str());
        keys.write_to(&key_dir, true)?;
        let (_, token) =
            operator::register_provider(desk, p.agb, name, keys.signing_public_key().to_vec())
                .await?;
        let t0 = Instant::now();
        let mut upload = UploadOptions::new(
            &p.path,
            &base,
            Some(Token::new(token.as_str())),
            keys,
            regional.clone(),
        );
        upload.region = state.region.as_ref().clone();
        let report = upload_file(&upload)
            .await
            .with_context(|| format!("uploading the export of {}", p.agb))?;
        total_stored += report.stored;
        println!(
            "{:<10} {:<32} {:>7} {:>8} {:>7} {:>7}",
            p.agb.as_str(),
            name,
            report.rows_read,
            report.batches,
            report.stored,
            t0.elapsed().as_millis()
        );
        if provider_token.is_none() {
            provider_token = Some((p.agb, token));
        }
    }
    println!(
        "\n{total_stored} trajectories stored, pseudonymised twice and sealed end to end, in {:.1} s.",
        started.elapsed().as_secs_f64()
    );

    // The municipalities' side: the round of the last full year, published by the region team.
    let period: Period = opts.period.parse().context("--period")?;
    let actor = demo_actor();
    let deps = state.round_deps();
    // The full years before it first, oldest first, so that the dashboard has a trend to show. Each
    // is charged to its own data years under the same per-year cap.
    if period.span() == kwm_schemas::release::PeriodSpan::Year {
        let first = period.year().saturating_sub(4);
        for year in first..period.year() {
            let earlier = Period::new(year, kwm_schemas::release::PeriodSpan::Year)
                .context("an earlier year")?;
            publish_round(&deps, earlier, &actor, true)
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "publishing the round of {earlier}: {}",
                        e.to_string_detail()
                    )
                })?;
        }
        if first < period.year() {
            println!(
                "\nRounds {first}..{} published first (for the dashboard's trend).",
                period.year() - 1
            );
        }
    }
    let outcome = publish_round(&deps, period, &actor, false)
        .await
        .map_err(|e| {
            anyhow::anyhow!("publishing the round of {period}: {}", e.to_string_detail())
        })?;
    let privacy = crate::release::privacy_statement(&crate::release::RoundContext {
        region: &state.region,
        plan: &crate::release::NoisePlan::new(
            &state.region,
            outcome
                .round
                .charges
                .first()
                .map_or(state.region.privacy.year_round, |c| c.rho),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?,
        charges: &[],
    });
    let charged: Vec<String> = outcome
        .round
        .charges
        .iter()
        .map(|c| format!("rho {} to data year {}", c.rho, c.data_year))
        .collect();
    println!();
    println!(
        "Round {period} (version {}) published for the whole region from one noisy measurement ({}); \
         charged {}.",
        outcome.round.version,
        state.region.privacy.mechanism.as_str(),
        charged.join(", ")
    );
    println!("{}", privacy.guarantee_en);
    println!(
        "{:<8} {:<34} {:>3} {:>10} {:>11} {:>11}",
        "scope", "name", "v", "published", "suppressed", "unreliable"
    );
    let mut scopes = vec![ReleaseScope::Region];
    scopes.extend(
        state
            .region
            .municipalities
            .iter()
            .map(|m| ReleaseScope::Municipality(m.code)),
    );
    let mut shown = Vec::new();
    for scope in scopes {
        let cached = latest_release(
            state.store.as_ref(),
            &state.releases,
            &state.region,
            scope,
            period,
        )
        .await
        .map_err(|e| anyhow::anyhow!("reading {scope} {period}: {}", e.to_string_detail()))?;
        let r = &cached.release;
        let name = match scope {
            ReleaseScope::Municipality(m) => state
                .region
                .municipality(m)
                .map(|m| m.name.clone())
                .unwrap_or_default(),
            _ => state.region.name.clone(),
        };
        let count = |status: kwm_schemas::release::CellStatus| {
            r.status_counts()
                .iter()
                .find(|(s, _)| *s == status)
                .map_or(0, |c| c.1)
        };
        use kwm_schemas::release::CellStatus;
        println!(
            "{:<8} {:<34.34} {:>3} {:>10} {:>11} {:>11}",
            scope.to_string(),
            name,
            r.version.unwrap_or_default(),
            count(CellStatus::Published),
            count(CellStatus::Suppressed),
            count(CellStatus::Unreliable),
        );
        // The region and the municipality whose token is printed below.
        if shown.len() < 2 {
            shown.push(cached.clone());
        }
    }
    for cached in &shown {
        let r = &cached.release;
        println!();
        println!(
            "{} {} (version {}): target groups by criteria",
            r.scope,
            r.period,
            r.version.unwrap_or_default()
        );
        print!("{}", tables::to_text(r));
    }
    let policy = &state.region.policy;
    println!(
        "Counts are noisy and rounded to {}; percentages and means come from the same noisy \
         measurement, and the municipalities add up to the region. Withheld: `supp` too few children \
         (the noisy count is below the threshold for k = {}), `unrel` the 95% interval is wider than \
         the region allows. Every figure's interval is in the JSON, CSV and XLSX.",
        policy.count_rounding, policy.k
    );

    let (_, municipality_token) = issue_token(
        state.store.as_ref(),
        &demo_actor(),
        Role::Municipality,
        Some("GM0748"),
        "demo",
    )
    .await?;
    let (_, region_token) = issue_token(
        state.store.as_ref(),
        &demo_actor(),
        Role::Region,
        None,
        "demo",
    )
    .await?;
    // A research project with its own budget, and its researcher's token.
    let project = crate::app::research::add_project(
        desk,
        "Demo-onderzoek",
        "welke zorg werkt voor welke doelgroep",
        kwm_schemas::region::Rho::from_nanos(50_000_000).context("the demo project's rho")?,
        state.clock.now().date() + time::Duration::days(365),
    )
    .await?;
    let (_, researcher_token) = issue_token(
        state.store.as_ref(),
        &demo_actor(),
        Role::Researcher,
        Some(&crate::app::research::project_scope(&project.id)),
        "demo",
    )
    .await?;
    let muni = municipality_token.as_str();
    let gm0748 = state
        .store
        .get_latest_round_release("GM0748", &period.to_string())
        .await?;
    println!();
    let go_on = go_on_commands(&opts.dir, config.region_file.as_deref());
    if opts.exit {
        // Nothing serves the commands of "Try it" any more: only how to get a service on this data.
        println!("The demo service has stopped (--exit).");
        print!("{go_on}");
        server.abort();
        return Ok(());
    }
    println!("Try it:");
    println!("  curl {base}/v1/keys");
    println!("  curl {base}/v1/openapi.json");
    println!(
        "  curl -H 'Authorization: Bearer {muni}' '{base}/v1/releases?scope=GM0748&period={period}'"
    );
    if gm0748.is_some() {
        println!(
            "  curl -H 'Authorization: Bearer {muni}' -OJ {base}/v1/releases/GM0748/{period}.xlsx"
        );
        println!("  curl -H 'Authorization: Bearer {muni}' {base}/v1/releases/GM0748/{period}.csv");
    }
    if let Some((agb, t)) = &provider_token {
        println!(
            "  curl -H 'Authorization: Bearer {}' '{base}/v1/providers/me/scores?period={period}'   # provider {agb}",
            t.as_str()
        );
    }
    println!(
        "  kwm query --service {base} --token {} --sql \"SELECT target_group, COUNT(*), \
         AVG(satisfaction) FROM trajectories WHERE start_year = {} GROUP BY target_group\"   \
         # a researcher of project {}",
        researcher_token.as_str(),
        period.last_month().year(),
        project.id
    );
    println!();
    println!("Dashboard: open {base}/ in a browser and sign in with one of these tokens");
    println!("(Dutch by default; the header has an English switch):");
    println!("  municipality token (GM0748 Bergen op Zoom): {muni}");
    println!(
        "  region token (every municipality and the region): {}",
        region_token.as_str()
    );
    if let Some((agb, t)) = &provider_token {
        println!("  provider token ({agb}): {}", t.as_str());
    }
    println!("  demo files: {}", opts.dir.display());
    println!();
    print!("{go_on}");

    println!("\nServing until Ctrl-C.");
    server.await.context("server task")?
}
