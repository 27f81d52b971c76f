//! The status page, the one renderer of it: complete HTML from one
//! snapshot, readable without JavaScript (a `<noscript>` meta refresh
//! reloads it every 5 s). With JavaScript, `page.js` fetches `/` every
//! second and moves the new page's `data-live` sections in, so the browser
//! never builds a section of its own and the page cannot drift from what
//! this file draws. Every report string goes through [`esc`]; the charts and
//! the timeline are `data:` images (see `chart`), which cannot run script.
//! A Content-Security-Policy in the page allows only the page's own script
//! (by its SHA-256) and same-origin fetches, as a second line of defence.

use super::model::{BackendStatus, DataplaneStats, StatusReport, ROLES};
use super::render::{base64, esc, fmt_unix_ms, Pictures};
use sha2::{Digest, Sha256};
use std::fmt::Write;

/// Events shown on the page; the JSON carries whatever the daemon put in.
const PAGE_EVENTS: usize = 50;

const CSS: &str = include_str!("page.css");

/// The page's only script.
const SCRIPT: &str = include_str!("page.js");

/// CSS class suffix for a role; anything unexpected becomes "unknown" so a
/// role string can never inject a class name.
fn role_class(role: &str) -> &'static str {
    ROLES
        .iter()
        .find(|r| **r == role)
        .copied()
        .unwrap_or("unknown")
}

/// "12 / 3 / 0 · evicted 0 / 0 · SYN flood": occupancy of the connection
/// table's parts, evictions of the two evictable ones, and pressure.
fn tables_line(dp: &DataplaneStats) -> String {
    let part = |k: &str| dp.tables.get(k).cloned().unwrap_or_default();
    let (e, h, u) = (part("established"), part("embryonic"), part("udp"));
    let mut s = format!(
        "{} / {} / {} · evicted {} / {}",
        e.entries, h.entries, u.entries, h.evicted, u.evicted
    );
    if h.pressure {
        s.push_str(" · SYN flood");
    }
    if u.pressure {
        s.push_str(" · UDP flood");
    }
    s
}

fn fmt_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    format!("{v:.1} {}", UNITS[i])
}

fn fmt_age(ms: Option<u64>) -> String {
    match ms {
        None => "never".to_string(),
        Some(ms) if ms < 1000 => format!("{ms} ms ago"),
        Some(ms) => format!("{:.1} s ago", ms as f64 / 1000.0),
    }
}

/// The batch of a peer's sync position, "-" without a stream.
fn fmt_sync_batch(pos: u64, batch: u64) -> String {
    if pos == 0 {
        "-".to_string()
    } else {
        batch.to_string()
    }
}

fn csp() -> String {
    let hash = base64(&Sha256::digest(SCRIPT.as_bytes()));
    format!(
        "default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-{hash}'; \
         connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'"
    )
}

fn node_card(out: &mut String, name: &str, role: &str, extra_class: &str, meta: &[(&str, String)]) {
    let _ = write!(
        out,
        "<div class=\"node{extra_class}\" data-node=\"{n}\" data-role=\"{r}\">\
         <div class=\"nhead\"><span class=\"nname\">{n}</span>\
         <span class=\"badge role-{rc}\">{r}</span></div><dl class=\"nmeta\">",
        n = esc(name),
        r = esc(role),
        rc = role_class(role),
    );
    for (k, v) in meta {
        let _ = write!(out, "<dt>{}</dt><dd>{}</dd>", esc(k), esc(v));
    }
    out.push_str("</dl></div>");
}

fn nodes(out: &mut String, r: &StatusReport) {
    out.push_str("<section><h2>Nodes</h2><div id=\"nodes\" class=\"cards\" data-live>");
    let holder = r.vip_holder.as_deref();
    let self_class = if holder == Some(r.node.as_str()) {
        " self holder"
    } else {
        " self"
    };
    node_card(
        out,
        &r.node,
        &r.role,
        self_class,
        &[
            (
                "priority",
                format!("{} (effective {})", r.priority, r.effective_priority),
            ),
            ("term", r.term.to_string()),
            ("heartbeat", "this node".into()),
            ("uptime", format!("{} s", r.uptime_s)),
        ],
    );
    for p in &r.peers {
        let class = if holder == Some(p.node.as_str()) {
            " holder"
        } else {
            ""
        };
        node_card(
            out,
            &p.node,
            &p.role,
            class,
            &[
                ("priority", p.priority.to_string()),
                ("term", p.term.to_string()),
                ("heartbeat", fmt_age(p.last_heard_ms)),
                ("address", p.address.clone()),
                ("key", p.key.clone().unwrap_or_else(|| "-".into())),
                ("sync batch", fmt_sync_batch(p.sync_pos, p.sync_batch)),
            ],
        );
    }
    out.push_str("</div></section>");
}

