//! The status report: one snapshot of what a node knows, filled by the daemon
//! and rendered by `render` as HTML, JSON and Prometheus text.
//!
//! The JSON field names are a contract (DESIGN.md section 4): `node`, `role`,
//! `term`, `vip`, `peers[].node/role/last_heard_ms`, `backends[].name/address/
//! healthy/weight/drained/active_connections/total_connections` never change
//! meaning. Fields may be added; every field has a serde default so that an
//! older or newer daemon's report still parses in `duet status`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The roles a node reports (`StatusReport::role`).
pub const ROLES: [&str; 4] = ["director", "standby", "starting", "leaving"];

/// Everything the status page, `/api/status` and `/metrics` show.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct StatusReport {
    /// This node's name (`[[node]].name`).
    pub node: String,
    /// One of [`ROLES`].
    pub role: String,
    pub term: u64,
    /// The first VIP: the cluster's own.
    pub vip: String,
    /// Every VIP, the first first; all move together with the director role.
    pub vips: Vec<String>,
    /// The node this one believes holds the VIP, if any.
    pub vip_holder: Option<String>,
    pub priority: u8,
    /// Priority after ping-node and local-service penalties.
    pub effective_priority: u8,
    pub uptime_s: u64,
    pub version: String,
    pub peers: Vec<PeerStatus>,
    pub backends: Vec<BackendStatus>,
    pub heartbeat: HeartbeatStats,
    pub dataplane: DataplaneStats,
    pub sync: SyncStats,
    /// Newest first.
    pub events: Vec<EventRecord>,
    /// Last 10 minutes by service ("tcp/80"), oldest first, one sample per 5 s.
    pub history: BTreeMap<String, Vec<super::history::Sample>>,
}

/// What this node knows about another cluster member.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct PeerStatus {
    pub node: String,
    pub address: String,
    pub role: String,
    pub priority: u8,
    /// Age of the last authenticated heartbeat; `None` if never heard.
    pub last_heard_ms: Option<u64>,
    pub term: u64,
    /// Which of our keys its heartbeats are signed with: "current" (our
    /// signing key) or "next" (the key file's second line); `None` if never
    /// heard.
    pub key: Option<String>,
    /// Its connection-sync position from its last heartbeat
    /// (`sync::position`: stream and batch; 0 = none).
    pub sync_pos: u64,
    /// The batch part of `sync_pos` (its low 32 bits), for display: the page's
    /// script cannot do 64-bit arithmetic.
    pub sync_batch: u64,
}

