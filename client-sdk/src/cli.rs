//! The `kwm` command line: argument parsing, settings from `kwm.toml` and the environment, and the
//! human and `--json` output of each command. The work itself is done by the library modules.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use kwm_schemas::api::BatchReceipt;
use kwm_schemas::release::{ProviderScores, ReleaseCell, ReleaseRow};
use kwm_schemas::{AgbCode, Period, RegionConfig};

use crate::batch::DEFAULT_BATCH_SIZE;
use crate::client::Client;
use crate::config::LoadedConfig;
use crate::custody::{self, Withdrawal};
use crate::keys::{
    ProviderKeys, RegionalKey, SIGNING_KEY_FILE, SIGNING_PUB_FILE, TRAJECTORY_KEY_FILE,
};
use crate::prepare::{BadRow, Validation};
use crate::secret::Token;
use crate::synth::{self, SynthOptions};
use crate::upload::{self, UploadObserver, UploadOptions, UploadReport};
use crate::withdrawn::WithdrawnList;

#[derive(Debug, Parser)]
#[command(
    name = "kwm",
    version,
    about = "Kwaliteitsmonitor provider tool: validate, pseudonymise, seal and upload trajectory exports",
    long_about = "Kwaliteitsmonitor provider tool.\n\n\
        Validates a provider's CSV export, pseudonymises the BSN and the trajectory number on this \
        machine, coarsens dates to months and the birth date to an age band, seals the records with HPKE \
        to the custodian's key, signs them with the provider's key and uploads them.\n\n\
        Exit codes: 0 success, 1 failure (service, network, keys), 2 invalid input or usage."
)]
pub struct Cli {
    /// Settings file (default: ./kwm.toml when it exists). Flags override it.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the provider's keys (signing.key, signing.pub, trajectory.key), or with --regional the
    /// region's pseudonymisation key
    Keygen(KeygenArgs),
    /// Write realistic synthetic exports for the region, one per synthetic provider
    Synth(SynthArgs),
    /// Validate an export and upload it sealed, or show with --dry-run what would be sent. Every
    /// upload is new (new batch ids) and applies; the summary says what it changed
    Upload(UploadArgs),
    /// List this provider's batches at the service
    Batches(BatchesArgs),
    /// Withdraw a batch, or one trajectory by its number (then left out of later uploads), from the
    /// service
    Withdraw(WithdrawArgs),
    /// Write this provider's records as the service stores them (pseudonymised, coarsened) to a CSV file
    Export(ExportArgs),
    /// Show this provider's own figures of a period next to the regional benchmark, or write them as a
    /// spreadsheet with --csv or --xlsx
    Scores(ScoresArgs),
    /// A researcher's query, answered with differential privacy and charged to the project (or with
    /// --estimate, its cost and interval widths first); printed as a table, or as CSV
    Query(QueryArgs),
}

