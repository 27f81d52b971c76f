//! `duet` as PID 1 of the appliance (DESIGN.md section 6).
//!
//! The initramfs has `/init` = the static `duet` binary. When it starts as
//! PID 1, `main` calls [`boot`], which:
//!
//! 1. mounts /proc, /sys, /dev (devtmpfs), /dev/pts, /run and /tmp;
//! 2. loads the kernel modules listed in `/etc/duet/modules` with
//!    `finit_module`, in order (the image build resolved their dependencies);
//! 3. mounts the data partition (ext4 or vfat labelled `DUETDATA`) on /data,
//!    seeding it with the built-in config and key on first boot, and puts the
//!    sled state on it; without one, config and state stay in RAM;
//! 4. brings `lo` up and configures the LAN interface from `duet.*` kernel
//!    command-line parameters, or from the config's `[[node]]` entry of this
//!    node, with plain ioctls (no netlink, no resolver);
//! 5. forks: PID 1 stays behind as a supervisor that reaps every orphan,
//!    restarts the daemon if it dies (and busybox httpd serving /data/www,
//!    when that directory exists) and turns SIGTERM/SIGINT (reboot) and
//!    SIGUSR2/SIGPWR (power off) into a clean shutdown, and passes SIGHUP on
//!    to the daemon (reload its configuration); the child returns the
//!    config path from `boot` and `main` runs the daemon with it.
//!
//! The daemon runs in a child rather than in PID 1 itself because a reaper
//! thread calling `waitpid(-1)` in the daemon's process would steal the exit
//! status of the daemon's own children (health-check scripts) from
//! `std::process::Child::wait`. In a separate PID 1 that conflict cannot
//! happen, and a crashed daemon comes back instead of panicking the kernel.
//!
//! Kernel command-line parameters (all optional):
//!
//! | parameter              | meaning                                        |
//! |------------------------|------------------------------------------------|
//! | `duet.ip=A.B.C.D/N`    | address of the LAN interface                   |
//! | `duet.gw=A.B.C.D`      | default route                                  |
//! | `duet.if=NAME`         | LAN interface (default: `cluster.interface`, else `eth0`) |
//! | `duet.node=NAME`       | this node's `[[node]]` name (else `/data/node`): hostname, and its address when `duet.ip` is absent |
//! | `duet.data=LABEL`      | data partition label (default `DUETDATA`), `none` to skip |
//! | `duet.data_wait=SECS`  | how long to wait for the data disk (default 2) |
//! | `duet.rescue`          | stop before the daemon and open the rescue shell |
//!
//! Anything fatal is returned as [`InitError`]; `main` then calls
//! [`rescue`], which prints the message and keeps the console usable instead
//! of returning (PID 1 exiting panics the kernel).

use std::ffi::CString;
use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Built-in config, copied into the initramfs by the image build.
pub const BUILTIN_CONFIG: &str = "/etc/duet/duet.toml";
/// Built-in key (a known default: the operator replaces it on /data).
pub const BUILTIN_KEY: &str = "/etc/duet/key";
/// Module list, one absolute `.ko` path a line, optionally followed by
/// module parameters.
pub const MODULE_LIST: &str = "/etc/duet/modules";
/// Where the data partition is mounted.
pub const DATA_DIR: &str = "/data";
/// The `state_dir` of the default config; bind-mounted from /data/state.
pub const STATE_DIR: &str = "/var/lib/duet";
/// Label the data partition is found by.
pub const DEFAULT_DATA_LABEL: &str = "DUETDATA";

/// Why the appliance could not come up.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("mounting {fstype} on {target}: {source}")]
    Mount {
        target: String,
        fstype: String,
        source: io::Error,
    },
    #[error("kernel command line: {param}: {reason}")]
    Param { param: String, reason: String },
    #[error("interface {name}: {what}: {source}")]
    Net {
        name: String,
        what: &'static str,
        source: io::Error,
    },
    #[error("interface {0} did not appear (driver module missing?)")]
    NoInterface(String),
    #[error("{path}: {source}")]
    File { path: String, source: io::Error },
    #[error("no config: {0} is missing from the image")]
    NoConfig(String),
    #[error("{what}: {source}")]
    Sys {
        what: &'static str,
        source: io::Error,
    },
    #[error("rescue shell requested on the kernel command line (duet.rescue)")]
    RescueRequested,
}

fn file_err(path: &Path, source: io::Error) -> InitError {
    InitError::File {
        path: path.display().to_string(),
        source,
    }
}

/// True when this process is the first userspace process of the kernel.
pub fn is_pid1() -> bool {
    std::process::id() == 1
}

/// Seconds since boot, for console lines that can be read as a timeline.
fn uptime() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out-pointer for clock_gettime.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// One line on the console, prefixed like the kernel's own so boot timing
/// can be read off the serial log.
fn say(args: fmt::Arguments<'_>) {
    let line = format!("[{:>10.6}] duet-init: {}\n", uptime(), args);
    let _ = io::stderr().write_all(line.as_bytes());
}

macro_rules! say {
    ($($arg:tt)*) => { say(format_args!($($arg)*)) };
}

// ---------------------------------------------------------------------------
// Kernel command line

/// What the `duet.*` kernel parameters ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootParams {
    /// None: `cluster.interface` of the config, else `eth0`.
    pub iface: Option<String>,
    pub ip: Option<(Ipv4Addr, u8)>,
    pub gateway: Option<Ipv4Addr>,
    pub node: Option<String>,
    /// None: do not look for a data partition.
    pub data_label: Option<String>,
    pub data_wait: Duration,
    pub rescue: bool,
}

impl Default for BootParams {
    fn default() -> Self {
        BootParams {
            iface: None,
            ip: None,
            gateway: None,
            node: None,
            data_label: Some(DEFAULT_DATA_LABEL.into()),
            data_wait: Duration::from_secs(2),
            rescue: false,
        }
    }
}

