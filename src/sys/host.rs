//! Host changes made at start (VIP on lo, ARP and rp_filter sysctls, GRO),
//! remembered and undone at exit.
//!
//! A start that finds the VIP already on `lo` adopts it rather than
//! failing or re-adding it: after a crash, or a stop cut short, the
//! connections this host serves as a backend are still alive in its kernel
//! and need exactly that address. The values found before the first run
//! are kept in the store, so the exit of the adopting run restores those,
//! not the ones the crashed run had set.
use super::daemon::{io, DaemonError, TUN_NAME};
use super::{netlink, packet, sysctl};
use crate::config::Config;
use crate::store::Store;
use std::net::Ipv4Addr;

/// Host changes made at start, undone at exit.
pub struct HostSetup {
    sysctls: sysctl::Saved,
    vip: Ipv4Addr,
    iface: String,
    gro_was_on: Option<bool>,
    undone: bool,
}

impl HostSetup {
    /// `local` is every address the host had at start (the VIP among them
    /// when a previous run left it on lo).
    pub fn apply(
        cfg: &Config,
        local: &[Ipv4Addr],
        store: Option<&Store>,
    ) -> Result<HostSetup, DaemonError> {
        let vip = *cfg.cluster.vip.get_ref();
        let iface = cfg.cluster.interface.clone();
        let earlier = store.and_then(|s| s.host_changes(&vip.to_string()));
        if local.contains(&vip) {
            log::info!(
                "VIP {vip} is already on lo: adopting it and the connections it carries{}",
                if earlier.is_some() {
                    " (left by a run that did not finish)"
                } else {
                    ""
                }
            );
        }
        let mut h = HostSetup {
            sysctls: earlier.map(sysctl::Saved::from_entries).unwrap_or_default(),
            vip,
            iface: iface.clone(),
            gro_was_on: None,
            undone: false,
        };
        // ARP settings first, so the kernel never answers for the VIP once it is on lo.
        sysctl::arp_settings(&mut h.sysctls, &iface).map_err(io("setting ARP sysctls"))?;
        h.record(store);
        netlink::add_addr("lo", vip, 32).map_err(io("adding the VIP to lo"))?;
        match packet::set_gro(&iface, false) {
            Ok(was) => h.gro_was_on = Some(was),
            Err(e) => log::warn!("cannot turn GRO off on {iface}: {e}"),
        }
        Ok(h)
    }

    pub fn local_path(&mut self, store: Option<&Store>) -> Result<(), DaemonError> {
        // Packets from the TUN device carry client sources that route via the
        // LAN: reverse-path filtering must not drop them.
        for dev in ["all", TUN_NAME] {
            self.sysctls
                .set(&format!("net.ipv4.conf.{dev}.rp_filter"), "0")
                .map_err(io("setting rp_filter"))?;
        }
        self.record(store);
        Ok(())
    }

    fn record(&self, store: Option<&Store>) {
        if let Some(s) = store {
            if let Err(e) = s.set_host_changes(&self.vip.to_string(), Some(self.sysctls.entries()))
            {
                log::warn!("state store (host changes): {e}");
            }
        }
    }

    /// Takes the VIP off lo and puts the sysctls back; only the first call
    /// acts, so an error path can call it again without a store at hand.
    pub fn undo(&mut self, store: Option<&Store>) {
        if std::mem::replace(&mut self.undone, true) {
            return;
        }
        if let Err(e) = netlink::del_addr("lo", self.vip, 32) {
            log::warn!("removing VIP from lo: {e}");
        }
        if let Some(true) = self.gro_was_on {
            let _ = packet::set_gro(&self.iface, true);
        }
        self.sysctls.restore();
        if let Some(s) = store {
            if let Err(e) = s.set_host_changes(&self.vip.to_string(), None) {
                log::warn!("state store (host changes): {e}");
            }
        }
    }
}
