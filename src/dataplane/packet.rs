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
        // Negative waits for ever, as poll(2)'s timeout does.
        let timeout = (timeout_ms >= 0).then(|| Timespec {
            tv_sec: i64::from(timeout_ms / 1000),
            tv_nsec: i64::from(timeout_ms % 1000) * 1_000_000,
        });
        match rustix::event::poll(&mut p[..n], timeout.as_ref()) {
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
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(0),
            _ => Err(e),
        };
    }
    Ok(n as usize)
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
        let mut off = 0;
        while off < chunk.len() {
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
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    // A full queue or an oversized frame loses that frame only.
                    Some(libc::EAGAIN) | Some(libc::ENOBUFS) | Some(libc::EMSGSIZE) => {
                        off += 1;
                        continue;
                    }
                    _ => return Err(e),
                }
            }
            off += n as usize;
            sent += n as usize;
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
        let len = h.tp_len as usize;
        let snaplen = h.tp_snaplen as usize;
        let mac = usize::from(h.tp_mac);
        let queued = status & libc::TP_STATUS_COPY != 0;
        // VLAN id 0 only carries a priority: the frame belongs to the
        // untagged LAN, as the kernel's own receive path treats it. The
        // driver (veth, most NICs) took the tag off the bytes into
        // `tp_vlan_tci`.
        let vid = h.tp_vlan_tci & 0x0fff;
        let kind = if status & libc::TP_STATUS_VLAN_VALID != 0 && vid != 0 {
            SlotKind::Tagged { queued }
        } else if queued {
            SlotKind::Queued
        } else if snaplen < len {
            SlotKind::Truncated
        } else {
            SlotKind::InRing
        };
        let start = mac.wrapping_sub(VNET_HDR_LEN);
        // A frame never starts inside the header.
        let in_bounds =
            mac >= size_of::<libc::tpacket2_hdr>() + VNET_HDR_LEN && mac + snaplen <= RX_FRAME_SIZE;
        Some(match (kind, in_bounds) {
            (SlotKind::InRing, false) => RxSlot {
                index: i,
                start: 0,
                len: 0,
                kind: SlotKind::Truncated,
            },
            (SlotKind::InRing, true) => RxSlot {
                index: i,
                start,
                len: VNET_HDR_LEN + snaplen,
                kind,
            },
            _ => RxSlot {
                index: i,
                start: 0,
                len: 0,
                kind,
            },
        })
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
        for (d, s) in ifr
            .ifr_name
            .iter_mut()
            .zip(ifname.bytes().take(libc::IFNAMSIZ - 1))
        {
            *d = s as libc::c_char;
        }
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