fn backend_row(out: &mut String, b: &BackendStatus) {
    let state = if b.drained {
        "drained"
    } else if b.healthy {
        "up"
    } else {
        "down"
    };
    let _ = write!(
        out,
        "<tr class=\"backend {state}\" data-backend=\"{n}\" data-vip=\"{v}\" data-service=\"{s}\" \
         data-healthy=\"{h}\" data-drained=\"{d}\">\
         <td><span class=\"dot {state}\" title=\"{state}\"></span> <b class=\"bname\">{n}</b>",
        n = esc(&b.name),
        v = esc(&b.vip),
        s = esc(&b.service),
        h = b.healthy,
        d = b.drained,
    );
    if b.local {
        out.push_str(" <span class=\"tag\">local</span>");
    }
    if b.fallback {
        out.push_str(" <span class=\"tag\">fallback</span>");
    }
    if b.drained {
        out.push_str(" <span class=\"tag drained\">drained</span>");
    }
    let check = match (b.check_latency_ms, &b.last_check) {
        (Some(ms), Some(c)) => format!("{c} ({ms:.1} ms)"),
        (Some(ms), None) => format!("{ms:.1} ms"),
        (None, Some(c)) => c.clone(),
        (None, None) => "-".to_string(),
    };
    let action = if b.drained { "undrain" } else { "drain" };
    // The fallback is not a pool member: there is nothing to drain.
    let button = if b.fallback {
        String::new()
    } else {
        format!(
            "<button type=\"button\" data-action=\"{action}\" data-name=\"{n}\">{action}</button>",
            n = esc(&b.name)
        )
    };
    let _ = write!(
        out,
        "<br><small class=\"addr\">{a} · {s}</small></td>\
         <td class=\"weight\">{w}/{cw}</td>\
         <td class=\"conns\"><span class=\"active\">{ac}</span> / <span class=\"total\">{tc}</span></td>\
         <td class=\"traffic\">{p} pkts · {by}</td>\
         <td class=\"rate\" data-rate=\"{key}\" data-bytes=\"{bytes}\" data-packets=\"{p}\">-</td>\
         <td class=\"check\">{check}</td>\
         <td>{button}</td></tr>",
        a = esc(&b.address),
        s = esc(&b.service),
        w = b.weight,
        cw = b.configured_weight,
        ac = b.active_connections,
        tc = b.total_connections,
        p = b.packets,
        by = fmt_bytes(b.bytes),
        bytes = b.bytes,
        key = esc(&format!("{}|{}|{}|{}", b.name, b.vip, b.service, b.address)),
        check = esc(&check),
    );
}

/// Every VIP; a report from before there were several names one.
fn vips_of(r: &StatusReport) -> &[String] {
    if r.vips.is_empty() {
        std::slice::from_ref(&r.vip)
    } else {
        &r.vips
    }
}

fn backends(out: &mut String, r: &StatusReport) {
    out.push_str(
        "<section><h2>Backends</h2><div class=\"scroll\"><table id=\"backends\" data-live><thead><tr>\
         <th>backend</th><th>weight</th><th>active / total</th><th>traffic</th>\
         <th>rate</th><th>check</th><th></th></tr></thead><tbody>",
    );
    // Grouped by VIP once there are several, in the cluster's order.
    let vips = vips_of(r);
    let grouped = vips.len() > 1;
    for vip in vips {
        if grouped {
            let _ = write!(
                out,
                "<tr class=\"vip-group\" data-vip=\"{v}\"><th colspan=\"7\">VIP {v}</th></tr>",
                v = esc(vip)
            );
        }
        for b in r.backends.iter().filter(|b| &b.vip == vip) {
            backend_row(out, b);
        }
    }
    // A report from before VIPs were named per backend.
    for b in r.backends.iter().filter(|b| !vips.contains(&b.vip)) {
        backend_row(out, b);
    }
    out.push_str("</tbody></table></div></section>");
}

fn pictures(out: &mut String, r: &StatusReport) {
    let pics = Pictures::of(r);
    out.push_str("<section><h2>Last 10 minutes</h2><div id=\"charts\" class=\"charts\" data-live>");
    for (service, uri) in &pics.charts {
        let _ = write!(
            out,
            "<figure><figcaption>{s}</figcaption><img class=\"chart\" data-chart=\"{s}\" \
             alt=\"{s}: new and active connections\" src=\"{uri}\"></figure>",
            s = esc(service),
            uri = esc(uri),
        );
    }
    let _ = write!(
        out,
        "</div><figure><figcaption>role changes and health transitions</figcaption>\
         <img id=\"timeline\" class=\"chart\" data-live \
         alt=\"timeline of role changes and health transitions\" src=\"{}\"></figure></section>",
        esc(&pics.timeline)
    );
}

