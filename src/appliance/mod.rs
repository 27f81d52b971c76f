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

// Before the submodules, which use it too.
macro_rules! say {
    ($($arg:tt)*) => { $crate::appliance::say(format_args!($($arg)*)) };
}

mod cmdline;
mod esp;
mod fnmatch;
mod modules;
mod mounts;
mod net;
mod rescue;
pub mod setup;
mod storage;
mod supervisor;
pub mod upgrade;

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use rustix::fs::Mode;
use rustix::io::Errno;
use rustix::process::WaitOptions;
use rustix::time::ClockId;

use modules::load_modules;
use mounts::{ensure_console, mount_api_filesystems};
use net::{set_hostname, setup_network};
use storage::setup_storage;
use supervisor::supervise;

pub use cmdline::{cmdline_node, BootParams};
pub use esp::{install_upgrade, reboot_soon};
pub use fnmatch::glob_match;
pub use modules::{parse_module_list, ModuleBlock, ModuleLine};
pub use net::{plan_network, NetPlan, CONFIG_PREFIX};
pub use rescue::rescue;
pub use storage::{probe_label, FsKind};

/// Built-in config, copied into the initramfs by the image build.
pub const BUILTIN_CONFIG: &str = "/etc/duet/duet.toml";
/// Where the daemon reads the key (`cluster.key_file` of the built-in
/// config); the image ships none, boot copies /data/key here.
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
pub(crate) fn uptime() -> f64 {
    let ts = rustix::time::clock_gettime(ClockId::Boottime);
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// One line on the console, prefixed like the kernel's own so boot timing
/// can be read off the serial log.
pub(crate) fn say(args: fmt::Arguments<'_>) {
    let line = format!("[{:>10.6}] duet-init: {}\n", uptime(), args);
    let _ = io::stderr().write_all(line.as_bytes());
}

/// Brings the appliance up (see the module docs). Returns, in the daemon
/// process, the config path to run with; PID 1 itself never returns from
/// here once the supervisor runs. Call only when [`is_pid1`].
pub fn boot() -> Result<PathBuf, InitError> {
    rustix::process::umask(Mode::from_raw_mode(0o022));
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
    let started = Instant::now();
    let (ok, failed) = load_modules(Path::new(MODULE_LIST))?;
    say!(
        "loaded {ok} modules ({failed} failed) in {} ms",
        started.elapsed().as_millis()
    );
    // vfat is a module: this is the earliest the boot partition can be read.
    let trial = esp::at_init(&params, started);
    let previous = trial.as_ref().map(esp::TrialWatch::previous);
    match start(&params, trial) {
        // A trial system that cannot come up goes back at once rather than
        // waiting at a rescue shell.
        Err(e) if previous.is_some() => {
            say!(
                "upgrade: the trial system cannot start: {e}; rebooting into slot {}",
                previous.map_or("?", upgrade::Slot::name)
            );
            supervisor::reboot()
        }
        r => r,
    }
}

/// The rest of [`boot`]: storage, network, setup mode, supervision.
fn start(params: &BootParams, mut trial: Option<esp::TrialWatch>) -> Result<PathBuf, InitError> {
    let storage = setup_storage(params)?;
    let (config_text, lan_ip) = network_for(params, &storage.config)?;
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
    let base = storage
        .config
        .parent()
        .unwrap_or(Path::new("/"))
        .to_path_buf();
    let key = setup::cluster_path(&config_text, "key_file", &base)
        .unwrap_or_else(|| PathBuf::from(BUILTIN_KEY));
    if let Some(why) = setup::needs_setup(&key) {
        let data = Path::new(DATA_DIR);
        let target = setup::Target {
            config: storage.config.clone(),
            base,
            data_key: storage.persistent.then(|| data.join("key")),
            node: storage.persistent.then(|| data.join("node")),
        };
        setup_mode(&why, &config_text, lan_ip, &target);
        // The submitted config may give this node another address.
        network_for(params, &storage.config)?;
    }
    if let Some(t) = trial.as_mut() {
        let text = fs::read_to_string(&storage.config).unwrap_or_default();
        t.set_status(local_status_addr(&text));
    }
    supervise(storage.config, trial)
}

/// `cluster.status_listen` of a config (default 0.0.0.0:8080).
fn status_listen(config_text: &str) -> std::net::SocketAddr {
    config_text
        .parse::<toml::Table>()
        .ok()
        .and_then(|t| {
            t.get("cluster")?
                .get("status_listen")?
                .as_str()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| std::net::SocketAddr::from(([0, 0, 0, 0], 8080)))
}

/// Where PID 1 reaches the daemon's status server: a wildcard listen
/// address on loopback.
fn local_status_addr(config_text: &str) -> std::net::SocketAddr {
    let mut a = status_listen(config_text);
    if a.ip().is_unspecified() {
        a.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    a
}

/// The node's name (the command line, else a one-line file on /data, so
/// identical disk images differ only in their data partition), the
/// hostname, and the LAN interface from it and the config; returns the
/// config's text and the address the interface got.
fn network_for(
    params: &BootParams,
    config: &Path,
) -> Result<(String, Option<std::net::Ipv4Addr>), InitError> {
    let node = params.node.clone().or_else(|| {
        fs::read_to_string(Path::new(DATA_DIR).join("node"))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    });
    if let Some(node) = &node {
        set_hostname(node);
    }
    let config_text = fs::read_to_string(config).map_err(|e| file_err(config, e))?;
    let plan =
        plan_network(params, &config_text, node.as_deref()).map_err(|reason| InitError::Param {
            param: format!("duet.node={}", node.as_deref().unwrap_or("")),
            reason,
        })?;
    setup_network(&plan)?;
    Ok((config_text, plan.ip.map(|(a, _)| a)))
}

/// Serves the setup page from a child process until the box is set up
/// (see [`setup`]); the daemon never runs before.
fn setup_mode(
    why: &str,
    config_text: &str,
    lan_ip: Option<std::net::Ipv4Addr>,
    target: &setup::Target,
) {
    let listen = status_listen(config_text);
    loop {
        let code = match setup::setup_code() {
            Ok(c) => c,
            Err(e) => {
                say!("setup mode: no random numbers: {e}");
                std::thread::sleep(std::time::Duration::from_secs(1));
                continue;
            }
        };
        let mut shown = listen;
        if let (true, Some(ip)) = (listen.ip().is_unspecified(), lan_ip) {
            shown.set_ip(ip.into());
        }
        say!("SETUP MODE: {why}; this box will not join a pair until it is set up");
        say!("SETUP MODE: open http://{shown}/setup with setup code {code}");
        // SAFETY: PID 1 has started no threads; the child runs the server
        // and exits, never returning into boot.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let rc = match setup::serve(listen, target, &code) {
                Ok(node) => {
                    say!("setup done: this is {node}; starting the daemon");
                    0
                }
                Err(e) => {
                    say!("setup server: {e}");
                    1
                }
            };
            std::process::exit(rc);
        }
        if pid < 0 {
            say!("setup mode: fork: {}", io::Error::last_os_error());
            std::thread::sleep(std::time::Duration::from_secs(1));
            continue;
        }
        // Reap orphans too while waiting for the setup child.
        loop {
            match rustix::process::waitpid(None, WaitOptions::empty()) {
                Ok(Some((r, status))) if r.as_raw_pid() == pid => {
                    if status.exit_status() == Some(0) {
                        return;
                    }
                    break;
                }
                Err(e) if e != Errno::INTR => break,
                _ => {}
            }
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}
