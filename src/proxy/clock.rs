//! Coarse deadlines for the proxy's requests: header, idle, connect and
//! response timeouts, checked by one task every [`TICK`].
//!
//! An async-io `Timer` per wait would cost every request several reactor
//! wake-ups (each timer inserted notifies the reactor, an eventfd write
//! and a thread woken from `epoll_wait`). These timeouts are seconds long;
//! firing up to one tick late is fine, and a request pays a mutex push and
//! no system call.
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// How often deadlines are checked; a timeout fires at most this late.
pub const TICK: Duration = Duration::from_millis(50);

struct Alarm {
    at: Instant,
    fired: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

/// The deadlines of one proxy; [`Clock::run`] fires them.
#[derive(Default)]
pub struct Clock {
    alarms: Mutex<Vec<Weak<Alarm>>>,
}

impl Clock {
    /// Resolves once `after` has passed (up to a [`TICK`] later).
    pub fn sleep(&self, after: Duration) -> Sleep {
        let alarm = Arc::new(Alarm {
            at: Instant::now() + after,
            fired: AtomicBool::new(false),
            waker: Mutex::new(None),
        });
        lock(&self.alarms).push(Arc::downgrade(&alarm));
        Sleep { alarm }
    }

    /// Fires what is due at `now` and forgets alarms nobody waits for.
    fn fire(&self, now: Instant) {
        let mut due = Vec::new();
        lock(&self.alarms).retain(|w| match w.upgrade() {
            Some(a) if a.at <= now => {
                due.push(a);
                false
            }
            Some(_) => true,
            None => false,
        });
        // Woken outside the list's lock: a woken task may sleep again.
        for a in due {
            a.fired.store(true, Ordering::Release);
            if let Some(w) = lock(&a.waker).take() {
                w.wake();
            }
        }
    }

    /// Fires deadlines every [`TICK`], forever (the executor's end ends it).
    pub async fn run(self: Arc<Self>) {
        loop {
            smol::Timer::after(TICK).await;
            self.fire(Instant::now());
        }
    }
}

/// A wait on a [`Clock`]; dropping it cancels it.
pub struct Sleep {
    alarm: Arc<Alarm>,
}

impl Future for Sleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.alarm.fired.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        {
            let mut w = lock(&self.alarm.waker);
            match w.as_ref() {
                Some(old) if old.will_wake(cx.waker()) => {}
                _ => *w = Some(cx.waker().clone()),
            }
        }
        // Fired between the first check and storing the waker.
        if self.alarm.fired.load(Ordering::Acquire) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(s: &mut Sleep) -> bool {
        smol::future::block_on(smol::future::poll_once(s)).is_some()
    }

    #[test]
    fn fires_when_due_and_not_before() {
        let c = Clock::default();
        let t0 = Instant::now();
        let mut short = c.sleep(Duration::from_millis(100));
        let mut long = c.sleep(Duration::from_secs(60));
        assert!(!ready(&mut short));
        c.fire(t0);
        assert!(!ready(&mut short), "not due yet");
        c.fire(t0 + Duration::from_millis(200));
        assert!(ready(&mut short));
        assert!(!ready(&mut long));
        assert_eq!(lock(&c.alarms).len(), 1, "the fired one is forgotten");
    }

    #[test]
    fn dropped_sleeps_are_forgotten_at_the_next_check() {
        let c = Clock::default();
        for _ in 0..1000 {
            drop(c.sleep(Duration::from_secs(60)));
        }
        let kept = c.sleep(Duration::from_secs(60));
        c.fire(Instant::now());
        assert_eq!(lock(&c.alarms).len(), 1);
        drop(kept);
    }

    #[test]
    fn a_running_clock_wakes_a_waiting_task() {
        let c = Arc::new(Clock::default());
        let ex = smol::LocalExecutor::new();
        ex.spawn(c.clone().run()).detach();
        let t0 = Instant::now();
        smol::future::block_on(ex.run(c.sleep(Duration::from_millis(30))));
        let took = t0.elapsed();
        assert!(took >= Duration::from_millis(30), "{took:?}");
    }
}
