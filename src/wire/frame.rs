//! Ethernet frame views for the forwarding hot path.
//!
//! `classify` turns a received frame into either an ARP summary, a flow key
//! for traffic to the VIP, or "not ours"; `rewrite_macs` and `build_arp`
//! produce what the director sends. Nothing here decides where a flow goes
//! (that is `forward`), and nothing allocates: every function runs once per
//! received frame on the hot-path thread.
//!
//! Parsing is deliberately lax where offloads make frames look odd: GSO
//! super-frames may be far larger than 1514 bytes, trailing Ethernet padding
//! is ignored (the IPv4 total length bounds the packet), and L4 checksums are
//! never checked because frames can arrive with a partial checksum that the
//! kernel completes on the way out.

use std::fmt;
use std::net::Ipv4Addr;

use etherparse::err::ipv4::HeaderSliceError;
use etherparse::{
    ArpEthIpv4Packet, ArpHardwareId, ArpOperation, ArpPacketSlice, EtherType, Ethernet2Header,
    Ethernet2HeaderSlice, IpNumber, Ipv4HeaderSlice,
};

/// An Ethernet MAC address.
pub type Mac = [u8; 6];

/// The Ethernet broadcast address.
pub const BROADCAST: Mac = [0xff; 6];

/// TCP flag bits as they appear in byte 13 of the TCP header.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

/// ARP operation codes.
pub const ARP_REQUEST: u16 = 1;
pub const ARP_REPLY: u16 = 2;

const ETH_HDR_LEN: usize = 14;
const IPV4_MIN_HDR_LEN: usize = 20;
/// Bytes of TCP header needed to read ports and flags (flags live in byte 13).
const TCP_NEEDED: usize = 14;
const UDP_HDR_LEN: usize = 8;
const ICMP_HDR_LEN: usize = 8;
/// RFC 792: an ICMP error quotes at least the first 8 bytes of the
/// offending datagram's payload, which covers TCP and UDP ports.
const ICMP_QUOTED_L4: usize = 8;

const ICMP_DEST_UNREACHABLE: u8 = 3;
const ICMP_SOURCE_QUENCH: u8 = 4;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_ECHO_REQUEST: u8 = 8;

/// The 5-tuple of a flow as seen by the director (client → VIP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// IP protocol number: 6 for TCP, 17 for UDP.
    pub proto: u8,
    pub src: Ipv4Addr,
    pub sport: u16,
    pub dst: Ipv4Addr,
    pub dport: u16,
}

impl FlowKey {
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;

    /// The same flow seen from the other end.
    pub fn reversed(&self) -> FlowKey {
        FlowKey {
            proto: self.proto,
            src: self.dst,
            sport: self.dport,
            dst: self.src,
            dport: self.sport,
        }
    }
}

/// The fields of an Ethernet/IPv4 ARP packet the director acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpInfo {
    /// 1 request, 2 reply; other values are passed through for the caller to ignore.
    pub op: u16,
    pub sender_mac: Mac,
    pub sender_ip: Ipv4Addr,
    pub target_ip: Ipv4Addr,
}

/// What a received frame is, as far as the director cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Classified {
    /// An Ethernet/IPv4 ARP packet, whatever its target (the caller filters).
    Arp(ArpInfo),
    /// A TCP or UDP packet to the VIP, or an ICMP error about one of its flows.
    ToVip {
        /// Always oriented client → VIP, also for ICMP errors (whose quoted
        /// datagram is a VIP → client reply), so the error follows its flow.
        key: FlowKey,
        /// TCP flags byte; 0 for UDP and for ICMP errors.
        tcp_flags: u8,
        /// True when this is an ICMP error (destination unreachable incl.
        /// fragmentation needed, source quench, time exceeded) quoting a reply
        /// of `key`'s flow: it must reach the flow's backend but must not
        /// create or advance connection state.
        icmp_error: bool,
    },
    /// An ICMP echo request to the VIP: the director answers it itself
    /// (operators ping the VIP to see that someone holds it).
    EchoRequest,
    /// Not addressed to the VIP or not a protocol the director handles
    /// (IPv6, LLDP, ...). Not an error and not counted.
    NotOurs,
}

