//! Tests of research queries: the dialect (what parses, what is refused and how the refusal reads),
//! known answers with the noise switched off (a test-only region whose rho is so large that every
//! interval is the rounding alone; figures worked out by hand from the trajectories listed here),
//! empty groups, the answer's shape, and bounding.

use kwm_schemas::codes::{AgeBand, EndReason, Intensity, Pseudonym, Respondent, Satisfaction};
use kwm_schemas::region::Rho;
use kwm_schemas::release::{CellStatus, Figure};
use kwm_schemas::research::{ColumnKind, ResearchAnswer};
use kwm_schemas::{AgbCode, Month, RegionConfig, WireRecord};
use proptest::prelude::*;

use super::answer::bounded_sums;
use super::query::{Dimension, Measure, Position};
use super::{answer, estimate, Query, QueryError, ResearchInput};
use crate::noise::{NoNoise, SeededNoise};
use crate::release::{Codebook, EngineRow};

/// The release engine's test region (two municipalities, two target groups, k = 3, two trajectories
/// per child, a rho far beyond any real cap), with counts not rounded: with `NoNoise` only the
/// rounding of the figures shows.
fn region_text() -> String {
    let rounded = "count_rounding = 5";
    assert!(
        crate::release::tests::REGION.contains(rounded),
        "the test region rounds counts"
    );
    crate::release::tests::REGION.replace(rounded, "count_rounding = 1")
}

const ORDER_KEY: [u8; 32] = [4; 32];
/// Shards by the client pseudonym's first byte, as the release index keeps them.
const SHARDS: usize = 256;

fn region() -> RegionConfig {
    RegionConfig::from_toml_str(&region_text(), "test.toml").expect("valid test region")
}

fn huge_rho() -> Rho {
    "10000000".parse().expect("valid rho")
}

fn month(s: &str) -> Month {
    s.parse().expect("valid month")
}

/// A trajectory of child `child` (number `id`), running; outcome fields are set afterwards.
fn traj(id: u16, child: u8, muni: &str, tg: &str, start: &str) -> WireRecord {
    let mut trajectory = [0u8; 32];
    trajectory[..2].copy_from_slice(&id.to_be_bytes());
    WireRecord {
        client: Pseudonym([child; 32]),
        trajectory: Pseudonym(trajectory),
        municipality: muni.parse().expect("valid municipality"),
        target_group: tg.parse().expect("valid code"),
        intensity: None,
        product_category: None,
        start_month: month(start),
        end_month: None,
        age_band: AgeBand::Age4To11,
        end_reason: None,
        satisfaction: None,
        respondent: None,
        carry_on_without_help: None,
        problem_t_pre: None,
        problem_t_post: None,
        instrument: None,
        goals_agreed: None,
        goals_achieved: None,
    }
}

fn ended(mut r: WireRecord, end: &str, reason: u8, grade: Option<u8>) -> WireRecord {
    r.end_month = Some(month(end));
    r.end_reason = Some(EndReason::new(reason).expect("valid reason"));
    r.satisfaction = grade.map(|g| Satisfaction::new(g).expect("valid grade"));
    r.respondent = grade.map(|_| Respondent::Parent);
    r
}

/// The rows in the release index's form: sharded by the client pseudonym's first byte.
fn shards(region: &RegionConfig, records: &[WireRecord]) -> Vec<Vec<EngineRow>> {
    let codebook = Codebook::new(region);
    let agb: AgbCode = "12345678".parse().expect("valid AGB");
    let mut shards: Vec<Vec<EngineRow>> = (0..SHARDS).map(|_| Vec::new()).collect();
    for r in records {
        let row = EngineRow::new(&codebook, agb, r);
        shards[usize::from(row.client[0])].push(row);
    }
    shards
}

fn run(
    sql: &str,
    records: &[WireRecord],
    noise: &mut dyn crate::noise::NoiseSource,
) -> ResearchAnswer {
    let region = region();
    let query = Query::parse(sql, &region).expect("the query parses");
    let shards = shards(&region, records);
    let input = ResearchInput {
        region: &region,
        shards: &shards,
        order_key: &ORDER_KEY,
    };
    answer(&query, &input, huge_rho(), noise).expect("an answer")
}

fn parse_err(sql: &str) -> QueryError {
    Query::parse(sql, &RegionConfig::wbw()).expect_err("the query is refused")
}

