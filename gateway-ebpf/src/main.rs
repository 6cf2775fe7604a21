//! The guard: one XDP program and one TC ingress classifier with the same logic, plus an empty
//! XDP program (the benchmark's floor). Pipeline per frame: parse → list prefilter (is any allow
//! or deny prefix in the source's /16?) → allow list (bypass) → deny list (drop) → new-source
//! guard → per-source packet bucket and SYN bucket → pass. A SYN to a listening socket may
//! instead be answered with a SYN cookie (`syncookie.rs`) after the lists, skipping the new-source
//! guard (a known source over its SYN bucket is still dropped). UDP to a gatewayd TCP listener's port
//! (nothing serves UDP there) is dropped after the lists, before the buckets. The buckets live in a set-associative
//! array table (`sources.rs`), not an LRU hash: no helper call on the pass path.
//!
//! Must load on Linux 5.10: no atomic whose result is used, bounded loops only, no helpers newer
//! than 5.10. Map layouts and names come from `gateway_common::xdp`.
//!
//! The clock is `bpf_jiffies64() × tick` (inlined by the verifier: no helper call on the pass
//! path), with the tick calibrated by the daemon; the bucket math and its error bounds are in
//! `gateway_common::gcra`. Deny-entry expiries keep `bpf_ktime_get_ns` (only a deny-list hit pays it).
#![no_std]
#![no_main]
// The one atomic the guard needs is written as the exact BPF instruction (see `atomic_add`).
#![feature(asm_experimental_arch)]

mod cpusteer;
mod parse;
mod sources;
mod syncookie;

use core::{
    arch::asm,
    ffi::c_void,
    ptr::{read_volatile, write_volatile},
};

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC, xdp_action},
    helpers::{
        bpf_jiffies64, bpf_ktime_get_ns,
        generated::{bpf_map_lookup_elem, bpf_redirect},
    },
    macros::{classifier, map, xdp},
    maps::{Array, LpmTrie, PerCpuArray, lpm_trie::Key},
    programs::{TcContext, XdpContext},
};
use gateway_common::{
    gcra,
    xdp::{
        COUNTER_ENTRIES, DenyEntry, GuardConfig, LISTED_WORDS, MAX_LIST_ENTRIES, NEW_SOURCE_INSERTED,
        NEW_SOURCE_OVER_CAP, SourceKey, SourceState, UDP_PORT_WORDS, Verdict, counter_index, flags, list_bucket,
    },
};
use parse::Parsed;

#[map(name = "GW_CONFIG")]
static CONFIG: Array<GuardConfig> = Array::with_max_entries(1, 0);

#[map(name = "GW_COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_ENTRIES, 0);

#[map(name = "GW_ALLOW")]
static ALLOW: LpmTrie<[u32; 4], u32> = LpmTrie::with_max_entries(MAX_LIST_ENTRIES, 0);

#[map(name = "GW_DENY")]
static DENY: LpmTrie<[u32; 4], DenyEntry> = LpmTrie::with_max_entries(MAX_LIST_ENTRIES, 0);

#[map(name = "GW_LISTED")]
static LISTED: Array<u64> = Array::with_max_entries(LISTED_WORDS, 0);

#[map(name = "GW_UDP_CLOSED")]
static UDP_CLOSED: Array<u64> = Array::with_max_entries(UDP_PORT_WORDS, 0);

#[map(name = "GW_CLOCK")]
static CLOCK: Array<u64> = Array::with_max_entries(2, 0);

/// Header bytes the TC program makes sure are in the linear part of the skb.
const TC_HEADER_BYTES: u32 = 128;

/// The guard for generic (skb) XDP: no steering. Linux 5.9–5.14 refuse to attach a program
/// that uses a CPUMAP whose entries may hold programs (aya creates it so there) in generic mode
/// (`generic_xdp_install`: EINVAL), and a cpumap redirect needs native XDP anyway.
#[xdp]
pub fn gateway_xdp(ctx: XdpContext) -> u32 {
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    match guard(ctx.data(), ctx.data_end(), ifindex, &syncookie::Xdp(ctx.ctx)).0 {
        Verdict::SynCookie => xdp_action::XDP_TX,
        v if v.is_drop() => xdp_action::XDP_DROP,
        _ => xdp_action::XDP_PASS,
    }
}

/// The guard for native (driver) XDP: the same verdict, then NIC-side steering of what passes,
/// handed the guard's parse of the frame (`None` when the guard is off and did not parse).
#[xdp]
pub fn gateway_xdp_native(ctx: XdpContext) -> u32 {
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    match guard(ctx.data(), ctx.data_end(), ifindex, &syncookie::Xdp(ctx.ctx)) {
        (Verdict::SynCookie, _) => xdp_action::XDP_TX,
        (v, _) if v.is_drop() => xdp_action::XDP_DROP,
        (_, parsed) => cpusteer::pass(parsed, ctx.data(), ctx.data_end()),
    }
}

