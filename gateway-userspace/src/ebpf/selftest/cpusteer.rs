//! NIC steering in the kernel (`[xdp] steering = "cpumap"`): the native XDP program run through
//! `BPF_PROG_TEST_RUN` on TCP frames as they arrive on real links — untagged, behind one or two
//! VLAN tags (802.1Q, 802.1ad), IPv6 behind extension headers, a first fragment — must each be
//! steered by its client (counted on the steering counters), and what is not TCP must pass
//! unsteered. Three targets: this CPU (passes with no hop), a CPU without a cpumap entry (passes
//! here, counted as failed), and another CPU with an entry (`XDP_REDIRECT`).

use aya::{
    Ebpf,
    maps::{Array, CpuMap, MapData, PerCpuArray},
    programs::{TestRun as _, TestRunOptions},
};
use gateway_common::{
    cpusteer::{CONFIG_MAP, COUNTS_MAP, CpuSteerConfig, FAILED_INDEX, LOCAL_INDEX, MAX_CPUS, QUEUE_SIZE, SLOTS_MAP},
    steer::SLOT_COUNT,
    xdp::XDP_NATIVE_PROGRAM,
};

use super::frames::{ETH_P_8021AD, ETH_P_8021Q, FrameSpec, IPV6_DSTOPTS, IPV6_HOPOPTS, IPV6_ROUTING, L4};
use super::{GENEROUS, GuardProgram, Suite, XDP_PASS};
use crate::ebpf::{EbpfError, guard::xdp, program_error};

const XDP_REDIRECT: u32 = 4;

/// What the steering part must do with a frame.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Want {
    /// Counted at `index` of the steering counters, with this return code.
    Steered { index: u32, ret: u32 },
    /// Not TCP: passes, no steering counter moves.
    Unsteered,
}