fn value(a: &ResearchAnswer, row: usize, col: usize) -> Option<String> {
    a.rows[row].cells[col].value.map(|v| v.to_string())
}

// ---------------------------------------------------------------------------------------------
// The dialect.

#[test]
fn the_issues_example_parses() {
    let q = Query::parse(
        "SELECT target_group, intensity, COUNT(*), AVG(satisfaction), \
         PROPORTION(end_reason = 'volgens_plan') FROM trajectories \
         WHERE start_year = 2025 AND municipality = 'GM0748' GROUP BY target_group, intensity",
        &RegionConfig::wbw(),
    )
    .expect("parses");
    assert_eq!(q.group_by(), [Dimension::TargetGroup, Dimension::Intensity]);
    assert_eq!((q.window().first_year, q.window().last_year), (2025, 2025));
    let names: Vec<&str> = q.measures().iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "COUNT(*)",
            "AVG(satisfaction)",
            "PROPORTION(end_reason = 'volgens_plan')"
        ]
    );
    assert!(matches!(q.measures()[0].1, Measure::Trajectories));
}

#[test]
fn a_non_public_column_is_refused_with_its_name_and_place() {
    let err = parse_err(
        "SELECT client, COUNT(*) FROM trajectories WHERE start_year = 2025 GROUP BY client",
    );
    assert_eq!(
        err,
        QueryError::NotPublic {
            name: "client".into(),
            at: Position { line: 1, column: 8 }
        }
    );
    let text = err.to_string();
    assert!(
        text.starts_with("column `client` at line 1, column 8 is not a public column; the columns are municipality, target_group"),
        "{text}"
    );
    let err = parse_err(
        "SELECT COUNT(*) FROM trajectories\nWHERE start_year = 2025 AND provider = '12345678'",
    );
    assert_eq!(
        err,
        QueryError::NotPublic {
            name: "provider".into(),
            at: Position {
                line: 2,
                column: 29
            }
        }
    );
    for (sql, name) in [
        (
            "SELECT bsn, COUNT(*) FROM trajectories WHERE start_year = 2025 GROUP BY bsn",
            "bsn",
        ),
        (
            "SELECT COUNT(*) FROM trajectories WHERE start_year = 2025 GROUP BY trajectory",
            "trajectory",
        ),
        (
            "SELECT AVG(problem_t_pre) FROM trajectories WHERE start_year = 2025",
            "problem_t_pre",
        ),
        (
            "SELECT COUNT(*) FROM trajectories WHERE start_month = 3 AND birth_date = '2010-01-01'",
            "birth_date",
        ),
    ] {
        let err = Query::parse(sql, &RegionConfig::wbw()).expect_err(sql);
        let text = err.to_string();
        // AVG names its argument problem; every other refusal names the column itself.
        assert!(
            text.contains(&format!("`{name}`")) || text.contains("AVG"),
            "{sql}: {text}"
        );
    }
}

#[test]
fn outcomes_are_measures_only() {
    let err = parse_err(
        "SELECT COUNT(*) FROM trajectories WHERE start_year = 2025 AND satisfaction >= 8",
    );
    assert!(
        matches!(err, QueryError::OutcomeOutsideMeasure { ref name, .. } if name == "satisfaction")
    );
    assert!(err.to_string().contains("line 1, column 63"), "{err}");
    let err = parse_err(
        "SELECT improved, COUNT(*) FROM trajectories WHERE start_year = 2025 GROUP BY improved",
    );
    assert!(
        matches!(err, QueryError::OutcomeOutsideMeasure { .. }),
        "{err}"
    );
    // Inside a measure they are fine.
    Query::parse(
        "SELECT PROPORTION(satisfaction >= 8), PROPORTION(improved), \
         PROPORTION(carry_on_without_help = 'yes') FROM trajectories WHERE start_year = 2025",
        &RegionConfig::wbw(),
    )
    .expect("parses");
}

