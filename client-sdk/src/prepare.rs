//! From export rows to wire records: parse every field into its type, check it against the region's
//! codebooks, pseudonymise, coarsen and run the record's cross-field rules, reporting every bad field of
//! every row with its line and column. Used by both passes of `kwm upload`: pass 1 validates the whole file
//! without keeping it, pass 2 streams the same records into batches.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::io::Read;
use std::path::Path;

use csv::ByteRecord;
use kwm_schemas::{Pseudonym, RegionConfig, WireRecord};

use crate::coarsen;
use crate::export::{delimiter_name, Column, ExportError, ExportOptions, ExportReader, Header};
use crate::fields::{self, optional, required, Reason};
use crate::pseudonym::Pseudonymiser;

/// Everything needed to turn rows into records.
#[derive(Debug)]
pub struct PrepareContext {
    pub region: RegionConfig,
    pub pseudonymiser: Pseudonymiser,
    pub export: ExportOptions,
}

impl PrepareContext {
    pub fn new(region: RegionConfig, pseudonymiser: Pseudonymiser) -> Self {
        Self {
            region,
            pseudonymiser,
            export: ExportOptions::default(),
        }
    }
}

/// One bad field of a row. `column` is `None` for a problem with the row as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub column: Option<Column>,
    /// 1-based column number in the file; `None` when the file lacks the column or the row is at fault.
    pub column_number: Option<usize>,
    /// What is wrong and what is expected. Never repeats the value.
    pub reason: Reason,
}

impl FieldError {
    fn at(header: &Header, column: Column, reason: Reason) -> Self {
        Self {
            column: Some(column),
            column_number: header.column_number(column),
            reason,
        }
    }

    fn row(reason: Reason) -> Self {
        Self {
            column: None,
            column_number: None,
            reason,
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.column, self.column_number) {
            (Some(c), Some(n)) => write!(f, "column {c} (col {n}): {}", self.reason),
            (Some(c), None) => write!(f, "column {c} (not in the file): {}", self.reason),
            (None, Some(n)) => write!(f, "col {n}: {}", self.reason),
            (None, None) => f.write_str(&self.reason),
        }
    }
}

/// A row that cannot be sent, with every reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRow {
    /// 1-based line as a text editor shows it; the header is line 1.
    pub line: u64,
    pub errors: Vec<FieldError>,
}

impl BadRow {
    /// One `FILE:LINE: column NAME (col N): reason` line per error, the form editors and CI logs link.
    pub fn render(&self, file: &Path) -> String {
        self.errors
            .iter()
            .map(|e| format!("{}:{}: {e}", file.display(), self.line))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The first 16 bytes of a trajectory pseudonym: enough to find a repeated trajectory id in a file
/// (a false match needs about 2^64 rows) at half the memory of the whole pseudonym.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrajectoryPrefix([u8; 16]);

impl TrajectoryPrefix {
    pub fn of(p: &Pseudonym) -> Self {
        let mut b = [0u8; 16];
        b.copy_from_slice(&p.as_bytes()[..16]);
        Self(b)
    }
}

impl Hash for TrajectoryPrefix {
    fn hash<H: Hasher>(&self, h: &mut H) {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[..8]);
        h.write_u64(u64::from_le_bytes(b));
    }
}

/// The prefixes are HMAC outputs under the provider's secret key, so they are already uniformly
/// distributed and nobody without the key can aim for collisions: hashing them again (SipHash) would
/// only cost time.
#[derive(Default)]
struct PrefixHasher(u64);

impl Hasher for PrefixHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 ^= v;
    }
}

type PrefixBuild = BuildHasherDefault<PrefixHasher>;

/// Trajectories that occur more than once in a file. Pass 2 leaves every occurrence out: which row is the
/// right one is for the provider to decide.
#[derive(Debug, Clone, Default)]
pub struct DuplicateSet(HashSet<TrajectoryPrefix, PrefixBuild>);

impl DuplicateSet {
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn contains(&self, p: &TrajectoryPrefix) -> bool {
        self.0.contains(p)
    }
}

/// Turns one raw row into a record, or into every reason it cannot be one.
#[derive(Debug)]
pub struct RowParser<'c> {
    ctx: &'c PrepareContext,
    header: Header,
}

/// A parsed row: the trajectory prefix when the trajectory id parsed, and the record or its errors.
#[derive(Debug)]
pub struct ParsedRow {
    pub trajectory: Option<TrajectoryPrefix>,
    pub result: Result<WireRecord, Vec<FieldError>>,
}