/// Why a frame addressed to the VIP (or an ARP frame) was dropped.
/// Each variant maps to a stable metrics label through [`DropReason::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DropReason {
    /// The frame ends before a header it claims to carry: Ethernet header,
    /// IPv4 header or total length, the TCP ports/flags, UDP header, ICMP
    /// header, or the ARP addresses.
    Truncated,
    /// 802.1Q / 802.1ad tagged frame. The director serves an untagged LAN;
    /// tagged traffic means a misconfigured switch port.
    Vlan,
    /// IPv4 header with a wrong version, an IHL below 5, or a total length
    /// smaller than the header.
    BadIpHeader,
    /// A non-first IPv4 fragment: it carries no ports, so it cannot be mapped
    /// to a flow. First fragments are classified by their ports.
    Fragment,
    /// IPv4 to the VIP with a protocol other than TCP/UDP, an ICMP message
    /// that is not an error (echo requests to the VIP are not answered yet),
    /// or an ICMP error quoting something other than TCP/UDP.
    UnsupportedProto,
    /// An ICMP error whose quoted datagram is malformed, too short to hold
    /// ports, a non-first fragment, or was not sent from the VIP.
    BadIcmp,
    /// An ARP packet that is not Ethernet/IPv4 (hardware type, protocol type
    /// or address sizes).
    BadArp,
}

impl DropReason {
    /// Every reason, for pre-registering metrics.
    pub const ALL: [DropReason; 7] = [
        DropReason::Truncated,
        DropReason::Vlan,
        DropReason::BadIpHeader,
        DropReason::Fragment,
        DropReason::UnsupportedProto,
        DropReason::BadIcmp,
        DropReason::BadArp,
    ];

