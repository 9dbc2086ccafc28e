//! From noisy integers to released figures (post-processing, DESIGN section 7): counts rounded to the
//! publication grid, percentages and means as exact rational quotients in fixed point with one decimal,
//! and the 95% interval of each.
//!
//! No floating point touches a value. The one `f64` computation here is the interval half-width, a
//! function of the public noise scale alone (as in `noise::accuracy`); the interval is then placed around
//! the noisy integer with integer arithmetic.

use std::collections::HashMap;

use kwm_schemas::release::Figure;

use crate::noise::{interval_95, Scale};

/// Confidence of one noisy component of a figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Level {
    /// A count on its own.
    P95,
    /// One of the two independent components of a percentage or mean: 0.975^2 >= 0.95, so the box of
    /// the two intervals holds the true pair with at least 95% probability, and the quotient's interval
    /// with it.
    P975,
}

impl Level {
    fn alpha(self) -> f64 {
        match self {
            Level::P95 => 0.05,
            Level::P975 => 0.025,
        }
    }
}

/// Interval half-widths, computed once per (scale, number of summed draws, level) of a release.
#[derive(Debug, Default)]
pub(crate) struct Widths {
    cache: HashMap<(u64, u64, u32, Level), u64>,
}

impl Widths {
    pub fn get(&mut self, scale: Scale, terms: u32, level: Level) -> u64 {
        *self
            .cache
            .entry((scale.num, scale.den, terms, level))
            .or_insert_with(|| half_width(scale, terms, level))
    }
}

/// The smallest w (or a slightly larger one, for sums) with P(|X_1 + ... + X_n| > w) <= alpha for `terms`
/// independent discrete Laplace draws at `scale`. A total row is a sum of noisy rows, hence `terms`.
pub(crate) fn half_width(scale: Scale, terms: u32, level: Level) -> u64 {
    match (terms, level) {
        (0, _) => 0,
        // The noise module's own definition, so that a count reads the same everywhere.
        (1, Level::P95) => interval_95(scale),
        (1, level) => single(scale, level.alpha()),
        (n, level) => {
            let alpha = level.alpha();
            // Three valid upper bounds; the smallest wins. Union: each term within its alpha/n
            // interval (tight for few terms at small scales). Chernoff (tight at tiny scales). The
            // continuous sum plus the rounding margin (tight at large scales, the case that matters).
            let union = u64::from(n).saturating_mul(single(scale, alpha / f64::from(n)));
            union
                .min(chernoff(scale, n, alpha))
                .min(continuous(scale, n, alpha))
        }
    }
}

