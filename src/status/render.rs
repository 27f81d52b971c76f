//! One snapshot, three views: the status page, `/api/status` JSON and
//! `/metrics` text are each a pure function of the same [`StatusReport`],
//! reached through [`render`]. A route takes one snapshot and renders it
//! once, so within an answer nothing can disagree, and the three views of
//! one snapshot agree (tested below).

use super::model::StatusReport;
use super::{chart, metrics, page};
use crate::wire::civil::Civil;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::Serialize;
use std::collections::BTreeMap;

/// How a snapshot is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    /// `/`: the HTML page.
    Page,
    /// `/api/status`.
    Json,
    /// `/metrics`: Prometheus text.
    Metrics,
}

/// A view of a snapshot, ready to send.
pub struct Rendered {
    pub content_type: &'static str,
    pub body: String,
}

/// Renders one snapshot as `view`.
pub fn render(snapshot: &StatusReport, view: View) -> Rendered {
    match view {
        View::Page => Rendered {
            content_type: "text/html; charset=utf-8",
            body: page::html(snapshot),
        },
        View::Json => Rendered {
            content_type: "application/json",
            body: json(snapshot),
        },
        View::Metrics => Rendered {
            content_type: prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            body: metrics::metrics(snapshot),
        },
    }
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// "YYYY-MM-DD HH:MM:SSZ" for a unix time in ms.
pub fn fmt_unix_ms(ts_ms: u64) -> String {
    let c = Civil::from_unix(ts_ms / 1000);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}Z",
        c.year, c.month, c.day, c.hour, c.minute, c.second
    )
}

/// Standard alphabet with padding: what `data:` URIs and CSP hashes take.
pub(crate) fn base64(data: &[u8]) -> String {
    STANDARD.encode(data)
}

/// The charts and the timeline as `data:` URIs, for the page and for
/// `/api/status`: drawn once per snapshot, in `chart`.
#[derive(Serialize)]
pub(crate) struct Pictures {
    /// By service ("tcp/80").
    pub(crate) charts: BTreeMap<String, String>,
    pub(crate) timeline: String,
}

impl Pictures {
    pub(crate) fn of(r: &StatusReport) -> Pictures {
        let end = chart::window_end(&r.history, &r.events);
        Pictures {
            charts: r
                .history
                .iter()
                .map(|(k, v)| (k.clone(), svg_uri(&chart::service_svg(k, v, end))))
                .collect(),
            timeline: svg_uri(&chart::timeline_svg(&r.events, end)),
        }
    }
}

fn svg_uri(svg: &str) -> String {
    format!("data:image/svg+xml;base64,{}", base64(svg.as_bytes()))
}

/// `/api/status`: the report (its fields are the contract) plus the
/// pictures under `pictures`, which a reader of the report ignores.
#[derive(Serialize)]
struct PageJson<'a> {
    #[serde(flatten)]
    report: &'a StatusReport,
    pictures: Pictures,
}

