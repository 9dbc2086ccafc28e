//! Known-answer tests of the release engine on a small hand-made region: every figure, interval and
//! status below was worked out by hand from the trajectories listed here (the derivations are in the
//! comments), not by running the engine.

use kwm_schemas::codes::{AgeBand, Pseudonym};
use kwm_schemas::codes::{CarryOn, EndReason, GoalCount, Respondent, Satisfaction, TScore};
use kwm_schemas::release::{CellStatus, Figure, Release, ReleaseCell, ReleaseScope};
use kwm_schemas::{AgbCode, Month, Period, RegionConfig, WireRecord};

use super::{compute_release, partitions, PeriodTables, ReleaseError, ReleaseInput};
use crate::noise::{NoNoise, SeededNoise};

/// Two municipalities, three target groups, k = 3, at least two providers, dominance above 85%, two
/// cells per client, a window of six months, counts rounded to 5. Epsilon is huge so that every 95%
/// interval of the noise is zero wide and only the rounding shows (noise itself is off: `NoNoise`).
const REGION: &str = r#"
code = "test"
name = "Testregio"

[[municipalities]]
code = "GM0748"
name = "Bergen op Zoom"

[[municipalities]]
code = "GM0777"
name = "Etten-Leur"

[[target_groups]]
code = "P01"
kind = "profile"
label_nl = "Profiel 1"
label_en = "Profile 1"

[[target_groups]]
code = "P02"
kind = "profile"
label_nl = "Profiel 2"
label_en = "Profile 2"

[[target_groups]]
code = "C01"
kind = "complex"
label_nl = "Zorgcombinatie 1"
label_en = "Care combination 1"

[[instruments]]
code = "CBCL"
name = "CBCL"
reliability = 0.90

[[instruments]]
code = "SDQ"
name = "SDQ"
reliability = 0.80

[policy]
k = 3
min_providers = 2
dominance_pct = 85
max_cells_per_client = 2
per_provider_reporting = false
herhaald_beroep_window_months = 6
epsilon_per_release = "20000000"
partition_epsilon_cap = "400000000"
count_rounding = 5
"#;

const A: &str = "11111111";
const B: &str = "22222222";
const C: &str = "33333333";
const M0: &str = "GM0748";
const M1: &str = "GM0777";

/// The order key under which client 24's C01 trajectory (27) comes last of its three (25 < 26 < 27),
/// so that bounding to two cells drops it; `keyed_order_premise` checks this with ring.
const ORDER_KEY: [u8; 32] = [4; 32];

fn region() -> RegionConfig {
    RegionConfig::from_toml_str(REGION, "test.toml").expect("valid test region")
}

fn month(s: &str) -> Month {
    s.parse().expect("valid month")
}

fn client(n: u8) -> Pseudonym {
    Pseudonym([n; 32])
}

fn trajectory(n: u8) -> Pseudonym {
    Pseudonym([100 + n; 32])
}

/// Trajectory `id` of client `c`; outcome fields are set afterwards.
fn traj(id: u8, c: u8, provider: &str, muni: &str, tg: &str, start: &str) -> (AgbCode, WireRecord) {
    let rec = WireRecord {
        client: client(c),
        trajectory: trajectory(id),
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
    };
    (provider.parse().expect("valid AGB"), rec)
}

/// Ends a trajectory with its outcome: end month and reason, grade, carry on without help, T-scores,
/// goals (agreed, achieved).
#[allow(clippy::too_many_arguments)]
fn ended(
    mut t: (AgbCode, WireRecord),
    end: &str,
    reason: u8,
    grade: Option<u8>,
    carry: Option<CarryOn>,
    scores: Option<(&str, u8, u8)>,
    goals: Option<(u8, u8)>,
) -> (AgbCode, WireRecord) {
    let r = &mut t.1;
    r.end_month = Some(month(end));
    r.end_reason = Some(EndReason::new(reason).expect("valid reason"));
    r.satisfaction = grade.map(|g| Satisfaction::new(g).expect("valid grade"));
    r.respondent = grade.map(|_| Respondent::Parent);
    r.carry_on_without_help = carry;
    if let Some((instrument, pre, post)) = scores {
        r.instrument = Some(instrument.parse().expect("valid code"));
        r.problem_t_pre = Some(TScore::new(pre).expect("valid T"));
        r.problem_t_post = Some(TScore::new(post).expect("valid T"));
    }
    if let Some((agreed, achieved)) = goals {
        r.goals_agreed = Some(GoalCount::new(agreed).expect("valid"));
        r.goals_achieved = Some(GoalCount::new(achieved).expect("valid"));
    }
    t
}