/// Discrete Laplace with p = exp(-1/b) is floor(E1) - floor(E2) for E1, E2 exponential with mean b, so
/// a sum S of n draws differs from the matching sum C of n continuous Laplace(b) draws by less than n:
/// |S| >= w + 1 implies |C| > w + 1 - n. So P(|S| > w) <= alpha for w = ceil(b x) + n - 1, where x
/// solves P(|L_1 + ... + L_n| > x) = alpha for standard Laplace L_i. That tail is closed form: with L = G1 - G2, G ~ Gamma(n, 1),
/// P(L_1 + ... + L_n > x) = e^-x sum_{i<n} sum_{l<=i} x^(i-l) (n)(n+1)..(n-1+l) / (l! (i-l)! 2^(n+l)).
fn continuous(scale: Scale, n: u32, alpha: f64) -> u64 {
    let b = scale.num as f64 / scale.den as f64;
    let n_us = n as usize;
    // ln k! for k < 2n, and ln of the rising product n (n+1) .. (n-1+l).
    let mut ln_fact = vec![0.0f64; 2 * n_us + 1];
    for k in 1..ln_fact.len() {
        ln_fact[k] = ln_fact[k - 1] + (k as f64).ln();
    }
    let ln_rising = |l: usize| ln_fact[n_us - 1 + l] - ln_fact[n_us - 1];
    let upper_tail = |x: f64| -> f64 {
        let lnx = x.ln();
        let mut total = 0.0;
        for i in 0..n_us {
            for l in 0..=i {
                let power = if i == l { 0.0 } else { (i - l) as f64 * lnx };
                let ln_term = power + ln_rising(l)
                    - ln_fact[l]
                    - ln_fact[i - l]
                    - (n_us + l) as f64 * std::f64::consts::LN_2
                    - x;
                total += ln_term.exp();
            }
        }
        total
    };
    // Two-sided: P(|sum| > x) = 2 P(sum > x), decreasing in x. Bisect on x.
    let ok = |x: f64| 2.0 * upper_tail(x) <= alpha;
    let mut hi = 1.0f64;
    while !ok(hi) {
        hi *= 2.0;
        if hi > 1e12 {
            return u64::MAX;
        }
    }
    let mut lo = 0.0f64;
    for _ in 0..100 {
        let mid = (lo + hi) / 2.0;
        if ok(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    let w = (b * hi).ceil();
    if w >= u64::MAX as f64 / 2.0 {
        return u64::MAX;
    }
    (w as u64).saturating_add(u64::from(n) - 1)
}

/// Exact for one draw: P(|X| > w) = 2 p^(w+1) / (1 + p) with p = exp(-1/b), so the smallest w is
/// ceil(b (ln(2/alpha) - ln(1 + p))) - 1.
fn single(scale: Scale, alpha: f64) -> u64 {
    let q = scale.den as f64 / scale.num as f64;
    let p = (-q).exp();
    let needed = ((2.0 / alpha).ln() - p.ln_1p()) / q;
    (needed.ceil() as u64).saturating_sub(1)
}

/// Chernoff bound for a sum of n draws: P(S >= w + 1) <= min over 0 < t < 1/b of M(t)^n e^(-t (w+1)),
/// with M(t) = (1 - p)^2 / ((1 - p e^t)(1 - p e^-t)) the moment generating function of one draw; the
/// smallest w whose two-sided bound is at most alpha.
fn chernoff(scale: Scale, n: u32, alpha: f64) -> u64 {
    let q = scale.den as f64 / scale.num as f64;
    let n = f64::from(n);
    // 1 - p e^x computed as -expm1(x - q) to keep precision when p is close to 1.
    let log_mgf = |t: f64| {
        let one_minus_p = -(-q).exp_m1();
        2.0 * one_minus_p.ln() - (-(t - q).exp_m1()).ln() - (-(-t - q).exp_m1()).ln()
    };
    let log_tail = |w: u64| {
        let target = |t: f64| n * log_mgf(t) - t * (w as f64 + 1.0);
        // The exponent is convex in t: golden-section search on (0, q).
        let (mut lo, mut hi) = (0.0, q * (1.0 - 1e-12));
        let g = (5f64.sqrt() - 1.0) / 2.0;
        for _ in 0..200 {
            let a = hi - g * (hi - lo);
            let b = lo + g * (hi - lo);
            if target(a) <= target(b) {
                hi = b;
            } else {
                lo = a;
            }
        }
        target((lo + hi) / 2.0).min(0.0)
    };
    let ok = |w: u64| std::f64::consts::LN_2 + log_tail(w) <= alpha.ln();
    let mut hi = 1u64;
    while !ok(hi) {
        if hi >= 1 << 62 {
            return u64::MAX;
        }
        hi *= 2;
    }
    let mut lo = 0u64;
    if ok(lo) {
        return 0;
    }
    // ok(hi) and !ok(lo): bisect to the smallest w that is ok.
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if ok(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    hi
}

/// A published figure with its interval and, for percentages and means, the noisy count behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Released {
    pub value: Figure,
    pub low: Figure,
    pub high: Figure,
    pub count: Option<u64>,
}

fn div_floor(n: i128, d: i128) -> i128 {
    n.div_euclid(d)
}

fn div_ceil(n: i128, d: i128) -> i128 {
    -(-n).div_euclid(d)
}

/// Rounded to the nearest integer, halves up.
fn div_round(n: i128, d: i128) -> i128 {
    (2 * n + d).div_euclid(2 * d)
}

fn to_i64(v: i128) -> i64 {
    i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX })
}

