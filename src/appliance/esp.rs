//! The boot partition's slots on disk: what [`super::upgrade`] decides,
//! applied to the mounted ESP. Every file is replaced by writing a
//! temporary, syncing it and renaming it over the old one, so a power cut
//! leaves either version, never half of one.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::mount::MountFlags;

use super::cmdline::BootParams;
use super::mounts::mount;
use super::storage::find_labelled;
use super::upgrade::{
    adv_set_boot_once, at_boot, is_trial_entry, plan_upgrade, sdboot_entry, syslinux_cfg,
    trial_step, verify_archive, BootKind, BootState, Slot, TrialStep, UpgradeError, ADV_BYTES,
    GOOD_ENTRY, LOADER_CONF, PARTS, TRIAL_ENTRY,
};

/// Where PID 1 mounts the boot partition.
pub const ESP_DIR: &str = "/boot";
/// Its FAT label (image/mkdisk.sh).
pub const ESP_LABEL: &str = "DUETBOOT";
const STATE: &str = "duet/state";
const LDLINUX: &str = "syslinux/ldlinux.sys";

/// The mounted boot partition.
pub struct Esp {
    root: PathBuf,
}

fn io_err(what: &Path, e: std::io::Error) -> String {
    format!("{}: {e}", what.display())
}

impl Esp {
    pub fn at(root: impl Into<PathBuf>) -> Esp {
        Esp { root: root.into() }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    pub fn state(&self) -> Result<BootState, String> {
        let p = self.path(STATE);
        let text = fs::read_to_string(&p).map_err(|e| io_err(&p, e))?;
        BootState::parse(&text).map_err(|e| format!("{}: {e}", p.display()))
    }

    fn write(&self, rel: &str, data: &[u8]) -> Result<(), String> {
        let p = self.path(rel);
        let dir = p.parent().unwrap_or(&self.root).to_path_buf();
        fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
        let tmp = p.with_extension("tmp");
        let mut f = fs::File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
        f.write_all(data)
            .and_then(|()| f.sync_all())
            .map_err(|e| io_err(&tmp, e))?;
        fs::rename(&tmp, &p).map_err(|e| io_err(&p, e))?;
        self.sync()
    }

    /// vfat writes a renamed file's directory entry with the file's inode,
    /// not with its directory: without a sync of the whole filesystem a
    /// power cut seconds later loses the rename (and the next mount finds
    /// clusters the FAT no longer agrees with).
    fn sync(&self) -> Result<(), String> {
        let root = fs::File::open(&self.root).map_err(|e| io_err(&self.root, e))?;
        rustix::fs::syncfs(&root).map_err(|e| io_err(&self.root, e.into()))
    }

    fn write_state(&self, s: &BootState) -> Result<(), String> {
        self.write(STATE, s.emit().as_bytes())
    }

    fn cmdline(&self, slot: Slot) -> Option<String> {
        fs::read_to_string(self.path(&format!("{slot}/cmdline"))).ok()
    }

    /// Both boot loaders start `default` (the trial entry aside).
    fn set_default(&self, default: Slot) -> Result<(), String> {
        let a = self.cmdline(Slot::A);
        let b = self.cmdline(Slot::B);
        let cfg = syslinux_cfg(default, [(Slot::A, a.as_deref()), (Slot::B, b.as_deref())]);
        self.write("syslinux/syslinux.cfg", cfg.as_bytes())?;
        self.write("loader/loader.conf", LOADER_CONF.as_bytes())?;
        let c = self.cmdline(default).unwrap_or_default();
        self.write(
            &format!("loader/entries/{GOOD_ENTRY}"),
            sdboot_entry(default, &c).as_bytes(),
        )
    }

    fn set_boot_once(&self, once: Option<Slot>) -> Result<(), String> {
        let p = self.path(LDLINUX);
        let e = |e| io_err(&p, e);
        // In place: the ADV sectors' addresses are patched into the boot
        // sector, so the file must keep its clusters.
        let mut f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)
            .map_err(e)?;
        let len = f.metadata().map_err(e)?.len();
        let at = len
            .checked_sub(ADV_BYTES as u64)
            .ok_or_else(|| format!("{}: too short for an ADV", p.display()))?;
        let mut adv = vec![0u8; ADV_BYTES];
        f.seek(SeekFrom::Start(at))
            .and_then(|_| f.read_exact(&mut adv))
            .map_err(e)?;
        let new = adv_set_boot_once(&adv, once.map(Slot::name))
            .map_err(|m| format!("{}: {m}", p.display()))?;
        if new != adv {
            f.seek(SeekFrom::Start(at))
                .and_then(|_| f.write_all(&new))
                .and_then(|()| f.sync_all())
                .map_err(e)?;
        }
        Ok(())
    }

