//! Wire formats: bytes in, typed values out, and back. Nothing here decides.
pub mod admin;
pub mod civil;
pub mod envelope;
pub mod frame;
pub mod heartbeat;
pub mod state;
pub mod sync;
