//! A/B upgrades with rollback: the decisions, without I/O.
//!
//! The boot partition (ESP) holds two slots, `/a` and `/b`, each with
//! `vmlinuz`, `initrd.img` and `cmdline`. `/duet/state` on it records the
//! confirmed slot and, while an upgrade is on trial, the slot being tried.
//! Each slot's kernel command line carries `duet.slot=a|b`, so the booted
//! system knows which one it is.
//!
//! An upgrade writes the inactive slot and arms a one-shot boot of it in
//! both boot loaders at once (the disk may be booted either way):
//! syslinux's boot-once command in its auxiliary data vector (ADV), which
//! ldlinux clears before it boots it, and a systemd-boot entry with one try
//! left (`duet-trial+1.conf`), which systemd-boot renames to `+0-1` before
//! it boots it and then sorts after the confirmed entry. Either way the
//! boot after the trial returns to the confirmed slot unless the trial is
//! confirmed: a kernel that never reaches `/init` rolls back by itself.
//!
//! The trial system's PID 1 disarms both as its first act, so any later
//! failure (init error, daemon that never hears its peer, hang caught by
//! the deadline) also ends in the old slot. It confirms the slot once the
//! daemon has heard its peer, and reboots if that has not happened within
//! [`TRIAL_LIMIT`].

use std::fmt;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// How long a trial boot may take to hear its peer, from PID 1's start.
/// Under QEMU TCG the daemon hears its peer some 20 s after `/init`.
pub const TRIAL_LIMIT: Duration = Duration::from_secs(90);

/// One of the two boot slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub fn parse(s: &str) -> Option<Slot> {
        match s {
            "a" => Some(Slot::A),
            "b" => Some(Slot::B),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `/duet/state` on the boot partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootState {
    /// The slot boot loaders start by default.
    pub confirmed: Slot,
    /// An upgrade written to the other slot and armed to boot once.
    pub trial: Option<Trial>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trial {
    pub slot: Slot,
    /// The trial system's PID 1 ran (it records this before anything else).
    pub reached_init: bool,
}

impl BootState {
    pub fn parse(text: &str) -> Result<BootState, String> {
        let mut confirmed = None;
        let mut trial = None;
        let mut reached_init = false;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = || format!("line {}: {line:?}", i + 1);
            let (k, v) = line.split_once('=').ok_or_else(bad)?;
            match k.trim() {
                "confirmed" => confirmed = Some(Slot::parse(v.trim()).ok_or_else(bad)?),
                "trial" => trial = Some(Slot::parse(v.trim()).ok_or_else(bad)?),
                "trial_reached_init" => reached_init = v.trim() == "yes",
                _ => return Err(bad()),
            }
        }
        let confirmed = confirmed.ok_or("no confirmed= line")?;
        if trial == Some(confirmed) {
            return Err(format!("trial slot {confirmed} is the confirmed slot"));
        }
        Ok(BootState {
            confirmed,
            trial: trial.map(|slot| Trial { slot, reached_init }),
        })
    }

    pub fn emit(&self) -> String {
        let mut out = format!(
            "# duet A/B boot slots; written by the appliance\nconfirmed={}\n",
            self.confirmed
        );
        if let Some(t) = self.trial {
            out.push_str(&format!(
                "trial={}\ntrial_reached_init={}\n",
                t.slot,
                if t.reached_init { "yes" } else { "no" }
            ));
        }
        out
    }
}

/// What a boot is, given the state on the ESP and the slot it booted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootKind {
    /// The confirmed slot, nothing pending.
    Normal,
    /// The confirmed slot while a trial was armed: the trial did not
    /// confirm (`reached_init`: it failed after `/init`, else before).
    RolledBack { from: Slot, reached_init: bool },
    /// The slot on trial: confirm it or give up within [`TRIAL_LIMIT`].
    Trial { previous: Slot },
    /// A slot that is neither confirmed nor on trial (picked by hand in a
    /// boot menu): run it, change nothing.
    Manual,
}

/// Decides what this boot is and the state to write before anything else
/// (None: leave it). Every case that writes also disarms the one-shots.
pub fn at_boot(state: BootState, booted: Slot) -> (BootKind, Option<BootState>) {
    match state.trial {
        Some(t) if t.slot == booted => (
            BootKind::Trial {
                previous: state.confirmed,
            },
            Some(BootState {
                trial: Some(Trial {
                    reached_init: true,
                    ..t
                }),
                ..state
            }),
        ),
        Some(t) if state.confirmed == booted => (
            BootKind::RolledBack {
                from: t.slot,
                reached_init: t.reached_init,
            },
            Some(BootState {
                confirmed: booted,
                trial: None,
            }),
        ),
        _ if state.confirmed == booted => (BootKind::Normal, None),
        _ => (BootKind::Manual, None),
    }
}