#[derive(Debug, Args)]
pub struct QueryArgs {
    /// One SELECT ... FROM trajectories ... in the service's dialect (README, "Research")
    #[arg(long, value_name = "SQL")]
    pub sql: String,
    /// The rho to spend on the answer (default 0.01)
    #[arg(long, value_name = "RHO")]
    pub rho: Option<String>,
    /// Only what the query would cost and how wide its intervals would be; nothing is spent
    #[arg(long)]
    pub estimate: bool,
    /// Print the answer as CSV (one line per group and column: value, interval, status)
    #[arg(long)]
    pub csv: bool,
    /// Base URL of the service
    #[arg(long, value_name = "URL")]
    pub service: Option<String>,
    /// The researcher's bearer token (or KWM_TOKEN)
    #[arg(long, env = "KWM_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    pub token: Option<String>,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("format").args(["csv", "xlsx", "json"])))]
pub struct ScoresArgs {
    /// The period: a year (2025), a half-year (2025-H1) or a quarter (2025-Q3)
    #[arg(long, value_name = "PERIOD")]
    pub period: String,
    /// Write a CSV file in the Dutch dialect (`;`, decimal commas) that Excel opens right
    #[arg(long)]
    pub csv: bool,
    /// Write an Excel workbook: figures with 95% intervals and n, a legend, the round and its privacy
    /// guarantee
    #[arg(long)]
    pub xlsx: bool,
    /// Print the scores as the service sends them (JSON)
    #[arg(long)]
    pub json: bool,
    /// The file for --csv or --xlsx (default: kwm-scores-PERIOD.csv or .xlsx here; replaced if it
    /// exists)
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Base URL of the service
    #[arg(long, value_name = "URL")]
    pub service: Option<String>,
    /// Bearer token (or KWM_TOKEN)
    #[arg(long, env = "KWM_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    pub token: Option<String>,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["batch", "trajectory"])))]
pub struct WithdrawArgs {
    /// A batch id, as `kwm batches` lists it. Removes the rows this batch was the last upload to
    /// carry (rows a later upload carried too stay); the id stays withdrawn
    #[arg(long, value_name = "ID")]
    pub batch: Option<String>,
    /// The trajectory number as in the export (pseudonymised here with trajectory.key before it is
    /// sent). It is also added to withdrawn-trajectories.txt in the keys directory, so that later
    /// uploads leave it out (`kwm upload --include-withdrawn` sends it again)
    #[arg(long, value_name = "ID")]
    pub trajectory: Option<String>,
    /// Base URL of the service
    #[arg(long, value_name = "URL")]
    pub service: Option<String>,
    /// Bearer token (or KWM_TOKEN)
    #[arg(long, env = "KWM_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    pub token: Option<String>,
    /// Directory with the provider's keys from `kwm keygen` (needed for --trajectory)
    #[arg(long, value_name = "DIR")]
    pub keys: Option<PathBuf>,
    /// Print the service's receipt as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The CSV file to write (replaced if it exists)
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Base URL of the service
    #[arg(long, value_name = "URL")]
    pub service: Option<String>,
    /// Bearer token (or KWM_TOKEN)
    #[arg(long, env = "KWM_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    pub token: Option<String>,
}

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Directory for signing.key, signing.pub and trajectory.key; with --regional, the key file
    #[arg(long, value_name = "PATH")]
    pub out: PathBuf,
    /// Create the region's pseudonymisation key: done ONCE per region by the regional team, which hands
    /// the same file to every provider (never to the custodian); a provider never makes its own
    #[arg(long)]
    pub regional: bool,
    /// Overwrite existing key files (the old keys are lost for good)
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct SynthArgs {
    /// Directory for one CSV export per provider (named AGB.csv) and providers.txt
    #[arg(long, value_name = "DIR")]
    pub out_dir: PathBuf,
    /// Number of synthetic providers
    #[arg(long, default_value_t = 5)]
    pub providers: u32,
    /// Number of trajectories IN TOTAL over all providers (larger providers get more of them)
    #[arg(long, default_value_t = 10_000)]
    pub trajectories: u64,
    /// Seed: the same seed and options give the same files, byte for byte
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// First year in which trajectories start
    #[arg(long, default_value_t = 2021)]
    pub first_year: i32,
    /// Last year; the export date is 31 December of it, later ends are still running
    #[arg(long, default_value_t = 2025)]
    pub last_year: i32,
    /// Region file (default: the built-in West-Brabant West)
    #[arg(long, value_name = "FILE")]
    pub region: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct UploadArgs {
    /// The CSV export (header row; `,` or `;`; columns in any order)
    pub file: PathBuf,
    /// Base URL of the service
    #[arg(long, value_name = "URL")]
    pub service: Option<String>,
    /// Bearer token; better: the KWM_TOKEN environment variable, which stays out of shell history
    #[arg(long, env = "KWM_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    pub token: Option<String>,
    /// Directory with the provider's keys from `kwm keygen`
    #[arg(long, value_name = "DIR")]
    pub keys: Option<PathBuf>,
    /// The region's pseudonymisation key: the file the regional team hands to every provider (made once
    /// with `kwm keygen --regional`)
    #[arg(long, value_name = "FILE")]
    pub regional_key: Option<PathBuf>,
    /// Print the receipt summary as one JSON object on stdout (and no progress bar)
    #[arg(long)]
    pub json: bool,
    /// Contact nobody; print each record exactly as it would be sealed, one JSON object per line,
    /// grouped per batch with its header fields; the summary goes to stderr
    #[arg(long)]
    pub dry_run: bool,
    /// Send the valid rows and leave out the bad ones (and every row of a repeated trajectory id)
    #[arg(long)]
    pub skip_invalid: bool,
    /// Records per batch (default 10000; at most the region's limit)
    #[arg(long, value_name = "N")]
    pub batch_size: Option<u32>,
    /// Region file (default: the built-in West-Brabant West)
    #[arg(long, value_name = "FILE")]
    pub region: Option<PathBuf>,
    /// An extra export column that may stay in the file; its values are never read (repeatable)
    #[arg(long = "ignore-column", value_name = "NAME")]
    pub ignore_columns: Vec<String>,
    /// The provider's AGB code: checked against the token
    #[arg(long, value_name = "AGB")]
    pub agb: Option<String>,
    /// Also send the trajectories this provider withdrew with `kwm withdraw --trajectory` (listed in
    /// withdrawn-trajectories.txt in the keys directory); without it they are left out with a note
    #[arg(long)]
    pub include_withdrawn: bool,
}

#[derive(Debug, Args)]
pub struct BatchesArgs {
    /// Base URL of the service
    #[arg(long, value_name = "URL")]
    pub service: Option<String>,
    /// Bearer token (or KWM_TOKEN)
    #[arg(long, env = "KWM_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    pub token: Option<String>,
    /// Print the list as JSON
    #[arg(long)]
    pub json: bool,
}

/// A failure of a command: the message for stderr and the exit code.
#[derive(Debug)]
pub struct CliError {
    pub code: u8,
    pub message: String,
}

impl CliError {
    fn usage(message: impl Into<String>) -> Self {
        Self {
            code: 2,
            message: message.into(),
        }
    }
    fn failure(message: impl Into<String>) -> Self {
        Self {
            code: 1,
            message: message.into(),
        }
    }
}

/// Parses the arguments, runs the command and turns the outcome into an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", e.message);
            ExitCode::from(e.code)
        }
    }
}

/// Runs a command line (program name first) in this thread, as the binary would, without touching the
/// process's logging: the end-to-end tests drive `kwm withdraw` and `kwm export` through it. Must not be
/// called from inside an async runtime (the commands start their own).
pub fn run_from<I, T>(args: I) -> Result<(), CliError>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = Cli::try_parse_from(args).map_err(|e| CliError::usage(e.to_string()))?;
    run(cli)
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KWM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // Colour codes only for a person at a terminal, never in a file or a pipe (and not with NO_COLOR).
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .try_init();
}

