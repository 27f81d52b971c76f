//! The console of a box that could not come up.

use std::io::{self, Write};
use std::path::Path;
use std::time::Duration;

use rustix::process::WaitOptions;

use super::DEFAULT_DATA_LABEL;

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
        while let Ok(Some(_)) = rustix::process::waitpid(None, WaitOptions::NOHANG) {}
    }
}
