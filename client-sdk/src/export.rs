//! Reading a provider's CSV export (DESIGN section 4): the header row, the delimiter (`,`, `;` as Dutch
//! Excel writes it, or a tab), a UTF-8 byte order mark, columns in any order, and a stream of raw rows with the line
//! number a text editor shows. What the fields mean is for [`crate::prepare`].

use std::collections::VecDeque;
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use csv::ByteRecord;

/// The columns of an export, in their canonical order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Column {
    Bsn,
    TrajectoryId,
    Municipality,
    TargetGroup,
    Intensity,
    ProductCategory,
    StartDate,
    EndDate,
    BirthDate,
    EndReason,
    Satisfaction,
    Respondent,
    CarryOnWithoutHelp,
    ProblemTPre,
    ProblemTPost,
    Instrument,
    GoalsAgreed,
    GoalsAchieved,
}

impl Column {
    pub const COUNT: usize = 18;
    pub const ALL: [Column; Column::COUNT] = [
        Column::Bsn,
        Column::TrajectoryId,
        Column::Municipality,
        Column::TargetGroup,
        Column::Intensity,
        Column::ProductCategory,
        Column::StartDate,
        Column::EndDate,
        Column::BirthDate,
        Column::EndReason,
        Column::Satisfaction,
        Column::Respondent,
        Column::CarryOnWithoutHelp,
        Column::ProblemTPre,
        Column::ProblemTPost,
        Column::Instrument,
        Column::GoalsAgreed,
        Column::GoalsAchieved,
    ];