impl Suite<'_> {
    /// Only the native XDP program steers; it runs once, with the XDP suite.
    pub(super) fn nic_steering(&mut self) -> Result<(), EbpfError> {
        if self.program != GuardProgram::Xdp {
            return Ok(());
        }
        self.reset(GENEROUS)?;
        // The suite's thread is pinned: this is the CPU every test run executes on.
        let here = u32::try_from(unsafe { libc::sched_getcpu() }).unwrap_or(0);
        self.steer(Some(here))?;
        let local = Want::Steered { index: LOCAL_INDEX, ret: XDP_PASS };
        let cases: Vec<(&str, FrameSpec, Want)> = vec![
            ("ipv4 tcp", FrameSpec::new("192.0.2.30", L4::TcpData), local),
            ("802.1Q ipv4 tcp", FrameSpec::new("192.0.2.31", L4::TcpSyn).vlans(&[ETH_P_8021Q]), local),
            ("802.1ad ipv4 tcp", FrameSpec::new("192.0.2.32", L4::TcpData).vlans(&[ETH_P_8021AD]), local),
            (
                "802.1ad+802.1Q ipv6 tcp",
                FrameSpec::new("2001:db8:30::1", L4::TcpData).vlans(&[ETH_P_8021AD, ETH_P_8021Q]),
                local,
            ),
            (
                "ipv6 hop-by-hop + routing + dstopts, tcp",
                FrameSpec::new("2001:db8:31::1", L4::TcpSyn).ipv6_ext(&[IPV6_HOPOPTS, IPV6_ROUTING, IPV6_DSTOPTS]),
                local,
            ),
            (
                "802.1Q ipv6 dstopts + first fragment, tcp",
                FrameSpec::new("2001:db8:32::1", L4::TcpData)
                    .vlans(&[ETH_P_8021Q])
                    .ipv6_ext(&[IPV6_DSTOPTS])
                    .fragment(0),
                local,
            ),
            ("ipv4 with options, tcp", FrameSpec::new("192.0.2.33", L4::TcpData).ipv4_options(2), local),
            ("802.1Q ipv4 udp", FrameSpec::new("192.0.2.34", L4::Udp).vlans(&[ETH_P_8021Q]), Want::Unsteered),
            (
                "ipv6 hop-by-hop, udp",
                FrameSpec::new("2001:db8:33::1", L4::Udp).ipv6_ext(&[IPV6_HOPOPTS]),
                Want::Unsteered,
            ),
            (
                "ipv6 behind 7 extension headers (beyond the bound), tcp",
                FrameSpec::new("2001:db8:34::1", L4::TcpData).ipv6_ext(&[IPV6_DSTOPTS; 7]),
                Want::Unsteered,
            ),
        ];
        for (name, spec, want) in cases {
            let failure = self.steered(&spec.build().bytes, want)?;
            self.record(format!("nic steering to this CPU: {name}"), failure);
        }

        // The guard off (it parses nothing): steering parses the frame itself.
        let mut off = self.guard.config()?;
        off.flags = 0;
        self.guard.write_config(&off)?;
        for (name, spec, want) in [
            ("802.1Q ipv4 tcp", FrameSpec::new("192.0.2.35", L4::TcpData).vlans(&[ETH_P_8021Q]), local),
            (
                "ipv6 hop-by-hop, udp",
                FrameSpec::new("2001:db8:36::1", L4::Udp).ipv6_ext(&[IPV6_HOPOPTS]),
                Want::Unsteered,
            ),
        ] {
            let failure = self.steered(&spec.build().bytes, want)?;
            self.record(format!("nic steering with the guard off: {name}"), failure);
        }
        self.reset(GENEROUS)?;

        // A CPU the cpumap has no entry for: the redirect fails, the packet passes here.
        self.steer(Some(MAX_CPUS - 1))?;
        let tagged = FrameSpec::new("2001:db8:35::1", L4::TcpData).vlans(&[ETH_P_8021Q]).ipv6_ext(&[IPV6_HOPOPTS]);
        let failure = self.steered(&tagged.build().bytes, Want::Steered { index: FAILED_INDEX, ret: XDP_PASS })?;
        self.record("nic steering to a CPU without a cpumap entry: passes here, counted as failed", failure);

        // Another CPU with an entry: redirected (needs a second CPU; online CPUs, not this
        // pinned thread's affinity).
        let cpus = u32::try_from(unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }).unwrap_or(1);
        if cpus > 1 {
            let other = (here + 1) % cpus.min(MAX_CPUS);
            let failure = match self.cpumap_entry(other) {
                Ok(()) => {
                    self.steer(Some(other))?;
                    self.steered(&tagged.build().bytes, Want::Steered { index: other, ret: XDP_REDIRECT })?
                }
                Err(e) => Some(format!("cpumap entry for CPU {other}: {e}")),
            };
            self.record("nic steering to another CPU: 802.1Q ipv6 hop-by-hop tcp is redirected", failure);
        }
        self.steer(None)
    }

    fn steer(&mut self, cpu: Option<u32>) -> Result<(), EbpfError> {
        steer_every_slot(&mut self.guard.ebpf, cpu)
    }

    fn cpumap_entry(&mut self, cpu: u32) -> Result<(), String> {
        let map = self.guard.ebpf.map_mut(gateway_common::cpusteer::CPUMAP_MAP).ok_or("no cpumap")?;
        let mut cpumap: CpuMap<&mut MapData> = CpuMap::try_from(map).map_err(|e| e.to_string())?;
        cpumap.set(cpu, QUEUE_SIZE, None, 0).map_err(|e| e.to_string())
    }

    fn steering_counts(&self) -> Result<Vec<u64>, EbpfError> {
        let map = self.guard.ebpf.map(COUNTS_MAP).ok_or(EbpfError::MissingMap(COUNTS_MAP))?;
        let counts: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map).map_err(EbpfError::map(COUNTS_MAP))?;
        (0..=FAILED_INDEX)
            .map(|i| counts.get(&i, 0).map(|v| v.iter().sum()).map_err(EbpfError::map(COUNTS_MAP)))
            .collect()
    }

    /// Runs the native program on `frame`; `Some(why)` when steering did not do what `want` says.
    fn steered(&mut self, frame: &[u8], want: Want) -> Result<Option<String>, EbpfError> {
        let before = self.steering_counts()?;
        let opts = TestRunOptions { data_in: Some(frame), repeat: 1, ..TestRunOptions::default() };
        let ret = xdp(&mut self.guard.ebpf, XDP_NATIVE_PROGRAM)?
            .test_run(opts)
            .map_err(|e| program_error(XDP_NATIVE_PROGRAM, "test-run", e))?
            .return_value;
        let after = self.steering_counts()?;
        let moved: Vec<(u32, u64)> = (0..=FAILED_INDEX)
            .filter_map(|i| {
                let d = after[i as usize] - before[i as usize];
                (d != 0).then_some((i, d))
            })
            .collect();
        let got = match moved[..] {
            [] => Want::Unsteered,
            [(index, 1)] => Want::Steered { index, ret },
            _ => return Ok(Some(format!("steering counters moved: {moved:?} (index, by)"))),
        };
        let want_ret = match want {
            Want::Steered { ret, .. } => ret,
            Want::Unsteered => XDP_PASS,
        };
        Ok((got != want || ret != want_ret).then(|| format!("expected {want:?}, got {got:?} (return code {ret})")))
    }
}

/// Points every slot of the loaded guard's steering at `cpu` and enables steering; `None`
/// disables it. Also used by the benchmark.
pub(in crate::ebpf) fn steer_every_slot(ebpf: &mut Ebpf, cpu: Option<u32>) -> Result<(), EbpfError> {
    if let Some(cpu) = cpu {
        let map = ebpf.map_mut(SLOTS_MAP).ok_or(EbpfError::MissingMap(SLOTS_MAP))?;
        let mut slots: Array<&mut MapData, u32> = Array::try_from(map).map_err(EbpfError::map(SLOTS_MAP))?;
        for slot in 0..SLOT_COUNT {
            slots.set(slot, cpu, 0).map_err(EbpfError::map(SLOTS_MAP))?;
        }
    }
    let map = ebpf.map_mut(CONFIG_MAP).ok_or(EbpfError::MissingMap(CONFIG_MAP))?;
    let mut config: Array<&mut MapData, CpuSteerConfig> = Array::try_from(map).map_err(EbpfError::map(CONFIG_MAP))?;
    config.set(0, CpuSteerConfig { enabled: u32::from(cpu.is_some()), _pad: 0 }, 0).map_err(EbpfError::map(CONFIG_MAP))
}
