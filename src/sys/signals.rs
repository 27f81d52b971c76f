//! SIGTERM/SIGINT and SIGHUP become flags the control loop polls each tick:
//! the handlers do nothing but store them (async-signal-safe).
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// Stop signals received: the first starts a graceful leave, a second
/// one cuts its drain short.
static TERMINATE: AtomicU32 = AtomicU32::new(0);
static RELOAD: AtomicBool = AtomicBool::new(false);

extern "C" fn on_terminate(_: libc::c_int) {
    TERMINATE.fetch_add(1, Ordering::SeqCst);
}

extern "C" fn on_reload(_: libc::c_int) {
    RELOAD.store(true, Ordering::SeqCst);
}

pub fn install() {
    // SAFETY: the handlers only store to an atomic.
    unsafe {
        libc::signal(
            libc::SIGTERM,
            on_terminate as *const () as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGINT,
            on_terminate as *const () as libc::sighandler_t,
        );
        libc::signal(libc::SIGHUP, on_reload as *const () as libc::sighandler_t);
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

/// How many stop signals arrived so far.
pub fn stop_requests() -> u32 {
    TERMINATE.load(Ordering::SeqCst)
}

/// Whether a reload was asked for since the last call.
pub fn take_reload() -> bool {
    RELOAD.swap(false, Ordering::SeqCst)
}
