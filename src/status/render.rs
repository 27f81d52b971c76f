//! Pure renderers: `StatusReport` to an HTML page, Prometheus text and JSON.
//!
//! The HTML page is rendered complete on the server (it is readable without
//! JavaScript and refreshes itself every 5 s through a `<noscript>` meta
//! refresh); with JavaScript it polls `/api/status` every second and rebuilds
//! the same DOM with `textContent` only, so report strings never reach an HTML
//! parser on the client; the charts and the timeline come drawn in the JSON
//! (`pictures`, see `chart`) and are shown as `data:` images, which cannot
//! run script. Server-side every string goes through [`esc`]. A
//! Content-Security-Policy in the page allows only the page's own script (by
//! its SHA-256) and same-origin fetches, as a second line of defence.

use super::chart;
use super::model::{BackendStatus, StatusReport};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

/// Roles the daemon reports; `duet_role` exports one series per role so that
/// an alert can match `duet_role{role="director"} == 1`.
const ROLES: [&str; 4] = ["director", "standby", "starting", "leaving"];

/// Events shown on the page; the JSON carries whatever the daemon put in.
const PAGE_EVENTS: usize = 50;

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
/// table's parts, evictions of the two evictable ones, and pressure. The
/// page's script (`tl`) writes the same.
fn tables_line(dp: &crate::status::model::DataplaneStats) -> String {
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

/// The batch of a peer's sync position, "-" without a stream (as the
/// page's script shows it).
fn fmt_sync_batch(pos: u64, batch: u64) -> String {
    if pos == 0 {
        "-".to_string()
    } else {
        batch.to_string()
    }
}

/// "YYYY-MM-DD HH:MM:SSZ" for a unix time in ms (the same string the page's
/// script produces with `toISOString`).
pub fn fmt_unix_ms(ts_ms: u64) -> String {
    let secs = ts_ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

fn csp() -> String {
    let hash = base64(&Sha256::digest(SCRIPT.as_bytes()));
    format!(
        "default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-{hash}'; \
         connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'"
    )
}

fn node_card(
    out: &mut String,
    name: &str,
    role: &str,
    extra_class: &str,
    meta: &[(String, String)],
) {
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
        "<tr class=\"backend {state}\" data-backend=\"{n}\" data-service=\"{s}\" \
         data-healthy=\"{h}\" data-drained=\"{d}\">\
         <td><span class=\"dot {state}\" title=\"{state}\"></span> <b class=\"bname\">{n}</b>",
        n = esc(&b.name),
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
         <td class=\"rate\">-</td>\
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
        check = esc(&check),
    );
}

/// The charts and the timeline as `data:` URIs, for the page and, in
/// `/api/status`, for the page's script to swap in: drawn once, here.
#[derive(Serialize)]
struct Pictures {
    /// By service ("tcp/80").
    charts: BTreeMap<String, String>,
    timeline: String,
}

impl Pictures {
    fn of(r: &StatusReport) -> Pictures {
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

/// The status page: self-contained, no external assets.
pub fn html(r: &StatusReport) -> String {
    let mut out = String::with_capacity(16 * 1024);
    let rc = role_class(&r.role);
    let _ = write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"{csp}\">\
         <title>duet · {node} · {role}</title>\
         <noscript><meta http-equiv=\"refresh\" content=\"5\"></noscript>\
         <style>{CSS}</style></head><body data-role=\"{role}\">\
         <header><span id=\"role\" class=\"badge big role-{rc}\">{role}</span>\
         <div class=\"hinfo\"><div>duet node <b id=\"node\">{node}</b> · term <b id=\"term\">{term}</b></div>\
         <div>VIP <b id=\"vip\">{vip}</b> held by <b id=\"vip-holder\">{holder}</b></div></div></header><main>",
        csp = esc(&csp()),
        node = esc(&r.node),
        role = esc(&r.role),
        term = r.term,
        vip = esc(&r.vip),
        holder = esc(r.vip_holder.as_deref().unwrap_or("nobody")),
    );

    out.push_str("<section><h2>Nodes</h2><div id=\"nodes\" class=\"cards\">");
    let holder = r.vip_holder.as_deref();
    let self_class = if holder == Some(r.node.as_str()) {
        " self holder"
    } else {
        " self"
    };
    node_card(
        &mut out,
        &r.node,
        &r.role,
        self_class,
        &[
            (
                "priority".into(),
                format!("{} (effective {})", r.priority, r.effective_priority),
            ),
            ("term".into(), r.term.to_string()),
            ("heartbeat".into(), "this node".into()),
            ("uptime".into(), format!("{} s", r.uptime_s)),
        ],
    );
    for p in &r.peers {
        let class = if holder == Some(p.node.as_str()) {
            " holder"
        } else {
            ""
        };
        node_card(
            &mut out,
            &p.node,
            &p.role,
            class,
            &[
                ("priority".into(), p.priority.to_string()),
                ("term".into(), p.term.to_string()),
                ("heartbeat".into(), fmt_age(p.last_heard_ms)),
                ("address".into(), p.address.clone()),
                ("key".into(), p.key.clone().unwrap_or_else(|| "-".into())),
                (
                    "sync batch".into(),
                    fmt_sync_batch(p.sync_pos, p.sync_batch),
                ),
            ],
        );
    }
    out.push_str("</div></section>");

    out.push_str(
        "<section><h2>Backends</h2><div class=\"scroll\"><table id=\"backends\"><thead><tr>\
         <th>backend</th><th>weight</th><th>active / total</th><th>traffic</th>\
         <th>rate</th><th>check</th><th></th></tr></thead><tbody>",
    );
    for b in &r.backends {
        backend_row(&mut out, b);
    }
    out.push_str("</tbody></table></div></section>");

    let pics = Pictures::of(r);
    out.push_str("<section><h2>Last 10 minutes</h2><div id=\"charts\" class=\"charts\">");
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
         <img id=\"timeline\" class=\"chart\" alt=\"timeline of role changes and health transitions\" \
         src=\"{}\"></figure></section>",
        esc(&pics.timeline)
    );

    let dropped: u64 = r.heartbeat.dropped.values().sum();
    let dp_drops: u64 = r.dataplane.drops.values().sum();
    let _ = write!(
        out,
        "<section><h2>Traffic</h2><dl id=\"stats\" class=\"stats\">\
         <dt>heartbeats sent / received / dropped</dt><dd id=\"hb\">{} / {} / {}</dd>\
         <dt>packets rx / tx</dt><dd id=\"dp-packets\">{} / {}</dd>\
         <dt>bytes rx</dt><dd id=\"dp-bytes\">{}</dd>\
         <dt>packets delivered locally</dt><dd id=\"dp-local\">{}</dd>\
         <dt>VIP conflicts seen</dt><dd id=\"dp-conflicts\">{}</dd>\
         <dt>rx rate</dt><dd id=\"dp-rate\">-</dd>\
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

    out.push_str("<section><h2>Events</h2><ol id=\"events\">");
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

    let _ = write!(
        out,
        "<section id=\"admin\"><details><summary>Admin</summary>\
         <p>Drain, undrain, failover and reload need the admin token; it is kept in this browser only.</p>\
         <input id=\"token\" type=\"password\" autocomplete=\"off\" placeholder=\"admin token\">\
         <button type=\"button\" id=\"save-token\">save token</button> \
         <button type=\"button\" data-action=\"failover\">failover</button> \
         <button type=\"button\" data-action=\"reload\" title=\"read the config file again\">reload config</button></details>\
         <p id=\"msg\" role=\"status\"></p></section></main>\
         <footer>duet <span id=\"version\">{ver}</span> · <span id=\"updated\">rendered by server</span></footer>\
         <script>{SCRIPT}</script></body></html>",
        ver = esc(&r.version),
    );
    out
}

const CSS: &str = "\
:root{--bg:#fff;--fg:#1b1f24;--mut:#656d76;--card:#f4f6f8;--line:#d0d7de;\
--dir:#1a7f37;--stb:#0969da;--sta:#bf8700;--lea:#6e7781;--bad:#cf222e}\
@media (prefers-color-scheme:dark){:root{--bg:#0d1117;--fg:#e6edf3;--mut:#8d96a0;\
--card:#161b22;--line:#30363d}}\
*{box-sizing:border-box}\
body{margin:0;font:16px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;background:var(--bg);color:var(--fg)}\
body.stale main{opacity:.55}\
header{display:flex;flex-wrap:wrap;gap:1rem;align-items:center;padding:1rem;border-bottom:1px solid var(--line)}\
main{padding:0 1rem 1rem;max-width:72rem}\
h2{font-size:1.05rem;margin:1.2rem 0 .5rem;color:var(--mut);text-transform:uppercase;letter-spacing:.05em}\
.badge{display:inline-block;padding:.15em .6em;border-radius:.4em;color:#fff;font-weight:600;background:var(--lea)}\
.badge.big{font-size:2.2rem;padding:.2em .7em;text-transform:uppercase}\
.role-director{background:var(--dir)}.role-standby{background:var(--stb)}\
.role-starting{background:var(--sta)}.role-leaving,.role-unknown{background:var(--lea)}\
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(16rem,1fr));gap:.8rem}\
.node{background:var(--card);border:2px solid var(--line);border-radius:.6rem;padding:.7rem}\
.node.self{border-color:var(--mut)}.node.holder{box-shadow:0 0 0 3px var(--dir)}\
.nhead{display:flex;justify-content:space-between;align-items:center;font-size:1.2rem;font-weight:600}\
dl{display:grid;grid-template-columns:auto 1fr;gap:.1rem .8rem;margin:.5rem 0 0}\
dt{color:var(--mut)}dd{margin:0}\
.scroll{overflow-x:auto}\
table{border-collapse:collapse;width:100%}\
th,td{text-align:left;padding:.4rem .5rem;border-bottom:1px solid var(--line);vertical-align:top;white-space:nowrap}\
th{color:var(--mut);font-weight:500}\
small,.addr{color:var(--mut)}\
.dot{display:inline-block;width:.8em;height:.8em;border-radius:50%;background:var(--lea)}\
.dot.up{background:var(--dir)}.dot.down{background:var(--bad)}.dot.drained{background:var(--sta)}\
tr.down .bname{color:var(--bad)}\
.tag{font-size:.75rem;border:1px solid var(--line);border-radius:.3em;padding:0 .3em;color:var(--mut)}\
.tag.drained{color:var(--sta);border-color:var(--sta)}\
button{font:inherit;padding:.3rem .8rem;border-radius:.4rem;border:1px solid var(--line);background:var(--card);color:var(--fg)}\
input{font:inherit;padding:.3rem;max-width:100%}\
#events{list-style:none;padding:0;margin:0;font-size:.92rem}\
#events li{padding:.2rem 0;border-bottom:1px solid var(--line)}\
#events time{color:var(--mut);font-variant-numeric:tabular-nums}\
.kind{font-weight:600}\
footer{padding:1rem;color:var(--mut);font-size:.85rem}\
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(100%,24rem),1fr));gap:.8rem}\
figure{margin:0 0 .8rem;min-width:0}figcaption{font-weight:600;margin-bottom:.2rem}\
img.chart{display:block;width:100%;max-width:34rem;height:auto;background:var(--card);border-radius:.4rem;padding:.3rem}\
header,main,section{min-width:0}.hinfo{min-width:0;overflow-wrap:anywhere}\
#events li{overflow-wrap:anywhere}\
@media (max-width:40rem){.badge.big{font-size:1.7rem;width:100%;text-align:center}\
#stats{grid-template-columns:minmax(0,1fr)}#stats dd{margin-bottom:.35rem;font-weight:600}\
#backends thead{display:none}#backends tr{display:block;padding:.4rem 0;border-bottom:1px solid var(--line)}\
#backends td{display:inline-block;border:0;padding:.1rem .5rem .1rem 0;white-space:normal}\
#backends td:first-child{display:block}\
#backends td.weight::before{content:\"weight \";color:var(--mut)}\
#backends td.conns::before{content:\"conns \";color:var(--mut)}\
#backends td.rate::before{content:\"rate \";color:var(--mut)}\
#backends td.check::before{content:\"check \";color:var(--mut)}}";

/// The page's only script. Rebuilds the DOM from `/api/status` with
/// `textContent`, so no report string is ever parsed as HTML.
const SCRIPT: &str = r##"(function(){"use strict";
var prev={},prevDp=null,busy=false,TK="duet-admin-token";
function $(i){return document.getElementById(i);}
function el(t,c,x){var e=document.createElement(t);if(c)e.className=c;if(x!==undefined&&x!==null)e.textContent=String(x);return e;}
function roleClass(r){return["director","standby","starting","leaving"].indexOf(r)>=0?r:"unknown";}
function fb(n){var u=["B","KiB","MiB","GiB","TiB"],i=0;if(n<1024)return n+" B";while(n>=1024&&i<u.length-1){n/=1024;i++;}return n.toFixed(1)+" "+u[i];}
function age(ms){if(ms===null||ms===undefined)return"never";if(ms<1000)return ms+" ms ago";return(ms/1000).toFixed(1)+" s ago";}
function ts(ms){try{return new Date(ms).toISOString().replace("T"," ").slice(0,19)+"Z";}catch(e){return String(ms);}}
function sum(o){var s=0;for(var k in o)if(Object.prototype.hasOwnProperty.call(o,k))s+=o[k];return s;}
function tl(t){var p=function(k){return t[k]||{entries:0,evicted:0,pressure:false};},e=p("established"),h=p("embryonic"),u=p("udp");return e.entries+" / "+h.entries+" / "+u.entries+" · evicted "+h.evicted+" / "+u.evicted+(h.pressure?" · SYN flood":"")+(u.pressure?" · UDP flood":"");}
function card(name,role,cls,meta){var d=el("div","node"+cls);d.setAttribute("data-node",name);d.setAttribute("data-role",role);
var h=el("div","nhead");h.appendChild(el("span","nname",name));h.appendChild(el("span","badge role-"+roleClass(role),role));d.appendChild(h);
var dl=el("dl","nmeta");meta.forEach(function(m){dl.appendChild(el("dt",null,m[0]));dl.appendChild(el("dd",null,m[1]));});d.appendChild(dl);return d;}
function rate(key,t,b,p){var o=prev[key],s="-";if(o&&t>o.t&&b>=o.b&&p>=o.p){var dt=(t-o.t)/1000;s=fb(Math.round((b-o.b)/dt))+"/s · "+Math.round((p-o.p)/dt)+" pkt/s";}prev[key]={t:t,b:b,p:p};return s;}
function row(b,t){var st=b.drained?"drained":(b.healthy?"up":"down");var tr=el("tr","backend "+st);
tr.setAttribute("data-backend",b.name);tr.setAttribute("data-service",b.service);tr.setAttribute("data-healthy",String(!!b.healthy));tr.setAttribute("data-drained",String(!!b.drained));
var td=el("td");var dot=el("span","dot "+st);dot.title=st;td.appendChild(dot);td.appendChild(document.createTextNode(" "));td.appendChild(el("b","bname",b.name));
if(b.local){td.appendChild(document.createTextNode(" "));td.appendChild(el("span","tag","local"));}
if(b.fallback){td.appendChild(document.createTextNode(" "));td.appendChild(el("span","tag","fallback"));}
if(b.drained){td.appendChild(document.createTextNode(" "));td.appendChild(el("span","tag drained","drained"));}
td.appendChild(el("br"));td.appendChild(el("small","addr",b.address+" · "+b.service));tr.appendChild(td);
tr.appendChild(el("td","weight",b.weight+"/"+b.configured_weight));
var c=el("td","conns");c.appendChild(el("span","active",b.active_connections));c.appendChild(document.createTextNode(" / "));c.appendChild(el("span","total",b.total_connections));tr.appendChild(c);
tr.appendChild(el("td","traffic",b.packets+" pkts · "+fb(b.bytes)));
tr.appendChild(el("td","rate",rate(b.name+"|"+b.service+"|"+b.address,t,b.bytes,b.packets)));
var ck=b.check_latency_ms!==null&&b.check_latency_ms!==undefined?b.check_latency_ms.toFixed(1)+" ms":null;
tr.appendChild(el("td","check",b.last_check?(ck?b.last_check+" ("+ck+")":b.last_check):(ck||"-")));
var bt=el("button",null,b.drained?"undrain":"drain");bt.type="button";bt.setAttribute("data-action",b.drained?"undrain":"drain");bt.setAttribute("data-name",b.name);
var ad=el("td");if(!b.fallback)ad.appendChild(bt);tr.appendChild(ad);return tr;}
function render(r){var t=Date.now(),rc=roleClass(r.role);var ro=$("role");ro.textContent=r.role;ro.className="badge big role-"+rc;
document.body.setAttribute("data-role",r.role);document.title="duet · "+r.node+" · "+r.role;
$("node").textContent=r.node;$("term").textContent=r.term;$("vip").textContent=r.vip;$("vip-holder").textContent=r.vip_holder||"nobody";
var ns=$("nodes");ns.textContent="";
ns.appendChild(card(r.node,r.role," self"+(r.vip_holder===r.node?" holder":""),[["priority",r.priority+" (effective "+r.effective_priority+")"],["term",String(r.term)],["heartbeat","this node"],["uptime",r.uptime_s+" s"]]));
(r.peers||[]).forEach(function(p){ns.appendChild(card(p.node,p.role,r.vip_holder===p.node?" holder":"",[["priority",String(p.priority)],["term",String(p.term)],["heartbeat",age(p.last_heard_ms)],["address",p.address],["key",p.key||"-"],["sync batch",p.sync_pos?String(p.sync_batch):"-"]]));});
var tb=$("backends").tBodies[0];tb.textContent="";(r.backends||[]).forEach(function(b){tb.appendChild(row(b,t));});
var hb=r.heartbeat||{},dp=r.dataplane||{},sy=r.sync||{};
$("hb").textContent=hb.sent+" / "+hb.received+" / "+sum(hb.dropped||{});
$("dp-packets").textContent=dp.rx_packets+" / "+dp.tx_packets;$("dp-bytes").textContent=fb(dp.rx_bytes);$("dp-local").textContent=dp.local_packets;$("dp-conflicts").textContent=dp.vip_conflicts;
$("dp-conns").textContent=dp.connections;$("dp-tables").textContent=tl(dp.tables||{});$("dp-drops").textContent=sum(dp.drops||{});
var dr="-";if(prevDp&&t>prevDp.t&&dp.rx_bytes>=prevDp.b){var dt=(t-prevDp.t)/1000;dr=fb(Math.round((dp.rx_bytes-prevDp.b)/dt))+"/s · "+Math.round((dp.rx_packets-prevDp.p)/dt)+" pkt/s";}
prevDp={t:t,b:dp.rx_bytes,p:dp.rx_packets};$("dp-rate").textContent=dr;
$("sync").textContent=sy.connections_synced+" / "+sy.lag_entries+" entries"+(sy.lag_ms!==null&&sy.lag_ms!==undefined?", "+sy.lag_ms+" ms":"");
var ev=$("events");ev.textContent="";(r.events||[]).slice(0,50).forEach(function(e){var li=el("li","event");li.setAttribute("data-kind",e.kind);
li.appendChild(el("time",null,ts(e.ts_ms)));li.appendChild(document.createTextNode(" "));li.appendChild(el("span","kind",e.kind));li.appendChild(document.createTextNode(" "));li.appendChild(el("span","msg",e.message));ev.appendChild(li);});
pics(r.pictures||{});
$("version").textContent=r.version;$("updated").textContent="updated "+new Date(t).toLocaleTimeString();document.body.classList.remove("stale");}
function uri(u){return typeof u==="string"&&u.indexOf("data:image/svg+xml;base64,")===0?u:"";}
function pics(p){var ch=$("charts"),cs=p.charts||{};ch.textContent="";Object.keys(cs).forEach(function(k){var f=el("figure");f.appendChild(el("figcaption",null,k));
var i=el("img","chart");i.setAttribute("data-chart",k);i.alt=k+": new and active connections";i.src=uri(cs[k]);f.appendChild(i);ch.appendChild(f);});
var t=$("timeline");t.src=uri(p.timeline);t.setAttribute("data-updated","1");}
function poll(){if(busy)return;busy=true;
fetch("/api/status",{cache:"no-store"}).then(function(x){if(!x.ok)throw new Error("HTTP "+x.status);return x.json();}).then(render)
.catch(function(e){document.body.classList.add("stale");$("updated").textContent="offline ("+e.message+"), retrying";})
.then(function(){busy=false;});}
function msg(s){$("msg").textContent=s;}
function act(a,name){var tok="";try{tok=localStorage.getItem(TK)||"";}catch(e){}
if(!tok){msg("paste the admin token under Admin first");var d=document.querySelector("#admin details");if(d)d.open=true;return;}
var u=(a==="failover"||a==="reload")?"/api/"+a:"/api/backends/"+encodeURIComponent(name)+"/"+a;
fetch(u,{method:"POST",headers:{"Authorization":"Bearer "+tok}}).then(function(x){return x.text().then(function(b){msg(a+(name?" "+name:"")+": "+x.status+" "+b);poll();});})
.catch(function(e){msg(a+" failed: "+e.message);});}
document.addEventListener("click",function(ev){var b=ev.target.closest?ev.target.closest("button"):null;if(!b)return;
if(b.id==="save-token"){try{localStorage.setItem(TK,$("token").value.trim());$("token").value="";msg("token saved in this browser");}catch(e){msg("cannot store token: "+e.message);}return;}
var a=b.getAttribute("data-action");if(a)act(a,b.getAttribute("data-name"));});
setInterval(poll,1000);poll();})();"##;

