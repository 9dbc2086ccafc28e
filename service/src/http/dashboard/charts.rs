//! Charts as SVG, drawn on the server from released figures: an interval chart (a point and its 95%
//! interval beside the region's value), a trend over periods, a heat map and the privacy budget.
//!
//! Every chart is an image with a title and a description for screen readers, and the same figures
//! stand in a table beside it; no chart relies on colour alone (the region is a diamond, the
//! municipality a dot; held-back cells say so in words); the colours are the Okabe–Ito set and a
//! single-hue ramp, which read the same with any form of colour blindness. Geometry is computed in
//! floating point; every number shown is the released figure's own text.

use maud::{html, Markup};

use crate::http::dashboard::i18n::Lang;

/// Okabe–Ito blue: the reader's own figures.
pub const OWN: &str = "#0072B2";
/// Okabe–Ito vermillion: the region's (benchmark) figures.
pub const BENCHMARK: &str = "#D55E00";
const GRID: &str = "#c8c8c8";
const INK: &str = "#1a1a1a";
const MUTED: &str = "#595959";

/// A released figure for drawing: its value and interval in tenths, and its text as shown.
#[derive(Debug, Clone)]
pub struct Point {
    pub tenths: i64,
    pub low: Option<i64>,
    pub high: Option<i64>,
    pub text: String,
}

/// One row of an interval chart: a criterion (or a target group), the reader's figure, the
/// benchmark's, and the scale of the criterion (in tenths).
#[derive(Debug, Clone)]
pub struct IntervalRow {
    pub label: String,
    pub own: Result<Point, String>,
    pub benchmark: Option<Point>,
    pub lower: i64,
    pub upper: i64,
}

fn f(v: f64) -> String {
    format!("{v:.1}")
}

/// The accessible frame of a chart: `role="img"`, named by its title and described.
fn frame(
    id: &str,
    class: &str,
    width: u32,
    height: u32,
    title: &str,
    desc: &str,
    body: Markup,
) -> Markup {
    let title_id = format!("{id}-t");
    let desc_id = format!("{id}-d");
    html! {
        svg class=(class) xmlns="http://www.w3.org/2000/svg" viewBox={"0 0 " (width) " " (height)}
            role="img" aria-labelledby={(title_id) " " (desc_id)} {
            title id=(title_id) { (title) }
            desc id=(desc_id) { (desc) }
            (body)
        }
    }
}

/// Points with their 95% intervals, one row each, the benchmark as a diamond on the same row.
pub fn interval_chart(
    lang: Lang,
    id: &str,
    title: &str,
    own_name: &str,
    benchmark_name: &str,
    rows: &[IntervalRow],
) -> Markup {
    const LEFT: f64 = 230.0;
    const RIGHT: f64 = 700.0;
    const ROW: f64 = 34.0;
    const TOP: f64 = 34.0;
    let width = 760u32;
    let height = (TOP + ROW * rows.len() as f64 + 10.0) as u32;
    let x = |v: i64, r: &IntervalRow| {
        let span = (r.upper - r.lower).max(1) as f64;
        LEFT + (RIGHT - LEFT) * ((v - r.lower) as f64 / span).clamp(0.0, 1.0)
    };
    let desc = format!(
        "{} {} ({}) {} {} ({}). {}",
        lang.t("Per regel het cijfer van", "Per row the figure of"),
        own_name,
        lang.t("stip met 95%-interval", "dot with 95% interval"),
        lang.t("naast dat van", "beside that of"),
        benchmark_name,
        lang.t("ruit", "diamond"),
        lang.t(
            "De tabel bij de grafiek geeft dezelfde cijfers.",
            "The table with the chart gives the same figures."
        ),
    );
    let body = html! {
        // Legend.
        circle cx="10" cy="14" r="6" fill=(OWN) {}
        text x="22" y="19" font-size="13" fill=(INK) { (own_name) }
        path d=(format!("M {} 8 l 6 6 l -6 6 l -6 -6 z", 260)) fill=(BENCHMARK) {}
        text x="272" y="19" font-size="13" fill=(INK) { (benchmark_name) }
        @for (i, r) in rows.iter().enumerate() {
            @let y = TOP + ROW * i as f64 + ROW / 2.0;
            text x="0" y=(f(y + 4.0)) font-size="13" fill=(INK) { (r.label) }
            line x1=(f(LEFT)) x2=(f(RIGHT)) y1=(f(y)) y2=(f(y)) stroke=(GRID) stroke-width="1" {}
            @for q in 0..=4i64 {
                @let gx = LEFT + (RIGHT - LEFT) * q as f64 / 4.0;
                line x1=(f(gx)) x2=(f(gx)) y1=(f(y - 8.0)) y2=(f(y + 8.0)) stroke=(GRID) {}
            }
            text x=(f(LEFT - 6.0)) y=(f(y + 4.0)) font-size="10" fill=(MUTED) text-anchor="end" { (r.lower / 10) }
            text x=(f(RIGHT + 6.0)) y=(f(y + 4.0)) font-size="10" fill=(MUTED) { (r.upper / 10) }
            @match &r.own {
                Ok(p) => {
                    @if let (Some(lo), Some(hi)) = (p.low, p.high) {
                        line x1=(f(x(lo, r))) x2=(f(x(hi, r))) y1=(f(y)) y2=(f(y)) stroke=(OWN) stroke-width="3" stroke-linecap="round" {}
                    }
                    circle cx=(f(x(p.tenths, r))) cy=(f(y)) r="6" fill=(OWN) {}
                }
                Err(reason) => {
                    text x=(f((LEFT + RIGHT) / 2.0)) y=(f(y - 5.0)) font-size="11" fill=(MUTED) text-anchor="middle" font-style="italic" { (reason) }
                }
            }
            @if let Some(b) = &r.benchmark {
                @let bx = x(b.tenths, r);
                path d=(format!("M {} {} l 6 6 l -6 6 l -6 -6 z", f(bx), f(y - 6.0))) fill=(BENCHMARK) {}
            }
        }
    };
    frame(id, "chart", width, height, title, &desc, body)
}