fn param_err(param: &str, reason: impl Into<String>) -> InitError {
    InitError::Param {
        param: param.to_string(),
        reason: reason.into(),
    }
}

impl BootParams {
    /// Parses `/proc/cmdline`. Parameters outside `duet.*` are ignored;
    /// unknown `duet.*` ones are an error so a typo is not silently lost.
    pub fn parse(cmdline: &str) -> Result<BootParams, InitError> {
        let mut p = BootParams::default();
        for word in cmdline.split_ascii_whitespace() {
            let Some(rest) = word.strip_prefix("duet.") else {
                continue;
            };
            let (key, value) = match rest.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (rest, None),
            };
            let need = |v: Option<&str>| -> Result<String, InitError> {
                match v {
                    Some(v) if !v.is_empty() => Ok(v.to_string()),
                    _ => Err(param_err(word, "needs a value")),
                }
            };
            match key {
                "if" => {
                    let v = need(value)?;
                    if v.len() >= libc::IFNAMSIZ {
                        return Err(param_err(word, "interface name too long"));
                    }
                    p.iface = Some(v);
                }
                "ip" => {
                    let v = need(value)?;
                    let (addr, len) = v.split_once('/').unwrap_or((&v, "24"));
                    let addr: Ipv4Addr = addr
                        .parse()
                        .map_err(|_| param_err(word, "not an IPv4 address"))?;
                    let len: u8 = len
                        .parse()
                        .ok()
                        .filter(|l| *l <= 32)
                        .ok_or_else(|| param_err(word, "prefix length must be 0..=32"))?;
                    p.ip = Some((addr, len));
                }
                "gw" => {
                    let v = need(value)?;
                    p.gateway = Some(
                        v.parse()
                            .map_err(|_| param_err(word, "not an IPv4 address"))?,
                    );
                }
                "node" => p.node = Some(need(value)?),
                "data" => {
                    let v = need(value)?;
                    p.data_label = if v == "none" { None } else { Some(v) };
                }
                "data_wait" => {
                    let v = need(value)?;
                    let secs: f64 = v
                        .parse()
                        .ok()
                        .filter(|s: &f64| s.is_finite() && *s >= 0.0 && *s <= 600.0)
                        .ok_or_else(|| param_err(word, "seconds, 0..=600"))?;
                    p.data_wait = Duration::from_secs_f64(secs);
                }
                "rescue" => p.rescue = true,
                _ => return Err(param_err(word, "unknown duet.* parameter")),
            }
        }
        Ok(p)
    }
}

/// Netmask for a prefix length.
pub fn prefix_to_mask(len: u8) -> Ipv4Addr {
    let bits = if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len.min(32)))
    };
    Ipv4Addr::from(bits)
}

/// `duet.node=` from the running kernel's command line, for `--node`.
pub fn cmdline_node() -> Option<String> {
    let cmdline = fs::read_to_string("/proc/cmdline").ok()?;
    BootParams::parse(&cmdline).ok()?.node
}

// ---------------------------------------------------------------------------
// Module list

/// One module of the list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleLine {
    pub path: PathBuf,
    pub params: String,
}

/// Modules loaded together: always, or only when a device's modalias
/// matches one of `patterns` (the driver's own `alias=` globs), so the
/// drivers for hardware that is not there cost no boot time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleBlock {
    /// Empty: unconditional.
    pub patterns: Vec<String>,
    pub modules: Vec<ModuleLine>,
}

/// Parses the module list written by `image/mkinitramfs.py`: `#` comments,
/// `match GLOB...` or `always` to open a block, then `path [params...]`
/// lines. Lines before any header are unconditional.
pub fn parse_module_list(text: &str) -> Vec<ModuleBlock> {
    let mut blocks = vec![ModuleBlock {
        patterns: Vec::new(),
        modules: Vec::new(),
    }];
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut words = line.split_whitespace();
        match words.next() {
            Some("always") => blocks.push(ModuleBlock {
                patterns: Vec::new(),
                modules: Vec::new(),
            }),
            Some("match") => blocks.push(ModuleBlock {
                patterns: words.map(str::to_string).collect(),
                modules: Vec::new(),
            }),
            Some(path) => {
                let params = words.collect::<Vec<_>>().join(" ");
                if let Some(b) = blocks.last_mut() {
                    b.modules.push(ModuleLine {
                        path: PathBuf::from(path),
                        params,
                    });
                }
            }
            None => {}
        }
    }
    blocks.retain(|b| !b.modules.is_empty());
    blocks
}