/// The data set, period 2025. Clients c1..c24, providers A, B, C.
fn rows() -> Vec<(AgbCode, WireRecord)> {
    use CarryOn::{No, Unknown, Yes};
    let mut rows = vec![
        // GM0748, P01: eight endings in 2025 (T7 administrative).
        ended(
            traj(1, 1, A, M0, "P01", "2024-09"),
            "2025-03",
            31,
            Some(8),
            Some(Yes),
            Some(("CBCL", 70, 60)),
            Some((4, 4)),
        ),
        ended(
            traj(2, 2, A, M0, "P01", "2025-01"),
            "2025-06",
            31,
            Some(7),
            Some(Yes),
            Some(("CBCL", 65, 58)),
            Some((3, 2)),
        ),
        ended(
            traj(3, 3, A, M0, "P01", "2024-11"),
            "2025-05",
            32,
            Some(4),
            Some(No),
            Some(("SDQ", 72, 58)),
            Some((2, 1)),
        ),
        ended(
            traj(4, 4, B, M0, "P01", "2025-02"),
            "2025-08",
            31,
            Some(9),
            Some(Unknown),
            None,
            Some((5, 5)),
        ),
        ended(
            traj(5, 5, B, M0, "P01", "2025-03"),
            "2025-09",
            33,
            None,
            Some(No),
            Some(("SDQ", 60, 50)),
            None,
        ),
        ended(
            traj(6, 6, B, M0, "P01", "2024-06"),
            "2025-02",
            31,
            Some(8),
            Some(Yes),
            Some(("CBCL", 80, 70)),
            Some((4, 3)),
        ),
        ended(
            traj(7, 7, A, M0, "P01", "2025-04"),
            "2025-10",
            2,
            Some(6),
            Some(Yes),
            None,
            Some((2, 2)),
        ),
        ended(
            traj(8, 8, B, M0, "P01", "2025-01"),
            "2025-11",
            34,
            Some(7),
            Some(Yes),
            Some(("CBCL", 60, 52)),
            Some((3, 3)),
        ),
        // c6 again at B, in the month T6 ended: a repeat; running, so bounding may keep either in in_zorg.
        traj(22, 6, B, M0, "P01", "2025-02"),
        // Ended before the period: not in care in 2025.
        ended(
            traj(24, 23, A, M0, "P01", "2024-03"),
            "2024-11",
            31,
            Some(10),
            Some(Yes),
            None,
            None,
        ),
        // GM0748, P02: four endings (T12 administrative).
        ended(
            traj(9, 9, A, M0, "P02", "2025-01"),
            "2025-04",
            31,
            Some(9),
            Some(Yes),
            None,
            None,
        ),
        ended(
            traj(10, 10, B, M0, "P02", "2024-10"),
            "2025-06",
            32,
            Some(5),
            Some(No),
            None,
            Some((4, 1)),
        ),
        ended(
            traj(11, 11, B, M0, "P02", "2025-02"),
            "2025-07",
            31,
            None,
            Some(Yes),
            None,
            Some((3, 3)),
        ),
        ended(
            traj(12, 12, B, M0, "P02", "2025-03"),
            "2025-09",
            20,
            None,
            None,
            None,
            Some((2, 1)),
        ),
        // c1 at another provider four months after T1 ended: a repeat across providers.
        traj(20, 1, C, M0, "P02", "2025-07"),
        // c3 seven months after T3 ended: outside the window, no repeat.
        traj(21, 3, A, M0, "P02", "2025-12"),
        // c8 in the other municipality five months after T8 ended: a repeat; starts after 2025.
        traj(23, 8, C, M1, "P01", "2026-04"),
        // c24 in three target groups at once: bounded to two cells, the keyed order drops C01.
        traj(25, 24, A, M0, "P01", "2024-05"),
        traj(26, 24, B, M0, "P02", "2024-05"),
        traj(27, 24, C, M0, "C01", "2024-05"),
        // GM0777: running trajectories only. P01: six at C and one at A (C holds 85.7%).
        traj(13, 13, C, M1, "P01", "2024-01"),
        traj(14, 14, C, M1, "P01", "2024-06"),
        traj(15, 15, C, M1, "P01", "2025-01"),
        traj(16, 16, C, M1, "P01", "2025-03"),
        traj(17, 17, C, M1, "P01", "2025-05"),
        traj(18, 18, C, M1, "P01", "2025-08"),
        traj(19, 19, A, M1, "P01", "2025-10"),
        traj(28, 20, A, M1, "P02", "2025-05"),
        traj(29, 21, B, M1, "P02", "2024-12"),
        traj(30, 22, C, M1, "P02", "2025-09"),
    ];
    // The store hands rows over grouped by provider; the engine must not depend on it, but it is the
    // realistic order.
    rows.sort_by_key(|(agb, _)| *agb);
    rows
}

