//! The dashboard's one chart, drawn on the server as SVG (no JavaScript, nothing to
//! vendor): payments that became final each minute of the last hour, stacked by outcome,
//! and the p50 and p99 of accept → final as two lines on their own scale.

use maud::{html, Markup};
pub use paygate_core::db::activity::MinuteActivity as Minute;

/// One rectangle of a stacked bar.
struct Bar {
    x: f64,
    y: f64,
    w: f64,
    h: f64,
    colour: &'static str,
    title: String,
}

const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 260.0;
const LEFT: f64 = 48.0;
const RIGHT: f64 = 64.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 28.0;

/// Colours by outcome (the legend uses the same).
const SERIES: [(&str, &str); 3] = [
    ("succeeded", "#3b9a5a"),
    ("failed", "#c8443b"),
    ("unresolved", "#d79a1c"),
];

fn counts(m: &Minute) -> [i64; 3] {
    [m.succeeded.max(0), m.failed.max(0), m.unresolved.max(0)]
}

/// A round number at or above `value` (the top of an axis).
fn nice_ceiling(value: f64) -> f64 {
    if value <= 0.0 || !value.is_finite() {
        return 1.0;
    }
    let magnitude = 10_f64.powf(value.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|step| step * magnitude)
        .find(|top| *top >= value)
        .unwrap_or(10.0 * magnitude)
}

