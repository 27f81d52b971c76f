//! /proc/sys knobs, remembered so they can be put back on exit.
use std::io;
use std::path::PathBuf;

/// Sysctls changed by this process, with their previous values.
pub struct Saved {
    /// Where the knobs are: /proc/sys, or a directory of files in tests.
    root: PathBuf,
    entries: Vec<(String, String)>,
}

impl Default for Saved {
    fn default() -> Saved {
        Saved::from_entries(Vec::new())
    }
}

impl Saved {
    /// Starts from changes an earlier run made and did not undo: their
    /// recorded values are the ones to put back, not what is there now.
    pub fn from_entries(entries: Vec<(String, String)>) -> Saved {
        Saved {
            root: PathBuf::from("/proc/sys"),
            entries,
        }
    }

    #[cfg(test)]
    fn under(root: &std::path::Path, entries: Vec<(String, String)>) -> Saved {
        Saved {
            root: root.to_path_buf(),
            entries,
        }
    }

    pub fn entries(&self) -> &[(String, String)] {
        &self.entries
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key_path(key))
    }

    fn read(&self, key: &str) -> io::Result<String> {
        Ok(std::fs::read_to_string(self.path(key))?.trim().to_string())
    }

    fn write(&self, key: &str, value: &str) -> io::Result<()> {
        std::fs::write(self.path(key), value)
    }

    /// Sets `key` to `value`, remembering the old value the first time.
    pub fn set(&mut self, key: &str, value: &str) -> io::Result<()> {
        let old = self.read(key)?;
        if old != value {
            self.write(key, value)?;
            if !self.entries.iter().any(|(k, _)| k == key) {
                self.entries.push((key.to_string(), old));
            }
        }
        Ok(())
    }

    /// Puts every changed key back, newest first.
    pub fn restore(&mut self) {
        for (k, v) in std::mem::take(&mut self.entries).into_iter().rev() {
            if let Err(e) = self.write(&k, &v) {
                log::warn!("restoring sysctl {k}={v}: {e}");
            }
        }
    }
}

/// Keys with a `/` are paths already (a device name keeps its dots);
/// dotted keys are what earlier versions recorded.
fn key_path(key: &str) -> PathBuf {
    if key.contains('/') {
        PathBuf::from(key)
    } else {
        PathBuf::from(key.replace('.', "/"))
    }
}

/// `net/ipv4/conf/DEV/KNOB`, in sysctl(8)'s slash form: a VLAN device
/// such as `eth0.100` would split in the dotted one.
pub fn conf_key(dev: &str, knob: &str) -> String {
    format!("net/ipv4/conf/{dev}/{knob}")
}

/// The real-server ARP settings of DESIGN.md section 2 for `iface`.
pub const ARP_KEYS: [(&str, &str); 2] = [("arp_ignore", "1"), ("arp_announce", "2")];

pub fn arp_settings(saved: &mut Saved, iface: &str) -> io::Result<()> {
    for dev in ["all", iface] {
        for (k, v) in ARP_KEYS {
            saved.set(&conf_key(dev, k), v)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::fixture::Dir;
    use super::*;

    const IGNORE: &str = "net.ipv4.conf.all.arp_ignore";
    const ANNOUNCE: &str = "net.ipv4.conf.all.arp_announce";

    /// A /proc/sys of files, each key at its value.
    fn knobs(keys: &[(&str, &str)]) -> Dir {
        let d = Dir::new("");
        for (k, v) in keys {
            let p = d.path().join(key_path(k));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, format!("{v}\n")).unwrap();
        }
        d
    }

    fn value(d: &Dir, key: &str) -> String {
        let p = d.path().join(key_path(key));
        std::fs::read_to_string(p).unwrap().trim().to_string()
    }

    fn entries(s: &Saved) -> Vec<(&str, &str)> {
        s.entries()
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    #[test]
    fn the_first_old_value_is_the_one_kept() {
        let d = knobs(&[(IGNORE, "0"), (ANNOUNCE, "2")]);
        let mut s = Saved::under(d.path(), Vec::new());
        s.set(IGNORE, "1").unwrap();
        s.set(IGNORE, "2").unwrap();
        // Already as wanted (the file's newline aside): nothing to undo.
        s.set(ANNOUNCE, "2").unwrap();
        assert_eq!(
            (value(&d, IGNORE), value(&d, ANNOUNCE)),
            ("2".into(), "2".into())
        );
        assert_eq!(entries(&s), [(IGNORE, "0")]);
        s.restore();
        assert_eq!(value(&d, IGNORE), "0");
        assert!(s.entries().is_empty());
        // A second restore has nothing left to put back.
        std::fs::write(d.path().join(key_path(IGNORE)), "1").unwrap();
        s.restore();
        assert_eq!(value(&d, IGNORE), "1");
    }

    #[test]
    fn an_earlier_runs_values_are_put_back() {
        // The earlier run set 1 over 0 and died: 1 is there now.
        let d = knobs(&[(IGNORE, "1")]);
        let mut s = Saved::under(d.path(), vec![(IGNORE.into(), "0".into())]);
        s.set(IGNORE, "1").unwrap();
        s.set(IGNORE, "3").unwrap();
        assert_eq!(entries(&s), [(IGNORE, "0")]);
        s.restore();
        assert_eq!(value(&d, IGNORE), "0");
    }

    #[test]
    fn a_missing_knob_is_an_error_and_not_remembered() {
        let d = knobs(&[(IGNORE, "0")]);
        let mut s = Saved::under(d.path(), Vec::new());
        let e = s.set("net.ipv4.conf.nosuch.arp_ignore", "1").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(s.entries().is_empty());
    }

    #[test]
    fn restore_goes_on_past_a_knob_that_is_gone() {
        let d = knobs(&[(IGNORE, "1"), (ANNOUNCE, "2")]);
        let mut s = Saved::under(
            d.path(),
            vec![
                (IGNORE.into(), "0".into()),
                ("net.ipv4.conf.gone0.arp_ignore".into(), "0".into()),
                (ANNOUNCE.into(), "0".into()),
            ],
        );
        s.restore();
        assert_eq!(
            (value(&d, IGNORE), value(&d, ANNOUNCE)),
            ("0".into(), "0".into())
        );
        assert!(s.entries().is_empty());
    }

    #[test]
    fn arp_settings_cover_all_and_the_interface() {
        // A VLAN device's name has a dot: its knobs are still its own.
        let (all_i, all_a) = (
            conf_key("all", "arp_ignore"),
            conf_key("all", "arp_announce"),
        );
        let (dev_i, dev_a) = (
            conf_key("eth0.100", "arp_ignore"),
            conf_key("eth0.100", "arp_announce"),
        );
        let keys = [
            (all_i.as_str(), "0"),
            (all_a.as_str(), "0"),
            (dev_i.as_str(), "1"),
            (dev_a.as_str(), "0"),
        ];
        let d = knobs(&keys);
        let mut s = Saved::under(d.path(), Vec::new());
        arp_settings(&mut s, "eth0.100").unwrap();
        assert!(d.path().join("net/ipv4/conf/eth0.100/arp_ignore").is_file());
        let want = [("1", true), ("2", true), ("1", false), ("2", true)];
        let mut changed = Vec::new();
        for ((k, old), (v, was_changed)) in keys.iter().zip(want) {
            assert_eq!(value(&d, k), v, "{k}");
            if was_changed {
                changed.push((*k, *old));
            }
        }
        assert_eq!(entries(&s), changed);
        // Dotted keys an earlier version stored are still put back.
        assert_eq!(key_path(IGNORE), key_path(&all_i));
    }
}
