//! Derived measures of one trajectory for one period (DESIGN section 5): which volumes it counts in and
//! the value of every outcome criterion, computed once per trajectory before bounding and aggregation.
//!
//! The outcome criteria describe trajectories that ended in the period. Herhaald beroep looks across
//! providers and municipalities by the stored client pseudonym ([`is_repeat`], over the client's rows).

use kwm_schemas::codes::EndReason;
use kwm_schemas::{Month, Period, RegionConfig};

use super::rows::EngineRow;

/// How a trajectory ended, as the end histogram counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EndClass {
    /// 31: ended according to plan.
    Plan,
    /// 32: ended early by the client (uitval).
    DropOut,
    /// 33..35: ended early for another reason that still says something about the outcome.
    Other,
    /// 02, 20, 36..39: closed for administrative reasons; says nothing about the outcome.
    Administrative,
}

impl EndClass {
    /// An ended trajectory without a reason cannot pass ingest; should one appear anyway it is treated
    /// as administrative, so that it stays out of every outcome denominator instead of skewing one.
    pub(crate) fn of(reason: Option<EndReason>) -> Self {
        match reason {
            Some(r) if r == EndReason::ACCORDING_TO_PLAN => Self::Plan,
            Some(r) if r == EndReason::EARLY_BY_CLIENT => Self::DropOut,
            Some(r) if !r.is_administrative() => Self::Other,
            _ => Self::Administrative,
        }
    }
}

/// What one trajectory that was in care during the period contributes. `None` means: not in that
/// criterion's denominator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Measures {
    /// gestart: started in the period.
    pub started: bool,
    /// beeindigd: ended in the period, and how.
    pub ended: Option<EndClass>,
    /// zonder_hulp: carry on without help, yes or no (unknown is left out). Ended trajectories only.
    pub without_help: Option<bool>,
    /// herhaald_beroep: a new trajectory of the same client started within the window. Only for ended,
    /// non-administrative trajectories, and only when the window has passed.
    pub repeat: Option<bool>,
    /// probleemafname: reliable change index at most -1.96. Ended trajectories with both T-scores.
    pub improved: Option<bool>,
    /// tevredenheid: the grade 1..10. Ended trajectories.
    pub grade: Option<u8>,
    /// doelrealisatie: goals achieved / agreed in tenths of a percent, 0..=1000. Ended trajectories
    /// with goals agreed.
    pub goal_tenths: Option<u16>,
}

/// An instrument's reliability r as the exact rational the region file wrote it as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reliability {
    num: u128,
    den: u128,
}

impl Reliability {
    /// The configured `f64` is turned back into the decimal it was written as (Rust prints the shortest
    /// decimal that reads back as the same `f64`, so `0.9` gives 9/10, not the binary approximation).
    /// `None` for anything outside [0, 1) or with more than 18 decimals.
    pub fn from_config(r: f64) -> Option<Self> {
        if !(0.0..1.0).contains(&r) {
            return None;
        }
        let text = format!("{r}");
        let (int, frac) = text.split_once('.').unwrap_or((&text, ""));
        if int != "0" || frac.len() > 18 || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let den = 10u128.pow(frac.len() as u32);
        let num = if frac.is_empty() {
            0
        } else {
            frac.parse().ok()?
        };
        Some(Self { num, den })
    }

    /// Reliable change index (post - pre) / (10 sqrt(2 (1 - r))) <= -1.96, decided in integers:
    /// it holds iff pre - post > 0 and (pre - post)^2 >= 1.96^2 * 10^2 * 2 (1 - r) = 768.32 (1 - r),
    /// that is 100 (pre - post)^2 den >= 76832 (den - num) for r = num / den.
    pub fn improved(self, pre: u8, post: u8) -> bool {
        if post >= pre {
            return false;
        }
        let d = u128::from(pre - post);
        100 * d * d * self.den >= 76_832 * (self.den - self.num)
    }
}

/// Derives [`Measures`] for one period.
#[derive(Debug)]
pub(crate) struct Deriver {
    first: i32,
    last: i32,
    window: i32,
    repeat_final: bool,
}

impl Deriver {
    pub fn new(region: &RegionConfig, period: Period, as_of: Month) -> Self {
        let window = i32::try_from(region.policy.herhaald_beroep_window_months).unwrap_or(i32::MAX);
        let last = period.last_month().index();
        Self {
            first: period.first_month().index(),
            last,
            window,
            // Every trajectory ended in the period ended by its last month, so the whole period is final
            // exactly when the window after that month closed before the month the data were read in.
            repeat_final: last.saturating_add(window) < as_of.index(),
        }
    }

    /// Whether herhaald beroep can be released for this period.
    pub fn repeat_final(&self) -> bool {
        self.repeat_final
    }