/// A count after noise: never below zero, rounded to the nearest multiple of `rounding`; its interval
/// `noisy ± half` rounded outward to the same grid.
pub(crate) fn count(noisy: i64, half: u64, rounding: u64) -> Released {
    let g = i128::from(rounding.max(1));
    let v = i128::from(noisy);
    let h = i128::from(half);
    let value = div_round(v.max(0), g) * g;
    let low = div_floor((v - h).max(0), g) * g;
    let high = div_ceil((v + h).max(0), g) * g;
    Released {
        value: Figure::Whole(to_i64(value)),
        low: Figure::Whole(to_i64(low)),
        high: Figure::Whole(to_i64(high)),
        count: None,
    }
}

/// The rounded noisy count a percentage or mean is taken over.
fn rounded(noisy: i128, rounding: u64) -> u64 {
    let g = i128::from(rounding.max(1));
    u64::try_from(div_round(noisy.max(0), g) * g).unwrap_or(u64::MAX)
}

/// A percentage a / (a + b) in tenths of a percent, from the noisy part `a` and the noisy rest `b`
/// (independent draws). Negative noisy counts count as zero. When both are zero the noise has swamped
/// the cell: the value is the midpoint, 50.0, and the interval the whole range.
pub(crate) fn share(a: i64, half_a: u64, b: i64, half_b: u64, rounding: u64) -> Released {
    let (a, b) = (i128::from(a), i128::from(b));
    let (ha, hb) = (i128::from(half_a), i128::from(half_b));
    let (ap, bp) = (a.max(0), b.max(0));
    let value = if ap + bp == 0 {
        500
    } else {
        div_round(1000 * ap, ap + bp)
    };
    // a / (a + b) grows with a and shrinks with b: the extremes sit at opposite corners of the box.
    let (a_lo, a_hi) = ((a - ha).max(0), (a + ha).max(0));
    let (b_lo, b_hi) = ((b - hb).max(0), (b + hb).max(0));
    let low = if a_lo + b_hi == 0 {
        0
    } else {
        div_floor(1000 * a_lo, a_lo + b_hi)
    };
    let high = if a_hi + b_lo == 0 {
        1000
    } else {
        div_ceil(1000 * a_hi, a_hi + b_lo)
    };
    Released {
        value: Figure::Tenths(to_i64(value)),
        low: Figure::Tenths(to_i64(low)),
        high: Figure::Tenths(to_i64(high)),
        count: Some(rounded(ap + bp, rounding)),
    }
}