fn traffic(out: &mut String, r: &StatusReport) {
    let dropped: u64 = r.heartbeat.dropped.values().sum();
    let dp_drops: u64 = r.dataplane.drops.values().sum();
    let _ = write!(
        out,
        "<section><h2>Traffic</h2><dl id=\"stats\" class=\"stats\" data-live>\
         <dt>heartbeats sent / received / dropped</dt><dd id=\"hb\">{} / {} / {}</dd>\
         <dt>packets rx / tx</dt><dd id=\"dp-packets\">{} / {}</dd>\
         <dt>bytes rx</dt><dd id=\"dp-bytes\">{}</dd>\
         <dt>packets delivered locally</dt><dd id=\"dp-local\">{}</dd>\
         <dt>VIP conflicts seen</dt><dd id=\"dp-conflicts\">{}</dd>\
         <dt>rx rate</dt><dd id=\"dp-rate\" data-rate=\"vip\" data-bytes=\"{}\" data-packets=\"{}\">-</dd>\
         <dt>connections</dt><dd id=\"dp-conns\">{}</dd>\
         <dt>flows established / half-open / udp</dt><dd id=\"dp-tables\">{}</dd>\
         <dt>drops</dt><dd id=\"dp-drops\">{}</dd>\
         <dt>sync synced / lag</dt><dd id=\"sync\">{} / {} entries{}</dd></dl></section>",
        r.heartbeat.sent,
        r.heartbeat.received,
        dropped,
        r.dataplane.rx_packets,
        r.dataplane.tx_packets,
        fmt_bytes(r.dataplane.rx_bytes),
        r.dataplane.local_packets,
        r.dataplane.vip_conflicts,
        r.dataplane.rx_bytes,
        r.dataplane.rx_packets,
        r.dataplane.connections,
        esc(&tables_line(&r.dataplane)),
        dp_drops,
        r.sync.connections_synced,
        r.sync.lag_entries,
        r.sync
            .lag_ms
            .map(|ms| format!(", {ms} ms"))
            .unwrap_or_default(),
    );
}

fn events(out: &mut String, r: &StatusReport) {
    out.push_str("<section><h2>Events</h2><ol id=\"events\" data-live>");
    for e in r.events.iter().take(PAGE_EVENTS) {
        let _ = write!(
            out,
            "<li class=\"event\" data-kind=\"{k}\"><time>{t}</time> <span class=\"kind\">{k}</span> \
             <span class=\"msg\">{m}</span></li>",
            k = esc(&e.kind),
            t = fmt_unix_ms(e.ts_ms),
            m = esc(&e.message),
        );
    }
    out.push_str("</ol></section>");
}

