//! The `kwm-service` command line: `serve`, and the `admin` commands of the custodian's operator.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use base64::Engine;
use clap::{Args, Parser, Subcommand};
use kwm_schemas::{AgbCode, Role};
use time::OffsetDateTime;

use crate::app::{audit_trail, operator, research};
use crate::audit::AuditEntry;
use crate::config::Config;
use crate::http::startup::{open_state, Application, OpenMode};
use crate::store::TokenRecord;

#[derive(Debug, Parser)]
#[command(
    name = "kwm-service",
    version,
    about = "Kwaliteitsmonitor custodian service: sealed uploads in, k-anonymous releases out"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Configuration file (TOML); default: ./kwm-service.toml if present. `KWM__...` variables override it.
    #[arg(long, global = true, env = "KWM_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory of the SQLite database and the key files [default: ./data; for `demo`: ./demo-data,
    /// which `serve` and `admin` then use with the same --data-dir]
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// `sqlite://PATH` or `postgres://USER@HOST/DB` [default: SQLite in the data dir]
    #[arg(long, global = true)]
    pub database_url: Option<String>,
    /// Region file [default: the built-in West-Brabant West configuration]
    #[arg(long, global = true)]
    pub region: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service.
    Serve {
        /// API listen address [default: 127.0.0.1:8080]
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Prometheus metrics listen address [default: 127.0.0.1:9090]
        #[arg(long)]
        metrics_listen: Option<SocketAddr>,
    },
    /// Operator commands: providers, tokens, keys.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Run the whole flow on this machine: the service on SQLite, synthetic providers uploading
    /// through the SDK. Its data dir is ./demo-data (or --data-dir DIR): the database and keys stay
    /// there, so `kwm-service --data-dir DIR serve` and `admin ...` go on with the demo's data
    /// afterwards; the next demo wipes it.
    Demo {
        /// Number of synthetic providers
        #[arg(long, default_value_t = 12)]
        providers: u32,
        /// Trajectories in total, over 2021..2025
        #[arg(long, default_value_t = 60_000)]
        trajectories: u64,
        /// Seed of the generator: same seed, same data
        #[arg(long, default_value_t = 2025)]
        seed: u64,
        /// API listen address (a free port is used if it is taken)
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Stop after printing instead of serving until Ctrl-C
        #[arg(long)]
        exit: bool,
        /// Period whose releases are published: 2025, 2025-H1 or 2025-Q3
        #[arg(long, default_value = "2025")]
        period: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Initialise a new service: its keys in the database, sealed under the master key
    /// (KWM_MASTER_KEY, or DATA_DIR/master.key, created if neither exists). Key files of an earlier
    /// version in DATA_DIR/keys/ are imported instead. Other admin commands refuse a database that
    /// was never initialised; on an initialised one this checks the keys and changes nothing.
    Init,
    /// Care providers.
    #[command(subcommand)]
    Provider(ProviderCommand),
    /// Bearer tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// The service's HPKE keys (kept in the database, shared by every instance).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// The audit chain.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Release rounds: publish a period for the whole region, or list what was published.
    #[command(subcommand)]
    Round(RoundCommand),
    /// The privacy accountant: per data year the cap, every charge and what remains.
    Privacy,
    /// A running instance's release index.
    #[command(subcommand)]
    Index(IndexCommand),
    /// The region: the check value of its pseudonymisation key.
    #[command(subcommand)]
    Region(RegionCommand),
    /// Research projects, each with its own privacy budget.
    #[command(subcommand)]
    Project(ProjectCommand),
    /// Anonymised extracts that projects asked for.
    #[command(subcommand)]
    Extract(ExtractCommand),
}