pub fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Keygen(a) => keygen(a),
        Command::Synth(a) => synth_cmd(a),
        Command::Upload(a) => {
            let config = load_config(cli.config.as_deref())?;
            upload_cmd(a, config)
        }
        Command::Batches(a) => {
            let config = load_config(cli.config.as_deref())?;
            batches_cmd(a, config)
        }
        Command::Withdraw(a) => {
            let config = load_config(cli.config.as_deref())?;
            withdraw_cmd(a, config)
        }
        Command::Export(a) => {
            let config = load_config(cli.config.as_deref())?;
            export_cmd(a, config)
        }
        Command::Scores(a) => {
            let config = load_config(cli.config.as_deref())?;
            scores_cmd(a, config)
        }
        Command::Query(a) => {
            let config = load_config(cli.config.as_deref())?;
            query_cmd(a, config)
        }
    }
}

fn load_config(path: Option<&Path>) -> Result<LoadedConfig, CliError> {
    let loaded = LoadedConfig::discover(path).map_err(|e| CliError::usage(e.to_string()))?;
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    Ok(loaded)
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::failure(format!("cannot start the async runtime: {e}")))
}

fn keygen(a: KeygenArgs) -> Result<(), CliError> {
    let key_err = |e: crate::keys::KeyError| match e {
        crate::keys::KeyError::Exists { .. } => CliError::usage(e.to_string()),
        other => CliError::failure(other.to_string()),
    };
    if a.regional {
        let key = RegionalKey::generate().map_err(key_err)?;
        key.write_to(&a.out, a.force).map_err(key_err)?;
        println!(
            "wrote the region's pseudonymisation key to {} (mode 0600)",
            a.out.display()
        );
        println!("check value: {}", key.check_value());
        println!(
            "the region generates this key ONCE and hands the same file to every provider of the region \
             over a secure channel; never to the custodian. A provider never makes its own: pseudonyms \
             under another key are other children"
        );
        println!(
            "give the check value (never the key) to the service's operator, who registers it once with \
             `kwm-service admin region key-check set CHECK_VALUE`, so that uploads under another key are \
             refused"
        );
        return Ok(());
    }
    let keys = ProviderKeys::generate().map_err(key_err)?;
    keys.write_to(&a.out, a.force).map_err(key_err)?;
    let dir = a.out.display();
    println!("wrote the provider keys to {dir}:");
    println!(
        "  {dir}/{SIGNING_KEY_FILE}      Ed25519 signing key (PKCS#8, mode 0600): keep it here"
    );
    println!("  {dir}/{SIGNING_PUB_FILE}      public key: send it to the custodian to register this provider");
    println!("  {dir}/{TRAJECTORY_KEY_FILE}  trajectory pseudonymisation key (mode 0600): keep it and back it up;");
    println!(
        "  {:width$}  a new one gives every trajectory a new pseudonym",
        "",
        width = dir.to_string().len() + 16
    );
    Ok(())
}

fn load_region(path: Option<&Path>) -> Result<RegionConfig, CliError> {
    match path {
        Some(p) => RegionConfig::from_file(p).map_err(|e| CliError::usage(e.to_string())),
        None => Ok(RegionConfig::wbw()),
    }
}

fn synth_cmd(a: SynthArgs) -> Result<(), CliError> {
    let mut opts = SynthOptions::new(&a.out_dir, a.providers, a.trajectories, a.seed);
    opts.first_year = a.first_year;
    opts.last_year = a.last_year;
    opts.region = load_region(a.region.as_deref())?;
    let out = synth::generate(&opts).map_err(|e| match e {
        synth::SynthError::Options(m) => CliError::usage(m),
        other => CliError::failure(other.to_string()),
    })?;
    println!(
        "wrote {} trajectories of {} synthetic children for {} providers to {}",
        out.trajectories,
        out.children,
        out.providers.len(),
        a.out_dir.display()
    );
    for p in &out.providers {
        println!("  {}  {:>9} rows", p.path.display(), p.rows);
    }
    println!(
        "  {}  (the AGB codes, one per line)",
        out.providers_file.display()
    );
    Ok(())
}

/// Bad rows printed in full; after them only a summary per column, so that one systematic error
/// (a column Excel reformatted) does not bury the screen under thousands of lines.
pub const BAD_ROWS_SHOWN: u64 = 20;
/// Line numbers a column's summary names.
const LINES_NAMED: usize = 5;

/// Prints the first bad rows the moment pass 1 finds them, and at the end a summary per column.
#[derive(Default)]
struct PrintBadRows {
    skip_invalid: bool,
    bad: u64,
    /// Per column (by its number; whole-row problems last): rows, their first lines, the first reason.
    by_column: std::collections::BTreeMap<(usize, String), ColumnTally>,
}

struct ColumnTally {
    rows: u64,
    first_lines: Vec<u64>,
    first_reason: String,
}