/// The status page: self-contained, no external assets.
pub fn html(r: &StatusReport) -> String {
    let mut out = String::with_capacity(32 * 1024);
    let _ = write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"{csp}\">\
         <title>duet · {node} · {role}</title>\
         <noscript><meta http-equiv=\"refresh\" content=\"5\"></noscript>\
         <style>{CSS}</style></head><body data-role=\"{role}\">\
         <header id=\"top\" data-live><span id=\"role\" class=\"badge big role-{rc}\">{role}</span>\
         <div class=\"hinfo\"><div>duet node <b id=\"node\">{node}</b> · term <b id=\"term\">{term}</b></div>\
         <div>VIP <b id=\"vip\">{vip}</b> held by <b id=\"vip-holder\">{holder}</b></div></div></header><main>",
        csp = esc(&csp()),
        node = esc(&r.node),
        role = esc(&r.role),
        rc = role_class(&r.role),
        term = r.term,
        vip = vips_of(r)
            .iter()
            .map(|v| esc(v))
            .collect::<Vec<_>>()
            .join("</b>, <b>"),
        holder = esc(r.vip_holder.as_deref().unwrap_or("nobody")),
    );
    nodes(&mut out, r);
    backends(&mut out, r);
    pictures(&mut out, r);
    traffic(&mut out, r);
    events(&mut out, r);
    // The admin section is not live: a token being typed and the last
    // action's message survive the refresh.
    let _ = write!(
        out,
        "<section id=\"admin\"><details><summary>Admin</summary>\
         <p>Drain, undrain, failover, reload and upgrade need the admin token; it is kept in this browser only.</p>\
         <input id=\"token\" type=\"password\" autocomplete=\"off\" placeholder=\"admin token\">\
         <button type=\"button\" id=\"save-token\">save token</button> \
         <button type=\"button\" data-action=\"failover\">failover</button> \
         <button type=\"button\" data-action=\"reload\" title=\"read the config file again\">reload config</button> \
         <button type=\"button\" data-action=\"pair\" title=\"a one-time code for the other box's setup page\">pair a box</button>\
         <p>Upgrade (appliance): the image's <code>upgrade.tar</code> goes into the other boot slot, boots once and stays only if this box then hears its peer.</p>\
         <input id=\"upgrade-file\" type=\"file\" accept=\".tar\"> \
         <button type=\"button\" data-action=\"upgrade\">upgrade</button></details>\
         <p id=\"msg\" role=\"status\"></p></section></main>\
         <footer>duet <span id=\"version\" data-live>{ver}</span> · <span id=\"updated\">rendered by server</span></footer>\
         <script>{SCRIPT}</script></body></html>",
        ver = esc(&r.version),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::fixture::sample_report;

    #[test]
    fn html_contains_every_node_and_backend() {
        let r = sample_report();
        let page = html(&r);
        assert!(page.starts_with("<!doctype html>"));
        assert!(page.contains("id=\"role\""));
        assert!(page.contains("id=\"vip\">198.18.0.100<"));
        assert!(
            page.contains("class=\"node self holder\" data-node=\"web1\" data-role=\"director\"")
        );
        assert!(page.contains("class=\"node\" data-node=\"web2\" data-role=\"standby\""));
        assert!(page.contains("data-backend=\"web2\""));
        assert!(page.contains("<dt>key</dt><dd>next</dd>"));
        assert!(page.contains("<dt>sync batch</dt><dd>42</dd>"));
        assert!(page.contains("80 ms ago"));
        assert!(page.contains("2023-11-14 22:13:20Z"));
        assert_eq!(page.matches("<tr class=\"backend").count(), 2);
        assert_eq!(page.matches("<li class=\"event\"").count(), 1);
        assert!(page.contains("id=\"upgrade-file\" type=\"file\""));
        assert!(page.contains("id=\"dp-tables\">3 / 49152 / 0 · evicted 120000 / 0 · SYN flood<"));
        // Self-contained: nothing is loaded from elsewhere.
        assert!(!page.contains("src=\"http"));
        assert!(!page.contains("href=\"http"));
    }

    /// What the script moves in on a refresh: every section that shows the
    /// snapshot, each with an id to find its place by, and nothing of the
    /// admin form.
    #[test]
    fn live_sections_are_the_snapshot_and_only_it() {
        let page = html(&sample_report());
        // The script names the attribute too.
        let page = &page[..page.find("<script>").unwrap()];
        let mut live: Vec<&str> = page
            .match_indices(" data-live")
            .map(|(i, _)| {
                let tag = &page[page[..i].rfind('<').unwrap()..i];
                let id = tag.split("id=\"").nth(1).expect("a live tag has an id");
                &id[..id.find('"').unwrap()]
            })
            .collect();
        live.sort_unstable();
        assert_eq!(
            live,
            ["backends", "charts", "events", "nodes", "stats", "timeline", "top", "version"]
        );
        let admin = &page[page.find("id=\"admin\"").unwrap()..page.find("<footer").unwrap()];
        assert!(!admin.contains("data-live"));
    }

    /// The script reads rates from attributes: they carry the raw counters.
    #[test]
    fn rate_cells_carry_their_counters() {
        let page = html(&sample_report());
        assert!(page.contains(
            "<td class=\"rate\" data-rate=\"web2|198.18.0.100|tcp/80|198.18.0.2\" data-bytes=\"3000000\" \
             data-packets=\"5000\">-</td>"
        ));
        assert!(page.contains(
            "id=\"dp-rate\" data-rate=\"vip\" data-bytes=\"12345\" data-packets=\"100\""
        ));
    }

    #[test]
    fn html_escapes_report_strings() {
        let page = html(&sample_report());
        assert!(!page.contains("<script>alert"));
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(!page.contains("\"><img"));
        assert!(page.contains("&lt;peer dead&gt;"));
        assert!(!page.contains("timeout <b>"));
        // Exactly one script element: the page's own.
        assert_eq!(page.matches("<script").count(), 1);
    }

    #[test]
    fn html_role_cannot_inject_a_class() {
        let mut r = sample_report();
        r.role = "x\" onclick=\"evil".into();
        let page = html(&r);
        assert!(page.contains("role-unknown"));
        assert!(!page.contains("onclick=\"evil"));
    }

    #[test]
    fn csp_hash_matches_script() {
        let page = html(&sample_report());
        let hash = base64(&Sha256::digest(SCRIPT.as_bytes()));
        // Attribute-escaped: the browser reads &#39; as a quote.
        assert!(page.contains(&format!("&#39;sha256-{hash}&#39;")));
        assert!(!SCRIPT.contains("</script"));
        assert!(!CSS.contains("</style"));
    }

    /// The script draws nothing: it has no element constructor left.
    #[test]
    fn script_builds_no_elements() {
        for builder in [
            "createElement",
            "innerHTML",
            "appendChild",
            "insertAdjacent",
        ] {
            assert!(!SCRIPT.contains(builder), "page.js uses {builder}");
        }
    }
}
