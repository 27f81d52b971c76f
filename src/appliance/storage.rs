//! The data partition: found by its superblock label, mounted on /data,
//! holding config, key and state.

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::mount::MountFlags;

use super::cmdline::BootParams;
use super::mounts::mount;
use super::{file_err, InitError, BUILTIN_CONFIG, BUILTIN_KEY, DATA_DIR, STATE_DIR};

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

pub(super) fn find_labelled(label: &str) -> Option<(PathBuf, FsKind)> {
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
pub(super) struct Storage {
    pub(super) config: PathBuf,
    pub(super) persistent: bool,
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

pub(super) fn setup_storage(p: &BootParams) -> Result<Storage, InitError> {
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
    if let Err(e) = mount(&dev_s, DATA_DIR, kind.name(), MountFlags::NOATIME, "") {
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
        MountFlags::BIND,
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
