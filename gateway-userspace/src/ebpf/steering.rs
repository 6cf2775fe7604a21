//! Connection steering: an `sk_reuseport` program per listener picks the worker socket for each
//! new connection (see `gateway_common::steer` for the slot table). Workers hand their listening
//! sockets over as they bind them ([`Steering::register`], index = worker id) and take them back
//! before closing them ([`Steering::unregister`]): the slot table first stops sending new
//! connections to the worker, then its socket leaves the array, then the worker closes it.

use std::{
    collections::HashMap,
    net::SocketAddr,
    os::fd::{AsFd, AsRawFd},
    sync::{Arc, Mutex, MutexGuard, OnceLock},
};

use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray, ReusePortSockArray},
    programs::SkReuseport,
};
use gateway_common::steer::{
    CONFIG_MAP, COUNT_ENTRIES, COUNTS_MAP, FALLBACK_INDEX, MAX_WORKERS, PROGRAM, SLOT_COUNT, SLOTS_MAP, SOCKETS_MAP,
    SteerConfig, policy,
};

use super::SteeringPolicy;
use super::cpusteer::NicSteering;
use super::{EbpfError, program_error, raise_memlock_limit};

static STEER_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gateway-steer"));

/// The steering programs of every listener.
pub struct Steering {
    policy: SteeringPolicy,
    workers: usize,
    groups: Mutex<HashMap<SocketAddr, Group>>,
    /// Counts of groups already gone (listeners removed by a reload), so the metric never goes
    /// backwards.
    retired: Mutex<Vec<u64>>,
    /// `[xdp] steering`: set once at start; its CPU slot table follows this one's.
    nic: OnceLock<NicSteering>,
}

/// One listener's program instance and maps.
struct Group {
    ebpf: Ebpf,
    sockets: ReusePortSockArray<MapData>,
    slots: Array<MapData, u32>,
    counts: PerCpuArray<MapData, u64>,
    registered: Vec<bool>,
}

impl Steering {
    /// Checks that the program loads (so a kernel that refuses it fails the start, not the first
    /// listener), for `workers` workers.
    pub fn new(policy: SteeringPolicy, workers: usize) -> Result<Arc<Steering>, EbpfError> {
        if workers == 0 || workers > MAX_WORKERS as usize {
            return Err(EbpfError::TooManyWorkers { workers, max: MAX_WORKERS });
        }
        raise_memlock_limit();
        let probe = Group::load(policy, workers)?;
        drop(probe);
        Ok(Arc::new(Steering {
            policy,
            workers,
            groups: Mutex::new(HashMap::new()),
            retired: Mutex::new(vec![0; COUNT_ENTRIES as usize]),
            nic: OnceLock::new(),
        }))
    }

    pub fn policy(&self) -> SteeringPolicy {
        self.policy
    }

    /// Attaches NIC (cpumap) steering, whose CPU slot table then follows this slot table.
    pub fn set_nic(&self, nic: NicSteering) {
        let _ = self.nic.set(nic);
    }

    pub fn nic(&self) -> Option<&NicSteering> {
        self.nic.get()
    }

    /// Points the XDP program's CPU slot table at the workers `group` has live.
    fn follow(&self, group: &Group) {
        let Some(cpu) = self.nic.get().and_then(|n| n.cpu.as_ref()) else { return };
        if group.registered.iter().all(|r| !r) {
            return;
        }
        if let Err(error) = cpu.follow(&group.registered) {
            tracing::warn!(%error, "xdp steering: cannot rewrite the CPU slot table");
        }
    }

