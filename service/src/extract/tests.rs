//! Known-answer tests of the search on hand-made data, and properties on random data: every extract meets
//! the k and l it states, never leaves out more than the allowed share, never holds a pseudonym or a
//! provider code, and the best-first search finds what evaluating every node finds.

use std::collections::{BTreeMap, BTreeSet};

use kwm_schemas::codes::{AgeBand, EndReason, Intensity, Satisfaction};
use kwm_schemas::extract::{ExtractColumn as C, ExtractSpec, Share};
use kwm_schemas::{AgbCode, Pseudonym, RegionConfig, WireRecord};
use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

use super::*;

const AGB: &str = "87654321";

fn record(client: u8, municipality: &str, age: AgeBand) -> WireRecord {
    WireRecord {
        client: Pseudonym([client; 32]),
        trajectory: Pseudonym([client.wrapping_add(128); 32]),
        municipality: municipality.parse().expect("valid"),
        target_group: "P01".parse().expect("valid"),
        intensity: None,
        product_category: None,
        start_month: "2025-02".parse().expect("valid"),
        end_month: None,
        age_band: age,
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

fn rows(records: Vec<WireRecord>) -> Vec<(AgbCode, WireRecord)> {
    let agb: AgbCode = AGB.parse().expect("valid");
    records.into_iter().map(|r| (agb, r)).collect()
}

fn spec(qis: &[C], sensitive: C, k: u32, l: u32, max_suppressed: &str) -> ExtractSpec {
    ExtractSpec {
        quasi_identifiers: qis.to_vec(),
        sensitive,
        other_columns: Vec::new(),
        k,
        l,
        max_suppressed: max_suppressed.parse().expect("valid"),
        risk_threshold: "0.2".parse().expect("valid"),
        client_ids: true,
    }
}

fn run(rows: &[(AgbCode, WireRecord)], spec: &ExtractSpec) -> Result<Extract, ExtractError> {
    anonymise(
        rows,
        spec,
        &RegionConfig::wbw(),
        &mut ChaCha20Rng::seed_from_u64(7),
    )
}

fn levels(e: &Extract) -> Vec<(C, String)> {
    e.report
        .generalisation
        .iter()
        .map(|g| (g.column, g.level_name.clone()))
        .collect()
}

fn csv_text(e: &Extract) -> String {
    let mut out = Vec::new();
    to_csv(e, &mut out).expect("writes");
    String::from_utf8(out).expect("utf-8")
}

#[test]
fn data_that_is_already_anonymous_is_released_as_it_is() {
    let data = rows(vec![
        record(1, "GM0748", AgeBand::Age0To3),
        record(2, "GM0748", AgeBand::Age0To3),
        record(3, "GM0777", AgeBand::Age0To3),
        record(4, "GM0777", AgeBand::Age0To3),
    ]);
    let e = run(
        &data,
        &spec(&[C::Municipality, C::AgeBand], C::Satisfaction, 2, 1, "0"),
    )
    .expect("an extract");
    assert_eq!(
        levels(&e),
        [
            (C::Municipality, "municipality".into()),
            (C::AgeBand, "age_band".into())
        ]
    );
    assert_eq!(e.report.information_loss.value, 0.0);
    assert_eq!((e.report.k, e.report.l, e.report.records_out), (2, 1, 4));
    assert_eq!(e.report.prosecutor_risk.highest, 0.5);
    assert_eq!(e.report.prosecutor_risk.records_above_threshold, 4);
}

#[test]
fn the_cheaper_generalisation_wins() {
    // Widening the age band costs 1/3 per record in one of two columns (1/6); the region instead of
    // the municipality costs 1 in one of two columns (1/2). Both make classes of two children.
    let data = rows(vec![
        record(1, "GM0748", AgeBand::Age0To3),
        record(2, "GM0748", AgeBand::Age4To11),
        record(3, "GM0777", AgeBand::Age0To3),
        record(4, "GM0777", AgeBand::Age4To11),
    ]);
    let e = run(
        &data,
        &spec(&[C::Municipality, C::AgeBand], C::Satisfaction, 2, 1, "0.5"),
    )
    .expect("an extract");
    assert_eq!(
        levels(&e),
        [
            (C::Municipality, "municipality".into()),
            (C::AgeBand, "wide_band".into())
        ]
    );
    assert!((e.report.information_loss.value - 1.0 / 6.0).abs() < 1e-12);
    assert_eq!(e.report.records_suppressed, 0);
    let text = csv_text(&e);
    let mut lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.remove(0), "client,municipality,age_band,satisfaction");
    let mut bodies: Vec<String> = lines
        .iter()
        .map(|l| l.split_once(',').expect("fields").1.to_string())
        .collect();
    bodies.sort();
    assert_eq!(
        bodies,
        [
            "GM0748,0-11,",
            "GM0748,0-11,",
            "GM0777,0-11,",
            "GM0777,0-11,"
        ]
    );
}

fn graded(client: u8, municipality: &str, grade: u8) -> WireRecord {
    let mut r = record(client, municipality, AgeBand::Age12To17);
    r.satisfaction = Some(Satisfaction::new(grade).expect("valid"));
    r
}

#[test]
fn a_class_without_l_distinct_outcomes_is_suppressed_or_generalised() {
    // GM0748's three children all gave an 8: the class fails l = 2.
    let data = rows(vec![
        graded(1, "GM0748", 8),
        graded(2, "GM0748", 8),
        graded(3, "GM0748", 8),
        graded(4, "GM0777", 5),
        graded(5, "GM0777", 6),
        graded(6, "GM0777", 7),
    ]);
    // Half may be left out: leaving out GM0748 (loss 3 of 6) beats the region (loss 6 of 6).
    let e = run(
        &data,
        &spec(&[C::Municipality], C::Satisfaction, 3, 2, "0.5"),
    )
    .expect("an extract");
    assert_eq!(levels(&e), [(C::Municipality, "municipality".into())]);
    assert_eq!((e.report.records_suppressed, e.report.records_out), (3, 3));
    assert_eq!((e.report.k, e.report.l), (3, 3));
    assert!((e.report.information_loss.value - 0.5).abs() < 1e-12);
    assert!(!csv_text(&e).contains("GM0748"));
    // Less may be left out: only the region is left.
    let e = run(
        &data,
        &spec(&[C::Municipality], C::Satisfaction, 3, 2, "0.4"),
    )
    .expect("an extract");
    assert_eq!(levels(&e), [(C::Municipality, "region".into())]);
    assert_eq!(
        (e.report.records_suppressed, e.report.k, e.report.l),
        (0, 6, 4)
    );
    assert_eq!(e.report.information_loss.value, 1.0);
    assert!(csv_text(&e).lines().skip(1).all(|l| l.contains(",wbw,")));
    // l above the distinct grades there are: nothing qualifies.
    let err = run(
        &data,
        &spec(&[C::Municipality], C::Satisfaction, 3, 5, "0.4"),
    )
    .expect_err("no solution");
    assert!(matches!(err, ExtractError::NoSolution { .. }), "{err}");
}

#[test]
fn k_counts_children_not_trajectories() {
    // One child with three trajectories is one child, however many records.
    let mut data = vec![
        record(1, "GM0748", AgeBand::Age0To3),
        record(1, "GM0748", AgeBand::Age0To3),
        record(1, "GM0748", AgeBand::Age0To3),
    ];
    data.extend([
        record(2, "GM0777", AgeBand::Age0To3),
        record(3, "GM0777", AgeBand::Age0To3),
    ]);
    let e = run(
        &rows(data),
        &spec(&[C::Municipality], C::Satisfaction, 2, 1, "0"),
    )
    .expect("an extract");
    assert_eq!(levels(&e), [(C::Municipality, "region".into())]);
    assert_eq!(e.report.k, 3);
    assert_eq!(e.report.min_class_records, 5);
    assert_eq!(e.report.children_out, 3);
    // The child's trajectories share one id; ids are 1..=3.
    let ids: Vec<u32> = e.rows().filter_map(|r| r.client()).collect();
    assert_eq!(
        ids.iter().copied().collect::<BTreeSet<_>>(),
        BTreeSet::from([1, 2, 3])
    );
    let counts = ids.iter().fold(BTreeMap::new(), |mut m, id| {
        *m.entry(id).or_insert(0) += 1;
        m
    });
    assert_eq!(counts.values().copied().max(), Some(3));
}

#[test]
fn requests_that_cannot_be_met_are_refused_by_name() {
    let data = rows(vec![record(1, "GM0748", AgeBand::Age0To3)]);
    let err = run(&data, &spec(&[C::Satisfaction], C::EndReason, 2, 1, "0")).expect_err("refused");
    assert!(
        matches!(err, ExtractError::NoHierarchy(C::Satisfaction)),
        "{err}"
    );
    let err = run(&data, &spec(&[C::EndReason], C::EndReason, 2, 1, "0")).expect_err("refused");
    assert!(
        matches!(err, ExtractError::Duplicate(C::EndReason)),
        "{err}"
    );
    let err = run(&data, &spec(&[C::AgeBand], C::EndReason, 1, 1, "0")).expect_err("refused");
    assert!(matches!(err, ExtractError::Model), "{err}");
    let err = run(&data, &spec(&[], C::EndReason, 2, 1, "0")).expect_err("refused");
    assert!(matches!(err, ExtractError::NoQuasiIdentifiers), "{err}");
    let mut outside = record(2, "GM0363", AgeBand::Age0To3);
    outside.end_reason = Some(EndReason::ACCORDING_TO_PLAN);
    let err = run(
        &rows(vec![outside]),
        &spec(&[C::Municipality], C::EndReason, 2, 1, "1"),
    )
    .expect_err("refused");
    assert!(err.to_string().contains("GM0363"), "{err}");
}

#[test]
fn without_client_ids_there_is_no_client_column() {
    let data = rows(vec![
        record(1, "GM0748", AgeBand::Age0To3),
        record(2, "GM0748", AgeBand::Age0To3),
    ]);
    let mut s = spec(&[C::AgeBand], C::Satisfaction, 2, 1, "0");
    s.client_ids = false;
    let e = run(&data, &s).expect("an extract");
    assert!(e.rows().all(|r| r.client().is_none()));
    assert_eq!(csv_text(&e), "age_band,satisfaction\n0-3,\n0-3,\n");
    // k still counts children.
    assert_eq!(e.report.k, 2);
}

#[test]
fn an_empty_table_gives_an_empty_extract() {
    let e = run(&[], &spec(&[C::StartMonth], C::Satisfaction, 5, 2, "0")).expect("an extract");
    assert!(e.is_empty());
    assert_eq!((e.report.k, e.report.records_in), (0, 0));
    assert_eq!(csv_text(&e), "client,start_month,satisfaction\n");
}

#[test]
fn the_report_serialises_with_the_request() {
    let data = rows(vec![
        record(1, "GM0748", AgeBand::Age0To3),
        record(2, "GM0748", AgeBand::Age0To3),
    ]);
    let s = spec(&[C::AgeBand], C::Satisfaction, 2, 1, "0");
    let e = run(&data, &s).expect("an extract");
    let json = serde_json::to_value(&e.report).expect("serialises");
    assert_eq!(json["requested"]["max_suppressed"], "0");
    assert_eq!(json["information_loss"]["measure"], "loss-metric");
    assert_eq!(json["k"], 2);
}

// ---- properties on random data ----

const MUNICIPALITIES: [&str; 3] = ["GM0748", "GM0777", "GM1655"];
const GROUPS: [&str; 4] = ["P01", "P02", "C01", "C02"];
const QI_CHOICES: [C; 6] = [
    C::Municipality,
    C::TargetGroup,
    C::AgeBand,
    C::StartMonth,
    C::EndMonth,
    C::Intensity,
];

fn arb_record(clients: Vec<[u8; 32]>) -> impl Strategy<Value = WireRecord> {
    (
        0..clients.len(),
        any::<[u8; 32]>(),
        0..MUNICIPALITIES.len(),
        0..GROUPS.len(),
        0..AgeBand::ALL.len(),
        0u8..8,
        proptest::option::of(0u8..6),
        proptest::option::of(1u8..=4),
        proptest::option::of(1u8..=10),
        0usize..4,
    )
        .prop_map(
            move |(c, trajectory, m, g, a, start, length, intensity, grade, reason)| {
                let start_month: kwm_schemas::Month = "2024-11".parse().expect("valid");
                let start_month = start_month.plus_months(u32::from(start));
                let mut r = record(0, MUNICIPALITIES[m], AgeBand::ALL[a]);
                r.client = Pseudonym(clients[c]);
                r.trajectory = Pseudonym(trajectory);
                r.target_group = GROUPS[g].parse().expect("valid");
                r.start_month = start_month;
                r.end_month = length.map(|n| start_month.plus_months(u32::from(n)));
                r.end_reason = r
                    .end_month
                    .map(|_| EndReason::new([31, 32, 33, 2][reason]).expect("valid"));
                r.intensity = intensity.map(|i| Intensity::new(i).expect("valid"));
                r.satisfaction = grade.map(|g| Satisfaction::new(g).expect("valid"));
                r
            },
        )
}

fn arb_rows() -> impl Strategy<Value = Vec<WireRecord>> {
    proptest::collection::vec(any::<[u8; 32]>(), 1..25)
        .prop_flat_map(|clients| proptest::collection::vec(arb_record(clients), 0..70))
}

fn arb_spec() -> impl Strategy<Value = ExtractSpec> {
    (
        proptest::sample::subsequence(QI_CHOICES.to_vec(), 1..=4),
        any::<bool>(),
        2u32..6,
        1u32..4,
        prop_oneof![
            Just(0u32),
            Just(50_000),
            Just(200_000),
            Just(1_000_000),
            0u32..=1_000_000
        ],
        any::<bool>(),
    )
        .prop_map(|(qis, by_reason, k, l, ppm, with_other)| {
            let (sensitive, other) = if by_reason {
                (C::EndReason, C::Satisfaction)
            } else {
                (C::Satisfaction, C::EndReason)
            };
            ExtractSpec {
                quasi_identifiers: qis,
                sensitive,
                other_columns: if with_other { vec![other] } else { Vec::new() },
                k,
                l,
                max_suppressed: Share::from_ppm(ppm).expect("at most one"),
                risk_threshold: "0.25".parse().expect("valid"),
                client_ids: true,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn every_extract_meets_what_it_states(records in arb_rows(), spec in arb_spec()) {
        let data = rows(records.clone());
        let region = RegionConfig::wbw();
        let (prepared, _) = prepare(&data, &spec, &region).expect("valid request");
        let reference = search::exhaustive(&prepared, &spec);
        let result = run(&data, &spec);
        let e = match result {
            Err(ExtractError::NoSolution { .. }) => {
                prop_assert!(reference.is_none(), "the search missed an anonymous node");
                return Ok(());
            }
            other => other.expect("an extract or no solution"),
        };
        let reference = reference.expect("the exhaustive search finds one too");
        let r = &e.report;
        // The least loss of all nodes, found without evaluating them all.
        let expected = if prepared.max_loss() > 0 {
            reference.loss as f64 / prepared.max_loss() as f64
        } else {
            0.0
        };
        prop_assert_eq!(r.information_loss.value, expected);
        prop_assert_eq!(
            r.generalisation.iter().map(|g| g.level as u8).collect::<Vec<_>>(),
            reference.node.clone()
        );
        prop_assert!(r.search.nodes_evaluated <= r.search.lattice_nodes);
        // Suppression within the share, and every record accounted for.
        prop_assert_eq!(r.records_in, data.len() as u64);
        prop_assert_eq!(r.records_out + r.records_suppressed, r.records_in);
        prop_assert!(r.records_suppressed <= spec.max_suppressed.of(r.records_in));
        prop_assert_eq!(e.len() as u64, r.records_out);
        // Recount the classes from the output itself.
        let cols = e.columns();
        let qi_idx: Vec<usize> = (0..cols.len()).filter(|&i| spec.quasi_identifiers.contains(&cols[i])).collect();
        let s_idx = cols.iter().position(|&c| c == spec.sensitive).expect("sensitive column");
        let mut classes: BTreeMap<Vec<String>, (BTreeSet<u32>, BTreeSet<String>, u64)> = BTreeMap::new();
        for row in e.rows() {
            let key = qi_idx.iter().map(|&i| row.value(i).to_string()).collect();
            let entry = classes.entry(key).or_default();
            entry.0.insert(row.client().expect("ids asked for"));
            entry.1.insert(row.value(s_idx).to_string());
            entry.2 += 1;
        }
        prop_assert_eq!(classes.len() as u64, r.equivalence_classes);
        if !e.is_empty() {
            prop_assert!(r.k >= spec.k && r.l >= spec.l);
            let k = classes.values().map(|c| c.0.len() as u32).min().expect("a class");
            let l = classes.values().map(|c| c.1.len() as u32).min().expect("a class");
            prop_assert_eq!((k, l), (r.k, r.l));
            prop_assert!((r.prosecutor_risk.highest - 1.0 / f64::from(k)).abs() < 1e-12);
            let above: u64 = classes.values().filter(|c| c.0.len() < 4).map(|c| c.2).sum();
            prop_assert_eq!(above, r.prosecutor_risk.records_above_threshold);
        }
        // Ids: 1..=children, one per child.
        let ids: BTreeSet<u32> = e.rows().filter_map(|row| row.client()).collect();
        prop_assert_eq!(ids.len() as u64, r.children_out);
        prop_assert!(ids.iter().copied().eq(1..=r.children_out as u32));
        // No pseudonym (in any spelling the wire uses) and no provider code.
        let text = csv_text(&e);
        prop_assert!(!text.contains(AGB));
        for rec in &records {
            for p in [rec.client, rec.trajectory] {
                let hex = hex::encode(p.0);
                prop_assert!(!text.contains(&hex));
                prop_assert!(!text.to_lowercase().contains(&hex[..16]));
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A node evaluated on the cells rolled up to any node below it gives what the base gives.
    #[test]
    fn roll_ups_evaluate_like_the_base(records in arb_rows(), spec in arb_spec()) {
        let data = rows(records);
        let (p, _) = prepare(&data, &spec, &RegionConfig::wbw()).expect("valid request");
        let lattice = p.lattice();
        let summary = |e: &search::Evaluation| {
            let mut classes: Vec<(u32, u32, u32, bool)> = (0..e.class_records.len())
                .map(|i| (e.class_children[i], e.class_records[i], e.class_distinct[i], e.class_kept[i]))
                .collect();
            classes.sort_unstable();
            (classes, e.suppressed, e.anonymous, e.loss, e.generalisation_loss)
        };
        for low in &lattice {
            let e = p.evaluate(&p.base, low, spec.k, spec.l, spec.max_suppressed);
            let rolled = p.roll_up(&p.base, &e);
            prop_assert!(rolled.cells() <= p.base.cells());
            for high in lattice.iter().filter(|h| low.iter().zip(h.iter()).all(|(a, b)| a <= b)) {
                let direct = p.evaluate(&p.base, high, spec.k, spec.l, spec.max_suppressed);
                let via = p.evaluate(&rolled, high, spec.k, spec.l, spec.max_suppressed);
                prop_assert_eq!(summary(&direct), summary(&via));
            }
        }
    }
}
