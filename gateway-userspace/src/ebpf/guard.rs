//! The guard object: the XDP and TC programs of `gateway-ebpf` and their maps. Loading with a pin
//! directory pins the maps there (a restart keeps buckets, lists and counters) and holds the
//! directory's lock, so a second instance cannot attach the guard twice.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, LpmTrie, MapData, MapInfo, MapType, PerCpuArray},
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use gateway_common::sources::{SourceSet, array_entries, set_count};
use gateway_common::xdp::{
    ALLOW_MAP, CONFIG_MAP, COUNTER_ENTRIES, COUNTERS_MAP, COUNTERS_PER_SLOT, DENY_MAP, DenyEntry, EMPTY_PROGRAM,
    GuardConfig, LISTED_MAP, LISTED_WORDS, MAX_LIST_ENTRIES, NEW_SOURCES_MAP, SOURCES_MAP, TC_PROGRAM,
    XDP_NATIVE_PROGRAM, XDP_PROGRAM, counter_index, flags,
};
use ipnet::IpNet;

mod batch;
mod clock;
mod sources;
mod udp;

pub use sources::WalkCost;

use super::{
    Counters, EbpfError, PinLock,
    attach::Attachment,
    ensure_pin_dir,
    lists::{lpm_key, mark_buckets, net_of_lpm},
    program_error, raise_memlock_limit,
};

/// The object `build.rs` (aya-build) compiled from `gateway-ebpf`; aya needs it 8-byte aligned.
static GUARD_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gateway-xdp"));

/// The programs of the guard object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardProgram {
    Xdp,
    Tc,
    /// `XDP_PASS` and nothing else: the benchmark's floor.
    Empty,
}

impl GuardProgram {
    pub fn name(self) -> &'static str {
        match self {
            GuardProgram::Xdp => XDP_PROGRAM,
            GuardProgram::Tc => TC_PROGRAM,
            GuardProgram::Empty => EMPTY_PROGRAM,
        }
    }
}

/// How to load the guard.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Pin maps (and links) here, under an exclusive lock. `None`: a private instance whose
    /// maps die with it (tests, `selftest`, `bench`).
    pub pin_dir: Option<PathBuf>,
    /// Capacity (ways) of the per-source table; rounded up to a power-of-two number of sets.
    pub max_sources: u32,
}

