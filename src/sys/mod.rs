//! placeholder
pub mod init;
