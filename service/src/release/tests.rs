//! Tests of the round engine: known answers with the noise switched off (a test-only policy whose rho
//! is so large that every interval is the rounding alone), consistency of the tables, and the
//! publication decision as post-processing of the noisy measurement.
//!
//! The figures below were worked out by hand from the trajectories listed here (the derivations are
//! in the comments), not by running the engine.

use kwm_schemas::codes::{AgeBand, CarryOn, EndReason, GoalCount, Pseudonym, Respondent};
use kwm_schemas::codes::{Satisfaction, TScore};
use kwm_schemas::release::{CellStatus, Figure, Release, ReleaseScope};
use kwm_schemas::{AgbCode, Month, Period, RegionConfig, WireRecord};
use proptest::prelude::*;

use super::{
    assemble, compute_round, engine_rows, IndexedInput, Measurement, NoisePlan, ReleaseError,
    RoundContext, TrueTables,
};
use crate::noise::{NoNoise, SeededNoise};

/// Two municipalities, two target groups, k = 3, two cells per child, a window of six months, counts
/// rounded to 5. Rho is huge so that the noise's intervals are far below one unit: with `NoNoise`
/// only the rounding shows. Test-only: no region file could publish with it (the cap is checked).
pub(crate) const REGION: &str = r#"
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
code = "C01"
kind = "complex"
label_nl = "Zorgcombinatie 1"
label_en = "Care combination 1"

[[instruments]]
code = "CBCL"
name = "CBCL"
reliability = 0.90

[policy]
k = 3
max_cells_per_client = 2
herhaald_beroep_window_months = 6
count_rounding = 5

[privacy]
mechanism = "discrete-gaussian"
rho_per_data_year = "100000000"
delta = "0.000001"
suppression_delta = "0.001"
data_deadline_months = 6
year_round = "50000000"

[privacy.levels]
municipality = "0.5"
region = "0.45"
providers = "0.05"

[privacy.weights]
in_zorg = "1"
gestart = "1"
einde = "1"
herhaald_beroep = "1"
zonder_hulp = "1"
probleemafname = "1"
tevredenheid_aantal = "1"
tevredenheid_som = "1"
doelrealisatie_aantal = "1"
doelrealisatie_som = "1"

[privacy.max_interval]
percentage = "40"
grade = "3"
"#;

const A: &str = "11111111";
const B: &str = "22222222";
const M0: &str = "GM0748";
const M1: &str = "GM0777";
const ORDER_KEY: [u8; 32] = [4; 32];

fn region() -> RegionConfig {
    RegionConfig::from_toml_str(REGION, "test.toml").expect("valid test region")
}

fn month(s: &str) -> Month {
    s.parse().expect("valid month")
}