/// One step of a trial boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrialStep {
    Wait,
    /// The daemon heard its peer: make this slot the default.
    Confirm,
    /// Out of time: reboot (into the previous slot).
    GiveUp,
}

pub fn trial_step(started: Instant, now: Instant, peer_heard: bool) -> TrialStep {
    if peer_heard {
        TrialStep::Confirm
    } else if now.saturating_duration_since(started) >= TRIAL_LIMIT {
        TrialStep::GiveUp
    } else {
        TrialStep::Wait
    }
}

/// Why an upgrade is refused before anything is written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpgradeError {
    #[error(
        "this system was not booted from a boot-partition slot (no duet.slot= on the kernel \
         command line; a direct kernel boot cannot be upgraded in place)"
    )]
    NotSlotBooted,
    #[error("no boot partition state: {0}")]
    NoState(String),
    #[error("slot {0} is on trial and not yet confirmed; upgrade again once it is")]
    OnTrial(Slot),
    #[error("bad upgrade archive: {0}")]
    Archive(String),
}

/// The slot an upgrade goes to, and the state that arms its trial.
pub fn plan_upgrade(state: BootState, booted: Slot) -> Result<(Slot, BootState), UpgradeError> {
    if state.confirmed != booted {
        return Err(UpgradeError::OnTrial(booted));
    }
    let target = booted.other();
    Ok((
        target,
        BootState {
            confirmed: booted,
            trial: Some(Trial {
                slot: target,
                reached_init: false,
            }),
        },
    ))
}

// --- boot loader files -------------------------------------------------------

/// The kernel command line of `slot`: the image's, plus which slot it is.
pub fn slot_cmdline(base: &str, slot: Slot) -> String {
    let base: Vec<&str> = base
        .split_ascii_whitespace()
        .filter(|w| !w.starts_with("duet.slot="))
        .collect();
    format!("{} duet.slot={slot}", base.join(" "))
}

/// `syslinux/syslinux.cfg`: a label per slot that holds a system, the
/// confirmed one the default. `cmdlines` are the slots' own (`/a/cmdline`).
pub fn syslinux_cfg(default: Slot, cmdlines: [(Slot, Option<&str>); 2]) -> String {
    let mut out = format!("SERIAL 0 115200\nDEFAULT {default}\nPROMPT 0\nTIMEOUT 0\n");
    for (slot, cmdline) in cmdlines {
        if let Some(c) = cmdline {
            out.push_str(&format!(
                "LABEL {slot}\n  LINUX /{slot}/vmlinuz\n  INITRD /{slot}/initrd.img\n  APPEND {}\n",
                slot_cmdline(c, slot)
            ));
        }
    }
    out
}

/// `loader/loader.conf`: the first entry in systemd-boot's order.
/// Entries without tries left sort last; the others by id, descending, so
/// an armed `duet-trial+1` comes before `duet-good`.
pub const LOADER_CONF: &str = "default duet-*\ntimeout 0\neditor no\n";
/// The confirmed slot's entry.
pub const GOOD_ENTRY: &str = "duet-good.conf";
/// The trial's entry, with one try.
pub const TRIAL_ENTRY: &str = "duet-trial+1.conf";

/// True for the trial entry under any of the names systemd-boot's counting
/// gives it.
pub fn is_trial_entry(file: &str) -> bool {
    file.starts_with("duet-trial") && file.ends_with(".conf")
}

/// A systemd-boot entry for `slot`.
pub fn sdboot_entry(slot: Slot, cmdline: &str) -> String {
    format!(
        "title duet appliance (slot {slot})\nlinux /{slot}/vmlinuz\ninitrd /{slot}/initrd.img\noptions {}\n",
        slot_cmdline(cmdline, slot)
    )
}

// --- syslinux's auxiliary data vector ---------------------------------------

/// The ADV: the last two sectors of `ldlinux.sys`, two identical copies.
pub const ADV_BYTES: usize = 1024;
const ADV_SIZE: usize = 512;
const ADV_MAGIC1: u32 = 0x5a2d_2fa5;
const ADV_MAGIC2: u32 = 0xa304_1767;
const ADV_MAGIC3: u32 = 0xdd28_bf64;
const ADV_BOOTONCE: u8 = 1;

