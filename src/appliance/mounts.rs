//! mount(2) and the API filesystems PID 1 needs first.

use std::ffi::CString;
use std::fs;
use std::io;

use rustix::mount::MountFlags;

use super::InitError;

pub(super) fn cstr(s: &str) -> CString {
    // Callers pass literals and paths built here; none contain NUL.
    CString::new(s).unwrap_or_default()
}

pub(super) fn mount(
    source: &str,
    target: &str,
    fstype: &str,
    flags: MountFlags,
    data: &str,
) -> io::Result<()> {
    let _ = fs::create_dir_all(target);
    let d = cstr(data);
    let data = (!data.is_empty()).then_some(d.as_c_str());
    Ok(rustix::mount::mount(source, target, fstype, flags, data)?)
}

pub(super) fn mount_api_filesystems() -> Result<(), InitError> {
    let (nosuid, nodev, noexec) = (MountFlags::NOSUID, MountFlags::NODEV, MountFlags::NOEXEC);
    let table: [(&str, &str, &str, MountFlags, &str); 6] = [
        ("proc", "/proc", "proc", nosuid | nodev | noexec, ""),
        ("sysfs", "/sys", "sysfs", nosuid | nodev | noexec, ""),
        ("devtmpfs", "/dev", "devtmpfs", nosuid, "mode=0755"),
        (
            "devpts",
            "/dev/pts",
            "devpts",
            nosuid | noexec,
            "gid=5,mode=620,ptmxmode=000",
        ),
        ("tmpfs", "/run", "tmpfs", nosuid | nodev, "mode=0755"),
        ("tmpfs", "/tmp", "tmpfs", nosuid | nodev, "mode=1777"),
    ];
    for (source, target, fstype, flags, data) in table {
        match mount(source, target, fstype, flags, data) {
            Ok(()) => {}
            // The kernel may have mounted devtmpfs already.
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
            Err(source) => {
                return Err(InitError::Mount {
                    target: target.into(),
                    fstype: fstype.into(),
                    source,
                })
            }
        }
    }
    Ok(())
}

/// Without /dev/console in the initramfs the kernel starts init with no
/// fds 0-2; once devtmpfs is up, attach them so messages reach the console.
pub(super) fn ensure_console() {
    // SAFETY: fcntl on a possibly-closed fd only reports EBADF.
    let have_stderr = unsafe { libc::fcntl(2, libc::F_GETFD) } >= 0;
    if have_stderr {
        return;
    }
    let path = cstr("/dev/console");
    // SAFETY: plain open/dup2 on fds we own.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_RDWR | libc::O_NOCTTY);
        if fd >= 0 {
            for target in 0..3 {
                if fd != target {
                    libc::dup2(fd, target);
                }
            }
            if fd > 2 {
                libc::close(fd);
            }
        }
    }
}