    /// Puts `worker`'s listening socket for `listener` into the steering array, and attaches the
    /// listener's program to the reuseport group (through this socket; it applies to the group).
    pub fn register(&self, listener: SocketAddr, worker: usize, socket: &impl AsFd) -> Result<(), EbpfError> {
        if worker >= self.workers {
            return Err(EbpfError::TooManyWorkers { workers: worker + 1, max: self.workers as u32 });
        }
        let mut groups = lock(&self.groups);
        let group = match groups.entry(listener) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(Group::load(self.policy, self.workers)?),
        };
        let fd = socket.as_fd();
        group.sockets.set(worker as u32, &fd.as_raw_fd(), 0).map_err(EbpfError::map(SOCKETS_MAP))?;
        group.registered[worker] = true;
        group.write_slots()?;
        self.follow(group);
        let program: &mut SkReuseport = group
            .ebpf
            .program_mut(PROGRAM)
            .ok_or(EbpfError::MissingProgram(PROGRAM))?
            .try_into()
            .map_err(|e| program_error(PROGRAM, "use as sk_reuseport", e))?;
        program.attach(fd).map_err(|e| program_error(PROGRAM, "attach", e))?;
        Ok(())
    }

    /// Takes `worker` out of `listener`'s steering before its socket is closed: its slots go to
    /// the other workers first, then its socket leaves the array. Connections already queued on
    /// the socket are the worker's to accept or lose; none are steered to it any more.
    pub fn unregister(&self, listener: SocketAddr, worker: usize) {
        let mut groups = lock(&self.groups);
        let Some(group) = groups.get_mut(&listener) else { return };
        if let Some(r) = group.registered.get_mut(worker) {
            *r = false;
        }
        if let Err(error) = group.write_slots() {
            tracing::warn!(%listener, worker, %error, "steering: cannot rewrite the slot table");
        }
        self.follow(group);
        if let Err(error) = group.sockets.clear_index(&(worker as u32)) {
            tracing::debug!(%listener, worker, %error, "steering: socket already gone from the array");
        }
        if group.registered.iter().all(|r| !r) {
            let counts = group.counts();
            let mut retired = lock(&self.retired);
            for (total, c) in retired.iter_mut().zip(counts) {
                *total += c;
            }
            groups.remove(&listener);
        }
    }

    /// Connections steered to each worker (summed over listeners), and those left to the kernel's
    /// hash because the chosen worker's socket was missing.
    pub fn counts(&self) -> (Vec<u64>, u64) {
        let mut totals = lock(&self.retired).clone();
        for group in lock(&self.groups).values() {
            for (total, c) in totals.iter_mut().zip(group.counts()) {
                *total += c;
            }
        }
        let fallback = totals[FALLBACK_INDEX as usize];
        totals.truncate(self.workers);
        (totals, fallback)
    }

    /// Connections steered to each worker by the CPU that ran the program (the CPU processing the
    /// connection's SYN): `[worker][cpu]`, live listeners only. With NIC steering, a worker's row
    /// is non-zero only at its own CPU.
    pub fn counts_by_cpu(&self) -> Vec<Vec<u64>> {
        let mut rows = vec![Vec::new(); self.workers];
        for group in lock(&self.groups).values() {
            for (worker, row) in rows.iter_mut().enumerate() {
                let Ok(per_cpu) = group.counts.get(&(worker as u32), 0) else { continue };
                if row.len() < per_cpu.len() {
                    row.resize(per_cpu.len(), 0);
                }
                for (total, c) in row.iter_mut().zip(per_cpu.iter()) {
                    *total += c;
                }
            }
        }
        rows
    }
}

