//! Status and admin: the report model, its three views (HTML page, JSON,
//! Prometheus text; `render`), the HTTP server that serves them with bounded resources,
//! and the small HTTP client the CLI uses to talk to a running daemon.

pub mod chart;
pub mod client;
#[cfg(test)]
mod fixture;
mod frontdoor;
pub mod history;
mod metrics;
pub mod model;
mod page;
pub mod render;
pub mod server;

pub use frontdoor::Upload;
pub use model::{
    BackendStatus, DataplaneStats, EventRecord, HeartbeatStats, PeerStatus, StatusReport, SyncStats,
};
pub use server::{Admin, Reply, ServerConfig, Site, StatusServer};
