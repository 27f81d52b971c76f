//! The AF_PACKET socket of the data plane: one socket on the LAN interface
//! with `PACKET_VNET_HDR`, so GSO super-frames and partial checksums arrive
//! with their virtio-net header and leave with it (DESIGN.md section 9), a
//! classic BPF filter that keeps only ARP and frames to the virtual MAC, and
//! batched receive/send through `recvmmsg`/`sendmmsg`.
use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Size of `struct virtio_net_hdr` (without `num_buffers`).
pub const VNET_HDR_LEN: usize = 10;
/// Largest frame a GSO super-frame can be, plus its virtio header.
pub const SLOT_LEN: usize = VNET_HDR_LEN + 14 + 65535 + 64;

const ETH_P_ALL: u16 = 0x0003;

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
    ifindex: i32,
}

impl PacketSocket {
    /// Opens a vnet-header packet socket bound to `ifindex`, filtered to ARP
    /// and frames addressed to `vmac`.
    pub fn open(ifindex: u32, vmac: [u8; 6]) -> io::Result<PacketSocket> {
        // SAFETY: plain socket(2); the fd is owned right away.
        let raw = cvt(unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                ETH_P_ALL.to_be() as libc::c_int,
            )
        })?;
        // SAFETY: raw is a fresh, valid descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let s = PacketSocket {
            fd,
            ifindex: ifindex as i32,
        };
        // The filter goes on before bind so no unfiltered frame is queued.
        s.attach_filter(vmac)?;
        setsockopt(raw, libc::SOL_PACKET, libc::PACKET_VNET_HDR, &1i32)?;
        setsockopt(raw, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, &1i32)?;
        // Room for bursts while the hot path is busy.
        setsockopt(raw, libc::SOL_SOCKET, libc::SO_RCVBUF, &(8 << 20i32))?;
        // SAFETY: zeroed sockaddr_ll is valid; fields set below.
        let mut sll: libc::sockaddr_ll = unsafe { zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = ETH_P_ALL.to_be();
        sll.sll_ifindex = s.ifindex;
        // SAFETY: sll is a valid sockaddr_ll of the size passed.
        cvt(unsafe {
            libc::bind(
                raw,
                (&sll as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        })?;
        Ok(s)
    }

    /// Keeps ARP and frames whose destination is the virtual MAC.
    fn attach_filter(&self, vmac: [u8; 6]) -> io::Result<()> {
        const LD_H_ABS: u16 = 0x28;
        const LD_W_ABS: u16 = 0x20;
        const JEQ_K: u16 = 0x15;
        const RET_K: u16 = 0x06;
        let ins = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
        let hi = u32::from_be_bytes([vmac[0], vmac[1], vmac[2], vmac[3]]);
        let lo = u32::from(u16::from_be_bytes([vmac[4], vmac[5]]));
        let mut prog = [
            ins(LD_H_ABS, 0, 0, 12),
            ins(JEQ_K, 4, 0, 0x0806),
            ins(LD_W_ABS, 0, 0, 0),
            ins(JEQ_K, 0, 3, hi),
            ins(LD_H_ABS, 0, 0, 4),
            ins(JEQ_K, 0, 1, lo),
            ins(RET_K, 0, 0, 0x0004_0000),
            ins(RET_K, 0, 0, 0),
        ];
        let fprog = libc::sock_fprog {
            len: prog.len() as u16,
            filter: prog.as_mut_ptr(),
        };
        setsockopt(
            self.fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            &fprog,
        )
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
        let mut p = [
            libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: wake,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds.
        let n = unsafe { libc::poll(p.as_mut_ptr(), 2, timeout_ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(())
            } else {
                Err(e)
            };
        }
        if p[1].revents & libc::POLLIN != 0 {
            let mut v = 0u64;
            // SAFETY: an eventfd read takes exactly 8 bytes into v.
            unsafe { libc::read(wake, (&mut v as *mut u64).cast(), 8) };
        }
        Ok(())
    }

    /// Receives up to `batch.slots` frames without blocking; returns how many.
    pub fn recv_batch(&self, batch: &mut RxBatch) -> io::Result<usize> {
        for (i, h) in batch.hdrs.iter_mut().enumerate() {
            batch.iovs[i] = libc::iovec {
                iov_base: batch.bufs[i].as_mut_ptr().cast(),
                iov_len: SLOT_LEN,
            };
            h.msg_hdr.msg_iov = &mut batch.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_len = 0;
        }
        // SAFETY: every header points at a live iovec and buffer of SLOT_LEN.
        let n = unsafe {
            libc::recvmmsg(
                self.fd.as_raw_fd(),
                batch.hdrs.as_mut_ptr(),
                batch.hdrs.len() as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(0),
                _ => Err(e),
            };
        }
        for i in 0..n as usize {
            batch.lens[i] = batch.hdrs[i].msg_len as usize;
        }
        Ok(n as usize)
    }

    /// Sends each slice (virtio header + frame) as one frame; returns how many went.
    pub fn send_batch(&self, frames: &[&[u8]]) -> io::Result<usize> {
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
                        self.fd.as_raw_fd(),
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
}

/// Preallocated receive buffers and headers for `recvmmsg`.
pub struct RxBatch {
    pub bufs: Vec<Box<[u8]>>,
    pub lens: Vec<usize>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

// SAFETY: the raw pointers inside point into `bufs`/`iovs`, owned by the batch,
// and are rewritten before each use.
unsafe impl Send for RxBatch {}

impl RxBatch {
    pub fn new(slots: usize) -> RxBatch {
        RxBatch {
            bufs: (0..slots)
                .map(|_| vec![0u8; SLOT_LEN].into_boxed_slice())
                .collect(),
            lens: vec![0; slots],
            iovs: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0
                };
                slots
            ],
            // SAFETY: zeroed mmsghdr is valid.
            hdrs: (0..slots).map(|_| unsafe { zeroed() }).collect(),
        }
    }
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
    // SAFETY: plain socket(2) for ioctls only.
    let raw =
        cvt(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: fresh fd.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
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