/// Trajectory `id` of child `c`; outcome fields are set afterwards.
fn traj(id: u8, c: u8, provider: &str, muni: &str, tg: &str, start: &str) -> (AgbCode, WireRecord) {
    let rec = WireRecord {
        client: Pseudonym([c; 32]),
        trajectory: Pseudonym([100 + id; 32]),
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

/// Ends a trajectory: end month and reason, grade, carry on, T-scores (CBCL), goals (agreed, achieved).
fn ended(
    mut t: (AgbCode, WireRecord),
    end: &str,
    reason: u8,
    grade: Option<u8>,
    carry: Option<CarryOn>,
    scores: Option<(u8, u8)>,
    goals: Option<(u8, u8)>,
) -> (AgbCode, WireRecord) {
    let r = &mut t.1;
    r.end_month = Some(month(end));
    r.end_reason = Some(EndReason::new(reason).expect("valid reason"));
    r.satisfaction = grade.map(|g| Satisfaction::new(g).expect("valid grade"));
    r.respondent = grade.map(|_| Respondent::Parent);
    r.carry_on_without_help = carry;
    if let Some((pre, post)) = scores {
        r.instrument = Some("CBCL".parse().expect("valid code"));
        r.problem_t_pre = Some(TScore::new(pre).expect("valid T"));
        r.problem_t_post = Some(TScore::new(post).expect("valid T"));
    }
    if let Some((agreed, achieved)) = goals {
        r.goals_agreed = Some(GoalCount::new(agreed).expect("valid"));
        r.goals_achieved = Some(GoalCount::new(achieved).expect("valid"));
    }
    t
}

/// Period 2025. GM0748 P01: children 1..6 ended in 2025 (four as planned, one drop-out, one ended by
/// the provider), child 7 still running; child 1 comes back in P01 at provider B in 2026-02 (a
/// repeat), child 2 in C01 in 2025-11 (also a repeat: any trajectory of the same child). GM0777 P01:
/// children 8 and 9 only (fewer than k = 3).
fn rows() -> Vec<(AgbCode, WireRecord)> {
    use CarryOn::{No, Unknown, Yes};
    vec![
        // c1: plan, grade 8, yes, CBCL 70 -> 60 (a drop of 10 >= 8.77: improved), goals 4/4.
        ended(
            traj(1, 1, A, M0, "P01", "2024-09"),
            "2025-03",
            31,
            Some(8),
            Some(Yes),
            Some((70, 60)),
            Some((4, 4)),
        ),
        // c2: plan, grade 7, yes, 65 -> 58 (7: not improved), goals 3/2 (66.7%).
        ended(
            traj(2, 2, A, M0, "P01", "2025-01"),
            "2025-06",
            31,
            Some(7),
            Some(Yes),
            Some((65, 58)),
            Some((3, 2)),
        ),
        // c3: drop-out, grade 4, no.
        ended(
            traj(3, 3, A, M0, "P01", "2025-02"),
            "2025-05",
            32,
            Some(4),
            Some(No),
            None,
            Some((2, 1)),
        ),
        // c4: plan, grade 9, unknown, goals 5/5.
        ended(
            traj(4, 4, B, M0, "P01", "2025-02"),
            "2025-08",
            31,
            Some(9),
            Some(Unknown),
            None,
            Some((5, 5)),
        ),
        // c5: ended by the provider (33), no grade, no.
        ended(
            traj(5, 5, B, M0, "P01", "2025-03"),
            "2025-09",
            33,
            None,
            Some(No),
            Some((60, 50)),
            None,
        ),
        // c6: plan, grade 6, yes.
        ended(
            traj(6, 6, B, M0, "P01", "2025-04"),
            "2025-10",
            31,
            Some(6),
            Some(Yes),
            None,
            None,
        ),
        // c7: running.
        traj(7, 7, A, M0, "P01", "2025-06"),
        // c1's repeat (starts 2026-02, within six months of 2025-03? no: 2025-03 + 6 = 2025-09).
        traj(8, 1, B, M0, "P01", "2026-02"),
        // c2's repeat: C01 from 2025-11, within six months of 2025-06 (2025-12): a repeat.
        traj(9, 2, B, M0, "C01", "2025-11"),
        // GM0777 P01: two children.
        ended(
            traj(10, 8, A, M1, "P01", "2025-01"),
            "2025-04",
            31,
            Some(8),
            Some(Yes),
            None,
            None,
        ),
        ended(
            traj(11, 9, B, M1, "P01", "2025-02"),
            "2025-05",
            32,
            Some(5),
            Some(No),
            None,
            None,
        ),
    ]
}

fn input<'a>(region: &'a RegionConfig, shard: &'a [Vec<super::EngineRow>]) -> IndexedInput<'a> {
    IndexedInput {
        region,
        shards: shard,
        period: "2025".parse().expect("period"),
        as_of: month("2026-12"),
        order_key: &ORDER_KEY,
    }
}

fn round(region: &RegionConfig) -> Vec<Release> {
    let shard = vec![engine_rows(region, &rows())];
    let rho = region.privacy.year_round;
    compute_round(&input(region, &shard), rho, &mut NoNoise)
        .expect("round")
        .releases
}

fn cell<'a>(
    r: &'a Release,
    group: Option<&str>,
    criterion: &str,
) -> &'a kwm_schemas::release::ReleaseCell {
    let row = r
        .rows
        .iter()
        .find(|row| {
            row.provider.is_none() && row.target_group.as_ref().map(|c| c.as_str()) == group
        })
        .expect("row");
    let i = r
        .criteria
        .iter()
        .position(|c| c.code == criterion)
        .expect("criterion");
    &row.cells[i]
}