impl UploadObserver for PrintBadRows {
    fn bad_row(&mut self, file: &Path, row: &BadRow) {
        self.bad += 1;
        if self.bad <= BAD_ROWS_SHOWN {
            eprintln!("{}", row.render(file));
        } else if self.bad == BAD_ROWS_SHOWN + 1 {
            eprintln!(
                "... more bad rows; a summary per column follows once the whole file is read"
            );
        }
        let mut seen = std::collections::HashSet::new();
        for e in &row.errors {
            let key = match (e.column, e.column_number) {
                (Some(c), Some(n)) => (n, format!("column {c} (col {n})")),
                (Some(c), None) => (usize::MAX - 1, format!("column {c} (not in the file)")),
                (None, Some(n)) => (n, format!("col {n}")),
                (None, None) => (usize::MAX, "the row as a whole".to_string()),
            };
            if !seen.insert(key.clone()) {
                continue;
            }
            let t = self.by_column.entry(key).or_insert_with(|| ColumnTally {
                rows: 0,
                first_lines: Vec::new(),
                first_reason: e.reason.to_string(),
            });
            t.rows += 1;
            if t.first_lines.len() < LINES_NAMED {
                t.first_lines.push(row.line);
            }
        }
    }
    fn validated(&mut self, v: &Validation) {
        if self.bad > BAD_ROWS_SHOWN {
            eprintln!(
                "{} of {} rows are not valid; per column (the first lines, and the first reason):",
                self.bad, v.rows
            );
            for ((_, column), t) in &self.by_column {
                let lines: Vec<String> = t.first_lines.iter().map(u64::to_string).collect();
                eprintln!(
                    "  {column}: {} row{}, line{} {}{}: {}",
                    t.rows,
                    if t.rows == 1 { "" } else { "s" },
                    if t.first_lines.len() == 1 { "" } else { "s" },
                    lines.join(", "),
                    if t.rows > t.first_lines.len() as u64 {
                        ", ..."
                    } else {
                        ""
                    },
                    t.first_reason
                );
            }
        }
        if self.skip_invalid && v.bad_rows > 0 {
            eprintln!(
                "warning: {} of {} rows are not valid and will be left out (--skip-invalid)",
                v.bad_rows, v.rows
            );
        }
    }
}

