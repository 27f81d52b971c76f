//! Addresses and links through rtnetlink, driven on smol (no tokio).
//! Each call opens a short-lived connection: these run at start, at exit
//! and on role changes, never on the packet path. [`LinkNotices`] keeps
//! one open for the kernel's link notices.
use futures_util::stream::{Stream, StreamExt, TryStreamExt};
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::{AddressMessageBuilder, Handle, LinkUnspec, RouteMessageBuilder};
use std::io;
use std::net::{IpAddr, Ipv4Addr};

fn with_handle<T>(f: impl AsyncFnOnce(Handle) -> Result<T, rtnetlink::Error>) -> io::Result<T> {
    let (conn, handle, _) = rtnetlink::new_connection_with_socket::<rtnetlink::sys::SmolSocket>()?;
    smol::block_on(async move {
        let task = smol::spawn(conn);
        let r = f(handle).await;
        drop(task);
        r.map_err(to_io)
    })
}

fn to_io(e: rtnetlink::Error) -> io::Error {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io(),
        other => io::Error::other(other.to_string()),
    }
}

pub struct Link {
    pub index: u32,
    pub mac: [u8; 6],
    /// The kernel sees a carrier (cable in, peer veth up).
    pub carrier: bool,
}

pub fn link(name: &str) -> io::Result<Link> {
    let name = name.to_string();
    with_handle(async move |h| {
        let mut links = h.link().get().match_name(name).execute();
        let msg = links
            .try_next()
            .await?
            .ok_or(rtnetlink::Error::RequestFailed)?;
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
    })
}

pub fn set_up(name: &str) -> io::Result<()> {
    let l = link(name)?;
    with_handle(async move |h| {
        h.link()
            .set(LinkUnspec::new_with_index(l.index).up().build())
            .execute()
            .await
    })
}

/// Every IPv4 address configured on this host.
pub fn local_ipv4() -> io::Result<Vec<Ipv4Addr>> {
    with_handle(async move |h| {
        let mut out = Vec::new();
        let mut addrs = h.address().get().execute();
        while let Some(m) = addrs.try_next().await? {
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
    })
}

/// Adds `addr/prefix` to `ifname`; an address already present is fine.
pub fn add_addr(ifname: &str, addr: Ipv4Addr, prefix: u8) -> io::Result<()> {
    let l = link(ifname)?;
    let r = with_handle(async move |h| {
        h.address()
            .add(l.index, IpAddr::V4(addr), prefix)
            .execute()
            .await
    });
    match r {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        other => other,
    }
}

/// Removes `addr/prefix` from `ifname`; an address already gone is fine.
pub fn del_addr(ifname: &str, addr: Ipv4Addr, prefix: u8) -> io::Result<()> {
    let l = link(ifname)?;
    let msg = AddressMessageBuilder::<Ipv4Addr>::new()
        .index(l.index)
        .address(addr, prefix)
        .build();
    let r = with_handle(async move |h| h.address().del(msg).execute().await);
    match r {
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EADDRNOTAVAIL) | Some(libc::ENODEV)
            ) =>
        {
            Ok(())
        }
        other => other,
    }
}

/// Adds the default route through `gateway` on `ifname`; one already
/// there is fine.
pub fn add_default_route(ifname: &str, gateway: Ipv4Addr) -> io::Result<()> {
    let l = link(ifname)?;
    let msg = RouteMessageBuilder::<Ipv4Addr>::new()
        .output_interface(l.index)
        .gateway(gateway)
        .build();
    let r = with_handle(async move |h| h.route().add(msg).execute().await);
    match r {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        other => other,
    }
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
