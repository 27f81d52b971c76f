//! `duet status`: the report as the few lines an operator reads in a
//! terminal (who directs, the peers, the backends by VIP, the table, the
//! newest events).
use std::fmt::Write;

use super::model::StatusReport;

/// Event ages count from `now_ms` (wall clock, ms).
pub fn render(r: &StatusReport, now_ms: u64) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "node {} is {} (term {}), VIP {} held by {}",
        r.node,
        r.role,
        r.term,
        if r.vips.is_empty() {
            r.vip.clone()
        } else {
            r.vips.join(", ")
        },
        r.vip_holder.as_deref().unwrap_or("nobody")
    );
    for p in &r.peers {
        let heard = p
            .last_heard_ms
            .map_or("never".to_string(), |ms| format!("{ms} ms ago"));
        let key = match p.key.as_deref() {
            Some("next") => ", signs with our next key",
            _ => "",
        };
        let _ = writeln!(
            out,
            "  peer {} ({}) {} — heard {heard}, sync batch {}{key}",
            p.node, p.address, p.role, p.sync_batch
        );
    }
    // Grouped by VIP: the report lists them in service order.
    let grouped = r.vips.len() > 1;
    let mut backends: Vec<_> = r.backends.iter().collect();
    backends.sort_by_key(|b| r.vips.iter().position(|v| *v == b.vip));
    let mut last_vip = None;
    for b in backends {
        if grouped && last_vip != Some(&b.vip) {
            let _ = writeln!(out, "  VIP {}", b.vip);
            last_vip = Some(&b.vip);
        }
        let _ = writeln!(
            out,
            "  {:<12} {:<15} {:<7} {:<9} weight {:<3}{} active {} total {}",
            b.name,
            b.address,
            b.service,
            if b.healthy { "up" } else { "DOWN" },
            b.weight,
            if b.drained { " (drained)" } else { "" },
            b.active_connections,
            b.total_connections
        );
    }
    let dp = &r.dataplane;
    let _ = writeln!(
        out,
        "  {} engine: {} connections tracked, {} packets dropped; sync: {} connections synced, {} entries unacknowledged",
        if dp.engine.is_empty() { "data plane" } else { &dp.engine },
        dp.connections,
        dp.drops.values().sum::<u64>(),
        r.sync.connections_synced,
        r.sync.lag_entries
    );
    // Table parts: where a flood shows first.
    let parts: Vec<String> = dp
        .tables
        .iter()
        .map(|(kind, t)| {
            format!(
                "{kind} {}/{}{}{}",
                t.entries,
                t.limit,
                if t.evicted > 0 {
                    format!(" ({} evicted)", t.evicted)
                } else {
                    String::new()
                },
                if t.pressure { " UNDER PRESSURE" } else { "" }
            )
        })
        .collect();
    if !parts.is_empty() {
        let _ = writeln!(out, "  flows: {}", parts.join(", "));
    }
    // The operator's first question after "who directs" is "what just
    // happened": the newest events, with their age.
    const EVENTS: usize = 5;
    if !r.events.is_empty() {
        out.push_str("  recent events:\n");
        for e in r.events.iter().take(EVENTS) {
            let age = now_ms.saturating_sub(e.ts_ms) / 1000;
            let _ = writeln!(out, "    {age:>6} s ago  {:<7} {}", e.kind, e.message);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::fixture::sample_report;
    use super::*;

    #[test]
    fn the_report_in_lines() {
        let r = sample_report();
        let now = r.events[0].ts_ms + 90_500;
        let text = render(&r, now);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "node web1 is director (term 7), VIP 198.18.0.100 held by web1"
        );
        assert_eq!(
            lines[1],
            "  peer web2 (198.18.0.2) standby — heard 80 ms ago, sync batch 42, signs with our next key"
        );
        assert!(
            lines[2].starts_with("  web2 ") && lines[2].contains(" up "),
            "{}",
            lines[2]
        );
        assert!(lines[2].ends_with("active 3 total 120"), "{}", lines[2]);
        assert!(
            lines[3].contains("DOWN") && lines[3].contains("(drained)"),
            "{}",
            lines[3]
        );
        assert!(
            lines[4].contains("3 connections tracked, 1 packets dropped"),
            "{}",
            lines[4]
        );
        assert_eq!(
            lines[5],
            "  flows: embryonic 49152/65536 (120000 evicted) UNDER PRESSURE, established 3/262144"
        );
        assert_eq!(lines[6], "  recent events:");
        assert!(
            lines[7].trim_start().starts_with("90 s ago  role"),
            "{}",
            lines[7]
        );
        // One VIP: no group headings.
        assert!(!text.contains("  VIP "));
    }

    #[test]
    fn backends_group_by_vip_in_the_reports_order() {
        let mut r = sample_report();
        r.vips = vec!["198.18.0.100".into(), "198.18.0.101".into()];
        r.backends[0].vip = "198.18.0.101".into();
        r.peers[0].last_heard_ms = None;
        r.vip_holder = None;
        r.events.clear();
        r.dataplane.tables.clear();
        let text = render(&r, 0);
        assert!(text.starts_with(
            "node web1 is director (term 7), VIP 198.18.0.100, 198.18.0.101 held by nobody\n"
        ));
        assert!(text.contains("heard never"));
        let first = text.find("  VIP 198.18.0.100").unwrap();
        let second = text.find("  VIP 198.18.0.101").unwrap();
        let drained = text.find("(drained)").unwrap();
        let web2 = text.find("  web2 ").unwrap();
        assert!(
            first < drained && drained < second && second < web2,
            "{text}"
        );
        assert!(!text.contains("flows:") && !text.contains("recent events"));
    }
}