#[classifier]
pub fn gateway_tc(ctx: TcContext) -> i32 {
    // Headers of a non-linear skb may sit outside the directly readable part: pull them in first,
    // or a well-formed packet would look truncated.
    let want = ctx.len().min(TC_HEADER_BYTES);
    if ((ctx.data_end() - ctx.data()) as u32) < want {
        let _ = ctx.pull_data(want);
    }
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    match guard(ctx.data(), ctx.data_end(), ifindex, &syncookie::Tc(ctx.skb.skb)).0 {
        // The SYN-ACK leaves by the device the SYN came in on (TC_ACT_REDIRECT; on a bad index
        // the helper says TC_ACT_SHOT: the frame is no longer the SYN, dropping it is right).
        Verdict::SynCookie => unsafe { bpf_redirect(ifindex, 0) as i32 },
        v if v.is_drop() => TC_ACT_SHOT as i32,
        // UNSPEC rather than OK: later filters on the device still run.
        _ => TC_ACT_UNSPEC,
    }
}

#[xdp]
pub fn gateway_xdp_empty(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// The calibration probe: both clocks, read back to back.
#[xdp]
pub fn gateway_clock(_ctx: XdpContext) -> u32 {
    let (jiffies, ns) = unsafe { (bpf_jiffies64(), bpf_ktime_get_ns()) };
    if let (Some(j), Some(n)) = (CLOCK.get_ptr_mut(0), CLOCK.get_ptr_mut(1)) {
        unsafe {
            write_volatile(j, jiffies);
            write_volatile(n, ns);
        }
    }
    xdp_action::XDP_PASS
}

/// The guard's clock in ns (see the module comment).
#[inline(always)]
fn now_ns(cfg: &GuardConfig) -> u64 {
    if cfg.tick_ns != 0 {
        gcra::coarse_ns(unsafe { bpf_jiffies64() }, cfg.tick_ns)
    } else {
        unsafe { bpf_ktime_get_ns() }
    }
}

/// `frame`: the program's context, for SYN cookies. Also returns the frame as parsed (`None`
/// when the guard is off and did not parse it), for the steering step to reuse: one parse per
/// frame. The frame is unchanged unless the verdict is `SynCookie` (answered in place).
#[inline(always)]
fn guard<F: syncookie::Frame>(data: usize, end: usize, ifindex: u32, frame: &F) -> (Verdict, Option<Parsed>) {
    let (verdict, parsed) = match CONFIG.get(0) {
        Some(cfg) if cfg.flags & flags::ENABLED != 0 => {
            let parsed = parse::parse(data, end);
            (classify(cfg, parsed, ifindex, frame), Some(parsed))
        }
        _ => (Verdict::Pass, None),
    };
    count(ifindex, verdict as u32);
    (verdict, parsed)
}

#[inline(always)]
fn classify<F: syncookie::Frame>(cfg: &GuardConfig, parsed: Parsed, ifindex: u32, frame: &F) -> Verdict {
    let f = cfg.flags;
    let (addr, v4, l4) = match parsed {
        Parsed::NotIp => return Verdict::Pass,
        Parsed::Malformed => return Verdict::DropMalformed,
        Parsed::Ip { addr, v4, l4, .. } => (addr, v4, l4),
    };
    let syn = l4.syn;
    if f & (flags::ALLOW | flags::DENY) != 0 && listed(&addr) {
        let lpm = Key::new(128, addr);
        if f & flags::ALLOW != 0 && ALLOW.get(&lpm).is_some() {
            return Verdict::PassAllowList;
        }
        if f & flags::DENY != 0 && denied(&lpm) {
            return Verdict::DropDenyList;
        }
    }
    if l4.udp_port != 0 && f & flags::UDP_CLOSED != 0 && udp_closed(l4.udp_port) {
        return Verdict::DropUdpClosed;
    }
    let mask = if v4 { &cfg.mask_v4 } else { &cfg.mask_v6 };
    let key = SourceKey { addr: [addr[0] & mask[0], addr[1] & mask[1], addr[2] & mask[2], addr[3] & mask[3]] };
    if syn && f & flags::SYN_COOKIES != 0 {
        let now = now_ns(cfg);
        if syncookie::engaged(cfg, now) {
            if f & (flags::RATE | flags::SYN) != 0 {
                if let Some(state) = sources::find(&key, cfg) {
                    let verdict = limit(state, cfg, now, syn);
                    if verdict.is_drop() {
                        return verdict;
                    }
                }
            }
            match syncookie::answer(frame) {
                syncookie::Answer::Answered => return Verdict::SynCookie,
                syncookie::Answer::Broken => return Verdict::DropMalformed,
                syncookie::Answer::NotAnswered => {}
            }
        }
    }
    if f & (flags::RATE | flags::SYN) == 0 {
        return Verdict::Pass;
    }
    let now = now_ns(cfg);
    match sources::lookup(&key, cfg, now, syn) {
        sources::Lookup::Known(state) => limit(state, cfg, now, syn),
        sources::Lookup::Inserted => {
            count(ifindex, NEW_SOURCE_INSERTED);
            Verdict::Pass
        }
        sources::Lookup::Overflow(state) => {
            count(ifindex, NEW_SOURCE_OVER_CAP);
            limit(state, cfg, now, syn)
        }
        sources::Lookup::Missing => Verdict::Pass,
    }
}

/// The prefilter: whether any allow or deny prefix may contain an address of `addr`'s /16. An
/// LPM lookup is a helper call (tens of ns); this is an inlined array read and a bit test.
#[inline(always)]
fn listed(addr: &[u32; 4]) -> bool {
    let bucket = list_bucket(addr);
    match LISTED.get(bucket / 64) {
        Some(word) => (*word >> (bucket % 64)) & 1 != 0,
        // Cannot happen (the index is in range); looking the lists up is the safe answer.
        None => true,
    }
}

/// Whether UDP to `port` is dropped: an inlined array read and a bit test (UDP packets only).
#[inline(always)]
fn udp_closed(port: u16) -> bool {
    match UDP_CLOSED.get(u32::from(port) / 64) {
        Some(word) => (*word >> (port % 64)) & 1 != 0,
        None => false,
    }
}

/// A deny entry applies until it expires; the program checks expiry itself so a timed block
/// ends on time even while the daemon is down.
#[inline(always)]
fn denied(lpm: &Key<[u32; 4]>) -> bool {
    // The typed `get` only hands out a shared reference; the hit count needs the value pointer.
    let entry = unsafe {
        bpf_map_lookup_elem(&DENY as *const _ as *mut c_void, lpm as *const _ as *const c_void) as *mut DenyEntry
    };
    if entry.is_null() {
        return false;
    }
    let expires = unsafe { read_volatile(&(*entry).expires_ns) };
    if expires != 0 && unsafe { bpf_ktime_get_ns() } >= expires {
        return false;
    }
    // Racy across CPUs; an approximate count is all `xdp top` needs.
    unsafe { write_volatile(&mut (*entry).hits, read_volatile(&(*entry).hits) + 1) };
    true
}

#[inline(always)]
fn limit(state: *mut SourceState, cfg: &GuardConfig, now: u64, syn: bool) -> Verdict {
    let f = cfg.flags;
    unsafe {
        if syn
            && f & flags::SYN != 0
            && !gcra_charge(&raw mut (*state).syn_tat_ns, now, cfg.syn_interval_ns, cfg.syn_tolerance_ns)
        {
            write_volatile(&mut (*state).syn_dropped, read_volatile(&(*state).syn_dropped) + 1);
            return Verdict::DropSynRateLimit;
        }
        if f & flags::RATE != 0
            && !gcra_charge(&raw mut (*state).tat_ns, now, cfg.pkt_interval_ns, cfg.pkt_tolerance_ns)
        {
            write_volatile(&mut (*state).dropped, read_volatile(&(*state).dropped) + 1);
            return Verdict::DropRateLimit;
        }
    }
    Verdict::Pass
}

/// GCRA: passes while the theoretical arrival time is at most `tolerance` ahead of now, and then
/// moves it `interval` further. The move is a fire-and-forget atomic add (its result unused: fine
/// on 5.10), so concurrent passes on other CPUs are never lost; only the reset of an idle bucket
/// is a plain store.
#[inline(always)]
unsafe fn gcra_charge(tat: *mut u64, now: u64, interval: u64, tolerance: u64) -> bool {
    let t = unsafe { read_volatile(tat) };
    if !gcra::conforms(t, now, tolerance) {
        return false;
    }
    // `gcra::advance`, split so that the common case is an atomic add.
    if t <= now {
        unsafe { write_volatile(tat, now + interval) };
    } else {
        unsafe { atomic_add(tat, interval) };
    }
    true
}

/// `lock *(u64 *)(dst + 0) += value`: the atomic add without fetch, which every kernel since 4.x
/// accepts (5.10 rejects the fetching form). Written as the instruction itself because core's
/// `fetch_add` is not available for the BPF target, and so no compiler can turn it into the
/// fetching form.
#[inline(always)]
unsafe fn atomic_add(dst: *mut u64, value: u64) {
    unsafe { asm!("lock *(u64 *)({0} + 0) += {1}", in(reg) dst, in(reg) value, options(nostack)) };
}

#[inline(always)]
fn count(ifindex: u32, counter: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter_index(ifindex, counter)) {
        // Per-CPU slot: no other CPU writes it.
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
