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
