//! The data plane: one interface the control plane drives (`Shared`,
//! `Control`, `spawn`), engines behind it, and the devices they use (the
//! packet socket and its ring, the TUN device). The userspace engine (an
//! AF_PACKET ring, in thread.rs) handles every frame itself; the eBPF one
//! adds a tc program that forwards established flows, and schedules new
//! ones by tables the Rust engine builds, in kernel; user space's socket
//! then gets only what the program leaves it. The control plane does not
//! know which one runs.
use crate::config::EngineChoice;

mod announce;
mod drop;
pub mod ebpf;
pub mod packet;
mod thread;
pub mod tun;

pub use thread::{
    fmt_mac, spawn, Control, DpStats, Params, Report, Shared, SyncExchange, SyncStatus, ECHO_RATE,
};

/// The engine that runs, for status and metrics.
pub fn engine_name(kernel: &Option<ebpf::Kernel>) -> &'static str {
    if kernel.is_some() {
        "ebpf"
    } else {
        "userspace"
    }
}

/// Loads and attaches the eBPF engine as `choice` asks: `Ok(None)` runs the
/// userspace engine (chosen, or `auto` could not load it: the reason is
/// logged); an error when `ebpf` was asked for and cannot run.
pub fn select(
    choice: EngineChoice,
    p: &ebpf::Params,
    ifname: &str,
) -> Result<Option<ebpf::Kernel>, ebpf::Error> {
    choose(choice, ifname, || {
        let mut k = ebpf::Kernel::load(p)?;
        // Not forwarding until the data plane turns it on.
        k.attach_tc(ifname)?;
        Ok(k)
    })
}

/// The rule of [`select`], whatever loading the program does.
fn choose<K, E: std::fmt::Display>(
    choice: EngineChoice,
    ifname: &str,
    attach: impl FnOnce() -> Result<K, E>,
) -> Result<Option<K>, E> {
    if choice == EngineChoice::Userspace {
        log::info!("data plane: userspace engine (configured)");
        return Ok(None);
    }
    match attach() {
        Ok(k) => {
            log::info!("data plane: eBPF engine on {ifname}");
            Ok(Some(k))
        }
        Err(e) if choice == EngineChoice::Auto => {
            log::warn!("data plane: eBPF engine unavailable ({e}); using the userspace engine");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_engine_chosen() {
        let loads = || Ok::<_, String>("kernel");
        let fails = || Err::<&str, _>("no BPF here".to_string());
        assert_eq!(
            choose(EngineChoice::Auto, "eth0", loads),
            Ok(Some("kernel"))
        );
        assert_eq!(choose(EngineChoice::Auto, "eth0", fails), Ok(None));
        assert_eq!(
            choose(EngineChoice::Ebpf, "eth0", loads),
            Ok(Some("kernel"))
        );
        assert_eq!(
            choose(EngineChoice::Ebpf, "eth0", fails),
            Err("no BPF here".to_string())
        );
        // Configured userspace never tries to load the program.
        let never = || -> Result<&str, String> { panic!("loaded") };
        assert_eq!(choose(EngineChoice::Userspace, "eth0", never), Ok(None));
    }
}
