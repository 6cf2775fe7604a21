//! The native XDP program's steering step (`[xdp] steering = "cpumap"`) on the known-source pass
//! path, with the guard's config as the caller left it (the row "known source, pass (lists
//! empty)"), so the difference between the rows is what steering adds: the slot lookup, the CPU
//! check, the redirect and its counter — and no second parse, which the frame with two VLAN tags
//! and three IPv6 extension headers (the guard's parse at its longest) would make visible.

use std::time::Duration;

use aya::{
    maps::{CpuMap, MapData},
    programs::{TestRun as _, TestRunOptions},
};
use gateway_common::{
    cpusteer::{CPUMAP_MAP, MAX_CPUS, QUEUE_SIZE},
    xdp::XDP_NATIVE_PROGRAM,
};

use super::Measurement;
use crate::ebpf::{
    EbpfError, GuardProgram, XdpGuard,
    guard::xdp,
    program_error,
    selftest::{
        cpusteer::steer_every_slot,
        frames::{ETH_P_8021AD, ETH_P_8021Q, FrameSpec, IPV6_DSTOPTS, IPV6_HOPOPTS, IPV6_ROUTING, L4},
    },
};

/// The steering rows; steering is off again afterwards. The bench thread is pinned, so "this
/// CPU" is where every run executes.
pub(super) fn measure(guard: &mut XdpGuard, known: &[u8], repeat: u32) -> Result<Vec<Measurement>, EbpfError> {
    let looped = format!("test_run, repeat {repeat}, one frame");
    let row = |name, d: Duration| Measurement { name, ns_per_packet: d.as_nanos() as f64, method: looped.clone() };
    let here = u32::try_from(unsafe { libc::sched_getcpu() }).unwrap_or(0);
    let mut out = Vec::new();
    steer_every_slot(&mut guard.ebpf, Some(here))?;
    out.push(row("native XDP, known source, steering on: already on its CPU (pass)", native(guard, known, repeat)?));
    let cpus = u32::try_from(unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }).unwrap_or(1).min(MAX_CPUS);
    if cpus > 1 {
        let other = (here + 1) % cpus;
        let map = guard.ebpf.map_mut(CPUMAP_MAP).ok_or(EbpfError::MissingMap(CPUMAP_MAP))?;
        let mut cpumap: CpuMap<&mut MapData> = CpuMap::try_from(map).map_err(EbpfError::map(CPUMAP_MAP))?;
        cpumap
            .set(other, QUEUE_SIZE, None, 0)
            .map_err(|e| EbpfError::CpuMapEntry { cpu: other, reason: e.to_string() })?;
        steer_every_slot(&mut guard.ebpf, Some(other))?;
        let d = native(guard, known, repeat)?;
        out.push(row("native XDP, known source, steering on: redirected to another CPU (cpumap)", d));
    }

    let tagged = FrameSpec::new("2001:db8:40::7", L4::TcpData)
        .vlans(&[ETH_P_8021AD, ETH_P_8021Q])
        .ipv6_ext(&[IPV6_HOPOPTS, IPV6_ROUTING, IPV6_DSTOPTS])
        .build()
        .bytes;
    steer_every_slot(&mut guard.ebpf, None)?;
    guard.test_run(GuardProgram::Xdp, &tagged, 1)?;
    let (_, d) = guard.test_run(GuardProgram::Xdp, &tagged, repeat)?;
    out.push(row("known source, pass (lists empty), 802.1ad+802.1Q, IPv6 + 3 extension headers", d));
    steer_every_slot(&mut guard.ebpf, Some(here))?;
    let d = native(guard, &tagged, repeat)?;
    out.push(row("native XDP, the same frame, steering on: already on its CPU (pass)", d));
    steer_every_slot(&mut guard.ebpf, None)?;
    Ok(out)
}

fn native(guard: &mut XdpGuard, frame: &[u8], repeat: u32) -> Result<Duration, EbpfError> {
    let opts = TestRunOptions { data_in: Some(frame), repeat: repeat.max(1), ..TestRunOptions::default() };
    let program = xdp(&mut guard.ebpf, XDP_NATIVE_PROGRAM)?;
    Ok(program.test_run(opts).map_err(|e| program_error(XDP_NATIVE_PROGRAM, "test-run", e))?.duration)
}
