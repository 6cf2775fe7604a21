//! NIC-side steering (see `gateway_common::cpusteer`): after the guard passes a TCP packet, send
//! it to the CPU of its client's slot through the cpumap, so the kernel's TCP processing of the
//! connection runs on the CPU its worker is pinned to. Off (plain `XDP_PASS`) until the daemon
//! enables it, which it does only for native XDP.
//!
//! Like Katran and Cilium: only TCP is steered (other traffic passes where it arrived), dropped
//! packets are never redirected (this runs at the pass verdict only), a packet already on its CPU
//! passes without the extra hop, and a missing cpumap entry passes rather than drops. The key is
//! the client address alone, the same as the `sk_reuseport` program's, so fragments and every
//! connection of a client stay on one CPU; untagged Ethernet only (tagged frames pass unsteered).

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_get_smp_processor_id,
    macros::map,
    maps::{Array, CpuMap, PerCpuArray},
};
use gateway_common::{
    cpusteer::{COUNT_ENTRIES, CpuSteerConfig, FAILED_INDEX, LOCAL_INDEX, MAX_CPUS},
    steer::{SLOT_COUNT, client_hash, slot_of},
    xdp::mapped_v4,
};

use crate::parse::{ETH_HLEN, ETH_P_IP, ETH_P_IPV6, IPPROTO_TCP, be16_at, has, u8_at, word_at};

#[map(name = "GW_CPUMAP")]
static CPUMAP: CpuMap = CpuMap::with_max_entries(MAX_CPUS, 0);

#[map(name = "GW_CPU_STEER")]
static CONFIG: Array<CpuSteerConfig> = Array::with_max_entries(1, 0);

#[map(name = "GW_CPU_SLOTS")]
static SLOTS: Array<u32> = Array::with_max_entries(SLOT_COUNT, 0);

#[map(name = "GW_CPU_STEERED")]
static COUNTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNT_ENTRIES, 0);

/// The XDP action for a frame the guard passed.
#[inline(always)]
pub fn pass(data: usize, end: usize) -> u32 {
    match CONFIG.get(0) {
        Some(cfg) if cfg.enabled != 0 => {}
        _ => return xdp_action::XDP_PASS,
    }
    let Some(client) = tcp_client(data, end) else { return xdp_action::XDP_PASS };
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

/// The source address (mapped form) of an untagged TCP packet; `None` for anything else.
#[inline(always)]
fn tcp_client(data: usize, end: usize) -> Option<[u32; 4]> {
    if !has(data, ETH_HLEN, end) {
        return None;
    }
    let ip = data + ETH_HLEN;
    match unsafe { be16_at(data + 12) } {
        ETH_P_IP if has(ip, 20, end) && unsafe { u8_at(ip + 9) } == IPPROTO_TCP => {
            let mut addr = mapped_v4([0; 4]);
            addr[3] = unsafe { word_at(ip + 12) };
            Some(addr)
        }
        ETH_P_IPV6 if has(ip, 40, end) && unsafe { u8_at(ip + 6) } == IPPROTO_TCP => {
            Some(unsafe { [word_at(ip + 8), word_at(ip + 12), word_at(ip + 16), word_at(ip + 20)] })
        }
        _ => None,
    }
}

#[inline(always)]
fn count(index: u32) {
    if let Some(slot) = COUNTS.get_ptr_mut(index) {
        // Per-CPU slot: no other CPU writes it.
        unsafe { *slot += 1 };
    }
}
