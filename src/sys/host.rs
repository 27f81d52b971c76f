//! Host changes made at start (VIP on lo, ARP and rp_filter sysctls, GRO),
//! remembered and undone at exit.
use super::daemon::{io, DaemonError, TUN_NAME};
use super::{netlink, packet, sysctl};
use crate::config::Config;
use std::net::Ipv4Addr;

/// Host changes made at start, undone at exit.
pub struct HostSetup {
    sysctls: sysctl::Saved,
    vip: Ipv4Addr,
    iface: String,
    gro_was_on: Option<bool>,
}

impl HostSetup {
    pub fn apply(cfg: &Config) -> Result<HostSetup, DaemonError> {
        let vip = *cfg.cluster.vip.get_ref();
        let iface = cfg.cluster.interface.clone();
        let mut h = HostSetup {
            sysctls: sysctl::Saved::default(),
            vip,
            iface: iface.clone(),
            gro_was_on: None,
        };
        // ARP settings first, so the kernel never answers for the VIP once it is on lo.
        sysctl::arp_settings(&mut h.sysctls, &iface).map_err(io("setting ARP sysctls"))?;
        netlink::add_addr("lo", vip, 32).map_err(io("adding the VIP to lo"))?;
        match packet::set_gro(&iface, false) {
            Ok(was) => h.gro_was_on = Some(was),
            Err(e) => log::warn!("cannot turn GRO off on {iface}: {e}"),
        }
        Ok(h)
    }

    pub fn local_path(&mut self) -> Result<(), DaemonError> {
        // Packets from the TUN device carry client sources that route via the
        // LAN: reverse-path filtering must not drop them.
        for dev in ["all", TUN_NAME] {
            self.sysctls
                .set(&format!("net.ipv4.conf.{dev}.rp_filter"), "0")
                .map_err(io("setting rp_filter"))?;
        }
        Ok(())
    }

    pub fn undo(&mut self) {
        if let Err(e) = netlink::del_addr("lo", self.vip, 32) {
            log::warn!("removing VIP from lo: {e}");
        }
        if let Some(true) = self.gro_was_on {
            let _ = packet::set_gro(&self.iface, true);
        }
        self.sysctls.restore();
    }
}