/// Prometheus text exposition format 0.0.4 writer. Skips a sample whose
/// series was already written, since a duplicate series makes the whole
/// scrape invalid.
struct Prom {
    out: String,
    seen: BTreeSet<String>,
}

impl Prom {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = write!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: &str) {
        let mut series = String::from(name);
        if !labels.is_empty() {
            series.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    series.push(',');
                }
                let _ = write!(series, "{k}=\"{}\"", label_escape(v));
            }
            series.push('}');
        }
        if !self.seen.insert(series.clone()) {
            return;
        }
        let _ = writeln!(self.out, "{series} {value}");
    }
}

/// Label values escape backslash, double quote and line feed (format 0.0.4).
fn label_escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            _ => out.push(c),
        }
    }
    out
}

fn float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

/// `/metrics` in Prometheus text format 0.0.4.
pub fn metrics(r: &StatusReport) -> String {
    let mut p = Prom {
        out: String::with_capacity(8 * 1024),
        seen: BTreeSet::new(),
    };

    p.family("duet_info", "gauge", "Node identity; always 1.");
    p.sample(
        "duet_info",
        &[("node", &r.node), ("version", &r.version), ("vip", &r.vip)],
        "1",
    );

    p.family(
        "duet_role",
        "gauge",
        "1 for the role this node is in, 0 for the others.",
    );
    let mut role_known = false;
    for role in ROLES {
        let on = role == r.role;
        role_known |= on;
        p.sample("duet_role", &[("role", role)], if on { "1" } else { "0" });
    }
    if !role_known {
        p.sample("duet_role", &[("role", &r.role)], "1");
    }

    p.family("duet_term", "gauge", "Current election term.");
    p.sample("duet_term", &[], &r.term.to_string());
    p.family(
        "duet_vip_held",
        "gauge",
        "1 if this node believes it holds the VIP.",
    );
    let held = r.vip_holder.as_deref() == Some(r.node.as_str());
    p.sample("duet_vip_held", &[], if held { "1" } else { "0" });
    p.family("duet_priority", "gauge", "Configured election priority.");
    p.sample("duet_priority", &[], &r.priority.to_string());
    p.family(
        "duet_effective_priority",
        "gauge",
        "Election priority after ping-node and local-service penalties.",
    );
    p.sample(
        "duet_effective_priority",
        &[],
        &r.effective_priority.to_string(),
    );
    p.family(
        "duet_uptime_seconds",
        "gauge",
        "Seconds since the daemon started.",
    );
    p.sample("duet_uptime_seconds", &[], &r.uptime_s.to_string());

    p.family(
        "duet_heartbeats_sent_total",
        "counter",
        "Heartbeats sent to peers.",
    );
    p.sample(
        "duet_heartbeats_sent_total",
        &[],
        &r.heartbeat.sent.to_string(),
    );
    p.family(
        "duet_heartbeats_received_total",
        "counter",
        "Authenticated heartbeats received from peers.",
    );
    p.sample(
        "duet_heartbeats_received_total",
        &[],
        &r.heartbeat.received.to_string(),
    );
    p.family(
        "duet_heartbeats_dropped_total",
        "counter",
        "Heartbeats dropped, by reason.",
    );
    for (reason, n) in &r.heartbeat.dropped {
        p.sample(
            "duet_heartbeats_dropped_total",
            &[("reason", reason)],
            &n.to_string(),
        );
    }
    let challenge_families = [
        (
            "duet_heartbeats_unverified_total",
            "Heartbeats held back until their boot answered our challenge.",
            r.heartbeat.unverified,
        ),
        (
            "duet_heartbeat_challenges_total",
            "Challenges sent to a peer showing a boot not yet verified.",
            r.heartbeat.challenges_sent,
        ),
        (
            "duet_peer_boots_verified_total",
            "Peer boots accepted after answering a challenge.",
            r.heartbeat.boots_verified,
        ),
    ];
    for (name, help, v) in challenge_families {
        p.family(name, "counter", help);
        p.sample(name, &[], &v.to_string());
    }

    p.family(
        "duet_peer_last_heard_seconds",
        "gauge",
        "Age of the last heartbeat from each peer (absent if never heard).",
    );
    for peer in &r.peers {
        if let Some(ms) = peer.last_heard_ms {
            p.sample(
                "duet_peer_last_heard_seconds",
                &[("peer", &peer.node)],
                &float(ms as f64 / 1000.0),
            );
        }
    }

    p.family(
        "duet_peer_key_next",
        "gauge",
        "1 while the peer signs its heartbeats with our next key (mid-rotation), 0 with our current one.",
    );
    for peer in &r.peers {
        if let Some(k) = &peer.key {
            let v = if k == "next" { "1" } else { "0" };
            p.sample("duet_peer_key_next", &[("peer", &peer.node)], v);
        }
    }
    p.family(
        "duet_peer_sync_batch",
        "gauge",
        "Sync batch the peer last reported (sent on a director, applied on a standby).",
    );
    for peer in &r.peers {
        p.sample(
            "duet_peer_sync_batch",
            &[("peer", &peer.node)],
            &peer.sync_batch.to_string(),
        );
    }

    type Field = fn(&BackendStatus) -> Option<String>;
    let backend_families: [(&str, &str, &str, Field); 7] = [
        (
            "duet_backend_up",
            "gauge",
            "1 if the backend passes its health check.",
            |b| Some(u8::from(b.healthy).to_string()),
        ),
        (
            "duet_backend_drained",
            "gauge",
            "1 if an operator drained the backend.",
            |b| Some(u8::from(b.drained).to_string()),
        ),
        (
            "duet_backend_weight",
            "gauge",
            "Scheduler weight in effect.",
            |b| Some(b.weight.to_string()),
        ),
        (
            "duet_backend_active_connections",
            "gauge",
            "Connections currently scheduled to the backend.",
            |b| Some(b.active_connections.to_string()),
        ),
        (
            "duet_backend_connections_total",
            "counter",
            "Connections ever scheduled to the backend.",
            |b| Some(b.total_connections.to_string()),
        ),
        (
            "duet_backend_packets_total",
            "counter",
            "Packets forwarded to the backend.",
            |b| Some(b.packets.to_string()),
        ),
        (
            "duet_backend_bytes_total",
            "counter",
            "Bytes forwarded to the backend.",
            |b| Some(b.bytes.to_string()),
        ),
    ];
    for (name, kind, help, field) in backend_families {
        p.family(name, kind, help);
        for b in &r.backends {
            if let Some(v) = field(b) {
                p.sample(name, &backend_labels(b), &v);
            }
        }
    }
    p.family(
        "duet_backend_check_latency_seconds",
        "gauge",
        "Duration of the last health check (absent if never checked).",
    );
    for b in &r.backends {
        if let Some(ms) = b.check_latency_ms {
            p.sample(
                "duet_backend_check_latency_seconds",
                &backend_labels(b),
                &float(ms / 1000.0),
            );
        }
    }

    p.family(
        "duet_dataplane_engine",
        "gauge",
        "The data-plane engine that runs (1 for its label).",
    );
    p.sample(
        "duet_dataplane_engine",
        &[("engine", r.dataplane.engine.as_str())],
        "1",
    );
    p.family(
        "duet_dataplane_kernel_packets_total",
        "counter",
        "Packets the eBPF engine forwarded in kernel (included in rx and tx).",
    );
    p.sample(
        "duet_dataplane_kernel_packets_total",
        &[],
        &r.dataplane.kernel_packets.to_string(),
    );
    p.family(
        "duet_dataplane_kernel_scheduled_total",
        "counter",
        "New flows the eBPF engine scheduled in kernel by consistent hash (over cluster.new_flow_budget).",
    );
    p.sample(
        "duet_dataplane_kernel_scheduled_total",
        &[],
        &r.dataplane.kernel_scheduled.to_string(),
    );
    p.family(
        "duet_dataplane_kernel_flows",
        "gauge",
        "Flows the eBPF engine forwards in kernel.",
    );
    p.sample(
        "duet_dataplane_kernel_flows",
        &[],
        &r.dataplane.kernel_flows.to_string(),
    );
    p.family(
        "duet_dataplane_rx_packets_total",
        "counter",
        "Packets received on the VIP.",
    );
    p.sample(
        "duet_dataplane_rx_packets_total",
        &[],
        &r.dataplane.rx_packets.to_string(),
    );
    p.family(
        "duet_dataplane_local_packets_total",
        "counter",
        "Packets to the VIP delivered to this node's own service.",
    );
    p.sample(
        "duet_dataplane_local_packets_total",
        &[],
        &r.dataplane.local_packets.to_string(),
    );
    p.family(
        "duet_dataplane_vip_conflicts_total",
        "counter",
        "Frames from another host claiming the VIP.",
    );
    p.sample(
        "duet_dataplane_vip_conflicts_total",
        &[],
        &r.dataplane.vip_conflicts.to_string(),
    );
    p.family(
        "duet_dataplane_tx_packets_total",
        "counter",
        "Packets forwarded to backends.",
    );
    p.sample(
        "duet_dataplane_tx_packets_total",
        &[],
        &r.dataplane.tx_packets.to_string(),
    );
    p.family(
        "duet_dataplane_rx_bytes_total",
        "counter",
        "Bytes received on the VIP.",
    );
    p.sample(
        "duet_dataplane_rx_bytes_total",
        &[],
        &r.dataplane.rx_bytes.to_string(),
    );
    p.family(
        "duet_dataplane_connections",
        "gauge",
        "Entries in the connection table.",
    );
    p.sample(
        "duet_dataplane_connections",
        &[],
        &r.dataplane.connections.to_string(),
    );
    type Part = fn(&crate::status::model::TablePart) -> u64;
    let part_families: [(&str, &str, &str, Part); 4] = [
        (
            "duet_dataplane_table_entries",
            "gauge",
            "Connection table entries by part (embryonic: half-open TCP; established: confirmed TCP; udp).",
            |t| t.entries,
        ),
        (
            "duet_dataplane_table_limit",
            "gauge",
            "Entries each part of the connection table may hold.",
            |t| t.limit,
        ),
        (
            "duet_dataplane_table_evictions_total",
            "counter",
            "Entries evicted for newer ones (oldest first; never established ones).",
            |t| t.evicted,
        ),
        (
            "duet_dataplane_table_pressure",
            "gauge",
            "1 while a part is under flood pressure (short timeouts in force).",
            |t| u64::from(t.pressure),
        ),
    ];
    for (name, kind, help, f) in part_families {
        p.family(name, kind, help);
        for (part, t) in &r.dataplane.tables {
            p.sample(name, &[("kind", part)], &f(t).to_string());
        }
    }
    p.family(
        "duet_dataplane_promoted_total",
        "counter",
        "Half-open entries whose handshake completed.",
    );
    p.sample(
        "duet_dataplane_promoted_total",
        &[],
        &r.dataplane.promoted.to_string(),
    );
    p.family(
        "duet_dataplane_promote_refused_total",
        "counter",
        "Packets of confirmed flows kept half-open because the established part was full.",
    );
    p.sample(
        "duet_dataplane_promote_refused_total",
        &[],
        &r.dataplane.promote_refused.to_string(),
    );
    p.family(
        "duet_dataplane_drops_total",
        "counter",
        "Packets dropped by the data plane, by reason.",
    );
    for (reason, n) in &r.dataplane.drops {
        p.sample(
            "duet_dataplane_drops_total",
            &[("reason", reason)],
            &n.to_string(),
        );
    }

    p.family(
        "duet_sync_connections_synced",
        "gauge",
        "Connection entries synchronised with the peer.",
    );
    p.sample(
        "duet_sync_connections_synced",
        &[],
        &r.sync.connections_synced.to_string(),
    );
    p.family(
        "duet_sync_lag_entries",
        "gauge",
        "Sync entries the peer has not acknowledged yet.",
    );
    p.sample(
        "duet_sync_lag_entries",
        &[],
        &r.sync.lag_entries.to_string(),
    );
    p.family(
        "duet_sync_lag_seconds",
        "gauge",
        "Age of the oldest unacknowledged sync entry (absent if none).",
    );
    if let Some(ms) = r.sync.lag_ms {
        p.sample("duet_sync_lag_seconds", &[], &float(ms as f64 / 1000.0));
    }
    p.family(
        "duet_sync_rejected_total",
        "counter",
        "Sync datagrams dropped: unauthenticated, malformed or from a stranger.",
    );
    p.sample(
        "duet_sync_rejected_total",
        &[],
        &r.sync.rejected.to_string(),
    );
    p.out
}

