//! The LAN interface, configured through rtnetlink (no resolver, no
//! helper programs: PID 1 has none).

use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use super::cmdline::BootParams;
use super::InitError;
use crate::sys::netlink;

fn net_err<'a>(name: &'a str, what: &'static str) -> impl FnOnce(io::Error) -> InitError + 'a {
    move |source| InitError::Net {
        name: name.to_string(),
        what,
        source,
    }
}

/// What the LAN interface gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetPlan {
    pub iface: String,
    pub ip: Option<(Ipv4Addr, u8)>,
    pub gateway: Option<Ipv4Addr>,
}

/// Prefix length for an address taken from the config, which holds bare
/// addresses; `duet.ip=ADDR/N` overrides it.
pub const CONFIG_PREFIX: u8 = 24;

/// Combines the command line with the config: explicit parameters win;
/// otherwise the interface is `cluster.interface` and the address that of
/// the `[[node]]` named `node`. Errors are for the console, so they say
/// what to fix.
pub fn plan_network(p: &BootParams, config: &str, node: Option<&str>) -> Result<NetPlan, String> {
    let parsed: Option<toml::Table> = config.parse().ok();
    let cfg_iface = parsed.as_ref().and_then(|t| {
        t.get("cluster")?
            .get("interface")?
            .as_str()
            .map(str::to_string)
    });
    let iface = p
        .iface
        .clone()
        .or(cfg_iface)
        .unwrap_or_else(|| "eth0".to_string());
    let mut plan = NetPlan {
        iface,
        ip: p.ip,
        gateway: p.gateway,
    };
    if plan.ip.is_some() {
        return Ok(plan);
    }
    let Some(node) = node else {
        return Ok(plan);
    };
    let table = parsed.ok_or("the config is not valid TOML, cannot look up this node's address")?;
    let entry = table
        .get("node")
        .and_then(|n| n.as_array())
        .and_then(|nodes| {
            nodes
                .iter()
                .find(|n| n.get("name").and_then(|v| v.as_str()) == Some(node))
        })
        .ok_or_else(|| format!("node {node:?} has no [[node]] entry in the config"))?;
    let addr = entry
        .get("address")
        .and_then(|a| a.as_str())
        .and_then(|a| a.parse::<Ipv4Addr>().ok())
        .ok_or_else(|| format!("[[node]] {node:?} has no IPv4 address"))?;
    plan.ip = Some((addr, CONFIG_PREFIX));
    Ok(plan)
}

pub(super) fn setup_network(p: &NetPlan) -> Result<(), InitError> {
    netlink::set_up("lo").map_err(net_err("lo", "set up"))?;
    let sys = Path::new("/sys/class/net").join(&p.iface);
    // Driver probing can finish after finit_module returns (deferred or
    // asynchronous probe); give the interface a few seconds to appear.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !sys.exists() {
        if Instant::now() >= deadline {
            if p.ip.is_some() {
                return Err(InitError::NoInterface(p.iface.clone()));
            }
            say!(
                "interface {} not present; leaving networking to the config",
                p.iface
            );
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if let Some((addr, len)) = p.ip {
        netlink::add_addr(&p.iface, addr, len).map_err(net_err(&p.iface, "set address"))?;
    }
    netlink::set_up(&p.iface).map_err(net_err(&p.iface, "set up"))?;
    if let Some(gw) = p.gateway {
        netlink::add_default_route(&p.iface, gw).map_err(net_err(&p.iface, "add default route"))?;
    }
    let mac = fs::read_to_string(sys.join("address")).unwrap_or_default();
    match p.ip {
        Some((addr, len)) => say!("{} {} up, {addr}/{len}", p.iface, mac.trim()),
        None => say!(
            "{} {} up without an address (no duet.ip, no duet.node)",
            p.iface,
            mac.trim()
        ),
    }
    Ok(())
}

pub(super) fn set_hostname(name: &str) {
    if let Err(e) = rustix::system::sethostname(name.as_bytes()) {
        say!("sethostname {name}: {}", io::Error::from(e));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
[cluster]
vip = "198.18.0.100"
interface = "ens4"
[[node]]
name = "web1"
address = "198.18.0.1"
[[node]]
name = "web2"
address = "198.18.0.2"
"#;

    #[test]
    fn network_from_config_and_cmdline() {
        let none = BootParams::default();
        let plan = plan_network(&none, CONFIG, Some("web2")).unwrap();
        assert_eq!(plan.iface, "ens4");
        assert_eq!(plan.ip, Some((Ipv4Addr::new(198, 18, 0, 2), CONFIG_PREFIX)));
        // The command line wins over the config.
        let p = BootParams::parse("duet.ip=198.18.0.9/16 duet.if=eth1").unwrap();
        let plan = plan_network(&p, CONFIG, Some("web2")).unwrap();
        assert_eq!(plan.iface, "eth1");
        assert_eq!(plan.ip, Some((Ipv4Addr::new(198, 18, 0, 9), 16)));
        // No node: interface up, no address.
        let plan = plan_network(&none, CONFIG, None).unwrap();
        assert_eq!(plan.ip, None);
        // Broken or foreign configs without a node name are not an error.
        let plan = plan_network(&none, "not = [toml", None).unwrap();
        assert_eq!(plan.iface, "eth0");
    }

    #[test]
    fn network_errors_say_what_is_missing() {
        let none = BootParams::default();
        let e = plan_network(&none, CONFIG, Some("web3")).unwrap_err();
        assert!(e.contains("web3"), "{e}");
        let e = plan_network(&none, "[[node]]\nname = \"web1\"\n", Some("web1")).unwrap_err();
        assert!(e.contains("IPv4"), "{e}");
        let e = plan_network(&none, "[[node", Some("web1")).unwrap_err();
        assert!(e.contains("TOML"), "{e}");
    }
}
