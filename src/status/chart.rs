//! Small self-contained SVG pictures for the status page: a chart per
//! service of its history and a timeline of role changes and health
//! transitions. Pure functions of the report, rendered once here; the page
//! (and `/api/status`, under `pictures`) carries them as `data:` images, so
//! an SVG never runs script or loads anything.

use super::history::Sample;
use super::model::EventRecord;
use super::render::esc;
use std::fmt::Write;

/// The span both pictures cover, as the history keeps it.
pub const WINDOW_MS: u64 = 600_000;

const W: f64 = 480.0;
/// Height of one plot band and the room above it for its label.
const BAND: f64 = 44.0;
const LABEL: f64 = 20.0;

/// Gray that reads on both the light and the dark page.
const MUTED: &str = "#8d96a0";

fn x_of(ts_ms: u64, end_ms: u64) -> f64 {
    let start = end_ms.saturating_sub(WINDOW_MS);
    let off = ts_ms.saturating_sub(start).min(WINDOW_MS);
    off as f64 * W / WINDOW_MS as f64
}

/// "12", "3.4", "0.25": short enough for an axis label.
fn short(v: f64) -> String {
    if v >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// One band: a label with the window's peak, a filled line of `values`
/// scaled to that peak, and a baseline.
fn band(out: &mut String, top: f64, label: &str, color: &str, pts: &[(f64, f64)]) {
    let peak = pts.iter().map(|p| p.1).fold(0.0_f64, f64::max);
    let base = top + LABEL + BAND;
    let _ = write!(
        out,
        "<text x=\"0\" y=\"{ty}\" fill=\"{MUTED}\">{label} · peak {p}</text>\
         <line x1=\"0\" y1=\"{base}\" x2=\"{W}\" y2=\"{base}\" stroke=\"{MUTED}\" stroke-width=\"1\"/>",
        ty = top + 15.0,
        p = short(peak),
    );
    if pts.is_empty() {
        return;
    }
    let y = |v: f64| {
        if peak > 0.0 {
            base - v / peak * (BAND - 2.0)
        } else {
            base
        }
    };
    let mut line = String::new();
    for (x, v) in pts {
        let _ = write!(line, "{x:.1},{:.1} ", y(*v));
    }
    let line = line.trim_end();
    let (x0, x1) = (pts[0].0, pts[pts.len() - 1].0);
    let _ = write!(
        out,
        "<polygon points=\"{x0:.1},{base} {line} {x1:.1},{base}\" fill=\"{color}\" fill-opacity=\".18\"/>\
         <polyline points=\"{line}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" \
         stroke-linejoin=\"round\"/>"
    );
}

fn axis(out: &mut String, y: f64) {
    let _ = write!(
        out,
        "<text x=\"0\" y=\"{y}\" fill=\"{MUTED}\">-10 min</text>\
         <text x=\"{W}\" y=\"{y}\" fill=\"{MUTED}\" text-anchor=\"end\">now</text>"
    );
}

fn open(out: &mut String, h: f64, title: &str, samples: usize) {
    let _ = write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {W} {h}\" width=\"{W}\" \
         height=\"{h}\" font-family=\"system-ui,sans-serif\" font-size=\"15\" \
         data-samples=\"{samples}\"><title>{}</title>",
        esc(title)
    );
}

/// New connections/s and active connections of one service over the
/// window ending at `end_ms`, one band each.
pub fn service_svg(service: &str, samples: &[Sample], end_ms: u64) -> String {
    let h = 2.0 * (LABEL + BAND) + 20.0;
    let mut out = String::with_capacity(4096);
    open(
        &mut out,
        h,
        &format!("{service}: new connections/s and active connections, last 10 minutes"),
        samples.len(),
    );
    let start = end_ms.saturating_sub(WINDOW_MS);
    let inside: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.ts_ms >= start && s.ts_ms <= end_ms)
        .collect();
    let rate: Vec<(f64, f64)> = inside
        .iter()
        .map(|s| (x_of(s.ts_ms, end_ms), finite(s.new_per_s)))
        .collect();
    let active: Vec<(f64, f64)> = inside
        .iter()
        .map(|s| (x_of(s.ts_ms, end_ms), s.active as f64))
        .collect();
    band(&mut out, 0.0, "new conns/s", "#0969da", &rate);
    band(&mut out, LABEL + BAND, "active conns", "#1a7f37", &active);
    axis(&mut out, h - 2.0);
    out.push_str("</svg>");
    out
}

