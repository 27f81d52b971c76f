//! PID 1 after boot: keeps the daemon (and extras) running, reaps orphans,
//! turns signals into reload or a clean shutdown.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::mount::UnmountFlags;
use rustix::process::{Pid, Signal, WaitOptions, WaitStatus};
use rustix::system::RebootCommand;

use super::esp::{TrialWatch, Verdict};
use super::{InitError, DATA_DIR, STATE_DIR};

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

/// Stops the daemon, unmounts the data and boot partitions and ends the
/// machine.
fn shutdown(daemon: Option<Pid>, how: Halt) -> ! {
    say!("shutting down ({how:?})");
    if let Some(pid) = daemon {
        let _ = rustix::process::kill_process(pid, Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            match rustix::process::waitpid(Some(pid), WaitOptions::NOHANG) {
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                _ => break,
            }
        }
    }
    // SAFETY: kill(-1) from PID 1 reaches every other process (rustix has
    // no call for it).
    unsafe { libc::kill(-1, libc::SIGKILL) };
    rustix::fs::sync();
    for target in [STATE_DIR, DATA_DIR, super::esp::ESP_DIR] {
        let _ = rustix::mount::unmount(target, UnmountFlags::DETACH);
    }
    rustix::fs::sync();
    let _ = rustix::system::reboot(match how {
        Halt::Reboot => RebootCommand::Restart,
        Halt::PowerOff => RebootCommand::PowerOff,
    });
    // reboot(2) only returns on error; PID 1 must not exit.
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Reboots at once from PID 1 before anything is supervised.
pub(super) fn reboot() -> ! {
    shutdown(None, Halt::Reboot)
}

/// When a supervised process may (re)start, driven by an explicit clock so
/// the crash-loop policy is tested with simulated time: one that ran a
/// while comes back at once; a crash loop backs off from 1 s up to 30 s so
/// the console stays readable.
#[derive(Debug, Clone)]
pub(super) struct Restart {
    started: Option<Instant>,
    due: Option<Instant>,
    backoff: Duration,
}

const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Running this long counts as healthy: the back-off starts over.
const STABLE_RUN: Duration = Duration::from_secs(60);

impl Restart {
    /// Due at once.
    pub(super) fn new(now: Instant) -> Restart {
        Restart {
            started: None,
            due: Some(now),
            backoff: FIRST_BACKOFF,
        }
    }

    /// True once, when the process should be started now.
    pub(super) fn take_due(&mut self, now: Instant) -> bool {
        if self.due.is_some_and(|at| now >= at) {
            self.due = None;
            return true;
        }
        false
    }

    pub(super) fn started(&mut self, now: Instant) {
        self.started = Some(now);
    }

    /// Starting failed: try again after the current back-off.
    pub(super) fn start_failed(&mut self, now: Instant) {
        self.due = Some(now + self.backoff);
    }

    /// The process ended; returns how long until it is started again.
    pub(super) fn exited(&mut self, now: Instant) -> Duration {
        if self
            .started
            .is_some_and(|t| now.saturating_duration_since(t) > STABLE_RUN)
        {
            self.backoff = FIRST_BACKOFF;
        }
        let wait = self.backoff;
        self.due = Some(now + wait);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        self.started = None;
        wait
    }
}

/// A process PID 1 keeps running.
struct Service {
    name: &'static str,
    /// None: the daemon, which is this binary returning from `boot` in a
    /// forked child. Some: a program to exec.
    argv: Option<Vec<String>>,
    pid: Option<Pid>,
    restart: Restart,
}

impl Service {
    fn new(name: &'static str, argv: Option<Vec<String>>) -> Service {
        Service {
            name,
            argv,
            pid: None,
            restart: Restart::new(Instant::now()),
        }
    }

    fn exited(&mut self, status: WaitStatus) {
        let how = if let Some(code) = status.exit_status() {
            format!("exited with status {code}")
        } else if let Some(sig) = status.terminating_signal() {
            format!("killed by signal {sig}")
        } else {
            format!("ended ({:#x})", status.as_raw())
        };
        let wait = self.restart.exited(Instant::now());
        say!("{} {how}; restarting in {}s", self.name, wait.as_secs());
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
/// forked child, which goes on to run the daemon. On a trial boot it also
/// watches for the daemon to hear its peer (see [`super::upgrade`]).
pub(super) fn supervise(
    config: PathBuf,
    mut trial: Option<TrialWatch>,
) -> Result<PathBuf, InitError> {
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
    // SAFETY: blocking signals so sigtimedwait can collect them.
    unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, &mut old) };
    // Ctrl-Alt-Del then arrives as SIGINT instead of an immediate reboot.
    let _ = rustix::system::reboot(RebootCommand::CadOff);
    let mut services = vec![Service::new("daemon", None)];
    services.extend(extra_services());
    loop {
        for svc in services.iter_mut() {
            if !svc.restart.take_due(Instant::now()) {
                continue;
            }
            let started = match &svc.argv {
                // std resets the signal mask in the child it spawns.
                Some(argv) => std::process::Command::new(&argv[0])
                    .args(&argv[1..])
                    .spawn()
                    .map(|c| Pid::from_child(&c)),
                None => {
                    // SAFETY: PID 1 is single-threaded (boot starts no
                    // threads), so the child may run arbitrary code.
                    let pid = unsafe { libc::fork() };
                    if pid == 0 {
                        // SAFETY: restore the mask the daemon expects.
                        unsafe { libc::sigprocmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
                        return Ok(config);
                    }
                    // A failed fork's -1 becomes None (0 returned above).
                    Pid::from_raw(pid.max(0)).ok_or_else(io::Error::last_os_error)
                }
            };
            match started {
                Ok(pid) => {
                    match &svc.argv {
                        None => say!("daemon started, pid {pid}, config {}", config.display()),
                        Some(argv) => say!("{} started, pid {pid}: {}", svc.name, argv.join(" ")),
                    }
                    svc.pid = Some(pid);
                    svc.restart.started(Instant::now());
                }
                Err(e) => {
                    say!("{}: cannot start: {e}; retrying", svc.name);
                    svc.restart.start_failed(Instant::now());
                }
            }
        }
        let ts = libc::timespec {
            tv_sec: 1,
            tv_nsec: 0,
        };
        // SAFETY: set is initialised; no siginfo wanted.
        let sig = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &ts) };
        let daemon = services[0].pid;
        match sig {
            libc::SIGTERM | libc::SIGINT => shutdown(daemon, Halt::Reboot),
            libc::SIGUSR2 | libc::SIGPWR => shutdown(daemon, Halt::PowerOff),
            libc::SIGHUP => {
                if let Some(pid) = daemon {
                    say!("reload: passing SIGHUP to the daemon");
                    let _ = rustix::process::kill_process(pid, Signal::HUP);
                }
            }
            _ => {}
        }
        if let Some(t) = trial.as_mut() {
            match t.poll(Instant::now()) {
                Some(Verdict::Running) => {}
                Some(Verdict::Reboot) => shutdown(daemon, Halt::Reboot),
                None => trial = None,
            }
        }
        // Reap everything: orphans re-parented to us and our services.
        while let Ok(Some((pid, status))) = rustix::process::waitpid(None, WaitOptions::NOHANG) {
            if let Some(svc) = services.iter_mut().find(|s| s.pid == Some(pid)) {
                svc.exited(status);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_loop_backs_off_and_a_stable_run_resets() {
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        let mut r = Restart::new(t0);
        assert!(r.take_due(t0));
        assert!(!r.take_due(t0), "due only once");
        r.started(t0);
        // Crashing right away: 1, 2, 4, ... capped at 30 s.
        let mut now = t0;
        let mut waits = Vec::new();
        for _ in 0..7 {
            let w = r.exited(now);
            waits.push(w.as_secs());
            assert!(!r.take_due(now + w - Duration::from_millis(1)));
            now += w;
            assert!(r.take_due(now));
            r.started(now);
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30]);
        // A run longer than a minute starts the back-off over.
        let later = now + Duration::from_secs(61);
        assert_eq!(r.exited(later), Duration::from_secs(1));
        assert!(r.take_due(later + Duration::from_secs(1)));
        // A failed start retries after the current back-off, not at once.
        let mut r = Restart::new(at(0));
        assert!(r.take_due(at(0)));
        r.start_failed(at(0));
        assert!(!r.take_due(at(0)));
        assert!(r.take_due(at(1)));
    }
}