fn input<'a>(
    region: &'a RegionConfig,
    rows: &'a [(AgbCode, WireRecord)],
    as_of: &str,
) -> ReleaseInput<'a> {
    ReleaseInput {
        region,
        rows,
        period: "2025".parse().expect("valid period"),
        as_of: month(as_of),
        order_key: &ORDER_KEY,
    }
}

/// 2025-12 + 6 months = 2026-06: herhaald beroep is final from as-of 2026-07.
const FINAL: &str = "2026-07";
const NOT_FINAL: &str = "2026-06";

fn release(scope: &str, as_of: &str) -> Release {
    let region = region();
    let rows = rows();
    compute_release(
        &input(&region, &rows, as_of),
        scope.parse().expect("valid scope"),
        &mut NoNoise,
    )
    .expect("release computes")
}

/// A cell as the tests spell it: `value [low,high]`, then ` n=count` for percentages and means; the
/// status word for a suppressed cell.
fn render(cell: &ReleaseCell) -> String {
    match (cell.status, cell.value, cell.ci95_low, cell.ci95_high) {
        (CellStatus::Published, Some(v), Some(lo), Some(hi)) => match cell.count {
            Some(n) => format!("{v} [{lo},{hi}] n={n}"),
            None => format!("{v} [{lo},{hi}]"),
        },
        (CellStatus::Published, ..) => panic!("published cell {} without a value", cell.criterion),
        (status, None, None, None) if cell.count.is_none() => status.as_str().to_string(),
        _ => panic!("suppressed cell {} carries a value", cell.criterion),
    }
}

fn table(r: &Release) -> Vec<(String, Vec<String>)> {
    r.rows
        .iter()
        .map(|row| {
            let key = row
                .target_group
                .as_ref()
                .map_or("Totaal".to_string(), |t| t.to_string());
            (key, row.cells.iter().map(render).collect())
        })
        .collect()
}

fn expect(rows: &[(&str, [&str; 10])]) -> Vec<(String, Vec<String>)> {
    rows.iter()
        .map(|(k, cells)| (k.to_string(), cells.iter().map(|c| c.to_string()).collect()))
        .collect()
}

const CRITERIA: [&str; 10] = [
    "volgens_plan",
    "uitval",
    "tevredenheid",
    "zonder_hulp",
    "herhaald_beroep",
    "probleemafname",
    "doelrealisatie",
    "in_zorg",
    "gestart",
    "beeindigd",
];

const NO_DATA: [&str; 10] = ["no-data"; 10];