impl Group {
    fn load(policy: SteeringPolicy, workers: usize) -> Result<Group, EbpfError> {
        let mut ebpf = Ebpf::load(STEER_OBJECT).map_err(EbpfError::Object)?;
        let program: &mut SkReuseport = ebpf
            .program_mut(PROGRAM)
            .ok_or(EbpfError::MissingProgram(PROGRAM))?
            .try_into()
            .map_err(|e| program_error(PROGRAM, "use as sk_reuseport", e))?;
        program.load().map_err(|e| program_error(PROGRAM, "load", e))?;
        let take = |ebpf: &mut Ebpf, name: &'static str| ebpf.take_map(name).ok_or(EbpfError::MissingMap(name));
        let mut config: Array<MapData, SteerConfig> =
            Array::try_from(take(&mut ebpf, CONFIG_MAP)?).map_err(EbpfError::map(CONFIG_MAP))?;
        let sockets =
            ReusePortSockArray::try_from(take(&mut ebpf, SOCKETS_MAP)?).map_err(EbpfError::map(SOCKETS_MAP))?;
        let slots = Array::try_from(take(&mut ebpf, SLOTS_MAP)?).map_err(EbpfError::map(SLOTS_MAP))?;
        let counts = PerCpuArray::try_from(take(&mut ebpf, COUNTS_MAP)?).map_err(EbpfError::map(COUNTS_MAP))?;
        let code = match policy {
            SteeringPolicy::None => policy::NONE,
            SteeringPolicy::Cpu => policy::CPU,
            SteeringPolicy::ClientHash => policy::CLIENT_HASH,
        };
        config.set(0, SteerConfig { policy: code, _pad: 0 }, 0).map_err(EbpfError::map(CONFIG_MAP))?;
        let mut group = Group { ebpf, sockets, slots, counts, registered: vec![false; workers] };
        // Until sockets register, every slot already names its final worker; a slot whose
        // socket is missing falls back to the kernel's hash.
        group.write_slots_for(&vec![true; workers])?;
        Ok(group)
    }

    /// Slot i belongs to worker i mod n; the slots of workers that left are dealt round-robin
    /// to the ones still there, so every other slot keeps its worker.
    fn write_slots(&mut self) -> Result<(), EbpfError> {
        // Before any registration the table stays as loaded.
        if self.registered.iter().all(|r| !r) {
            return Ok(());
        }
        let live = self.registered.clone();
        self.write_slots_for(&live)
    }

    fn write_slots_for(&mut self, live: &[bool]) -> Result<(), EbpfError> {
        for (slot, worker) in slot_table(live).into_iter().enumerate() {
            self.slots.set(slot as u32, worker, 0).map_err(EbpfError::map(SLOTS_MAP))?;
        }
        Ok(())
    }

    fn counts(&self) -> Vec<u64> {
        (0..COUNT_ENTRIES)
            .map(|i| self.counts.get(&i, 0).map(|per_cpu| per_cpu.iter().sum()).unwrap_or_default())
            .collect()
    }
}

/// The slot table for the workers marked live (`live[w]`); all slots go to worker 0 when none is.
pub fn slot_table(live: &[bool]) -> Vec<u32> {
    let n = live.len().max(1);
    let alive: Vec<u32> = (0..live.len()).filter(|w| live[*w]).map(|w| w as u32).collect();
    let mut next = 0;
    (0..SLOT_COUNT as usize)
        .map(|slot| {
            let owner = slot % n;
            if live.get(owner).copied().unwrap_or(false) {
                owner as u32
            } else if alive.is_empty() {
                0
            } else {
                next += 1;
                alive[(next - 1) % alive.len()]
            }
        })
        .collect()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_leaving_workers_slots_move() {
        let all = slot_table(&[true, true, true]);
        assert_eq!(&all[..6], &[0, 1, 2, 0, 1, 2]);
        let without_1 = slot_table(&[true, false, true]);
        for (slot, (before, after)) in all.iter().zip(&without_1).enumerate() {
            if *before == 1 {
                assert_ne!(*after, 1, "slot {slot} still on the leaving worker");
            } else {
                assert_eq!(before, after, "slot {slot} moved although its worker stayed");
            }
        }
        // The leaving worker's slots are shared out, not all given to one worker.
        let moved: Vec<u32> = all.iter().zip(&without_1).filter(|(b, _)| **b == 1).map(|(_, a)| *a).collect();
        assert!(moved.contains(&0) && moved.contains(&2));
        assert!(slot_table(&[false, false]).iter().all(|w| *w == 0));
    }
}