fn word(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn adv_consistent(copy: &[u8]) -> bool {
    if word(copy, 0) != ADV_MAGIC1 || word(copy, ADV_SIZE - 4) != ADV_MAGIC3 {
        return false;
    }
    let sum = (4..ADV_SIZE - 4)
        .step_by(4)
        .fold(0u32, |s, i| s.wrapping_add(word(copy, i)));
    sum == ADV_MAGIC2
}

/// Tag-length-value items of a consistent copy's data area.
fn adv_items(copy: &[u8]) -> Vec<(u8, &[u8])> {
    let data = &copy[8..ADV_SIZE - 4];
    let mut items = Vec::new();
    let mut i = 0;
    while i + 2 <= data.len() && data[i] != 0 {
        let (tag, len) = (data[i], data[i + 1] as usize);
        let Some(value) = data.get(i + 2..i + 2 + len) else {
            break;
        };
        items.push((tag, value));
        i += 2 + len;
    }
    items
}

/// The boot-once command in an ADV (either copy may be the good one).
pub fn adv_boot_once(adv: &[u8]) -> Result<Option<String>, String> {
    if adv.len() != ADV_BYTES {
        return Err(format!("ADV is {} bytes, not {ADV_BYTES}", adv.len()));
    }
    let copy = [&adv[..ADV_SIZE], &adv[ADV_SIZE..]]
        .into_iter()
        .find(|c| adv_consistent(c))
        .ok_or("neither ADV copy is consistent")?;
    Ok(adv_items(copy)
        .into_iter()
        .find(|(t, _)| *t == ADV_BOOTONCE)
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned()))
}

/// `adv` with its boot-once command set (or cleared), other items kept; an
/// inconsistent ADV starts over empty, as syslinux itself does.
pub fn adv_set_boot_once(adv: &[u8], once: Option<&str>) -> Result<Vec<u8>, String> {
    if adv.len() != ADV_BYTES {
        return Err(format!("ADV is {} bytes, not {ADV_BYTES}", adv.len()));
    }
    let copy = [&adv[..ADV_SIZE], &adv[ADV_SIZE..]]
        .into_iter()
        .find(|c| adv_consistent(c));
    let mut items: Vec<(u8, Vec<u8>)> = copy
        .map(adv_items)
        .unwrap_or_default()
        .into_iter()
        .filter(|(t, _)| *t != ADV_BOOTONCE)
        .map(|(t, v)| (t, v.to_vec()))
        .collect();
    if let Some(cmd) = once {
        if cmd.is_empty() || cmd.len() > 255 {
            return Err("boot-once command must be 1..=255 bytes".into());
        }
        items.push((ADV_BOOTONCE, cmd.as_bytes().to_vec()));
    }
    let mut out = vec![0u8; ADV_SIZE];
    let mut at = 8;
    for (tag, value) in &items {
        // Room for the item and the terminating zero tag.
        if at + 2 + value.len() >= ADV_SIZE - 4 {
            return Err("ADV full".into());
        }
        out[at] = *tag;
        out[at + 1] = value.len() as u8;
        out[at + 2..at + 2 + value.len()].copy_from_slice(value);
        at += 2 + value.len();
    }
    Ok(adv_seal(out))
}

/// Magic numbers and checksum around one copy's data, then the second copy.
fn adv_seal(mut copy: Vec<u8>) -> Vec<u8> {
    copy[..4].copy_from_slice(&ADV_MAGIC1.to_le_bytes());
    copy[ADV_SIZE - 4..].copy_from_slice(&ADV_MAGIC3.to_le_bytes());
    let data_sum = (8..ADV_SIZE - 4)
        .step_by(4)
        .fold(0u32, |s, i| s.wrapping_add(word(&copy, i)));
    copy[4..8].copy_from_slice(&ADV_MAGIC2.wrapping_sub(data_sum).to_le_bytes());
    copy.extend_from_within(..ADV_SIZE);
    copy
}

// --- the upgrade archive -----------------------------------------------------

/// The files of an upgrade, in the order they are written.
pub const PARTS: [&str; 3] = ["vmlinuz", "initrd.img", "cmdline"];
/// The archive's manifest, in `sha256sum` format.
pub const MANIFEST: &str = "SHA256SUMS";
/// Largest archive accepted (the ESP has 64 MiB for two slots).
pub const MAX_ARCHIVE: usize = 28 << 20;

