//! The few bpf(2) map commands the engine issues per flow, raw: aya's map
//! types own their descriptor and offer no cursor to resume a walk from,
//! nor batched lookups.
use std::io;
use std::mem::{size_of, MaybeUninit};
use std::os::fd::RawFd;

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
pub const BPF_NOEXIST: u64 = 1;

/// The map-element arm of `union bpf_attr`.
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// The batch arm of `union bpf_attr`.
#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

fn bpf(cmd: libc::c_long, attr: &ElemAttr) -> io::Result<()> {
    // SAFETY: `attr` is a valid bpf_attr prefix of the size passed; the
    // pointers in it refer to live buffers of the map's key/value sizes,
    // which the callers' types match (checked by the kernel at load: the
    // object's BTF declares the same layouts).
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *const ElemAttr,
            size_of::<ElemAttr>() as u32,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

pub fn update<K, V>(fd: RawFd, key: &K, value: &V, flags: u64) -> io::Result<()> {
    bpf(
        BPF_MAP_UPDATE_ELEM,
        &ElemAttr {
            map_fd: fd as u32,
            pad: 0,
            key: key as *const K as u64,
            value: value as *const V as u64,
            flags,
        },
    )
}

/// `Ok(None)` when the key is absent.
pub fn lookup<K, V: Copy>(fd: RawFd, key: &K) -> io::Result<Option<V>> {
    let mut v = MaybeUninit::<V>::zeroed();
    match bpf(
        BPF_MAP_LOOKUP_ELEM,
        &ElemAttr {
            map_fd: fd as u32,
            pad: 0,
            key: key as *const K as u64,
            value: v.as_mut_ptr() as u64,
            flags: 0,
        },
    ) {
        // SAFETY: the kernel filled the value (and it started zeroed);
        // callers use plain-data types valid for any bytes.
        Ok(()) => Ok(Some(unsafe { v.assume_init() })),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

pub fn delete<K>(fd: RawFd, key: &K) -> io::Result<()> {
    bpf(
        BPF_MAP_DELETE_ELEM,
        &ElemAttr {
            map_fd: fd as u32,
            pad: 0,
            key: key as *const K as u64,
            value: 0,
            flags: 0,
        },
    )
}

/// Up to `keys.len()` entries of a hash map in one call, from bucket
/// `from` (`None`: the first): how many were filled, and the bucket to go
/// on from (`None`: the map's end). Buckets, unlike keys, stay valid when
/// entries are deleted between calls.
pub fn lookup_batch<K: Copy, V: Copy>(
    fd: RawFd,
    from: Option<u32>,
    keys: &mut [K],
    values: &mut [V],
) -> io::Result<(usize, Option<u32>)> {
    let mut next: u32 = 0;
    let mut attr = BatchAttr {
        in_batch: from.as_ref().map_or(0, |b| b as *const u32 as u64),
        out_batch: &mut next as *mut u32 as u64,
        keys: keys.as_mut_ptr() as u64,
        values: values.as_mut_ptr() as u64,
        count: keys.len().min(values.len()) as u32,
        map_fd: fd as u32,
        elem_flags: 0,
        flags: 0,
    };
    // SAFETY: as in `bpf`; the kernel also writes the count filled back
    // into `attr`, which it gets as a mutable pointer.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_BATCH,
            &mut attr as *mut BatchAttr,
            size_of::<BatchAttr>() as u32,
        )
    };
    let filled = attr.count as usize;
    if r >= 0 {
        return Ok((filled, Some(next)));
    }
    match io::Error::last_os_error() {
        e if e.raw_os_error() == Some(libc::ENOENT) => Ok((filled, None)),
        e => Err(e),
    }
}

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