fn scope<'a>(releases: &'a [Release], s: &str) -> &'a Release {
    let s: ReleaseScope = s.parse().expect("scope");
    releases
        .iter()
        .find(|r| r.scope == s)
        .expect("release of scope")
}

#[test]
fn a_round_has_every_municipality_the_region_and_the_providers() {
    let region = region();
    let releases = round(&region);
    let scopes: Vec<String> = releases.iter().map(|r| r.scope.to_string()).collect();
    assert_eq!(scopes, ["GM0748", "GM0777", "region", "providers"]);
}

#[test]
fn known_answers_with_noise_off() {
    let region = region();
    let releases = round(&region);
    let gm0748 = scope(&releases, M0);
    let tenths = |t: i64| Some(Figure::Tenths(t));
    // Outcome endings in GM0748 P01: c1..c6 (31, 31, 32, 31, 33, 31): 6; plan 4 -> 66.7%, uitval
    // 1 -> 16.7%.
    let c = cell(gm0748, Some("P01"), "volgens_plan");
    assert_eq!(c.status, CellStatus::Published);
    assert_eq!(c.value, tenths(667));
    assert_eq!(c.count, Some(5), "6 endings, rounded to 5");
    // The interval is the rounding alone: half a tenth, rounded outward to a tenth.
    assert_eq!((c.ci95_low, c.ci95_high), (tenths(666), tenths(668)));
    assert_eq!(cell(gm0748, Some("P01"), "uitval").value, tenths(167));
    // Herhaald beroep: c2 (C01 from 2025-11, within 2025-06 + 6) only; c1's return in 2026-02 is
    // eleven months after 2025-03. 1 of 6: 16.7%.
    assert_eq!(
        cell(gm0748, Some("P01"), "herhaald_beroep").value,
        tenths(167)
    );
    // Zonder hulp: yes c1, c2, c6; no c3, c5; unknown c4 left out: 3/5 = 60%.
    assert_eq!(cell(gm0748, Some("P01"), "zonder_hulp").value, tenths(600));
    // Tevredenheid: grades 8, 7, 4, 9, 6: mean 6.8.
    assert_eq!(cell(gm0748, Some("P01"), "tevredenheid").value, tenths(68));
    // Probleemafname: three measured (c1 70 -> 60 and c5 60 -> 50 improved: a drop of 10 >= 8.77;
    // c2 65 -> 58 not): 2/3 = 66.7%.
    assert_eq!(
        cell(gm0748, Some("P01"), "probleemafname").value,
        tenths(667)
    );
    // Doelrealisatie: 100%, 66.7%, 50%, 100% in tenths 1000, 667, 500, 1000: mean 791.75 -> 79.2%.
    assert_eq!(
        cell(gm0748, Some("P01"), "doelrealisatie").value,
        tenths(792)
    );
    // In zorg: c1..c7 = 7 -> 5; gestart in 2025: c2..c7 = 5 -> 5 (c1 started 2024).
    assert_eq!(
        cell(gm0748, Some("P01"), "in_zorg").value,
        Some(Figure::Whole(5))
    );
    assert_eq!(
        cell(gm0748, Some("P01"), "gestart").value,
        Some(Figure::Whole(5))
    );
    // GM0748 C01: only c2's repeat trajectory, running: 1 child < k.
    assert_eq!(
        cell(gm0748, Some("C01"), "in_zorg").status,
        CellStatus::Suppressed
    );
    // GM0777 P01: two children < k: every cell suppressed, with no distinction between none and few.
    let gm0777 = scope(&releases, M1);
    for c in &gm0777.rows[0].cells {
        assert_eq!(c.status, CellStatus::Suppressed, "{}", c.criterion);
        assert!(c.value.is_none() && c.ci95_low.is_none() && c.count.is_none());
    }
    // The region's P01: 8 outcome endings (GM0748's 6 and GM0777's 2): plan 5 -> 62.5%.
    let reg = scope(&releases, "region");
    assert_eq!(cell(reg, Some("P01"), "volgens_plan").value, tenths(625));
    assert_eq!(cell(reg, Some("P01"), "uitval").value, tenths(250));
}

