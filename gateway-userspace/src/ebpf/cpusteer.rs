//! `[xdp] steering = "cpumap"`: the guard's XDP program sends each client's TCP packets to the CPU
//! its worker is pinned to, through a `BPF_MAP_TYPE_CPUMAP` (see `gateway_common::cpusteer`), so
//! the connection's TCP processing and its worker share a CPU and its cache.
//!
//! The CPU slot table is derived from the `sk_reuseport` slot table (slot → worker → the worker's
//! CPU) and rewritten whenever that one is (a worker draining, see [`super::Steering`]), so the
//! packets of a client follow the worker that accepts its connections.
//!
//! Where it cannot work (an interface attached in generic XDP or TC mode, where a cpumap
//! redirect is unsupported or costs an extra copy; a kernel refusing the cpumap entries), it stays
//! off: accept-time steering still works, one log line says why, and `gateway_xdp_steering_mode`
//! shows the mode in force.

use std::sync::Mutex;

use aya::maps::{Array, CpuMap, MapData, PerCpuArray};
use gateway_common::cpusteer::{
    CONFIG_MAP, COUNT_ENTRIES, COUNTS_MAP, CPUMAP_MAP, CpuSteerConfig, FAILED_INDEX, LOCAL_INDEX, MAX_CPUS, QUEUE_SIZE,
    SLOTS_MAP,
};

use prometheus_client::{
    encoding::DescriptorEncoder,
    metrics::{counter::ConstCounter, gauge::ConstGauge},
};

use super::{
    AttachMode, EbpfError, NicSteeringPolicy, XdpGuard, XdpService,
    metrics::{Labels, family},
    steering::slot_table,
};

/// The steering mode in force, for the log line and the gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NicSteeringMode {
    /// Not configured.
    Off,
    /// Packets are redirected to their worker's CPU in XDP.
    Cpumap,
    /// Configured, but unavailable here: workers are still chosen at accept (`sk_reuseport`).
    Fallback,
}

impl NicSteeringMode {
    pub const ALL: [NicSteeringMode; 3] = [NicSteeringMode::Off, NicSteeringMode::Cpumap, NicSteeringMode::Fallback];

    /// The `mode` label of `gateway_xdp_steering_mode`.
    pub const fn label(self) -> &'static str {
        match self {
            NicSteeringMode::Off => "off",
            NicSteeringMode::Cpumap => "cpumap",
            NicSteeringMode::Fallback => "reuseport_fallback",
        }
    }
}

/// The steering mode, and the live cpumap steering when it is on.
pub struct NicSteering {
    pub mode: NicSteeringMode,
    pub cpu: Option<CpuSteering>,
}

/// The cpumap, CPU slot table and counters of the running guard.
pub struct CpuSteering {
    maps: Mutex<Maps>,
    /// The CPU each worker is pinned to (index = worker id).
    worker_cpus: Vec<u32>,
}

struct Maps {
    // Held so the entries outlive nothing but the guard; written once at start.
    _cpumap: CpuMap<MapData>,
    config: Array<MapData, CpuSteerConfig>,
    slots: Array<MapData, u32>,
    counts: PerCpuArray<MapData, u64>,
}

/// Packets the XDP program steered: per target CPU, already on their CPU, and failed redirects.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SteeredPackets {
    pub to_cpu: Vec<u64>,
    pub local: u64,
    pub failed: u64,
}

/// The CPU worker `id` is pinned to: the daemon pins worker i to CPU i mod (CPUs available).
pub fn worker_cpu(id: usize, cpus: usize) -> u32 {
    (id % cpus.max(1)) as u32
}

