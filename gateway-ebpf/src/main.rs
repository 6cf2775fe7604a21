#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, macros::map, macros::xdp, maps::PerCpuArray, programs::XdpContext};
use gateway_common::xdp::{VERDICT_COUNT, Verdict};

#[map(name = "GW_VERDICTS")]
static VERDICTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(VERDICT_COUNT, 0);

#[xdp]
pub fn gateway_xdp(ctx: XdpContext) -> u32 {
    match try_gateway_xdp(&ctx) {
        Ok(action) => action,
        Err(()) => xdp_action::XDP_ABORTED,
    }
}

fn try_gateway_xdp(_ctx: &XdpContext) -> Result<u32, ()> {
    count(Verdict::Pass);
    Ok(xdp_action::XDP_PASS)
}

#[inline(always)]
fn count(verdict: Verdict) {
    if let Some(slot) = VERDICTS.get_ptr_mut(verdict as u32) {
        // Per-CPU slot: no other CPU writes it, so a plain add is race free.
        unsafe { *slot += 1 };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