    /// Boot `trial` once, in both boot loaders.
    fn arm(&self, trial: Slot) -> Result<(), String> {
        let c = self.cmdline(trial).unwrap_or_default();
        self.write(
            &format!("loader/entries/{TRIAL_ENTRY}"),
            sdboot_entry(trial, &c).as_bytes(),
        )?;
        self.set_boot_once(Some(trial))
    }

    /// No one-shot left in either boot loader.
    fn disarm(&self) -> Result<(), String> {
        let dir = self.path("loader/entries");
        if let Ok(entries) = fs::read_dir(&dir) {
            for e in entries.flatten() {
                if is_trial_entry(&e.file_name().to_string_lossy()) {
                    fs::remove_file(e.path()).map_err(|err| io_err(&e.path(), err))?;
                }
            }
        }
        self.set_boot_once(None)?;
        self.sync()
    }
}

/// `duet upgrade` in the daemon: verifies the archive, writes it into the
/// inactive slot and arms one boot of it. The data partition is not
/// touched. The caller then has PID 1 reboot ([`reboot_soon`]).
pub fn install_upgrade(archive: &[u8]) -> Result<String, String> {
    let cmdline = fs::read_to_string("/proc/cmdline").map_err(|e| format!("/proc/cmdline: {e}"))?;
    let booted = BootParams::parse(&cmdline)
        .ok()
        .and_then(|p| p.slot)
        .ok_or_else(|| UpgradeError::NotSlotBooted.to_string())?;
    let esp = Esp::at(ESP_DIR);
    let state = esp
        .state()
        .map_err(|e| UpgradeError::NoState(e).to_string())?;
    let (target, armed) = plan_upgrade(state, booted).map_err(|e| e.to_string())?;
    let upgrade = verify_archive(archive).map_err(|e| e.to_string())?;
    // A stale one-shot must not start the slot while it is being written.
    esp.disarm()?;
    for part in PARTS {
        esp.write(&format!("{target}/{part}"), upgrade.part(part))?;
    }
    esp.set_default(booted)?;
    // The state first: a power cut before the arming then only reads as a
    // trial that never started, which the next boot clears.
    esp.write_state(&armed)?;
    esp.arm(target)?;
    let size: usize = upgrade.parts.iter().map(|(_, d)| d.len()).sum();
    Ok(format!(
        "slot {target} written ({size} bytes); rebooting into it once: it becomes the \
         default only when its daemon hears its peer, else the box returns to slot {booted}"
    ))
}

/// Has PID 1 reboot the box (cleanly: it stops the daemon and unmounts
/// /data) after `delay`, so the answer to the request gets out first.
pub fn reboot_soon(delay: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(delay);
        log::info!("upgrade: asking init to reboot");
        // SAFETY: a plain kill(2) of init; the appliance's PID 1 reboots
        // on SIGTERM.
        unsafe { libc::kill(1, libc::SIGTERM) };
    });
}

/// A trial boot in progress, watched by PID 1.
pub(super) struct TrialWatch {
    esp: Esp,
    slot: Slot,
    previous: Slot,
    started: Instant,
    status: SocketAddr,
    next_poll: Instant,
}

/// What the watch asks of PID 1.
pub(super) enum Verdict {
    Running,
    Reboot,
}

impl TrialWatch {
    pub(super) fn set_status(&mut self, status: SocketAddr) {
        self.status = status;
    }

    pub(super) fn previous(&self) -> Slot {
        self.previous
    }