// How the GM0748 figures come about (after bounding: c6 counts once in P01, c24 in P01 and P02 only).
//
// volgens_plan / uitval, ended without administrative reason. P01: T1 31, T2 31, T3 32, T4 31, T5 33,
//   T6 31, T8 34 (T7 is 02): 4/7 = 57.142..% -> 57.1, interval [57.1, 57.2]; uitval 1/7 = 14.285..% ->
//   14.3 [14.2, 14.3]; n = 7 -> 5. P02: T9 31, T10 32, T11 31 (T12 is 20): 2/3 -> 66.7 [66.6, 66.7],
//   1/3 -> 33.3 [33.3, 33.4]; n = 3 -> 5. Total: 6/10 = 60.0, 2/10 = 20.0, n = 10.
// tevredenheid. P01: 8 + 7 + 4 + 9 + 8 + 6 + 7 = 49 over 7 = 7.0. P02: 9 and 5, two clients: below-k,
//   so P01 becomes secondary (else total - P01 = P02), and the region's P01 too (GM0777 has none, so
//   the region's P01 equals GM0748's). Total: 63 / 9 = 7.0, n = 9 -> 10.
// zonder_hulp, yes of yes/no (T4 unknown is left out, T7 counts). P01: yes T1 T2 T6 T7 T8, no T3 T5:
//   5/7 = 71.428..% -> 71.4 [71.4, 71.5]. P02: T9 yes, T10 no, T11 yes: 66.7. Total 7/10 = 70.0.
// herhaald_beroep, of T1..T6, T8 (P01) and T9..T11 (P02). Repeats: c1 (T20 at C, 4 months after),
//   c6 (T22, the end month itself), c8 (T23 in GM0777, 5 months after). Not: c3 (7 months after), the
//   others have no later trajectory. P01 3/7 -> 42.9 [42.8, 42.9]; P02 0/3 -> 0.0; total 3/10 = 30.0.
// probleemafname, RCI <= -1.96 means a drop of at least 9 on CBCL (r = 0.9: 768.32 x 0.1 = 76.8) and
//   at least 13 on SDQ (r = 0.8: 153.7). P01: T1 -10 yes, T2 -7 no, T3 -14 (SDQ) yes, T5 -10 (SDQ) no,
//   T6 -10 yes, T8 -8 no: 3/6 = 50.0, n = 6 -> 5. P02 measured nothing: no-data.
// doelrealisatie, achieved/agreed in tenths of a percent rounded half up. P01: 1000, 667, 500, 1000,
//   750, 1000, 1000 = 5917 over 7 (84.5). P02: 250, 1000, 500, all at provider B: few-providers, so P01
//   becomes secondary. Total 7667 / 10 = 76.67 -> 76.7 [76.6, 76.7].
// in_zorg. P01: c1 c2 c3 c7 c24 (A) c4 c5 c6 c8 (B) = 9; P02: c9 c3 (A), c10 c11 c12 c24 (B), c1 (C) = 7;
//   C01: none (c24's was dropped). GM0777 P01: 6 at C + 1 at A, 85.7% at C: dominance; so GM0777 P02
//   (3) is suppressed against its total, and both GM0748 cells against the region columns. Total 16
//   trajectories -> 15, interval [15, 20].
// gestart in 2025. P01: T2 T4 T5 T7 T8 T22 = 6; P02: T9 T11 T12 T20 T21 = 5. GM0777 P02 has two (c20,
//   c22): below-k, and the same cascade as in_zorg. Total 11 -> 10 [10, 15].
// beeindigd, every ending: P01 8 -> 10 [5, 10]; P02 4 -> 5 [0, 5]; total 12 -> 10 [10, 15].

#[test]
fn municipality_release_by_hand() {
    let r = release(M0, FINAL);
    assert_eq!(
        r.scope,
        ReleaseScope::Municipality(M0.parse().expect("valid"))
    );
    let codes: Vec<&str> = r.criteria.iter().map(|c| c.code.as_str()).collect();
    assert_eq!(codes, CRITERIA);
    assert_eq!(
        table(&r),
        expect(&[
            (
                "P01",
                [
                    "57.1 [57.1,57.2] n=5",
                    "14.3 [14.2,14.3] n=5",
                    "secondary",
                    "71.4 [71.4,71.5] n=5",
                    "42.9 [42.8,42.9] n=5",
                    "50.0 [50.0,50.0] n=5",
                    "secondary",
                    "secondary",
                    "secondary",
                    "10 [5,10]"
                ]
            ),
            (
                "P02",
                [
                    "66.7 [66.6,66.7] n=5",
                    "33.3 [33.3,33.4] n=5",
                    "below-k",
                    "66.7 [66.6,66.7] n=5",
                    "0.0 [0.0,0.0] n=5",
                    "no-data",
                    "few-providers",
                    "secondary",
                    "secondary",
                    "5 [0,5]"
                ]
            ),
            ("C01", NO_DATA),
            (
                "Totaal",
                [
                    "60.0 [60.0,60.0] n=10",
                    "20.0 [20.0,20.0] n=10",
                    "7.0 [7.0,7.0] n=10",
                    "70.0 [70.0,70.0] n=10",
                    "30.0 [30.0,30.0] n=10",
                    "50.0 [50.0,50.0] n=5",
                    "76.7 [76.6,76.7] n=10",
                    "15 [15,20]",
                    "10 [10,15]",
                    "10 [10,15]"
                ]
            ),
        ])
    );
    assert_eq!(r.rows[0].label_nl, "Profiel 1");
    assert_eq!(r.rows[3].label_nl, "Totaal");
    assert!(r.rows.iter().all(|row| row.provider.is_none()));
}