    /// A stable snake_case label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Truncated => "truncated",
            DropReason::Vlan => "vlan",
            DropReason::BadIpHeader => "bad_ip_header",
            DropReason::Fragment => "fragment",
            DropReason::UnsupportedProto => "unsupported_proto",
            DropReason::BadIcmp => "bad_icmp",
            DropReason::BadArp => "bad_arp",
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Classifies one received Ethernet frame. See [`Classified`] and
/// [`DropReason`] for the outcomes; never panics, never allocates.
/// `vips` are the addresses the director answers for.
pub fn classify(frame: &[u8], vips: &[Ipv4Addr]) -> Result<Classified, DropReason> {
    let eth = Ethernet2HeaderSlice::from_slice(frame).map_err(|_| DropReason::Truncated)?;
    let payload = &frame[ETH_HDR_LEN..];
    match eth.ether_type() {
        EtherType::IPV4 => classify_ipv4(payload, vips),
        EtherType::ARP => classify_arp(payload).map(Classified::Arp),
        EtherType::VLAN_TAGGED_FRAME
        | EtherType::PROVIDER_BRIDGING
        | EtherType::VLAN_DOUBLE_TAGGED_FRAME => Err(DropReason::Vlan),
        _ => Ok(Classified::NotOurs),
    }
}

fn classify_arp(payload: &[u8]) -> Result<ArpInfo, DropReason> {
    let arp = ArpPacketSlice::from_slice(payload).map_err(|_| DropReason::Truncated)?;
    if arp.hw_addr_type() != ArpHardwareId::ETHERNET
        || arp.proto_addr_type() != EtherType::IPV4
        || arp.hw_addr_size() != 6
        || arp.proto_addr_size() != 4
    {
        return Err(DropReason::BadArp);
    }
    let mut sender_mac = [0u8; 6];
    sender_mac.copy_from_slice(arp.sender_hw_addr());
    Ok(ArpInfo {
        op: arp.operation().0,
        sender_mac,
        sender_ip: ipv4_at(arp.sender_protocol_addr(), 0),
        target_ip: ipv4_at(arp.target_protocol_addr(), 0),
    })
}

fn classify_ipv4(ip: &[u8], vips: &[Ipv4Addr]) -> Result<Classified, DropReason> {
    if ip.len() < IPV4_MIN_HDR_LEN {
        return Err(DropReason::Truncated);
    }
    // Look at the destination before judging the header: traffic for other
    // hosts (the interface may be promiscuous) is none of our business.
    let vip = ipv4_at(ip, 16);
    if !vips.contains(&vip) {
        return Ok(Classified::NotOurs);
    }
    let hdr = Ipv4HeaderSlice::from_slice(ip).map_err(|e| match e {
        HeaderSliceError::Len(_) => DropReason::Truncated,
        HeaderSliceError::Content(_) => DropReason::BadIpHeader,
    })?;
    let hdr_len = hdr.slice().len();
    let total = usize::from(hdr.total_len());
    // A total length of 0 is what Linux writes into >64 KB GSO packets
    // ("BIG TCP"); then the frame length is all we have.
    let end = match total {
        0 => ip.len(),
        t if t < hdr_len => return Err(DropReason::BadIpHeader),
        t if t > ip.len() => return Err(DropReason::Truncated),
        t => t,
    };
    if hdr.fragments_offset().value() != 0 {
        return Err(DropReason::Fragment);
    }
    let l4 = &ip[hdr_len..end];
    let src = hdr.source_addr();
    match hdr.protocol() {
        IpNumber::TCP => {
            if l4.len() < TCP_NEEDED {
                return Err(DropReason::Truncated);
            }
            Ok(Classified::ToVip {
                key: FlowKey {
                    proto: FlowKey::TCP,
                    src,
                    sport: be16(l4, 0),
                    dst: vip,
                    dport: be16(l4, 2),
                },
                tcp_flags: l4[13],
                icmp_error: false,
            })
        }
        IpNumber::UDP => {
            if l4.len() < UDP_HDR_LEN {
                return Err(DropReason::Truncated);
            }
            Ok(Classified::ToVip {
                key: FlowKey {
                    proto: FlowKey::UDP,
                    src,
                    sport: be16(l4, 0),
                    dst: vip,
                    dport: be16(l4, 2),
                },
                tcp_flags: 0,
                icmp_error: false,
            })
        }
        IpNumber::ICMP => {
            if l4.len() < ICMP_HDR_LEN {
                return Err(DropReason::Truncated);
            }
            match l4[0] {
                ICMP_DEST_UNREACHABLE | ICMP_SOURCE_QUENCH | ICMP_TIME_EXCEEDED => {
                    classify_icmp_error(&l4[ICMP_HDR_LEN..], vip)
                }
                ICMP_ECHO_REQUEST => Ok(Classified::EchoRequest),
                _ => Err(DropReason::UnsupportedProto),
            }
        }
        _ => Err(DropReason::UnsupportedProto),
    }
}

/// `quoted` is the datagram an ICMP error carries: a backend's reply, VIP →
/// client. The key returned is that flow turned around (client → VIP).
fn classify_icmp_error(quoted: &[u8], vip: Ipv4Addr) -> Result<Classified, DropReason> {
    let hdr = Ipv4HeaderSlice::from_slice(quoted).map_err(|_| DropReason::BadIcmp)?;
    if hdr.source_addr() != vip || hdr.fragments_offset().value() != 0 {
        return Err(DropReason::BadIcmp);
    }
    let proto = match hdr.protocol() {
        IpNumber::TCP => FlowKey::TCP,
        IpNumber::UDP => FlowKey::UDP,
        _ => return Err(DropReason::UnsupportedProto),
    };
    let l4 = &quoted[hdr.slice().len()..];
    if l4.len() < ICMP_QUOTED_L4 {
        return Err(DropReason::BadIcmp);
    }
    Ok(Classified::ToVip {
        key: FlowKey {
            proto,
            src: hdr.destination_addr(),
            sport: be16(l4, 2),
            dst: vip,
            dport: be16(l4, 0),
        },
        tcp_flags: 0,
        icmp_error: true,
    })
}

/// Callers guarantee `at + 2 <= b.len()`.
fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Callers guarantee `at + 4 <= b.len()`.
fn ipv4_at(b: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3])
}