/// A rate from the wire might be NaN or infinite; draw it as zero.
fn finite(v: f64) -> f64 {
    if v.is_finite() && v > 0.0 {
        v
    } else {
        0.0
    }
}

/// Which lane an event belongs on, and its colour; other kinds are not
/// drawn.
fn lane(e: &EventRecord) -> Option<(usize, &'static str)> {
    match e.kind.as_str() {
        "role" => {
            let to = e.message.split("->").nth(1).unwrap_or("");
            let color = if to.trim_start().starts_with("director") {
                "#1a7f37"
            } else if to.trim_start().starts_with("standby") {
                "#0969da"
            } else {
                "#6e7781"
            };
            Some((0, color))
        }
        "health" => {
            // "{backend} {up|down}: {reason}" (sys::checks).
            let down = e
                .message
                .split_whitespace()
                .nth(1)
                .is_some_and(|w| w.starts_with("down"));
            let color = if down { "#cf222e" } else { "#1a7f37" };
            Some((1, color))
        }
        _ => None,
    }
}

/// Role changes and health transitions in the window ending at `end_ms`,
/// one lane each, a mark per event with the event as its tooltip.
pub fn timeline_svg(events: &[EventRecord], end_ms: u64) -> String {
    const LANE: f64 = 30.0;
    let h = 2.0 * LANE + 20.0;
    let start = end_ms.saturating_sub(WINDOW_MS);
    let shown: Vec<(&EventRecord, usize, &str)> = events
        .iter()
        .filter(|e| e.ts_ms >= start && e.ts_ms <= end_ms)
        .filter_map(|e| lane(e).map(|(l, c)| (e, l, c)))
        .collect();
    let mut out = String::with_capacity(2048);
    open(
        &mut out,
        h,
        "role changes and health transitions, last 10 minutes",
        shown.len(),
    );
    for (i, name) in ["role", "health"].iter().enumerate() {
        let y = i as f64 * LANE + LANE / 2.0 + 4.0;
        let _ = write!(
            out,
            "<line x1=\"0\" y1=\"{y}\" x2=\"{W}\" y2=\"{y}\" stroke=\"{MUTED}\" stroke-width=\"1\" \
             stroke-dasharray=\"2 4\"/><text x=\"2\" y=\"{ty}\" fill=\"{MUTED}\">{name}</text>",
            ty = y - 5.0,
        );
    }
    for (e, l, color) in shown {
        let x = x_of(e.ts_ms, end_ms).clamp(5.0, W - 5.0);
        let y = l as f64 * LANE + LANE / 2.0 + 4.0;
        let _ = write!(
            out,
            "<circle cx=\"{x:.1}\" cy=\"{y}\" r=\"5\" fill=\"{color}\"><title>{}</title></circle>",
            esc(&format!(
                "{} {}: {}",
                super::render::fmt_unix_ms(e.ts_ms),
                e.kind,
                e.message
            ))
        );
    }
    axis(&mut out, h - 2.0);
    out.push_str("</svg>");
    out
}