impl<'c> RowParser<'c> {
    pub fn new(ctx: &'c PrepareContext, header: Header) -> Self {
        Self { ctx, header }
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    pub fn parse(&self, rec: &ByteRecord) -> ParsedRow {
        let h = &self.header;
        if rec.len() != h.len() {
            let reason = match h.other_delimiter_of(rec) {
                Some(d) => format!(
                    "this row is separated by {} but the header by {}; save the whole file with one \
                     delimiter (in Excel: Save as, CSV UTF-8)",
                    delimiter_name(d),
                    delimiter_name(h.delimiter())
                ),
                None => format!(
                    "the row has {} fields but the header has {}; check the delimiter and the quotes \
                     of this row",
                    rec.len(),
                    h.len()
                ),
            };
            return ParsedRow {
                trajectory: None,
                result: Err(vec![FieldError::row(Reason::Owned(reason))]),
            };
        }
        let mut errors: Vec<FieldError> = Vec::new();
        for &pos in h.blank_columns() {
            if !fields::is_empty(rec.get(pos).unwrap_or_default()) {
                errors.push(FieldError {
                    column: None,
                    column_number: Some(pos + 1),
                    reason: Reason::Borrowed(
                        "this column has no name in the header but holds a value; name it or empty it",
                    ),
                });
            }
        }
        let region = &self.ctx.region;
        macro_rules! field {
            ($col:expr, $parse:expr) => {
                match ($parse)(h.field(rec, $col)) {
                    Ok(v) => Some(v),
                    Err(reason) => {
                        errors.push(FieldError::at(h, $col, reason));
                        None
                    }
                }
            };
        }
        let bsn = field!(Column::Bsn, |r| required(r, fields::bsn));
        let trajectory_id = field!(Column::TrajectoryId, fields::trajectory_id);
        let municipality = field!(Column::Municipality, |r| {
            required(r, fields::municipality).and_then(|m| {
                region.municipality(m).map(|_| m).ok_or_else(|| {
                    Reason::Owned(format!(
                        "not a municipality of region {}; use the CBS code of one of its municipalities",
                        region.code
                    ))
                })
            })
        });
        let target_group = field!(Column::TargetGroup, |r| {
            required(r, fields::code).and_then(|c| {
                if region.target_group(&c).is_some() {
                    Ok(c)
                } else {
                    Err(Reason::Owned(format!(
                        "not a target group of region {} ({})",
                        region.code,
                        list_codes(region.target_groups.iter().map(|t| t.code.as_str()))
                    )))
                }
            })
        });
        let intensity = field!(Column::Intensity, |r| optional(r, fields::intensity));
        let product_category = field!(Column::ProductCategory, |r| optional(
            r,
            fields::product_category
        ));
        let start_date = field!(Column::StartDate, |r| required(r, fields::date));
        let end_date = field!(Column::EndDate, |r| optional(r, fields::date));
        let birth_date = field!(Column::BirthDate, |r| required(r, fields::date));
        let end_reason = field!(Column::EndReason, |r| optional(r, fields::end_reason));
        let satisfaction = field!(Column::Satisfaction, |r| optional(r, fields::satisfaction));
        let respondent = field!(Column::Respondent, |r| optional(r, fields::respondent));
        let carry_on = field!(Column::CarryOnWithoutHelp, |r| optional(
            r,
            fields::carry_on
        ));
        let t_pre = field!(Column::ProblemTPre, |r| optional(r, fields::t_score));
        let t_post = field!(Column::ProblemTPost, |r| optional(r, fields::t_score));
        let instrument = field!(Column::Instrument, |r| {
            optional(r, fields::code).and_then(|c| match c {
                Some(c) if region.instrument(&c).is_none() => Err(Reason::Owned(format!(
                    "not an instrument of region {} ({})",
                    region.code,
                    list_codes(region.instruments.iter().map(|i| i.code.as_str()))
                ))),
                other => Ok(other),
            })
        });
        let goals_agreed = field!(Column::GoalsAgreed, |r| optional(r, fields::goal_count));
        let goals_achieved = field!(Column::GoalsAchieved, |r| optional(r, fields::goal_count));

        let trajectory = trajectory_id.map(|t| self.ctx.pseudonymiser.trajectory(t));
        let prefix = trajectory.as_ref().map(TrajectoryPrefix::of);

        // Rules between exact values, checked before they are coarsened away.
        let mut start_month = None;
        let mut end_month = None;
        let mut age_band = None;
        if let Some(start) = start_date {
            match coarsen::month(start) {
                Ok(m) => start_month = Some(m),
                Err(r) => errors.push(FieldError::at(h, Column::StartDate, r)),
            }
            if let Some(birth) = birth_date {
                match coarsen::age_band(birth, start) {
                    Ok(b) => age_band = Some(b),
                    Err(r) => errors.push(FieldError::at(h, Column::BirthDate, r)),
                }
            }
            if let Some(Some(end)) = end_date {
                if end < start {
                    errors.push(FieldError::at(
                        h,
                        Column::EndDate,
                        Reason::Borrowed("the end date is before the start date"),
                    ));
                }
            }
        }
        if let Some(Some(end)) = end_date {
            match coarsen::month(end) {
                Ok(m) => end_month = Some(Some(m)),
                Err(r) => errors.push(FieldError::at(h, Column::EndDate, r)),
            }
        } else if end_date.is_some() {
            end_month = Some(None);
        }
        if let (Some(Some(agreed)), Some(Some(achieved))) = (goals_agreed, goals_achieved) {
            if achieved > agreed {
                errors.push(FieldError::at(
                    h,
                    Column::GoalsAchieved,
                    Reason::Borrowed("more goals achieved than agreed"),
                ));
            }
        }

        if !errors.is_empty() {
            return ParsedRow {
                trajectory: prefix,
                result: Err(errors),
            };
        }
        let (
            Some(bsn),
            Some(trajectory),
            Some(municipality),
            Some(target_group),
            Some(intensity),
            Some(product_category),
            Some(start_month),
            Some(end_month),
            Some(age_band),
            Some(end_reason),
            Some(satisfaction),
            Some(respondent),
            Some(carry_on),
            Some(t_pre),
            Some(t_post),
            Some(instrument),
            Some(goals_agreed),
            Some(goals_achieved),
        ) = (
            bsn,
            trajectory,
            municipality,
            target_group,
            intensity,
            product_category,
            start_month,
            end_month,
            age_band,
            end_reason,
            satisfaction,
            respondent,
            carry_on,
            t_pre,
            t_post,
            instrument,
            goals_agreed,
            goals_achieved,
        )
        else {
            // Every `None` above pushed an error, so this is unreachable; stay safe anyway.
            return ParsedRow {
                trajectory: prefix,
                result: Err(vec![FieldError::row(Reason::Borrowed(
                    "the row could not be read",
                ))]),
            };
        };
        let record = WireRecord {
            client: self.ctx.pseudonymiser.client(&bsn),
            trajectory,
            municipality,
            target_group,
            intensity,
            product_category,
            start_month,
            end_month,
            age_band,
            end_reason,
            satisfaction,
            respondent,
            carry_on_without_help: carry_on,
            problem_t_pre: t_pre,
            problem_t_post: t_post,
            instrument,
            goals_agreed,
            goals_achieved,
        };
        let issues = record.check(region);
        if issues.is_empty() {
            ParsedRow {
                trajectory: prefix,
                result: Ok(record),
            }
        } else {
            let errors = issues
                .into_iter()
                .map(|i| match Column::from_name(&i.field) {
                    Some(c) => FieldError::at(h, c, Reason::Owned(i.reason)),
                    None => FieldError::row(Reason::Owned(format!("{}: {}", i.field, i.reason))),
                })
                .collect();
            ParsedRow {
                trajectory: prefix,
                result: Err(errors),
            }
        }
    }
}

fn list_codes<'a>(codes: impl Iterator<Item = &'a str>) -> String {
    let all: Vec<&str> = codes.collect();
    if all.len() <= 20 {
        all.join(", ")
    } else {
        format!("{}, ... ({} codes)", all[..20].join(", "), all.len())
    }
}