/// Turns NIC steering on as `policy` asks, if every attachment of `xdp` is native XDP and the
/// kernel takes the cpumap entries; otherwise logs the one line saying why it falls back.
pub fn start(xdp: Option<&XdpService>, policy: NicSteeringPolicy, workers: usize) -> NicSteering {
    if policy == NicSteeringPolicy::Off {
        return NicSteering { mode: NicSteeringMode::Off, cpu: None };
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let worker_cpus: Vec<u32> = (0..workers).map(|w| worker_cpu(w, cpus)).collect();
    match try_start(xdp, worker_cpus) {
        Ok(cpu) => {
            tracing::info!(
                cpus = ?cpu.worker_cpus,
                queue_size = QUEUE_SIZE,
                "xdp steering: cpumap (each client's TCP packets go to its worker's CPU)"
            );
            NicSteering { mode: NicSteeringMode::Cpumap, cpu: Some(cpu) }
        }
        Err(reason) => {
            tracing::warn!(%reason, "xdp steering: cpumap unavailable, falling back to accept-time steering (sk_reuseport)");
            NicSteering { mode: NicSteeringMode::Fallback, cpu: None }
        }
    }
}

fn try_start(xdp: Option<&XdpService>, worker_cpus: Vec<u32>) -> Result<CpuSteering, String> {
    let xdp = xdp.ok_or("the xdp guard is not running")?;
    let attachments = xdp.attachments();
    if let Some((iface, mode)) = attachments.iter().find(|(_, m)| *m != AttachMode::XdpDriver) {
        return Err(format!("{iface} is attached in {mode} mode; a cpumap redirect needs native XDP (xdp-driver)"));
    }
    if let Some(cpu) = worker_cpus.iter().find(|c| **c >= MAX_CPUS) {
        return Err(format!("CPU {cpu} is beyond the {MAX_CPUS} the cpumap addresses"));
    }
    xdp.with_guard(|guard| CpuSteering::take(guard, worker_cpus)).map_err(|e| e.to_string())
}

impl CpuSteering {
    /// Takes the maps out of the loaded guard, gives every worker CPU a cpumap entry (the kernel
    /// starts its kthread there) and enables steering with every worker live.
    fn take(guard: &mut XdpGuard, worker_cpus: Vec<u32>) -> Result<CpuSteering, EbpfError> {
        let mut take = |name: &'static str| guard.ebpf.take_map(name).ok_or(EbpfError::MissingMap(name));
        let mut cpumap = CpuMap::try_from(take(CPUMAP_MAP)?).map_err(EbpfError::map(CPUMAP_MAP))?;
        let config = Array::try_from(take(CONFIG_MAP)?).map_err(EbpfError::map(CONFIG_MAP))?;
        let slots = Array::try_from(take(SLOTS_MAP)?).map_err(EbpfError::map(SLOTS_MAP))?;
        let counts = PerCpuArray::try_from(take(COUNTS_MAP)?).map_err(EbpfError::map(COUNTS_MAP))?;
        let mut cpus = worker_cpus.clone();
        cpus.sort_unstable();
        cpus.dedup();
        for cpu in cpus {
            cpumap.set(cpu, QUEUE_SIZE, None, 0).map_err(|e| EbpfError::CpuMapEntry { cpu, reason: e.to_string() })?;
        }
        let steering = CpuSteering { maps: Mutex::new(Maps { _cpumap: cpumap, config, slots, counts }), worker_cpus };
        steering.follow(&vec![true; steering.worker_cpus.len()])?;
        let mut maps = steering.lock();
        maps.config.set(0, CpuSteerConfig { enabled: 1, _pad: 0 }, 0).map_err(EbpfError::map(CONFIG_MAP))?;
        drop(maps);
        Ok(steering)
    }

    /// Rewrites the CPU slot table for the workers marked live (`live[w]`), the same table the
    /// `sk_reuseport` program uses, mapped to the workers' CPUs.
    pub fn follow(&self, live: &[bool]) -> Result<(), EbpfError> {
        let mut maps = self.lock();
        for (slot, worker) in slot_table(live).into_iter().enumerate() {
            let cpu = self.worker_cpus.get(worker as usize).copied().unwrap_or_default();
            maps.slots.set(slot as u32, cpu, 0).map_err(EbpfError::map(SLOTS_MAP))?;
        }
        Ok(())
    }

    /// The XDP program's counters, summed over receiving CPUs.
    pub fn counts(&self) -> SteeredPackets {
        let maps = self.lock();
        let sum = |i: u32| maps.counts.get(&i, 0).map(|v| v.iter().sum()).unwrap_or_default();
        let used = self.worker_cpus.iter().copied().max().map_or(0, |m| m + 1);
        SteeredPackets { to_cpu: (0..used).map(sum).collect(), local: sum(LOCAL_INDEX), failed: sum(FAILED_INDEX) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Maps> {
        self.maps.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

const _: () = assert!(FAILED_INDEX < COUNT_ENTRIES);

/// `gateway_xdp_steering_mode` and `gateway_xdp_steered_packets`.
pub(super) fn encode(encoder: &mut DescriptorEncoder, nic: &NicSteering) -> std::fmt::Result {
    let modes: Vec<_> = NicSteeringMode::ALL
        .into_iter()
        .map(|m| (vec![("mode", m.label().to_owned())], ConstGauge::new(i64::from(m == nic.mode))))
        .collect();
    family(encoder, "gateway_xdp_steering_mode", "1 for the NIC steering mode in force ([xdp] steering)", &modes)?;
    let Some(cpu) = &nic.cpu else { return Ok(()) };
    let counts = cpu.counts();
    let mut packets: Vec<(Labels, ConstCounter)> = counts
        .to_cpu
        .iter()
        .enumerate()
        .map(|(c, n)| (vec![("result", "redirected".to_owned()), ("cpu", c.to_string())], ConstCounter::new(*n)))
        .collect();
    packets.push((vec![("result", "local".to_owned()), ("cpu", String::new())], ConstCounter::new(counts.local)));
    packets.push((vec![("result", "failed".to_owned()), ("cpu", String::new())], ConstCounter::new(counts.failed)));
    family(
        encoder,
        "gateway_xdp_steered_packets",
        "TCP packets the XDP program steered: redirected to a CPU, already on their CPU (local), or failed (passed where they arrived)",
        &packets,
    )
}