#[test]
fn what_the_dialect_does_not_have_is_refused_by_name() {
    for (sql, needle) in [
        ("SELECT COUNT(*) FROM trajectories WHERE start_year = 2025 ORDER BY 1", "ORDER BY"),
        ("SELECT COUNT(*) FROM trajectories WHERE start_year = 2025 LIMIT 5", "LIMIT"),
        ("SELECT COUNT(*) FROM trajectories t JOIN x ON true WHERE start_year = 2025", "JOIN"),
        ("SELECT COUNT(*) FROM trajectories WHERE start_year = 2025 GROUP BY municipality HAVING COUNT(*) > 5", "HAVING"),
        ("SELECT * FROM trajectories WHERE start_year = 2025", "`*`"),
        ("SELECT COUNT(*) FROM patients WHERE start_year = 2025", "table `patients`"),
        ("SELECT MAX(satisfaction) FROM trajectories WHERE start_year = 2025", "function `MAX`"),
        ("SELECT COUNT(DISTINCT municipality) FROM trajectories WHERE start_year = 2025", "COUNT(DISTINCT client)"),
        ("SELECT municipality, COUNT(*) FROM trajectories WHERE start_year = 2025", "not in GROUP BY"),
        ("SELECT COUNT(*) FROM trajectories", "must bound the calendar years"),
        ("SELECT COUNT(*) FROM trajectories WHERE start_year >= 2024", "no upper bound"),
        ("SELECT COUNT(*) FROM trajectories WHERE start_year = 2025 OR start_year = 2026", "must bound"),
        ("SELECT COUNT(*) FROM trajectories WHERE start_year = 2025 AND municipality = 'GM0363'", "'GM0363' at line 1, column 78 is not a value of `municipality`"),
        ("SELECT COUNT(*) FROM trajectories WHERE start_year = 2025 AND municipality < 'GM0748'", "no order"),
        ("SELECT QUANTILE(satisfaction, 1.5) FROM trajectories WHERE start_year = 2025", "p is a number"),
        ("SELECT COUNT(*) FROM trajectories WHERE start_year = 2025; SELECT 1", "2 statements"),
        ("SELEC COUNT(*)", "not valid SQL"),
        ("SELECT COUNT(*) FROM trajectories WHERE start_year IN (SELECT 1)", "IN takes a list"),
        ("SELECT COUNT(*) FROM trajectories WHERE start_year BETWEEN 1990 AND 2025", "reads 36 calendar years"),
    ] {
        let err = Query::parse(sql, &RegionConfig::wbw()).expect_err(sql);
        assert!(err.to_string().contains(needle), "{sql}: {err}");
    }
    let err = parse_err(
        "SELECT municipality, target_group, intensity, product_category, age_band, COUNT(*) \
         FROM trajectories WHERE start_year = 2025 \
         GROUP BY municipality, target_group, intensity, product_category, age_band",
    );
    assert!(
        matches!(err, QueryError::TooManyGroups { groups: 48960, .. }),
        "{err}"
    );
    let long = format!(
        "SELECT COUNT(*) FROM trajectories WHERE start_year = 2025 {}",
        " ".repeat(9000)
    );
    assert!(matches!(parse_err(&long), QueryError::TooLong { .. }));
}

#[test]
fn the_window_is_the_years_the_where_clause_bounds() {
    let w = |sql: &str| {
        let q = Query::parse(sql, &RegionConfig::wbw()).expect(sql);
        (q.window().first_year, q.window().last_year)
    };
    assert_eq!(
        w("SELECT COUNT(*) FROM trajectories WHERE start_year = 2025"),
        (2025, 2025)
    );
    assert_eq!(
        w("SELECT COUNT(*) FROM trajectories WHERE start_year IN (2023, 2025) AND intensity = 2"),
        (2023, 2025)
    );
    assert_eq!(
        w("SELECT COUNT(*) FROM trajectories WHERE start_year = 2025 AND end_year BETWEEN 2025 AND 2026"),
        (2025, 2026)
    );
    assert_eq!(
        w("SELECT COUNT(*) FROM trajectories WHERE end_year > 2022 AND end_year < 2025"),
        (2023, 2024)
    );
}

// ---------------------------------------------------------------------------------------------
// Known answers.

/// GM0748 x P01: six children, one trajectory each, all started and ended in 2025: four as planned
/// (31), two dropped out (32); grades 8, 8, 8, 6, 6, 6.
/// GM0777 x P01: five children with one trajectory each (31, no grade), and child 20 with three
/// trajectories, all ended as planned: two are kept (the bound), so the group has 7 trajectories of
/// 6 children.
/// GM0748 x C01: child 30 alone: below k, suppressed. GM0777 x C01: nobody.
fn known_records() -> Vec<WireRecord> {
    let mut out = Vec::new();
    for (i, (reason, grade)) in [(31, 8), (31, 8), (31, 8), (31, 6), (32, 6), (32, 6)]
        .into_iter()
        .enumerate()
    {
        out.push(ended(
            traj(i as u16, i as u8 + 1, "GM0748", "P01", "2025-02"),
            "2025-09",
            reason,
            Some(grade),
        ));
    }
    for i in 0..5u8 {
        out.push(ended(
            traj(10 + u16::from(i), 10 + i, "GM0777", "P01", "2025-03"),
            "2025-10",
            31,
            None,
        ));
    }
    for j in 0..3u16 {
        out.push(ended(
            traj(20 + j, 20, "GM0777", "P01", "2025-04"),
            "2025-11",
            31,
            None,
        ));
    }
    out.push(traj(30, 30, "GM0748", "C01", "2025-01"));
    out
}

