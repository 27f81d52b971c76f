//! The module list of the image and loading it with `finit_module`.

use std::ffi::CString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rustix::io::Errno;

use super::fnmatch::glob_match;
use super::{file_err, InitError};

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
    match rustix::system::finit_module(&f, &params, 0) {
        Ok(()) | Err(Errno::EXIST) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Loads every module of the list. A module that fails is reported and
/// skipped: a missing `ip_vs` must not keep the appliance down, and a
/// missing NIC driver shows up as a clear interface error right after.
pub(super) fn load_modules(list: &Path) -> Result<(usize, usize), InitError> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
