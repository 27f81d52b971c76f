//! Why the data plane dropped a frame: one type for every reason, whether
//! the parser, the engine or the plane itself found it, each with the
//! stable label status and metrics show.
use crate::forward::ForwardDrop;
use crate::wire::frame::DropReason;
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DpDrop {
    /// The frame itself: short, malformed, tagged, a fragment.
    Frame(DropReason),
    /// The engine's verdict on a well-formed frame.
    Forward(ForwardDrop),
    /// To the VIP while this node does not direct.
    NotDirector,
    /// A ping of the VIP over the echo rate.
    EchoRateLimit,
    /// The kernel found the receive ring full (its own count).
    RxRingFull,
    /// A frame the ring marked as queued was not in the socket's queue.
    QueueMissing,
    /// The TUN device refused a frame for this node's own stack.
    LocalDelivery,
    /// The eBPF program could not redirect a frame to the backend.
    Redirect,
}

impl DpDrop {
    pub fn as_str(self) -> &'static str {
        match self {
            DpDrop::Frame(r) => r.as_str(),
            DpDrop::Forward(f) => f.as_str(),
            DpDrop::NotDirector => "not_director",
            DpDrop::EchoRateLimit => "echo_rate_limit",
            DpDrop::RxRingFull => "rx_ring_full",
            DpDrop::QueueMissing => "queue_missing",
            DpDrop::LocalDelivery => "local_delivery",
            DpDrop::Redirect => "redirect",
        }
    }
}

impl fmt::Display for DpDrop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Labels are what operators' dashboards match on: distinct, and the
    /// parser's and engine's own.
    #[test]
    fn labels_are_distinct_and_stable() {
        let own = [
            DpDrop::NotDirector,
            DpDrop::EchoRateLimit,
            DpDrop::RxRingFull,
            DpDrop::QueueMissing,
            DpDrop::LocalDelivery,
            DpDrop::Redirect,
        ];
        let all: Vec<DpDrop> = DropReason::ALL
            .iter()
            .map(|r| DpDrop::Frame(*r))
            .chain(ForwardDrop::ALL.iter().map(|f| DpDrop::Forward(*f)))
            .chain(own)
            .collect();
        let mut labels: Vec<&str> = all.iter().map(|d| d.as_str()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), all.len(), "{labels:?}");
        assert_eq!(DpDrop::Frame(DropReason::Vlan).to_string(), "vlan");
        assert_eq!(
            DpDrop::Forward(ForwardDrop::NoBackend).as_str(),
            "no_backend"
        );
        assert_eq!(DpDrop::RxRingFull.as_str(), "rx_ring_full");
    }
}
