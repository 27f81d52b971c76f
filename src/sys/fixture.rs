//! The two-node configuration the control plane's unit tests share.
use crate::config::Config;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const CONFIG: &str = r#"
[cluster]
vip = "198.18.0.100"
interface = "lo"
vrid = 1
key_file = "key"

[[node]]
name = "web1"
address = "198.18.0.1"
priority = 150
[[node]]
name = "web2"
address = "198.18.0.2"
priority = 100

[[service]]
port = 80
serve_local = true
"#;

/// A fresh directory with `duet.toml` (`text`) and its key file, removed
/// on drop.
pub struct Dir(pub PathBuf);

impl Dir {
    pub fn new(text: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("duet-sys-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("key"), "0123456789abcdef0123\n").unwrap();
        std::fs::write(d.join("duet.toml"), text).unwrap();
        Dir(d)
    }

    pub fn config_path(&self) -> PathBuf {
        self.0.join("duet.toml")
    }

    pub fn config(&self) -> Arc<Config> {
        Arc::new(Config::load(&self.config_path()).unwrap_or_else(|e| panic!("{e}")))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
