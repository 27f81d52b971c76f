//! Status and admin: the report model, its renderings (HTML page, JSON,
//! Prometheus text), the HTTP server that serves them with bounded resources,
//! and the small HTTP client the CLI uses to talk to a running daemon.

pub mod chart;
pub mod client;
mod frontdoor;
pub mod history;
pub mod model;
pub mod render;
pub(crate) mod response;
pub mod server;

pub use model::{
    BackendStatus, DataplaneStats, EventRecord, HeartbeatStats, PeerStatus, StatusReport, SyncStats,
};
pub use server::{Admin, Reply, ServerConfig, Site, StatusServer};
