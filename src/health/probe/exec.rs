//! `kind = "exec"`: an operator's script decides; exit status 0 means up.
use std::net::SocketAddr;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::health::Failure;

/// How often a running exec check is polled for exit, at most.
const EXEC_POLL_MAX: Duration = Duration::from_millis(20);

pub(super) fn run(
    command: &str,
    target: SocketAddr,
    name: &str,
    deadline: Instant,
) -> Result<(), Failure> {
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .env("DUET_BACKEND_ADDR", target.ip().to_string())
        .env("DUET_BACKEND_PORT", target.port().to_string())
        .env("DUET_BACKEND_NAME", name)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own process group, so a timeout kills the script's children
        // too and none outlives the check.
        .process_group(0)
        .spawn()
        .map_err(|e| Failure::Io(format!("cannot run /bin/sh: {e}")))?;
    let mut pause = Duration::from_millis(1);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                return match (status.code(), status.signal()) {
                    (Some(0), _) => Ok(()),
                    (Some(code), _) => Err(Failure::Exit(code)),
                    (None, Some(sig)) => Err(Failure::Exit(128 + sig)),
                    (None, None) => Err(Failure::Io("check ended without a status".into())),
                };
            }
            Ok(None) => {}
            Err(e) => {
                kill_group(&mut child);
                return Err(Failure::Io(e.to_string()));
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            kill_group(&mut child);
            return Err(Failure::Timeout);
        }
        std::thread::sleep(pause.min(left));
        pause = (pause * 2).min(EXEC_POLL_MAX);
    }
}

fn kill_group(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) with a negative pid signals the process group we
        // created for this child; it touches no memory.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
    let _ = child.kill();
    // Reap it so no zombie is left; SIGKILL makes this prompt.
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::super::test_support::T;
    use crate::health::probe::probe;
    use crate::health::{CheckKind, Failure};
    use std::net::SocketAddr;
    use std::thread;
    use std::time::{Duration, Instant};

    const SLACK: Duration = Duration::from_millis(300);

    fn exec_kind(command: &str) -> CheckKind {
        CheckKind::Exec {
            command: command.into(),
        }
    }

    #[test]
    fn exec_true_false_and_exit_code() {
        let addr: SocketAddr = "198.18.0.20:8080".parse().unwrap();
        assert!(probe(&exec_kind("true"), addr, "web1", T).is_ok());
        assert_eq!(
            probe(&exec_kind("false"), addr, "web1", T),
            Err(Failure::Exit(1))
        );
        assert_eq!(
            probe(&exec_kind("exit 7"), addr, "web1", T),
            Err(Failure::Exit(7))
        );
    }

    #[test]
    fn exec_sees_the_backend_in_its_environment() {
        let addr: SocketAddr = "198.18.0.20:8080".parse().unwrap();
        let cmd = concat!(
            r#"[ "$DUET_BACKEND_ADDR" = 198.18.0.20 ] && "#,
            r#"[ "$DUET_BACKEND_PORT" = 8080 ] && [ "$DUET_BACKEND_NAME" = web1 ]"#
        );
        assert!(probe(&exec_kind(cmd), addr, "web1", T).is_ok());
        assert_eq!(
            probe(&exec_kind(cmd), addr, "web2", T),
            Err(Failure::Exit(1))
        );
    }

    #[test]
    fn exec_slow_command_is_killed_at_the_timeout() {
        let addr: SocketAddr = "198.18.0.20:80".parse().unwrap();
        let timeout = Duration::from_millis(200);
        let dir = std::env::temp_dir().join(format!("duet-exec-{}", std::process::id()));
        let marker = dir.with_extension("marker");
        let _ = std::fs::remove_file(&marker);
        // The child `sleep` must die with the shell: if it survived, it would
        // create the marker after one second.
        let cmd = format!("sleep 1; touch {}; sleep 5", marker.display());
        let start = Instant::now();
        assert_eq!(
            probe(&exec_kind(&cmd), addr, "web1", timeout),
            Err(Failure::Timeout)
        );
        let took = start.elapsed();
        assert!(took >= timeout && took < timeout + SLACK, "took {took:?}");
        thread::sleep(Duration::from_millis(1200));
        assert!(
            !marker.exists(),
            "the check's children outlived the timeout"
        );
    }
}
