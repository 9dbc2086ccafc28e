//! An extract as CSV for Python and R: UTF-8 without a byte order mark, `,` between fields, `\n` line
//! ends, one header row. Columns: `client` (the extract's random id; left out when the request asks for
//! no ids), then the chosen columns in the order of the record schema (municipality, target_group,
//! intensity, product_category, start_month, end_month, age_band, end_reason, satisfaction, respondent,
//! carry_on_without_help, problem_t_pre, problem_t_post, instrument, goals_agreed, goals_achieved). A generalised value is its group's label
//! (`2025-Q1`, `0-11`, `wbw`), `*` is suppressed, an empty field is missing.
//!
//! Not the Dutch dialect of the release downloads (`;`, decimal commas, BOM): that one is for
//! spreadsheets, and an extract holds no decimals; `pandas.read_csv` and R's `read.csv` read this as is.

use std::io::Write;

use super::Extract;

/// The header of the client id column.
pub const CSV_CLIENT_COLUMN: &str = "client";

/// Writes `extract` as CSV to `out`.
pub fn to_csv<W: Write>(extract: &Extract, out: W) -> std::io::Result<()> {
    let mut w = ::csv::WriterBuilder::new()
        .terminator(::csv::Terminator::Any(b'\n'))
        .from_writer(out);
    let ids = extract.has_client_ids();
    let header = ids
        .then_some(CSV_CLIENT_COLUMN)
        .into_iter()
        .chain(extract.columns().iter().map(|c| c.as_str()));
    w.write_record(header)?;
    for row in extract.rows() {
        let id = row.client().map(|c| c.to_string());
        w.write_record(id.as_deref().into_iter().chain(row.values()))?;
    }
    w.flush()
}
