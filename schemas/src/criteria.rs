//! The catalogue of outcome criteria: the national harmonised set (NJi/VNG 2016) plus the volume counts
//! the regional dashboards show. Codes, labels, bounds and direction live here so that the release engine,
//! the API and every download describe a figure the same way.

use serde::{Deserialize, Serialize};

use schemars::JsonSchema;

/// How a criterion is released.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CriterionKind {
    /// Share of a denominator, 0..100 %.
    Percentage,
    /// Mean of a clamped per-trajectory value.
    Mean,
    /// A count of trajectories.
    Count,
}

/// Which way is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    HigherIsBetter,
    LowerIsBetter,
    Neutral,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Criterion {
    pub code: String,
    /// Number in the national set, where it has one (3.1 .. 3.4).
    pub national_number: Option<String>,
    pub label_nl: String,
    pub label_en: String,
    pub kind: CriterionKind,
    /// Bounds of the released value (and of the per-trajectory value a mean is taken of).
    pub lower: i64,
    pub upper: i64,
    pub direction: Direction,
    /// What the figure is a share or mean of, in words.
    pub denominator_nl: String,
}

#[allow(clippy::too_many_arguments)]
fn criterion(
    code: &str,
    national_number: Option<&str>,
    label_nl: &str,
    label_en: &str,
    kind: CriterionKind,
    (lower, upper): (i64, i64),
    direction: Direction,
    denominator_nl: &str,
) -> Criterion {
    Criterion {
        code: code.into(),
        national_number: national_number.map(Into::into),
        label_nl: label_nl.into(),
        label_en: label_en.into(),
        kind,
        lower,
        upper,
        direction,
        denominator_nl: denominator_nl.into(),
    }
}

/// The catalogue, in the order releases show it.
pub fn catalogue() -> Vec<Criterion> {
    use CriterionKind::*;
    use Direction::*;
    vec![
        criterion(
            "volgens_plan",
            None,
            "Beëindiging volgens plan",
            "Ended according to plan",
            Percentage,
            (0, 100),
            HigherIsBetter,
            "beëindigde trajecten (zonder administratieve redenen)",
        ),
        criterion(
            "uitval",
            None,
            "Uitval",
            "Drop-out",
            Percentage,
            (0, 100),
            LowerIsBetter,
            "beëindigde trajecten (zonder administratieve redenen)",
        ),
        criterion(
            "tevredenheid",
            None,
            "Cliënttevredenheid",
            "Client satisfaction",
            Mean,
            (1, 10),
            HigherIsBetter,
            "trajecten met een rapportcijfer",
        ),
        criterion(
            "zonder_hulp",
            Some("3.1"),
            "Verder zonder hulp",
            "Carries on without help",
            Percentage,
            (0, 100),
            HigherIsBetter,
            "beëindigde trajecten waarvan het bekend is",
        ),
        criterion(
            "herhaald_beroep",
            Some("3.2"),
            "Herhaald beroep",
            "Repeated call on care",
            Percentage,
            (0, 100),
            LowerIsBetter,
            "beëindigde trajecten waarvan de termijn verstreken is",
        ),
        criterion(
            "probleemafname",
            Some("3.3"),
            "Problemen afgenomen",
            "Problems reduced",
            Percentage,
            (0, 100),
            HigherIsBetter,
            "trajecten met een voor- en nameting",
        ),
        criterion(
            "doelrealisatie",
            Some("3.4"),
            "Doelen behaald",
            "Goals achieved",
            Mean,
            (0, 100),
            HigherIsBetter,
            "trajecten met afgesproken doelen",
        ),
        criterion(
            "in_zorg",
            None,
            "In zorg",
            "In care",
            Count,
            (0, i64::MAX),
            Neutral,
            "trajecten actief in de periode",
        ),
        criterion(
            "gestart",
            None,
            "Gestart",
            "Started",
            Count,
            (0, i64::MAX),
            Neutral,
            "trajecten gestart in de periode",
        ),
        criterion(
            "beeindigd",
            None,
            "Beëindigd",
            "Ended",
            Count,
            (0, i64::MAX),
            Neutral,
            "trajecten beëindigd in de periode",
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_bounds_ordered() {
        let c = catalogue();
        let mut codes: Vec<&str> = c.iter().map(|c| c.code.as_str()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), c.len());
        assert!(c.iter().all(|c| c.lower < c.upper));
    }
}
