//! The AF_PACKET socket of the data plane: one socket on the LAN interface
//! with `PACKET_VNET_HDR`, so GSO super-frames and partial checksums arrive
//! with their virtio-net header and leave with it (DESIGN.md section 9), a
//! classic BPF filter that keeps only ARP and frames to the virtual MAC, a
//! TPACKET_V2 receive ring (no copy and no system call while frames are
//! ready) and batched send through `sendmmsg`.
//!
//! Behind the eBPF engine's tc program it is two sockets instead, bound to
//! ETH_P_IP (the ring) and ETH_P_ARP (`Receive::AfterTc`). The kernel hands
//! a frame to ETH_P_ALL sockets before tc ingress and to protocol-bound
//! ones after it, so the frames the program forwards never reach user
//! space at all.
//!
//! Sending stays on `sendmmsg` on purpose (from reading net/packet/af_packet.c,
//! not from a failed test): a PACKET_TX_RING hands the ring's pages to the
//! skb as fragments (`tpacket_fill_skb`), and `tpacket_destruct_skb` marks
//! the slot free as soon as the skb is orphaned — on veth that is in the
//! receiver's `ip_rcv`, while the receiving socket may still hold those pages
//! in its queue. Reusing the slot would then rewrite data already delivered.
use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::{addr_of, addr_of_mut};
use std::sync::atomic::Ordering;

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;

/// Size of `struct virtio_net_hdr` (without `num_buffers`).
pub const VNET_HDR_LEN: usize = 10;

const ETH_P_ALL: u16 = 0x0003;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;

/// Where the socket sits in the kernel's receive path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Receive {
    /// Every frame, before tc ingress and with its VLAN tag still known
    /// (the userspace engine).
    All,
    /// IPv4 and ARP after tc ingress (the eBPF engine, whose program drops
    /// tagged frames to the virtual MAC: the kernel clears the tag before
    /// a protocol-bound socket sees the frame).
    AfterTc,
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn setsockopt<T>(fd: RawFd, level: libc::c_int, name: libc::c_int, val: &T) -> io::Result<()> {
    // SAFETY: `val` points to a live T of the given size for the duration of the call.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (val as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    })
    .map(drop)
}

pub struct PacketSocket {
    fd: OwnedFd,
    /// `Receive::AfterTc`: the ARP socket beside the IPv4 one.
    arp: Option<OwnedFd>,
    ifindex: i32,
    ring: Option<RxRing>,
}

impl PacketSocket {
    /// Opens a vnet-header packet socket bound to `ifindex`, filtered to ARP
    /// and frames addressed to `vmac`, where `at` says.
    pub fn open(ifindex: u32, vmac: [u8; 6], at: Receive) -> io::Result<PacketSocket> {
        let (proto, arp) = match at {
            Receive::All => (ETH_P_ALL, None),
            Receive::AfterTc => {
                let arp = raw_socket(ETH_P_ARP)?;
                attach(&arp, &arp_filter(vmac, ifindex))?;
                setsockopt(
                    arp.as_raw_fd(),
                    libc::SOL_PACKET,
                    libc::PACKET_VNET_HDR,
                    &1i32,
                )?;
                bind(&arp, ETH_P_ARP, ifindex)?;
                (ETH_P_IP, Some(arp))
            }
        };
        let fd = raw_socket(proto)?;
        let raw = fd.as_raw_fd();
        let mut s = PacketSocket {
            fd,
            arp,
            ifindex: ifindex as i32,
            ring: None,
        };
        // The filter goes on before bind so no unfiltered frame is queued.
        let filter = match at {
            Receive::All => all_filter(vmac),
            Receive::AfterTc => vmac_filter(vmac),
        };
        attach(&s.fd, &filter)?;
        // The kernel takes these in this order only: the version and the
        // vnet header are refused once a ring exists.
        let v2 = libc::tpacket_versions::TPACKET_V2 as libc::c_int;
        setsockopt(raw, libc::SOL_PACKET, libc::PACKET_VERSION, &v2)?;
        setsockopt(raw, libc::SOL_PACKET, libc::PACKET_VNET_HDR, &1i32)?;
        setsockopt(raw, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, &1i32)?;
        setsockopt(raw, libc::SOL_PACKET, libc::PACKET_COPY_THRESH, &1i32)?;
        setsockopt(raw, libc::SOL_SOCKET, libc::SO_RCVBUF, &RX_QUEUE_BYTES)?;
        s.ring = Some(RxRing::setup(raw)?);
        bind(&s.fd, proto, ifindex)?;
        Ok(s)
    }

    /// Hands the receive ring to its reader (the data-plane thread); the
    /// socket keeps sending and membership.
    pub fn take_ring(&mut self) -> Option<RxRing> {
        self.ring.take()
    }

    /// Reads the next frame queued on the socket (one the ring marked
    /// `SlotKind::Queued`) with its virtio header into `buf`; returns its
    /// length, 0 if none is there.
    pub fn recv_queued(&self, buf: &mut [u8]) -> io::Result<usize> {
        recv(&self.fd, buf)
    }

    /// Reads the next ARP frame of a `Receive::AfterTc` socket with its
    /// virtio header into `buf`; 0 if none is there (or none can be:
    /// `Receive::All` gets ARP in its ring).
    pub fn recv_arp(&self, buf: &mut [u8]) -> io::Result<usize> {
        match &self.arp {
            Some(fd) => recv(fd, buf),
            None => Ok(0),
        }
    }