/// A verified upgrade: every part present once, with the digest the
/// manifest gives for it, and nothing else in the archive.
#[derive(Debug, PartialEq, Eq)]
pub struct Upgrade {
    pub parts: Vec<(&'static str, Vec<u8>)>,
}

impl Upgrade {
    pub fn part(&self, name: &str) -> &[u8] {
        self.parts
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(&[][..], |(_, b)| b)
    }
}

fn parse_manifest(text: &str) -> Result<Vec<(String, [u8; 32])>, String> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (hex, name) = line
            .split_once("  ")
            .or_else(|| line.split_once(" *"))
            .ok_or_else(|| format!("{MANIFEST}: malformed line {line:?}"))?;
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| {
                hex.get(i..i + 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
            })
            .collect::<Option<Vec<u8>>>();
        let digest: [u8; 32] = bytes
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| format!("{MANIFEST}: bad digest for {name}"))?;
        out.push((name.trim().to_string(), digest));
    }
    Ok(out)
}

/// Checks an upgrade archive (ustar with [`MANIFEST`] and [`PARTS`]) whole,
/// before anything is written.
pub fn verify_archive(bytes: &[u8]) -> Result<Upgrade, UpgradeError> {
    let bad = |m: String| UpgradeError::Archive(m);
    if bytes.len() > MAX_ARCHIVE {
        return Err(bad(format!(
            "{} bytes, more than {MAX_ARCHIVE}",
            bytes.len()
        )));
    }
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut ar = tar::Archive::new(bytes);
    let entries = ar
        .entries()
        .map_err(|e| bad(format!("not a tar archive: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(format!("not a tar archive: {e}")))?;
        if entry.header().entry_type().is_dir() {
            continue;
        }
        if !entry.header().entry_type().is_file() {
            return Err(bad("only regular files allowed".into()));
        }
        let name = entry
            .path()
            .map_err(|e| bad(format!("entry name: {e}")))?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        if name != MANIFEST && !PARTS.contains(&name.as_str()) {
            return Err(bad(format!("unexpected file {name:?}")));
        }
        if files.iter().any(|(n, _)| *n == name) {
            return Err(bad(format!("{name} twice")));
        }
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut data)
            .map_err(|e| bad(format!("{name}: {e}")))?;
        files.push((name, data));
    }
    let manifest = files
        .iter()
        .find(|(n, _)| n == MANIFEST)
        .ok_or_else(|| bad(format!("no {MANIFEST}")))?;
    let sums = parse_manifest(&String::from_utf8_lossy(&manifest.1)).map_err(bad)?;

    let mut parts = Vec::new();
    for part in PARTS {
        // Moved out, not copied: an image is some 14 MB.
        let at = files
            .iter()
            .position(|(n, _)| n == part)
            .ok_or_else(|| bad(format!("no {part}")))?;
        let (_, data) = files.swap_remove(at);
        let want = sums
            .iter()
            .find(|(n, _)| n == part)
            .ok_or_else(|| bad(format!("{MANIFEST} has no digest for {part}")))?;
        if Sha256::digest(&data).as_slice() != want.1 {
            return Err(bad(format!("{part}: SHA-256 does not match {MANIFEST}")));
        }
        if data.is_empty() {
            return Err(bad(format!("{part} is empty")));
        }
        parts.push((part, data));
    }
    let cmdline = String::from_utf8_lossy(&parts[2].1).into_owned();
    if cmdline.trim_end().contains('\n') {
        return Err(bad("cmdline is more than one line".into()));
    }
    Ok(Upgrade { parts })
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Slot = Slot::A;
    const B: Slot = Slot::B;

    fn st(confirmed: Slot, trial: Option<(Slot, bool)>) -> BootState {
        BootState {
            confirmed,
            trial: trial.map(|(slot, reached_init)| Trial { slot, reached_init }),
        }
    }

    #[test]
    fn state_file_round_trips_and_rejects_nonsense() {
        for s in [st(A, None), st(B, Some((A, false))), st(A, Some((B, true)))] {
            assert_eq!(BootState::parse(&s.emit()), Ok(s));
        }
        for bad in [
            "",
            "confirmed=c\n",
            "confirmed=a\ntrial=a\n",
            "confirmed=a\nfoo=1\n",
            "confirmed a\n",
        ] {
            assert!(BootState::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn what_each_boot_is() {
        let cases = [
            // (state, booted slot, kind, state written first)
            ("normal", st(A, None), A, BootKind::Normal, None),
            ("manual pick", st(A, None), B, BootKind::Manual, None),
            (
                "trial boots",
                st(A, Some((B, false))),
                B,
                BootKind::Trial { previous: A },
                Some(st(A, Some((B, true)))),
            ),
            (
                "trial never reached init",
                st(A, Some((B, false))),
                A,
                BootKind::RolledBack {
                    from: B,
                    reached_init: false,
                },
                Some(st(A, None)),
            ),
            (
                "trial reached init, not confirmed",
                st(B, Some((A, true))),
                B,
                BootKind::RolledBack {
                    from: A,
                    reached_init: true,
                },
                Some(st(B, None)),
            ),
        ];
        for (what, state, booted, kind, write) in cases {
            assert_eq!(at_boot(state, booted), (kind, write), "{what}");
        }
    }

    #[test]
    fn trial_confirms_on_peer_and_gives_up_at_the_limit() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let limit = TRIAL_LIMIT.as_secs();
        let cases = [
            (0, false, TrialStep::Wait),
            (limit - 1, false, TrialStep::Wait),
            (limit, false, TrialStep::GiveUp),
            (3, true, TrialStep::Confirm),
            // Heard at the last moment still counts.
            (limit + 5, true, TrialStep::Confirm),
        ];
        for (secs, heard, want) in cases {
            assert_eq!(
                trial_step(t0, at(secs), heard),
                want,
                "{secs} s, heard {heard}"
            );
        }
    }

    #[test]
    fn upgrades_go_to_the_other_slot_and_never_during_a_trial() {
        assert_eq!(
            plan_upgrade(st(A, None), A),
            Ok((B, st(A, Some((B, false)))))
        );
        assert_eq!(
            plan_upgrade(st(B, None), B),
            Ok((A, st(B, Some((A, false)))))
        );
        // A stale trial (rolled back, not yet cleared) is replaced.
        assert_eq!(
            plan_upgrade(st(A, Some((B, true))), A),
            Ok((B, st(A, Some((B, false)))))
        );
        assert_eq!(
            plan_upgrade(st(A, Some((B, true))), B),
            Err(UpgradeError::OnTrial(B))
        );
    }

    #[test]
    fn boot_loader_files() {
        assert_eq!(
            slot_cmdline("console=ttyS0 duet.slot=a  quiet\n", B),
            "console=ttyS0 quiet duet.slot=b"
        );
        let cfg = syslinux_cfg(B, [(A, Some("quiet")), (B, Some("panic=-1"))]);
        assert!(cfg.contains("DEFAULT b\n"));
        assert!(cfg.contains(
            "LABEL a\n  LINUX /a/vmlinuz\n  INITRD /a/initrd.img\n  APPEND quiet duet.slot=a\n"
        ));
        assert!(cfg.contains("APPEND panic=-1 duet.slot=b\n"));
        // An empty slot gets no label.
        let cfg = syslinux_cfg(A, [(A, Some("quiet")), (B, None)]);
        assert!(!cfg.contains("LABEL b"));
        assert_eq!(
            sdboot_entry(A, "quiet"),
            "title duet appliance (slot a)\nlinux /a/vmlinuz\ninitrd /a/initrd.img\noptions quiet duet.slot=a\n"
        );
        for name in [TRIAL_ENTRY, "duet-trial+0-1.conf"] {
            assert!(is_trial_entry(name));
        }
        assert!(!is_trial_entry(GOOD_ENTRY));
    }

    /// The blank ADV of the image's ldlinux.sys (syslinux 6.04), as its
    /// installer wrote it: magic, checksum, 500 zero bytes, tail.
    fn blank_adv() -> Vec<u8> {
        let mut copy = vec![0u8; 512];
        copy[..8].copy_from_slice(&[0xa5, 0x2f, 0x2d, 0x5a, 0x67, 0x17, 0x04, 0xa3]);
        copy[508..].copy_from_slice(&[0x64, 0xbf, 0x28, 0xdd]);
        [copy.clone(), copy].concat()
    }

    #[test]
    fn adv_boot_once_set_read_and_cleared() {
        let blank = blank_adv();
        assert_eq!(adv_boot_once(&blank), Ok(None));
        let armed = adv_set_boot_once(&blank, Some("b")).unwrap();
        assert_eq!(armed.len(), ADV_BYTES);
        assert_eq!(&armed[8..11], &[1, 1, b'b']);
        assert!(adv_consistent(&armed[..512]) && armed[..512] == armed[512..]);
        assert_eq!(adv_boot_once(&armed), Ok(Some("b".into())));
        // Clearing gives back the installer's blank ADV, byte for byte.
        assert_eq!(adv_set_boot_once(&armed, None).unwrap(), blank);
        // A damaged first copy: the second is read.
        let mut damaged = armed.clone();
        damaged[20] ^= 0xff;
        assert_eq!(adv_boot_once(&damaged), Ok(Some("b".into())));
        // Both damaged: not readable, and setting starts over.
        let mut both = damaged.clone();
        both[532] ^= 0xff;
        assert!(adv_boot_once(&both).is_err());
        assert_eq!(adv_set_boot_once(&both, None).unwrap(), blank);
        // Other items (a menu-save label) survive arming and clearing.
        let mut copy = vec![0u8; 512];
        copy[8..12].copy_from_slice(&[2, 2, b'x', b'y']);
        let other = adv_seal(copy);
        let armed = adv_set_boot_once(&other, Some("a")).unwrap();
        assert_eq!(&armed[8..15], &[2, 2, b'x', b'y', 1, 1, b'a']);
        assert_eq!(adv_set_boot_once(&armed, None).unwrap(), other);
        // Bad input is an error, not a panic.
        assert!(adv_set_boot_once(&blank[..100], None).is_err());
        assert!(adv_set_boot_once(&blank, Some(&"x".repeat(256))).is_err());
        assert!(adv_set_boot_once(&blank, Some("")).is_err());
    }

    fn archive(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn sums(files: &[(&str, &[u8])]) -> String {
        files
            .iter()
            .map(|(n, d)| {
                let hex: String = Sha256::digest(d)
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                format!("{hex}  {n}\n")
            })
            .collect()
    }

    #[test]
    fn archives_are_verified_whole() {
        let parts: [(&str, &[u8]); 3] = [
            ("vmlinuz", b"kernel"),
            ("initrd.img", b"initrd"),
            ("cmdline", b"console=ttyS0 quiet\n"),
        ];
        let good_sums = sums(&parts);
        let with = |extra: &[(&str, &[u8])], manifest: &str| {
            let mut all: Vec<(&str, &[u8])> = vec![(MANIFEST, manifest.as_bytes())];
            all.extend_from_slice(extra);
            archive(&all)
        };
        let up = verify_archive(&with(&parts, &good_sums)).unwrap();
        assert_eq!(up.part("vmlinuz"), b"kernel");
        assert_eq!(up.part("cmdline"), b"console=ttyS0 quiet\n");
        // `./name` as GNU tar writes it with -C dir .
        let dotted: Vec<(String, &[u8])> =
            parts.iter().map(|(n, d)| (format!("./{n}"), *d)).collect();
        let dotted: Vec<(&str, &[u8])> = dotted.iter().map(|(n, d)| (n.as_str(), *d)).collect();
        assert!(verify_archive(&with(&dotted, &good_sums)).is_ok());

        let tampered: [(&str, &[u8]); 3] = [parts[0], ("initrd.img", b"initrX"), parts[2]];
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("not tar", b"hello world".to_vec()),
            ("empty", Vec::new()),
            ("no manifest", archive(&parts)),
            ("tampered part", with(&tampered, &good_sums)),
            ("missing part", with(&parts[..2], &good_sums)),
            ("unlisted part", with(&parts, &sums(&parts[..2]))),
            (
                "extra file",
                with(&[parts[0], parts[1], parts[2], ("evil", b"x")], &good_sums),
            ),
            (
                "twice",
                with(&[parts[0], parts[0], parts[1], parts[2]], &good_sums),
            ),
            ("bad manifest", with(&parts, "zz  vmlinuz\n")),
            ("oversized", vec![0u8; MAX_ARCHIVE + 1]),
        ];
        // Flipped bytes anywhere: refused (or, in padding, still whole), never a panic.
        let good = with(&parts, &good_sums);
        let mut rng = fastrand::Rng::with_seed(18);
        for _ in 0..500 {
            let mut b = good.clone();
            let i = rng.usize(0..b.len());
            b[i] ^= rng.u8(1..);
            if let Ok(up) = verify_archive(&b) {
                assert_eq!(up, verify_archive(&good).unwrap());
            }
        }
        for (what, bytes) in cases {
            assert!(
                matches!(verify_archive(&bytes), Err(UpgradeError::Archive(_))),
                "{what}: {:?}",
                verify_archive(&bytes)
            );
        }
    }
}