#[test]
fn small_municipality_release_by_hand() {
    // GM0777 has only running trajectories: every outcome is no-data; in_zorg P01 is dominated by C,
    // gestart P02 is below k, and their row partners are secondary.
    let r = release(M1, FINAL);
    let volumes = |a: &'static str, b: &'static str, c: &'static str| {
        [
            "no-data", "no-data", "no-data", "no-data", "no-data", "no-data", "no-data", a, b, c,
        ]
    };
    assert_eq!(
        table(&r),
        expect(&[
            ("P01", volumes("dominance", "secondary", "no-data")),
            ("P02", volumes("secondary", "below-k", "no-data")),
            ("C01", NO_DATA),
            ("Totaal", volumes("10 [10,10]", "5 [5,10]", "no-data")),
        ])
    );
}

#[test]
fn region_release_by_hand() {
    // The region rows are the margins of the municipal grid: the same suppression, region figures.
    // in_zorg P01 16 -> 15, P02 10, total 26 -> 25 [25, 30]; gestart P01 11 -> 10, P02 7 -> 5,
    // total 18 -> 20 [15, 20]. Outcomes equal GM0748's (GM0777 has no endings).
    let r = release("region", FINAL);
    assert_eq!(
        table(&r),
        expect(&[
            (
                "P01",
                [
                    "57.1 [57.1,57.2] n=5",
                    "14.3 [14.2,14.3] n=5",
                    "secondary",
                    "71.4 [71.4,71.5] n=5",
                    "42.9 [42.8,42.9] n=5",
                    "50.0 [50.0,50.0] n=5",
                    "secondary",
                    "15 [15,20]",
                    "10 [10,15]",
                    "10 [5,10]"
                ]
            ),
            (
                "P02",
                [
                    "66.7 [66.6,66.7] n=5",
                    "33.3 [33.3,33.4] n=5",
                    "below-k",
                    "66.7 [66.6,66.7] n=5",
                    "0.0 [0.0,0.0] n=5",
                    "no-data",
                    "few-providers",
                    "10 [10,10]",
                    "5 [5,10]",
                    "5 [0,5]"
                ]
            ),
            ("C01", NO_DATA),
            (
                "Totaal",
                [
                    "60.0 [60.0,60.0] n=10",
                    "20.0 [20.0,20.0] n=10",
                    "7.0 [7.0,7.0] n=10",
                    "70.0 [70.0,70.0] n=10",
                    "30.0 [30.0,30.0] n=10",
                    "50.0 [50.0,50.0] n=5",
                    "76.7 [76.6,76.7] n=10",
                    "25 [25,30]",
                    "20 [15,20]",
                    "10 [10,15]"
                ]
            ),
        ])
    );
}

#[test]
fn herhaald_beroep_is_not_final_until_the_window_has_passed() {
    // as-of 2026-06: 2025-12 + 6 is not before it. Herhaald beroep is not-final in every row, and its
    // measure group is neither noised nor paid for; everything else is unchanged.
    let final_release = release(M0, FINAL);
    let r = release(M0, NOT_FINAL);
    for (row, final_row) in r.rows.iter().zip(&final_release.rows) {
        for (cell, final_cell) in row.cells.iter().zip(&final_row.cells) {
            if cell.criterion == "herhaald_beroep" {
                assert_eq!(cell.status, CellStatus::NotFinal);
                assert_eq!(cell.value, None);
            } else {
                assert_eq!(cell, final_cell);
            }
        }
    }
    assert_eq!(r.noise.measure_groups.len(), 9);
    assert!(r
        .noise
        .measure_groups
        .iter()
        .all(|g| g.name != "herhaald_beroep"));
    // epsilon 2e7 over 2 cells x 9 groups: 10^7/9 per group; a count's scale 1 / (10^7/9).
    assert_eq!(
        (
            r.noise.epsilon_per_group.numerator,
            r.noise.epsilon_per_group.denominator
        ),
        (10_000_000, 9)
    );
    let in_care = &r.noise.measure_groups[0];
    assert_eq!(
        (in_care.scale.numerator, in_care.scale.denominator),
        (9, 10_000_000)
    );
}

