//! How the other threads reach the control loop: each change it must act
//! on arrives as an [`Input`] on one channel, so the loop sleeps until an
//! input, a heartbeat datagram, a stop/reload signal or its machines' next
//! deadline, and never polls shared flags on a timer.
use crate::config::Config;
use std::sync::Arc;

/// What changed elsewhere.
pub enum Input {
    /// A checked configuration to take over (SIGHUP or the admin API).
    Config(Arc<Config>),
    /// The admin API asked for a planned failover.
    Failover,
    /// Health verdicts or drains changed: the snapshot is rebuilt and the
    /// drain set re-sent.
    Changed,
    /// The ping nodes became reachable (true) or unreachable.
    Ping(bool),
}

/// The sending end; cheap to clone into every producer.
#[derive(Clone)]
pub struct Notify(smol::channel::Sender<Input>);

impl Notify {
    /// Never blocks; once the loop has ended nobody listens, and that is
    /// not an error for the sender.
    pub fn send(&self, input: Input) {
        let _ = self.0.try_send(input);
    }
}

pub fn channel() -> (Notify, smol::channel::Receiver<Input>) {
    let (tx, rx) = smol::channel::unbounded();
    (Notify(tx), rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(i: &Input) -> String {
        match i {
            Input::Config(_) => "config".into(),
            Input::Failover => "failover".into(),
            Input::Changed => "changed".into(),
            Input::Ping(up) => format!("ping {up}"),
        }
    }

    #[test]
    fn inputs_arrive_in_order_from_every_sender() {
        let (notify, rx) = channel();
        let other = notify.clone();
        notify.send(Input::Changed);
        other.send(Input::Ping(false));
        notify.send(Input::Failover);
        let got: Vec<String> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|i| name(&i))
            .collect();
        assert_eq!(got, ["changed", "ping false", "failover"]);
    }

    #[test]
    fn sending_after_the_loop_ended_is_harmless() {
        let (notify, rx) = channel();
        drop(rx);
        assert!(notify.0.is_closed());
        // Neither an error to handle nor a panic.
        notify.send(Input::Changed);
        notify.clone().send(Input::Ping(true));
        assert!(notify.0.is_closed());
    }
}
