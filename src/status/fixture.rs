//! One report for the renderers' tests: two nodes, a healthy and a drained
//! backend, and strings that try to break out of HTML and label values.

use super::model::{
    BackendStatus, DataplaneStats, EventRecord, HeartbeatStats, PeerStatus, StatusReport,
    SyncStats, TablePart,
};
use std::collections::BTreeMap;

pub(crate) fn sample_report() -> StatusReport {
    StatusReport {
        node: "web1".into(),
        role: "director".into(),
        term: 7,
        vip: "198.18.0.100".into(),
        vips: vec!["198.18.0.100".into()],
        vip_holder: Some("web1".into()),
        priority: 150,
        effective_priority: 140,
        uptime_s: 3600,
        version: "0.1.0".into(),
        peers: vec![PeerStatus {
            node: "web2".into(),
            address: "198.18.0.2".into(),
            role: "standby".into(),
            priority: 100,
            last_heard_ms: Some(80),
            term: 7,
            key: Some("next".into()),
            sync_pos: 0x0000_0123_0000_002a,
            sync_batch: 42,
        }],
        backends: vec![
            BackendStatus {
                name: "web2".into(),
                address: "198.18.0.2".into(),
                vip: "198.18.0.100".into(),
                service: "tcp/80".into(),
                healthy: true,
                weight: 1,
                configured_weight: 1,
                active_connections: 3,
                total_connections: 120,
                packets: 5000,
                bytes: 3_000_000,
                check_latency_ms: Some(1.5),
                last_check: Some("ok".into()),
                ..Default::default()
            },
            BackendStatus {
                name: "<script>alert(1)</script>".into(),
                address: "198.18.0.21\"><img src=x>".into(),
                vip: "198.18.0.100".into(),
                service: "tcp/80".into(),
                healthy: false,
                drained: true,
                last_check: Some("timeout <b>".into()),
                ..Default::default()
            },
        ],
        heartbeat: HeartbeatStats {
            sent: 10,
            received: 9,
            dropped: BTreeMap::from([("auth".into(), 1), ("we\"ird\\\n".into(), 2)]),
            ..Default::default()
        },
        dataplane: DataplaneStats {
            rx_packets: 100,
            tx_packets: 99,
            rx_bytes: 12345,
            connections: 3,
            drops: BTreeMap::from([("no_backend".into(), 1)]),
            tables: BTreeMap::from([
                (
                    "embryonic".into(),
                    TablePart {
                        entries: 49152,
                        limit: 65536,
                        evicted: 120000,
                        pressure: true,
                    },
                ),
                (
                    "established".into(),
                    TablePart {
                        entries: 3,
                        limit: 262144,
                        ..Default::default()
                    },
                ),
            ]),
            promoted: 40,
            promote_refused: 0,
            ..Default::default()
        },
        sync: SyncStats {
            connections_synced: 3,
            lag_entries: 0,
            lag_ms: Some(5),
            rejected: 2,
        },
        events: vec![EventRecord {
            ts_ms: 1_700_000_000_123,
            kind: "role".into(),
            message: "standby -> director: <peer dead>".into(),
        }],
        ..Default::default()
    }
}
