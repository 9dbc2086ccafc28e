//! Writes the seed corpus of the fuzz targets into `fuzz/corpus/`, from the test fixtures: the SDK's
//! fixture export (with its bad rows), the records its valid rows become, those records sealed with the
//! fuzz keys, and the built-in region file. Run again after a wire format changes:
//! `cargo run --manifest-path fuzz/Cargo.toml --example make_seeds`.

use std::fs;
use std::path::{Path, PathBuf};

use kwm_schemas::envelope::{self, BatchHeader, PROTOCOL_VERSION};
use kwm_schemas::AgbCode;
use kwm_sdk::batch::payload_bytes;
use kwm_sdk::prepare::prepare_file;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let corpus = root.join("corpus");
    let write = |target: &str, name: &str, bytes: &[u8]| {
        let dir: PathBuf = corpus.join(target);
        fs::create_dir_all(&dir).expect("corpus dir");
        fs::write(dir.join(name), bytes).expect("seed written");
    };
    let fixture = root.join("../client-sdk/tests/fixtures/bad_rows.csv");
    let csv = fs::read(&fixture).expect("the SDK's fixture export");
    write("csv_rows", "bad_rows.csv", &csv);
    // The header and the valid rows alone, and the same with `;` as the delimiter.
    let ctx = kwm_fuzz::prepare_context();
    let prepared = prepare_file(&fixture, &ctx).expect("the fixture reads");
    assert!(!prepared.records.is_empty(), "the fixture has valid rows");
    let text = String::from_utf8(csv).expect("utf-8");
    let bad_lines: Vec<u64> = prepared.bad_rows.iter().map(|b| b.line).collect();
    let good: Vec<&str> = text
        .lines()
        .enumerate()
        .filter(|(i, _)| *i == 0 || !bad_lines.contains(&(*i as u64 + 1)))
        .map(|(_, l)| l)
        .collect();
    let good = good.join("\n") + "\n";
    write("csv_rows", "valid_rows.csv", good.as_bytes());
    write("csv_rows", "valid_rows_semicolon.csv", good.replace(',', ";").as_bytes());

    let payload = payload_bytes(&prepared.records).expect("records serialise");
    write("payload", "valid.json", &payload);
    write("payload", "empty.json", br#"{"records":[]}"#);
    // One record with a bad field, so that the search for the failing record is seeded too.
    let mut bad = serde_json::from_slice::<serde_json::Value>(&payload).expect("json");
    bad["records"][0]["municipality"] = serde_json::json!("GM0000");
    write("payload", "bad_field.json", bad.to_string().as_bytes());

    let header = BatchHeader {
        version: PROTOCOL_VERSION,
        provider: "12345678".parse::<AgbCode>().expect("agb"),
        batch_id: uuid::Uuid::from_u128(0x0196_0000_0000_7000_8000_0000_0000_0001),
        key_id: kwm_fuzz::service_public_key().key_id(),
        record_count: prepared.records.len() as u32,
        created_at: time::macros::datetime!(2025-06-30 12:00:00 UTC),
        regional_key_check: "ab".repeat(32),
    };
    let sealed = envelope::seal(
        header,
        &payload,
        &kwm_fuzz::service_public_key(),
        &kwm_fuzz::provider_signer(),
    )
    .expect("sealed");
    write(
        "envelope",
        "sealed.json",
        &serde_json::to_vec_pretty(&sealed).expect("json"),
    );

    write(
        "region",
        "wbw.toml",
        kwm_schemas::region::WBW_TOML.as_bytes(),
    );
    println!("seeds written to {}", corpus.display());
}