    fn membership(&self, mac: [u8; 6], add: bool) -> io::Result<()> {
        // SAFETY: zeroed packet_mreq is valid.
        let mut mr: libc::packet_mreq = unsafe { zeroed() };
        mr.mr_ifindex = self.ifindex;
        mr.mr_type = libc::PACKET_MR_UNICAST as u16;
        mr.mr_alen = 6;
        mr.mr_address[..6].copy_from_slice(&mac);
        let opt = if add {
            libc::PACKET_ADD_MEMBERSHIP
        } else {
            libc::PACKET_DROP_MEMBERSHIP
        };
        setsockopt(self.fd.as_raw_fd(), libc::SOL_PACKET, opt, &mr)
    }

    /// Adds `mac` to the interface's unicast filter (promiscuous where the
    /// driver has none); the kernel drops the membership with the socket.
    pub fn join(&self, mac: [u8; 6]) -> io::Result<()> {
        self.membership(mac, true)
    }

    pub fn leave(&self, mac: [u8; 6]) -> io::Result<()> {
        self.membership(mac, false)
    }

    /// Waits up to `timeout_ms` for frames or a poke on `wake` (an eventfd,
    /// drained here).
    pub fn wait(&self, wake: RawFd, timeout_ms: i32) -> io::Result<()> {
        // SAFETY: the caller keeps its eventfd open across the call.
        let wake = unsafe { BorrowedFd::borrow_raw(wake) };
        let arp = self.arp.as_ref().map_or(self.fd.as_fd(), |a| a.as_fd());
        let mut p =
            [wake, self.fd.as_fd(), arp].map(|fd| PollFd::from_borrowed_fd(fd, PollFlags::IN));
        // Without an ARP socket the third entry is left out.
        let n = if self.arp.is_some() { 3 } else { 2 };
        match rustix::event::poll(&mut p[..n], poll_timeout(timeout_ms).as_ref()) {
            Ok(_) => {}
            Err(Errno::INTR) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        for q in &p[1..n] {
            if q.revents().contains(PollFlags::ERR) {
                // The link went down (ENETDOWN): reading the error clears
                // it, or every later poll would return at once and spin.
                if let Ok(Err(e)) = rustix::net::sockopt::socket_error(q) {
                    log::debug!("packet socket: {}", io::Error::from(e));
                }
            }
        }
        if p[0].revents().contains(PollFlags::IN) {
            let _ = rustix::io::read(wake, &mut [0u8; 8]);
        }
        Ok(())
    }

    /// Sends each slice (virtio header + frame) as one frame; returns how many went.
    pub fn send_batch(&self, frames: &[&[u8]]) -> io::Result<usize> {
        send_mmsg(&self.fd, frames)
    }

    /// Sends ARP frames (virtio header + frame), on the socket bound to
    /// ARP where there is one: a frame's protocol is the socket's.
    pub fn send_arp(&self, frames: &[&[u8]]) -> io::Result<usize> {
        send_mmsg(self.arp.as_ref().unwrap_or(&self.fd), frames)
    }
}

/// Negative waits for ever, as poll(2)'s timeout does.
fn poll_timeout(timeout_ms: i32) -> Option<Timespec> {
    (timeout_ms >= 0).then(|| Timespec {
        tv_sec: i64::from(timeout_ms / 1000),
        tv_nsec: i64::from(timeout_ms % 1000) * 1_000_000,
    })
}

fn raw_socket(proto: u16) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let raw = cvt(unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            proto.to_be() as libc::c_int,
        )
    })?;
    // SAFETY: raw is a fresh, valid descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

fn bind(fd: &OwnedFd, proto: u16, ifindex: u32) -> io::Result<()> {
    // SAFETY: zeroed sockaddr_ll is valid; fields set below.
    let mut sll: libc::sockaddr_ll = unsafe { zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto.to_be();
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: sll is a valid sockaddr_ll of the size passed.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    })
    .map(drop)
}