#[test]
fn known_answers_with_noise_off() {
    let a = run(
        "SELECT municipality, target_group, COUNT(*), COUNT(DISTINCT client) AS children, \
         AVG(satisfaction), PROPORTION(end_reason = 'volgens_plan') \
         FROM trajectories WHERE start_year = 2025 GROUP BY municipality, target_group",
        &known_records(),
        &mut NoNoise,
    );
    assert_eq!(a.group_by, ["municipality", "target_group"]);
    let keys: Vec<Vec<Option<String>>> = a.rows.iter().map(|r| r.key.clone()).collect();
    let k = |m: &str, t: &str| vec![Some(m.to_string()), Some(t.to_string())];
    assert_eq!(
        keys,
        [
            k("GM0748", "P01"),
            k("GM0748", "C01"),
            k("GM0777", "P01"),
            k("GM0777", "C01")
        ]
    );
    let names: Vec<&str> = a.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "COUNT(*)",
            "children",
            "AVG(satisfaction)",
            "PROPORTION(end_reason = 'volgens_plan')"
        ]
    );
    // Thresholds: (k - 1) x 2 trajectories + a noise margin far below one: 5; children: 3.
    let thresholds: Vec<u64> = a.columns.iter().map(|c| c.min_noisy_count).collect();
    assert_eq!(thresholds, [5, 3, 5, 5]);

    // GM0748 x P01: 6 trajectories of 6 children; mean grade (3 x 8 + 3 x 6) / 6 = 7.0; 4 of 6 as
    // planned = 66.7%. Intervals: the rounding to one decimal alone.
    assert_eq!(value(&a, 0, 0).as_deref(), Some("6"));
    assert_eq!(value(&a, 0, 1).as_deref(), Some("6"));
    assert_eq!(value(&a, 0, 2).as_deref(), Some("7.0"));
    assert_eq!(value(&a, 0, 3).as_deref(), Some("66.7"));
    let mean = &a.rows[0].cells[2];
    assert_eq!(
        (mean.ci95_low, mean.ci95_high, mean.count),
        (Some(Figure::Tenths(69)), Some(Figure::Tenths(71)), Some(6))
    );
    let count = &a.rows[0].cells[0];
    assert_eq!(
        (count.ci95_low, count.ci95_high),
        (Some(Figure::Whole(5)), Some(Figure::Whole(7)))
    );

    // GM0748 x C01: one running trajectory: every cell suppressed, none absent.
    assert!(a.rows[1]
        .cells
        .iter()
        .all(|c| c.status == CellStatus::Suppressed && c.value.is_none()));

    // GM0777 x P01: 5 + 2 (child 20 bounded to two) = 7 trajectories, 6 children, no grades (the
    // mean is suppressed: 0 < 5), all as planned: 100.0%.
    assert_eq!(value(&a, 2, 0).as_deref(), Some("7"));
    assert_eq!(value(&a, 2, 1).as_deref(), Some("6"));
    assert_eq!(a.rows[2].cells[2].status, CellStatus::Suppressed);
    assert_eq!(value(&a, 2, 3).as_deref(), Some("100.0"));

    // Empty: suppressed, present.
    assert_eq!(a.rows[3].cells.len(), 4);
    assert!(a.rows[3]
        .cells
        .iter()
        .all(|c| c.status == CellStatus::Suppressed));

    assert_eq!(a.bounding.max_trajectories_per_child, 2);
    assert_eq!((a.window.first_year, a.window.last_year), (2025, 2025));
    assert_eq!(a.privacy.charges.len(), 1);
    assert_eq!(a.privacy.charges[0].data_year, 2025);
    assert_eq!(a.privacy.mechanism, "discrete-gaussian");
}