#[test]
fn the_ledger_sees_epsilon_partitions_and_noise() {
    let r = release(M0, FINAL);
    assert_eq!(r.epsilon.to_string(), "20000000");
    let period: Period = "2025".parse().expect("valid");
    assert_eq!(r.period, period);
    assert_eq!(r.as_of, month(FINAL));
    let parts: Vec<String> = r
        .partitions
        .iter()
        .map(|p| format!("{}/{}", p.municipality, p.period))
        .collect();
    // A year reads its four quarters: the ledger's unit, shared with the half-years and quarters.
    assert_eq!(
        parts,
        [
            "GM0748/2025-Q1",
            "GM0748/2025-Q2",
            "GM0748/2025-Q3",
            "GM0748/2025-Q4"
        ]
    );
    let region_parts: Vec<String> = release("region", FINAL)
        .partitions
        .iter()
        .map(|p| format!("{}/{}", p.municipality, p.period))
        .collect();
    assert_eq!(region_parts.len(), 8);
    assert_eq!(region_parts[4], "GM0777/2025-Q1");
    assert_eq!(
        partitions(&region(), "region".parse().expect("valid"), period).expect("known scope"),
        release("region", FINAL).partitions
    );
    // epsilon 2e7 over 2 cells x 10 groups = 10^6 per group; scale = sensitivity / 10^6.
    assert_eq!(r.noise.contributions_per_client, 2);
    assert_eq!(
        (
            r.noise.epsilon_per_group.numerator,
            r.noise.epsilon_per_group.denominator
        ),
        (1_000_000, 1)
    );
    let scales: Vec<(String, u64, u64, u64)> = r
        .noise
        .measure_groups
        .iter()
        .map(|g| {
            (
                g.name.clone(),
                g.sensitivity,
                g.scale.numerator,
                g.scale.denominator,
            )
        })
        .collect();
    assert_eq!(scales.len(), 10);
    assert_eq!(scales[0], ("in_zorg".to_string(), 1, 1, 1_000_000));
    assert_eq!(scales[2].0, "einde");
    assert_eq!(scales[7], ("tevredenheid_som".to_string(), 10, 1, 100_000));
    assert_eq!(scales[9], ("doelrealisatie_som".to_string(), 1000, 1, 1000));
    assert_eq!(r.noise.count_rounding, 5);
    assert!(r.id.is_none() && r.version.is_none() && r.created_at.is_none() && !r.frozen);
}

#[test]
fn an_unknown_scope_is_refused() {
    let region = region();
    let rows = rows();
    let err = compute_release(
        &input(&region, &rows, FINAL),
        "GM0363".parse().expect("valid"),
        &mut NoNoise,
    )
    .expect_err("GM0363 is not in the region");
    assert!(
        matches!(err, ReleaseError::UnknownMunicipality { .. }),
        "{err}"
    );
    assert!(partitions(
        &region,
        "GM0363".parse().expect("valid"),
        "2025".parse().expect("valid")
    )
    .is_err());
}

#[test]
fn keyed_order_premise() {
    // The premise of the figures above: under ORDER_KEY, client 24's trajectories rank 25 < 26 < 27.
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &ORDER_KEY);
    let rank = |t: u8| {
        ring::hmac::sign(&key, &[[24u8; 32], [100 + t; 32]].concat())
            .as_ref()
            .to_vec()
    };
    assert!(rank(25) < rank(26) && rank(26) < rank(27));
}

#[test]
fn another_order_key_drops_another_cell() {
    // Under key [1; 32] the order is 25 < 27 < 26 (checked with ring): c24 keeps P01 and C01, so
    // GM0748 C01 has one client in care (below-k) and P02 one fewer (6). In the in_zorg grid the
    // region's C01 (1) is below k too, alone in the region row: its smallest partner, the region's P02
    // (6 + 3 = 9, against P01's 16), becomes secondary. P01 stays published: 16 -> 15.
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[1; 32]);
    let rank = |t: u8| {
        ring::hmac::sign(&key, &[[24u8; 32], [100 + t; 32]].concat())
            .as_ref()
            .to_vec()
    };
    assert!(rank(25) < rank(27) && rank(27) < rank(26));
    let region = region();
    let rows = rows();
    let other = ReleaseInput {
        order_key: &[1; 32],
        ..input(&region, &rows, FINAL)
    };
    let r = compute_release(&other, ReleaseScope::Region, &mut NoNoise).expect("computes");
    let in_zorg = |row: usize| r.rows[row].cells[7].clone();
    assert_eq!(in_zorg(2).status, CellStatus::BelowK, "C01 now holds c24");
    assert_eq!(in_zorg(1).status, CellStatus::Secondary);
    assert_eq!(in_zorg(0).value, Some(Figure::Whole(15)));
    // The same key gives the same answer every time.
    let again = compute_release(&other, ReleaseScope::Region, &mut NoNoise).expect("computes");
    assert_eq!(again, r);
}

