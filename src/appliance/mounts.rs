//! mount(2) and the API filesystems PID 1 needs first.

use std::ffi::CString;
use std::fs;
use std::io;

use super::InitError;

pub(super) fn cstr(s: &str) -> CString {
    // Callers pass literals and paths built here; none contain NUL.
    CString::new(s).unwrap_or_default()
}

pub(super) fn mount(
    source: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> io::Result<()> {
    let _ = fs::create_dir_all(target);
    let (s, t, f, d) = (cstr(source), cstr(target), cstr(fstype), cstr(data));
    // SAFETY: all pointers are NUL-terminated strings alive for the call.
    let rc = unsafe {
        libc::mount(
            s.as_ptr(),
            t.as_ptr(),
            f.as_ptr(),
            flags,
            if data.is_empty() {
                std::ptr::null()
            } else {
                d.as_ptr().cast()
            },
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

pub(super) fn mount_api_filesystems() -> Result<(), InitError> {
    let nosuid_nodev = libc::MS_NOSUID | libc::MS_NODEV;
    let table: [(&str, &str, &str, libc::c_ulong, &str); 6] = [
        ("proc", "/proc", "proc", nosuid_nodev | libc::MS_NOEXEC, ""),
        ("sysfs", "/sys", "sysfs", nosuid_nodev | libc::MS_NOEXEC, ""),
        ("devtmpfs", "/dev", "devtmpfs", libc::MS_NOSUID, "mode=0755"),
        (
            "devpts",
            "/dev/pts",
            "devpts",
            libc::MS_NOSUID | libc::MS_NOEXEC,
            "gid=5,mode=620,ptmxmode=000",
        ),
        ("tmpfs", "/run", "tmpfs", nosuid_nodev, "mode=0755"),
        ("tmpfs", "/tmp", "tmpfs", nosuid_nodev, "mode=1777"),
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