/// Rewrites the Ethernet destination and source in place (Direct Routing:
/// L3 stays untouched). Frames shorter than an Ethernet header are left alone.
pub fn rewrite_macs(frame: &mut [u8], dst: Mac, src: Mac) {
    if frame.len() < ETH_HDR_LEN {
        return;
    }
    frame[0..6].copy_from_slice(&dst);
    frame[6..12].copy_from_slice(&src);
}

/// Builds an Ethernet/IPv4 ARP frame (42 bytes; the NIC pads it to the
/// minimum frame size). The Ethernet source is `sender_mac`.
pub fn build_arp(
    op: u16,
    sender_mac: Mac,
    sender_ip: Ipv4Addr,
    target_mac: Mac,
    target_ip: Ipv4Addr,
    eth_dst: Mac,
) -> [u8; 42] {
    let eth = Ethernet2Header {
        source: sender_mac,
        destination: eth_dst,
        ether_type: EtherType::ARP,
    }
    .to_bytes();
    let arp = ArpEthIpv4Packet {
        operation: ArpOperation(op),
        sender_mac,
        sender_ipv4: sender_ip.octets(),
        target_mac,
        target_ipv4: target_ip.octets(),
    }
    .to_bytes();
    let mut out = [0u8; 42];
    out[..ETH_HDR_LEN].copy_from_slice(&eth);
    out[ETH_HDR_LEN..].copy_from_slice(&arp);
    out
}

/// A gratuitous ARP announcing `ip` at `mac`: a broadcast request with
/// sender and target IP both `ip` (the form keepalived sends, which Linux
/// and switches accept to update their tables).
pub fn build_garp(mac: Mac, ip: Ipv4Addr) -> [u8; 42] {
    build_arp(ARP_REQUEST, mac, ip, BROADCAST, ip, BROADCAST)
}