#[test]
fn same_input_same_release_whatever_the_row_order() {
    let region = region();
    let rows = rows();
    let mut shuffled = rows.clone();
    shuffled.reverse();
    shuffled.rotate_left(7);
    for scope in [M0, M1, "region"] {
        let scope: ReleaseScope = scope.parse().expect("valid");
        let a =
            compute_release(&input(&region, &rows, FINAL), scope, &mut NoNoise).expect("computes");
        let b =
            compute_release(&input(&region, &rows, FINAL), scope, &mut NoNoise).expect("computes");
        let c = compute_release(&input(&region, &shuffled, FINAL), scope, &mut NoNoise)
            .expect("computes");
        assert_eq!(a, b);
        assert_eq!(a, c);
    }
}

#[test]
fn noise_moves_values_never_the_pattern() {
    let region = region();
    let rows = rows();
    let tables = PeriodTables::build(&input(&region, &rows, FINAL)).expect("builds");
    let statuses = |r: &Release| -> Vec<CellStatus> {
        r.rows
            .iter()
            .flat_map(|row| row.cells.iter().map(|c| c.status))
            .collect()
    };
    for scope in [M0, M1, "region"] {
        let scope: ReleaseScope = scope.parse().expect("valid");
        let plain = tables.release(scope, &mut NoNoise).expect("computes");
        for seed in 0..5 {
            let noisy = tables
                .release(scope, &mut SeededNoise::from_seed(seed))
                .expect("computes");
            assert_eq!(statuses(&noisy), statuses(&plain));
            for cell in noisy.rows.iter().flat_map(|r| &r.cells) {
                assert_eq!(cell.value.is_some(), cell.status.is_published());
                if let (Some(v), Some(lo), Some(hi)) = (cell.value, cell.ci95_low, cell.ci95_high) {
                    assert!(
                        lo.tenths() <= v.tenths() && v.tenths() <= hi.tenths(),
                        "{cell:?}"
                    );
                }
            }
        }
    }
}

#[test]
fn real_noise_scale_under_the_shipped_policy() {
    // Under the WBW policy (epsilon 0.5, 2 cells, 10 groups) a count gets scale 40 and a 95% interval of
    // +-120 (40 x (ln 40 - ln(1 + e^-1/40)) = 120.33, so w = 121 - 1): small cells are mostly noise. Recorded here
    // so that a change of policy or of the group layout shows up.
    let mut region = region();
    region.policy = RegionConfig::wbw().policy;
    region.policy.k = 3;
    let rows = rows();
    let r = compute_release(
        &input(&region, &rows, FINAL),
        ReleaseScope::Region,
        &mut NoNoise,
    )
    .expect("computes");
    let g = &r.noise.measure_groups;
    assert_eq!((g[0].scale.numerator, g[0].scale.denominator), (40, 1));
    assert_eq!((g[9].scale.numerator, g[9].scale.denominator), (40_000, 1));
    assert_eq!(
        crate::noise::interval_95(crate::noise::Scale { num: 40, den: 1 }),
        120
    );
    // The region's in_zorg P01 (16, noise off) is published as 15 with the interval [16 - 120, 16 + 120]
    // rounded outward to the grid of 5 and cut at zero.
    let cell = &r.rows[0].cells[7];
    assert_eq!(
        (cell.value, cell.ci95_low, cell.ci95_high),
        (
            Some(Figure::Whole(15)),
            Some(Figure::Whole(0)),
            Some(Figure::Whole(140))
        )
    );
}

#[test]
fn a_release_survives_json() {
    let r = release("region", FINAL);
    let json = serde_json::to_string(&r).expect("serialises");
    assert!(json.contains("\"status\":\"few-providers\""));
    assert!(json.contains("\"value\":\"57.1\""));
    assert_eq!(serde_json::from_str::<Release>(&json).expect("parses"), r);
}