#[derive(Debug, Subcommand)]
pub enum ExtractCommand {
    /// List the extracts: asked for, or produced with the k and l reached.
    List,
    /// Approve an extract: it is built now from the stored trajectories and handed to its project.
    /// An extract leaves differential privacy behind: read its request first. Audited.
    Approve {
        /// The extract's id, as `admin extract list` shows it
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ProjectCommand {
    /// Register a research project with its own budget, carved from what research may spend of each
    /// data year (privacy.research_reserve of the region file). Prints its id: its researchers'
    /// tokens have the scope project:<id>. Audited.
    Add {
        #[arg(long)]
        name: String,
        /// What the project studies, in a sentence
        #[arg(long)]
        purpose: String,
        /// The project's rho: what its answers may spend of any one data year, e.g. 0.05
        #[arg(long)]
        rho: String,
        /// The last day it is answered, YYYY-MM-DD
        #[arg(long)]
        expires: String,
    },
    /// List the projects with their budget, what they spent and their last day.
    List,
    /// Close a project: it is answered nothing from now on. Audited.
    Close {
        /// The project's id, as `admin project list` shows it
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum RegionCommand {
    /// The check value of the region's pseudonymisation key, by which uploads under another key are
    /// refused (`wrong-regional-key`).
    #[command(subcommand, name = "key-check")]
    KeyCheck(KeyCheckCommand),
}

#[derive(Debug, Subcommand)]
pub enum KeyCheckCommand {
    /// Register the check value that `kwm keygen --regional` printed for the region's key (never the
    /// key itself: the custodian must not hold it). Audited.
    Set {
        /// 64 hex digits
        #[arg(value_name = "HEX")]
        check_value: String,
        /// Replace a registered check value (after the region changed its key: every provider must
        /// then upload with the new key)
        #[arg(long)]
        replace: bool,
    },
    /// Show the registered check value and when it was registered.
    Show,
}

#[derive(Debug, Subcommand)]
pub enum IndexCommand {
    /// Ask a running instance to compare its release index with the stored rows (row counts and a
    /// digest per start year, at one change mark); exits non-zero naming the years that differ.
    Verify {
        /// The instance's API, e.g. http://127.0.0.1:8080 (each instance keeps its own index: check
        /// every one).
        #[arg(long, value_name = "URL")]
        url: String,
        /// An admin token (`admin token issue --role admin`); default: the KWM_TOKEN variable.
        #[arg(long, env = "KWM_TOKEN", hide_env_values = true)]
        token: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum RoundCommand {
    /// Publish the round of an ended period (every municipality, the region and the per-provider
    /// table, from one noisy measurement, charged once per data year). Run again after corrections
    /// to publish a new version (charged again); without new data it changes nothing.
    Publish {
        /// 2025, 2025-H1 or 2025-Q3
        #[arg(long)]
        period: String,
    },
    /// List the rounds with their versions, charges and publishers, and the calendar's planned ones.
    List,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the whole chain; names the first broken entry and exits non-zero if it does not hold.
    Verify {
        /// A file with the head seen at the last verification (kept away from the database host): the
        /// chain must still hold that entry unchanged. Written with the new head after success.
        #[arg(long, value_name = "FILE")]
        anchor: Option<PathBuf>,
    },
    /// Print entries, oldest first.
    List {
        /// Only entries with a higher sequence number
        #[arg(long, default_value_t = 0)]
        after: i64,
        /// At most this many entries
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

#[derive(Debug, Subcommand)]
pub enum ProviderCommand {
    /// Register a provider and print its bearer token (shown once).
    Add {
        /// AGB code (8 digits)
        #[arg(long)]
        agb: String,
        #[arg(long)]
        name: String,
        /// The provider's `signing.pub` from `kwm keygen`
        #[arg(long)]
        signing_key: PathBuf,
    },
    /// Replace a provider's signing public key (a lost or leaked signing.key): batches signed with
    /// the old key are refused from now on. Recorded in the audit chain.
    SetKey {
        /// AGB code of the registered provider
        #[arg(long)]
        agb: String,
        /// The provider's new `signing.pub` from `kwm keygen`
        #[arg(long)]
        signing_key: PathBuf,
    },
    /// List registered providers.
    List,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Issue a token and print it (shown once; only its hash is stored).
    Issue {
        /// provider, municipality, region, researcher or admin
        #[arg(long)]
        role: String,
        /// AGB code of a registered provider (provider), CBS code of a municipality of the region
        /// such as GM0748 (municipality), project:<id> of an open project (researcher)
        #[arg(long)]
        scope: Option<String>,
        /// A note for the operator, e.g. who holds the token
        #[arg(long, default_value = "")]
        label: String,
    },
    /// Revoke a token: it is refused (unauthenticated) from the next request on.
    Revoke {
        /// The token's id, as `admin token list` shows it
        #[arg(long)]
        id: i64,
    },
    /// List the tokens (never the tokens themselves or their hashes).
    List,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Add a new HPKE key; it becomes active after `--activate-after` and the current key retires
    /// `--retire-after` later.
    Rotate {
        /// Seconds until the new key becomes active
        #[arg(long, default_value_t = 86_400)]
        activate_after: i64,
        /// Seconds the old key keeps working after the switch
        #[arg(long, default_value_t = 7 * 86_400)]
        retire_after: i64,
    },
    /// List the keys with their states and dates (created, activated, retired; UTC).
    List,
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a command line (program name first) in this process, as the binary would: the tests drive the
/// admin commands through it.
pub async fn run_from<I, T>(args: I) -> anyhow::Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    run(Cli::try_parse_from(args)?).await
}

/// The configuration after file, environment and flags.
pub fn config_from(global: &GlobalArgs) -> anyhow::Result<Config> {
    let mut config = Config::load(global.config.as_deref())?;
    if let Some(d) = &global.data_dir {
        config.data_dir = d.clone();
    }
    if let Some(u) = &global.database_url {
        config.database_url = Some(u.clone());
    }
    if let Some(r) = &global.region {
        config.region_file = Some(r.clone());
    }
    Ok(config)
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut config = config_from(&cli.global)?;
    // The demo prints its own account; request logs would drown it.
    let default_filter = if matches!(cli.command, Command::Demo { .. }) {
        "warn"
    } else {
        crate::telemetry::DEFAULT_FILTER
    };
    crate::telemetry::init(config.log_format, default_filter);
    match cli.command {
        Command::Serve {
            listen,
            metrics_listen,
        } => {
            if let Some(l) = listen {
                config.listen = l;
            }
            if let Some(m) = metrics_listen {
                config.metrics_listen = Some(m);
            }
            serve(config).await
        }
        Command::Admin(cmd) => admin(config, cmd).await,
        Command::Demo {
            providers,
            trajectories,
            seed,
            listen,
            exit,
            period,
        } => {
            let dir = cli
                .global
                .data_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from("demo-data"));
            crate::demo::run(
                config,
                crate::demo::DemoOptions {
                    dir,
                    providers,
                    trajectories,
                    seed,
                    listen,
                    exit,
                    period,
                },
            )
            .await
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let app = Application::build(config).await?;
    let c = app.config();
    let report = app.report();
    println!("Kwaliteitsmonitor service {}", env!("CARGO_PKG_VERSION"));
    println!(
        "  region      {} ({})",
        app.state().region.name,
        app.state().region.code
    );
    println!("  data dir    {}", c.data_dir.display());
    println!("  database    {}", c.database_url_redacted());
    println!("  keys        {}", keys_line(&report.keys));
    println!(
        "  active key  {}",
        app.state()
            .keyring
            .active_key_id()
            .map(|k| k.to_string())
            .unwrap_or_else(|| "none".into())
    );
    let base = format!("http://{}", app.local_addr());
    println!("  API         {base}  (keys: {base}/v1/keys, OpenAPI: {base}/v1/openapi.json)");
    match app.metrics_addr() {
        Some(m) => println!("  metrics     http://{m}/metrics"),
        None => println!("  metrics     off"),
    }
    println!("Stop with Ctrl-C.");
    app.run_until_stopped().await
}

/// `admin index verify`: the instance does the comparison (it holds the index); this prints it.
async fn index_verify(url: &str, token: &str) -> anyhow::Result<()> {
    let base = url.trim_end_matches('/');
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        anyhow::bail!(
            "--url {url}: give the instance's API with its scheme, e.g. http://127.0.0.1:8080"
        );
    }
    let res = reqwest::Client::new()
        .get(format!("{base}/v1/admin/index"))
        .bearer_auth(token.trim())
        .timeout(std::time::Duration::from_secs(600))
        .send()
        .await
        .with_context(|| format!("asking {base} for its index check"))?;
    let status = res.status();
    if !status.is_success() {
        let body = res.text().await.unwrap_or_default();
        let hint = match status.as_u16() {
            401 => " (pass an admin token with --token or KWM_TOKEN)",
            403 => " (the token is not an admin's)",
            _ => "",
        };
        anyhow::bail!("{base} answered {status}{hint}: {body:.300}");
    }
    let check: kwm_schemas::api::IndexCheck = res
        .json()
        .await
        .with_context(|| format!("{base} did not answer with an index check"))?;
    print!("{}", index_check_table(&check));
    let rows_agree =
        check.index_rows == check.stored_rows && check.years.iter().all(|y| y.consistent);
    if !check.consistent && rows_agree {
        // Only the change marks were apart: writes kept landing between the two reads.
        anyhow::bail!(
            "{base} could not compare at one change mark: uploads or withdrawals kept landing during \
             the check; run it again when they are quiet"
        );
    }
    if !check.consistent {
        anyhow::bail!(
            "the release index of {base} differs from the stored rows{}; restart the instance to \
             load it afresh, and report the years above",
            match check
                .years
                .iter()
                .filter(|y| !y.consistent)
                .map(|y| y.year.to_string())
                .collect::<Vec<_>>()
            {
                v if v.is_empty() => String::new(),
                v => format!(" (start years {})", v.join(", ")),
            }
        );
    }
    println!(
        "release index consistent with the store at change mark {}",
        check.mark
    );
    Ok(())
}

fn index_check_table(c: &kwm_schemas::api::IndexCheck) -> String {
    let mut out = format!(
        "change mark {}: {} rows in the index, {} stored\n{:<6} {:>10} {:>10}  {}\n",
        c.mark, c.index_rows, c.stored_rows, "start", "index", "stored", "digests"
    );
    for y in &c.years {
        out.push_str(&format!(
            "{:<6} {:>10} {:>10}  {}\n",
            y.year,
            y.index_rows,
            y.stored_rows,
            if y.consistent { "equal" } else { "DIFFER" }
        ));
    }
    out
}

/// What the start-up message says of the keys: where they are, what was done to them now.
fn keys_line(r: &crate::keys::KeysReport) -> String {
    let mut s = format!(
        "in the database, sealed under the master key from {}",
        r.master_key_from
    );
    match &r.initialised {
        Some(crate::keys::Initialised::Created) => s.push_str(" (created now)"),
        Some(crate::keys::Initialised::Imported(dir)) => s.push_str(&format!(
            " (imported now from {}; keep those files as a backup or remove them)",
            dir.display()
        )),
        None => {}
    }
    if let Some(path) = &r.created_master_key_file {
        s.push_str(&format!(
            "\n              master key created in {}: back it up apart from the database (without \
             it the keys do not open); replicas need it as KWM_MASTER_KEY",
            path.display()
        ));
    }
    s
}

async fn admin(config: Config, cmd: AdminCommand) -> anyhow::Result<()> {
    // Asks a running instance over its API: opens no store here.
    if let AdminCommand::Index(IndexCommand::Verify { url, token }) = &cmd {
        return index_verify(url, token).await;
    }
    let mode = if matches!(cmd, AdminCommand::Init) {
        OpenMode::Init
    } else {
        OpenMode::Admin
    };
    let (state, report) = open_state(&config, mode, crate::clock::system()).await?;
    let actor = audit_trail::operator();
    // What `app::operator`'s commands need, as the person running this.
    let desk = operator::Desk {
        store: state.store.as_ref(),
        region: &state.region,
        actor: &actor,
        clock: state.clock.as_ref(),
    };
    match cmd {
        AdminCommand::Index(IndexCommand::Verify { url, token }) => {
            index_verify(&url, &token).await?;
        }
        AdminCommand::Init => {
            let db = config.database_url_redacted();
            match &report.keys.initialised {
                Some(how) => {
                    let what = match how {
                        crate::keys::Initialised::Created => "created new service keys".to_string(),
                        crate::keys::Initialised::Imported(dir) => {
                            format!("imported the key files of {}", dir.display())
                        }
                    };
                    println!("Initialised database {db}: {what}.");
                }
                None => println!(
                    "Database {db} was initialised on {}; the master key at hand opens its keys. \
                     Nothing changed.",
                    timestamp(report.keys.initialised_at)
                ),
            }
            println!(
                "The keys are sealed under the master key from {}.",
                report.keys.master_key_from
            );
            if let Some(path) = &report.keys.created_master_key_file {
                println!(
                    "Created the master key {} (mode 0600). Back it up apart from the database: \
                     without it the keys do not open. Every instance on this database needs it, \
                     as KWM_MASTER_KEY or as master.key in its data dir.",
                    path.display()
                );
            }
        }
        AdminCommand::Provider(ProviderCommand::Add {
            agb,
            name,
            signing_key,
        }) => {
            let agb: AgbCode = agb.parse().context("--agb")?;
            let public = read_signing_public_key(&signing_key)?;
            let (_, token) = operator::register_provider(desk, agb, &name, public).await?;
            println!("Registered provider {agb} ({name}).");
            println!("Its bearer token (shown once, store it safely):");
            println!("{}", token.as_str());
        }
        AdminCommand::Provider(ProviderCommand::SetKey { agb, signing_key }) => {
            let agb: AgbCode = agb.parse().context("--agb")?;
            let public = read_signing_public_key(&signing_key)?;
            match operator::replace_provider_key(desk, agb, &public).await? {
                operator::KeyChange::Unchanged => {
                    println!("Provider {agb} already has this signing key; nothing changed.");
                }
                operator::KeyChange::Replaced { name } => println!(
                    "Replaced the signing key of provider {agb} ({name}); batches signed with the old key are refused from now on."
                ),
            }
        }
        AdminCommand::Provider(ProviderCommand::List) => {
            for p in state.store.list_providers().await? {
                println!("{}  {}", p.agb, p.name);
            }
        }
        AdminCommand::Token(TokenCommand::Issue { role, scope, label }) => {
            let role: Role = role.parse().context("--role")?;
            let (id, token) =
                operator::issue_scoped_token(desk, role, scope.as_deref(), &label).await?;
            println!("Issued token {id} for role {role}.");
            println!("The token (shown once, store it safely):");
            println!("{}", token.as_str());
        }
        AdminCommand::Keys(KeysCommand::Rotate {
            activate_after,
            retire_after,
        }) => {
            let id = operator::rotate_keys(
                &state.keyring,
                &actor,
                activate_after,
                retire_after,
            )
            .await?;
            println!("Added key {id}; it becomes active in {activate_after} s, the current key retires {retire_after} s after that.");
            println!("Running instances see it at their next key reload (key_reload_secs, or send them SIGHUP).");
        }
        AdminCommand::Token(TokenCommand::Revoke { id }) => {
            match operator::revoke_token(desk, id).await? {
                operator::Revocation::AlreadyRevoked => println!("Token {id} was already revoked."),
                operator::Revocation::Revoked(role) => {
                    println!("Revoked token {id} ({role}); it is refused from now on.")
                }
            }
        }
        AdminCommand::Token(TokenCommand::List) => {
            print!("{}", token_table(&state.store.list_tokens().await?));
        }
        AdminCommand::Audit(AuditCommand::Verify { anchor }) => {
            let recorded = match &anchor {
                Some(path) => audit_trail::Anchor::read(path)?,
                None => None,
            };
            let v = audit_trail::verify(state.store.as_ref(), recorded).await?;
            if let Err(e) = &v.result {
                anyhow::bail!("audit chain broken: {e} ({} entries read)", v.entries);
            }
            println!("audit chain intact: {} entries", v.entries);
            if let Some(head) = v.head {
                println!("head: entry {} {}", head.seq, hex::encode(head.hash));
                if let Some(path) = &anchor {
                    head.write(path)?;
                    println!("recorded the head in {}", path.display());
                }
            }
        }
        AdminCommand::Audit(AuditCommand::List { after, limit }) => {
            let entries = state
                .store
                .list_audit(after, limit.clamp(1, 10_000), None)
                .await?;
            print!("{}", audit_table(&entries));
        }
        AdminCommand::Round(RoundCommand::Publish { period }) => {
            let period: kwm_schemas::Period = period.parse().context("--period")?;
            let actor = audit_trail::operator();
            let o = crate::app::rounds::publish_round(&state.round_deps(), period, &actor, false)
                .await
                .map_err(|e| anyhow::anyhow!("{}", problem_text(&e)))?;
            let r = &o.round;
            println!(
                "round {} of {} version {}: {}",
                r.id, r.period, r.version, o.outcome
            );
            for c in &r.charges {
                println!("  charged rho {} to data year {}", c.rho, c.data_year);
            }
            if o.outcome != "published" {
                println!("  (the data have not changed since this version: nothing was charged)");
            }
        }
        AdminCommand::Round(RoundCommand::List) => {
            let (rounds, planned) =
                crate::app::rounds::list_rounds(state.store.as_ref(), &state.region)
                    .await
                    .map_err(|e| anyhow::anyhow!("{}", problem_text(&e)))?;
            if rounds.is_empty() {
                println!("no rounds");
            }
            for r in &rounds {
                let charges: Vec<String> = r
                    .charges
                    .iter()
                    .map(|c| format!("{}: {}", c.data_year, c.rho))
                    .collect();
                println!(
                    "{}  {:<8} v{:<3} {}  by {:<20} rho {}",
                    r.id,
                    r.period.to_string(),
                    r.version,
                    timestamp(r.created_at),
                    r.published_by,
                    charges.join(", ")
                );
            }
            for p in &planned {
                println!("planned: {} from {}", p.period, p.publish_after);
            }
        }
        AdminCommand::Region(RegionCommand::KeyCheck(KeyCheckCommand::Set {
            check_value,
            replace,
        })) => match operator::set_regional_key_check(desk, &check_value, replace).await? {
            operator::CheckChange::Unchanged => {
                println!("This check value is registered already; nothing changed.");
            }
            operator::CheckChange::Registered(text) => println!(
                "Registered the check value of the region's key: {text}. Uploads pseudonymised under \
                 another regional key are refused from now on."
            ),
        },
        AdminCommand::Project(ProjectCommand::Add {
            name,
            purpose,
            rho,
            expires,
        }) => {
            let rho: kwm_schemas::region::Rho = rho
                .parse()
                .map_err(|e| anyhow::anyhow!("--rho {rho:?}: {e}"))?;
            let format = time::macros::format_description!("[year]-[month]-[day]");
            let expires = time::Date::parse(&expires, format)
                .with_context(|| format!("--expires {expires:?}: a day as YYYY-MM-DD"))?;
            let p = research::add_project(desk, &name, &purpose, rho, expires).await?;
            println!(
                "Registered project {} ({}) with rho {} until {}.",
                p.id,
                p.name,
                research::rho_text(p.rho_nanos),
                p.expires_on
            );
            println!(
                "Issue its researchers' tokens with `admin token issue --role researcher --scope {}`.",
                research::project_scope(&p.id)
            );
        }
        AdminCommand::Project(ProjectCommand::List) => {
            print!("{}", project_table(&state.store.list_projects().await?));
        }
        AdminCommand::Project(ProjectCommand::Close { id }) => {
            let p = research::close_project(desk, &id).await?;
            println!(
                "Closed project {} ({}); it spent rho {} of {}.",
                p.id,
                p.name,
                research::rho_text(p.spent_nanos),
                research::rho_text(p.rho_nanos)
            );
        }
        AdminCommand::Extract(ExtractCommand::List) => {
            let extracts = state.store.list_extracts(None).await?;
            if extracts.is_empty() {
                println!("no extracts");
            }
            for x in extracts {
                let state_text = match &x.produced {
                    Some((by, at, report)) => format!(
                        "produced {} by {by}; k {} l {}",
                        timestamp(*at),
                        report["k"],
                        report["l"]
                    ),
                    None => "requested: waiting for approval".into(),
                };
                println!(
                    "{}  project {}  asked {} by {}  {state_text}\n    {}",
                    x.id,
                    x.project,
                    timestamp(x.requested_at),
                    x.requested_by,
                    x.request
                );
            }
        }
        AdminCommand::Extract(ExtractCommand::Approve { id }) => {
            let id: uuid::Uuid = id
                .parse()
                .with_context(|| format!("{id:?}: an extract id, as `admin extract list` shows it"))?;
            let x = research::approve_extract(desk, id).await?;
            let report = x.report.as_ref();
            println!(
                "Produced extract {id} of project {}: {} records, k {} and l {} reached; its project \
                 downloads it at {}.",
                x.project,
                report.map_or(0, |r| r.records_out),
                report.map_or(0, |r| r.k),
                report.map_or(0, |r| r.l),
                x.download.unwrap_or_default()
            );
        }
        AdminCommand::Region(RegionCommand::KeyCheck(KeyCheckCommand::Show)) => {
            match state.store.get_regional_key_check().await? {
                Some(c) => println!(
                    "{}  registered {}",
                    hex::encode(c.check_value),
                    c.registered_at
                        .format(&time::format_description::well_known::Rfc3339)
                        .unwrap_or_default()
                ),
                None => println!(
                    "no check value registered: uploads are refused until the operator runs \
                     `kwm-service admin region key-check set HEX` with the check value that \
                     `kwm keygen --regional` printed for the region's key"
                ),
            }
        }
        AdminCommand::Privacy => {
            let report = crate::app::rounds::privacy_report(state.store.as_ref(), &state.region)
                .await
                .map_err(|e| anyhow::anyhow!("{}", problem_text(&e)))?;
            println!("{}", report.guarantee_en);
            println!(
                "mechanism {}, cap rho {} per data year (research reserve {})",
                report.mechanism,
                report.rho_per_data_year,
                report
                    .research_reserve
                    .map(|r| r.to_string())
                    .unwrap_or_else(|| "0".into())
            );
            if report.years.is_empty() {
                println!("nothing charged yet");
            }
            for y in &report.years {
                println!(
                    "data year {}: spent {}, remaining {}",
                    y.data_year, y.spent_total, y.remaining
                );
                for s in &y.spent {
                    println!(
                        "  {} {} rho {} at {}",
                        s.kind,
                        s.subject,
                        s.rho,
                        timestamp(s.at)
                    );
                }
            }
        }
        AdminCommand::Keys(KeysCommand::List) => {
            print!("{}", key_table(&state.keyring.public_infos()));
        }
    }
    Ok(())
}

/// A provider's signing public key from the file the operator was given: `signing.pub` of `kwm
/// keygen`, one line with the base64 of the raw 32-byte Ed25519 key (lines starting with `#` are
/// comments). Anything else is named for what it is, and what is needed instead; a private key is
/// never echoed.
pub fn read_signing_public_key(path: &Path) -> anyhow::Result<Vec<u8>> {
    const NEED: &str =
        "`--signing-key` needs the provider's signing.pub from `kwm keygen` (one line: \
                        the base64 of a 32-byte Ed25519 public key)";
    let shown = path.display();
    let bytes = std::fs::read(path).with_context(|| format!("reading {shown}"))?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let secret_names = [
        kwm_sdk::keys::SIGNING_KEY_FILE,
        kwm_sdk::keys::TRAJECTORY_KEY_FILE,
        "regional.key",
    ];
    if secret_names.contains(&name) {
        anyhow::bail!(
            "{shown} is a provider's private key file ({name}), not its public key; {NEED}. \
             A private key stays with the provider: ask for signing.pub, and if {name} was sent \
             over an open channel, have the provider make new keys"
        );
    }
    let Ok(text) = std::str::from_utf8(&bytes) else {
        let what = if bytes.first() == Some(&0x30) {
            "binary DER data, which looks like a private key (PKCS#8, as in signing.key)"
        } else {
            "binary data, not text"
        };
        anyhow::bail!("{shown} holds {what}; {NEED}");
    };
    let mut lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    // `kwm keygen` states the kind of each key file on its first line; older files lack it.
    if let Some(kind) = lines.first().and_then(|l| l.strip_prefix("kind:")) {
        let kind = kind.trim();
        if kind != kwm_sdk::keys::KeyKind::SigningPublic.label() {
            anyhow::bail!("{shown} is a key file of kind {kind:?}, not signing-public-key; {NEED}");
        }
        lines.remove(0);
    }
    if text.contains("PRIVATE KEY") {
        anyhow::bail!("{shown} holds a PEM private key; {NEED}");
    }
    let [line] = lines[..] else {
        anyhow::bail!(
            "{shown} holds {} lines of text instead of one; {NEED}",
            lines.len()
        );
    };
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(line) else {
        anyhow::bail!("{shown} holds text that is not base64; {NEED}");
    };
    match decoded.len() {
        32 => Ok(decoded),
        n if decoded.first() == Some(&0x30) => anyhow::bail!(
            "{shown} holds the base64 of {n} bytes of DER data, which looks like a private key; {NEED}"
        ),
        n => anyhow::bail!("{shown} holds the base64 of {n} bytes, not of 32; {NEED}"),
    }
}

/// The service's HPKE keys as a table: id, state, created, activated, retired (UTC).
pub fn key_table(keys: &[kwm_schemas::api::PublicKeyInfo]) -> String {
    if keys.is_empty() {
        return "no keys\n".into();
    }
    let mut s = format!(
        "{:<16}  {:<8}  {:<19}  {:<19}  {:<19}\n",
        "KEY ID", "STATE", "CREATED (UTC)", "ACTIVATED (UTC)", "RETIRED (UTC)"
    );
    for k in keys {
        let state = serde_json::to_value(k.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| format!("{:?}", k.state).to_lowercase());
        s.push_str(&format!(
            "{:<16}  {:<8}  {:<19}  {:<19}  {:<19}\n",
            k.key_id.to_string(),
            state,
            timestamp(k.created_at),
            k.activated_at.map_or_else(|| "-".to_string(), timestamp),
            k.retired_at.map_or_else(|| "-".to_string(), timestamp),
        ));
    }
    s
}

/// What a problem says to a person at a terminal: its detail, and the date it names if any.
fn problem_text(e: &crate::app::error::ApiError) -> String {
    match e {
        crate::app::error::ApiError::Internal(inner) => format!("{inner:#}"),
        other => other.to_string_detail(),
    }
}

fn timestamp(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(time::macros::format_description!(
            "[year]-[month]-[day] [hour]:[minute]:[second]"
        ))
        .unwrap_or_default()
}

/// The tokens as a table: id, role, scope, label, issued, revoked. Never a hash.
pub fn token_table(tokens: &[TokenRecord]) -> String {
    if tokens.is_empty() {
        return "no tokens\n".into();
    }
    let mut s = format!(
        "{:>5}  {:<12}  {:<12}  {:<19}  {:<19}  {}\n",
        "ID", "ROLE", "SCOPE", "ISSUED (UTC)", "REVOKED (UTC)", "LABEL"
    );
    for t in tokens {
        s.push_str(&format!(
            "{:>5}  {:<12}  {:<12}  {:<19}  {:<19}  {}\n",
            t.id,
            t.role.as_str(),
            t.scope.as_deref().unwrap_or("-"),
            timestamp(t.created_at),
            t.revoked_at.map_or_else(|| "-".to_string(), timestamp),
            t.label
        ));
    }
    s
}

/// Research projects, one per line.
pub fn project_table(projects: &[crate::store::Project]) -> String {
    if projects.is_empty() {
        return "no projects\n".into();
    }
    let mut s = format!(
        "{:<5}  {:<10}  {:<10}  {:<10}  {:<7}  {}\n",
        "ID", "RHO", "SPENT", "UNTIL", "STATE", "NAME"
    );
    for p in projects {
        s.push_str(&format!(
            "{:<5}  {:<10}  {:<10}  {:<10}  {:<7}  {}\n",
            p.id,
            research::rho_text(p.rho_nanos),
            research::rho_text(p.spent_nanos),
            p.expires_on,
            if p.closed_at.is_some() {
                "closed"
            } else {
                "open"
            },
            p.name
        ));
    }
    s
}

/// Audit entries, one per line: seq, time, action, actor, provider, subject, hash prefix.
pub fn audit_table(entries: &[AuditEntry]) -> String {
    if entries.is_empty() {
        return "no entries\n".into();
    }
    let mut s = format!(
        "{:>6}  {:<19}  {:<22}  {:<22}  {:<8}  {:<16}  {}\n",
        "SEQ", "AT (UTC)", "ACTION", "ACTOR", "PROVIDER", "HASH", "SUBJECT"
    );
    for e in entries {
        let n = &e.entry;
        s.push_str(&format!(
            "{:>6}  {:<19}  {:<22}  {:<22}  {:<8}  {:<16}  {}\n",
            e.seq,
            timestamp(n.at),
            n.action.as_str(),
            format!("{} {}", n.actor_role, n.actor_id),
            n.provider
                .map_or_else(|| "-".to_string(), |p| p.to_string()),
            &hex::encode(e.hash)[..16],
            n.subject
        ));
    }
    s
}
