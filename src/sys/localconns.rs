//! How many TCP connections this host's own stack serves on the VIPs: what a
//! leaving node waits for before it takes the VIP off `lo`. Read from
//! `/proc/net/tcp`, which shows the sockets of the caller's network
//! namespace whatever process owns them (the web server, not duet).
use std::net::Ipv4Addr;

/// Socket states that no longer need packets from the client: the listener
/// itself, TIME_WAIT and CLOSE (kernel `tcp_states.h` numbering).
const LISTEN: u8 = 0x0A;
const TIME_WAIT: u8 = 0x06;
const CLOSE: u8 = 0x07;

pub fn count(vips: &[Ipv4Addr]) -> std::io::Result<usize> {
    Ok(count_in(&std::fs::read_to_string("/proc/net/tcp")?, vips))
}

/// Counts the lines of a `/proc/net/tcp` table whose local address is one
/// of `vips` and whose state still carries client traffic. Lines that do not parse
/// are skipped: the format is the kernel's, not an input to trust blindly.
pub fn count_in(table: &str, vips: &[Ipv4Addr]) -> usize {
    // The kernel prints the address as the raw 32-bit word in host order.
    let want: Vec<String> = vips
        .iter()
        .map(|v| format!("{:08X}", u32::from_ne_bytes(v.octets())))
        .collect();
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let mut f = line.split_whitespace();
            let (Some(_slot), Some(local), Some(_remote), Some(state)) =
                (f.next(), f.next(), f.next(), f.next())
            else {
                return false;
            };
            let Some((addr, _port)) = local.split_once(':') else {
                return false;
            };
            let Ok(state) = u8::from_str_radix(state, 16) else {
                return false;
            };
            want.iter().any(|w| addr.eq_ignore_ascii_case(w))
                && !matches!(state, LISTEN | TIME_WAIT | CLOSE)
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    // From a node with VIP 198.18.0.100 on lo: a listener on 0.0.0.0:80,
    // two established connections and one TIME_WAIT on the VIP, and a
    // connection to the node's own address.
    const TABLE: &str = "\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 640012C6:0050 FE0012C6:A1B2 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 20 4 30 10 -1
   2: 640012C6:0050 FE0012C6:A1B4 08 00000000:00000000 00:00000000 00000000     0        0 3 1 0000000000000000 20 4 30 10 -1
   3: 640012C6:0050 FE0012C6:A1B6 06 00000000:00000000 03:00000000 00000000     0        0 0 3 0000000000000000
   4: 010012C6:0050 FE0012C6:A1B8 01 00000000:00000000 00:00000000 00000000     0        0 4 1 0000000000000000 20 4 30 10 -1
";

    #[test]
    fn counts_live_connections_on_the_vip_only() {
        let (vip, node) = (Ipv4Addr::new(198, 18, 0, 100), Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(count_in(TABLE, &[vip]), 2);
        assert_eq!(count_in(TABLE, &[node]), 1);
        assert_eq!(count_in(TABLE, &[vip, node]), 3);
        assert_eq!(count_in(TABLE, &[Ipv4Addr::new(198, 18, 0, 2)]), 0);
        assert_eq!(count_in(TABLE, &[]), 0);
    }

    #[test]
    fn garbage_lines_are_skipped() {
        let t =
            "header\n\nnot a line\n 1: zz:0050 x 01\n 2: 640012C6 x 01\n 3: 640012C6:0050 x q\n";
        assert_eq!(count_in(t, &[Ipv4Addr::new(198, 18, 0, 100)]), 0);
    }
}
