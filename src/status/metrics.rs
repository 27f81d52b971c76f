//! `/metrics`: one snapshot as Prometheus text (format 0.0.4), through
//! prometheus-client. A registry is filled from the snapshot on each scrape
//! rather than kept up to date by the daemon: every value already lives in
//! the report, and a scrape then shows exactly what the page and the JSON
//! of the same snapshot show.
//!
//! prometheus-client names a counter `NAME_total` and a value with a unit
//! `NAME_UNIT` itself, so the names below are registered without those
//! suffixes (`duet_heartbeats_sent` is exported as
//! `duet_heartbeats_sent_total`), and it ends every HELP with a period.

use super::model::{BackendStatus, StatusReport, TablePart, ROLES};
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::AtomicU64;

type Labels = Vec<(&'static str, String)>;
type Gauges = Family<Labels, Gauge>;
type Floats = Family<Labels, Gauge<f64, AtomicU64>>;
type Counters = Family<Labels, Counter>;

/// Gauges are i64 in prometheus-client; no count duet keeps comes near.
fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A series is written once: a duplicate series makes the whole scrape
/// invalid, so a second backend row with the same labels is skipped.
fn put_gauge(f: &Gauges, labels: Labels, v: i64) {
    if f.get(&labels).is_none() {
        f.get_or_create(&labels).set(v);
    }
}

fn put_float(f: &Floats, labels: Labels, v: f64) {
    if f.get(&labels).is_none() {
        f.get_or_create(&labels).set(v);
    }
}

fn put_counter(f: &Counters, labels: Labels, v: u64) {
    if f.get(&labels).is_none() {
        f.get_or_create(&labels).inc_by(v);
    }
}

/// Registers families in the order they are exported.
struct Exporter {
    registry: Registry,
}

impl Exporter {
    fn gauges(&mut self, name: &str, help: &str) -> Gauges {
        let f = Gauges::default();
        self.registry.register(name, help, f.clone());
        f
    }

    fn gauge(&mut self, name: &str, help: &str, v: u64) {
        put_gauge(&self.gauges(name, help), Vec::new(), int(v));
    }

    fn seconds(&mut self, name: &str, help: &str) -> Floats {
        let f = Floats::default();
        self.registry
            .register_with_unit(name, help, Unit::Seconds, f.clone());
        f
    }

    fn counters(&mut self, name: &str, help: &str) -> Counters {
        let f = Counters::default();
        self.registry.register(name, help, f.clone());
        f
    }

    fn counter(&mut self, name: &str, help: &str, v: u64) {
        put_counter(&self.counters(name, help), Vec::new(), v);
    }

    fn bytes(&mut self, name: &str, help: &str, v: u64) {
        let f = Counters::default();
        self.registry
            .register_with_unit(name, help, Unit::Bytes, f.clone());
        put_counter(&f, Vec::new(), v);
    }
}

/// A service on a VIP other than the cluster's first also carries `vip`,
/// so one pair's single-VIP series keep the labels they always had.
fn backend_labels(b: &BackendStatus, first_vip: &str) -> Labels {
    let mut l = vec![
        ("backend", b.name.clone()),
        ("address", b.address.clone()),
        ("service", b.service.clone()),
    ];
    if !b.vip.is_empty() && b.vip != first_vip {
        l.push(("vip", b.vip.clone()));
    }
    l
}

fn one(name: &'static str, value: &str) -> Labels {
    vec![(name, value.to_string())]
}

/// `/metrics` of one snapshot.
pub fn metrics(r: &StatusReport) -> String {
    let mut x = Exporter {
        registry: Registry::default(),
    };
    node(&mut x, r);
    heartbeats(&mut x, r);
    peers(&mut x, r);
    backends(&mut x, r);
    dataplane(&mut x, r);
    sync(&mut x, r);
    let mut out = String::with_capacity(8 * 1024);
    // Writing into a String cannot fail.
    let _ = prometheus_text::encode(&mut out, &x.registry);
    out
}

fn node(x: &mut Exporter, r: &StatusReport) {
    put_gauge(
        &x.gauges("duet_info", "Node identity; always 1"),
        vec![
            ("node", r.node.clone()),
            ("version", r.version.clone()),
            ("vip", r.vip.clone()),
        ],
        1,
    );
    // One series per role, so that an alert can match
    // duet_role{role="director"} == 1; an unexpected role gets its own.
    let role = x.gauges(
        "duet_role",
        "1 for the role this node is in, 0 for the others",
    );
    for known in ROLES {
        put_gauge(&role, one("role", known), i64::from(known == r.role));
    }
    put_gauge(&role, one("role", &r.role), 1);
    x.gauge("duet_term", "Current election term", r.term);
    let held = r.vip_holder.as_deref() == Some(r.node.as_str());
    x.gauge(
        "duet_vip_held",
        "1 if this node believes it holds the VIP",
        u64::from(held),
    );
    x.gauge(
        "duet_priority",
        "Configured election priority",
        u64::from(r.priority),
    );
    x.gauge(
        "duet_effective_priority",
        "Election priority after ping-node and local-service penalties",
        u64::from(r.effective_priority),
    );
    put_float(
        &x.seconds("duet_uptime", "Seconds since the daemon started"),
        Vec::new(),
        r.uptime_s as f64,
    );
}

fn heartbeats(x: &mut Exporter, r: &StatusReport) {
    let hb = &r.heartbeat;
    x.counter("duet_heartbeats_sent", "Heartbeats sent to peers", hb.sent);
    x.counter(
        "duet_heartbeats_received",
        "Authenticated heartbeats received from peers",
        hb.received,
    );
    let dropped = x.counters("duet_heartbeats_dropped", "Heartbeats dropped, by reason");
    for (reason, n) in &hb.dropped {
        put_counter(&dropped, one("reason", reason), *n);
    }
    x.counter(
        "duet_heartbeats_unverified",
        "Heartbeats held back until their boot answered our challenge",
        hb.unverified,
    );
    x.counter(
        "duet_heartbeat_challenges",
        "Challenges sent to a peer showing a boot not yet verified",
        hb.challenges_sent,
    );
    x.counter(
        "duet_peer_boots_verified",
        "Peer boots accepted after answering a challenge",
        hb.boots_verified,
    );
}

fn peers(x: &mut Exporter, r: &StatusReport) {
    let heard = x.seconds(
        "duet_peer_last_heard",
        "Age of the last heartbeat from each peer (absent if never heard)",
    );
    let key_next = x.gauges(
        "duet_peer_key_next",
        "1 while the peer signs its heartbeats with our next key (mid-rotation), 0 with our current one",
    );
    let batch = x.gauges(
        "duet_peer_sync_batch",
        "Sync batch the peer last reported (sent on a director, applied on a standby)",
    );
    for p in &r.peers {
        if let Some(ms) = p.last_heard_ms {
            put_float(&heard, one("peer", &p.node), ms as f64 / 1000.0);
        }
        if let Some(k) = &p.key {
            put_gauge(&key_next, one("peer", &p.node), i64::from(k == "next"));
        }
        put_gauge(&batch, one("peer", &p.node), int(p.sync_batch));
    }
}

fn backends(x: &mut Exporter, r: &StatusReport) {
    type Field = fn(&BackendStatus) -> u64;
    let gauges: [(&str, &str, Field); 4] = [
        (
            "duet_backend_up",
            "1 if the backend passes its health check",
            |b| u64::from(b.healthy),
        ),
        (
            "duet_backend_drained",
            "1 if an operator drained the backend",
            |b| u64::from(b.drained),
        ),
        ("duet_backend_weight", "Scheduler weight in effect", |b| {
            u64::from(b.weight)
        }),
        (
            "duet_backend_active_connections",
            "Connections currently scheduled to the backend",
            |b| b.active_connections,
        ),
    ];
    for (name, help, field) in gauges {
        let f = x.gauges(name, help);
        for b in &r.backends {
            put_gauge(&f, backend_labels(b, &r.vip), int(field(b)));
        }
    }
    let counters: [(&str, &str, Option<Unit>, Field); 3] = [
        (
            "duet_backend_connections",
            "Connections ever scheduled to the backend",
            None,
            |b| b.total_connections,
        ),
        (
            "duet_backend_packets",
            "Packets forwarded to the backend",
            None,
            |b| b.packets,
        ),
        (
            "duet_backend",
            "Bytes forwarded to the backend",
            Some(Unit::Bytes),
            |b| b.bytes,
        ),
    ];
    for (name, help, unit, field) in counters {
        let f = Counters::default();
        match unit {
            Some(u) => x.registry.register_with_unit(name, help, u, f.clone()),
            None => x.registry.register(name, help, f.clone()),
        }
        for b in &r.backends {
            put_counter(&f, backend_labels(b, &r.vip), field(b));
        }
    }
    let latency = x.seconds(
        "duet_backend_check_latency",
        "Duration of the last health check (absent if never checked)",
    );
    for b in &r.backends {
        if let Some(ms) = b.check_latency_ms {
            put_float(&latency, backend_labels(b, &r.vip), ms / 1000.0);
        }
    }
}

fn dataplane(x: &mut Exporter, r: &StatusReport) {
    let dp = &r.dataplane;
    put_gauge(
        &x.gauges(
            "duet_dataplane_engine",
            "The data-plane engine that runs (1 for its label)",
        ),
        one("engine", &dp.engine),
        1,
    );
    x.counter(
        "duet_dataplane_kernel_packets",
        "Packets the eBPF engine forwarded in kernel (included in rx and tx)",
        dp.kernel_packets,
    );
    x.counter(
        "duet_dataplane_kernel_scheduled",
        "New flows the eBPF engine scheduled in kernel (rr, wrr, sh and mh always; others over cluster.new_flow_budget)",
        dp.kernel_scheduled,
    );
    x.counter(
        "duet_dataplane_kernel_adopt_lost",
        "Notes of kernel-scheduled flows lost to a full ring (adopted by the walk instead)",
        dp.kernel_adopt_lost,
    );
    x.gauge(
        "duet_dataplane_kernel_flows",
        "Flows the eBPF engine forwards in kernel",
        dp.kernel_flows,
    );
    x.counter(
        "duet_dataplane_rx_packets",
        "Packets received on the VIP",
        dp.rx_packets,
    );
    x.counter(
        "duet_dataplane_local_packets",
        "Packets to the VIP delivered to this node's own service",
        dp.local_packets,
    );
    x.counter(
        "duet_dataplane_vip_conflicts",
        "Frames from another host claiming the VIP",
        dp.vip_conflicts,
    );
    x.counter(
        "duet_dataplane_tx_packets",
        "Packets forwarded to backends",
        dp.tx_packets,
    );
    x.bytes(
        "duet_dataplane_rx",
        "Bytes received on the VIP",
        dp.rx_bytes,
    );
    x.gauge(
        "duet_dataplane_connections",
        "Entries in the connection table",
        dp.connections,
    );
    type Part = fn(&TablePart) -> u64;
    let parts: [(&str, &str, Part); 3] = [
        (
            "duet_dataplane_table_entries",
            "Connection table entries by part (embryonic: half-open TCP; established: confirmed TCP; udp)",
            |t| t.entries,
        ),
        (
            "duet_dataplane_table_limit",
            "Entries each part of the connection table may hold",
            |t| t.limit,
        ),
        (
            "duet_dataplane_table_pressure",
            "1 while a part is under flood pressure (short timeouts in force)",
            |t| u64::from(t.pressure),
        ),
    ];
    for (name, help, f) in parts {
        let fam = x.gauges(name, help);
        for (part, t) in &dp.tables {
            put_gauge(&fam, one("kind", part), int(f(t)));
        }
    }
    let evictions = x.counters(
        "duet_dataplane_table_evictions",
        "Entries evicted for newer ones (oldest first; never established ones)",
    );
    for (part, t) in &dp.tables {
        put_counter(&evictions, one("kind", part), t.evicted);
    }
    x.counter(
        "duet_dataplane_promoted",
        "Half-open entries whose handshake completed",
        dp.promoted,
    );
    x.counter(
        "duet_dataplane_promote_refused",
        "Packets of confirmed flows kept half-open because the established part was full",
        dp.promote_refused,
    );
    let drops = x.counters(
        "duet_dataplane_drops",
        "Packets dropped by the data plane, by reason",
    );
    for (reason, n) in &dp.drops {
        put_counter(&drops, one("reason", reason), *n);
    }
}

fn sync(x: &mut Exporter, r: &StatusReport) {
    x.gauge(
        "duet_sync_connections_synced",
        "Connection entries synchronised with the peer",
        r.sync.connections_synced,
    );
    x.gauge(
        "duet_sync_lag_entries",
        "Sync entries the peer has not acknowledged yet",
        r.sync.lag_entries,
    );
    let lag = x.seconds(
        "duet_sync_lag",
        "Age of the oldest unacknowledged sync entry (absent if none)",
    );
    if let Some(ms) = r.sync.lag_ms {
        put_float(&lag, Vec::new(), ms as f64 / 1000.0);
    }
    x.counter(
        "duet_sync_rejected",
        "Sync datagrams dropped: unauthenticated, malformed or from a stranger",
        r.sync.rejected,
    );
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::status::fixture::sample_report;
    use std::collections::HashMap;

    /// A strict reading of the 0.0.4 text format: every line is a HELP, TYPE
    /// or sample line; samples belong to a family whose TYPE came first; no
    /// series repeats. Returns series -> value.
    pub(crate) fn parse_exposition(text: &str) -> Result<HashMap<String, f64>, String> {
        fn valid_name(n: &str) -> bool {
            let mut cs = n.chars();
            matches!(cs.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
                && cs.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        }
        let mut types: HashMap<String, String> = HashMap::new();
        let mut helps: HashMap<String, String> = HashMap::new();
        let mut samples = HashMap::new();
        if !text.ends_with('\n') {
            return Err("no trailing newline".into());
        }
        for (no, line) in text.lines().enumerate() {
            let err = |m: &str| format!("line {}: {m}: {line:?}", no + 1);
            if let Some(rest) = line.strip_prefix("# ") {
                let mut parts = rest.splitn(3, ' ');
                let kw = parts.next().unwrap_or("");
                let name = parts.next().ok_or_else(|| err("no metric name"))?;
                let arg = parts.next().ok_or_else(|| err("no argument"))?;
                if !valid_name(name) {
                    return Err(err("bad metric name"));
                }
                match kw {
                    "HELP" => {
                        if helps.insert(name.into(), arg.into()).is_some() {
                            return Err(err("second HELP"));
                        }
                    }
                    "TYPE" => {
                        if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&arg) {
                            return Err(err("bad type"));
                        }
                        if types.insert(name.into(), arg.into()).is_some() {
                            return Err(err("second TYPE"));
                        }
                    }
                    _ => return Err(err("unknown comment keyword")),
                }
                continue;
            }
            let name_end = line.find(['{', ' ']).ok_or_else(|| err("no value"))?;
            let name = &line[..name_end];
            if !valid_name(name) {
                return Err(err("bad metric name"));
            }
            if !types.contains_key(name) {
                return Err(err("sample before its TYPE"));
            }
            let mut rest = &line[name_end..];
            let mut series = name.to_string();
            if rest.starts_with('{') {
                let bytes = rest.as_bytes();
                let mut i = 1;
                let mut labels = Vec::new();
                loop {
                    if bytes.get(i) == Some(&b'}') {
                        i += 1;
                        break;
                    }
                    let eq = rest[i..].find('=').ok_or_else(|| err("label without ="))? + i;
                    let lname = &rest[i..eq];
                    if !valid_name(lname) || lname.contains(':') {
                        return Err(err("bad label name"));
                    }
                    if bytes.get(eq + 1) != Some(&b'"') {
                        return Err(err("label value not quoted"));
                    }
                    let mut j = eq + 2;
                    let mut val = String::new();
                    loop {
                        match bytes.get(j) {
                            None => return Err(err("unterminated label value")),
                            Some(b'\\') => {
                                match bytes.get(j + 1) {
                                    Some(b'\\') => val.push('\\'),
                                    Some(b'"') => val.push('"'),
                                    Some(b'n') => val.push('\n'),
                                    _ => return Err(err("bad escape")),
                                }
                                j += 2;
                            }
                            Some(b'"') => break,
                            Some(_) => {
                                let c = rest[j..].chars().next().unwrap();
                                val.push(c);
                                j += c.len_utf8();
                            }
                        }
                    }
                    labels.push(format!("{lname}={val:?}"));
                    i = j + 1;
                    match bytes.get(i) {
                        Some(b',') => i += 1,
                        Some(b'}') => {}
                        _ => return Err(err("expected , or }")),
                    }
                }
                series.push_str(&format!("{{{}}}", labels.join(",")));
                rest = &rest[i..];
            }
            let value = rest
                .strip_prefix(' ')
                .ok_or_else(|| err("no space before value"))?;
            let v: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                "NaN" => f64::NAN,
                v => v.parse().map_err(|_| err("bad value"))?,
            };
            if types[name] == "counter" && !name.ends_with("_total") {
                return Err(err("counter without _total"));
            }
            if samples.insert(series, v).is_some() {
                return Err(err("duplicate series"));
            }
        }
        for name in types.keys() {
            if !helps.contains_key(name) {
                return Err(format!("{name} has TYPE but no HELP"));
            }
        }
        Ok(samples)
    }

    #[test]
    fn metrics_parse_back() {
        let text = metrics(&sample_report());
        let s = parse_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(s["duet_role{role=\"director\"}"], 1.0);
        assert_eq!(s["duet_role{role=\"standby\"}"], 0.0);
        assert_eq!(s["duet_term"], 7.0);
        assert_eq!(s["duet_uptime_seconds"], 3600.0);
        assert_eq!(s["duet_heartbeats_sent_total"], 10.0);
        assert_eq!(s["duet_heartbeats_received_total"], 9.0);
        assert_eq!(s["duet_heartbeats_dropped_total{reason=\"auth\"}"], 1.0);
        // The parser unescapes, so the odd reason comes back verbatim.
        assert_eq!(
            s[&format!(
                "duet_heartbeats_dropped_total{{reason={:?}}}",
                "we\"ird\\\n"
            )],
            2.0
        );
        let web2 = "backend=\"web2\",address=\"198.18.0.2\",service=\"tcp/80\"";
        assert_eq!(s[&format!("duet_backend_up{{{web2}}}")], 1.0);
        assert_eq!(s[&format!("duet_backend_weight{{{web2}}}")], 1.0);
        assert_eq!(
            s[&format!("duet_backend_active_connections{{{web2}}}")],
            3.0
        );
        assert_eq!(
            s[&format!("duet_backend_connections_total{{{web2}}}")],
            120.0
        );
        assert_eq!(s[&format!("duet_backend_packets_total{{{web2}}}")], 5000.0);
        assert_eq!(s[&format!("duet_backend_bytes_total{{{web2}}}")], 3e6);
        assert_eq!(
            s[&format!("duet_backend_check_latency_seconds{{{web2}}}")],
            0.0015
        );
        assert_eq!(s["duet_dataplane_rx_bytes_total"], 12345.0);
        assert_eq!(s["duet_dataplane_drops_total{reason=\"no_backend\"}"], 1.0);
        assert_eq!(
            s["duet_dataplane_table_entries{kind=\"embryonic\"}"],
            49152.0
        );
        assert_eq!(
            s["duet_dataplane_table_evictions_total{kind=\"embryonic\"}"],
            120000.0
        );
        assert_eq!(s["duet_dataplane_table_pressure{kind=\"embryonic\"}"], 1.0);
        assert_eq!(
            s["duet_dataplane_table_limit{kind=\"established\"}"],
            262144.0
        );
        assert_eq!(s["duet_dataplane_promoted_total"], 40.0);
        assert_eq!(s["duet_sync_lag_entries"], 0.0);
        assert_eq!(s["duet_sync_lag_seconds"], 0.005);
        assert_eq!(s["duet_peer_last_heard_seconds{peer=\"web2\"}"], 0.08);
        assert_eq!(s["duet_peer_key_next{peer=\"web2\"}"], 1.0);
        assert_eq!(s["duet_heartbeats_unverified_total"], 0.0);
        assert_eq!(s["duet_peer_boots_verified_total"], 0.0);
        assert_eq!(s["duet_peer_sync_batch{peer=\"web2\"}"], 42.0);
        let evil = format!(
            "duet_backend_up{{backend={:?},address={:?},service=\"tcp/80\"}}",
            "<script>alert(1)</script>", "198.18.0.21\"><img src=x>"
        );
        assert_eq!(s[&evil], 0.0);
    }

    /// Every family name the hand-written writer exported before
    /// prometheus-client; operators' dashboards and alerts use them.
    #[test]
    fn metric_names_are_kept() {
        let text = metrics(&sample_report());
        let types: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .collect();
        for want in [
            "duet_info gauge",
            "duet_role gauge",
            "duet_term gauge",
            "duet_vip_held gauge",
            "duet_priority gauge",
            "duet_effective_priority gauge",
            "duet_uptime_seconds gauge",
            "duet_heartbeats_sent_total counter",
            "duet_heartbeats_received_total counter",
            "duet_heartbeats_dropped_total counter",
            "duet_heartbeats_unverified_total counter",
            "duet_heartbeat_challenges_total counter",
            "duet_peer_boots_verified_total counter",
            "duet_peer_last_heard_seconds gauge",
            "duet_peer_key_next gauge",
            "duet_peer_sync_batch gauge",
            "duet_backend_up gauge",
            "duet_backend_drained gauge",
            "duet_backend_weight gauge",
            "duet_backend_active_connections gauge",
            "duet_backend_connections_total counter",
            "duet_backend_packets_total counter",
            "duet_backend_bytes_total counter",
            "duet_backend_check_latency_seconds gauge",
            "duet_dataplane_engine gauge",
            "duet_dataplane_kernel_packets_total counter",
            "duet_dataplane_kernel_scheduled_total counter",
            "duet_dataplane_kernel_adopt_lost_total counter",
            "duet_dataplane_kernel_flows gauge",
            "duet_dataplane_rx_packets_total counter",
            "duet_dataplane_local_packets_total counter",
            "duet_dataplane_vip_conflicts_total counter",
            "duet_dataplane_tx_packets_total counter",
            "duet_dataplane_rx_bytes_total counter",
            "duet_dataplane_connections gauge",
            "duet_dataplane_table_entries gauge",
            "duet_dataplane_table_limit gauge",
            "duet_dataplane_table_evictions_total counter",
            "duet_dataplane_table_pressure gauge",
            "duet_dataplane_promoted_total counter",
            "duet_dataplane_promote_refused_total counter",
            "duet_dataplane_drops_total counter",
            "duet_sync_connections_synced gauge",
            "duet_sync_lag_entries gauge",
            "duet_sync_lag_seconds gauge",
            "duet_sync_rejected_total counter",
        ] {
            assert!(types.contains(&want), "no `# TYPE {want}` in\n{text}");
        }
    }

    #[test]
    fn metrics_skip_duplicate_series_and_unknown_role() {
        let mut r = sample_report();
        r.role = "weird".into();
        let mut dup = r.backends[0].clone();
        dup.total_connections = 999;
        r.backends.push(dup);
        let text = metrics(&r);
        let s = parse_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(s["duet_role{role=\"weird\"}"], 1.0);
        assert_eq!(s["duet_role{role=\"director\"}"], 0.0);
        // The first row wins; counters are not summed.
        let web2 = "backend=\"web2\",address=\"198.18.0.2\",service=\"tcp/80\"";
        assert_eq!(
            s[&format!("duet_backend_connections_total{{{web2}}}")],
            120.0
        );
    }

    #[test]
    fn metrics_of_empty_report_are_valid() {
        let text = metrics(&StatusReport::default());
        parse_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    }

    #[test]
    fn test_parser_rejects_bad_text() {
        assert!(parse_exposition("x 1\n").is_err());
        assert!(parse_exposition("# HELP x h\n# TYPE x gauge\nx{a=\"b} 1\n").is_err());
        assert!(parse_exposition("# HELP x h\n# TYPE x gauge\nx 1\nx 2\n").is_err());
        assert!(parse_exposition("# HELP x h\n# TYPE x gauge\nx{a=\"\\q\"} 1\n").is_err());
        assert!(parse_exposition("# HELP x h\n# TYPE x gauge\nx one\n").is_err());
    }
}