fn backend_labels(b: &BackendStatus) -> [(&'static str, &str); 3] {
    [
        ("backend", b.name.as_str()),
        ("address", b.address.as_str()),
        ("service", b.service.as_str()),
    ]
}

/// `/api/status`.
pub fn json(r: &StatusReport) -> String {
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
    use crate::status::model::{EventRecord, PeerStatus};
    use std::collections::{BTreeMap, HashMap};

    fn sample_report() -> StatusReport {
        StatusReport {
            node: "web1".into(),
            role: "director".into(),
            term: 7,
            vip: "198.18.0.100".into(),
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
                    service: "tcp/80".into(),
                    healthy: false,
                    drained: true,
                    last_check: Some("timeout <b>".into()),
                    ..Default::default()
                },
            ],
            heartbeat: crate::status::model::HeartbeatStats {
                sent: 10,
                received: 9,
                dropped: BTreeMap::from([("auth".into(), 1), ("we\"ird\\\n".into(), 2)]),
                ..Default::default()
            },
            dataplane: crate::status::model::DataplaneStats {
                rx_packets: 100,
                tx_packets: 99,
                rx_bytes: 12345,
                connections: 3,
                drops: BTreeMap::from([("no_backend".into(), 1)]),
                tables: BTreeMap::from([
                    (
                        "embryonic".into(),
                        crate::status::model::TablePart {
                            entries: 49152,
                            limit: 65536,
                            evicted: 120000,
                            pressure: true,
                        },
                    ),
                    (
                        "established".into(),
                        crate::status::model::TablePart {
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
            sync: crate::status::model::SyncStats {
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
        assert!(page.contains("id=\"dp-tables\">3 / 49152 / 0 · evicted 120000 / 0 · SYN flood<"));
        // Self-contained: nothing is loaded from elsewhere.
        assert!(!page.contains("src=\"http"));
        assert!(!page.contains("href=\"http"));
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
        let page = html(&r);
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

    /// A strict reading of the 0.0.4 text format: every line is a HELP, TYPE
    /// or sample line; samples belong to a family whose TYPE came first; no
    /// series repeats. Returns series -> value.
    fn parse_exposition(text: &str) -> Result<HashMap<String, f64>, String> {
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

    #[test]
    fn metrics_skip_duplicate_series_and_unknown_role() {
        let mut r = sample_report();
        r.role = "weird".into();
        let dup = r.backends[0].clone();
        r.backends.push(dup);
        let text = metrics(&r);
        let s = parse_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(s["duet_role{role=\"weird\"}"], 1.0);
        assert_eq!(s["duet_role{role=\"director\"}"], 0.0);
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