fn upload_cmd(a: UploadArgs, loaded: LoadedConfig) -> Result<(), CliError> {
    let cfg = &loaded.config;
    let keys_dir = a
        .keys
        .clone()
        .or_else(|| cfg.keys.clone())
        .ok_or_else(|| CliError::usage("no keys directory: pass --keys DIR (from `kwm keygen --out DIR`) or set keys in kwm.toml"))?;
    let regional_path = a
        .regional_key
        .clone()
        .or_else(|| cfg.regional_key.clone())
        .ok_or_else(|| {
            CliError::usage(
                "no regional key: pass --regional-key FILE or set regional_key in kwm.toml",
            )
        })?;
    let service = a.service.clone().or_else(|| cfg.service.clone());
    match &service {
        None if !a.dry_run => {
            return Err(CliError::usage(
                "no service URL: pass --service URL or set service in kwm.toml",
            ))
        }
        // A URL that cannot work is said before the whole file is read.
        Some(url) if !a.dry_run => {
            Client::new(url, None).map_err(|e| CliError::usage(e.to_string()))?;
        }
        _ => {}
    }
    let token = a
        .token
        .as_deref()
        .map(Token::new)
        .or_else(|| loaded.token())
        .filter(|t| !t.is_empty());
    let provider: Option<AgbCode> = match a.agb.as_deref() {
        Some(s) => Some(
            s.parse()
                .map_err(|e: kwm_schemas::ParseError| CliError::usage(format!("--agb: {e}")))?,
        ),
        None => cfg.agb,
    };
    // A missing or malformed key file is a problem with the input the user gave: exit code 2.
    let keys = ProviderKeys::load(&keys_dir).map_err(|e| CliError::usage(e.to_string()))?;
    let regional = RegionalKey::load(&regional_path).map_err(|e| CliError::usage(e.to_string()))?;
    if regional.secret().expose() == keys.trajectory_key().expose() {
        return Err(CliError::usage(format!(
            "{} holds the same key as {}: a trajectory-key, not a regional-key. {}",
            regional_path.display(),
            keys_dir.join(TRAJECTORY_KEY_FILE).display(),
            crate::keys::KeyKind::Regional.instead()
        )));
    }
    for w in keys.warnings().iter().chain(regional.warnings()) {
        eprintln!("warning: {w}");
    }
    let withdrawn = if a.include_withdrawn {
        Default::default()
    } else {
        WithdrawnList::load(&keys_dir)
            .map_err(|e| CliError::usage(e.to_string()))?
            .into_set()
    };
    let mut opts = UploadOptions::new(&a.file, service.unwrap_or_default(), token, keys, regional);
    opts.region = load_region(a.region.as_deref().or(cfg.region.as_deref()))?;
    opts.batch_size = a
        .batch_size
        .or(cfg.batch_size)
        .unwrap_or(DEFAULT_BATCH_SIZE);
    opts.skip_invalid = a.skip_invalid || cfg.skip_invalid.unwrap_or(false);
    opts.dry_run = a.dry_run;
    opts.ignore_columns = cfg
        .ignore_columns
        .iter()
        .chain(&a.ignore_columns)
        .cloned()
        .collect();
    opts.provider = provider;
    opts.withdrawn = withdrawn;
    opts.progress = !a.json && !a.dry_run && std::io::stderr().is_terminal();

    if let Ok(reader) = crate::export::ExportReader::open(
        &a.file,
        &crate::export::ExportOptions {
            ignore_columns: opts.ignore_columns.clone(),
        },
    ) {
        if reader.delimiter() == b'\t' {
            eprintln!(
                "note: {} is tab-separated; it is read with tabs as the delimiter",
                a.file.display()
            );
        }
    }
    let mut observer = PrintBadRows {
        skip_invalid: opts.skip_invalid,
        ..PrintBadRows::default()
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let result = runtime()?.block_on(upload::upload_file_with(&opts, &mut observer, &mut out));
    let _ = out.flush();
    drop(out);
    match result {
        Ok(report) => {
            if report.rows_withdrawn > 0 {
                eprintln!(
                    "note: {} row(s) of trajectories this provider withdrew were left out ({}); \
                     pass --include-withdrawn to send them again",
                    report.rows_withdrawn,
                    WithdrawnList::path_in(&keys_dir).display()
                );
            }
            if a.json {
                let json = serde_json::to_string(&report)
                    .map_err(|e| CliError::failure(format!("cannot write the summary: {e}")))?;
                if a.dry_run {
                    eprintln!("{json}");
                } else {
                    println!("{json}");
                }
            } else if a.dry_run {
                eprint!("{}", summary(&report, None));
            } else {
                print!("{}", summary(&report, Some(&opts.service)));
            }
            Ok(())
        }
        Err(e) => {
            let code = e.exit_code() as u8;
            if let upload::UploadError::Batch { report, .. } = &e {
                if report.batches > 0 {
                    eprint!("{}", summary(report, Some(&opts.service)));
                }
            }
            Err(CliError {
                code,
                message: e.to_string(),
            })
        }
    }
}

/// The human receipt summary.
pub fn summary(r: &UploadReport, service: Option<&str>) -> String {
    let mut s = String::new();
    if r.dry_run {
        s.push_str(&format!(
            "dry run of {}: nothing was sent. {} records in {} batch(es) would be sent\n",
            r.file, r.records_sent, r.batches
        ));
    } else {
        s.push_str(&format!(
            "{} uploaded to {} as provider {}\n",
            r.file,
            service.unwrap_or(""),
            r.provider.map(|p| p.to_string()).unwrap_or_default()
        ));
    }
    let rows = [
        (
            "batches",
            r.batches as u64,
            if r.replayed_batches > 0 {
                format!(
                    "{} replayed (a retry of a batch stored before; {} record(s), changed nothing now)",
                    r.replayed_batches, r.replayed_records
                )
            } else {
                String::new()
            },
        ),
        ("rows read", r.rows_read, String::new()),
        (
            "rows skipped",
            r.rows_skipped,
            if r.rows_skipped > 0 {
                "invalid or repeated trajectory ids (--skip-invalid)".into()
            } else {
                String::new()
            },
        ),
        (
            "withdrawn",
            r.rows_withdrawn,
            if r.rows_withdrawn > 0 {
                "rows of withdrawn trajectories left out (--include-withdrawn sends them)".into()
            } else {
                String::new()
            },
        ),
        ("records sent", r.records_sent, String::new()),
    ];
    for (label, n, note) in rows {
        s.push_str(&format!("  {label:<13} {n:>9}  {note}\n").replace("  \n", "\n"));
    }
    if !r.dry_run {
        s.push_str("  this upload changed:\n");
        for (label, n, note) in [
            ("stored", r.stored, "new trajectories"),
            ("corrected", r.corrected, "replaced an earlier upload"),
            (
                "unchanged",
                r.unchanged,
                "already stored with these values (duplicates)",
            ),
        ] {
            s.push_str(&format!("  {label:<13} {n:>9}  {note}\n"));
        }
        if r.resealed_batches > 0 {
            s.push_str(&format!(
                "  {} batch(es) were sealed again to the service's new key\n",
                r.resealed_batches
            ));
        }
    }
    s
}

/// A client from the flags, falling back to `kwm.toml` (and `KWM_TOKEN`).
fn provider_client(
    service: Option<&str>,
    token: Option<&str>,
    loaded: &LoadedConfig,
) -> Result<Client, CliError> {
    let service = service
        .map(str::to_string)
        .or_else(|| loaded.config.service.clone())
        .ok_or_else(|| {
            CliError::usage("no service URL: pass --service URL or set service in kwm.toml")
        })?;
    let token = token
        .map(Token::new)
        .or_else(|| loaded.token())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            CliError::usage("no token: pass --token, set KWM_TOKEN, or put token in kwm.toml")
        })?;
    Client::new(&service, Some(token)).map_err(|e| CliError::usage(e.to_string()))
}

