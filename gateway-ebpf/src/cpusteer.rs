//! NIC-side steering (see `gateway_common::cpusteer`): after the guard passes a TCP packet, send
//! it to the CPU of its client's slot through the cpumap, so the kernel's TCP processing of the
//! connection runs on the CPU its worker is pinned to. Off (plain `XDP_PASS`) until the daemon
//! enables it, which it does only for native XDP.
//!
//! Like Katran and Cilium: only TCP is steered (other traffic passes where it arrived), dropped
//! packets are never redirected (this runs at the pass verdict only), a packet already on its CPU
//! passes without the extra hop, and a missing cpumap entry passes rather than drops. The key is
//! the client address alone, the same as the `sk_reuseport` program's, so fragments and every
//! connection of a client stay on one CPU. The frame is walked by the guard's parser
//! (`parse.rs`): up to two VLAN tags (802.1Q, 802.1ad), IPv4 options, and up to
//! `MAX_EXT_HEADERS` IPv6 extension headers, as Katran's parser bounds them; a packet with more
//! passes unsteered. The guard hands its parse over (one parse per frame); only when the guard
//! is off, and so did not parse, does this step parse the frame itself.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_get_smp_processor_id,
    macros::map,
    maps::{Array, CpuMap, PerCpuArray},
};
use gateway_common::{
    cpusteer::{COUNT_ENTRIES, CpuSteerConfig, FAILED_INDEX, LOCAL_INDEX, MAX_CPUS},
    steer::{SLOT_COUNT, client_hash, slot_of},
};

use crate::parse::{IPPROTO_TCP, Parsed, parse};

#[map(name = "GW_CPUMAP")]
static CPUMAP: CpuMap = CpuMap::with_max_entries(MAX_CPUS, 0);

#[map(name = "GW_CPU_STEER")]
static CONFIG: Array<CpuSteerConfig> = Array::with_max_entries(1, 0);

#[map(name = "GW_CPU_SLOTS")]
static SLOTS: Array<u32> = Array::with_max_entries(SLOT_COUNT, 0);

#[map(name = "GW_CPU_STEERED")]
static COUNTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNT_ENTRIES, 0);

/// The XDP action for a frame the guard passed; `parsed`: the guard's parse of `[data, end)`.
#[inline(always)]
pub fn pass(parsed: Option<Parsed>, data: usize, end: usize) -> u32 {
    match CONFIG.get(0) {
        Some(cfg) if cfg.enabled != 0 => {}
        _ => return xdp_action::XDP_PASS,
    }
    let parsed = match parsed {
        Some(parsed) => parsed,
        None => parse(data, end),
    };
    let Parsed::Ip { addr: client, proto: IPPROTO_TCP, .. } = parsed else { return xdp_action::XDP_PASS };
    let Some(cpu) = SLOTS.get(slot_of(client_hash(client))) else { return xdp_action::XDP_PASS };
    let cpu = *cpu;
    if cpu == unsafe { bpf_get_smp_processor_id() } {
        count(LOCAL_INDEX);
        return xdp_action::XDP_PASS;
    }
    // The low bits of the flags are the action when the CPU has no entry: pass here.
    match CPUMAP.redirect(cpu, u64::from(xdp_action::XDP_PASS)) {
        Ok(action) => {
            count(cpu);
            action
        }
        Err(_) => {
            count(FAILED_INDEX);
            xdp_action::XDP_PASS
        }
    }
}

#[inline(always)]
fn count(index: u32) {
    if let Some(slot) = COUNTS.get_ptr_mut(index) {
        // Per-CPU slot: no other CPU writes it.
        unsafe { *slot += 1 };
    }
}
