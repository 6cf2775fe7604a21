//! The eBPF programs in the real kernel, driven through the library (no daemon): test_run cases,
//! attaching in every mode on a veth pair between private namespaces, pinning, and steering on
//! real sockets. Needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN) and iproute2; fails, never
//! skips, when it cannot run: a skipped eBPF test would let CI stay green with a broken pipeline.

// Shared with the e2e binary, which uses more of it.
#[allow(dead_code)]
#[path = "e2e/netns.rs"]
mod netns;

mod ebpf {
    mod attach;
    mod selftest;
    mod steering;
}