/// What pass 1 found.
#[derive(Debug, Clone, Default)]
pub struct Validation {
    /// Data rows read (the header and blank lines not counted).
    pub rows: u64,
    /// Rows that would be sent: valid and not a repeated trajectory.
    pub valid: u64,
    /// Rows with at least one error (each was given to the callback).
    pub bad_rows: u64,
    /// Trajectories that occur more than once; pass 2 leaves all their rows out.
    pub duplicates: DuplicateSet,
    /// Valid rows left out only because their trajectory occurs again later in the file.
    pub valid_but_duplicated: u64,
}

/// Pass 1: reads the whole export, calls `on_bad` for every bad row (in file order) and keeps only the
/// trajectory prefixes (16 bytes and a line number per row) to find repeated trajectory ids.
pub fn validate_file(
    path: &Path,
    ctx: &PrepareContext,
    on_bad: &mut dyn FnMut(&BadRow),
) -> Result<Validation, ExportError> {
    let reader = ExportReader::open(path, &ctx.export)?;
    validate_reader(reader, ctx, on_bad)
}

/// Pass 1 over any reader.
pub fn validate_reader<R: Read>(
    mut reader: ExportReader<R>,
    ctx: &PrepareContext,
    on_bad: &mut dyn FnMut(&BadRow),
) -> Result<Validation, ExportError> {
    let parser = RowParser::new(ctx, reader.header().clone());
    let mut first_line: HashMap<TrajectoryPrefix, (u32, bool), PrefixBuild> = HashMap::default();
    let mut out = Validation::default();
    while let Some((line, rec)) = reader.next_row()? {
        out.rows += 1;
        let parsed = parser.parse(rec);
        let mut errors = match parsed.result {
            Ok(_) => Vec::new(),
            Err(e) => e,
        };
        if let Some(p) = parsed.trajectory {
            let line32 = u32::try_from(line).unwrap_or(u32::MAX);
            match first_line.get_mut(&p) {
                Some((first, first_valid)) => {
                    errors.push(FieldError::at(
                        parser.header(),
                        Column::TrajectoryId,
                        Reason::Owned(format!(
                            "the same trajectory id as line {first}; a file holds each trajectory once \
                             (with --skip-invalid every row of this trajectory is left out)"
                        )),
                    ));
                    if out.duplicates.0.insert(p) && *first_valid {
                        out.valid_but_duplicated += 1;
                        *first_valid = false;
                    }
                }
                None => {
                    first_line.insert(p, (line32, errors.is_empty()));
                }
            }
        }
        if errors.is_empty() {
            out.valid += 1;
        } else {
            out.bad_rows += 1;
            on_bad(&BadRow { line, errors });
        }
    }
    out.valid -= out.valid_but_duplicated;
    Ok(out)
}

