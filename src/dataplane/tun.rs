//! The TUN device (`duet0`) through which the director hands packets for its
//! own backend to its own stack. `IFF_VNET_HDR` + `TUNSETOFFLOAD` let GSO
//! super-frames and partial checksums in whole (DESIGN.md section 9).
use std::io::{self, IoSlice};
use std::mem::zeroed;
use std::os::fd::{AsRawFd, OwnedFd};

use rustix::fs::{Mode, OFlags};

use super::packet::VNET_HDR_LEN;

/// The device that carries the director's own flows into its stack
/// (userspace engine).
pub const TUN_NAME: &str = "duet0";

pub struct Tun {
    fd: OwnedFd,
    pub name: String,
}

impl Tun {
    pub fn open(name: &str) -> io::Result<Tun> {
        let flags = OFlags::RDWR | OFlags::CLOEXEC;
        let fd = rustix::fs::open(c"/dev/net/tun", flags, Mode::empty())?;
        // SAFETY: zeroed ifreq is valid.
        let mut ifr: libc::ifreq = unsafe { zeroed() };
        for (d, s) in ifr
            .ifr_name
            .iter_mut()
            .zip(name.bytes().take(libc::IFNAMSIZ - 1))
        {
            *d = s as libc::c_char;
        }
        ifr.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
        let ioctl = |req: libc::Ioctl, arg: *mut libc::c_void| -> io::Result<()> {
            // SAFETY: each request below takes the pointer type passed.
            if unsafe { libc::ioctl(fd.as_raw_fd(), req, arg) } < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        };
        ioctl(libc::TUNSETIFF, (&mut ifr as *mut libc::ifreq).cast())?;
        let mut sz: libc::c_int = VNET_HDR_LEN as libc::c_int;
        ioctl(libc::TUNSETVNETHDRSZ, (&mut sz as *mut libc::c_int).cast())?;
        let offload = (libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6) as usize;
        ioctl(libc::TUNSETOFFLOAD, offload as *mut libc::c_void)?;
        Ok(Tun {
            fd,
            name: name.to_string(),
        })
    }

    /// Writes one IP packet behind its virtio header (already adjusted for
    /// the removed Ethernet header).
    pub fn write(&self, vnet: &[u8], ip: &[u8]) -> io::Result<()> {
        rustix::io::writev(&self.fd, &[IoSlice::new(vnet), IoSlice::new(ip)])?;
        Ok(())
    }
}
