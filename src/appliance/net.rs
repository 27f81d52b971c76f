//! The LAN interface, configured with plain ioctls (no netlink, no resolver).

use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::net::{AddressFamily, SocketFlags, SocketType};

use super::cmdline::{prefix_to_mask, BootParams};
use super::mounts::cstr;
use super::InitError;

/// Linux `struct rtentry` (route ioctls); the libc crate has it for musl only.
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

fn sockaddr_v4(a: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(a).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size on Linux; this is
    // the cast every C caller of these ioctls does.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

struct Ctl(OwnedFd);

impl Ctl {
    fn open() -> Result<Ctl, InitError> {
        rustix::net::socket_with(
            AddressFamily::INET,
            SocketType::DGRAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .map(Ctl)
        .map_err(|e| InitError::Sys {
            what: "socket(AF_INET)",
            source: e.into(),
        })
    }

    fn ifreq(name: &str) -> libc::ifreq {
        // SAFETY: ifreq is plain old data; all-zero is a valid value.
        let mut r: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in r
            .ifr_name
            .iter_mut()
            .zip(name.bytes().take(libc::IFNAMSIZ - 1))
        {
            *dst = src as libc::c_char;
        }
        r
    }

    fn ioctl<T>(
        &self,
        req: libc::c_ulong,
        arg: &mut T,
        name: &str,
        what: &'static str,
    ) -> Result<(), InitError> {
        // SAFETY: arg points to the struct the request expects (ifreq or
        // rtentry), valid for the duration of the call.
        let rc = unsafe { libc::ioctl(self.0.as_raw_fd(), req, arg as *mut T) };
        if rc < 0 {
            return Err(InitError::Net {
                name: name.to_string(),
                what,
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    fn up(&self, name: &str) -> Result<(), InitError> {
        let mut r = Self::ifreq(name);
        self.ioctl(libc::SIOCGIFFLAGS, &mut r, name, "get flags")?;
        // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
        unsafe { r.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
        self.ioctl(libc::SIOCSIFFLAGS, &mut r, name, "set up")
    }

    fn set_addr(&self, name: &str, addr: Ipv4Addr, prefix: u8) -> Result<(), InitError> {
        let mut r = Self::ifreq(name);
        r.ifr_ifru.ifru_addr = sockaddr_v4(addr);
        self.ioctl(libc::SIOCSIFADDR, &mut r, name, "set address")?;
        let mut r = Self::ifreq(name);
        r.ifr_ifru.ifru_netmask = sockaddr_v4(prefix_to_mask(prefix));
        self.ioctl(libc::SIOCSIFNETMASK, &mut r, name, "set netmask")
    }

    fn default_route(&self, name: &str, gw: Ipv4Addr) -> Result<(), InitError> {
        let mut dev = cstr(name).into_bytes_with_nul();
        let mut rt = RtEntry {
            rt_pad1: 0,
            rt_dst: sockaddr_v4(Ipv4Addr::UNSPECIFIED),
            rt_gateway: sockaddr_v4(gw),
            rt_genmask: sockaddr_v4(Ipv4Addr::UNSPECIFIED),
            rt_flags: (libc::RTF_UP | libc::RTF_GATEWAY) as libc::c_ushort,
            rt_pad2: 0,
            rt_pad3: 0,
            rt_pad4: std::ptr::null_mut(),
            rt_metric: 0,
            rt_dev: dev.as_mut_ptr().cast(),
            rt_mtu: 0,
            rt_window: 0,
            rt_irtt: 0,
        };
        self.ioctl(libc::SIOCADDRT, &mut rt, name, "add default route")
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
    let ctl = Ctl::open()?;
    ctl.up("lo")?;
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
        ctl.set_addr(&p.iface, addr, len)?;
    }
    ctl.up(&p.iface)?;
    if let Some(gw) = p.gateway {
        ctl.default_route(&p.iface, gw)?;
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