#[test]
fn a_provider_sees_its_own_figures_exactly_and_herhaald_beroep_noised() {
    let region = region();
    let releases = round(&region);
    let providers = scope(&releases, "providers");
    let a: AgbCode = A.parse().expect("agb");
    let row = providers
        .rows
        .iter()
        .find(|r| {
            r.provider == Some(a) && r.target_group.as_ref().map(|c| c.as_str()) == Some("P01")
        })
        .expect("provider A's P01 row");
    let at = |code: &str| {
        let i = providers
            .criteria
            .iter()
            .position(|c| c.code == code)
            .expect("criterion");
        &row.cells[i]
    };
    // Provider A in P01: c1 (GM0748), c2, c3, c7 running, c8 (GM0777): in care 5, exactly, not rounded.
    assert_eq!(at("in_zorg").value, Some(Figure::Whole(5)));
    assert!(at("in_zorg").exact && at("in_zorg").ci95_low.is_none());
    // Endings c1 31, c2 31, c3 32, c8 31: plan 3/4 = 75%.
    assert_eq!(at("volgens_plan").value, Some(Figure::Tenths(750)));
    // Herhaald beroep is decided by other providers' rows: noisy, with the provider threshold (4
    // endings with k = 3 clear it only with the noise off).
    assert!(!at("herhaald_beroep").exact);
}

#[test]
fn an_open_window_is_refused() {
    let region = region();
    let shard = vec![engine_rows(&region, &rows())];
    let mut early = input(&region, &shard);
    early.as_of = month("2026-05");
    let err =
        compute_round(&early, region.privacy.year_round, &mut NoNoise).expect_err("not final");
    assert!(matches!(err, ReleaseError::NotFinal(_)), "{err}");
}

#[test]
fn municipalities_add_up_to_the_region_whatever_the_noise() {
    let region = region();
    // A less generous budget, so that the noise matters.
    let rho = "0.5".parse().expect("rho");
    let shard = vec![engine_rows(&region, &rows())];
    for seed in 0..20 {
        let round = compute_round(
            &input(&region, &shard),
            rho,
            &mut SeededNoise::from_seed(seed),
        )
        .expect("round");
        let (reg, munis) = (
            scope(&round.releases, "region"),
            [scope(&round.releases, M0), scope(&round.releases, M1)],
        );
        // Published region counts agree with the municipal counts up to the rounding of each.
        for crit in ["in_zorg", "gestart", "beeindigd"] {
            let region_total = cell(reg, None, crit);
            let parts: Vec<_> = munis.iter().map(|m| cell(m, None, crit)).collect();
            if let (Some(Figure::Whole(r)), Some(Figure::Whole(a)), Some(Figure::Whole(b))) =
                (region_total.value, parts[0].value, parts[1].value)
            {
                assert!(
                    (r - a - b).abs() <= 5,
                    "{crit}: {r} vs {a} + {b} (seed {seed})"
                );
            }
        }
    }
}

/// The region's true sums, bins by municipality and group, with one child more in GM0748 P01.
fn with_extra_child() -> Vec<(AgbCode, WireRecord)> {
    let mut rows = rows();
    rows.push(ended(
        traj(20, 30, A, M0, "P01", "2025-03"),
        "2025-07",
        31,
        Some(9),
        Some(CarryOn::Yes),
        None,
        None,
    ));
    rows
}

