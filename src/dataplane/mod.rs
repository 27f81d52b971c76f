//! The data plane's engines. The userspace one (an AF_PACKET ring, in
//! src/sys/dataplane.rs) handles every frame itself; the eBPF one hands the
//! frames of established flows to a tc program and keeps the rest.
pub mod ebpf;
