//! SYN cookies in XDP and TC: a SYN to a listening socket is answered here, with the kernel's own
//! cookie, by rewriting the frame into the SYN-ACK and sending it back out (`XDP_TX`; in TC a
//! redirect to the egress of the device it came in on). A spoofed SYN then costs a socket lookup
//! and a few stores instead of the kernel's whole receive path; the client's ACK goes to the
//! kernel, whose cookie check accepts it (`bpf_tcp_gen_syncookie` marks the listener as recently
//! overflowed, as its own cookies do).
//!
//! `bpf_tcp_gen_syncookie` answers only when the kernel itself would send a cookie: its SYN queue
//! is full, or `net.ipv4.tcp_syncookies = 2`. Otherwise the SYN passes and the kernel answers it
//! (a normal, stateful handshake). The SYN-ACK's layout and checksums are in
//! `gateway_common::syncookie` (what it carries and what it cannot: the timestamp option).
//!
//! Handled: untagged Ethernet, IPv4 without options and not fragmented, IPv6 with TCP as the
//! first next header. Anything else passes to the kernel. Helpers used exist since Linux 5.3 in
//! both program types (`bpf_skc_lookup_tcp`, `bpf_tcp_gen_syncookie`, and `bpf_xdp_adjust_tail`
//! or `bpf_skb_change_tail` + `bpf_redirect`).
//!
//! TC caveat: an skb a local stack sent over a veth (or a virtio device) may arrive marked
//! `CHECKSUM_PARTIAL` and leaves with that mark; a local receiver trusts it as it trusted the SYN,
//! a device finishing the offload would not. Frames from a wire never carry it.

use core::{
    ffi::c_void,
    mem::size_of,
    ptr::{read_volatile, write_volatile},
};

use aya_ebpf::{
    bindings::{
        __sk_buff, BPF_F_CURRENT_NETNS, bpf_sock, bpf_sock_tuple, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1,
        bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2, tcphdr, xdp_md,
    },
    helpers::generated::{
        bpf_sk_release, bpf_skb_change_tail, bpf_skc_lookup_tcp, bpf_tcp_gen_syncookie, bpf_xdp_adjust_tail,
    },
    macros::map,
    maps::PerCpuArray,
};
use gateway_common::{
    gcra,
    syncookie::{
        SYNACK_FRAME_V4, SYNACK_FRAME_V6, SYNACK_TCP_LEN, SYNACK_TTL, SynAck, SynWindow, TCP_LISTEN, ipv4_words,
        tcp_checksum_from,
    },
    xdp::GuardConfig,
};

use crate::parse::{ETH_HLEN, ETH_P_IP, ETH_P_IPV6, IPPROTO_TCP, be16_at, has, u8_at, word_at};

#[map(name = "GW_SYNWIN")]
static SYN_WINDOW: PerCpuArray<SynWindow> = PerCpuArray::with_max_entries(1, 0);

/// The program context a SYN is answered in: what differs between XDP and TC.
pub trait Frame {
    /// The context pointer the helpers take.
    fn ctx(&self) -> *mut c_void;
    /// `[data, data_end)` as the program sees it now (reload after a resize).
    fn bounds(&self) -> (usize, usize);
    /// Makes the frame `len` bytes long (`delta` from now); whether it did.
    fn resize(&self, len: usize, delta: i64) -> bool;
}