#[test]
fn histograms_quantiles_and_sums_with_noise_off() {
    let a = run(
        "SELECT HISTOGRAM(satisfaction), QUANTILE(satisfaction, 0.5), QUANTILE(satisfaction, 0.9), \
         SUM(satisfaction), AVG(satisfaction, 7, 8) FROM trajectories WHERE start_year = 2025",
        &known_records(),
        &mut NoNoise,
    );
    // No grouping: one row. Grades 8, 8, 8, 6, 6, 6.
    assert_eq!(a.rows.len(), 1);
    assert_eq!(a.rows[0].key, Vec::<Option<String>>::new());
    let names: Vec<&str> = a.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names[0], "HISTOGRAM(satisfaction)[1]");
    assert_eq!(names[9], "HISTOGRAM(satisfaction)[10]");
    // A histogram is suppressed or published as a whole: 6 grades clear the threshold of 5.
    let bins: Vec<Option<String>> = (0..10).map(|b| value(&a, 0, b)).collect();
    let expect: Vec<Option<String>> = [0, 0, 0, 0, 0, 3, 0, 3, 0, 0]
        .iter()
        .map(|v| Some(v.to_string()))
        .collect();
    assert_eq!(bins, expect);
    // The median: 3 of 6 at grade 6 reach half; the 90th percentile: grade 8.
    assert_eq!(value(&a, 0, 10).as_deref(), Some("6"));
    assert_eq!(value(&a, 0, 11).as_deref(), Some("8"));
    assert_eq!(a.columns[10].kind, ColumnKind::Quantile);
    // 3 x 8 + 3 x 6 = 42.
    assert_eq!(value(&a, 0, 12).as_deref(), Some("42.0"));
    // Clamped to 7..8: 3 x 8 + 3 x 7 = 45, mean 7.5.
    assert_eq!(value(&a, 0, 13).as_deref(), Some("7.5"));
    // The histogram and both quantiles share one measurement; the sum and the mean of 1..10 and
    // the mean of 7..8 are two clamped measurements of two values each.
    let names: Vec<&str> = a
        .privacy
        .measurements
        .iter()
        .map(|m| m.name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "HISTOGRAM(satisfaction)",
            "satisfaction[1..10] count",
            "satisfaction[1..10] centred sum",
            "satisfaction[7..8] count",
            "satisfaction[7..8] centred sum"
        ]
    );
    assert_eq!(a.privacy.measurements[2].sensitivity, 9);
    assert_eq!(a.privacy.measurements[4].sensitivity, 1);
}

#[test]
fn outcomes_after_the_window_are_not_read() {
    // Ended in 2026: within a 2025 window it is still running (its end reason NULL); a window that
    // takes 2026 in reads the ending.
    let mut records = Vec::new();
    for i in 0..6u8 {
        records.push(ended(
            traj(u16::from(i), i + 1, "GM0748", "P01", "2025-06"),
            if i < 3 { "2025-12" } else { "2026-02" },
            31,
            None,
        ));
    }
    let a = run(
        "SELECT COUNT(*), PROPORTION(end_reason IS NOT NULL) FROM trajectories WHERE start_year = 2025",
        &records,
        &mut NoNoise,
    );
    assert_eq!(value(&a, 0, 0).as_deref(), Some("6"));
    assert_eq!(value(&a, 0, 1).as_deref(), Some("50.0"));
    let a = run(
        "SELECT end_year, COUNT(*) FROM trajectories \
         WHERE start_year = 2025 AND end_year BETWEEN 2025 AND 2026 GROUP BY end_year",
        &records,
        &mut NoNoise,
    );
    let keys: Vec<Option<String>> = a.rows.iter().map(|r| r.key[0].clone()).collect();
    assert_eq!(keys, [Some("2025".into()), Some("2026".into()), None]);
    assert_eq!(a.privacy.charges.len(), 2);
    // 3 and 3 trajectories: below the threshold of 5, both suppressed; the NULL group too.
    assert!(a
        .rows
        .iter()
        .all(|r| r.cells[0].status == CellStatus::Suppressed));
}