/// The maps that are pinned, and the shape each must have to be reused.
fn pinned_shapes(max_sources: u32) -> [(&'static str, MapType, usize, usize, u32); 6] {
    use std::mem::size_of;
    [
        (CONFIG_MAP, MapType::Array, 4, size_of::<GuardConfig>(), 1),
        (COUNTERS_MAP, MapType::PerCpuArray, 4, 8, COUNTER_ENTRIES),
        (SOURCES_MAP, MapType::Array, 4, size_of::<SourceSet>(), array_entries(set_count(max_sources))),
        (ALLOW_MAP, MapType::LpmTrie, 20, 4, MAX_LIST_ENTRIES),
        (DENY_MAP, MapType::LpmTrie, 20, size_of::<DenyEntry>(), MAX_LIST_ENTRIES),
        // Pinned too, so a program kept attached from the previous run (until this one replaces
        // it) sees the prefilter of the lists this run writes.
        (LISTED_MAP, MapType::Array, 4, 8, LISTED_WORDS),
    ]
}

/// The loaded guard. Attachments are removed when it is dropped, unless
/// [`XdpGuard::keep_attached`] handed them over to their pins first.
pub struct XdpGuard {
    pub(super) ebpf: Ebpf,
    config_map: Array<MapData, GuardConfig>,
    counters: PerCpuArray<MapData, u64>,
    sources: Array<MapData, SourceSet>,
    /// Sets in `sources` (the overflow element follows them).
    sets: u32,
    /// The table's hash seed: kept with a pinned table, else random.
    hash_seed: u64,
    allow: LpmTrie<MapData, [u32; 4], u32>,
    deny: LpmTrie<MapData, [u32; 4], DenyEntry>,
    listed_map: Array<MapData, u64>,
    /// The prefilter bitmap as last written to `listed_map`.
    listed: Vec<u64>,
    /// The settings last written, without the list bits (those follow the lists) and without
    /// the clock's tick (added when written).
    config: GuardConfig,
    /// Nanoseconds per jiffy of the program's clock; 0: `bpf_ktime_get_ns`.
    tick_ns: u64,
    pub(super) pin_dir: Option<PathBuf>,
    pub(super) attachments: Vec<Attachment>,
    /// Held for as long as the guard lives; released last.
    _lock: Option<PinLock>,
}

impl XdpGuard {
    /// Loads the programs into the kernel (verified, not attached). With a pin directory, maps
    /// pinned there by an earlier run are reused when their shape still fits, and replaced (with
    /// a warning) when it does not.
    pub fn load(opts: &LoadOptions) -> Result<Self, EbpfError> {
        Self::load_programs(opts).map_err(EbpfError::or_privileges)
    }

    fn load_programs(opts: &LoadOptions) -> Result<Self, EbpfError> {
        raise_memlock_limit();
        let lock = match &opts.pin_dir {
            Some(dir) => {
                ensure_pin_dir(dir)?;
                let lock = PinLock::acquire(dir)?;
                drop_incompatible_pins(dir, opts.max_sources)?;
                Some(lock)
            }
            None => None,
        };
        let mut loader = EbpfLoader::new();
        let sets = set_count(opts.max_sources);
        loader.map_max_entries(SOURCES_MAP, array_entries(sets));
        let pins: Vec<(&'static str, PathBuf)> = match &opts.pin_dir {
            Some(dir) => pinned_shapes(opts.max_sources).iter().map(|s| (s.0, dir.join(s.0))).collect(),
            None => Vec::new(),
        };
        for (name, path) in &pins {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(GUARD_OBJECT).map_err(EbpfError::Object)?;
        xdp(&mut ebpf, XDP_PROGRAM)?.load().map_err(|e| program_error(XDP_PROGRAM, "load", e))?;
        xdp(&mut ebpf, XDP_NATIVE_PROGRAM)?.load().map_err(|e| program_error(XDP_NATIVE_PROGRAM, "load", e))?;
        tc(&mut ebpf)?.load().map_err(|e| program_error(TC_PROGRAM, "load", e))?;
        let config_map = Array::try_from(take(&mut ebpf, CONFIG_MAP)?).map_err(EbpfError::map(CONFIG_MAP))?;
        let counters = PerCpuArray::try_from(take(&mut ebpf, COUNTERS_MAP)?).map_err(EbpfError::map(COUNTERS_MAP))?;
        let sources = Array::try_from(take(&mut ebpf, SOURCES_MAP)?).map_err(EbpfError::map(SOURCES_MAP))?;
        let allow = LpmTrie::try_from(take(&mut ebpf, ALLOW_MAP)?).map_err(EbpfError::map(ALLOW_MAP))?;
        let deny = LpmTrie::try_from(take(&mut ebpf, DENY_MAP)?).map_err(EbpfError::map(DENY_MAP))?;
        let listed_map = Array::try_from(take(&mut ebpf, LISTED_MAP)?).map_err(EbpfError::map(LISTED_MAP))?;
        let config = config_map.get(&0, 0).map_err(EbpfError::map(CONFIG_MAP))?;
        let mut guard = XdpGuard {
            ebpf,
            config_map,
            counters,
            sources,
            sets,
            // A pinned table keeps its sources where the previous run's seed put them.
            hash_seed: sources::seed_for(&config, sets),
            allow,
            deny,
            listed_map,
            listed: vec![0; LISTED_WORDS as usize],
            // A pinned config carries the previous run's clock: taken back out (re-added on write).
            config: GuardConfig {
                flags: config.flags & !(flags::ALLOW | flags::DENY),
                pkt_tolerance_ns: config.pkt_tolerance_ns.saturating_sub(config.tick_ns),
                syn_tolerance_ns: config.syn_tolerance_ns.saturating_sub(config.tick_ns),
                tick_ns: 0,
                ..config
            },
            tick_ns: 0,
            pin_dir: opts.pin_dir.clone(),
            attachments: Vec::new(),
            _lock: lock,
        };
        // What a pinned bitmap holds is not known here (or there is none yet, next to lists an
        // older run pinned): written in full.
        guard.rebuild_prefilter(true)?;
        guard.tick_ns = match clock::calibrate(&mut guard.ebpf)? {
            Ok(tick) => {
                tracing::info!(tick_ns = tick, hz = 1_000_000_000 / tick, "XDP guard clock: jiffies (calibrated)");
                tick
            }
            Err(why) => {
                tracing::warn!(reason = %why, "XDP guard clock: jiffies cannot be calibrated; using bpf_ktime_get_ns (slower pass path)");
                0
            }
        };
        Ok(guard)
    }

    /// Nanoseconds per tick of the program's clock (0: `bpf_ktime_get_ns`).
    pub fn tick_ns(&self) -> u64 {
        self.tick_ns
    }

    /// Switches the program's clock: `Some(tick)` for jiffies × tick, `None` for
    /// `bpf_ktime_get_ns` (the selftest runs its bucket cases on both). Rewrites the settings.
    pub fn set_clock(&mut self, tick_ns: Option<u64>) -> Result<(), EbpfError> {
        self.tick_ns = tick_ns.unwrap_or(0);
        self.flush_config()
    }

    /// Recomputes the list prefilter from the lists as stored and clears the bits no entry
    /// needs any more. Entries only ever add bits before they are inserted
    /// ([`XdpGuard::deny_insert`], [`XdpGuard::set_allow`]), so a removal leaves a stale bit
    /// (a wasted lookup, never a missed entry) until this runs: after removals, once per batch.
    pub fn refresh_prefilter(&mut self) -> Result<(), EbpfError> {
        self.rebuild_prefilter(false)
    }

    fn rebuild_prefilter(&mut self, all: bool) -> Result<(), EbpfError> {
        let mut bitmap = vec![0u64; LISTED_WORDS as usize];
        for key in self.allow.keys() {
            mark_buckets(&key.map_err(EbpfError::map(ALLOW_MAP))?, &mut bitmap);
        }
        for key in self.deny.keys() {
            mark_buckets(&key.map_err(EbpfError::map(DENY_MAP))?, &mut bitmap);
        }
        self.write_listed(&bitmap, all)
    }

    /// Whether the prefilter (as stored in the map) sends `ip` on to the LPM lookups.
    pub fn prefilter_marks(&self, ip: std::net::IpAddr) -> Result<bool, EbpfError> {
        let bucket = gateway_common::xdp::list_bucket(&super::lists::words_of(ip));
        let word = self.listed_map.get(&(bucket / 64), 0).map_err(EbpfError::map(LISTED_MAP))?;
        Ok(word >> (bucket % 64) & 1 == 1)
    }

    /// Sets the prefilter bits of `nets` (before they are inserted).
    fn mark_listed(&mut self, nets: &[IpNet]) -> Result<(), EbpfError> {
        let mut bitmap = self.listed.clone();
        for net in nets {
            mark_buckets(&lpm_key(*net), &mut bitmap);
        }
        self.write_listed(&bitmap, false)
    }

    /// Writes the words of `bitmap` that differ from what was written (all of them with `all`).
    fn write_listed(&mut self, bitmap: &[u64], all: bool) -> Result<(), EbpfError> {
        for (i, (new, old)) in (0u32..).zip(bitmap.iter().zip(self.listed.iter_mut())) {
            if all || new != old {
                self.listed_map.set(i, *new, 0).map_err(EbpfError::map(LISTED_MAP))?;
                *old = *new;
            }
        }
        Ok(())
    }

    /// Where maps and links are pinned, if anywhere.
    pub fn pin_dir(&self) -> Option<&Path> {
        self.pin_dir.as_deref()
    }

    /// Writes the settings. The allow/deny bits are derived from the lists (an empty list costs
    /// no lookup), whatever `config` says; the clock fields (`tick_ns`, and one tick added to each
    /// tolerance) are the guard's own.
    pub fn write_config(&mut self, config: &GuardConfig) -> Result<(), EbpfError> {
        self.config = GuardConfig { flags: config.flags & !(flags::ALLOW | flags::DENY), tick_ns: 0, ..*config };
        self.flush_config()
    }

    /// The settings last written (list bits included).
    pub fn config(&self) -> Result<GuardConfig, EbpfError> {
        self.config_map.get(&0, 0).map_err(EbpfError::map(CONFIG_MAP))
    }

    fn flush_config(&mut self) -> Result<(), EbpfError> {
        let mut config = self.config;
        // A clock of one-tick resolution lags by up to a tick: the tolerance grows by one so that
        // conforming senders still pass (bounds in `gateway_common::gcra`).
        config.tick_ns = self.tick_ns;
        (config.hash_seed, config.set_mask) = (self.hash_seed, u64::from(self.sets - 1));
        config.pkt_tolerance_ns = config.pkt_tolerance_ns.saturating_add(self.tick_ns);
        config.syn_tolerance_ns = config.syn_tolerance_ns.saturating_add(self.tick_ns);
        if self.allow.keys().next().is_some() {
            config.flags |= flags::ALLOW;
        }
        if self.deny.keys().next().is_some() {
            config.flags |= flags::DENY;
        }
        self.config_map.set(0, config, 0).map_err(EbpfError::map(CONFIG_MAP))
    }

    /// The allow list as stored.
    pub fn allow_entries(&self) -> Result<Vec<IpNet>, EbpfError> {
        let keys = self.allow.keys().collect::<Result<Vec<_>, _>>().map_err(EbpfError::map(ALLOW_MAP))?;
        Ok(keys.iter().map(net_of_lpm).collect())
    }

    /// Makes the allow list equal to `wanted`, touching only the differences. Returns how many
    /// entries were added and removed.
    pub fn set_allow(&mut self, wanted: &[IpNet]) -> Result<(usize, usize), EbpfError> {
        let current = self.allow_entries()?;
        let (mut added, mut removed) = (0, 0);
        let new: Vec<IpNet> = wanted.iter().filter(|n| !current.contains(n)).copied().collect();
        self.mark_listed(&new)?;
        for net in &new {
            self.allow.insert(&lpm_key(*net), 1, 0).map_err(EbpfError::map(ALLOW_MAP))?;
            added += 1;
        }
        for net in current.iter().filter(|n| !wanted.contains(n)) {
            self.allow.remove(&lpm_key(*net)).map_err(EbpfError::map(ALLOW_MAP))?;
            removed += 1;
        }
        if removed > 0 {
            self.refresh_prefilter()?;
        }
        self.flush_config()?;
        Ok((added, removed))
    }

    /// Every deny entry, expired ones included.
    pub fn deny_entries(&self) -> Result<Vec<(IpNet, DenyEntry)>, EbpfError> {
        let mut out = Vec::new();
        for item in self.deny.iter() {
            let (key, entry) = item.map_err(EbpfError::map(DENY_MAP))?;
            out.push((net_of_lpm(&key), entry));
        }
        Ok(out)
    }

    /// Adds or replaces a deny entry.
    pub fn deny_insert(&mut self, net: IpNet, entry: DenyEntry) -> Result<(), EbpfError> {
        self.mark_listed(&[net])?;
        self.deny.insert(&lpm_key(net), entry, 0).map_err(EbpfError::map(DENY_MAP))?;
        self.flush_config()
    }

    /// Removes a deny entry; `false` when there was none. Its prefilter bits stay until
    /// [`XdpGuard::refresh_prefilter`].
    pub fn deny_remove(&mut self, net: IpNet) -> Result<bool, EbpfError> {
        let removed = match self.deny.remove(&lpm_key(net)) {
            Ok(()) => true,
            Err(aya::maps::MapError::KeyNotFound | aya::maps::MapError::ElementNotFound) => false,
            Err(aya::maps::MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => false,
            Err(e) => return Err(EbpfError::Map { map: DENY_MAP, source: e }),
        };
        self.flush_config()?;
        Ok(removed)
    }

    /// The counters of `ifindex`, summed over CPUs.
    pub fn counters(&self, ifindex: u32) -> Result<Counters, EbpfError> {
        let mut out = [0; COUNTERS_PER_SLOT as usize];
        for (counter, total) in (0u32..).zip(out.iter_mut()) {
            let per_cpu =
                self.counters.get(&counter_index(ifindex, counter), 0).map_err(EbpfError::map(COUNTERS_MAP))?;
            *total = per_cpu.iter().sum();
        }
        Ok(out)
    }

    /// Resets this CPU-independent state of the new-source guard (each CPU's window).
    pub fn reset_new_source_windows(&mut self) -> Result<(), EbpfError> {
        let map = self.ebpf.map_mut(NEW_SOURCES_MAP).ok_or(EbpfError::MissingMap(NEW_SOURCES_MAP))?;
        let mut windows: PerCpuArray<&mut MapData, gateway_common::xdp::NewSourceWindow> =
            PerCpuArray::try_from(map).map_err(EbpfError::map(NEW_SOURCES_MAP))?;
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| EbpfError::Pin { path: PathBuf::from("/sys"), source: e })?;
        let zero = aya::maps::PerCpuValues::try_from(vec![Default::default(); cpus])
            .map_err(|e| EbpfError::Pin { path: PathBuf::from("/sys"), source: e })?;
        windows.set(0, zero, 0).map_err(EbpfError::map(NEW_SOURCES_MAP))
    }

    /// Runs `program` once per `repeat` on `frame` through `BPF_PROG_TEST_RUN` (in the calling
    /// thread's network namespace, as if received on its loopback device). Returns the program's
    /// return value and the kernel's average time per run.
    pub fn test_run(&mut self, program: GuardProgram, frame: &[u8], repeat: u32) -> Result<(u32, Duration), EbpfError> {
        let name = program.name();
        let opts = TestRunOptions { data_in: Some(frame), repeat: repeat.max(1), ..TestRunOptions::default() };
        let result = match program {
            GuardProgram::Xdp => xdp(&mut self.ebpf, name)?.test_run(opts),
            GuardProgram::Tc => tc(&mut self.ebpf)?.test_run(opts),
            GuardProgram::Empty => {
                let empty = xdp(&mut self.ebpf, name)?;
                if empty.fd().is_err() {
                    empty.load().map_err(|e| program_error(EMPTY_PROGRAM, "load", e))?;
                }
                empty.test_run(opts)
            }
        }
        .map_err(|e| program_error(name, "test-run", e))?;
        Ok((result.return_value, result.duration))
    }

    /// Runs `program` (the XDP program or the TC classifier) once on `frame` and returns its
    /// return value and the frame as the program left it (what `XDP_TX` or a TC redirect would
    /// send).
    pub fn test_run_out(&mut self, program: GuardProgram, frame: &[u8]) -> Result<(u32, Vec<u8>), EbpfError> {
        let mut out = vec![0u8; frame.len() + 256];
        let opts = TestRunOptions { data_in: Some(frame), data_out: Some(&mut out), ..TestRunOptions::default() };
        let result = match program {
            GuardProgram::Tc => {
                tc(&mut self.ebpf)?.test_run(opts).map_err(|e| program_error(TC_PROGRAM, "test-run", e))
            }
            _ => {
                xdp(&mut self.ebpf, XDP_PROGRAM)?.test_run(opts).map_err(|e| program_error(XDP_PROGRAM, "test-run", e))
            }
        }?;
        out.truncate(result.data_size_out as usize);
        Ok((result.return_value, out))
    }
}

impl Drop for XdpGuard {
    fn drop(&mut self) {
        // Before the programs (and the pin lock) go: attachments are detached explicitly so a
        // failure is logged; attachments handed over with `keep_attached` are gone already.
        self.detach_all();
    }
}

pub(super) fn xdp<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Xdp, EbpfError> {
    let program = ebpf.program_mut(name).ok_or(EbpfError::MissingProgram(name))?;
    program.try_into().map_err(|e| program_error(name, "use as XDP", e))
}

pub(super) fn tc(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier, EbpfError> {
    let program = ebpf.program_mut(TC_PROGRAM).ok_or(EbpfError::MissingProgram(TC_PROGRAM))?;
    program.try_into().map_err(|e| program_error(TC_PROGRAM, "use as TC classifier", e))
}

fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, EbpfError> {
    ebpf.take_map(name).ok_or(EbpfError::MissingMap(name))
}

/// aya reuses a pinned map without comparing its shape; a map pinned by an older build, or with
/// another `max_sources`, would then be silently wrong. Such pins are removed (their contents are
/// lost, which the warning says).
fn drop_incompatible_pins(dir: &Path, max_sources: u32) -> Result<(), EbpfError> {
    for (name, map_type, key_size, value_size, max_entries) in pinned_shapes(max_sources) {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let fits = match MapInfo::from_pin(&path) {
            Ok(info) => {
                info.map_type().ok() == Some(map_type)
                    && info.key_size() as usize == key_size
                    && info.value_size() as usize == value_size
                    && info.max_entries() == max_entries
            }
            Err(_) => false,
        };
        if !fits {
            tracing::warn!(
                map = name,
                path = %path.display(),
                "pinned map has another shape (capacity or layout changed); replacing it, its contents are lost"
            );
            std::fs::remove_file(&path).map_err(EbpfError::pin(&path))?;
        }
    }
    Ok(())
}

/// Removes what an earlier run left pinned in `dir` (links, which detaches them, and maps), when
/// no running process holds the directory. Used when the guard is disabled: a guard kept attached
/// across a restart must not outlive the configuration that wanted it.
pub fn remove_stale_pins(dir: &Path) -> Result<usize, EbpfError> {
    if !dir.exists() {
        return Ok(0);
    }
    let _lock = PinLock::acquire(dir)?;
    let mut removed = 0;
    for entry in std::fs::read_dir(dir).map_err(EbpfError::pin(dir))? {
        let entry = entry.map_err(EbpfError::pin(dir))?;
        let path = entry.path();
        match std::fs::remove_file(&path) {
            Ok(()) => removed += 1,
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot remove stale pin"),
        }
    }
    let _ = std::fs::remove_dir(dir);
    Ok(removed)
}
