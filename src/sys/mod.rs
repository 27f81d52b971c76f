//! Everything that touches the kernel: sockets, devices, sysctls, and the
//! event loops that drive the sans-IO machines.
mod checks;
mod control;
mod ctl;
pub mod daemon;
mod error;
#[cfg(test)]
mod fixture;
mod host;
mod inbox;
mod localconns;
pub mod neigh;
pub mod netlink;
pub mod ping;
mod pool;
pub mod syncer;
pub mod sysctl;

use std::net::Ipv4Addr;

use rustix::process::Resource;

/// Raises the soft limit on open descriptors to the hard one (at most
/// 2^20, the kernel's default `nr_open`) and returns it. A proxy service
/// holds a client and a backend socket per connection, up to 10,000
/// connections each, far past the soft limit of 1024 that systemd and most
/// shells start a process with; the hard limit is usually much higher
/// (systemd: 524288).
pub fn raise_fd_limit() -> std::io::Result<u64> {
    let mut lim = rustix::process::getrlimit(Resource::Nofile);
    // None is unlimited (RLIM_INFINITY).
    let cur = lim.current.unwrap_or(u64::MAX);
    let want = lim.maximum.unwrap_or(u64::MAX).min(1 << 20);
    if cur < want {
        lim.current = Some(want);
        rustix::process::setrlimit(Resource::Nofile, lim)?;
        return Ok(want);
    }
    Ok(cur)
}

/// `duet realserver up|down`: what a plain real server of the Ultra Monkey
/// layout needs — the VIP on lo, and a kernel that never answers ARP for it.
pub fn realserver(action: &str, vips: &[Ipv4Addr], iface: &str) -> Result<(), String> {
    if action == "up" {
        let mut saved = sysctl::Saved::default();
        sysctl::arp_settings(&mut saved, iface).map_err(|e| format!("ARP sysctls: {e}"))?;
        for &vip in vips {
            netlink::add_addr("lo", vip, 32).map_err(|e| format!("adding {vip}/32 to lo: {e}"))?;
            println!(
                "real server ready: {vip}/32 on lo, arp_ignore=1 arp_announce=2 on all,{iface}"
            );
        }
    } else {
        for &vip in vips {
            netlink::del_addr("lo", vip, 32)
                .map_err(|e| format!("removing {vip}/32 from lo: {e}"))?;
            println!("{vip}/32 removed from lo (ARP sysctls left as they are)");
        }
    }
    Ok(())
}