fn recv(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is a live, writable buffer of the length passed.
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_TRUNC,
        )
    };
    if n < 0 {
        return nothing_queued(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// A non-blocking read that found nothing, or was interrupted, read no
/// frame; any other error is the socket's.
fn nothing_queued(e: io::Error) -> io::Result<usize> {
    match e.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(0),
        _ => Err(e),
    }
}

// Classic BPF, as the kernel runs a packet socket's filter: the frame from
// its MAC header, and the skb's own fields at SKF_AD_OFF.
const LD_H_ABS: u16 = 0x28;
const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const RET_K: u16 = 0x06;
const SKF_AD_OFF: u32 = 0xffff_f000;
const SKF_AD_PKTTYPE: u32 = 4;
const SKF_AD_IFINDEX: u32 = 8;
const PACKET_OTHERHOST: u32 = 3;
/// What a filter returns to keep a frame: more than any frame's length.
const KEEP: u32 = 0x0004_0000;

fn ins(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// Keeps a frame whose destination is the virtual MAC and drops any other:
/// the end of every filter here, so a jump before it to 4 past its start
/// keeps the frame and one to 5 past drops it.
fn to_vmac(vmac: [u8; 6]) -> Vec<libc::sock_filter> {
    let hi = u32::from_be_bytes([vmac[0], vmac[1], vmac[2], vmac[3]]);
    let lo = u32::from(u16::from_be_bytes([vmac[4], vmac[5]]));
    vec![
        ins(LD_W_ABS, 0, 0, 0),
        ins(JEQ_K, 0, 3, hi),
        ins(LD_H_ABS, 0, 0, 4),
        ins(JEQ_K, 0, 1, lo),
        ins(RET_K, 0, 0, KEEP),
        ins(RET_K, 0, 0, 0),
    ]
}

/// `Receive::All`: ARP, and frames whose destination is the virtual MAC.
fn all_filter(vmac: [u8; 6]) -> Vec<libc::sock_filter> {
    let mut f = vec![ins(LD_H_ABS, 0, 0, 12), ins(JEQ_K, 4, 0, 0x0806)];
    f.extend(to_vmac(vmac));
    f
}

/// The IPv4 socket behind tc: frames to the virtual MAC, which are those
/// the program left to user space (it gives the local path's frames our
/// own MAC, and takes the rest).
fn vmac_filter(vmac: [u8; 6]) -> Vec<libc::sock_filter> {
    to_vmac(vmac)
}

/// The ARP socket behind tc, which sees a frame after the kernel took its
/// VLAN tag off: only frames of the LAN interface itself (a VLAN device's
/// are handed to it too), and no PACKET_OTHERHOST (what a VLAN id with no
/// device becomes) unless it is to the virtual MAC (tagged ones of which
/// the tc program drops).
fn arp_filter(vmac: [u8; 6], ifindex: u32) -> Vec<libc::sock_filter> {
    let mut f = vec![
        ins(LD_W_ABS, 0, 0, SKF_AD_OFF + SKF_AD_IFINDEX),
        ins(JEQ_K, 0, 7, ifindex),
        ins(LD_W_ABS, 0, 0, SKF_AD_OFF + SKF_AD_PKTTYPE),
        ins(JEQ_K, 0, 4, PACKET_OTHERHOST),
    ];
    f.extend(to_vmac(vmac));
    f
}

fn attach(fd: &OwnedFd, prog: &[libc::sock_filter]) -> io::Result<()> {
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    setsockopt(
        fd.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_ATTACH_FILTER,
        &fprog,
    )
}

fn send_mmsg(fd: &OwnedFd, frames: &[&[u8]]) -> io::Result<usize> {
    let mut sent = 0;
    for chunk in frames.chunks(64) {
        let mut iovs: [libc::iovec; 64] = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; 64];
        // SAFETY: zeroed mmsghdr is valid (null name, no control).
        let mut hdrs: [libc::mmsghdr; 64] = unsafe { zeroed() };
        for (i, f) in chunk.iter().enumerate() {
            iovs[i] = libc::iovec {
                iov_base: f.as_ptr() as *mut _,
                iov_len: f.len(),
            };
            hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
            hdrs[i].msg_hdr.msg_iovlen = 1;
        }
        sent += send_each(chunk.len(), |off| {
            // SAFETY: headers [off..len) point at live iovecs over borrowed slices.
            let n = unsafe {
                libc::sendmmsg(
                    fd.as_raw_fd(),
                    hdrs[off..].as_mut_ptr(),
                    (chunk.len() - off) as u32,
                    0,
                )
            };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        })?;
    }
    Ok(sent)
}

/// Sends frames `0..count` through `send`, which sends those from `off` on
/// and says how many went; returns how many went in all.
fn send_each(count: usize, mut send: impl FnMut(usize) -> io::Result<usize>) -> io::Result<usize> {
    let mut sent = 0;
    let mut off = 0;
    while off < count {
        match send(off) {
            Ok(n) => {
                off += n;
                sent += n;
            }
            Err(e) => match e.raw_os_error() {
                Some(libc::EINTR) => {}
                // A full queue or an oversized frame loses that frame only.
                Some(libc::EAGAIN) | Some(libc::ENOBUFS) | Some(libc::EMSGSIZE) => off += 1,
                _ => return Err(e),
            },
        }
    }
    Ok(sent)
}

/// Geometry of the receive ring. A slot holds any frame of a 1500-byte MTU
/// behind its headers; larger frames (GSO super-frames, jumbo frames) take
/// the socket's queue instead (`PACKET_COPY_THRESH`), marked in their slot
/// with `TP_STATUS_COPY` so the order is kept.
///
/// TPACKET_V2 rather than V3: a V3 block is only handed over when full or
/// after its timeout (at least 1 ms, one 4 ms jiffy here), which every
/// packet of a lightly loaded director would wait out. V2 hands each frame
/// over as soon as it is written.
const RX_FRAME_SIZE: usize = 2048;
const RX_FRAME_NR: usize = 4096;
/// Ring memory is allocated in blocks of whole frames.
const RX_BLOCK_SIZE: usize = 64 << 10;
/// Room in the socket queue for super-frames that bypass the ring.
const RX_QUEUE_BYTES: i32 = 8 << 20;
/// Largest frame that can come through the queue, plus its virtio header.
pub const SLOT_LEN: usize = VNET_HDR_LEN + 14 + 65535 + 64;

/// A TPACKET_V2 receive ring mapped from the packet socket. The mapping
/// keeps the socket's file alive by itself, so the ring may be moved away
/// from its `PacketSocket` (it still needs it to read queued frames).
pub struct RxRing {
    map: *mut u8,
    map_len: usize,
    next: usize,
}

// SAFETY: the mapping is owned by the ring alone; the kernel's side of it is
// synchronised through each frame's status word.
unsafe impl Send for RxRing {}

/// One frame taken from the ring, not yet handed back.
#[derive(Clone, Copy, Debug)]
pub struct RxSlot {
    pub index: usize,
    /// `start..start + len` in the slot is the virtio-net header followed
    /// by the Ethernet frame.
    pub start: usize,
    pub len: usize,
    pub kind: SlotKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotKind {
    /// The whole frame is in the slot.
    InRing,
    /// The frame waits in the socket queue: read it with `recv_queued`.
    Queued,
    /// The frame was cut short and cannot be forwarded.
    Truncated,
    /// The frame came on a VLAN (a tag with a VLAN id, taken off by the
    /// driver): duet serves the untagged LAN only. `queued` says whether
    /// its bytes wait in the socket queue and must be read away.
    Tagged { queued: bool },
}

/// The fields of a slot's `tpacket2_hdr` that say what the slot holds.
#[derive(Clone, Copy, Debug)]
struct SlotHeader {
    len: u32,
    snaplen: u32,
    /// Offset of the Ethernet header in the slot.
    mac: u16,
    vlan_tci: u16,
}

impl RxSlot {
    /// What slot `index`, handed over with `status`, holds: the kernel's
    /// offsets are trusted only as far as they stay inside the slot.
    fn of(index: usize, status: u32, h: SlotHeader) -> RxSlot {
        let len = h.len as usize;
        let snaplen = h.snaplen as usize;
        let mac = usize::from(h.mac);
        let queued = status & libc::TP_STATUS_COPY != 0;
        // VLAN id 0 only carries a priority: the frame belongs to the
        // untagged LAN, as the kernel's own receive path treats it. The
        // driver (veth, most NICs) took the tag off the bytes into
        // `tp_vlan_tci`.
        let vid = h.vlan_tci & 0x0fff;
        let kind = if status & libc::TP_STATUS_VLAN_VALID != 0 && vid != 0 {
            SlotKind::Tagged { queued }
        } else if queued {
            SlotKind::Queued
        } else if snaplen < len {
            SlotKind::Truncated
        } else {
            SlotKind::InRing
        };
        // A frame never starts inside the header.
        let in_bounds =
            mac >= size_of::<libc::tpacket2_hdr>() + VNET_HDR_LEN && mac + snaplen <= RX_FRAME_SIZE;
        match (kind, in_bounds) {
            (SlotKind::InRing, false) => RxSlot {
                index,
                start: 0,
                len: 0,
                kind: SlotKind::Truncated,
            },
            (SlotKind::InRing, true) => RxSlot {
                index,
                start: mac - VNET_HDR_LEN,
                len: VNET_HDR_LEN + snaplen,
                kind,
            },
            _ => RxSlot {
                index,
                start: 0,
                len: 0,
                kind,
            },
        }
    }
}

impl RxRing {
    fn setup(fd: RawFd) -> io::Result<RxRing> {
        let req = libc::tpacket_req {
            tp_block_size: RX_BLOCK_SIZE as u32,
            tp_block_nr: (RX_FRAME_NR * RX_FRAME_SIZE / RX_BLOCK_SIZE) as u32,
            tp_frame_size: RX_FRAME_SIZE as u32,
            tp_frame_nr: RX_FRAME_NR as u32,
        };
        setsockopt(fd, libc::SOL_PACKET, libc::PACKET_RX_RING, &req)?;
        let map_len = RX_FRAME_NR * RX_FRAME_SIZE;
        // SAFETY: maps the ring just configured on fd; checked below.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(RxRing {
            map: map.cast(),
            map_len,
            next: 0,
        })
    }

    fn frame_ptr(&self, i: usize) -> *mut u8 {
        // SAFETY: i < RX_FRAME_NR, so the offset stays inside the mapping.
        unsafe { self.map.add(i * RX_FRAME_SIZE) }
    }

    /// Every slot starts with its header, aligned: the mapping is
    /// page-aligned and slots are `RX_FRAME_SIZE` apart.
    fn hdr(&self, i: usize) -> *mut libc::tpacket2_hdr {
        self.frame_ptr(i).cast()
    }

    fn status(&self, i: usize) -> u32 {
        // SAFETY: the status word of frame i's header; the kernel writes it
        // concurrently, hence the volatile read.
        let s = unsafe { std::ptr::read_volatile(addr_of!((*self.hdr(i)).tp_status)) };
        // The frame the kernel wrote before flipping the status is visible
        // after this fence.
        std::sync::atomic::fence(Ordering::Acquire);
        s
    }

    /// Whether the next frame is ready, without taking it.
    pub fn ready(&self) -> bool {
        self.status(self.next) & libc::TP_STATUS_USER != 0
    }

    /// Takes the next frame the kernel has handed over, if any. It stays
    /// ours until `release`; frames may be held several at a time (and must
    /// be, to be sent from the ring in one batch).
    pub fn take(&mut self) -> Option<RxSlot> {
        let i = self.next;
        let status = self.status(i);
        if status & libc::TP_STATUS_USER == 0 {
            return None;
        }
        self.next = (i + 1) % RX_FRAME_NR;
        // SAFETY: frame i is ours (TP_STATUS_USER), and the fence in
        // `status` made the kernel's header writes visible.
        let h = unsafe { self.hdr(i).read() };
        Some(RxSlot::of(
            i,
            status,
            SlotHeader {
                len: h.tp_len,
                snaplen: h.tp_snaplen,
                mac: h.tp_mac,
                vlan_tci: h.tp_vlan_tci,
            },
        ))
    }

    fn slot_bytes(&self, i: usize) -> &[u8] {
        // SAFETY: frame i is ours (status TP_STATUS_USER) until released.
        unsafe { std::slice::from_raw_parts(self.frame_ptr(i), RX_FRAME_SIZE) }
    }

    /// The virtio header and frame of a slot taken and not yet released.
    pub fn frame(&self, s: &RxSlot) -> &[u8] {
        &self.slot_bytes(s.index)[s.start..s.start + s.len]
    }

    /// As `frame`, to rewrite in place.
    pub fn frame_mut(&mut self, s: &RxSlot) -> &mut [u8] {
        // SAFETY: frame s.index is ours until released; `&mut self` makes
        // the borrow unique.
        let f = unsafe { std::slice::from_raw_parts_mut(self.frame_ptr(s.index), RX_FRAME_SIZE) };
        &mut f[s.start..s.start + s.len]
    }

    /// Hands a slot back to the kernel.
    pub fn release(&mut self, s: &RxSlot) {
        let h = self.hdr(s.index);
        // Everything read from (or written to) the frame happens before the
        // kernel may refill it.
        std::sync::atomic::fence(Ordering::Release);
        // SAFETY: the status word of a frame we own.
        unsafe { std::ptr::write_volatile(addr_of_mut!((*h).tp_status), libc::TP_STATUS_KERNEL) };
    }
}

