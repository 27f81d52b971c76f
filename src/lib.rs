//! duet: two servers, one virtual IP.
//!
//! Layout follows DESIGN.md section 5: `wire` turns bytes into types,
//! `election`, `health`, `forward` and `sync` are sans-IO machines driven by
//! an explicit clock, `sys` owns every syscall and the event loops.
pub mod appliance;
pub mod config;
pub mod dataplane;
pub mod election;
pub mod forward;
pub mod handover;
pub mod health;
pub mod http_head;
pub mod import;
pub mod log_limit;
pub mod pair;
pub mod proxy;
pub mod status;
pub mod store;
pub mod sync;
pub mod sys;
pub mod wire;