/// One period of a trend: its label, the reader's figure (if published) and the benchmark's.
#[derive(Debug, Clone)]
pub struct TrendPoint {
    pub period: String,
    pub own: Option<Point>,
    pub benchmark: Option<Point>,
}

/// A criterion over the published periods: the reader's figures with their intervals as a solid line,
/// the benchmark's as a dashed one.
#[allow(clippy::too_many_arguments)]
pub fn trend_chart(
    lang: Lang,
    id: &str,
    title: &str,
    own_name: &str,
    benchmark_name: &str,
    lower: i64,
    upper: i64,
    points: &[TrendPoint],
) -> Markup {
    const LEFT: f64 = 44.0;
    const RIGHT: f64 = 340.0;
    const TOP: f64 = 28.0;
    const BOTTOM: f64 = 170.0;
    // A count has no upper bound: scale to what is shown.
    let upper = if upper == i64::MAX {
        points
            .iter()
            .flat_map(|p| [p.own.as_ref(), p.benchmark.as_ref()])
            .flatten()
            .map(|p| p.high.unwrap_or(p.tenths))
            .max()
            .unwrap_or(10)
            .max(10)
    } else {
        upper
    };
    let n = points.len().max(1);
    let px = |i: usize| {
        if n == 1 {
            (LEFT + RIGHT) / 2.0
        } else {
            LEFT + (RIGHT - LEFT) * i as f64 / (n - 1) as f64
        }
    };
    let py = |v: i64| {
        let span = (upper - lower).max(1) as f64;
        BOTTOM - (BOTTOM - TOP) * ((v - lower) as f64 / span).clamp(0.0, 1.0)
    };
    let line_of = |pick: &dyn Fn(&TrendPoint) -> Option<i64>| {
        let mut d = String::new();
        for (i, p) in points.iter().enumerate() {
            if let Some(v) = pick(p) {
                d.push_str(&format!(
                    "{} {} {} ",
                    if d.is_empty() { "M" } else { "L" },
                    f(px(i)),
                    f(py(v))
                ));
            }
        }
        d
    };
    let own_line = line_of(&|p: &TrendPoint| p.own.as_ref().map(|o| o.tenths));
    let bench_line = line_of(&|p: &TrendPoint| p.benchmark.as_ref().map(|o| o.tenths));
    let desc = format!(
        "{} {} {} {}.",
        lang.t(
            "Verloop over de gepubliceerde perioden:",
            "Over the published periods:"
        ),
        own_name,
        lang.t(
            "doorgetrokken met 95%-intervallen, de regio gestreept:",
            "solid with 95% intervals, the region dashed:"
        ),
        benchmark_name
    );
    let body = html! {
        @for q in 0..=4i64 {
            @let v = lower + (upper - lower) * q / 4;
            line x1=(f(LEFT)) x2=(f(RIGHT)) y1=(f(py(v))) y2=(f(py(v))) stroke=(GRID) {}
            text x=(f(LEFT - 6.0)) y=(f(py(v) + 4.0)) font-size="10" fill=(MUTED) text-anchor="end" { (v / 10) }
        }
        @for (i, p) in points.iter().enumerate() {
            text x=(f(px(i))) y=(f(BOTTOM + 18.0)) font-size="11" fill=(INK) text-anchor="middle" { (p.period) }
            @if let Some(o) = &p.own {
                @if let (Some(lo), Some(hi)) = (o.low, o.high) {
                    line x1=(f(px(i))) x2=(f(px(i))) y1=(f(py(lo))) y2=(f(py(hi))) stroke=(OWN) stroke-width="2" {}
                }
            }
        }
        @if !bench_line.is_empty() {
            path d=(bench_line) fill="none" stroke=(BENCHMARK) stroke-width="2" stroke-dasharray="6 4" {}
        }
        @if !own_line.is_empty() {
            path d=(own_line) fill="none" stroke=(OWN) stroke-width="2" {}
        }
        @for (i, p) in points.iter().enumerate() {
            @if let Some(b) = &p.benchmark {
                path d=(format!("M {} {} l 5 5 l -5 5 l -5 -5 z", f(px(i)), f(py(b.tenths) - 5.0))) fill=(BENCHMARK) {}
            }
            @if let Some(o) = &p.own {
                circle cx=(f(px(i))) cy=(f(py(o.tenths))) r="4.5" fill=(OWN) {}
            }
        }
    };
    frame(id, "chart", 360, 200, title, &desc, body)
}