/// One real server of one service.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct BackendStatus {
    pub name: String,
    pub address: String,
    /// The VIP of its service.
    pub vip: String,
    /// "tcp/80".
    pub service: String,
    pub healthy: bool,
    /// Weight in effect (0 when drained or quiesced).
    pub weight: u32,
    pub configured_weight: u32,
    pub drained: bool,
    /// This is the service's fallback server, used only when all others are down.
    pub fallback: bool,
    /// This backend is the node itself (`serve_local`).
    pub local: bool,
    pub active_connections: u64,
    pub total_connections: u64,
    pub packets: u64,
    pub bytes: u64,
    pub check_latency_ms: Option<f64>,
    /// Human-readable result of the last check ("ok", "timeout", ...).
    pub last_check: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct HeartbeatStats {
    pub sent: u64,
    pub received: u64,
    /// Dropped heartbeats by reason ("auth", "replay", ...).
    pub dropped: BTreeMap<String, u64>,
    /// Heartbeats held back because their boot had not answered our
    /// challenge yet (a restart's first one or two, or replayed traffic).
    pub unverified: u64,
    /// Challenges sent to a peer that showed a boot not yet verified.
    pub challenges_sent: u64,
    /// Peer boots accepted after answering a challenge.
    pub boots_verified: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct DataplaneStats {
    /// "ebpf" or "userspace".
    pub engine: String,
    /// eBPF engine: flows held by the kernel, frames it forwarded itself
    /// (included in rx/tx), and confirmed flows it had no room for.
    pub kernel_flows: u64,
    pub kernel_packets: u64,
    pub kernel_full: u64,
    /// Handshakes the kernel's embryonic LRU had lost (flood churn):
    /// forwarded by user space instead.
    pub kernel_embryonic_lost: u64,
    /// New flows the kernel scheduled itself, from the tables user space
    /// computes: every one of rr, wrr, sh and mh services, and those of
    /// other services over what user space decides a second.
    pub kernel_scheduled: u64,
    /// Notes of kernel-scheduled flows lost to a full ring: those flows
    /// were adopted by the walk, later.
    pub kernel_adopt_lost: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    /// Packets to the VIP delivered to this node's own service (not forwarded).
    pub local_packets: u64,
    /// Frames from another host claiming the VIP (an address conflict).
    pub vip_conflicts: u64,
    /// Entries in the connection table.
    pub connections: u64,
    /// Dropped packets by reason.
    pub drops: BTreeMap<String, u64>,
    /// The connection table by part: "embryonic" (half-open TCP, evicted
    /// oldest first), "established" (confirmed TCP, never evicted), "udp".
    pub tables: BTreeMap<String, TablePart>,
    /// Half-open entries whose handshake completed (moved to established).
    pub promoted: u64,
    /// Packets of confirmed flows kept in the embryonic part because the
    /// established part was full.
    pub promote_refused: u64,
}

/// One part of the connection table.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct TablePart {
    pub entries: u64,
    pub limit: u64,
    /// Entries evicted for newer ones.
    pub evicted: u64,
    /// More than 3/4 full recently: short timeouts in force (a flood).
    pub pressure: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct SyncStats {
    pub connections_synced: u64,
    /// Entries the peer has not yet acknowledged.
    pub lag_entries: u64,
    pub lag_ms: Option<u64>,
    /// Sync datagrams dropped: unauthenticated, malformed or from a stranger.
    pub rejected: u64,
}

/// One line of the event log, as the store keeps it.
pub use crate::store::EventRecord;

#[cfg(test)]
mod tests {
    use super::super::fixture::sample_report;
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn contract_fields_keep_their_names() {
        let v = serde_json::to_value(sample_report()).unwrap();
        let (peer, backend) = (&v["peers"][0], &v["backends"][0]);
        #[rustfmt::skip]
        let cases: [(&str, &Value, Value); 13] = [
            ("node", &v["node"], json!("web1")),
            ("role", &v["role"], json!("director")),
            ("term", &v["term"], json!(7)),
            ("vip", &v["vip"], json!("198.18.0.100")),
            ("peers[].node", &peer["node"], json!("web2")),
            ("peers[].role", &peer["role"], json!("standby")),
            ("peers[].last_heard_ms", &peer["last_heard_ms"], json!(80)),
            ("backends[].name", &backend["name"], json!(sample_report().backends[0].name)),
            ("backends[].address", &backend["address"], json!(sample_report().backends[0].address)),
            ("backends[].healthy", &backend["healthy"], json!(sample_report().backends[0].healthy)),
            ("backends[].weight", &backend["weight"], json!(sample_report().backends[0].weight)),
            ("backends[].drained", &backend["drained"], json!(sample_report().backends[0].drained)),
            ("backends[].active_connections", &backend["active_connections"], json!(sample_report().backends[0].active_connections)),
        ];
        for (field, got, want) in cases {
            assert_eq!(got, &want, "{field}");
        }
        assert!(backend["total_connections"].is_u64());
        assert!(ROLES.contains(&v["role"].as_str().unwrap()));
    }

    #[test]
    fn reports_of_other_versions_parse() {
        let older_or_newer = json!({
            "node": "web2",
            "role": "standby",
            "added_later": {"any": "thing"},
            "peers": [{"node": "web1", "last_heard_ms": null, "added_later": 1}],
            "backends": [{"name": "db", "healthy": true}],
            "dataplane": {"drops": {"no_backend": 3}},
        });
        let r: StatusReport = serde_json::from_value(older_or_newer).unwrap();
        assert_eq!(
            (r.node.as_str(), r.role.as_str(), r.term),
            ("web2", "standby", 0)
        );
        assert_eq!(r.peers[0].node, "web1");
        assert_eq!(r.peers[0].last_heard_ms, None);
        assert_eq!(r.peers[0].key, None);
        assert_eq!(r.backends[0].name, "db");
        assert!(r.backends[0].healthy);
        assert_eq!(r.backends[0].weight, 0);
        assert_eq!(r.dataplane.drops.get("no_backend"), Some(&3));
        assert_eq!(r.sync, SyncStats::default());
        let empty: StatusReport = serde_json::from_str("{}").unwrap();
        assert_eq!(empty, StatusReport::default());
    }

    #[test]
    fn wrong_types_are_an_error() {
        for bad in [
            r#"{"term": "seven"}"#,
            r#"{"peers": {"node": "web2"}}"#,
            r#"{"backends": [{"healthy": "yes"}]}"#,
            r#"{"term": -1}"#,
            "",
        ] {
            assert!(serde_json::from_str::<StatusReport>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_part_defaults_on_its_own() {
        // Each part of an older report may lack fields a newer one reads.
        let with = |f: fn(&mut StatusReport)| {
            let mut r = StatusReport::default();
            f(&mut r);
            r
        };
        #[rustfmt::skip]
        let cases: [(&str, StatusReport); 8] = [
            ("{}", StatusReport::default()),
            (r#"{"peers": [{}]}"#, with(|r| r.peers = vec![PeerStatus::default()])),
            (r#"{"backends": [{}]}"#, with(|r| r.backends = vec![BackendStatus::default()])),
            (r#"{"heartbeat": {}}"#, StatusReport::default()),
            (r#"{"events": [{}]}"#, with(|r| r.events = vec![EventRecord::default()])),
            (r#"{"dataplane": {"tables": {"udp": {}}}}"#,
                with(|r| { r.dataplane.tables.insert("udp".into(), TablePart::default()); })),
            (r#"{"sync": {"lag_ms": null}}"#, StatusReport::default()),
            (r#"{"vip_holder": null, "history": {}}"#, StatusReport::default()),
        ];
        for (text, want) in cases {
            let got: StatusReport =
                serde_json::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(got, want, "{text}");
        }
    }
}
