//! gatewayd: an eBPF-accelerated edge gateway. See ARCHITECTURE.md for the map.

pub mod ebpf;