impl Drop for RxRing {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in setup.
        unsafe { libc::munmap(self.map.cast(), self.map_len) };
    }
}

/// Receive counters of the socket since the last call (the kernel resets
/// them on read): frames lost because the ring was full.
pub fn ring_drops(sock: &PacketSocket) -> io::Result<u64> {
    // SAFETY: zeroed stats are valid; the kernel fills at most `len` bytes.
    let mut st: libc::tpacket_stats = unsafe { zeroed() };
    let mut len = size_of::<libc::tpacket_stats>() as libc::socklen_t;
    // SAFETY: st and len are live and sized as declared.
    cvt(unsafe {
        libc::getsockopt(
            sock.fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            (&mut st as *mut libc::tpacket_stats).cast(),
            &mut len,
        )
    })?;
    Ok(u64::from(st.tp_drops))
}

/// `ifname` as `ifreq` holds it: cut to fit with its terminating NUL.
fn if_name(ifname: &str) -> [libc::c_char; libc::IFNAMSIZ] {
    let mut name = [0; libc::IFNAMSIZ];
    for (d, s) in name.iter_mut().zip(ifname.bytes().take(libc::IFNAMSIZ - 1)) {
        *d = s as libc::c_char;
    }
    name
}

/// Turns generic receive offload off on `ifname` (the director forwards what
/// it receives; GRO would only merge frames it must pass on unchanged).
/// Returns the previous setting so it can be restored.
pub fn set_gro(ifname: &str, on: bool) -> io::Result<bool> {
    const ETHTOOL_GGRO: u32 = 0x2b;
    const ETHTOOL_SGRO: u32 = 0x2c;
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    let fd = rustix::net::socket_with(
        rustix::net::AddressFamily::INET,
        rustix::net::SocketType::DGRAM,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )?;
    let call = |cmd: u32, data: u32| -> io::Result<u32> {
        let mut v = EthtoolValue { cmd, data };
        // SAFETY: zeroed ifreq is valid; name copied with a terminating NUL.
        let mut ifr: libc::ifreq = unsafe { zeroed() };
        ifr.ifr_name = if_name(ifname);
        ifr.ifr_ifru.ifru_data = (&mut v as *mut EthtoolValue).cast();
        // SAFETY: ifr points at v for the duration of the call.
        cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCETHTOOL as _, &mut ifr) })?;
        Ok(v.data)
    };
    let old = call(ETHTOOL_GGRO, 0)? != 0;
    if old != on {
        call(ETHTOOL_SGRO, on as u32)?;
    }
    Ok(old)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    const VMAC: [u8; 6] = [0x00, 0x00, 0x5e, 0x00, 0x01, 0x07];
    const OWN_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
    const BROADCAST: [u8; 6] = [0xff; 6];
    /// The LAN interface's index.
    const LAN: u32 = 3;
    const PACKET_HOST: u32 = 0;
    const PACKET_BROADCAST: u32 = 1;
    const ETH_P_IPV6: u16 = 0x86dd;

    /// What a socket filter sees of a frame.
    struct Skb {
        frame: Vec<u8>,
        ifindex: u32,
        pkttype: u32,
    }

    fn skb(dst: [u8; 6], ethertype: u16, ifindex: u32, pkttype: u32) -> Skb {
        let mut frame = dst.to_vec();
        frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 9]);
        frame.extend_from_slice(&ethertype.to_be_bytes());
        frame.extend_from_slice(&[0u8; 28]);
        Skb {
            frame,
            ifindex,
            pkttype,
        }
    }

    /// Runs `prog` as the kernel runs a socket filter, for the instructions
    /// the filters here use: a load past the frame's end drops it, as in
    /// the kernel; an instruction the kernel's checker would refuse (an
    /// unknown one, a jump out of the program) is an error.
    fn run(prog: &[libc::sock_filter], skb: &Skb) -> Result<u32, String> {
        let mut a = 0u32;
        let mut pc = 0;
        loop {
            let i = prog.get(pc).ok_or(format!("jump to {pc}, past the end"))?;
            pc += 1;
            match i.code {
                LD_W_ABS | LD_H_ABS if i.k >= SKF_AD_OFF => {
                    a = match i.k - SKF_AD_OFF {
                        SKF_AD_PKTTYPE => skb.pkttype,
                        SKF_AD_IFINDEX => skb.ifindex,
                        x => return Err(format!("ancillary field {x}")),
                    }
                }
                LD_W_ABS | LD_H_ABS => {
                    let size = if i.code == LD_W_ABS { 4 } else { 2 };
                    let k = i.k as usize;
                    let Some(b) = skb.frame.get(k..k + size) else {
                        return Ok(0);
                    };
                    a = b.iter().fold(0, |a, &b| a << 8 | u32::from(b));
                }
                JEQ_K => pc += usize::from(if a == i.k { i.jt } else { i.jf }),
                RET_K => return Ok(i.k),
                c => return Err(format!("instruction {c:#x}")),
            }
        }
    }

    #[test]
    fn filters_keep_what_each_socket_is_for() {
        let vmac_other_vrid = [0x00, 0x00, 0x5e, 0x00, 0x01, 0x08];
        let vmac_other_oui = [0x01, 0x00, 0x5e, 0x00, 0x01, 0x07];
        let mut runt = skb(VMAC, ETH_P_IP, LAN, PACKET_OTHERHOST);
        runt.frame.truncate(5);
        let mut no_type = skb(BROADCAST, ETH_P_ARP, LAN, PACKET_BROADCAST);
        no_type.frame.truncate(12);
        let all = all_filter(VMAC);
        let ip = vmac_filter(VMAC);
        let arp = arp_filter(VMAC, LAN);
        #[rustfmt::skip]
        let cases: Vec<(&str, &[libc::sock_filter], Skb, bool)> = vec![
            ("all: ARP broadcast", &all, skb(BROADCAST, ETH_P_ARP, LAN, PACKET_BROADCAST), true),
            ("all: ARP reply to our own MAC", &all, skb(OWN_MAC, ETH_P_ARP, LAN, PACKET_HOST), true),
            ("all: IPv4 to the virtual MAC", &all, skb(VMAC, ETH_P_IP, LAN, PACKET_OTHERHOST), true),
            ("all: IPv6 to the virtual MAC (classified later)", &all, skb(VMAC, ETH_P_IPV6, LAN, PACKET_OTHERHOST), true),
            ("all: IPv4 to our own MAC", &all, skb(OWN_MAC, ETH_P_IP, LAN, PACKET_HOST), false),
            ("all: IPv4 broadcast", &all, skb(BROADCAST, ETH_P_IP, LAN, PACKET_BROADCAST), false),
            ("all: another VRID's virtual MAC", &all, skb(vmac_other_vrid, ETH_P_IP, LAN, PACKET_OTHERHOST), false),
            ("all: first octet differs", &all, skb(vmac_other_oui, ETH_P_IP, LAN, PACKET_OTHERHOST), false),
            ("all: runt frame", &all, runt, false),
            ("all: no ethertype", &all, no_type, false),
            ("ip: IPv4 to the virtual MAC", &ip, skb(VMAC, ETH_P_IP, LAN, PACKET_OTHERHOST), true),
            ("ip: IPv4 to our own MAC (the tc program's local path)", &ip, skb(OWN_MAC, ETH_P_IP, LAN, PACKET_HOST), false),
            ("ip: another VRID's virtual MAC", &ip, skb(vmac_other_vrid, ETH_P_IP, LAN, PACKET_OTHERHOST), false),
            ("arp: broadcast request", &arp, skb(BROADCAST, ETH_P_ARP, LAN, PACKET_BROADCAST), true),
            ("arp: reply to our own MAC", &arp, skb(OWN_MAC, ETH_P_ARP, LAN, PACKET_HOST), true),
            ("arp: to the virtual MAC", &arp, skb(VMAC, ETH_P_ARP, LAN, PACKET_OTHERHOST), true),
            ("arp: other host (a VLAN id with no device)", &arp, skb([0x02, 0, 0, 0, 0, 5], ETH_P_ARP, LAN, PACKET_OTHERHOST), false),
            ("arp: another VRID's virtual MAC", &arp, skb(vmac_other_vrid, ETH_P_ARP, LAN, PACKET_OTHERHOST), false),
            ("arp: broadcast on a VLAN device", &arp, skb(BROADCAST, ETH_P_ARP, LAN + 1, PACKET_BROADCAST), false),
            ("arp: to the virtual MAC on a VLAN device", &arp, skb(VMAC, ETH_P_ARP, LAN + 1, PACKET_OTHERHOST), false),
        ];
        for (what, prog, skb, keep) in cases {
            let r = run(prog, &skb).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(r != 0, keep, "{what}");
            if keep {
                assert_eq!(r, KEEP, "{what}");
            }
        }
    }

    #[test]
    fn filters_are_programs_the_kernel_accepts() {
        // The kernel's checker refuses a jump out of the program and a
        // program that can fall off its end.
        for (what, prog) in [
            ("all", all_filter(VMAC)),
            ("ip", vmac_filter(VMAC)),
            ("arp", arp_filter(VMAC, LAN)),
        ] {
            assert!(u16::try_from(prog.len()).is_ok(), "{what}");
            assert_eq!(prog.last().map(|i| i.code), Some(RET_K), "{what}");
            for (at, i) in prog.iter().enumerate() {
                if i.code == JEQ_K {
                    for off in [i.jt, i.jf] {
                        assert!(at + 1 + usize::from(off) < prog.len(), "{what}: {at}");
                    }
                }
            }
        }
        // What a kept frame is cut to: every frame whole.
        assert!(KEEP as usize >= SLOT_LEN);
    }

    fn hdr(len: u32, snaplen: u32, mac: u16, vlan_tci: u16) -> SlotHeader {
        SlotHeader {
            len,
            snaplen,
            mac,
            vlan_tci,
        }
    }

    #[test]
    fn slots_say_what_they_hold() {
        const USER: u32 = libc::TP_STATUS_USER;
        const COPY: u32 = libc::TP_STATUS_COPY;
        const VLAN: u32 = libc::TP_STATUS_VLAN_VALID;
        // Where the kernel puts a frame behind a TPACKET_V2 header, its
        // sockaddr_ll and a virtio header.
        const MAC: u16 = 76;
        let first = (size_of::<libc::tpacket2_hdr>() + VNET_HDR_LEN) as u16;
        let fits = RX_FRAME_SIZE as u32 - u32::from(MAC);
        let in_ring = |start: usize, len: usize| (SlotKind::InRing, start, len);
        let empty = |kind| (kind, 0, 0);
        #[rustfmt::skip]
        let cases = [
            ("in the ring", USER, hdr(60, 60, MAC, 0), in_ring(66, 70)),
            ("fills the slot", USER, hdr(fits, fits, MAC, 0), in_ring(66, RX_FRAME_SIZE - 66)),
            ("right behind the header", USER, hdr(60, 60, first, 0), in_ring(usize::from(first) - VNET_HDR_LEN, 70)),
            ("in the queue", USER | COPY, hdr(9014, 1900, MAC, 0), empty(SlotKind::Queued)),
            ("cut short", USER, hdr(1600, 1500, MAC, 0), empty(SlotKind::Truncated)),
            ("VLAN 5", USER | VLAN, hdr(60, 60, MAC, 5), empty(SlotKind::Tagged { queued: false })),
            ("VLAN 5 in the queue", USER | VLAN | COPY, hdr(9014, 1900, MAC, 0x2005), empty(SlotKind::Tagged { queued: true })),
            ("VLAN 4095", USER | VLAN, hdr(60, 60, MAC, 0x0fff), empty(SlotKind::Tagged { queued: false })),
            ("priority tag only (VLAN 0)", USER | VLAN, hdr(60, 60, MAC, 0xa000), in_ring(66, 70)),
            ("priority tag only, in the queue", USER | VLAN | COPY, hdr(9014, 1900, MAC, 0xa000), empty(SlotKind::Queued)),
            ("a tag not marked valid", USER, hdr(60, 60, MAC, 5), in_ring(66, 70)),
            ("starts inside the header", USER, hdr(60, 60, first - 1, 0), empty(SlotKind::Truncated)),
            ("at offset 0", USER, hdr(60, 60, 0, 0), empty(SlotKind::Truncated)),
            ("one byte past the slot", USER, hdr(fits + 1, fits + 1, MAC, 0), empty(SlotKind::Truncated)),
            ("offsets far past the slot", USER, hdr(u32::MAX, u32::MAX, u16::MAX, 0), empty(SlotKind::Truncated)),
        ];
        for (what, status, h, (kind, start, len)) in cases {
            let s = RxSlot::of(7, status, h);
            assert_eq!(
                (s.index, s.kind, s.start, s.len),
                (7, kind, start, len),
                "{what}"
            );
            // `frame` slices this range of the slot, behind the slot's header.
            if len > 0 {
                assert!(start >= size_of::<libc::tpacket2_hdr>(), "{what}");
                assert!(start + len <= RX_FRAME_SIZE, "{what}");
            }
        }
    }

    /// `send_each` over a scripted `sendmmsg`: (frames, results, how many
    /// went or the error, the offsets each call started at).
    #[test]
    fn send_loses_only_the_frame_that_failed() {
        use libc::{EAGAIN, EINTR, EMSGSIZE, ENETDOWN, ENOBUFS};
        type Script = Vec<Result<usize, i32>>;
        type Case = (&'static str, usize, Script, Result<usize, i32>, Vec<usize>);
        #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            ("nothing to send", 0, vec![], Ok(0), vec![]),
            ("all at once", 5, vec![Ok(5)], Ok(5), vec![0]),
            ("in parts", 5, vec![Ok(2), Ok(3)], Ok(5), vec![0, 2]),
            ("interrupted: tried again", 3, vec![Err(EINTR), Ok(3)], Ok(3), vec![0, 0]),
            ("full queue loses one", 3, vec![Ok(1), Err(EAGAIN), Ok(1)], Ok(2), vec![0, 1, 2]),
            ("no buffers loses one", 2, vec![Err(ENOBUFS), Ok(1)], Ok(1), vec![0, 1]),
            ("oversized last frame", 3, vec![Ok(2), Err(EMSGSIZE)], Ok(2), vec![0, 2]),
            ("every frame oversized", 2, vec![Err(EMSGSIZE), Err(EMSGSIZE)], Ok(0), vec![0, 1]),
            ("link down ends the batch", 4, vec![Ok(1), Err(ENETDOWN)], Err(ENETDOWN), vec![0, 1]),
        ];
        for (what, count, script, want, offsets) in cases {
            let mut script = VecDeque::from(script);
            let mut calls = Vec::new();
            let got = send_each(count, |off| {
                calls.push(off);
                let r = script
                    .pop_front()
                    .unwrap_or_else(|| panic!("{what}: extra call"));
                r.map_err(io::Error::from_raw_os_error)
            });
            assert_eq!(got.map_err(|e| e.raw_os_error().unwrap()), want, "{what}");
            assert_eq!(calls, offsets, "{what}");
            assert!(script.is_empty(), "{what}: calls left");
        }
    }

    #[test]
    fn receive_errors_that_mean_no_frame() {
        for (errno, frame) in [
            (libc::EAGAIN, true),
            (libc::EINTR, true),
            (libc::ENETDOWN, false),
            (libc::EBADF, false),
        ] {
            match nothing_queued(io::Error::from_raw_os_error(errno)) {
                Ok(n) => assert!(frame && n == 0, "errno {errno}"),
                Err(e) => assert!(!frame && e.raw_os_error() == Some(errno), "errno {errno}"),
            }
        }
    }

    #[test]
    fn poll_timeouts() {
        for (ms, want) in [
            (-1, None),
            (i32::MIN, None),
            (0, Some((0, 0))),
            (999, Some((0, 999_000_000))),
            (1000, Some((1, 0))),
            (2500, Some((2, 500_000_000))),
            (i32::MAX, Some((2_147_483, 647_000_000))),
        ] {
            let got = poll_timeout(ms).map(|t| (t.tv_sec, t.tv_nsec));
            assert_eq!(got, want, "{ms} ms");
        }
    }

    /// A ring over anonymous memory, in which the test plays the kernel.
    fn fake_ring() -> RxRing {
        let map_len = RX_FRAME_NR * RX_FRAME_SIZE;
        // SAFETY: a fresh private mapping, unmapped by the ring's drop.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(map, libc::MAP_FAILED);
        RxRing {
            map: map.cast(),
            map_len,
            next: 0,
        }
    }

    /// Hands slot `i` to user space holding `bytes` (virtio header and
    /// frame) at the usual offset.
    fn hand_over(ring: &mut RxRing, i: usize, bytes: &[u8]) {
        const MAC: usize = 76;
        let slot = ring.frame_ptr(i);
        // SAFETY: slot i lies inside the mapping, and the frame fits in it.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                slot.add(MAC - VNET_HDR_LEN),
                bytes.len(),
            );
            let h = ring.hdr(i);
            (*h).tp_len = (bytes.len() - VNET_HDR_LEN) as u32;
            (*h).tp_snaplen = (*h).tp_len;
            (*h).tp_mac = MAC as u16;
            (*h).tp_vlan_tci = 0;
            (*h).tp_status = libc::TP_STATUS_USER;
        }
    }

    #[test]
    fn the_ring_is_walked_in_order_and_handed_back() {
        let mut ring = fake_ring();
        assert!(!ring.ready());
        assert!(ring.take().is_none());
        let bytes: Vec<u8> = (0..70).collect();
        hand_over(&mut ring, 0, &bytes);
        assert!(ring.ready());
        let s = ring.take().unwrap();
        assert_eq!((s.index, s.kind), (0, SlotKind::InRing));
        assert_eq!(ring.frame(&s), &bytes[..]);
        ring.frame_mut(&s)[VNET_HDR_LEN] = 0xff;
        assert_eq!(ring.frame(&s)[VNET_HDR_LEN], 0xff);
        // Taken, slot 0 is not offered again; slot 1 is not ready.
        assert!(ring.take().is_none());
        ring.release(&s);
        assert_eq!(ring.status(0), libc::TP_STATUS_KERNEL);
        // The walk wraps from the last slot to the first.
        ring.next = RX_FRAME_NR - 1;
        hand_over(&mut ring, RX_FRAME_NR - 1, &bytes);
        hand_over(&mut ring, 0, &bytes);
        let last = ring.take().unwrap();
        let first = ring.take().unwrap();
        assert_eq!((last.index, first.index), (RX_FRAME_NR - 1, 0));
        assert_eq!(ring.next, 1);
    }

    #[test]
    fn interface_names_fit_ifreq() {
        let bytes = |n: [libc::c_char; libc::IFNAMSIZ]| n.map(|c| c as u8);
        let mut eth0 = [0u8; libc::IFNAMSIZ];
        eth0[..4].copy_from_slice(b"eth0");
        let mut longest = [0u8; libc::IFNAMSIZ];
        longest[..15].copy_from_slice(b"abcdefghijklmno");
        for (name, want) in [
            ("", [0u8; libc::IFNAMSIZ]),
            ("eth0", eth0),
            ("abcdefghijklmno", longest),
            // Too long for the kernel: cut, still terminated.
            ("abcdefghijklmnopqrst", longest),
        ] {
            assert_eq!(bytes(if_name(name)), want, "{name}");
        }
    }
}
