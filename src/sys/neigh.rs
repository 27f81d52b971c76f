//! MAC addresses of the backends, read from the kernel's neighbour table.
//! Heartbeats and health checks already make the kernel resolve them; for a
//! backend nobody talks to, `poke` sends one datagram so it does.
use std::collections::HashMap;
use std::net::{Ipv4Addr, UdpSocket};

/// Parses /proc/net/arp: complete entries (flag 0x2) on `iface`.
pub fn parse_proc_arp(text: &str, iface: &str) -> HashMap<Ipv4Addr, [u8; 6]> {
    let mut out = HashMap::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 || f[5] != iface {
            continue;
        }
        let complete =
            u32::from_str_radix(f[2].trim_start_matches("0x"), 16).is_ok_and(|fl| fl & 2 != 0);
        let (Ok(ip), Some(mac)) = (f[0].parse::<Ipv4Addr>(), parse_mac(f[3])) else {
            continue;
        };
        if complete && mac != [0; 6] {
            out.insert(ip, mac);
        }
    }
    out
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in mac.iter_mut() {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

pub fn read(iface: &str) -> HashMap<Ipv4Addr, [u8; 6]> {
    std::fs::read_to_string("/proc/net/arp")
        .map(|t| parse_proc_arp(&t, iface))
        .unwrap_or_default()
}

/// Makes the kernel resolve `addr` by sending one empty datagram to its discard port.
pub fn poke(addr: Ipv4Addr) {
    if let Ok(s) = UdpSocket::bind("0.0.0.0:0") {
        let _ = s.send_to(&[], (addr, 9));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_complete_entries_of_one_interface() {
        let t = "IP address       HW type     Flags       HW address            Mask     Device\n\
                 198.18.0.2       0x1         0x2         aa:bb:cc:dd:ee:02     *        eth0\n\
                 198.18.0.3       0x1         0x0         00:00:00:00:00:00     *        eth0\n\
                 198.18.0.4       0x1         0x2         aa:bb:cc:dd:ee:04     *        eth1\n\
                 garbage line\n";
        let m = parse_proc_arp(t, "eth0");
        assert_eq!(m.len(), 1);
        assert_eq!(
            m[&Ipv4Addr::new(198, 18, 0, 2)],
            [0xaa, 0xbb, 0xcc, 0xdd, 0xee, 2]
        );
        assert_eq!(parse_mac("1:2:3:4:5"), None);
        assert_eq!(parse_mac("01:02:03:04:05:06:07"), None);
    }
}