/// A mean sum / count in tenths, where `tenths_per_unit` turns the sum's unit into tenths (10 for grades,
/// 1 for a sum already in tenths), clamped to `bounds` (in tenths). A count swamped to zero gives the
/// midpoint of the bounds and the whole range as interval.
pub(crate) fn mean(
    sum: i64,
    half_sum: u64,
    n: i64,
    half_n: u64,
    tenths_per_unit: i64,
    bounds: (i64, i64),
    rounding: u64,
) -> Released {
    let (s, c) = (i128::from(sum), i128::from(n));
    let (hs, hc) = (i128::from(half_sum), i128::from(half_n));
    let (lower, upper) = (i128::from(bounds.0), i128::from(bounds.1));
    let unit = i128::from(tenths_per_unit);
    let clamp = |v: i128| v.clamp(lower, upper);
    let cp = c.max(0);
    let value = if cp == 0 {
        div_floor(lower + upper, 2)
    } else {
        clamp(div_round(unit * s, cp))
    };
    // Sums of values >= 0 and counts are >= 0 in truth.
    let (s_lo, s_hi) = ((s - hs).max(0), (s + hs).max(0));
    let (c_lo, c_hi) = ((c - hc).max(0), (c + hc).max(0));
    // A swamped count has no usable quotient at all: the whole range, around the midpoint.
    let low = if c_hi == 0 || cp == 0 {
        lower
    } else {
        clamp(div_floor(unit * s_lo, c_hi))
    };
    let high = if c_lo == 0 || cp == 0 {
        upper
    } else {
        clamp(div_ceil(unit * s_hi, c_lo))
    };
    Released {
        value: Figure::Tenths(to_i64(value)),
        low: Figure::Tenths(to_i64(low)),
        high: Figure::Tenths(to_i64(high)),
        count: Some(rounded(cp, rounding)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(v: i64) -> Figure {
        Figure::Tenths(v)
    }
    fn w(v: i64) -> Figure {
        Figure::Whole(v)
    }

    #[test]
    fn single_draw_widths_by_hand() {
        // b = 1: p = e^-1; P(|X| > 3) = 2e^-4/(1 + e^-1) = 0.0268, P(|X| > 2) = 0.0728.
        let one = Scale { num: 1, den: 1 };
        assert_eq!(half_width(one, 1, Level::P95), 3);
        // At 97.5%: P(|X| > 4) = 2e^-5/1.368 = 0.0099 <= 0.025 < P(|X| > 3).
        assert_eq!(half_width(one, 1, Level::P975), 4);
        // b = 10: P(|X| > 30) = 2e^-3.1/(1 + e^-0.1) = 0.0473, P(|X| > 29) = 0.0523.
        assert_eq!(half_width(Scale { num: 10, den: 1 }, 1, Level::P95), 30);
        // Tiny scales have all mass at zero.
        assert_eq!(half_width(Scale { num: 1, den: 1000 }, 1, Level::P975), 0);
        assert_eq!(half_width(Scale { num: 1, den: 1000 }, 16, Level::P95), 0);
    }

    /// The distribution of X_1 + ... + X_n by convolving the probability mass function (tails cut
    /// where they hold less than e^-60), as (offset, probabilities).
    fn sum_distribution(scale: Scale, n: u32) -> (i64, Vec<f64>) {
        let q = scale.den as f64 / scale.num as f64;
        let p = (-q).exp();
        let support = (60.0 / q).ceil() as i64;
        let one: Vec<f64> = (-support..=support)
            .map(|x| (1.0 - p) / (1.0 + p) * p.powi(x.unsigned_abs() as i32))
            .collect();
        let mut dist = vec![1.0];
        for _ in 0..n {
            let mut next = vec![0.0; dist.len() + one.len() - 1];
            for (i, a) in dist.iter().enumerate() {
                for (j, b) in one.iter().enumerate() {
                    next[i + j] += a * b;
                }
            }
            dist = next;
        }
        ((dist.len() / 2) as i64, dist)
    }

    fn tail(dist: &(i64, Vec<f64>), w: i64) -> f64 {
        dist.1
            .iter()
            .enumerate()
            .filter(|(i, _)| (*i as i64 - dist.0).abs() > w)
            .map(|(_, p)| p)
            .sum()
    }

    #[test]
    fn sum_widths_cover_and_are_not_absurd() {
        for (num, den) in [(1, 1), (3, 1), (7, 2), (10, 1)] {
            let scale = Scale { num, den };
            for n in [2, 3, 4, 8] {
                let dist = sum_distribution(scale, n);
                for level in [Level::P95, Level::P975] {
                    let h = half_width(scale, n, level);
                    let covered = tail(&dist, h as i64);
                    assert!(
                        covered <= level.alpha(),
                        "{scale:?} n={n}: w={h} tail={covered}"
                    );
                    // Within 1.2 times the exact smallest width plus the rounding margin: conservative, not useless.
                    let exact = (0..)
                        .find(|w| tail(&dist, *w) <= level.alpha())
                        .expect("finite");
                    assert!(
                        h as f64 <= 1.2 * exact as f64 + f64::from(n),
                        "{scale:?} n={n}: {h} vs exact {exact}"
                    );
                }
            }
        }
    }

    #[test]
    fn counts_round_to_the_grid_and_their_interval_outward() {
        assert_eq!(
            count(7, 0, 5),
            Released {
                value: w(5),
                low: w(5),
                high: w(10),
                count: None
            }
        );
        assert_eq!(
            count(8, 3, 5),
            Released {
                value: w(10),
                low: w(5),
                high: w(15),
                count: None
            }
        );
        assert_eq!(
            count(-4, 3, 5),
            Released {
                value: w(0),
                low: w(0),
                high: w(0),
                count: None
            }
        );
        assert_eq!(
            count(-2, 3, 5),
            Released {
                value: w(0),
                low: w(0),
                high: w(5),
                count: None
            }
        );
        assert_eq!(
            count(12, 2, 1),
            Released {
                value: w(12),
                low: w(10),
                high: w(14),
                count: None
            }
        );
        // Ties round up: 2.5 -> 5 at grid 5 (12.5 is not an integer, so test 5/10 at grid 10).
        assert_eq!(count(5, 0, 10).value, w(10));
    }

    #[test]
    fn shares_by_hand() {
        // 2 of 3: 66.666..% -> 66.7, exact interval [66.6, 66.7] without noise.
        assert_eq!(
            share(2, 0, 1, 0, 5),
            Released {
                value: t(667),
                low: t(666),
                high: t(667),
                count: Some(5)
            }
        );
        // a = 10 +- 2, b = 10 +- 3: low 8/(8+13) = 38.09 -> 38.0; high 12/(12+7) = 63.15 -> 63.2.
        assert_eq!(
            share(10, 2, 10, 3, 1),
            Released {
                value: t(500),
                low: t(380),
                high: t(632),
                count: Some(20)
            }
        );
        // Swamped by noise: midpoint and full range.
        assert_eq!(
            share(-3, 4, 0, 4, 5),
            Released {
                value: t(500),
                low: t(0),
                high: t(1000),
                count: Some(0)
            }
        );
    }

    #[test]
    fn means_by_hand() {
        // Grades 7 + 8 + 9 = 24 over 3: 8.0.
        assert_eq!(
            mean(24, 0, 3, 0, 10, (10, 100), 5),
            Released {
                value: t(80),
                low: t(80),
                high: t(80),
                count: Some(5)
            }
        );
        // 25 / 3 = 8.333 -> 8.3, interval [8.3, 8.4].
        assert_eq!(mean(25, 0, 3, 0, 10, (10, 100), 1).low, t(83));
        assert_eq!(mean(25, 0, 3, 0, 10, (10, 100), 1).high, t(84));
        // Noise pushing the mean out of 1..10 is clamped.
        assert_eq!(mean(200, 0, 3, 0, 10, (10, 100), 1).value, t(100));
        // A count swamped to zero: midpoint 5.5 and the whole range.
        assert_eq!(
            mean(20, 5, -1, 2, 10, (10, 100), 1),
            Released {
                value: t(55),
                low: t(10),
                high: t(100),
                count: Some(0)
            }
        );
        // Goals in tenths of a percent: (1000 + 500 + 667) / 3 = 722.33 -> 72.2.
        assert_eq!(mean(2167, 0, 3, 0, 1, (0, 1000), 1).value, t(722));
    }

    proptest! {
        /// Whatever the noise did, the value lies within its interval and within the bounds.
        #[test]
        fn values_lie_in_their_intervals(a in -50i64..200, b in -50i64..200, ha in 0u64..60, hb in 0u64..60, g in 1u64..10) {
            for r in [share(a, ha, b, hb, g), mean(a * 7, ha * 10, b, hb, 10, (10, 100), g), count(a, ha, g)] {
                prop_assert!(r.low.tenths() <= r.value.tenths() && r.value.tenths() <= r.high.tenths(), "{r:?}");
            }
            let s = share(a, ha, b, hb, g);
            prop_assert!(s.low.tenths() >= 0 && s.high.tenths() <= 1000);
        }
    }
}