    /// Asks the daemon whether it heard its peer (every 2 s) and confirms
    /// or gives up; returns None once the trial is over.
    pub(super) fn poll(&mut self, now: Instant) -> Option<Verdict> {
        if now < self.next_poll {
            return Some(Verdict::Running);
        }
        self.next_poll = now + Duration::from_secs(2);
        let heard = peer_heard(self.status);
        match trial_step(self.started, now, heard) {
            TrialStep::Wait => Some(Verdict::Running),
            TrialStep::Confirm => {
                let secs = now.saturating_duration_since(self.started).as_secs();
                // The boot loaders first: a power cut between the two
                // writes then boots this slot as a trial again.
                let r = self.esp.set_default(self.slot).and_then(|()| {
                    self.esp.write_state(&BootState {
                        confirmed: self.slot,
                        trial: None,
                    })
                });
                match r {
                    Ok(()) => {
                        say!(
                            "upgrade: slot {} confirmed good (the daemon heard its peer {secs} s \
                             after init started); it is now the default",
                            self.slot
                        );
                        None
                    }
                    Err(e) => {
                        say!("upgrade: cannot confirm slot {}: {e}; retrying", self.slot);
                        Some(Verdict::Running)
                    }
                }
            }
            TrialStep::GiveUp => {
                say!(
                    "upgrade: slot {} not confirmed within {} s (the daemon never heard its \
                     peer); rebooting into slot {}",
                    self.slot,
                    super::upgrade::TRIAL_LIMIT.as_secs(),
                    self.previous
                );
                Some(Verdict::Reboot)
            }
        }
    }
}

/// Whether the local daemon's /api/status lists a peer it has heard.
fn peer_heard(status: SocketAddr) -> bool {
    let Ok((200, body)) =
        crate::status::client::request(status, "GET", "/api/status", None, Duration::from_secs(1))
    else {
        return false;
    };
    serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| {
            v.get("peers")?.as_array().map(|ps| {
                ps.iter()
                    .any(|p| p.get("last_heard_ms").is_some_and(|h| !h.is_null()))
            })
        })
        .unwrap_or(false)
}

/// PID 1, right after the modules: on a slot boot, mounts the ESP, records
/// and disarms what this boot is, and returns the watch of a trial. Errors
/// are reported and leave the box running (it is the boot loaders' default
/// or their one-shot that started it).
pub(super) fn at_init(params: &BootParams, started: Instant) -> Option<TrialWatch> {
    let booted = params.slot?;
    let esp = match mount_esp() {
        Ok(()) => Esp::at(ESP_DIR),
        Err(e) => {
            say!("upgrade: boot partition: {e}; slot {booted}, no A/B management this boot");
            return None;
        }
    };
    let state = match esp.state() {
        Ok(s) => s,
        Err(e) => {
            say!("upgrade: {e}; taking slot {booted} as the confirmed one");
            let s = BootState {
                confirmed: booted,
                trial: None,
            };
            if let Err(e) = esp.write_state(&s) {
                say!("upgrade: {e}");
            }
            s
        }
    };
    let (kind, write) = at_boot(state, booted);
    if let Some(new) = write {
        // The first act of a trial: the next boot, whatever happens now,
        // goes back to the confirmed slot.
        if let Err(e) = esp.write_state(&new).and_then(|()| esp.disarm()) {
            say!("upgrade: {e}");
        }
    }
    match kind {
        BootKind::Normal => {
            say!("boot slot {booted} (confirmed)");
            None
        }
        BootKind::Manual => {
            say!(
                "boot slot {booted}, chosen by hand: slot {} stays the default",
                state.confirmed
            );
            None
        }
        BootKind::RolledBack { from, reached_init } => {
            say!(
                "upgrade: ROLLED BACK: slot {from} was not confirmed ({}); back on slot {booted}",
                if reached_init {
                    "its init ran, but it was not confirmed: see that boot's console lines"
                } else {
                    "it never reached init"
                }
            );
            None
        }
        BootKind::Trial { previous } => {
            say!(
                "upgrade: slot {booted} on trial: it becomes the default once the daemon hears \
                 its peer, within {} s; the next boot otherwise returns to slot {previous}",
                super::upgrade::TRIAL_LIMIT.as_secs()
            );
            Some(TrialWatch {
                esp,
                slot: booted,
                previous,
                started,
                status: SocketAddr::from(([127, 0, 0, 1], 8080)),
                next_poll: started,
            })
        }
    }
}

fn mount_esp() -> Result<(), String> {
    let (dev, _) =
        find_labelled(ESP_LABEL).ok_or_else(|| format!("no partition labelled {ESP_LABEL}"))?;
    let dev = dev.display().to_string();
    mount(&dev, ESP_DIR, "vfat", MountFlags::NOATIME, "")
        .map_err(|e| format!("mounting {dev} (vfat) on {ESP_DIR}: {e}"))
}