/// fnmatch(3) without flags, as modprobe matches `alias` globs against a
/// device's modalias: `*`, `?`, and `[...]` sets with ranges and `!`/`^`.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    // Where to resume after the last `*`: (pattern index after it, text index).
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        let step = match p.get(pi) {
            Some(b'*') => {
                star = Some((pi + 1, ti));
                pi += 1;
                continue;
            }
            Some(b'?') => Some(pi + 1),
            Some(b'[') => match_set(p, pi, t[ti]),
            Some(&c) if c == t[ti] => Some(pi + 1),
            _ => None,
        };
        match step {
            Some(next) => {
                pi = next;
                ti += 1;
            }
            None => match star {
                Some((sp, st)) => {
                    pi = sp;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Matches `c` against the set starting at `p[start] == b'['`; returns the
/// index after the closing `]` on a match. An unclosed `[` matches itself.
fn match_set(p: &[u8], start: usize, c: u8) -> Option<usize> {
    let mut i = start + 1;
    let negate = matches!(p.get(i), Some(b'!') | Some(b'^'));
    if negate {
        i += 1;
    }
    let mut hit = false;
    let mut first = true;
    while let Some(&lo) = p.get(i) {
        if lo == b']' && !first {
            return (hit != negate).then_some(i + 1);
        }
        first = false;
        if p.get(i + 1) == Some(&b'-') && p.get(i + 2).is_some_and(|&h| h != b']') {
            hit |= (lo..=p[i + 2]).contains(&c);
            i += 3;
        } else {
            hit |= lo == c;
            i += 1;
        }
    }
    (c == b'[').then_some(start + 1)
}

/// Every device's modalias, from all buses.
fn device_modaliases() -> Vec<String> {
    let mut out = Vec::new();
    let Ok(buses) = fs::read_dir("/sys/bus") else {
        return out;
    };
    for bus in buses.filter_map(|b| b.ok()) {
        let Ok(devices) = fs::read_dir(bus.path().join("devices")) else {
            continue;
        };
        for dev in devices.filter_map(|d| d.ok()) {
            if let Ok(a) = fs::read_to_string(dev.path().join("modalias")) {
                let a = a.trim();
                if !a.is_empty() {
                    out.push(a.to_string());
                }
            }
        }
    }
    out
}

fn load_module(m: &ModuleLine) -> io::Result<()> {
    let f = fs::File::open(&m.path)?;
    let params = CString::new(m.params.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in module params"))?;
    // SAFETY: finit_module takes an fd, a NUL-terminated string and flags;
    // both stay alive across the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            f.as_raw_fd(),
            params.as_ptr(),
            0 as libc::c_int,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EEXIST) {
        Ok(())
    } else {
        Err(e)
    }
}

/// Loads every module of the list. A module that fails is reported and
/// skipped: a missing `ip_vs` must not keep the appliance down, and a
/// missing NIC driver shows up as a clear interface error right after.
fn load_modules(list: &Path) -> Result<(usize, usize), InitError> {
    let text = match fs::read_to_string(list) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            say!("no module list at {}, loading none", list.display());
            return Ok((0, 0));
        }
        Err(e) => return Err(file_err(list, e)),
    };
    let (mut ok, mut failed) = (0, 0);
    // Blocks repeat shared dependencies; finit_module would re-check each
    // one's signature before answering EEXIST, which is slow when emulated.
    let mut loaded = std::collections::HashSet::new();
    for block in parse_module_list(&text) {
        if !block.patterns.is_empty() {
            // Rescanned per block: loading a bus driver (virtio_pci, a USB
            // host) creates the devices the next blocks match.
            let aliases = device_modaliases();
            let present = block
                .patterns
                .iter()
                .any(|p| aliases.iter().any(|a| glob_match(p, a)));
            if !present {
                continue;
            }
        }
        for m in block.modules {
            if !loaded.insert(m.path.clone()) {
                continue;
            }
            let t = Instant::now();
            match load_module(&m) {
                Ok(()) => {
                    ok += 1;
                    // Signature checks and init functions are slow under
                    // emulation; name the modules worth trimming.
                    let ms = t.elapsed().as_millis();
                    if ms >= 100 {
                        say!("module {} took {ms} ms", m.path.display());
                    }
                }
                Err(e) => {
                    failed += 1;
                    say!("module {}: {}", m.path.display(), e);
                }
            }
        }
    }
    Ok((ok, failed))
}

// ---------------------------------------------------------------------------
// Mounts

fn cstr(s: &str) -> CString {
    // Callers pass literals and paths built here; none contain NUL.
    CString::new(s).unwrap_or_default()
}

fn mount(
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

fn mount_api_filesystems() -> Result<(), InitError> {
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
fn ensure_console() {
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

// ---------------------------------------------------------------------------
// Data partition

/// Filesystem types the data partition may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsKind {
    Ext4,
    Vfat,
}

impl FsKind {
    fn name(self) -> &'static str {
        match self {
            FsKind::Ext4 => "ext4",
            FsKind::Vfat => "vfat",
        }
    }
}

fn trim_label(raw: &[u8]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).trim_end().to_string()
}

/// Reads the filesystem kind and label from the first 2 KiB of a block
/// device (ext2/3/4 superblock at 1024, FAT boot sector at 0).
pub fn probe_label(head: &[u8]) -> Option<(FsKind, String)> {
    if head.len() >= 1024 + 136 {
        let sb = &head[1024..];
        if sb[0x38] == 0x53 && sb[0x39] == 0xEF {
            return Some((FsKind::Ext4, trim_label(&sb[0x78..0x88])));
        }
    }
    if head.len() >= 512 && head[510] == 0x55 && head[511] == 0xAA {
        let sectors_per_fat16 = u16::from_le_bytes([head[0x16], head[0x17]]);
        // FAT32 keeps its extended BPB further in; FAT12/16 at 0x24.
        let (sig, label, fstype) = if sectors_per_fat16 == 0 {
            (0x42, 0x47, 0x52)
        } else {
            (0x26, 0x2B, 0x36)
        };
        if (head[sig] == 0x29 || head[sig] == 0x28) && &head[fstype..fstype + 3] == b"FAT" {
            return Some((FsKind::Vfat, trim_label(&head[label..label + 11])));
        }
    }
    None
}

fn find_labelled(label: &str) -> Option<(PathBuf, FsKind)> {
    let mut names: Vec<String> = fs::read_dir("/sys/class/block")
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("loop") && !n.starts_with("ram"))
        .collect();
    // Partitions (vda2) sort after their disk (vda); either may carry it.
    names.sort();
    for name in names {
        let dev = PathBuf::from("/dev").join(&name);
        let mut head = vec![0u8; 2048];
        let Ok(mut f) = fs::File::open(&dev) else {
            continue;
        };
        let mut got = 0;
        while got < head.len() {
            match f.read(&mut head[got..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
        head.truncate(got);
        if let Some((kind, l)) = probe_label(&head) {
            if l.eq_ignore_ascii_case(label) {
                return Some((dev, kind));
            }
        }
    }
    None
}

/// Where config and state live after [`setup_storage`].
#[derive(Debug)]
struct Storage {
    config: PathBuf,
    persistent: bool,
}

fn copy_if_missing(from: &Path, to: &Path, mode: u32) -> Result<(), InitError> {
    if to.exists() || !from.exists() {
        return Ok(());
    }
    fs::copy(from, to).map_err(|e| file_err(to, e))?;
    let _ = fs::set_permissions(to, fs::Permissions::from_mode(mode));
    say!("seeded {} from {}", to.display(), from.display());
    Ok(())
}

fn setup_storage(p: &BootParams) -> Result<Storage, InitError> {
    let builtin = Path::new(BUILTIN_CONFIG);
    fs::create_dir_all(STATE_DIR).map_err(|e| file_err(Path::new(STATE_DIR), e))?;
    let in_ram = |why: &str| -> Result<Storage, InitError> {
        say!("{why}: config {BUILTIN_CONFIG}, state in RAM");
        if !builtin.exists() {
            return Err(InitError::NoConfig(BUILTIN_CONFIG.into()));
        }
        Ok(Storage {
            config: builtin.to_path_buf(),
            persistent: false,
        })
    };
    let Some(label) = &p.data_label else {
        return in_ram("duet.data=none");
    };
    let deadline = Instant::now() + p.data_wait;
    let found = loop {
        if let Some(f) = find_labelled(label) {
            break Some(f);
        }
        if Instant::now() >= deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let Some((dev, kind)) = found else {
        return in_ram(&format!("no partition labelled {label}"));
    };
    let dev_s = dev.display().to_string();
    if let Err(e) = mount(&dev_s, DATA_DIR, kind.name(), libc::MS_NOATIME, "") {
        // A damaged data partition must not keep the node down: it comes up
        // with the factory config, and the console says why.
        return in_ram(&format!(
            "WARNING: cannot mount {dev_s} ({}) on {DATA_DIR}: {e}",
            kind.name()
        ));
    }
    say!("mounted {dev_s} ({}) on {DATA_DIR}", kind.name());
    let data = Path::new(DATA_DIR);
    let config = data.join("duet.toml");
    copy_if_missing(builtin, &config, 0o644)?;
    // The config names key_file /etc/duet/key: keep the master copy on
    // /data and place it there, so the operator edits one file.
    let data_key = data.join("key");
    copy_if_missing(Path::new(BUILTIN_KEY), &data_key, 0o600)?;
    if data_key.exists() {
        fs::copy(&data_key, BUILTIN_KEY).map_err(|e| file_err(Path::new(BUILTIN_KEY), e))?;
        let _ = fs::set_permissions(BUILTIN_KEY, fs::Permissions::from_mode(0o600));
    }
    let state = data.join("state");
    fs::create_dir_all(&state).map_err(|e| file_err(&state, e))?;
    mount(
        &state.display().to_string(),
        STATE_DIR,
        "",
        libc::MS_BIND,
        "",
    )
    .map_err(|source| InitError::Mount {
        target: STATE_DIR.into(),
        fstype: "bind".into(),
        source,
    })?;
    if !config.exists() {
        return Err(InitError::NoConfig(config.display().to_string()));
    }
    Ok(Storage {
        config,
        persistent: true,
    })
}

// ---------------------------------------------------------------------------
// Interfaces

/// Linux `struct rtentry` (route ioctls); the libc crate has it for musl only.
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

fn sockaddr_v4(a: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(a).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size on Linux; this is
    // the cast every C caller of these ioctls does.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

struct Ctl(libc::c_int);

impl Ctl {
    fn open() -> Result<Ctl, InitError> {
        // SAFETY: plain socket(2).
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(InitError::Sys {
                what: "socket(AF_INET)",
                source: io::Error::last_os_error(),
            });
        }
        Ok(Ctl(fd))
    }

    fn ifreq(name: &str) -> libc::ifreq {
        // SAFETY: ifreq is plain old data; all-zero is a valid value.
        let mut r: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in r
            .ifr_name
            .iter_mut()
            .zip(name.bytes().take(libc::IFNAMSIZ - 1))
        {
            *dst = src as libc::c_char;
        }
        r
    }

    fn ioctl<T>(
        &self,
        req: libc::c_ulong,
        arg: &mut T,
        name: &str,
        what: &'static str,
    ) -> Result<(), InitError> {
        // SAFETY: arg points to the struct the request expects (ifreq or
        // rtentry), valid for the duration of the call.
        let rc = unsafe { libc::ioctl(self.0, req, arg as *mut T) };
        if rc < 0 {
            return Err(InitError::Net {
                name: name.to_string(),
                what,
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    fn up(&self, name: &str) -> Result<(), InitError> {
        let mut r = Self::ifreq(name);
        self.ioctl(libc::SIOCGIFFLAGS, &mut r, name, "get flags")?;
        // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
        unsafe { r.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
        self.ioctl(libc::SIOCSIFFLAGS, &mut r, name, "set up")
    }

    fn set_addr(&self, name: &str, addr: Ipv4Addr, prefix: u8) -> Result<(), InitError> {
        let mut r = Self::ifreq(name);
        r.ifr_ifru.ifru_addr = sockaddr_v4(addr);
        self.ioctl(libc::SIOCSIFADDR, &mut r, name, "set address")?;
        let mut r = Self::ifreq(name);
        r.ifr_ifru.ifru_netmask = sockaddr_v4(prefix_to_mask(prefix));
        self.ioctl(libc::SIOCSIFNETMASK, &mut r, name, "set netmask")
    }

    fn default_route(&self, name: &str, gw: Ipv4Addr) -> Result<(), InitError> {
        let mut dev = cstr(name).into_bytes_with_nul();
        let mut rt = RtEntry {
            rt_pad1: 0,
            rt_dst: sockaddr_v4(Ipv4Addr::UNSPECIFIED),
            rt_gateway: sockaddr_v4(gw),
            rt_genmask: sockaddr_v4(Ipv4Addr::UNSPECIFIED),
            rt_flags: (libc::RTF_UP | libc::RTF_GATEWAY) as libc::c_ushort,
            rt_pad2: 0,
            rt_pad3: 0,
            rt_pad4: std::ptr::null_mut(),
            rt_metric: 0,
            rt_dev: dev.as_mut_ptr().cast(),
            rt_mtu: 0,
            rt_window: 0,
            rt_irtt: 0,
        };
        self.ioctl(libc::SIOCADDRT, &mut rt, name, "add default route")
    }
}

impl Drop for Ctl {
    fn drop(&mut self) {
        // SAFETY: we own the fd.
        unsafe { libc::close(self.0) };
    }
}

/// What the LAN interface gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetPlan {
    pub iface: String,
    pub ip: Option<(Ipv4Addr, u8)>,
    pub gateway: Option<Ipv4Addr>,
}

/// Prefix length for an address taken from the config, which holds bare
/// addresses; `duet.ip=ADDR/N` overrides it.
pub const CONFIG_PREFIX: u8 = 24;

/// Combines the command line with the config: explicit parameters win;
/// otherwise the interface is `cluster.interface` and the address that of
/// the `[[node]]` named `node`. Errors are for the console, so they say
/// what to fix.
pub fn plan_network(p: &BootParams, config: &str, node: Option<&str>) -> Result<NetPlan, String> {
    let parsed: Option<toml::Table> = config.parse().ok();
    let cfg_iface = parsed.as_ref().and_then(|t| {
        t.get("cluster")?
            .get("interface")?
            .as_str()
            .map(str::to_string)
    });
    let iface = p
        .iface
        .clone()
        .or(cfg_iface)
        .unwrap_or_else(|| "eth0".to_string());
    let mut plan = NetPlan {
        iface,
        ip: p.ip,
        gateway: p.gateway,
    };
    if plan.ip.is_some() {
        return Ok(plan);
    }
    let Some(node) = node else {
        return Ok(plan);
    };
    let table = parsed.ok_or("the config is not valid TOML, cannot look up this node's address")?;
    let entry = table
        .get("node")
        .and_then(|n| n.as_array())
        .and_then(|nodes| {
            nodes
                .iter()
                .find(|n| n.get("name").and_then(|v| v.as_str()) == Some(node))
        })
        .ok_or_else(|| format!("node {node:?} has no [[node]] entry in the config"))?;
    let addr = entry
        .get("address")
        .and_then(|a| a.as_str())
        .and_then(|a| a.parse::<Ipv4Addr>().ok())
        .ok_or_else(|| format!("[[node]] {node:?} has no IPv4 address"))?;
    plan.ip = Some((addr, CONFIG_PREFIX));
    Ok(plan)
}

fn setup_network(p: &NetPlan) -> Result<(), InitError> {
    let ctl = Ctl::open()?;
    ctl.up("lo")?;
    let sys = Path::new("/sys/class/net").join(&p.iface);
    // Driver probing can finish after finit_module returns (deferred or
    // asynchronous probe); give the interface a few seconds to appear.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !sys.exists() {
        if Instant::now() >= deadline {
            if p.ip.is_some() {
                return Err(InitError::NoInterface(p.iface.clone()));
            }
            say!(
                "interface {} not present; leaving networking to the config",
                p.iface
            );
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if let Some((addr, len)) = p.ip {
        ctl.set_addr(&p.iface, addr, len)?;
    }
    ctl.up(&p.iface)?;
    if let Some(gw) = p.gateway {
        ctl.default_route(&p.iface, gw)?;
    }
    let mac = fs::read_to_string(sys.join("address")).unwrap_or_default();
    match p.ip {
        Some((addr, len)) => say!("{} {} up, {addr}/{len}", p.iface, mac.trim()),
        None => say!(
            "{} {} up without an address (no duet.ip, no duet.node)",
            p.iface,
            mac.trim()
        ),
    }
    Ok(())
}

fn set_hostname(name: &str) {
    // SAFETY: pointer and length describe the name's bytes.
    let rc = unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) };
    if rc != 0 {
        say!("sethostname {name}: {}", io::Error::last_os_error());
    }
}

// ---------------------------------------------------------------------------
// Supervisor

fn signal_set(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise the set in place.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

#[derive(Debug, Clone, Copy)]
enum Halt {
    Reboot,
    PowerOff,
}

/// Stops the daemon, unmounts the data partition and ends the machine.
fn shutdown(daemon: Option<libc::pid_t>, how: Halt) -> ! {
    say!("shutting down ({how:?})");
    if let Some(pid) = daemon {
        // SAFETY: signalling and reaping our own child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let mut status = 0;
            // SAFETY: status is a valid out-pointer.
            let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            if r == pid || r < 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // SAFETY: kill(-1) from PID 1 reaches every other process; then plain
    // sync/umount/reboot calls with static strings.
    unsafe {
        libc::kill(-1, libc::SIGKILL);
        libc::sync();
        for target in [STATE_DIR, DATA_DIR] {
            let t = cstr(target);
            libc::umount2(t.as_ptr(), libc::MNT_DETACH);
        }
        libc::sync();
        libc::reboot(match how {
            Halt::Reboot => libc::RB_AUTOBOOT,
            Halt::PowerOff => libc::RB_POWER_OFF,
        });
    }
    // reboot(2) only returns on error; PID 1 must not exit.
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// A process PID 1 keeps running.
struct Service {
    name: &'static str,
    /// None: the daemon, which is this binary returning from `boot` in a
    /// forked child. Some: a program to exec.
    argv: Option<Vec<String>>,
    pid: Option<(libc::pid_t, Instant)>,
    restart_at: Option<Instant>,
    backoff: Duration,
}

impl Service {
    fn new(name: &'static str, argv: Option<Vec<String>>) -> Service {
        Service {
            name,
            argv,
            pid: None,
            restart_at: Some(Instant::now()),
            backoff: Duration::from_secs(1),
        }
    }

    fn exited(&mut self, status: libc::c_int) {
        let how = if libc::WIFEXITED(status) {
            format!("exited with status {}", libc::WEXITSTATUS(status))
        } else if libc::WIFSIGNALED(status) {
            format!("killed by signal {}", libc::WTERMSIG(status))
        } else {
            format!("ended ({status:#x})")
        };
        // One that ran a while comes back at once; a crash loop backs off up
        // to 30 s so the console stays readable.
        if self
            .pid
            .is_some_and(|(_, t)| t.elapsed() > Duration::from_secs(60))
        {
            self.backoff = Duration::from_secs(1);
        }
        say!(
            "{} {how}; restarting in {}s",
            self.name,
            self.backoff.as_secs()
        );
        self.restart_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(Duration::from_secs(30));
        self.pid = None;
    }
}

/// Extra services of the appliance: a static web server for `/data/www`
/// when the operator put content there (a local service for the VIP on
/// machines with nothing else to serve, as in `make vm-test`).
fn extra_services() -> Vec<Service> {
    let www = Path::new(DATA_DIR).join("www");
    let httpd = Path::new("/bin/busybox");
    if www.is_dir() && httpd.exists() {
        let argv = ["/bin/busybox", "httpd", "-f", "-p", "80", "-h"]
            .iter()
            .map(|s| s.to_string())
            .chain([www.display().to_string()])
            .collect();
        vec![Service::new("httpd", Some(argv))]
    } else {
        Vec::new()
    }
}

/// Runs as PID 1 for the rest of the machine's life; returns only in the
/// forked child, which goes on to run the daemon.
fn supervise(config: PathBuf) -> Result<PathBuf, InitError> {
    let handled = [
        libc::SIGCHLD,
        libc::SIGTERM,
        libc::SIGINT,
        libc::SIGUSR2,
        libc::SIGPWR,
        libc::SIGHUP,
    ];
    let set = signal_set(&handled);
    // SAFETY: an all-zero sigset_t is a valid out-value for sigprocmask.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: blocking signals so sigtimedwait can collect them; Ctrl-Alt-Del
    // then arrives as SIGINT instead of an immediate reboot.
    unsafe {
        libc::sigprocmask(libc::SIG_BLOCK, &set, &mut old);
        libc::reboot(libc::RB_DISABLE_CAD);
    }
    let mut services = vec![Service::new("daemon", None)];
    services.extend(extra_services());
    loop {
        for svc in services.iter_mut() {
            if svc.restart_at.is_none_or(|at| Instant::now() < at) {
                continue;
            }
            svc.restart_at = None;
            let started = match &svc.argv {
                // std resets the signal mask in the child it spawns.
                Some(argv) => std::process::Command::new(&argv[0])
                    .args(&argv[1..])
                    .spawn()
                    .map(|c| c.id() as libc::pid_t),
                None => {
                    // SAFETY: PID 1 is single-threaded (boot starts no
                    // threads), so the child may run arbitrary code.
                    let pid = unsafe { libc::fork() };
                    if pid == 0 {
                        // SAFETY: restore the mask the daemon expects.
                        unsafe { libc::sigprocmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
                        return Ok(config);
                    }
                    if pid < 0 {
                        Err(io::Error::last_os_error())
                    } else {
                        Ok(pid)
                    }
                }
            };
            match started {
                Ok(pid) => {
                    match &svc.argv {
                        None => say!("daemon started, pid {pid}, config {}", config.display()),
                        Some(argv) => say!("{} started, pid {pid}: {}", svc.name, argv.join(" ")),
                    }
                    svc.pid = Some((pid, Instant::now()));
                }
                Err(e) => {
                    say!("{}: cannot start: {e}; retrying", svc.name);
                    svc.restart_at = Some(Instant::now() + svc.backoff);
                }
            }
        }
        let ts = libc::timespec {
            tv_sec: 1,
            tv_nsec: 0,
        };
        // SAFETY: set is initialised; no siginfo wanted.
        let sig = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &ts) };
        let daemon = services[0].pid.map(|p| p.0);
        match sig {
            libc::SIGTERM | libc::SIGINT => shutdown(daemon, Halt::Reboot),
            libc::SIGUSR2 | libc::SIGPWR => shutdown(daemon, Halt::PowerOff),
            libc::SIGHUP => {
                if let Some(pid) = daemon {
                    say!("reload: passing SIGHUP to the daemon");
                    // SAFETY: signalling our own child.
                    unsafe { libc::kill(pid, libc::SIGHUP) };
                }
            }
            _ => {}
        }
        // Reap everything: orphans re-parented to us and our services.
        loop {
            let mut status = 0;
            // SAFETY: status is a valid out-pointer.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                break;
            }
            if let Some(svc) = services
                .iter_mut()
                .find(|s| s.pid.is_some_and(|(p, _)| p == pid))
            {
                svc.exited(status);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Entry points

/// Brings the appliance up (see the module docs). Returns, in the daemon
/// process, the config path to run with; PID 1 itself never returns from
/// here once the supervisor runs. Call only when [`is_pid1`].
pub fn boot() -> Result<PathBuf, InitError> {
    // SAFETY: umask has no failure mode.
    unsafe { libc::umask(0o022) };
    mount_api_filesystems()?;
    ensure_console();
    say!("starting duet {} as PID 1", env!("CARGO_PKG_VERSION"));
    for (k, v) in [
        ("PATH", "/bin:/sbin:/usr/bin:/usr/sbin"),
        ("HOME", "/"),
        ("TERM", "linux"),
        ("RUST_LOG", "info"),
    ] {
        // Kernel parameters like RUST_LOG=debug arrive in the environment
        // and win over these defaults.
        if std::env::var_os(k).is_none() {
            std::env::set_var(k, v);
        }
    }
    let cmdline =
        fs::read_to_string("/proc/cmdline").map_err(|e| file_err(Path::new("/proc/cmdline"), e))?;
    let params = BootParams::parse(&cmdline)?;
    let t = Instant::now();
    let (ok, failed) = load_modules(Path::new(MODULE_LIST))?;
    say!(
        "loaded {ok} modules ({failed} failed) in {} ms",
        t.elapsed().as_millis()
    );
    let storage = setup_storage(&params)?;
    // The node's name: the command line, else a one-line file on /data,
    // so identical disk images differ only in their data partition.
    let node = params.node.clone().or_else(|| {
        fs::read_to_string(Path::new(DATA_DIR).join("node"))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    });
    if let Some(node) = &node {
        set_hostname(node);
    }
    let config_text =
        fs::read_to_string(&storage.config).map_err(|e| file_err(&storage.config, e))?;
    let plan = plan_network(&params, &config_text, node.as_deref()).map_err(|reason| {
        InitError::Param {
            param: format!("duet.node={}", node.as_deref().unwrap_or("")),
            reason,
        }
    })?;
    setup_network(&plan)?;
    let size = config_text.len();
    say!(
        "config {} ({size} bytes), state {} ({})",
        storage.config.display(),
        STATE_DIR,
        if storage.persistent {
            "on disk"
        } else {
            "in RAM"
        }
    );
    if params.rescue {
        return Err(InitError::RescueRequested);
    }
    supervise(storage.config)
}

/// Prints why the appliance cannot run and keeps the console usable: a
/// shell (busybox, when the image has it) respawned on the console, else
/// an idle PID 1 that still reaps. Never returns, so the kernel never
/// panics on a dead init.
pub fn rescue(msg: &str) -> ! {
    let banner = format!(
        "\n*** duet: the appliance could not start ***\n*** {msg}\n\
         *** Fix the config on the data partition (label {DEFAULT_DATA_LABEL}) or the kernel \
         command line (duet.ip=, duet.if=, duet.data=) and reboot.\n"
    );
    let _ = io::stderr().write_all(banner.as_bytes());
    let shell = Path::new("/bin/sh");
    loop {
        if shell.exists() {
            let _ = io::stderr()
                .write_all(b"*** Rescue shell (exit to get a new one; `reboot -f` to reboot).\n");
            // /dev/console cannot be a controlling terminal; busybox's
            // cttyhack reopens the real tty behind it in a new session, so
            // Ctrl-C and job control work in the shell.
            let mut cmd = if Path::new("/bin/setsid").exists() {
                let mut c = std::process::Command::new("/bin/setsid");
                c.args(["/bin/cttyhack", "/bin/sh"]);
                c
            } else {
                std::process::Command::new(shell)
            };
            let status = cmd.env("PS1", "duet-rescue# ").status();
            if let Err(e) = status {
                say!("rescue shell: {e}");
                std::thread::sleep(Duration::from_secs(10));
            }
        } else {
            std::thread::sleep(Duration::from_secs(60));
        }
        loop {
            let mut status = 0;
            // SAFETY: status is a valid out-pointer.
            if unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) } <= 0 {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_defaults_and_values() {
        let p = BootParams::parse("console=ttyS0 panic=-1 quiet").unwrap();
        assert_eq!(p, BootParams::default());
        let p = BootParams::parse(
            "console=ttyS0 duet.ip=198.18.0.1/24 duet.gw=198.18.0.254 duet.node=web1 \
             duet.if=ens3 duet.data=CONF duet.data_wait=0.5 duet.rescue",
        )
        .unwrap();
        assert_eq!(p.ip, Some((Ipv4Addr::new(198, 18, 0, 1), 24)));
        assert_eq!(p.gateway, Some(Ipv4Addr::new(198, 18, 0, 254)));
        assert_eq!(p.node.as_deref(), Some("web1"));
        assert_eq!(p.iface.as_deref(), Some("ens3"));
        assert_eq!(p.data_label.as_deref(), Some("CONF"));
        assert_eq!(p.data_wait, Duration::from_millis(500));
        assert!(p.rescue);
        let p = BootParams::parse("duet.ip=10.0.0.5 duet.data=none").unwrap();
        assert_eq!(p.ip, Some((Ipv4Addr::new(10, 0, 0, 5), 24)));
        assert_eq!(p.data_label, None);
    }

    #[test]
    fn params_errors_name_the_parameter() {
        for bad in [
            "duet.ip=300.1.1.1/24",
            "duet.ip=1.2.3.4/33",
            "duet.ip=",
            "duet.gw=x",
            "duet.if=averyveryverylongname",
            "duet.data_wait=-1",
            "duet.bogus=1",
        ] {
            match BootParams::parse(bad) {
                Err(InitError::Param { param, .. }) => assert_eq!(param, bad),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn masks() {
        assert_eq!(prefix_to_mask(0), Ipv4Addr::new(0, 0, 0, 0));
        assert_eq!(prefix_to_mask(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(prefix_to_mask(15), Ipv4Addr::new(255, 254, 0, 0));
        assert_eq!(prefix_to_mask(32), Ipv4Addr::new(255, 255, 255, 255));
    }

    #[test]
    fn module_list_blocks() {
        let l = parse_module_list(
            "# comment\n/lib/m/a.ko\n\nmatch pci:v00001AF4d* virtio:d00000001v*\n  \
             /lib/m/b.ko  opt=1 other=2 # why\nmatch nothing\nalways\n/lib/m/c.ko\n",
        );
        let ml = |p: &str, params: &str| ModuleLine {
            path: p.into(),
            params: params.into(),
        };
        assert_eq!(
            l,
            vec![
                ModuleBlock {
                    patterns: vec![],
                    modules: vec![ml("/lib/m/a.ko", "")]
                },
                ModuleBlock {
                    patterns: vec!["pci:v00001AF4d*".into(), "virtio:d00000001v*".into()],
                    modules: vec![ml("/lib/m/b.ko", "opt=1 other=2")]
                },
                // The empty `match nothing` block is dropped.
                ModuleBlock {
                    patterns: vec![],
                    modules: vec![ml("/lib/m/c.ko", "")]
                },
            ]
        );
    }

    #[test]
    fn globs_match_like_modprobe() {
        let virtio_pci = "pci:v00001AF4d*sv*sd*bc*sc*i*";
        assert!(glob_match(
            virtio_pci,
            "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00"
        ));
        assert!(!glob_match(
            virtio_pci,
            "pci:v00008086d0000100Esv00001AF4sd00001100bc02sc00i00"
        ));
        let xhci = "pci:v*d*sv*sd*bc0Csc03i30*";
        assert!(glob_match(
            xhci,
            "pci:v00001B36d0000000Dsv00001AF4sd00001100bc0Csc03i30"
        ));
        assert!(!glob_match(
            xhci,
            "pci:v00001B36d0000000Dsv00001AF4sd00001100bc0Csc03i20"
        ));
        assert!(glob_match(
            "usb:v0BC2p3300d[0-1]*",
            "usb:v0BC2p3300d0100dc00"
        ));
        assert!(!glob_match(
            "usb:v0BC2p3300d[0-1]*",
            "usb:v0BC2p3300d2100dc00"
        ));
        assert!(glob_match("a[!x]c", "abc") && !glob_match("a[!b]c", "abc"));
        assert!(glob_match("a[]]c", "a]c"));
        assert!(glob_match("a?c", "abc") && !glob_match("a?c", "ac"));
        assert!(glob_match("*", "") && glob_match("a**", "a"));
        assert!(!glob_match("a", "") && !glob_match("", "a"));
        // An unclosed set is a literal `[`.
        assert!(glob_match("a[b", "a[b"));
    }

    #[test]
    fn probe_ext4_label() {
        let mut head = vec![0u8; 2048];
        head[1024 + 0x38] = 0x53;
        head[1024 + 0x39] = 0xEF;
        head[1024 + 0x78..1024 + 0x80].copy_from_slice(b"DUETDATA");
        assert_eq!(
            probe_label(&head),
            Some((FsKind::Ext4, "DUETDATA".to_string()))
        );
        // Truncated reads never index out of bounds.
        assert_eq!(probe_label(&head[..1100]), None);
        assert_eq!(probe_label(&[]), None);
    }

    #[test]
    fn probe_fat_labels() {
        let mut fat16 = vec![0u8; 2048];
        fat16[0x16] = 32; // sectors per FAT: FAT12/16 layout
        fat16[0x26] = 0x29;
        fat16[0x2B..0x36].copy_from_slice(b"DUETDATA   ");
        fat16[0x36..0x3E].copy_from_slice(b"FAT16   ");
        fat16[510] = 0x55;
        fat16[511] = 0xAA;
        assert_eq!(
            probe_label(&fat16),
            Some((FsKind::Vfat, "DUETDATA".to_string()))
        );
        let mut fat32 = vec![0u8; 512];
        fat32[0x42] = 0x29;
        fat32[0x47..0x52].copy_from_slice(b"ESP        ");
        fat32[0x52..0x5A].copy_from_slice(b"FAT32   ");
        fat32[510] = 0x55;
        fat32[511] = 0xAA;
        assert_eq!(probe_label(&fat32), Some((FsKind::Vfat, "ESP".to_string())));
        // An MBR with a boot signature but no FAT BPB is not a filesystem.
        let mut mbr = vec![0u8; 512];
        mbr[510] = 0x55;
        mbr[511] = 0xAA;
        assert_eq!(probe_label(&mbr), None);
    }

    const CONFIG: &str = r#"
[cluster]
vip = "198.18.0.100"
interface = "ens4"
[[node]]
name = "web1"
address = "198.18.0.1"
[[node]]
name = "web2"
address = "198.18.0.2"
"#;

    #[test]
    fn network_from_config_and_cmdline() {
        let none = BootParams::default();
        let plan = plan_network(&none, CONFIG, Some("web2")).unwrap();
        assert_eq!(plan.iface, "ens4");
        assert_eq!(plan.ip, Some((Ipv4Addr::new(198, 18, 0, 2), CONFIG_PREFIX)));
        // The command line wins over the config.
        let p = BootParams::parse("duet.ip=198.18.0.9/16 duet.if=eth1").unwrap();
        let plan = plan_network(&p, CONFIG, Some("web2")).unwrap();
        assert_eq!(plan.iface, "eth1");
        assert_eq!(plan.ip, Some((Ipv4Addr::new(198, 18, 0, 9), 16)));
        // No node: interface up, no address.
        let plan = plan_network(&none, CONFIG, None).unwrap();
        assert_eq!(plan.ip, None);
        // Broken or foreign configs without a node name are not an error.
        let plan = plan_network(&none, "not = [toml", None).unwrap();
        assert_eq!(plan.iface, "eth0");
    }

    #[test]
    fn network_errors_say_what_is_missing() {
        let none = BootParams::default();
        let e = plan_network(&none, CONFIG, Some("web3")).unwrap_err();
        assert!(e.contains("web3"), "{e}");
        let e = plan_network(&none, "[[node]]\nname = \"web1\"\n", Some("web1")).unwrap_err();
        assert!(e.contains("IPv4"), "{e}");
        let e = plan_network(&none, "[[node", Some("web1")).unwrap_err();
        assert!(e.contains("TOML"), "{e}");
    }
}
