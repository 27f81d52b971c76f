//! The `duet.*` kernel command-line parameters.

use std::fs;
use std::net::Ipv4Addr;
use std::time::Duration;

use super::upgrade::Slot;
use super::{InitError, DEFAULT_DATA_LABEL};

/// What the `duet.*` kernel parameters ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootParams {
    /// None: `cluster.interface` of the config, else `eth0`.
    pub iface: Option<String>,
    pub ip: Option<(Ipv4Addr, u8)>,
    pub gateway: Option<Ipv4Addr>,
    pub node: Option<String>,
    /// None: do not look for a data partition.
    pub data_label: Option<String>,
    pub data_wait: Duration,
    pub rescue: bool,
    /// The boot-partition slot this kernel was started from (the boot
    /// loader entries add it); None for a direct kernel boot.
    pub slot: Option<Slot>,
}

impl Default for BootParams {
    fn default() -> Self {
        BootParams {
            iface: None,
            ip: None,
            gateway: None,
            node: None,
            data_label: Some(DEFAULT_DATA_LABEL.into()),
            data_wait: Duration::from_secs(2),
            rescue: false,
            slot: None,
        }
    }
}

fn param_err(param: &str, reason: impl Into<String>) -> InitError {
    InitError::Param {
        param: param.to_string(),
        reason: reason.into(),
    }
}

impl BootParams {
    /// Parses `/proc/cmdline`. Parameters outside `duet.*` are ignored;
    /// unknown `duet.*` ones are an error so a typo is not silently lost.
    pub fn parse(cmdline: &str) -> Result<BootParams, InitError> {
        let mut p = BootParams::default();
        for word in cmdline.split_ascii_whitespace() {
            let Some(rest) = word.strip_prefix("duet.") else {
                continue;
            };
            let (key, value) = match rest.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (rest, None),
            };
            let need = |v: Option<&str>| -> Result<String, InitError> {
                match v {
                    Some(v) if !v.is_empty() => Ok(v.to_string()),
                    _ => Err(param_err(word, "needs a value")),
                }
            };
            match key {
                "if" => {
                    let v = need(value)?;
                    if v.len() >= libc::IFNAMSIZ {
                        return Err(param_err(word, "interface name too long"));
                    }
                    p.iface = Some(v);
                }
                "ip" => {
                    let v = need(value)?;
                    let (addr, len) = v.split_once('/').unwrap_or((&v, "24"));
                    let addr: Ipv4Addr = addr
                        .parse()
                        .map_err(|_| param_err(word, "not an IPv4 address"))?;
                    let len: u8 = len
                        .parse()
                        .ok()
                        .filter(|l| *l <= 32)
                        .ok_or_else(|| param_err(word, "prefix length must be 0..=32"))?;
                    p.ip = Some((addr, len));
                }
                "gw" => {
                    let v = need(value)?;
                    p.gateway = Some(
                        v.parse()
                            .map_err(|_| param_err(word, "not an IPv4 address"))?,
                    );
                }
                "node" => p.node = Some(need(value)?),
                "data" => {
                    let v = need(value)?;
                    p.data_label = if v == "none" { None } else { Some(v) };
                }
                "data_wait" => {
                    let v = need(value)?;
                    let secs: f64 = v
                        .parse()
                        .ok()
                        .filter(|s: &f64| s.is_finite() && *s >= 0.0 && *s <= 600.0)
                        .ok_or_else(|| param_err(word, "seconds, 0..=600"))?;
                    p.data_wait = Duration::from_secs_f64(secs);
                }
                "rescue" => p.rescue = true,
                "slot" => {
                    let v = need(value)?;
                    p.slot = Some(Slot::parse(&v).ok_or_else(|| param_err(word, "a or b"))?);
                }
                _ => return Err(param_err(word, "unknown duet.* parameter")),
            }
        }
        Ok(p)
    }
}

/// `duet.node=` from the running kernel's command line, for `--node`.
pub fn cmdline_node() -> Option<String> {
    let cmdline = fs::read_to_string("/proc/cmdline").ok()?;
    BootParams::parse(&cmdline).ok()?.node
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_defaults_and_values() {
        let p = BootParams::parse("console=ttyS0 panic=-1 quiet").unwrap();
        assert_eq!(p, BootParams::default());
        let p = BootParams::parse(
            "console=ttyS0 duet.ip=198.18.0.1/24 duet.gw=198.18.0.254 duet.node=web1 \
             duet.if=ens3 duet.data=CONF duet.data_wait=0.5 duet.rescue duet.slot=b",
        )
        .unwrap();
        assert_eq!(p.ip, Some((Ipv4Addr::new(198, 18, 0, 1), 24)));
        assert_eq!(p.gateway, Some(Ipv4Addr::new(198, 18, 0, 254)));
        assert_eq!(p.node.as_deref(), Some("web1"));
        assert_eq!(p.iface.as_deref(), Some("ens3"));
        assert_eq!(p.data_label.as_deref(), Some("CONF"));
        assert_eq!(p.data_wait, Duration::from_millis(500));
        assert!(p.rescue);
        assert_eq!(p.slot, Some(Slot::B));
        let p = BootParams::parse("duet.ip=10.0.0.5 duet.data=none").unwrap();
        assert_eq!(p.ip, Some((Ipv4Addr::new(10, 0, 0, 5), 24)));
        assert_eq!(p.data_label, None);
    }

    #[test]
    fn params_errors_name_the_parameter() {
        for bad in [
            "duet.ip=300.1.1.1/24",
            "duet.ip=1.2.3.4/33",
            "duet.ip=",
            "duet.gw=x",
            "duet.if=averyveryverylongname",
            "duet.data_wait=-1",
            "duet.bogus=1",
            "duet.slot=c",
        ] {
            match BootParams::parse(bad) {
                Err(InitError::Param { param, .. }) => assert_eq!(param, bad),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }
}
