//! Host changes made at start (the VIPs on lo, ARP and rp_filter sysctls,
//! GRO), remembered and undone at exit.
//!
//! A start that finds a VIP already on `lo` adopts it rather than
//! failing or re-adding it: after a crash, or a stop cut short, the
//! connections this host serves as a backend are still alive in its kernel
//! and need exactly that address. The values found before the first run
//! are kept in the store, so the exit of the adopting run restores those,
//! not the ones the crashed run had set.
use super::error::{io, DaemonError};
use super::{netlink, sysctl};
use crate::config::Config;
use crate::dataplane::packet;
use crate::dataplane::tun::TUN_NAME;
use crate::store::Store;
use std::net::Ipv4Addr;

/// Host changes made at start, undone at exit.
pub struct HostSetup {
    sysctls: sysctl::Saved,
    /// The VIPs now on lo.
    vips: Vec<Ipv4Addr>,
    iface: String,
    gro_was_on: Option<bool>,
    undone: bool,
    /// The store keeps one record of the sysctls a run changed, under the
    /// cluster's own (first) VIP, which a reload cannot change.
    record_key: String,
}

impl HostSetup {
    /// Nothing changed and nothing to undo: for the control loop's tests,
    /// which never reach the host.
    #[cfg(test)]
    pub fn untouched(cfg: &Config) -> HostSetup {
        HostSetup {
            sysctls: sysctl::Saved::default(),
            vips: cfg.vips(),
            iface: cfg.cluster.interface.clone(),
            gro_was_on: None,
            undone: true,
            record_key: cfg.first_vip().to_string(),
        }
    }

    /// `local` is every address the host had at start (VIPs among them
    /// when a previous run left them on lo).
    pub fn apply(
        cfg: &Config,
        local: &[Ipv4Addr],
        store: Option<&Store>,
    ) -> Result<HostSetup, DaemonError> {
        let vips = cfg.vips();
        let iface = cfg.cluster.interface.clone();
        let record_key = cfg.first_vip().to_string();
        let earlier = store.and_then(|s| s.host_changes(&record_key));
        for vip in vips.iter().filter(|v| local.contains(v)) {
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
            vips: Vec::new(),
            iface: iface.clone(),
            gro_was_on: None,
            undone: false,
            record_key,
        };
        // ARP settings first, so the kernel never answers for the VIP once it is on lo.
        sysctl::arp_settings(&mut h.sysctls, &iface).map_err(io("setting ARP sysctls"))?;
        h.record(store);
        h.set_vips(&vips).map_err(io("adding the VIP to lo"))?;
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
                .set(&sysctl::conf_key(dev, "rp_filter"), "0")
                .map_err(io("setting rp_filter"))?;
        }
        self.record(store);
        Ok(())
    }

    fn record(&self, store: Option<&Store>) {
        if let Some(s) = store {
            if let Err(e) = s.set_host_changes(&self.record_key, Some(self.sysctls.entries())) {
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
        if let Err(e) = self.set_vips(&[]) {
            log::warn!("removing VIP from lo: {e}");
        }
        if let Some(true) = self.gro_was_on {
            let _ = packet::set_gro(&self.iface, true);
        }
        self.sysctls.restore();
        if let Some(s) = store {
            if let Err(e) = s.set_host_changes(&self.record_key, None) {
                log::warn!("state store (host changes): {e}");
            }
        }
    }

    /// Puts exactly `vips` on lo (a reload may add or remove some): every
    /// node accepts what is addressed to each. A VIP taken off ends the
    /// connections this host serves on it.
    pub fn set_vips(&mut self, vips: &[Ipv4Addr]) -> std::io::Result<()> {
        let mut first_err = None;
        for gone in self.vips.iter().filter(|v| !vips.contains(v)) {
            if let Err(e) = netlink::del_addr("lo", *gone, 32) {
                log::warn!("removing VIP {gone} from lo: {e}");
                first_err.get_or_insert(e);
            }
        }
        self.vips.retain(|v| vips.contains(v));
        for vip in vips {
            if self.vips.contains(vip) {
                continue;
            }
            match netlink::add_addr("lo", *vip, 32) {
                Ok(()) => self.vips.push(*vip),
                Err(e) => {
                    log::warn!("adding VIP {vip} to lo: {e}");
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}