fn withdraw_cmd(a: WithdrawArgs, loaded: LoadedConfig) -> Result<(), CliError> {
    let what = match (&a.batch, &a.trajectory) {
        (Some(b), None) => Withdrawal::Batch(b.trim().parse().map_err(|_| {
            CliError::usage(format!(
                "--batch {b}: not a batch id (a UUID, as `kwm batches` lists it)"
            ))
        })?),
        (None, Some(t)) => Withdrawal::Trajectory(t.clone()),
        _ => return Err(CliError::usage("name one of --batch ID or --trajectory ID")),
    };
    let (keys_dir, keys) = match &what {
        Withdrawal::Trajectory(_) => {
            let dir = a.keys.clone().or_else(|| loaded.config.keys.clone()).ok_or_else(|| {
                CliError::usage(
                    "no keys directory: --trajectory needs the provider's trajectory.key; pass --keys DIR \
                     or set keys in kwm.toml",
                )
            })?;
            let keys = ProviderKeys::load(&dir).map_err(|e| CliError::usage(e.to_string()))?;
            for w in keys.warnings() {
                eprintln!("warning: {w}");
            }
            // A list that cannot be read is said before anything is withdrawn.
            WithdrawnList::load(&dir).map_err(|e| CliError::usage(e.to_string()))?;
            (Some(dir), Some(keys))
        }
        Withdrawal::Batch(_) => (None, None),
    };
    let client = provider_client(a.service.as_deref(), a.token.as_deref(), &loaded)?;
    let result = runtime()?.block_on(custody::withdraw(&client, &what, keys.as_ref()));
    // The provider's own list: a trajectory withdrawn here stays out of later uploads. Only after the
    // service withdrew it: a mistyped number must not hide a future trajectory of that number.
    let listed = match (&what, &keys_dir, &keys) {
        (Withdrawal::Trajectory(number), Some(dir), Some(keys)) if result.is_ok() => {
            let p = custody::trajectory_pseudonym(keys, number).map_err(CliError::usage)?;
            WithdrawnList::add(dir, &p).map_err(|e| {
                CliError::failure(format!(
                    "the local list of withdrawn trajectories could not be written: {e}"
                ))
            })?;
            Some(WithdrawnList::path_in(dir))
        }
        _ => None,
    };
    let receipt = result.map_err(|e| match e {
        custody::CustodyError::Input(m) => CliError::usage(m),
        other => CliError::failure(other.to_string()),
    })?;
    if a.json {
        let json = serde_json::to_string_pretty(&receipt)
            .map_err(|e| CliError::failure(format!("cannot write the receipt: {e}")))?;
        println!("{json}");
    } else {
        let what = match receipt.batch_id {
            Some(id) => format!("batch {id}"),
            None => "the trajectory".to_string(),
        };
        println!(
            "withdrew {what}: {} trajectory row(s) and {} batch receipt(s) removed (audit entry {})",
            receipt.trajectories_removed, receipt.batches_removed, receipt.audit_seq
        );
        println!(
            "releases published before stay as they are; later releases no longer count these rows"
        );
    }
    if let Some(path) = listed {
        eprintln!(
            "note: listed in {}: later uploads leave this trajectory out (--include-withdrawn sends it)",
            path.display()
        );
    }
    Ok(())
}

fn export_cmd(a: ExportArgs, loaded: LoadedConfig) -> Result<(), CliError> {
    let client = provider_client(a.service.as_deref(), a.token.as_deref(), &loaded)?;
    let n = runtime()?
        .block_on(custody::export_csv(&client, &a.out))
        .map_err(|e| CliError::failure(e.to_string()))?;
    println!(
        "wrote {n} record(s) to {} (client pseudonyms as the service stores them)",
        a.out.display()
    );
    Ok(())
}

fn scores_cmd(a: ScoresArgs, loaded: LoadedConfig) -> Result<(), CliError> {
    let period: Period = a.period.parse().map_err(|e: kwm_schemas::ParseError| {
        CliError::usage(format!("--period {:?}: {e}", a.period))
    })?;
    let format = match (a.csv, a.xlsx) {
        (true, _) => Some("csv"),
        (_, true) => Some("xlsx"),
        _ => None,
    };
    if a.out.is_some() && format.is_none() {
        return Err(CliError::usage(
            "--out FILE goes with --csv or --xlsx (without them the scores are printed)",
        ));
    }
    let client = provider_client(a.service.as_deref(), a.token.as_deref(), &loaded)?;
    let rt = runtime()?;
    let Some(format) = format else {
        let scores = rt
            .block_on(client.scores(period))
            .map_err(|e| CliError::failure(e.to_string()))?;
        if a.json {
            let json = serde_json::to_string_pretty(&scores)
                .map_err(|e| CliError::failure(format!("cannot write the scores: {e}")))?;
            println!("{json}");
        } else {
            print!("{}", scores_table(&scores));
        }
        return Ok(());
    };
    let bytes = rt
        .block_on(client.scores_file(period, format))
        .map_err(|e| CliError::failure(e.to_string()))?;
    let out = a
        .out
        .unwrap_or_else(|| PathBuf::from(format!("kwm-scores-{period}.{format}")));
    custody::write_atomically(&out, &bytes)
        .map_err(|e| CliError::failure(format!("writing {}: {e}", out.display())))?;
    println!(
        "wrote the scores of {period} to {} (your own figures next to the region's)",
        out.display()
    );
    Ok(())
}

