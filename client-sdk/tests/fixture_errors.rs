//! The bad-rows fixture: every bad row is reported with its line, column name, column number and reason,
//! the good rows still come through, and no value of the file appears in any message.

use std::path::{Path, PathBuf};

use kwm_schemas::RegionConfig;
use kwm_sdk::prepare::{self, PrepareContext};
use kwm_sdk::{ProviderKeys, Pseudonymiser, RegionalKey};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bad_rows.csv")
}

fn context() -> PrepareContext {
    let keys = ProviderKeys::generate().expect("keys");
    let regional = RegionalKey::generate().expect("regional key");
    PrepareContext::new(RegionConfig::wbw(), Pseudonymiser::new(&regional, &keys))
}

/// (line, column name or "" for the row, column number, part of the reason)
const EXPECTED: &[(u64, &str, Option<usize>, &str)] = &[
    (3, "bsn", Some(1), "fails the elfproef"),
    (4, "start_date", Some(7), "DD-MM-YYYY"),
    (
        5,
        "municipality",
        Some(3),
        "not a municipality of region wbw",
    ),
    (5, "intensity", Some(5), "from 1 to 4"),
    (
        6,
        "end_reason",
        Some(10),
        "an ended trajectory needs an end reason",
    ),
    (7, "respondent", Some(12), "needs a respondent"),
    (8, "birth_date", Some(9), "after the start date"),
    (9, "birth_date", Some(9), "older than 22"),
    (
        10,
        "goals_achieved",
        Some(18),
        "more goals achieved than agreed",
    ),
    (
        11,
        "trajectory_id",
        Some(2),
        "the same trajectory id as line 2",
    ),
    (12, "", None, "the row has 17 fields but the header has 18"),
    (
        13,
        "target_group",
        Some(4),
        "not a target group of region wbw",
    ),
    (15, "end_date", Some(8), "before the start date"),
    (
        16,
        "problem_t_pre",
        Some(14),
        "a post-measurement needs a pre-measurement",
    ),
    (17, "bsn", Some(1), "is empty but required"),
    (
        18,
        "instrument",
        Some(16),
        "not an instrument of region wbw",
    ),
];

#[test]
fn every_bad_row_is_reported_with_line_and_column() {
    let ctx = context();
    let prepared = prepare::prepare_file(&fixture(), &ctx).expect("the file reads");
    let got: Vec<(u64, String, Option<usize>, String)> = prepared
        .bad_rows
        .iter()
        .flat_map(|b| {
            b.errors.iter().map(move |e| {
                (
                    b.line,
                    e.column.map(|c| c.name().to_string()).unwrap_or_default(),
                    e.column_number,
                    e.reason.to_string(),
                )
            })
        })
        .collect();
    assert_eq!(got.len(), EXPECTED.len(), "all errors: {got:#?}");
    for ((line, col, num, reason), (eline, ecol, enum_, ereason)) in got.iter().zip(EXPECTED) {
        assert_eq!((line, col.as_str(), num), (eline, *ecol, enum_), "{reason}");
        assert!(
            reason.contains(ereason),
            "line {line}: {reason:?} lacks {ereason:?}"
        );
    }
    assert_eq!(prepared.rows, 17);
    assert_eq!(prepared.bad_rows.len(), 15);
    // Lines 2 and 11 are valid on their own but share a trajectory id, so both stay home; line 14 is sent.
    assert_eq!(prepared.duplicates_left_out, 2);
    assert_eq!(prepared.records.len(), 1);
}

#[test]
fn rendered_errors_name_file_line_and_column_but_no_value() {
    let ctx = context();
    let prepared = prepare::prepare_file(&fixture(), &ctx).expect("the file reads");
    let path = Path::new("bad_rows.csv");
    let text: Vec<String> = prepared.bad_rows.iter().map(|b| b.render(path)).collect();
    let text = text.join("\n");
    assert!(
        text.contains(
            "bad_rows.csv:5: column municipality (col 3): not a municipality of region wbw"
        ),
        "{text}"
    );
    assert!(
        text.contains("bad_rows.csv:3: column bsn (col 1): not a valid BSN (fails the elfproef)"),
        "{text}"
    );
    assert!(
        text.contains("bad_rows.csv:12: the row has 17 fields"),
        "{text}"
    );
    let raw = std::fs::read_to_string(fixture()).expect("fixture");
    for row in raw.lines().skip(1) {
        let bsn = row.split(',').next().unwrap_or_default();
        if !bsn.is_empty() {
            assert!(!text.contains(bsn), "a BSN leaked into the messages");
        }
        for date in row.split(',').filter(|f| f.len() == 10 && f.contains('-')) {
            assert!(!text.contains(date), "a date leaked into the messages");
        }
    }
    assert!(!text.contains("GM0363"), "a value leaked into the messages");
}

#[test]
fn the_same_file_with_semicolons_bom_and_crlf_gives_the_same_lines() {
    let raw = std::fs::read_to_string(fixture()).expect("fixture");
    let excel: String = raw
        .lines()
        .map(|l| format!("{}\r\n", l.replace(',', ";")))
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("excel.csv");
    let mut bytes = b"\xEF\xBB\xBF".to_vec();
    bytes.extend_from_slice(excel.as_bytes());
    std::fs::write(&path, bytes).expect("write");
    let ctx = context();
    let a = prepare::prepare_file(&fixture(), &ctx).expect("reads");
    let b = prepare::prepare_file(&path, &ctx).expect("reads");
    assert_eq!(a.bad_rows, b.bad_rows);
    assert_eq!(a.records, b.records);
}