/// One cell of a heat map: the figure, or why it is held back.
#[derive(Debug, Clone)]
pub enum HeatCell {
    Figure { tenths: i64, text: String },
    HeldBack(String),
}

/// Rows (municipalities) by columns (criteria); each column shaded from its own lowest to its highest
/// figure, the figure written in the cell.
pub fn heat_map(
    lang: Lang,
    id: &str,
    title: &str,
    columns: &[String],
    rows: &[(String, Vec<HeatCell>)],
) -> Markup {
    const LEFT: f64 = 170.0;
    const COL: f64 = 92.0;
    const ROW: f64 = 30.0;
    const TOP: f64 = 120.0;
    // Room on the right for the last column's slanted heading.
    let width = (LEFT + COL * columns.len() as f64 + 100.0) as u32;
    let height = (TOP + ROW * rows.len() as f64 + 30.0) as u32;
    // Per column: the range of the published figures.
    let ranges: Vec<(i64, i64)> = (0..columns.len())
        .map(|c| {
            let vals = rows.iter().filter_map(|(_, cells)| match cells.get(c) {
                Some(HeatCell::Figure { tenths, .. }) => Some(*tenths),
                _ => None,
            });
            vals.fold((i64::MAX, i64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)))
        })
        .collect();
    // A single-hue ramp, light to dark blue (readable for every kind of colour blindness).
    const RAMP: [&str; 5] = ["#eff3ff", "#bdd7e7", "#6baed6", "#3182bd", "#08519c"];
    let shade = |c: usize, v: i64| {
        let (lo, hi) = ranges[c];
        if hi <= lo {
            return 2;
        }
        (((v - lo) as f64 / (hi - lo) as f64) * 4.0).round() as usize
    };
    let desc = lang.t(
        "Per gemeente en criterium het cijfer, donkerder naarmate het hoger is binnen dat criterium. Ingehouden cijfers zijn grijs. De tabel onder de kaart geeft dezelfde cijfers.",
        "Per municipality and criterion the figure, darker the higher it is within that criterion. Held-back figures are grey. The table under the map gives the same figures.",
    );
    let body = html! {
        @for (c, name) in columns.iter().enumerate() {
            @let cx = LEFT + COL * c as f64 + COL / 2.0;
            text x=(f(cx)) y=(f(TOP - 8.0)) font-size="11" fill=(INK) text-anchor="start"
                transform=(format!("rotate(-35 {} {})", f(cx), f(TOP - 8.0))) { (name) }
        }
        @for (r, (name, cells)) in rows.iter().enumerate() {
            @let y = TOP + ROW * r as f64;
            text x="0" y=(f(y + ROW / 2.0 + 4.0)) font-size="12" fill=(INK) { (name) }
            @for (c, cell) in cells.iter().enumerate() {
                @let x = LEFT + COL * c as f64;
                @match cell {
                    HeatCell::Figure { tenths, text } => {
                        @let s = shade(c, *tenths);
                        rect x=(f(x + 1.0)) y=(f(y + 1.0)) width=(f(COL - 2.0)) height=(f(ROW - 2.0)) fill=(RAMP[s.min(4)]) {}
                        text x=(f(x + COL / 2.0)) y=(f(y + ROW / 2.0 + 4.0)) font-size="12" text-anchor="middle"
                            fill=(if s >= 3 { "#ffffff" } else { INK }) { (text) }
                    }
                    HeatCell::HeldBack(reason) => {
                        rect x=(f(x + 1.0)) y=(f(y + 1.0)) width=(f(COL - 2.0)) height=(f(ROW - 2.0)) fill="#e6e6e6" {}
                        text x=(f(x + COL / 2.0)) y=(f(y + ROW / 2.0 + 4.0)) font-size="10" text-anchor="middle" fill=(INK) font-style="italic" { (reason) }
                    }
                }
            }
        }
        @let ly = TOP + ROW * rows.len() as f64 + 18.0;
        text x="0" y=(f(ly)) font-size="11" fill=(MUTED) { (lang.t("lager", "lower")) }
        @for (i, colour) in RAMP.iter().enumerate() {
            rect x=(f(44.0 + 22.0 * i as f64)) y=(f(ly - 11.0)) width="20" height="14" fill=(*colour) stroke=(GRID) {}
        }
        text x="160" y=(f(ly)) font-size="11" fill=(MUTED) { (lang.t("hoger (per criterium)", "higher (per criterion)")) }
    };
    // Wide: every municipality by every criterion stays legible, scrolling sideways if need be.
    frame(id, "chart wide", width, height, title, desc, body)
}