#[test]
fn an_empty_group_is_a_noisy_or_suppressed_cell_never_an_absent_row() {
    // Every trajectory has intensity 2; the answer still has intensities 1..4 and "not recorded".
    let records: Vec<WireRecord> = (0..20u8)
        .map(|i| {
            let mut r = ended(
                traj(u16::from(i), i + 1, "GM0748", "P01", "2025-02"),
                "2025-08",
                31,
                Some(7),
            );
            r.intensity = Some(Intensity::new(2).expect("valid"));
            r
        })
        .collect();
    let sql = "SELECT intensity, COUNT(*), AVG(satisfaction) FROM trajectories \
               WHERE start_year = 2025 GROUP BY intensity";
    for seed in 0..5 {
        let a = run(sql, &records, &mut SeededNoise::from_seed(seed));
        let keys: Vec<Option<String>> = a.rows.iter().map(|r| r.key[0].clone()).collect();
        assert_eq!(
            keys,
            [
                Some("1".into()),
                Some("2".into()),
                Some("3".into()),
                Some("4".into()),
                None
            ]
        );
        for r in &a.rows {
            assert_eq!(r.cells.len(), 2);
            for c in &r.cells {
                assert_eq!(c.value.is_some(), c.status == CellStatus::Published);
            }
        }
    }
    let a = run(sql, &records, &mut NoNoise);
    assert_eq!(value(&a, 1, 0).as_deref(), Some("20"));
    for empty in [0, 2, 3, 4] {
        assert!(a.rows[empty]
            .cells
            .iter()
            .all(|c| c.status == CellStatus::Suppressed));
    }
}

#[test]
fn the_estimate_reads_no_data_and_agrees_with_the_answer() {
    let region = region();
    let sql = "SELECT municipality, target_group, COUNT(*), AVG(satisfaction), \
               PROPORTION(end_reason = '31'), QUANTILE(satisfaction, 0.5) \
               FROM trajectories WHERE start_year BETWEEN 2024 AND 2025 \
               GROUP BY municipality, target_group";
    let query = Query::parse(sql, &region).expect("parses");
    let rho: Rho = "0.05".parse().expect("rho");
    let e = estimate(&query, &region, rho).expect("estimate");
    assert_eq!(e.groups, 4);
    assert_eq!(e.privacy.charges.len(), 2, "2024 and 2025");
    let shards = shards(&region, &known_records());
    let input = ResearchInput {
        region: &region,
        shards: &shards,
        order_key: &ORDER_KEY,
    };
    let a = answer(&query, &input, rho, &mut SeededNoise::from_seed(1)).expect("answer");
    assert_eq!(a.rows.len() as u64, e.groups);
    assert_eq!(a.privacy, e.privacy);
    let thresholds: Vec<u64> = a.columns.iter().map(|c| c.min_noisy_count).collect();
    let estimated: Vec<u64> = e.columns.iter().map(|c| c.min_noisy_count).collect();
    assert_eq!(thresholds, estimated);
    // A percentage's interval narrows as its count grows, and from some count it is reliable.
    let pct = &e.columns[2];
    assert_eq!(pct.kind, ColumnKind::Percentage);
    let widths: Vec<i64> = pct.widths.iter().map(|w| w.width.tenths()).collect();
    assert!(widths.windows(2).all(|w| w[0] >= w[1]), "{widths:?}");
    let from = pct.reliable_from.expect("reliable from some count");
    assert!(from >= pct.min_noisy_count);
    // A count's width does not depend on the data.
    assert_eq!(e.columns[0].widths.len(), 1);
    assert!(e.columns[0].widths[0].count.is_none());
    // A coarser grouping costs the same rho and has fewer, wider-based groups.
    let coarse = Query::parse(
        "SELECT target_group, COUNT(*) FROM trajectories WHERE start_year = 2025 GROUP BY target_group",
        &region,
    )
    .expect("parses");
    assert_eq!(estimate(&coarse, &region, rho).expect("estimate").groups, 2);
}

// ---------------------------------------------------------------------------------------------
// Properties.

const QUERIES: [&str; 4] = [
    "SELECT municipality, target_group, COUNT(*), COUNT(DISTINCT client), AVG(satisfaction), \
     PROPORTION(end_reason = 'volgens_plan') FROM trajectories WHERE start_year = 2025 \
     GROUP BY municipality, target_group",
    "SELECT intensity, end_reason, SUM(satisfaction), HISTOGRAM(satisfaction), \
     QUANTILE(satisfaction, 0.25) FROM trajectories WHERE start_year IN (2024, 2025) \
     AND age_band <> '18-22' GROUP BY intensity, end_reason",
    "SELECT end_year, respondent, COUNT(*) FROM trajectories \
     WHERE start_year = 2025 AND end_year BETWEEN 2025 AND 2026 GROUP BY end_year, respondent",
    "SELECT start_quarter, PROPORTION(satisfaction >= 8 OR end_reason = '32') \
     FROM trajectories WHERE start_year = 2025 GROUP BY start_quarter",
];