fn query_cmd(a: QueryArgs, loaded: LoadedConfig) -> Result<(), CliError> {
    let rho = a
        .rho
        .as_deref()
        .map(|r| {
            r.parse::<kwm_schemas::region::Rho>()
                .map_err(|e| CliError::usage(format!("--rho {r:?}: {e}")))
        })
        .transpose()?;
    let request = kwm_schemas::api::ResearchQueryRequest { sql: a.sql, rho };
    let client = provider_client(a.service.as_deref(), a.token.as_deref(), &loaded)?;
    let rt = runtime()?;
    if a.estimate {
        let e = rt
            .block_on(client.research_estimate(&request))
            .map_err(|e| CliError::failure(e.to_string()))?;
        print!("{}", estimate_table(&e));
        return Ok(());
    }
    let answered = rt
        .block_on(client.research_query(&request))
        .map_err(|e| CliError::failure(e.to_string()))?;
    if a.csv {
        print!("{}", answer_csv(&answered.answer));
    } else {
        print!("{}", answer_table(&answered.answer));
        println!(
            "charged rho {} to project {}; it has {} left.",
            answered.rho_charged, answered.project, answered.project_left
        );
    }
    Ok(())
}

/// A cell as text: the value with its interval, or why it is withheld.
fn cell_text(c: &kwm_schemas::research::AnswerCell) -> String {
    match (&c.value, &c.ci95_low, &c.ci95_high) {
        (Some(v), Some(lo), Some(hi)) => format!("{v} [{lo}, {hi}]"),
        (Some(v), _, _) => v.to_string(),
        _ => c.status.as_str().to_string(),
    }
}

