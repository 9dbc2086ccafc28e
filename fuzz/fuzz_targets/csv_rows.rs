//! The SDK's CSV export reader, row parser and validator: both passes of `kwm upload` over any bytes.
//! Bad rows are fine; a panic, an overflow or a hang is a finding.

use std::path::Path;

use kwm_sdk::export::ExportReader;
use kwm_sdk::prepare::{validate_reader, Records, RowOutcome};

fn main() {
    let ctx = kwm_fuzz::prepare_context();
    afl::fuzz!(|data: &[u8]| {
        let path = Path::new("fuzz.csv");
        let Ok(reader) = ExportReader::from_reader(data, path, &ctx.export) else {
            return;
        };
        let mut bad = 0u64;
        let Ok(validation) = validate_reader(reader, &ctx, &mut |row| {
            bad += 1;
            // Rendering a bad row is what the user sees: it must not fail either.
            let _ = row.render(path);
        }) else {
            return;
        };
        assert_eq!(validation.bad_rows, bad);
        // Pass 2 over the same bytes, as `kwm upload` does after validating.
        let Ok(reader) = ExportReader::from_reader(data, path, &ctx.export) else {
            panic!("pass 2 could not read a header that pass 1 read");
        };
        let mut records = 0u64;
        for item in Records::new(reader, &ctx, validation.duplicates) {
            match item {
                Ok(RowOutcome::Record { record, .. }) => {
                    records += 1;
                    serde_json::to_vec(&record).expect("a record serialises");
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
        // Pass 2 yields exactly the rows that pass 1 counted as valid.
        assert_eq!(records, validation.valid, "pass 1 and pass 2 disagree");
    });
}