    /// The months in which a start counts as a repeat of some trajectory ended in the period:
    /// from the first month of the period to `window` months after its last.
    pub fn repeat_start_range(&self) -> (i32, i32) {
        (self.first, self.last.saturating_add(self.window))
    }

    pub fn window(&self) -> i32 {
        self.window
    }

    /// The months a release of the period reads: the period and the window after it.
    pub fn reads(&self, row: &EngineRow) -> bool {
        row.overlaps(self.first, self.last.saturating_add(self.window))
    }

    /// in_zorg: started no later than the period's last month and not ended before its first.
    pub fn active(&self, row: &EngineRow) -> bool {
        row.overlaps(self.first, self.last)
    }

    /// The measures of a trajectory that is active in the period. `repeat` is asked only for an ended,
    /// non-administrative trajectory of a final period.
    pub fn derive(&self, row: &EngineRow, repeat: impl FnOnce() -> bool) -> Measures {
        let in_period = |m: i32| (self.first..=self.last).contains(&m);
        let mut out = Measures {
            started: in_period(row.start),
            ..Measures::default()
        };
        if !in_period(row.end) {
            return out;
        }
        // An ended row without its class cannot be built (`EngineRow::new`); administrative is the
        // class that stays out of every outcome denominator.
        let class = row.end_class.unwrap_or(EndClass::Administrative);
        out.ended = Some(class);
        out.without_help = row.without_help;
        // An administrative ending usually closes a trajectory that carries on under another code; its
        // "repeat" would be that continuation, not a new call on care.
        if self.repeat_final && class != EndClass::Administrative {
            out.repeat = Some(repeat());
        }
        out.improved = row.improved;
        out.grade = row.grade;
        out.goal_tenths = row.goal_tenths;
        out
    }
}

/// Herhaald beroep: whether a trajectory of the same client (another one) that starts in month
/// `start` makes a repeat of one that ended in month `end`: it starts within `end ..= end + window`.
/// `range` is [`Deriver::repeat_start_range`] (implied for an end in the period; kept as a bound).
pub(crate) fn is_repeat(end: i32, window: i32, start: i32, range: (i32, i32)) -> bool {
    (range.0..=range.1).contains(&start) && (end..=end.saturating_add(window)).contains(&start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reliability_is_the_decimal_of_the_config() {
        assert_eq!(
            Reliability::from_config(0.9),
            Some(Reliability { num: 9, den: 10 })
        );
        assert_eq!(
            Reliability::from_config(0.85),
            Some(Reliability { num: 85, den: 100 })
        );
        assert_eq!(
            Reliability::from_config(0.0),
            Some(Reliability { num: 0, den: 1 })
        );
        assert_eq!(Reliability::from_config(1.0), None);
        assert_eq!(Reliability::from_config(-0.1), None);
    }

    #[test]
    fn rci_thresholds() {
        // r = 0.9: 768.32 * 0.1 = 76.832, so a drop of 9 (81) is reliable and 8 (64) is not.
        let r = Reliability { num: 9, den: 10 };
        assert!(r.improved(68, 59));
        assert!(!r.improved(68, 60));
        assert!(!r.improved(60, 68));
        assert!(!r.improved(60, 60));
        // r = 0.8: 768.32 * 0.2 = 153.664: 13 (169) yes, 12 (144) no.
        let r = Reliability { num: 8, den: 10 };
        assert!(r.improved(70, 57));
        assert!(!r.improved(70, 58));
        // r = 0.85: 768.32 * 0.15 = 115.248: 11 (121) yes, 10 (100) no.
        let r = Reliability::from_config(0.85).expect("valid");
        assert!(r.improved(70, 59));
        assert!(!r.improved(70, 60));
    }

    #[test]
    fn rci_agrees_with_the_formula_in_floating_point_away_from_ties() {
        for r in [0.0, 0.5, 0.8, 0.85, 0.9, 0.95, 0.99] {
            let exact = Reliability::from_config(r).expect("valid");
            for pre in 20u8..=100 {
                for post in 20u8..=100 {
                    let rci =
                        (f64::from(post) - f64::from(pre)) / (10.0 * (2.0 * (1.0 - r)).sqrt());
                    if (rci + 1.96).abs() > 1e-9 {
                        assert_eq!(
                            exact.improved(pre, post),
                            rci <= -1.96,
                            "r={r} {pre}->{post}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_repeat_starts_in_the_window_after_the_end() {
        let range = (100, 120);
        assert!(is_repeat(100, 6, 106, range), "the window's last month");
        assert!(
            !is_repeat(100, 5, 106, range),
            "one month past a shorter window"
        );
        assert!(
            is_repeat(100, 6, 100, range),
            "a start in the end month counts"
        );
        assert!(
            !is_repeat(102, 6, 101, range),
            "a start before the end does not count"
        );
        assert!(
            !is_repeat(118, 6, 121, range),
            "outside the months a release reads"
        );
    }
}