/// What pass 2 yields for each row.
#[derive(Debug)]
pub enum RowOutcome {
    Record {
        line: u64,
        record: WireRecord,
    },
    Bad(BadRow),
    /// A valid row of a trajectory that occurs more than once in the file.
    Duplicate {
        line: u64,
    },
}

/// Pass 2: the rows of an export as records, leaving out repeated trajectories found by pass 1.
pub struct Records<'c, R: Read> {
    reader: ExportReader<R>,
    parser: RowParser<'c>,
    exclude: DuplicateSet,
    rows: u64,
}

impl<R: Read> fmt::Debug for Records<'_, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Records")
            .field("rows", &self.rows)
            .finish_non_exhaustive()
    }
}

impl<'c> Records<'c, File> {
    pub fn open(
        path: &Path,
        ctx: &'c PrepareContext,
        exclude: DuplicateSet,
    ) -> Result<Self, ExportError> {
        Ok(Self::new(
            ExportReader::open(path, &ctx.export)?,
            ctx,
            exclude,
        ))
    }
}

impl<'c, R: Read> Records<'c, R> {
    pub fn new(reader: ExportReader<R>, ctx: &'c PrepareContext, exclude: DuplicateSet) -> Self {
        let parser = RowParser::new(ctx, reader.header().clone());
        Self {
            reader,
            parser,
            exclude,
            rows: 0,
        }
    }

    /// Bytes of the file read so far.
    pub fn bytes_read(&self) -> u64 {
        self.reader.bytes_read()
    }

    /// Data rows read so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }
}

impl<R: Read> Iterator for Records<'_, R> {
    type Item = Result<RowOutcome, ExportError>;

    fn next(&mut self) -> Option<Self::Item> {
        let (line, rec) = match self.reader.next_row() {
            Ok(Some(row)) => row,
            Ok(None) => return None,
            Err(e) => return Some(Err(e)),
        };
        self.rows += 1;
        let parsed = self.parser.parse(rec);
        Some(Ok(match parsed.result {
            Err(errors) => RowOutcome::Bad(BadRow { line, errors }),
            Ok(_) if parsed.trajectory.is_some_and(|p| self.exclude.contains(&p)) => {
                RowOutcome::Duplicate { line }
            }
            Ok(record) => RowOutcome::Record { line, record },
        }))
    }
}

/// A whole export prepared in memory: for tests and small files. `kwm upload` streams instead.
#[derive(Debug, Default)]
pub struct Prepared {
    pub records: Vec<WireRecord>,
    pub bad_rows: Vec<BadRow>,
    pub rows: u64,
    /// Valid rows left out because their trajectory id occurs more than once.
    pub duplicates_left_out: u64,
}

/// Both passes over a file, collecting everything.
pub fn prepare_file(path: &Path, ctx: &PrepareContext) -> Result<Prepared, ExportError> {
    let mut bad_rows = Vec::new();
    let validation = validate_file(path, ctx, &mut |b| bad_rows.push(b.clone()))?;
    let mut out = Prepared {
        bad_rows,
        rows: validation.rows,
        ..Prepared::default()
    };
    for item in Records::open(path, ctx, validation.duplicates)? {
        match item? {
            RowOutcome::Record { record, .. } => out.records.push(record),
            RowOutcome::Duplicate { .. } => out.duplicates_left_out += 1,
            RowOutcome::Bad(_) => {}
        }
    }
    Ok(out)
}