/// The VRRP-style virtual MAC for a virtual router id: 00:00:5e:00:01:<vrid>.
pub fn virtual_mac(vrid: u8) -> Mac {
    [0x00, 0x00, 0x5e, 0x00, 0x01, vrid]
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::icmpv4::DestUnreachableHeader;
    use etherparse::{
        ArpPacket, Icmpv4Type, IpHeaders, Ipv4Header, PacketBuilder, SlicedPacket, VlanId,
    };

    const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
    const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 50);
    const OTHER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 7);
    const CMAC: Mac = [2, 0, 0, 0, 0, 0x50];
    const VMAC: Mac = [0, 0, 0x5e, 0, 1, 1];

    fn eth() -> etherparse::PacketBuilderStep<Ethernet2Header> {
        PacketBuilder::ethernet2(CMAC, VMAC)
    }

    fn write(
        b: impl FnOnce(&mut Vec<u8>, &[u8]) -> Result<(), etherparse::err::packet::BuildWriteError>,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut v = Vec::new();
        b(&mut v, payload).expect("build");
        v
    }

    fn tcp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, syn: bool) -> Vec<u8> {
        let b = eth()
            .ipv4(src.octets(), dst.octets(), 64)
            .tcp(sport, dport, 1000, 65535);
        let b = if syn { b.syn() } else { b.ack(5) };
        write(|v, p| b.write(v, p), b"hello")
    }

    fn udp(dst: Ipv4Addr, dport: u16) -> Vec<u8> {
        let b = eth()
            .ipv4(CLIENT.octets(), dst.octets(), 64)
            .udp(5353, dport);
        write(|v, p| b.write(v, p), b"dns?")
    }

    fn key(proto: u8, sport: u16, dport: u16) -> FlowKey {
        FlowKey {
            proto,
            src: CLIENT,
            sport,
            dst: VIP,
            dport,
        }
    }

    /// An IPv4 header to the VIP with the given fragment fields.
    fn fragment(offset: u16, more: bool, payload: &[u8]) -> Vec<u8> {
        let mut h = Ipv4Header::new(
            payload.len() as u16,
            64,
            IpNumber::UDP,
            CLIENT.octets(),
            VIP.octets(),
        )
        .unwrap();
        h.more_fragments = more;
        h.fragment_offset = etherparse::IpFragOffset::try_new(offset).unwrap();
        let mut v = Ethernet2Header {
            source: CMAC,
            destination: VMAC,
            ether_type: EtherType::IPV4,
        }
        .to_bytes()
        .to_vec();
        v.extend_from_slice(&h.to_bytes());
        v.extend_from_slice(payload);
        v
    }

    /// An ICMP error sent to the VIP by a router, quoting `quoted` (an IPv4
    /// packet without Ethernet header).
    fn icmp_error(ty: &Icmpv4Type, quoted: &[u8]) -> Vec<u8> {
        let b = eth()
            .ipv4(OTHER.octets(), VIP.octets(), 64)
            .icmpv4(ty.clone());
        write(|v, p| b.write(v, p), quoted)
    }

    /// A backend's reply VIP:vport -> client:cport as an IP packet, first
    /// `keep` bytes (routers quote the header plus at least 8 bytes).
    fn quoted_reply(src: Ipv4Addr, tcp: bool, keep: usize) -> Vec<u8> {
        let b = PacketBuilder::ipv4(src.octets(), CLIENT.octets(), 64);
        let mut v = Vec::new();
        if tcp {
            b.tcp(80, 40000, 1, 1000)
                .ack(1)
                .write(&mut v, &[0u8; 1400])
                .unwrap();
        } else {
            b.udp(53, 40001).write(&mut v, &[0u8; 100]).unwrap();
        }
        v.truncate(keep);
        v
    }

    fn arp(op: u16, hw_size_ok: bool) -> Vec<u8> {
        let mut v = build_arp(op, CMAC, CLIENT, [0; 6], VIP, BROADCAST).to_vec();
        if !hw_size_ok {
            v[ETH_HDR_LEN + 4] = 8; // claims 8-byte hardware addresses
            v.extend_from_slice(&[0u8; 8]);
        }
        v
    }

    fn with_ethertype(mut v: Vec<u8>, et: u16) -> Vec<u8> {
        v[12..14].copy_from_slice(&et.to_be_bytes());
        v
    }

    type Case = (&'static str, Vec<u8>, Result<Classified, DropReason>);

    fn cases() -> Vec<Case> {
        use DropReason::*;
        let to_vip = |key, tcp_flags, icmp_error| {
            Ok(Classified::ToVip {
                key,
                tcp_flags,
                icmp_error,
            })
        };
        let frag_needed =
            Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
                next_hop_mtu: 1400,
            });
        let port_unreach = Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port);
        let mut bad_version = tcp(CLIENT, VIP, 40000, 80, true);
        bad_version[14] = 0x65;
        let mut bad_ihl = tcp(CLIENT, VIP, 40000, 80, true);
        bad_ihl[14] = 0x44;
        let mut short_total = tcp(CLIENT, VIP, 40000, 80, true);
        short_total[16..18].copy_from_slice(&10u16.to_be_bytes());
        let mut padded = tcp(CLIENT, VIP, 40000, 80, false);
        padded.extend_from_slice(&[0xAA; 40]);
        let mut big_tcp = tcp(CLIENT, VIP, 40000, 80, false);
        big_tcp[16..18].copy_from_slice(&0u16.to_be_bytes());
        let mut super_frame = {
            let b = eth()
                .ipv4(CLIENT.octets(), VIP.octets(), 64)
                .tcp(40000, 80, 1, 1000)
                .ack(1);
            write(|v, p| b.write(v, p), &vec![7u8; 60_000])
        };
        // Offloaded frames may carry a partial (wrong) checksum.
        let n = super_frame.len();
        super_frame[n - 1] ^= 0xff;
        let sctp = {
            let b = PacketBuilder::ethernet2(CMAC, VMAC).ip(IpHeaders::Ipv4(
                Ipv4Header::new(12, 64, IpNumber::SCTP, CLIENT.octets(), VIP.octets()).unwrap(),
                Default::default(),
            ));
            write(|v, p| b.write(v, IpNumber::SCTP, p), &[0u8; 12])
        };
        let echo = {
            let b = eth()
                .ipv4(CLIENT.octets(), VIP.octets(), 64)
                .icmpv4_echo_request(1, 1);
            write(|v, p| b.write(v, p), b"ping")
        };
        let echo_reply = {
            let b = eth()
                .ipv4(CLIENT.octets(), VIP.octets(), 64)
                .icmpv4_echo_reply(1, 1);
            write(|v, p| b.write(v, p), b"pong")
        };
        let vlan = {
            let b = eth()
                .single_vlan(VlanId::try_new(10).unwrap())
                .ipv4(CLIENT.octets(), VIP.octets(), 64)
                .udp(1, 53);
            write(|v, p| b.write(v, p), b"x")
        };
        let ipv6 = {
            let b = eth().ipv6([1; 16], [2; 16], 64).tcp(1, 80, 1, 1).syn();
            write(|v, p| b.write(v, p), b"")
        };
        let arp_pkt = ArpPacket::new(
            ArpHardwareId::ETHERNET,
            EtherType::IPV4,
            ArpOperation::REPLY,
            &CMAC,
            &CLIENT.octets(),
            &VMAC,
            &VIP.octets(),
        )
        .unwrap();
        let arp_built = {
            let b = PacketBuilder::ethernet2(CMAC, BROADCAST).arp(arp_pkt);
            let mut v = Vec::new();
            b.write(&mut v).unwrap();
            v
        };
        let arp_info = |op| ArpInfo {
            op,
            sender_mac: CMAC,
            sender_ip: CLIENT,
            target_ip: VIP,
        };

        vec![
            (
                "tcp syn to vip",
                tcp(CLIENT, VIP, 40000, 80, true),
                to_vip(key(6, 40000, 80), TCP_SYN, false),
            ),
            (
                "tcp ack to vip",
                tcp(CLIENT, VIP, 40000, 80, false),
                to_vip(key(6, 40000, 80), TCP_ACK, false),
            ),
            (
                "tcp to another host",
                tcp(CLIENT, OTHER, 40000, 80, true),
                Ok(Classified::NotOurs),
            ),
            (
                "udp to vip",
                udp(VIP, 53),
                to_vip(key(17, 5353, 53), 0, false),
            ),
            (
                "udp to another host",
                udp(OTHER, 53),
                Ok(Classified::NotOurs),
            ),
            (
                "trailing padding ignored",
                padded,
                to_vip(key(6, 40000, 80), TCP_ACK, false),
            ),
            (
                "total_len 0 (big tcp gso)",
                big_tcp,
                to_vip(key(6, 40000, 80), TCP_ACK, false),
            ),
            (
                "64 KB super-frame with bad checksum",
                super_frame,
                to_vip(key(6, 40000, 80), TCP_ACK, false),
            ),
            (
                "first fragment classified by ports",
                fragment(0, true, &[0x13, 0x88, 0, 53, 0, 8, 0, 0]),
                to_vip(key(17, 5000, 53), 0, false),
            ),
            (
                "non-first fragment",
                fragment(185, true, &[0u8; 16]),
                Err(Fragment),
            ),
            (
                "last fragment",
                fragment(370, false, &[0u8; 16]),
                Err(Fragment),
            ),
            ("bad ip version", bad_version, Err(BadIpHeader)),
            ("ihl below 5", bad_ihl, Err(BadIpHeader)),
            ("total_len below header", short_total, Err(BadIpHeader)),
            ("sctp to vip", sctp, Err(UnsupportedProto)),
            ("icmp echo to vip", echo, Ok(Classified::EchoRequest)),
            ("icmp echo reply to vip", echo_reply, Err(UnsupportedProto)),
            (
                "icmp frag-needed quoting a tcp reply",
                icmp_error(&frag_needed, &quoted_reply(VIP, true, 48)),
                to_vip(key(6, 40000, 80), 0, true),
            ),
            (
                "icmp port unreachable quoting a udp reply",
                icmp_error(&port_unreach, &quoted_reply(VIP, false, 28)),
                to_vip(key(17, 40001, 53), 0, true),
            ),
            (
                "icmp time exceeded",
                icmp_error(
                    &Icmpv4Type::TimeExceeded(
                        etherparse::icmpv4::TimeExceededCode::TtlExceededInTransit,
                    ),
                    &quoted_reply(VIP, true, 28),
                ),
                to_vip(key(6, 40000, 80), 0, true),
            ),
            (
                "icmp error quoting a foreign packet",
                icmp_error(&frag_needed, &quoted_reply(OTHER, true, 48)),
                Err(BadIcmp),
            ),
            (
                "icmp error quoting too little",
                icmp_error(&frag_needed, &quoted_reply(VIP, true, 24)),
                Err(BadIcmp),
            ),
            (
                "icmp error quoting garbage",
                icmp_error(&frag_needed, &[0x45, 0, 0]),
                Err(BadIcmp),
            ),
            ("vlan tagged", vlan, Err(Vlan)),
            (
                "qinq tagged",
                with_ethertype(udp(VIP, 53), 0x88a8),
                Err(Vlan),
            ),
            ("ipv6", ipv6, Ok(Classified::NotOurs)),
            (
                "lldp",
                with_ethertype(udp(VIP, 53), 0x88cc),
                Ok(Classified::NotOurs),
            ),
            (
                "arp request",
                arp(ARP_REQUEST, true),
                Ok(Classified::Arp(arp_info(1))),
            ),
            (
                "arp reply built by etherparse",
                arp_built,
                Ok(Classified::Arp(ArpInfo {
                    target_ip: VIP,
                    ..arp_info(2)
                })),
            ),
            (
                "arp with 8-byte hw addresses",
                arp(ARP_REQUEST, false),
                Err(BadArp),
            ),
            (
                "arp truncated",
                arp(ARP_REQUEST, true)[..30].to_vec(),
                Err(Truncated),
            ),
            ("empty frame", vec![], Err(Truncated)),
            (
                "ethernet header only",
                tcp(CLIENT, VIP, 1, 80, true)[..14].to_vec(),
                Err(Truncated),
            ),
        ]
    }

    #[test]
    fn classify_table() {
        for (desc, frame, want) in cases() {
            assert_eq!(classify(&frame, &[VIP]), want, "{desc}");
        }
    }

    /// With several VIPs, a frame to any of them is ours, keyed by the
    /// address it went to; an ICMP error about a flow of one VIP must quote
    /// that VIP.
    #[test]
    fn every_vip_classifies_by_its_own_address() {
        let vip2 = Ipv4Addr::new(198, 18, 0, 101);
        let both = [VIP, vip2];
        let f = tcp(CLIENT, vip2, 40000, 80, true);
        assert_eq!(classify(&f, &[VIP]), Ok(Classified::NotOurs));
        match classify(&f, &both) {
            Ok(Classified::ToVip { key, .. }) => assert_eq!(key.dst, vip2),
            other => panic!("{other:?}"),
        }
        let first = tcp(CLIENT, VIP, 40000, 80, true);
        assert!(matches!(
            classify(&first, &both),
            Ok(Classified::ToVip { key, .. }) if key.dst == VIP
        ));
        let frag_needed = Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 },
        );
        // Sent to VIP, quoting a reply from vip2: not a flow of VIP's.
        let crossed = icmp_error(&frag_needed, &quoted_reply(vip2, true, 48));
        assert_eq!(classify(&crossed, &both), Err(DropReason::BadIcmp));
        assert_eq!(classify(&f, &[]), Ok(Classified::NotOurs));
    }

    #[test]
    fn every_truncation_of_a_tcp_frame_is_truncated() {
        let frame = tcp(CLIENT, VIP, 40000, 80, true);
        for len in 0..frame.len() {
            assert_eq!(
                classify(&frame[..len], &[VIP]),
                Err(DropReason::Truncated),
                "len {len}"
            );
        }
        assert!(matches!(
            classify(&frame, &[VIP]),
            Ok(Classified::ToVip { .. })
        ));
    }

    #[test]
    fn truncations_of_every_case_never_panic() {
        for (_, frame, _) in cases() {
            for len in 0..frame.len().min(200) {
                let _ = classify(&frame[..len], &[VIP]);
            }
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..20_000 {
            let len = rng.usize(0..120);
            let mut f: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            // Bias towards the interesting ethertypes and the VIP as destination.
            if len >= 34 && rng.bool() {
                f[12] = 0x08;
                f[13] = 0;
                f[14] = 0x45;
                f[30..34].copy_from_slice(&VIP.octets());
            }
            let _ = classify(&f, &[VIP]);
        }
    }

    #[test]
    fn rewrite_macs_changes_only_macs() {
        let orig = tcp(CLIENT, VIP, 40000, 80, true);
        let mut f = orig.clone();
        let dst = [2, 0, 0, 0, 0, 2];
        let src = [2, 0, 0, 0, 0, 1];
        rewrite_macs(&mut f, dst, src);
        assert_eq!(&f[0..6], &dst);
        assert_eq!(&f[6..12], &src);
        assert_eq!(&f[12..], &orig[12..]);
        let p = SlicedPacket::from_ethernet(&f).unwrap();
        match p.link {
            Some(etherparse::LinkSlice::Ethernet2(e)) => {
                assert_eq!(e.destination(), dst);
                assert_eq!(e.source(), src);
            }
            other => panic!("unexpected link {other:?}"),
        }
        let mut short = [9u8; 13];
        rewrite_macs(&mut short, dst, src);
        assert_eq!(short, [9u8; 13]);
    }

    #[test]
    fn build_arp_parses_back() {
        let target_mac = [2, 0, 0, 0, 0, 9];
        let f = build_arp(ARP_REPLY, VMAC, VIP, target_mac, CLIENT, CMAC);
        let p = SlicedPacket::from_ethernet(&f).unwrap();
        match p.link {
            Some(etherparse::LinkSlice::Ethernet2(e)) => {
                assert_eq!(e.destination(), CMAC);
                assert_eq!(e.source(), VMAC);
                assert_eq!(e.ether_type(), EtherType::ARP);
            }
            other => panic!("unexpected link {other:?}"),
        }
        let arp = ArpPacketSlice::from_slice(&f[14..]).unwrap();
        let arp = arp.to_packet().try_eth_ipv4().unwrap();
        assert_eq!(arp.operation, ArpOperation::REPLY);
        assert_eq!(arp.sender_mac, VMAC);
        assert_eq!(arp.sender_ipv4_addr(), VIP);
        assert_eq!(arp.target_mac, target_mac);
        assert_eq!(arp.target_ipv4_addr(), CLIENT);
        assert_eq!(
            classify(&f, &[VIP]),
            Ok(Classified::Arp(ArpInfo {
                op: ARP_REPLY,
                sender_mac: VMAC,
                sender_ip: VIP,
                target_ip: CLIENT
            }))
        );
    }

    #[test]
    fn garp_is_broadcast_request_for_itself() {
        let f = build_garp(VMAC, VIP);
        assert_eq!(&f[0..6], &BROADCAST);
        let arp = ArpPacketSlice::from_slice(&f[14..])
            .unwrap()
            .to_packet()
            .try_eth_ipv4()
            .unwrap();
        assert_eq!(arp.operation, ArpOperation::REQUEST);
        assert_eq!(arp.sender_ipv4_addr(), VIP);
        assert_eq!(arp.target_ipv4_addr(), VIP);
        assert_eq!(arp.sender_mac, VMAC);
    }

    #[test]
    fn virtual_mac_is_vrrp_style() {
        assert_eq!(virtual_mac(1), [0, 0, 0x5e, 0, 1, 1]);
        assert_eq!(virtual_mac(0xfe), [0, 0, 0x5e, 0, 1, 0xfe]);
    }

    #[test]
    fn drop_reason_labels_are_distinct() {
        let labels: std::collections::HashSet<_> =
            DropReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels.len(), DropReason::ALL.len());
    }

    #[test]
    fn reversed_key_roundtrips() {
        let k = key(6, 1, 2);
        assert_eq!(k.reversed().reversed(), k);
        assert_eq!(k.reversed().src, VIP);
    }
}