/// `/api/status`.
fn json(r: &StatusReport) -> String {
    let page = PageJson {
        report: r,
        pictures: Pictures::of(r),
    };
    // Serialising these plain structs cannot fail (string map keys only);
    // the fallback keeps the signature infallible without a panic path.
    serde_json::to_string(&page).unwrap_or_else(|e| {
        serde_json::json!({ "error": format!("cannot serialise status: {e}") }).to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::fixture::sample_report;
    use crate::status::metrics::tests::parse_exposition;

    /// The same counters, read from each view of one snapshot.
    #[test]
    fn one_snapshot_reads_the_same_in_all_three_views() {
        let snap = sample_report();
        let page = render(&snap, View::Page).body;
        let json: serde_json::Value =
            serde_json::from_str(&render(&snap, View::Json).body).unwrap();
        let text = render(&snap, View::Metrics).body;
        let metrics = parse_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));

        let row = &page[page.find("data-backend=\"web2\"").unwrap()..];
        let row = &row[..row.find("</tr>").unwrap()];
        let between = |s: &str, a: &str, b: &str| -> String {
            let p = s.find(a).unwrap_or_else(|| panic!("no {a} in {s}")) + a.len();
            s[p..p + s[p..].find(b).unwrap()].to_string()
        };
        let b = &json["backends"][0];
        assert_eq!(b["name"], "web2");
        let web2 = "backend=\"web2\",address=\"198.18.0.2\",service=\"tcp/80\"";
        let series = |name: &str| metrics[&format!("{name}{{{web2}}}")];

        let total = b["total_connections"].as_u64().unwrap();
        assert_eq!(
            between(row, "<span class=\"total\">", "<"),
            total.to_string()
        );
        assert_eq!(series("duet_backend_connections_total"), total as f64);
        let active = b["active_connections"].as_u64().unwrap();
        assert_eq!(
            between(row, "<span class=\"active\">", "<"),
            active.to_string()
        );
        assert_eq!(series("duet_backend_active_connections"), active as f64);
        let packets = b["packets"].as_u64().unwrap();
        assert_eq!(between(row, "data-packets=\"", "\""), packets.to_string());
        assert_eq!(series("duet_backend_packets_total"), packets as f64);

        let sent = json["heartbeat"]["sent"].as_u64().unwrap();
        let received = json["heartbeat"]["received"].as_u64().unwrap();
        assert_eq!(
            between(&page, "id=\"hb\">", " / 3<"),
            format!("{sent} / {received}")
        );
        assert_eq!(metrics["duet_heartbeats_sent_total"], sent as f64);
        assert_eq!(metrics["duet_heartbeats_received_total"], received as f64);

        let term = json["term"].as_u64().unwrap();
        assert_eq!(between(&page, "id=\"term\">", "<"), term.to_string());
        assert_eq!(metrics["duet_term"], term as f64);
        let role = json["role"].as_str().unwrap();
        assert_eq!(
            between(&page, "id=\"role\" class=\"badge big role-director\">", "<"),
            role
        );
        assert_eq!(metrics[&format!("duet_role{{role=\"{role}\"}}")], 1.0);
    }

    #[test]
    fn views_say_what_they_are() {
        let snap = sample_report();
        assert!(render(&snap, View::Page)
            .content_type
            .starts_with("text/html"));
        assert_eq!(render(&snap, View::Json).content_type, "application/json");
        assert_eq!(
            render(&snap, View::Metrics).content_type,
            "text/plain; version=0.0.4; charset=utf-8"
        );
    }

    #[test]
    fn page_and_json_carry_the_same_pictures() {
        let mut r = sample_report();
        r.history.insert(
            "tcp/80".into(),
            vec![crate::status::history::Sample {
                ts_ms: 1_700_000_000_000,
                new_per_s: 2.5,
                active: 3,
            }],
        );
        let page = page::html(&r);
        let v: serde_json::Value = serde_json::from_str(&json(&r)).unwrap();
        let chart = v["pictures"]["charts"]["tcp/80"].as_str().unwrap();
        let timeline = v["pictures"]["timeline"].as_str().unwrap();
        assert!(chart.starts_with("data:image/svg+xml;base64,"));
        assert!(page.contains(&format!(
            "data-chart=\"tcp/80\" alt=\"tcp/80: new and active connections\" src=\"{chart}\""
        )));
        assert!(page.contains("id=\"timeline\" class=\"chart\""));
        assert!(page.contains(&format!("src=\"{timeline}\"")));
        // The picture set is not part of the report: it does not read back.
        let back: StatusReport = serde_json::from_str(&json(&r)).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn base64_vectors() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn unix_ms_formatting() {
        assert_eq!(fmt_unix_ms(0), "1970-01-01 00:00:00Z");
        assert_eq!(fmt_unix_ms(951_782_400_000), "2000-02-29 00:00:00Z");
        assert_eq!(fmt_unix_ms(1_700_000_000_999), "2023-11-14 22:13:20Z");
    }

    #[test]
    fn json_round_trips() {
        let r = sample_report();
        let back: StatusReport = serde_json::from_str(&json(&r)).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn json_has_contract_fields() {
        let v: serde_json::Value = serde_json::from_str(&json(&sample_report())).unwrap();
        for k in ["node", "role", "term", "vip", "peers", "backends"] {
            assert!(v.get(k).is_some(), "missing {k}");
        }
        assert_eq!(v["peers"][0]["last_heard_ms"], 80);
        assert_eq!(v["peers"][0]["key"], "next");
        assert_eq!(v["peers"][0]["sync_pos"], 0x0000_0123_0000_002a_u64);
        let b = &v["backends"][0];
        for k in [
            "name",
            "address",
            "healthy",
            "weight",
            "drained",
            "active_connections",
            "total_connections",
        ] {
            assert!(b.get(k).is_some(), "missing backends[].{k}");
        }
    }

    #[test]
    fn json_tolerates_missing_and_extra_fields() {
        let r: StatusReport =
            serde_json::from_str(r#"{"node":"a","role":"standby","future":1}"#).unwrap();
        assert_eq!(r.node, "a");
        assert!(r.backends.is_empty());
    }
}