/// One data year's budget: what rounds and research spent, in nano-units of rho.
#[derive(Debug, Clone)]
pub struct BudgetYear {
    pub year: u16,
    pub rounds: i64,
    pub research: i64,
}

/// Per data year a bar of the year's cap: spent by rounds, left for rounds, spent by research, left
/// for research.
pub fn budget_chart(
    lang: Lang,
    id: &str,
    title: &str,
    years: &[BudgetYear],
    cap: i64,
    round_cap: i64,
) -> Markup {
    const LEFT: f64 = 60.0;
    const RIGHT: f64 = 700.0;
    const ROW: f64 = 40.0;
    const TOP: f64 = 40.0;
    let height = (TOP + ROW * years.len() as f64 + 10.0) as u32;
    let x = |n: i64| LEFT + (RIGHT - LEFT) * (n as f64 / cap.max(1) as f64).clamp(0.0, 1.0);
    let desc = lang.t(
        "Per datajaar het privacybudget: donkerblauw besteed aan rondes, lichtblauw nog vrij voor rondes, oranje besteed aan onderzoek, lichtoranje nog vrij voor onderzoek. De tabel eronder geeft de getallen.",
        "Per data year the privacy budget: dark blue spent by rounds, light blue left for rounds, orange spent by research, light orange left for research. The table below gives the numbers.",
    );
    let legend = [
        (OWN, lang.t("rondes besteed", "rounds spent")),
        ("#9ecae1", lang.t("vrij voor rondes", "left for rounds")),
        ("#E69F00", lang.t("onderzoek besteed", "research spent")),
        (
            "#fde9c4",
            lang.t("vrij voor onderzoek", "left for research"),
        ),
    ];
    let body = html! {
        @for (i, (colour, name)) in legend.iter().enumerate() {
            rect x=(f(LEFT + 160.0 * i as f64)) y="6" width="14" height="14" fill=(*colour) stroke=(MUTED) {}
            text x=(f(LEFT + 160.0 * i as f64 + 20.0)) y="18" font-size="12" fill=(INK) { (*name) }
        }
        @for (i, y) in years.iter().enumerate() {
            @let top = TOP + ROW * i as f64;
            text x="0" y=(f(top + 20.0)) font-size="13" fill=(INK) { (y.year) }
            rect x=(f(LEFT)) y=(f(top + 4.0)) width=(f(x(round_cap) - LEFT)) height="24" fill="#9ecae1" {}
            rect x=(f(LEFT)) y=(f(top + 4.0)) width=(f(x(y.rounds.min(round_cap)) - LEFT)) height="24" fill=(OWN) {}
            rect x=(f(x(round_cap))) y=(f(top + 4.0)) width=(f(RIGHT - x(round_cap))) height="24" fill="#fde9c4" {}
            rect x=(f(x(round_cap))) y=(f(top + 4.0)) width=(f(x(round_cap + y.research) - x(round_cap))) height="24" fill="#E69F00" {}
            rect x=(f(LEFT)) y=(f(top + 4.0)) width=(f(RIGHT - LEFT)) height="24" fill="none" stroke=(INK) {}
        }
    };
    frame(id, "chart", 760, height, title, desc, body)
}
