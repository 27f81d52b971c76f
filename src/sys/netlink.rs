//! Addresses and links through rtnetlink. Requests go over a blocking
//! socket, one short-lived socket per call: they run at start, at exit
//! and on role changes, never on the packet path, and they start no
//! thread, so the appliance's PID 1 stays single-threaded and can fork
//! safely after configuring its network. [`LinkNotices`] keeps an async
//! connection open, on smol, for the kernel's link notices.
use futures_util::stream::{Stream, StreamExt};
use rtnetlink::packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use rtnetlink::{AddressMessageBuilder, LinkUnspec, RouteMessageBuilder};
use std::io;
use std::net::{IpAddr, Ipv4Addr};

const CHANGE: u16 = NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;

/// Sends one request and collects the kernel's answers up to its ack
/// (`NLM_F_ACK`) or the end of a dump (`NLM_F_DUMP`).
fn request(msg: RouteNetlinkMessage, flags: u16) -> io::Result<Vec<RouteNetlinkMessage>> {
    let mut sock = Socket::new(NETLINK_ROUTE)?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;
    let mut req = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(msg));
    req.header.flags = NLM_F_REQUEST | flags;
    req.header.sequence_number = 1;
    req.finalize();
    let mut buf = vec![0; req.buffer_len()];
    req.serialize(&mut buf);
    sock.send(&buf, 0)?;
    let mut out = Vec::new();
    loop {
        let (data, _) = sock.recv_from_full()?;
        let mut rest = &data[..];
        while !rest.is_empty() {
            let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(rest)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            match m.payload {
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
                NetlinkPayload::Error(_) => return Ok(out),
                NetlinkPayload::InnerMessage(inner) => out.push(inner),
                _ => {}
            }
            // Messages are padded to 4 bytes; a zero length would loop.
            let len = (m.header.length as usize + 3) & !3;
            if len == 0 || len > rest.len() {
                break;
            }
            rest = &rest[len..];
        }
    }
}

/// `r`, with the one error that means the change is already made.
fn unless(r: io::Result<Vec<RouteNetlinkMessage>>, already: &[i32]) -> io::Result<()> {
    match r {
        Err(e) if e.raw_os_error().is_some_and(|c| already.contains(&c)) => Ok(()),
        other => other.map(drop),
    }
}

pub struct Link {
    pub index: u32,
    pub mac: [u8; 6],
    /// The kernel sees a carrier (cable in, peer veth up).
    pub carrier: bool,
}

pub fn link(name: &str) -> io::Result<Link> {
    let mut q = LinkMessage::default();
    q.attributes.push(LinkAttribute::IfName(name.to_string()));
    let answers = request(RouteNetlinkMessage::GetLink(q), NLM_F_ACK)?;
    let msg = answers
        .into_iter()
        .find_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(l),
            _ => None,
        })
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no link {name}")))?;
    let mut mac = [0u8; 6];
    let mut carrier = false;
    for a in &msg.attributes {
        match a {
            LinkAttribute::Address(m) if m.len() == 6 => mac.copy_from_slice(m),
            LinkAttribute::Carrier(c) => carrier = *c != 0,
            _ => {}
        }
    }
    Ok(Link {
        index: msg.header.index,
        mac,
        carrier,
    })
}

pub fn set_up(name: &str) -> io::Result<()> {
    let l = link(name)?;
    let msg = LinkUnspec::new_with_index(l.index).up().build();
    request(RouteNetlinkMessage::SetLink(msg), NLM_F_ACK).map(drop)
}

/// Every IPv4 address configured on this host.
pub fn local_ipv4() -> io::Result<Vec<Ipv4Addr>> {
    let dump = request(
        RouteNetlinkMessage::GetAddress(AddressMessage::default()),
        NLM_F_DUMP,
    )?;
    let mut out = Vec::new();
    for m in &dump {
        let RouteNetlinkMessage::NewAddress(m) = m else {
            continue;
        };
        for a in &m.attributes {
            if let AddressAttribute::Local(IpAddr::V4(v4))
            | AddressAttribute::Address(IpAddr::V4(v4)) = a
            {
                if !out.contains(v4) {
                    out.push(*v4);
                }
            }
        }
    }
    Ok(out)
}

fn address(ifname: &str, addr: Ipv4Addr, prefix: u8) -> io::Result<AddressMessage> {
    let l = link(ifname)?;
    Ok(AddressMessageBuilder::<Ipv4Addr>::new()
        .index(l.index)
        .address(addr, prefix)
        .build())
}

/// Adds `addr/prefix` to `ifname`; an address already present is fine.
pub fn add_addr(ifname: &str, addr: Ipv4Addr, prefix: u8) -> io::Result<()> {
    let msg = address(ifname, addr, prefix)?;
    unless(
        request(RouteNetlinkMessage::NewAddress(msg), CHANGE),
        &[libc::EEXIST],
    )
}

/// Removes `addr/prefix` from `ifname`; an address already gone is fine.
pub fn del_addr(ifname: &str, addr: Ipv4Addr, prefix: u8) -> io::Result<()> {
    let msg = match address(ifname, addr, prefix) {
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => return Ok(()),
        other => other?,
    };
    unless(
        request(RouteNetlinkMessage::DelAddress(msg), NLM_F_ACK),
        &[libc::EADDRNOTAVAIL, libc::ENODEV],
    )
}

/// Adds the default route through `gateway` on `ifname`; one already
/// there is fine.
pub fn add_default_route(ifname: &str, gateway: Ipv4Addr) -> io::Result<()> {
    let l = link(ifname)?;
    let msg = RouteMessageBuilder::<Ipv4Addr>::new()
        .output_interface(l.index)
        .gateway(gateway)
        .build();
    unless(
        request(RouteNetlinkMessage::NewRoute(msg), CHANGE),
        &[libc::EEXIST],
    )
}

/// The kernel's notices about one link (RTMGRP_LINK: carrier, up or
/// down, deletion), so the control loop looks at the LAN interface when
/// it changes rather than only on its periodic check. The connection runs
/// on smol's executor for as long as this lives.
pub struct LinkNotices {
    _connection: smol::Task<()>,
    notices: std::pin::Pin<Box<dyn Stream<Item = ()> + Send>>,
}

impl LinkNotices {
    pub fn subscribe(index: u32) -> io::Result<LinkNotices> {
        use rtnetlink::sys::{AsyncSocket, SocketAddr};
        let (mut conn, _, messages) =
            rtnetlink::new_connection_with_socket::<rtnetlink::sys::SmolSocket>()?;
        conn.socket_mut()
            .socket_mut()
            .bind(&SocketAddr::new(0, rtnetlink::constants::RTMGRP_LINK))?;
        let notices = messages.filter_map(move |(m, _)| async move {
            match m.payload {
                NetlinkPayload::InnerMessage(
                    RouteNetlinkMessage::NewLink(l) | RouteNetlinkMessage::DelLink(l),
                ) if l.header.index == index => Some(()),
                _ => None,
            }
        });
        Ok(LinkNotices {
            _connection: smol::spawn(conn),
            notices: Box::pin(notices),
        })
    }

    /// The next notice; never, once the subscription is gone.
    pub async fn next(&mut self) {
        if self.notices.next().await.is_none() {
            smol::future::pending::<()>().await;
        }
    }
}