/// An answer as a text table: a line per group, a column per measure.
pub fn answer_table(a: &kwm_schemas::research::ResearchAnswer) -> String {
    let mut header: Vec<String> = a.group_by.clone();
    header.extend(a.columns.iter().map(|c| c.name.clone()));
    let mut lines = vec![header];
    for row in &a.rows {
        let mut line: Vec<String> = row
            .key
            .iter()
            .map(|k| k.clone().unwrap_or_else(|| "-".into()))
            .collect();
        line.extend(row.cells.iter().map(cell_text));
        lines.push(line);
    }
    let widths: Vec<usize> = (0..lines[0].len())
        .map(|i| {
            lines
                .iter()
                .map(|l| l[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for l in &lines {
        let cells: Vec<String> = l
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// An answer as CSV: one line per group and value column, with the interval and the status.
pub fn answer_csv(a: &kwm_schemas::research::ResearchAnswer) -> String {
    let quote = |s: &str| {
        if s.contains([',', '"', '\n']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    };
    let mut out: Vec<String> = a.group_by.iter().map(|g| quote(g)).collect();
    out.extend(["measure", "value", "ci95_low", "ci95_high", "status"].map(String::from));
    let mut text = out.join(",") + "\n";
    for row in &a.rows {
        for (col, cell) in a.columns.iter().zip(&row.cells) {
            let mut line: Vec<String> = row
                .key
                .iter()
                .map(|k| quote(k.as_deref().unwrap_or("")))
                .collect();
            line.push(quote(&col.name));
            let fig = |f: &Option<kwm_schemas::release::Figure>| {
                f.as_ref().map(|f| f.to_string()).unwrap_or_default()
            };
            line.push(fig(&cell.value));
            line.push(fig(&cell.ci95_low));
            line.push(fig(&cell.ci95_high));
            line.push(cell.status.as_str().to_string());
            text.push_str(&line.join(","));
            text.push('\n');
        }
    }
    text
}

/// An estimate as text: the cost, the groups, and the expected widths per column.
fn estimate_table(e: &kwm_schemas::api::ResearchEstimated) -> String {
    let est = &e.estimate;
    let mut out = format!(
        "{} groups; rho {} charged to the project and to each data year read; the project has {} \
         left{}.\n",
        est.groups,
        est.privacy.rho,
        e.project_left,
        if e.affordable { "" } else { " (not enough)" }
    );
    for c in &est.columns {
        let widths: Vec<String> = c
            .widths
            .iter()
            .map(|w| match w.count {
                Some(n) => format!("{} wide at n={n}", w.width),
                None => format!("{} wide", w.width),
            })
            .collect();
        out.push_str(&format!(
            "  {}: published from a noisy count of {}{}; 95% interval {}\n",
            c.name,
            c.min_noisy_count,
            c.reliable_from
                .map(|n| format!(", reliable from n={n}"))
                .unwrap_or_default(),
            widths.join(", ")
        ));
    }
    out
}

/// The totals of a provider's scores as a text table: each criterion, the provider's own figure and
/// the region's with its 95% interval. The per target group figures are in the CSV and XLSX.
pub fn scores_table(s: &ProviderScores) -> String {
    let total = |rows: &[ReleaseRow]| rows.iter().find(|r| r.target_group.is_none()).cloned();
    let (own, region) = (total(&s.own.rows), total(&s.benchmark.rows));
    // A noisy figure with its interval; an exact one (the provider's own data) without.
    let shown = |c: Option<&ReleaseCell>| -> String {
        match c {
            None => "-".into(),
            Some(c) => match c.value {
                Some(v) => match (c.exact, c.ci95_low, c.ci95_high) {
                    (false, Some(lo), Some(hi)) => format!("{v} ({lo}-{hi})"),
                    _ => v.to_string(),
                },
                None => c.status.as_str().into(),
            },
        }
    };
    let mut out = format!(
        "Scores {}, round version {}: own figures (AGB {}) and the region's, all target groups\n",
        s.period, s.benchmark.version, s.provider
    );
    out.push_str(&format!(
        "{:<28} {:<22}  {}\n",
        "CRITERION", "OWN", "REGION (95% INTERVAL)"
    ));
    for (i, c) in s.criteria.iter().enumerate() {
        let own_cell = own.as_ref().and_then(|r| r.cells.get(i));
        let region_cell = region.as_ref().and_then(|r| r.cells.get(i));
        let name: String = c.label_nl.chars().take(28).collect();
        out.push_str(&format!(
            "{name:<28} {:<22}  {}\n",
            shown(own_cell),
            shown(region_cell)
        ));
    }
    out.push_str("per target group, with intervals, n and a legend: --xlsx or --csv\n");
    out
}

fn batches_cmd(a: BatchesArgs, loaded: LoadedConfig) -> Result<(), CliError> {
    let client = provider_client(a.service.as_deref(), a.token.as_deref(), &loaded)?;
    let list = runtime()?
        .block_on(client.list_batches())
        .map_err(|e| CliError::failure(e.to_string()))?;
    if a.json {
        let json = serde_json::to_string_pretty(&list)
            .map_err(|e| CliError::failure(format!("cannot write the list: {e}")))?;
        println!("{json}");
    } else {
        print!("{}", batch_table(&list.batches));
    }
    Ok(())
}

/// The batches as a text table, newest first as the service sends them.
pub fn batch_table(batches: &[BatchReceipt]) -> String {
    if batches.is_empty() {
        return "no batches yet\n".into();
    }
    let mut s = format!(
        "{:<36}  {:<19}  {:>8}  {:>8}  {:>9}  {:>9}\n",
        "BATCH ID", "RECEIVED (UTC)", "RECORDS", "STORED", "CORRECTED", "UNCHANGED"
    );
    for b in batches {
        let received = b
            .received_at
            .to_offset(time::UtcOffset::UTC)
            .format(time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second]"
            ))
            .unwrap_or_default();
        s.push_str(&format!(
            "{:<36}  {:<19}  {:>8}  {:>8}  {:>9}  {:>9}\n",
            b.batch_id, received, b.record_count, b.stored, b.corrected, b.unchanged
        ));
    }
    s.push_str(&format!("{} batch(es)\n", batches.len()));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_parse() {
        let cli = Cli::try_parse_from([
            "kwm",
            "upload",
            "x.csv",
            "--service",
            "http://h",
            "--token",
            "t",
            "--keys",
            "k",
            "--regional-key",
            "r",
            "--json",
            "--dry-run",
            "--skip-invalid",
            "--batch-size",
            "5",
            "--ignore-column",
            "notes",
            "--include-withdrawn",
        ])
        .expect("parses");
        let Command::Upload(a) = cli.command else {
            panic!("upload expected")
        };
        assert!(a.json && a.dry_run && a.skip_invalid && a.include_withdrawn);
        assert_eq!(a.batch_size, Some(5));
        assert_eq!(a.ignore_columns, ["notes"]);
        assert!(
            Cli::try_parse_from(["kwm", "keygen"]).is_err(),
            "--out is required"
        );
    }

    #[test]
    fn withdraw_takes_exactly_one_of_batch_or_trajectory() {
        let ok = Cli::try_parse_from(["kwm", "withdraw", "--trajectory", "T-1", "--keys", "k"])
            .expect("parses");
        let Command::Withdraw(a) = ok.command else {
            panic!("withdraw expected")
        };
        assert_eq!(a.trajectory.as_deref(), Some("T-1"));
        assert!(Cli::try_parse_from(["kwm", "withdraw"]).is_err());
        assert!(
            Cli::try_parse_from(["kwm", "withdraw", "--batch", "x", "--trajectory", "y"]).is_err()
        );
        assert!(
            Cli::try_parse_from(["kwm", "export"]).is_err(),
            "--out is required"
        );
    }

    #[test]
    fn batch_table_lists_each_receipt() {
        let r = BatchReceipt {
            batch_id: uuid::Uuid::nil(),
            provider: "12345678".parse().expect("agb"),
            key_id: "0123456789abcdef".parse().expect("key id"),
            record_count: 10,
            stored: 7,
            corrected: 2,
            unchanged: 1,
            received_at: time::OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("time"),
            content_digest: String::new(),
            replayed: false,
        };
        let t = batch_table(&[r]);
        assert!(
            t.contains("00000000-0000-0000-0000-000000000000  2023-11-14 22:13:20"),
            "{t}"
        );
        assert!(t.ends_with("1 batch(es)\n"));
        assert_eq!(batch_table(&[]), "no batches yet\n");
    }

    #[test]
    fn summary_mentions_every_figure() {
        let r = UploadReport {
            file: "x.csv".into(),
            batches: 3,
            replayed_batches: 1,
            replayed_records: 10,
            rows_read: 100,
            rows_skipped: 2,
            rows_withdrawn: 4,
            records_sent: 94,
            stored: 80,
            corrected: 1,
            unchanged: 3,
            ..UploadReport::default()
        };
        let s = summary(&r, Some("http://h"));
        for needle in [
            "batches",
            "1 replayed",
            "10 record(s), changed nothing now",
            "rows read",
            "rows skipped",
            "withdrawn",
            "--include-withdrawn",
            "this upload changed",
            "stored",
            "corrected",
            "unchanged",
        ] {
            assert!(s.contains(needle), "{needle}: {s}");
        }
    }
}
