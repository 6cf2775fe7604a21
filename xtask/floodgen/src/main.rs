//! The flood generator's XDP program, run by `BPF_PROG_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES`
//! (as xdp-tools' xdp-trafgen does): the kernel hands it one page-pool frame per repetition,
//! initialised once from the template xtask built (`packet::build`, valid checksums) and
//! recycled with whatever this program left in it. The program writes the next source of its
//! scheme, source port and sequence number, updates the IP and TCP/UDP checksums incrementally
//! from what is in the frame now, and redirects it to the attacker's veth end, whose
//! `ndo_xdp_xmit` puts the frame on the gateway end's receive ring: the gateway's veth gets
//! `xdp_frame`s in NAPI, as a NIC driver gets DMA buffers, with no skb built by a sender.
//!
//! Bench tooling, never loaded by gatewayd. Config and counters in one array (`FEED`).
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::bpf_redirect,
    macros::{map, xdp},
    maps::Array,
    programs::XdpContext,
};
use floodgen::{
    CsumUpdate,
    frame::{ETH_LEN, PROTO_TCP, PROTO_UDP},
    spoofed_v4, spoofed_v6_words, sport, v4_index, v6_index,
};

/// `[scheme, ifindex to redirect to, IPv4 frames made, IPv6 frames made]`: xtask writes the
/// first two before the runs and reads the counters after them. One generator thread runs the
/// program, one run at a time, so the counters are plain read-modify-writes.
#[map(name = "FEED")]
static FEED: Array<u64> = Array::with_max_entries(4, 0);

const SCHEME: u32 = 0;
const IFINDEX: u32 = 1;
const COUNT_V4: u32 = 2;
const COUNT_V6: u32 = 3;

#[xdp]
pub fn floodgen(ctx: XdpContext) -> u32 {
    match generate(&ctx) {
        // SAFETY: a helper call with plain integer arguments.
        Some(ifindex) => unsafe { bpf_redirect(ifindex, 0) as u32 },
        None => xdp_action::XDP_ABORTED,
    }
}

#[inline(always)]
fn generate(ctx: &XdpContext) -> Option<u32> {
    let scheme = *FEED.get(SCHEME)?;
    let ifindex = *FEED.get(IFINDEX)? as u32;
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + ETH_LEN > end {
        return None;
    }
    let p = data as *mut u8;
    // SAFETY (here and below): every offset was checked against `end` just before its use.
    match unsafe { get16(p, 12) } {
        0x0800 => {
            const IP: usize = ETH_LEN;
            if data + IP + 20 > end {
                return None;
            }
            let k = next(COUNT_V4)?;
            let n = spoofed_v4(v4_index(scheme, k));
            let new = [(n >> 16) as u16, n as u16];
            let (old, proto) = unsafe { ([get16(p, IP + 12), get16(p, IP + 14)], *p.add(IP + 9)) };
            unsafe {
                let ip_sum = CsumUpdate::new(get16(p, IP + 10)).word(old[0], new[0]).word(old[1], new[1]);
                put16(p, IP + 12, new[0]);
                put16(p, IP + 14, new[1]);
                put16(p, IP + 10, ip_sum.finish(false));
            }
            l4(data, end, IP + 20, proto, old, new, k)?;
        }
        0x86DD => {
            const IP: usize = ETH_LEN;
            if data + IP + 40 > end {
                return None;
            }
            let k = next(COUNT_V6)?;
            let new = spoofed_v6_words(v6_index(scheme, k));
            let mut old = [0u16; 8];
            let proto = unsafe { *p.add(IP + 6) };
            for (i, word) in old.iter_mut().enumerate() {
                unsafe {
                    *word = get16(p, IP + 8 + 2 * i);
                    put16(p, IP + 8 + 2 * i, new[i]);
                }
            }
            l4(data, end, IP + 40, proto, old, new, k)?;
        }
        _ => return None,
    }
    Some(ifindex)
}

/// The next frame number of the family counted at `index`.
#[inline(always)]
fn next(index: u32) -> Option<u64> {
    let counter = FEED.get_ptr_mut(index)?;
    // SAFETY: a valid map value; only this program writes it, one run at a time.
    unsafe {
        let k = *counter;
        *counter = k + 1;
        Some(k)
    }
}

/// Writes the source port (and the TCP sequence number) of frame `k` and updates the TCP or UDP
/// checksum for them and for the source address words `old` → `new` (the pseudo-header's).
#[inline(always)]
fn l4<const N: usize>(
    data: usize,
    end: usize,
    at: usize,
    proto: u8,
    old: [u16; N],
    new: [u16; N],
    k: u64,
) -> Option<()> {
    let p = data as *mut u8;
    let mut sum;
    let csum_at;
    // SAFETY: as in `generate`.
    unsafe {
        match proto {
            PROTO_TCP => {
                if data + at + 20 > end {
                    return None;
                }
                csum_at = at + 16;
                sum = CsumUpdate::new(get16(p, csum_at));
                let seq = k as u32;
                let (hi, lo) = ((seq >> 16) as u16, seq as u16);
                sum = sum.word(get16(p, at + 4), hi).word(get16(p, at + 6), lo);
                put16(p, at + 4, hi);
                put16(p, at + 6, lo);
            }
            PROTO_UDP => {
                if data + at + 8 > end {
                    return None;
                }
                csum_at = at + 6;
                sum = CsumUpdate::new(get16(p, csum_at));
            }
            _ => return None,
        }
        let port = sport(k);
        sum = sum.word(get16(p, at), port);
        put16(p, at, port);
        for i in 0..N {
            sum = sum.word(old[i], new[i]);
        }
        put16(p, csum_at, sum.finish(proto == PROTO_UDP));
    }
    Some(())
}

#[inline(always)]
unsafe fn get16(p: *mut u8, at: usize) -> u16 {
    unsafe { u16::from_be_bytes([*p.add(at), *p.add(at + 1)]) }
}

#[inline(always)]
unsafe fn put16(p: *mut u8, at: usize, value: u16) {
    let [hi, lo] = value.to_be_bytes();
    unsafe {
        *p.add(at) = hi;
        *p.add(at + 1) = lo;
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