/// A context type whose `data`/`data_end` fields bound the frame, with its way to resize it.
macro_rules! frame {
    ($(#[$doc:meta])* $name:ident($raw:ty), |$ctx:ident, $len:ident, $delta:ident| $resize:expr) => {
        $(#[$doc])*
        pub struct $name(pub *mut $raw);

        impl Frame for $name {
            #[inline(always)]
            fn ctx(&self) -> *mut c_void {
                self.0.cast()
            }

            #[inline(always)]
            fn bounds(&self) -> (usize, usize) {
                unsafe { ((*self.0).data as usize, (*self.0).data_end as usize) }
            }

            #[inline(always)]
            fn resize(&self, $len: usize, $delta: i64) -> bool {
                let $ctx = self.0;
                $resize
            }
        }
    };
}

frame!(
    /// An XDP frame.
    Xdp(xdp_md),
    |ctx, _len, delta| unsafe { bpf_xdp_adjust_tail(ctx, delta as i32) == 0 }
);

frame!(
    /// A TC skb (its data starts at the Ethernet header, at ingress too). Resizing trims or grows
    /// the whole skb to `len` and makes it linear and writable that far.
    Tc(__sk_buff),
    |skb, len, _delta| unsafe { bpf_skb_change_tail(skb, len as u32, 0) == 0 }
);

/// What became of the frame.
pub enum Answer {
    /// Rewritten into the SYN-ACK: send it back out.
    Answered,
    /// Untouched (no listener, the kernel wants no cookie, a layout not handled): on to the rest
    /// of the guard.
    NotAnswered,
    /// Resized but then too short to write (cannot happen: the size was just set): dropped.
    Broken,
}

/// Whether cookies are engaged on this CPU: always (threshold 0), or once it has seen more SYNs
/// this second than the threshold. Counts this SYN. A per-CPU window: its only writer.
#[inline(always)]
pub fn engaged(cfg: &GuardConfig, now: u64) -> bool {
    if cfg.syn_cookie_threshold == 0 {
        return true;
    }
    let Some(window) = SYN_WINDOW.get_ptr_mut(0) else { return false };
    let window = unsafe { &mut *window };
    if now.wrapping_sub(window.start_ns) >= gcra::NS_PER_SEC {
        window.start_ns = now;
        window.syns = 0;
    }
    window.syns += 1;
    window.syns > cfg.syn_cookie_threshold
}

/// Answers the SYN in `frame` with a cookie, if the kernel wants one (module comment).
#[inline(always)]
pub fn answer<F: Frame>(frame: &F) -> Answer {
    let (data, end) = frame.bounds();
    let Some(v4) = syn_layout(data, end) else { return Answer::NotAnswered };
    let sk = lookup(frame.ctx(), data, end, v4);
    if sk.is_null() {
        return Answer::NotAnswered;
    }
    // A connection of this 4-tuple (established, time-wait) is the kernel's to handle.
    let result = if unsafe { (*sk).state } == TCP_LISTEN { gen_cookie(sk, data, end, v4) } else { -1 };
    unsafe { bpf_sk_release(sk.cast()) };
    if result < 0 {
        return Answer::NotAnswered;
    }
    let (cookie, mss) = (result as u32, (result >> 32) as u16);
    // Resize first (options past the answer's are cut, or room made for the MSS option): the
    // headers the answer reuses stay where they are.
    let new_len = if v4 { SYNACK_FRAME_V4 } else { SYNACK_FRAME_V6 };
    let delta = new_len as i64 - (end - data) as i64;
    if delta != 0 && !frame.resize(new_len, delta) {
        return Answer::NotAnswered;
    }
    let (data, end) = frame.bounds();
    if !has(data, new_len, end) {
        return Answer::Broken;
    }
    // Back to where it came from: MACs, addresses and ports swap places.
    swap_words(data, data + 6, 3);
    let ip = data + ETH_HLEN;
    let (addr_sum, th) = if v4 {
        let sum = swap_words(ip + 12, ip + 16, 2);
        let src = unsafe { [be16_at(ip + 12), be16_at(ip + 14)] };
        let dst = unsafe { [be16_at(ip + 16), be16_at(ip + 18)] };
        write_words(ip, &ipv4_words(src, dst));
        (sum, ip + 20)
    } else {
        let sum = swap_words(ip + 8, ip + 24, 8);
        // Version 6, no traffic class or flow label; payload length; next header TCP, hop limit.
        write_words(ip, &[0x6000, 0, SYNACK_TCP_LEN as u16, (6 << 8) | SYNACK_TTL as u16]);
        (sum, ip + 40)
    };
    let answer = unsafe {
        SynAck {
            local_port: be16_at(th + 2),
            remote_port: be16_at(th),
            cookie,
            client_seq: (be16_at(th + 4) as u32) << 16 | be16_at(th + 6) as u32,
            mss,
        }
    };
    let mut words = answer.tcp_words();
    words[8] = tcp_checksum_from(addr_sum, &words);
    write_words(th, &words);
    Answer::Answered
}

/// `Some(is IPv4)` for a SYN alone (no ACK, RST or FIN: what the kernel's cookie helper accepts)
/// in a layout handled here (module comment).
#[inline(always)]
fn syn_layout(data: usize, end: usize) -> Option<bool> {
    if !has(data, ETH_HLEN, end) {
        return None;
    }
    let ip = data + ETH_HLEN;
    let (v4, th) = match unsafe { be16_at(data + 12) } {
        ETH_P_IP => {
            // IHL 5 (no options), TCP, neither a fragment nor "more fragments".
            if !has(ip, 20, end)
                || unsafe { u8_at(ip) } != 0x45
                || unsafe { u8_at(ip + 9) } != IPPROTO_TCP
                || unsafe { be16_at(ip + 6) } & 0x3fff != 0
            {
                return None;
            }
            (true, ip + 20)
        }
        ETH_P_IPV6 => {
            if !has(ip, 40, end) || unsafe { u8_at(ip) } >> 4 != 6 || unsafe { u8_at(ip + 6) } != IPPROTO_TCP {
                return None;
            }
            (false, ip + 40)
        }
        _ => return None,
    };
    if !has(th, 20, end) || unsafe { u8_at(th + 13) } & 0x17 != 0x02 {
        return None;
    }
    Some(v4)
}

/// The socket for the SYN's 4-tuple as the packet carries it (remote → local, network order):
/// the listener, or a connection of the same 4-tuple. Null when none. The families differ only
/// in the tuple's addresses; the ports and the lookup are one path.
#[inline(always)]
fn lookup(ctx: *mut c_void, data: usize, end: usize, v4: bool) -> *mut bpf_sock {
    let ip = data + ETH_HLEN;
    // Constant bounds per family: the verifier tracks them from `data`, not through an offset
    // that depends on the branch.
    if v4 {
        if !has(ip, 24, end) {
            return core::ptr::null_mut();
        }
        let (sport, dport) = ports(ip + 20);
        let mut tuple = unsafe {
            bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 {
                saddr: word_at(ip + 12),
                daddr: word_at(ip + 16),
                sport,
                dport,
            }
        };
        skc_lookup(ctx, &mut tuple)
    } else {
        if !has(ip, 44, end) {
            return core::ptr::null_mut();
        }
        let (sport, dport) = ports(ip + 40);
        let mut tuple = unsafe {
            bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2 {
                saddr: [word_at(ip + 8), word_at(ip + 12), word_at(ip + 16), word_at(ip + 20)],
                daddr: [word_at(ip + 24), word_at(ip + 28), word_at(ip + 32), word_at(ip + 36)],
                sport,
                dport,
            }
        };
        skc_lookup(ctx, &mut tuple)
    }
}

/// The TCP header's source and destination ports at `th`, in network order (the caller checked
/// the frame holds them).
#[inline(always)]
fn ports(th: usize) -> (u16, u16) {
    unsafe { (be16_at(th).to_be(), be16_at(th + 2).to_be()) }
}

/// `bpf_skc_lookup_tcp` on a tuple of either family: the helper tells them apart by its size.
#[inline(always)]
fn skc_lookup<T>(ctx: *mut c_void, tuple: &mut T) -> *mut bpf_sock {
    unsafe {
        bpf_skc_lookup_tcp(
            ctx,
            (tuple as *mut T).cast::<bpf_sock_tuple>(),
            size_of::<T>() as u32,
            BPF_F_CURRENT_NETNS as u64,
            0,
        )
    }
}

/// `bpf_tcp_gen_syncookie` wants the TCP header length to be exactly the data offset, as a
/// constant the verifier can check against the frame: one call per possible length.
#[inline(always)]
fn gen_cookie(sk: *mut bpf_sock, data: usize, end: usize, v4: bool) -> i64 {
    let ip = data + ETH_HLEN;
    let (iph_len, th) = if v4 { (20u32, ip + 20) } else { (40, ip + 40) };
    if !has(th, 20, end) {
        return -1;
    }
    let doff = (unsafe { u8_at(th + 12) } >> 4) as usize;
    macro_rules! call {
        ($($words:literal)*) => {
            match doff {
                $($words => {
                    if !has(th, $words * 4, end) {
                        return -1;
                    }
                    unsafe {
                        bpf_tcp_gen_syncookie(
                            sk.cast::<c_void>(),
                            ip as *mut c_void,
                            iph_len,
                            th as *mut tcphdr,
                            $words * 4,
                        )
                    }
                })*
                _ => -1,
            }
        };
    }
    call!(5 6 7 8 9 10 11 12 13 14 15)
}

/// Swaps `n` 16-bit words at `a` with those at `b`; returns their sum (both sides: the
/// pseudo-header's address part, which the swap does not change).
#[inline(always)]
fn swap_words(a: usize, b: usize, n: usize) -> u32 {
    let mut sum = 0u32;
    for i in 0..8 {
        if i < n {
            unsafe {
                let (pa, pb) = ((a + 2 * i) as *mut u16, (b + 2 * i) as *mut u16);
                let (x, y) = (read_volatile(pa), read_volatile(pb));
                write_volatile(pa, y);
                write_volatile(pb, x);
                sum += u16::from_be(x) as u32 + u16::from_be(y) as u32;
            }
        }
    }
    sum
}

/// Stores host-order words big-endian at `at` (the caller checked the frame is long enough).
#[inline(always)]
fn write_words(at: usize, words: &[u16]) {
    for (i, w) in words.iter().enumerate() {
        unsafe { write_volatile((at + 2 * i) as *mut u16, w.to_be()) };
    }
}