pub fn render(minutes: &[Minute]) -> Markup {
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let slots = minutes.len().max(1) as f64;
    let slot_w = plot_w / slots;
    let max_count = minutes
        .iter()
        .map(|m| counts(m).iter().sum::<i64>())
        .max()
        .unwrap_or(0);
    let count_top = nice_ceiling(max_count as f64);
    let max_ms = minutes
        .iter()
        .filter_map(|m| m.p99_ms.or(m.p50_ms))
        .fold(0.0_f64, f64::max);
    let ms_top = nice_ceiling(max_ms);
    let y_count = |n: f64| TOP + plot_h - n / count_top * plot_h;
    let y_ms = |ms: f64| TOP + plot_h - ms / ms_top * plot_h;
    let x_mid = |i: usize| LEFT + (i as f64 + 0.5) * slot_w;
    let line = |pick: fn(&Minute) -> Option<f64>| -> String {
        minutes
            .iter()
            .enumerate()
            .filter_map(|(i, m)| pick(m).map(|ms| format!("{:.1},{:.1}", x_mid(i), y_ms(ms))))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let total: i64 = minutes.iter().map(|m| counts(m).iter().sum::<i64>()).sum();
    let mut bars = Vec::new();
    for (i, m) in minutes.iter().enumerate() {
        let mut base = 0_i64;
        for (k, n) in counts(m).into_iter().enumerate() {
            if n == 0 {
                continue;
            }
            let top = base.saturating_add(n);
            bars.push(Bar {
                x: LEFT + i as f64 * slot_w + 1.0,
                y: y_count(top as f64),
                w: (slot_w - 2.0).max(1.0),
                h: y_count(base as f64) - y_count(top as f64),
                colour: SERIES[k].1,
                title: format!("{} {}: {n}", m.minute.format("%H:%M"), SERIES[k].0),
            });
            base = top;
        }
    }
    html! {
        svg.chart data-testid="chart" xmlns="http://www.w3.org/2000/svg" width=(WIDTH) height=(HEIGHT)
            viewBox={"0 0 " (WIDTH) " " (HEIGHT)} role="img"
            aria-label={"Payments per minute by outcome and accept-to-final latency, last hour: " (total) " payments"} {
            // Axes and scale labels.
            line x1=(LEFT) y1=(TOP + plot_h) x2=(LEFT + plot_w) y2=(TOP + plot_h) stroke="#999" {}
            text x=(LEFT - 6.0) y=(TOP + 4.0) text-anchor="end" font-size="11" { (count_top) }
            text x=(LEFT - 6.0) y=(TOP + plot_h) text-anchor="end" font-size="11" { "0" }
            text x=(LEFT + plot_w + 6.0) y=(TOP + 4.0) font-size="11" { (format_ms(ms_top)) }
            text x=(LEFT + plot_w + 6.0) y=(TOP + plot_h) font-size="11" { "0 ms" }
            @if let (Some(first), Some(last)) = (minutes.first(), minutes.last()) {
                text x=(LEFT) y=(HEIGHT - 8.0) font-size="11" { (first.minute.format("%H:%M")) }
                text x=(LEFT + plot_w) y=(HEIGHT - 8.0) text-anchor="end" font-size="11" { (last.minute.format("%H:%M UTC")) }
            }
            // Stacked bars.
            @for bar in &bars {
                rect x=(format!("{:.1}", bar.x)) y=(format!("{:.1}", bar.y)) width=(format!("{:.1}", bar.w))
                    height=(format!("{:.1}", bar.h)) fill=(bar.colour) {
                    title { (bar.title) }
                }
            }
            // Latency lines.
            polyline data-testid="p50" points=(line(|m| m.p50_ms)) fill="none" stroke="#2f5bd3" stroke-width="1.5" {}
            polyline data-testid="p99" points=(line(|m| m.p99_ms)) fill="none" stroke="#7a3fd3" stroke-width="1.5" stroke-dasharray="4 3" {}
            // A dot per minute too: a line of one point draws nothing.
            @for (i, m) in minutes.iter().enumerate() {
                @if let Some(ms) = m.p50_ms { circle cx=(format!("{:.1}", x_mid(i))) cy=(format!("{:.1}", y_ms(ms))) r="2.5" fill="#2f5bd3" {} }
                @if let Some(ms) = m.p99_ms { circle cx=(format!("{:.1}", x_mid(i))) cy=(format!("{:.1}", y_ms(ms))) r="2.5" fill="#7a3fd3" {} }
            }
            // Legend.
            @for (k, (name, colour)) in SERIES.iter().enumerate() {
                rect x=(LEFT + 8.0 + k as f64 * 100.0) y="6" width="10" height="10" fill=(colour) {}
                text x=(LEFT + 22.0 + k as f64 * 100.0) y="15" font-size="11" { (name) }
            }
            text x=(LEFT + 320.0) y="15" font-size="11" fill="#2f5bd3" { "p50 accept→final" }
            text x=(LEFT + 440.0) y="15" font-size="11" fill="#7a3fd3" { "p99 (dashed)" }
        }
    }
}

fn format_ms(ms: f64) -> String {
    if ms >= 10_000.0 {
        format!("{:.0} s", ms / 1000.0)
    } else {
        format!("{ms:.0} ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minute(i: i64, s: i64, f: i64, p50: Option<f64>) -> Minute {
        Minute {
            minute: chrono::DateTime::from_timestamp(1_800_000_000 + i * 60, 0).unwrap_or_default(),
            succeeded: s,
            failed: f,
            unresolved: 0,
            p50_ms: p50,
            p99_ms: p50.map(|p| p * 2.0),
        }
    }

    #[test]
    fn bars_stack_per_outcome_and_lines_skip_empty_minutes() {
        let svg = render(&[
            minute(0, 3, 1, Some(120.0)),
            minute(1, 0, 0, None),
            minute(2, 5, 0, Some(80.0)),
        ])
        .into_string();
        assert_eq!(
            svg.matches("<rect").count(),
            3 + 3,
            "3 bars + 3 legend boxes: {svg}"
        );
        assert!(
            svg.contains("succeeded: 5") && svg.contains("failed: 1"),
            "{svg}"
        );
        assert!(svg.contains("9 payments"), "{svg}");
        let p50 = svg
            .split("data-testid=\"p50\" points=\"")
            .nth(1)
            .unwrap_or("");
        let points = p50.split('"').next().unwrap_or("");
        assert_eq!(points.split(' ').count(), 2, "{points}");
        assert_eq!(
            svg.matches("<circle").count(),
            4,
            "a dot per minute with a latency, per line"
        );
    }

    #[test]
    fn axes_round_up_and_an_empty_hour_still_draws() {
        assert_eq!(nice_ceiling(7.0), 10.0);
        assert_eq!(nice_ceiling(120.0), 200.0);
        assert_eq!(nice_ceiling(0.0), 1.0);
        let svg = render(&[]).into_string();
        assert!(svg.contains("data-testid=\"chart\""), "{svg}");
    }
}