    /// The header name, which is also the field name of [`kwm_schemas::record::FieldIssue`].
    pub fn name(self) -> &'static str {
        match self {
            Column::Bsn => "bsn",
            Column::TrajectoryId => "trajectory_id",
            Column::Municipality => "municipality",
            Column::TargetGroup => "target_group",
            Column::Intensity => "intensity",
            Column::ProductCategory => "product_category",
            Column::StartDate => "start_date",
            Column::EndDate => "end_date",
            Column::BirthDate => "birth_date",
            Column::EndReason => "end_reason",
            Column::Satisfaction => "satisfaction",
            Column::Respondent => "respondent",
            Column::CarryOnWithoutHelp => "carry_on_without_help",
            Column::ProblemTPre => "problem_t_pre",
            Column::ProblemTPost => "problem_t_post",
            Column::Instrument => "instrument",
            Column::GoalsAgreed => "goals_agreed",
            Column::GoalsAchieved => "goals_achieved",
        }
    }

    /// Whether the header must have this column (optional columns may be left out entirely).
    pub fn required(self) -> bool {
        matches!(
            self,
            Column::Bsn
                | Column::TrajectoryId
                | Column::Municipality
                | Column::TargetGroup
                | Column::StartDate
                | Column::BirthDate
        )
    }

    pub fn from_name(name: &str) -> Option<Column> {
        Column::ALL
            .iter()
            .copied()
            .find(|c| c.name().eq_ignore_ascii_case(name.trim()))
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Column {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How to read an export.
#[derive(Debug, Clone, Default)]
pub struct ExportOptions {
    /// Extra columns the user has declared harmless. Their values are never read.
    ///
    /// Any other column that is not one of [`Column::ALL`] is an error, not silently skipped: its data would
    /// not leave the machine either way, but an unexpected column usually means the export is not the one
    /// the user thinks it is (a renamed or misspelt column whose values would silently go missing, or an
    /// export that carries more identifying data than the monitor needs, which the provider's privacy
    /// officer should know about). Naming the column here is that conscious decision.
    pub ignore_columns: Vec<String>,
}

/// Why an export could not be read at all (as opposed to a bad row, which is reported and read past).
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: the file is empty; an export starts with a header row naming its columns")]
    Empty { path: PathBuf },
    #[error("{}", render_header_problems(path, problems))]
    Header {
        path: PathBuf,
        problems: Vec<String>,
    },
    #[error("{path}:{line}: {message}")]
    Csv {
        path: PathBuf,
        line: u64,
        message: String,
    },
}

fn render_header_problems(path: &Path, problems: &[String]) -> String {
    problems
        .iter()
        .map(|p| format!("{}:1: {p}", path.display()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Where each known column is in the file.
#[derive(Debug, Clone)]
pub struct Header {
    positions: [Option<usize>; Column::COUNT],
    /// Columns with an empty name (a trailing delimiter in the header): allowed, but must stay empty.
    blank: Vec<usize>,
    len: usize,
    /// The delimiter the header row was read with (set by [`ExportReader`]; `,` otherwise).
    delimiter: u8,
}

impl Header {
    /// Maps the header row; collects every problem (missing, unknown, repeated columns) at once.
    pub fn parse(record: &ByteRecord, opts: &ExportOptions) -> Result<Header, Vec<String>> {
        let mut positions = [None; Column::COUNT];
        let mut blank = Vec::new();
        let mut unknown = Vec::new();
        let mut problems = Vec::new();
        for (i, raw) in record.iter().enumerate() {
            let Ok(name) = std::str::from_utf8(raw).map(str::trim) else {
                problems.push(format!(
                    "the name of column {} is not UTF-8 text; save the export as UTF-8",
                    i + 1
                ));
                continue;
            };
            if name.is_empty() {
                blank.push(i);
                continue;
            }
            if let Some(c) = Column::from_name(name) {
                match positions[c.index()] {
                    Some(first) => problems.push(format!(
                        "column {c} appears twice (col {} and col {}); keep one",
                        first + 1,
                        i + 1
                    )),
                    None => positions[c.index()] = Some(i),
                }
            } else if !opts
                .ignore_columns
                .iter()
                .any(|ig| ig.trim().eq_ignore_ascii_case(name))
            {
                unknown.push(format!("{name} (col {})", i + 1));
            }
        }
        let missing: Vec<&str> = Column::ALL
            .iter()
            .filter(|c| c.required() && positions[c.index()].is_none())
            .map(|c| c.name())
            .collect();
        if !missing.is_empty() {
            problems.push(format!(
                "missing required column{} {}; the header must name the columns {}",
                if missing.len() > 1 { "s" } else { "" },
                missing.join(", "),
                Column::ALL
                    .iter()
                    .filter(|c| c.required())
                    .map(|c| c.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if !unknown.is_empty() {
            problems.push(format!(
                "unknown column{} {}; remove {} from the export, or pass --ignore-column NAME \
                 (or ignore_columns in kwm.toml) if {} may stay in the file (their values are never read)",
                if unknown.len() > 1 { "s" } else { "" },
                unknown.join(", "),
                if unknown.len() > 1 { "them" } else { "it" },
                if unknown.len() > 1 { "they" } else { "it" },
            ));
        }
        if problems.is_empty() {
            Ok(Header {
                positions,
                blank,
                len: record.len(),
                delimiter: b',',
            })
        } else {
            Err(problems)
        }
    }

    /// The 0-based position of a column, `None` when the file does not have it.
    pub fn position(&self, c: Column) -> Option<usize> {
        self.positions[c.index()]
    }

    /// The 1-based column number a spreadsheet user counts, `None` when the file does not have it.
    pub fn column_number(&self, c: Column) -> Option<usize> {
        self.position(c).map(|p| p + 1)
    }

    /// The raw field of a column in a row; empty when the file does not have the column.
    pub fn field<'r>(&self, record: &'r ByteRecord, c: Column) -> &'r [u8] {
        self.position(c)
            .and_then(|p| record.get(p))
            .unwrap_or_default()
    }

    /// Number of fields in the header row; every row must have as many.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions of columns without a name.
    pub fn blank_columns(&self) -> &[usize] {
        &self.blank
    }

    /// The delimiter of the header row.
    pub fn delimiter(&self) -> u8 {
        self.delimiter
    }

    /// When a row does not have the header's number of fields: the other delimiter that would give
    /// it exactly that many (a header and rows saved with different delimiters), if there is one.
    pub fn other_delimiter_of(&self, record: &ByteRecord) -> Option<u8> {
        let mut line = Vec::new();
        for (i, f) in record.iter().enumerate() {
            if i > 0 {
                line.push(self.delimiter);
            }
            line.extend_from_slice(f);
        }
        DELIMITERS
            .into_iter()
            .filter(|d| *d != self.delimiter)
            .find(|d| line.iter().filter(|b| *b == d).count() + 1 == self.len)
    }
}

/// A streaming reader of one export. Holds one row at a time.
pub struct ExportReader<R: Read> {
    csv: csv::Reader<LineIndex<BufReader<R>>>,
    path: PathBuf,
    header: Header,
    delimiter: u8,
    bom: bool,
    record: ByteRecord,
}

impl<R: Read> fmt::Debug for ExportReader<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExportReader")
            .field("path", &self.path)
            .field("delimiter", &char::from(self.delimiter))
            .finish_non_exhaustive()
    }
}

impl ExportReader<File> {
    /// Opens an export file and reads its header.
    pub fn open(path: &Path, opts: &ExportOptions) -> Result<Self, ExportError> {
        let file = File::open(path).map_err(|source| ExportError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_reader(file, path, opts)
    }
}

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

impl<R: Read> ExportReader<R> {
    /// Reads the header from any reader; `path` names the source in messages.
    pub fn from_reader(reader: R, path: &Path, opts: &ExportOptions) -> Result<Self, ExportError> {
        let io = |source| ExportError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut buf = BufReader::with_capacity(1 << 16, reader);
        let bom = buf.fill_buf().map_err(io)?.starts_with(UTF8_BOM);
        if bom {
            buf.consume(UTF8_BOM.len());
        }
        let delimiter = sniff_delimiter(buf.fill_buf().map_err(io)?);
        let mut csv = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .delimiter(delimiter)
            .buffer_capacity(1 << 16)
            .from_reader(LineIndex::new(buf));
        let mut record = ByteRecord::new();
        let got = csv
            .read_byte_record(&mut record)
            .map_err(|e| csv_error(path, 1, e))?;
        if !got {
            return Err(ExportError::Empty {
                path: path.to_path_buf(),
            });
        }
        let mut header = Header::parse(&record, opts).map_err(|problems| ExportError::Header {
            path: path.to_path_buf(),
            problems,
        })?;
        header.delimiter = delimiter;
        Ok(Self {
            csv,
            path: path.to_path_buf(),
            header,
            delimiter,
            bom,
            record,
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The delimiter found in the header row.
    pub fn delimiter(&self) -> u8 {
        self.delimiter
    }

    /// The next row and its line number (the header is line 1), or `None` at the end. Blank lines are
    /// skipped.
    pub fn next_row(&mut self) -> Result<Option<(u64, &ByteRecord)>, ExportError> {
        let got = self.csv.read_byte_record(&mut self.record).map_err(|e| {
            let line = e.position().map(|p| p.line()).unwrap_or(0);
            csv_error(&self.path, line, e)
        })?;
        if !got {
            return Ok(None);
        }
        let start = self.record.position().map(|p| p.byte()).unwrap_or(0);
        let line = self.csv.get_mut().line_at(start);
        Ok(Some((line, &self.record)))
    }

    /// Bytes of the file read so far, for progress.
    pub fn bytes_read(&self) -> u64 {
        self.csv.position().byte() + if self.bom { 3 } else { 0 }
    }
}

/// Tracks where the line breaks of the file are, so that every row gets the line a text editor shows.
///
/// The csv crate's own line count is taken where the parser starts looking for a record, before it has
/// skipped a blank line or the `\n` of a `\r\n`, so it lags behind in Excel's CRLF files. This sits
/// between the file and the parser, notes the offsets of `\r` and `\n` as they are read (only those of the
/// buffered look-ahead are kept) and answers the line of a record's first byte.
struct LineIndex<R> {
    inner: R,
    offset: u64,
    breaks: VecDeque<(u64, u8)>,
    newlines_before: u64,
}

impl<R> LineIndex<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            offset: 0,
            breaks: VecDeque::new(),
            newlines_before: 0,
        }
    }

    /// The 1-based line of the record the parser started reading at byte `start`: line breaks at the
    /// start (blank lines, the `\n` of a `\r\n`) belong before the record.
    fn line_at(&mut self, start: u64) -> u64 {
        let mut first = start;
        loop {
            while let Some(&(at, b)) = self.breaks.front() {
                if at >= first {
                    break;
                }
                if b == b'\n' {
                    self.newlines_before += 1;
                }
                self.breaks.pop_front();
            }
            match self.breaks.front() {
                Some(&(at, _)) if at == first => first += 1,
                _ => break,
            }
        }
        self.newlines_before + 1
    }
}

impl<R: Read> Read for LineIndex<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        for (i, b) in buf[..n].iter().enumerate() {
            if *b == b'\n' || *b == b'\r' {
                self.breaks.push_back((self.offset + i as u64, *b));
            }
        }
        self.offset += n as u64;
        Ok(n)
    }
}

fn csv_error(path: &Path, line: u64, e: csv::Error) -> ExportError {
    match e.into_kind() {
        csv::ErrorKind::Io(source) => ExportError::Io {
            path: path.to_path_buf(),
            source,
        },
        // Other kinds do not arise for flexible byte records; say so plainly if one does.
        other => ExportError::Csv {
            path: path.to_path_buf(),
            line,
            message: format!("the file is not valid CSV ({})", csv_kind_name(&other)),
        },
    }
}

fn csv_kind_name(kind: &csv::ErrorKind) -> &'static str {
    match kind {
        csv::ErrorKind::Utf8 { .. } => "invalid UTF-8",
        csv::ErrorKind::UnequalLengths { .. } => "rows of unequal length",
        csv::ErrorKind::Seek => "seek",
        _ => "malformed",
    }
}

/// The delimiters an export may use.
pub const DELIMITERS: [u8; 3] = [b',', b';', b'\t'];

/// How a delimiter is named in messages.
pub fn delimiter_name(d: u8) -> &'static str {
    match d {
        b';' => "semicolons (;)",
        b'\t' => "tabs",
        _ => "commas (,)",
    }
}

/// The delimiter the header row uses most: a tab (a tab-separated file), `;` (Dutch Excel) or `,`.
/// Column names hold none of them, so the header decides unambiguously.
fn sniff_delimiter(head: &[u8]) -> u8 {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let count = |d: u8| line.iter().filter(|b| **b == d).count();
    let (tabs, semis, commas) = (count(b'\t'), count(b';'), count(b','));
    if tabs > semis && tabs > commas {
        b'\t'
    } else if semis > commas {
        b';'
    } else {
        b','
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn read_all(text: &[u8], opts: &ExportOptions) -> Result<Vec<(u64, Vec<String>)>, ExportError> {
        let mut r = ExportReader::from_reader(text, Path::new("t.csv"), opts)?;
        let mut out = Vec::new();
        while let Some((line, rec)) = r.next_row()? {
            out.push((
                line,
                rec.iter()
                    .map(|f| String::from_utf8_lossy(f).into_owned())
                    .collect(),
            ));
        }
        Ok(out)
    }

    const REQUIRED: &str = "bsn,trajectory_id,municipality,target_group,start_date,birth_date";

    #[test]
    fn line_numbers_count_the_header_and_blank_lines() {
        let text =
            format!("{REQUIRED}\n1,2,3,4,5,6\n\n1,2,3,4,5,6\r\n\"a\nb\",2,3,4,5,6\n1,2,3,4,5,6\n");
        let rows = read_all(text.as_bytes(), &ExportOptions::default()).expect("reads");
        let lines: Vec<u64> = rows.iter().map(|r| r.0).collect();
        assert_eq!(lines, [2, 4, 5, 7]);
    }

    #[test]
    fn missing_unknown_and_repeated_columns_are_all_reported() {
        let text = "BSN,trajectory_id,trajectory_id,notes,start_date\n";
        let err = read_all(text.as_bytes(), &ExportOptions::default()).expect_err("bad header");
        let msg = err.to_string();
        assert!(
            msg.contains("t.csv:1: column trajectory_id appears twice (col 2 and col 3)"),
            "{msg}"
        );
        assert!(
            msg.contains("missing required columns municipality, target_group, birth_date"),
            "{msg}"
        );
        assert!(msg.contains("unknown column notes (col 4)"), "{msg}");
        assert!(msg.contains("--ignore-column"), "{msg}");
    }

    #[test]
    fn ignored_columns_are_accepted() {
        let text = format!("{REQUIRED},Notes\n1,2,3,4,5,6,x\n");
        let opts = ExportOptions {
            ignore_columns: vec!["notes".into()],
        };
        assert_eq!(read_all(text.as_bytes(), &opts).expect("reads").len(), 1);
    }

    #[test]
    fn empty_file_is_a_clear_error() {
        assert!(matches!(
            read_all(b"", &ExportOptions::default()),
            Err(ExportError::Empty { .. })
        ));
    }

    proptest! {
        #[test]
        fn any_delimiter_bom_and_column_order_reads_the_same(
            order in Just((0..6usize).collect::<Vec<_>>()).prop_shuffle(),
            semicolon in proptest::bool::ANY,
            bom in proptest::bool::ANY,
            crlf in proptest::bool::ANY,
            values in proptest::collection::vec("[a-z0-9 ,;\"]{0,6}", 6),
        ) {
            let names: Vec<&str> = REQUIRED.split(',').collect();
            let d = if semicolon { ";" } else { "," };
            let nl = if crlf { "\r\n" } else { "\n" };
            let quote = |v: &str| format!("\"{}\"", v.replace('"', "\"\""));
            let header: Vec<&str> = order.iter().map(|i| names[*i]).collect();
            let row: Vec<String> = order.iter().map(|i| quote(&values[*i])).collect();
            let mut text = Vec::new();
            if bom { text.extend_from_slice(UTF8_BOM); }
            text.extend_from_slice(format!("{}{nl}{}{nl}", header.join(d), row.join(d)).as_bytes());

            let mut r = ExportReader::from_reader(&text[..], Path::new("t.csv"), &ExportOptions::default())
                .expect("header reads");
            prop_assert_eq!(r.delimiter(), if semicolon { b';' } else { b',' });
            let header = r.header().clone();
            let (line, rec) = r.next_row().expect("reads").expect("one row");
            prop_assert_eq!(line, 2);
            for (i, name) in names.iter().enumerate() {
                let c = Column::from_name(name).expect("known");
                prop_assert_eq!(header.field(rec, c), values[i].as_bytes());
            }
            prop_assert!(r.next_row().expect("reads").is_none());
        }
    }
}