#[test]
fn with_the_noise_fixed_one_child_changes_only_the_figures_it_is_in() {
    // Same seed, same noise: the two measurements differ exactly by the child's contribution, and
    // every status and figure outside the child's rows is the same.
    let region = region();
    let rho = "2".parse().expect("rho");
    let plan = NoisePlan::new(&region, rho).expect("plan");
    let period: Period = "2025".parse().expect("period");
    let charges = plan.charges(&region, period).expect("charges");
    let ctx = RoundContext {
        region: &region,
        plan: &plan,
        charges: &charges,
    };
    for seed in 0..10 {
        let mut out = Vec::new();
        for data in [rows(), with_extra_child()] {
            let shard = vec![engine_rows(&region, &data)];
            let tables = TrueTables::build(&input(&region, &shard)).expect("tables");
            let m =
                Measurement::draw(&tables, &plan, &mut SeededNoise::from_seed(seed)).expect("m");
            out.push(assemble(&ctx, &tables.frame, &m, &tables.own).expect("releases"));
        }
        // GM0777 is untouched, and so is every C01 row.
        assert_eq!(
            scope(&out[0], M1).rows,
            scope(&out[1], M1).rows,
            "seed {seed}"
        );
        for s in [M0, "region"] {
            let (a, b) = (scope(&out[0], s), scope(&out[1], s));
            let c01 = |r: &Release| {
                r.rows
                    .iter()
                    .find(|row| row.target_group.as_ref().map(|c| c.as_str()) == Some("C01"))
                    .cloned()
            };
            assert_eq!(c01(a), c01(b), "{s} seed {seed}");
        }
    }
}