/// The end of the window the pictures show: the newest sample or event,
/// so that rendering stays a function of the report.
pub fn window_end(
    history: &std::collections::BTreeMap<String, Vec<Sample>>,
    events: &[EventRecord],
) -> u64 {
    let h = history
        .values()
        .filter_map(|s| s.last().map(|x| x.ts_ms))
        .max();
    let e = events.iter().map(|e| e.ts_ms).max();
    h.max(e).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(ts_ms: u64, new_per_s: f64, active: u64) -> Sample {
        Sample {
            ts_ms,
            new_per_s,
            active,
        }
    }

    #[test]
    fn chart_scales_to_the_peak_and_places_by_time() {
        let end = 1_000_000;
        let s = [
            sample(end - 600_000, 0.0, 0),
            sample(end - 300_000, 5.0, 2),
            sample(end, 10.0, 4),
        ];
        let svg = service_svg("tcp/80", &s, end);
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.ends_with("</svg>"));
        assert!(svg.contains("data-samples=\"3\""));
        assert!(svg.contains("new conns/s · peak 10<"));
        assert!(svg.contains("active conns · peak 4<"));
        // Rate band: baseline at 64, top at 22; active band 64 lower.
        assert!(
            svg.contains("points=\"0.0,64.0 240.0,43.0 480.0,22.0\""),
            "{svg}"
        );
        assert!(
            svg.contains("points=\"0.0,128.0 240.0,107.0 480.0,86.0\""),
            "{svg}"
        );
        assert_eq!(svg.matches("<polyline").count(), 2);
    }

    #[test]
    fn chart_drops_samples_outside_the_window_and_bad_rates() {
        let end = 2_000_000;
        let s = [
            sample(end - 700_000, 99.0, 99),
            sample(end - 100, f64::NAN, 1),
            sample(end, f64::INFINITY, 1),
        ];
        let svg = service_svg("udp/53", &s, end);
        assert!(svg.contains("new conns/s · peak 0<"), "{svg}");
        assert!(svg.contains("active conns · peak 1<"));
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
    }

    #[test]
    fn empty_chart_is_still_a_picture() {
        let svg = service_svg("tcp/80", &[], 0);
        assert!(svg.contains("data-samples=\"0\""));
        assert!(!svg.contains("<polyline"));
        assert!(svg.ends_with("</svg>"));
    }

    #[test]
    fn strings_are_escaped() {
        let svg = service_svg("<b>&\"", &[], 0);
        assert!(svg.contains("&lt;b&gt;&amp;&quot;"));
        let ev = [EventRecord {
            ts_ms: 10,
            kind: "health".into(),
            message: "web1 <script>".into(),
        }];
        let svg = timeline_svg(&ev, 10);
        assert!(!svg.contains("<script"));
        assert!(svg.contains("web1 &lt;script&gt;"));
    }

    #[test]
    fn timeline_puts_role_and_health_events_on_their_lanes() {
        let end = 1_000_000;
        let ev = [
            EventRecord {
                ts_ms: end,
                kind: "role".into(),
                message: "standby -> director: peer dead".into(),
            },
            EventRecord {
                ts_ms: end - 300_000,
                kind: "health".into(),
                message: "web2 down: timeout".into(),
            },
            EventRecord {
                ts_ms: end - 300_000,
                kind: "admin".into(),
                message: "drain web1".into(),
            },
            EventRecord {
                ts_ms: end - 700_000,
                kind: "role".into(),
                message: "too old".into(),
            },
        ];
        let svg = timeline_svg(&ev, end);
        assert!(svg.contains("data-samples=\"2\""));
        assert!(
            svg.contains("<circle cx=\"475.0\" cy=\"19\" r=\"5\" fill=\"#1a7f37\">"),
            "{svg}"
        );
        assert!(
            svg.contains("<circle cx=\"240.0\" cy=\"49\" r=\"5\" fill=\"#cf222e\">"),
            "{svg}"
        );
        assert!(!svg.contains("too old"));
        assert!(!svg.contains("drain web1"));
    }

    #[test]
    fn window_ends_at_the_newest_sample_or_event() {
        let h = std::collections::BTreeMap::from([(
            "tcp/80".to_string(),
            vec![sample(5, 0.0, 0), sample(9, 0.0, 0)],
        )]);
        let ev = [EventRecord {
            ts_ms: 7,
            ..Default::default()
        }];
        assert_eq!(window_end(&h, &ev), 9);
        assert_eq!(window_end(&Default::default(), &ev), 7);
        assert_eq!(window_end(&Default::default(), &[]), 0);
    }
}
