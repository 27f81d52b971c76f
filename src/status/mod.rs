//! Status and admin: the report model, its views (HTML page, JSON and
//! Prometheus text in `render`; the lines of `duet status` in `text`),
//! the HTTP server that serves them with bounded resources, and the small
//! HTTP client the CLI uses to talk to a running daemon.

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
pub mod text;

pub use frontdoor::Upload;
pub use model::{
    BackendStatus, DataplaneStats, EventRecord, HeartbeatStats, PeerStatus, StatusReport, SyncStats,
};
pub use server::{Admin, Reply, ServerConfig, Site, StatusServer};