#[test]
fn the_same_measurement_gives_the_same_round_whatever_the_true_data() {
    // Statuses, values and intervals are post-processing: two data sets that happen to give the same
    // noisy measurement give the same municipal and region releases.
    let region = region();
    let rho = "2".parse().expect("rho");
    let plan = NoisePlan::new(&region, rho).expect("plan");
    let charges = plan
        .charges(&region, "2025".parse().expect("p"))
        .expect("c");
    let ctx = RoundContext {
        region: &region,
        plan: &plan,
        charges: &charges,
    };
    let shard_a = vec![engine_rows(&region, &rows())];
    let shard_b = vec![engine_rows(&region, &with_extra_child())];
    let a = TrueTables::build(&input(&region, &shard_a)).expect("a");
    let b = TrueTables::build(&input(&region, &shard_b)).expect("b");
    assert_ne!(a.muni, b.muni, "the data differ");
    let m = Measurement::draw(&a, &plan, &mut SeededNoise::from_seed(7)).expect("m");
    let ra = assemble(&ctx, &a.frame, &m, &a.own).expect("ra");
    let rb = assemble(&ctx, &b.frame, &m, &b.own).expect("rb");
    for s in [M0, M1, "region"] {
        assert_eq!(scope(&ra, s), scope(&rb, s), "{s}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]
    /// Whatever the noise: a status is `published` only with a value and an interval that holds it,
    /// `suppressed` and `unreliable` only without; a published percentage lies in 0..=100.
    #[test]
    fn statuses_and_figures_are_coherent(seed in 0u64..10_000, rho_tenths in 1u32..40) {
        let region = region();
        let rho = format!("{}.{}", rho_tenths / 10, rho_tenths % 10).parse().expect("rho");
        let shard = vec![engine_rows(&region, &rows())];
        let round = compute_round(&input(&region, &shard), rho, &mut SeededNoise::from_seed(seed)).expect("round");
        for r in &round.releases {
            for row in &r.rows {
                for c in &row.cells {
                    match c.status {
                        CellStatus::Published => {
                            let (v, lo, hi) = (c.value.expect("v").tenths(), c.ci95_low, c.ci95_high);
                            if !c.exact {
                                let (lo, hi) = (lo.expect("lo").tenths(), hi.expect("hi").tenths());
                                prop_assert!(lo <= v && v <= hi, "{} {lo} {v} {hi}", c.criterion);
                            }
                        }
                        _ => prop_assert!(c.value.is_none() && c.ci95_low.is_none() && c.ci95_high.is_none()),
                    }
                    if let (Some(Figure::Tenths(t)), true) = (c.value, c.criterion != "tevredenheid") {
                        prop_assert!((0..=1000).contains(&t));
                    }
                }
            }
        }
    }
}

#[test]
fn a_pure_dp_region_gets_discrete_laplace_noise_within_its_epsilon() {
    // mechanism = "discrete-laplace": every measure's scale is c D / epsilon_m with the epsilons adding
    // up to at most sqrt(2 rho), so the round is epsilon-DP and rho-zCDP.
    let text = REGION.replace(
        "mechanism = \"discrete-gaussian\"",
        "mechanism = \"discrete-laplace\"",
    );
    let region = RegionConfig::from_toml_str(&text, "laplace.toml").expect("valid");
    let rho: kwm_schemas::region::Rho = "0.5".parse().expect("rho");
    let plan = NoisePlan::new(&region, rho).expect("plan");
    let c = f64::from(region.policy.max_cells_per_client);
    let mut eps = 0.0;
    for d in plan.describe() {
        let s = d.scale.expect("a Laplace scale");
        assert!(d.variance.is_none());
        eps += c * d.sensitivity as f64 * s.denominator as f64 / s.numerator as f64;
    }
    assert!(eps <= (2.0f64 * 0.5).sqrt() + 1e-9, "epsilon {eps}");
    assert!(eps > 0.99, "the budget is spent, not wasted: {eps}");
    let shard = vec![engine_rows(&region, &rows())];
    let round =
        compute_round(&input(&region, &shard), rho, &mut SeededNoise::from_seed(3)).expect("round");
    assert_eq!(round.releases.len(), 4);
    assert_eq!(round.releases[0].noise.mechanism, "discrete-laplace");
}

/// The downloads copy the engine's figures and compute none: the Dutch CSV shows each released figure
/// with a decimal comma, and a provider without trajectories in the period gets "geen trajecten"
/// beside the region's figures, which stay those of the region release.
#[test]
fn downloads_show_the_engines_figures_and_nothing_else() {
    use calamine::{Data, Reader};

    use crate::tables::{to_csv, to_xlsx, Report};

    let region = region();
    let releases = round(&region);
    let muni = scope(&releases, M0);
    let csv = to_csv(&Report::of_release(&region, muni)).expect("csv");
    let text = std::str::from_utf8(&csv).expect("utf-8");
    let body = text.strip_prefix('\u{feff}').expect("a byte order mark");
    let lines: Vec<Vec<&str>> = body.lines().map(|l| l.split(';').collect()).collect();
    let cells: Vec<_> = muni.rows.iter().flat_map(|r| &r.cells).collect();
    assert_eq!(lines.len(), cells.len() + 1);
    for (line, c) in lines[1..].iter().zip(&cells) {
        assert_eq!(line.len(), 13, "{line:?}");
        let shown = c
            .value
            .map(|v| v.to_string().replace('.', ","))
            .unwrap_or_default();
        assert_eq!(line[8], shown, "{c:?}");
    }
    assert!(lines[1..].iter().any(|l| l[8].contains(',')));

    let stranger: AgbCode = "99999999".parse().expect("an AGB code");
    let (own, benchmark) = (scope(&releases, "providers"), scope(&releases, "region"));
    let report = Report::of_scores(&region, stranger, own, benchmark);
    let mut book: calamine::Xlsx<_> =
        calamine::open_workbook_from_rs(std::io::Cursor::new(to_xlsx(&report).expect("xlsx")))
            .expect("a workbook");
    let figures = book.worksheet_range("Cijfers").expect("the figures");
    let first = crate::tables::XLSX_HEADER_ROW + 1;
    let benchmark_cells: Vec<_> = benchmark.rows.iter().flat_map(|r| &r.cells).collect();
    let lines: Vec<&[Data]> = figures.rows().skip(first as usize).collect();
    assert_eq!(lines.len(), benchmark_cells.len());
    for (line, c) in lines.iter().zip(&benchmark_cells) {
        assert_eq!(line[7], Data::String("geen trajecten".into()));
        let value = match line[8] {
            Data::Float(f) => Some((f * 10.0).round() as i64),
            _ => None,
        };
        assert_eq!(value, c.value.map(Figure::tenths), "{c:?}");
    }
    let csv = to_csv(&report).expect("csv");
    let text = std::str::from_utf8(&csv).expect("utf-8");
    assert_eq!(
        text.lines().count(),
        benchmark_cells.len() + 1,
        "no own lines, every region line"
    );
}
