//! SO_REUSEPORT steering: picks the worker socket for each new connection of one listener, by
//! the receiving CPU or by a hash of the client address, through a slot table the daemon writes
//! (see `gateway_common::steer`). When the chosen worker's socket is not in the array (not yet
//! registered, or draining), the kernel's own hash picks among the group.
#![no_std]
#![no_main]

use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext,
    bindings::{bpf_hdr_start_off::BPF_HDR_START_NET, sk_action},
    helpers::{bpf_get_smp_processor_id, generated::bpf_skb_load_bytes_relative},
    macros::{map, sk_reuseport},
    maps::{Array, PerCpuArray, ReusePortSockArray},
    programs::SkReuseportContext,
};
use gateway_common::{
    steer::{COUNT_ENTRIES, FALLBACK_INDEX, MAX_WORKERS, SLOT_COUNT, SteerConfig, client_hash, policy, slot_of},
    xdp::mapped_v4,
};

#[map(name = "GW_SOCKETS")]
static SOCKETS: ReusePortSockArray = ReusePortSockArray::with_max_entries(MAX_WORKERS, 0);

#[map(name = "GW_STEER")]
static CONFIG: Array<SteerConfig> = Array::with_max_entries(1, 0);

#[map(name = "GW_SLOTS")]
static SLOTS: Array<u32> = Array::with_max_entries(SLOT_COUNT, 0);

#[map(name = "GW_STEERED")]
static COUNTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNT_ENTRIES, 0);

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

#[sk_reuseport]
pub fn gateway_steer(ctx: SkReuseportContext) -> u32 {
    let Some(cfg) = CONFIG.get(0) else { return sk_action::SK_PASS };
    let key = match cfg.policy {
        policy::CPU => unsafe { bpf_get_smp_processor_id() },
        policy::CLIENT_HASH => match client_words(&ctx) {
            Some(words) => client_hash(words),
            None => return sk_action::SK_PASS,
        },
        _ => return sk_action::SK_PASS,
    };
    let Some(worker) = SLOTS.get(slot_of(key)) else { return sk_action::SK_PASS };
    let worker = *worker;
    let counter = match SOCKETS.select_reuseport(&ctx, worker) {
        Ok(()) => worker,
        // Not in the array: the kernel's hash over the group decides.
        Err(_) => FALLBACK_INDEX,
    };
    if let Some(slot) = COUNTS.get_ptr_mut(counter) {
        // Per-CPU slot: no other CPU writes it.
        unsafe { *slot += 1 };
    }
    sk_action::SK_PASS
}

/// The client (source) address in the mapped 16-byte form, read relative to the network header
/// (the context's own data starts at the transport header).
#[inline(always)]
fn client_words(ctx: &SkReuseportContext) -> Option<[u32; 4]> {
    let proto = u16::from_be(ctx.eth_protocol() as u16);
    if proto == ETH_P_IP {
        let mut src = [0u8; 4];
        load(ctx, 12, &mut src)?;
        Some(mapped_v4(src))
    } else if proto == ETH_P_IPV6 {
        let mut src = [0u32; 4];
        load(ctx, 8, &mut src)?;
        Some(src)
    } else {
        None
    }
}

#[inline(always)]
fn load<T>(ctx: &SkReuseportContext, offset: u32, to: &mut T) -> Option<()> {
    let ret = unsafe {
        bpf_skb_load_bytes_relative(
            ctx.as_ptr() as *const c_void,
            offset,
            to as *mut T as *mut c_void,
            core::mem::size_of::<T>() as u32,
            BPF_HDR_START_NET,
        )
    };
    (ret == 0).then_some(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