fn records() -> impl Strategy<Value = Vec<WireRecord>> {
    let one = (
        0u8..12,
        0usize..2,
        0usize..2,
        0u8..5,
        (2024u16..=2026, 1u8..=12),
        proptest::option::of((0u8..14, 0usize..11, proptest::option::of(1u8..=10))),
    );
    proptest::collection::vec(one, 0..40).prop_map(|items| {
        items
            .into_iter()
            .enumerate()
            .map(|(i, (child, m, t, intensity, (y, mo), end))| {
                let start = format!("{y:04}-{mo:02}");
                let mut r = traj(
                    i as u16,
                    child,
                    ["GM0748", "GM0777"][m],
                    ["P01", "C01"][t],
                    &start,
                );
                r.intensity = (intensity > 0).then(|| Intensity::new(intensity).expect("valid"));
                if let Some((later, reason, grade)) = end {
                    let end = Month::new(y, mo)
                        .expect("valid")
                        .plus_months(u32::from(later));
                    r = ended(r, &end.to_string(), EndReason::CODES[reason], grade);
                }
                r
            })
            .collect()
    })
}

/// What an answer's shape is: its groups, columns, and the keys and cell counts of its rows.
type Shape = (
    Vec<String>,
    Vec<String>,
    Vec<Vec<Option<String>>>,
    Vec<usize>,
);

fn shape(a: &ResearchAnswer) -> Shape {
    (
        a.group_by.clone(),
        a.columns.iter().map(|c| c.name.clone()).collect(),
        a.rows.iter().map(|r| r.key.clone()).collect(),
        a.rows.iter().map(|r| r.cells.len()).collect(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Whatever the data (none at all included), an answer has the same groups, in the same order,
    /// with the same columns: its shape tells nothing about the data.
    #[test]
    fn the_answers_shape_depends_only_on_the_query_and_the_codebook(
        data in records(),
        which in 0usize..QUERIES.len(),
        seed in 0u64..1000,
    ) {
        let sql = QUERIES[which];
        let empty = run(sql, &[], &mut SeededNoise::from_seed(seed));
        let full = run(sql, &data, &mut SeededNoise::from_seed(seed));
        prop_assert_eq!(shape(&empty), shape(&full));
        let region = region();
        let e = estimate(&Query::parse(sql, &region).expect("parses"), &region, huge_rho())
            .expect("estimate");
        prop_assert_eq!(e.groups as usize, full.rows.len());
        for r in &full.rows {
            for c in &r.cells {
                prop_assert_eq!(c.value.is_some(), c.status == CellStatus::Published);
            }
        }
    }

    /// Bounding: taking any one child out moves the true, bounded sums by at most the child's bound:
    /// c trajectories in all, one child in each of at most c groups, c D of a centred sum. This is
    /// the sensitivity the noise is calibrated to.
    #[test]
    fn no_child_contributes_more_than_the_bound(data in records(), which in 0usize..QUERIES.len()) {
        let region = region();
        let query = Query::parse(QUERIES[which], &region).expect("parses");
        let sums = |records: &[WireRecord]| {
            let shards = shards(&region, records);
            let input = ResearchInput { region: &region, shards: &shards, order_key: &ORDER_KEY };
            bounded_sums(&query, &input).expect("sums")
        };
        let all = sums(&data);
        let mut children: Vec<u8> = data.iter().map(|r| r.client.0[0]).collect();
        children.sort_unstable();
        children.dedup();
        for child in children {
            let without: Vec<WireRecord> =
                data.iter().filter(|r| r.client.0[0] != child).cloned().collect();
            let rest = sums(&without);
            for (slot, limit_per_group, limit_total) in all.slots.iter().copied() {
                let diffs: Vec<i64> = (0..all.groups)
                    .map(|g| (all.values[g * all.width + slot] - rest.values[g * rest.width + slot]).abs())
                    .collect();
                prop_assert!(diffs.iter().all(|d| *d <= limit_per_group), "slot {} {:?}", slot, diffs);
                prop_assert!(diffs.iter().sum::<i64>() <= limit_total, "slot {} {:?}", slot, diffs);
            }
        }
    }
}
