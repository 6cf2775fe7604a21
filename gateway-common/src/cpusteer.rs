//! NIC-side connection steering (`[xdp] steering = "cpumap"`): the guard's XDP program sends each
//! passed TCP packet to a CPU through a `BPF_MAP_TYPE_CPUMAP`, chosen by the same client hash and
//! slot table the `sk_reuseport` program uses (see [`crate::steer`]), so that the connection's
//! softirq/TCP processing and its (pinned) worker run on one CPU.
//!
//! The slot table here holds CPUs, not workers: slot → worker (the reuseport table, following
//! draining workers) → the CPU that worker is pinned to, written by the daemon whenever the
//! reuseport table changes.

/// `BPF_MAP_TYPE_CPUMAP`: index = CPU, value = queue size (the kernel's per-CPU kthread).
pub const CPUMAP_MAP: &str = "GW_CPUMAP";
/// Array, one [`CpuSteerConfig`]; `enabled == 0` (as loaded) leaves every packet to `XDP_PASS`.
pub const CONFIG_MAP: &str = "GW_CPU_STEER";
/// Array of [`crate::steer::SLOT_COUNT`] `u32`: slot → CPU.
pub const SLOTS_MAP: &str = "GW_CPU_SLOTS";
/// Per-CPU array of `u64`, [`COUNT_ENTRIES`] long: on the receiving CPU, packets sent to CPU i
/// (index i); [`LOCAL_INDEX`]: already on their CPU (passed, no hop); [`FAILED_INDEX`]: the
/// redirect failed (no cpumap entry) and the packet passed on the receiving CPU.
pub const COUNTS_MAP: &str = "GW_CPU_STEERED";

/// CPUs the cpumap can address.
pub const MAX_CPUS: u32 = 256;
/// See [`COUNTS_MAP`].
pub const LOCAL_INDEX: u32 = MAX_CPUS;
/// See [`COUNTS_MAP`].
pub const FAILED_INDEX: u32 = MAX_CPUS + 1;
/// Size of [`COUNTS_MAP`].
pub const COUNT_ENTRIES: u32 = MAX_CPUS + 2;

/// Per-CPU queue of the cpumap kthread, in frames. Katran and Cilium's XDP samples use a few
/// thousand (the kernel's `xdp_redirect_cpu` sample defaults to 2048): large enough to absorb a
/// NAPI burst while the kthread is scheduled, small enough to bound the memory per CPU.
pub const QUEUE_SIZE: u32 = 2048;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuSteerConfig {
    pub enabled: u32,
    pub _pad: u32,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: two u32, no padding.
    unsafe impl aya::Pod for super::CpuSteerConfig {}
}
