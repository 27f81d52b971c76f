//! /proc/sys knobs, remembered so they can be put back on exit.
use std::io;
use std::path::PathBuf;

fn path(key: &str) -> PathBuf {
    PathBuf::from("/proc/sys").join(key.replace('.', "/"))
}

pub fn read(key: &str) -> io::Result<String> {
    Ok(std::fs::read_to_string(path(key))?.trim().to_string())
}

pub fn write(key: &str, value: &str) -> io::Result<()> {
    std::fs::write(path(key), value)
}

/// Sysctls changed by this process, with their previous values.
#[derive(Default)]
pub struct Saved {
    entries: Vec<(String, String)>,
}

impl Saved {
    /// Starts from changes an earlier run made and did not undo: their
    /// recorded values are the ones to put back, not what is there now.
    pub fn from_entries(entries: Vec<(String, String)>) -> Saved {
        Saved { entries }
    }

    pub fn entries(&self) -> &[(String, String)] {
        &self.entries
    }

    /// Sets `key` to `value`, remembering the old value the first time.
    pub fn set(&mut self, key: &str, value: &str) -> io::Result<()> {
        let old = read(key)?;
        if old != value {
            write(key, value)?;
            if !self.entries.iter().any(|(k, _)| k == key) {
                self.entries.push((key.to_string(), old));
            }
        }
        Ok(())
    }

    /// Puts every changed key back, newest first.
    pub fn restore(&mut self) {
        for (k, v) in self.entries.drain(..).rev() {
            if let Err(e) = write(&k, &v) {
                log::warn!("restoring sysctl {k}={v}: {e}");
            }
        }
    }
}

/// The real-server ARP settings of DESIGN.md section 2 for `iface`.
pub const ARP_KEYS: [(&str, &str); 2] = [("arp_ignore", "1"), ("arp_announce", "2")];

pub fn arp_settings(saved: &mut Saved, iface: &str) -> io::Result<()> {
    for dev in ["all", iface] {
        for (k, v) in ARP_KEYS {
            saved.set(&format!("net.ipv4.conf.{dev}.{k}"), v)?;
        }
    }
    Ok(())
}
