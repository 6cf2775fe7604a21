//! The XDP/TC guard's shared vocabulary: program and map names, the config the daemon writes, the
//! keys and values of the source, allow and deny maps, and the counter layout.
//!
//! Addresses are 16 bytes everywhere, IPv4 mapped into IPv6 (`::ffff:a.b.c.d`), stored as four
//! `u32` words holding the address bytes in network order (read with native endianness, so a
//! word is only ever compared, masked or hashed, never interpreted as a number).

/// The `#[xdp]` entry point.
pub const XDP_PROGRAM: &str = "gateway_xdp";
/// The same guard plus cpumap steering, attached in native (driver) mode only: see the eBPF
/// program for why generic mode gets the program without it.
pub const XDP_NATIVE_PROGRAM: &str = "gateway_xdp_native";
/// The `#[classifier]` (TC ingress) entry point with the same logic, for devices without XDP.
pub const TC_PROGRAM: &str = "gateway_tc";
/// An XDP program that only returns `XDP_PASS`: the floor the benchmark compares against.
pub const EMPTY_PROGRAM: &str = "gateway_xdp_empty";
/// An XDP program (never attached) that writes `bpf_jiffies64` and `bpf_ktime_get_ns` into
/// [`CLOCK_MAP`]: the daemon runs it twice to calibrate the tick (see [`crate::gcra`]).
pub const CLOCK_PROGRAM: &str = "gateway_clock";

/// Array, one [`GuardConfig`] at index 0, written by the daemon.
pub const CONFIG_MAP: &str = "GW_CONFIG";
/// Per-CPU array of `u64` counters, see [`counter_index`].
pub const COUNTERS_MAP: &str = "GW_COUNTERS";
/// Array of [`crate::sources::SourceSet`]: the set-associative table of token bucket pairs, one
/// way per source (prefix), plus the overflow bucket (see [`crate::sources`]).
pub const SOURCES_MAP: &str = "GW_SOURCES";
/// LPM trie [`LpmAddr`] → `u32` (unused): sources that bypass every check.
pub const ALLOW_MAP: &str = "GW_ALLOW";
/// LPM trie [`LpmAddr`] → [`DenyEntry`]: sources that are dropped.
pub const DENY_MAP: &str = "GW_DENY";
/// Array of [`LISTED_WORDS`] `u64`: one bit per [`list_bucket`], set when some allow or deny
/// prefix may contain an address of that bucket. A clear bit lets the program skip both LPM
/// lookups; the daemon derives it from the lists (a superset: never a false "not listed").
pub const LISTED_MAP: &str = "GW_LISTED";
/// Per-CPU array, one [`NewSourceWindow`]: this CPU's budget of busy evictions.
pub const NEW_SOURCES_MAP: &str = "GW_NEWSRC";
/// Array of [`UDP_PORT_WORDS`] `u64`: one bit per UDP destination port that nothing on this
/// host serves over UDP but a gatewayd TCP listener uses (see [`flags::UDP_CLOSED`]). Not
/// pinned: written in full at every load and reload.
pub const UDP_CLOSED_MAP: &str = "GW_UDP_CLOSED";
/// Size of [`UDP_CLOSED_MAP`]: 65,536 ports, 64 per word.
pub const UDP_PORT_WORDS: u32 = 65_536 / 64;
/// Array of two `u64`: jiffies and CLOCK_MONOTONIC ns, as [`CLOCK_PROGRAM`] last read them.
pub const CLOCK_MAP: &str = "GW_CLOCK";

/// Default capacity (ways) of [`SOURCES_MAP`]; the daemon sets the configured one at load.
pub const DEFAULT_MAX_SOURCES: u32 = 262_144;
/// Capacity of each LPM trie.
pub const MAX_LIST_ENTRIES: u32 = 65_536;

/// Buckets of the list prefilter: 2^16 for IPv6 addresses (by their first 16 bits), then 2^16
/// for IPv4 (mapped) addresses (by the IPv4 address's first 16 bits).
pub const LIST_BUCKETS: u32 = 2 << 16;
/// Size of [`LISTED_MAP`].
pub const LISTED_WORDS: u32 = LIST_BUCKETS / 64;

/// The prefilter bucket of an address: its /16, IPv4 (mapped) and IPv6 apart. Decided by the
/// address itself, like the LPM tries decide (an IPv6 packet from `::ffff:a.b.c.d` meets the
/// IPv4 entries there, so it does here too).
#[inline(always)]
pub const fn list_bucket(addr: &[u32; 4]) -> u32 {
    if addr[0] == 0 && addr[1] == 0 && addr[2] == mapped_v4([0; 4])[2] {
        (1 << 16) | first16(addr[3])
    } else {
        first16(addr[0])
    }
}

/// The first two bytes of an address word (bytes in memory order), as a number.
#[inline(always)]
const fn first16(word: u32) -> u32 {
    let b = word.to_ne_bytes();
    ((b[0] as u32) << 8) | b[1] as u32
}

/// Counters are kept per interface: slot = ifindex when below this, else slot 0 (ifindex 0
/// never names a device, so slot 0 collects the rare interfaces with larger indexes).
pub const IFINDEX_SLOTS: u32 = 256;
/// Counters per interface slot: six verdicts, the new-source guard's two outcomes, then the
/// verdicts added since ([`Verdict::DropUdpClosed`], [`Verdict::SynCookie`]).
pub const COUNTERS_PER_SLOT: u32 = 10;
/// Size of [`COUNTERS_MAP`].
pub const COUNTER_ENTRIES: u32 = IFINDEX_SLOTS * COUNTERS_PER_SLOT;

/// Counter: a source without a way got one (its set's least busy way).
pub const NEW_SOURCE_INSERTED: u32 = 6;
/// Counter: a new source found every way of its set busy after this CPU's per-second budget of
/// busy evictions was spent; it shares the overflow bucket instead of resetting a tracked one.
pub const NEW_SOURCE_OVER_CAP: u32 = 7;

/// The slot of an interface in [`COUNTERS_MAP`].
#[inline(always)]
pub const fn ifindex_slot(ifindex: u32) -> u32 {
    if ifindex < IFINDEX_SLOTS { ifindex } else { 0 }
}

/// Index of `counter` (a [`Verdict`] or one of the `NEW_SOURCE_*` values) for `ifindex`.
#[inline(always)]
pub const fn counter_index(ifindex: u32, counter: u32) -> u32 {
    ifindex_slot(ifindex) * COUNTERS_PER_SLOT + counter
}

/// What the guard decided for one frame; also a counter index within an interface slot.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Passed every check (also: non-IP frames such as ARP, which carry no source address).
    Pass = 0,
    /// The source's packet bucket was empty.
    DropRateLimit = 1,
    /// A TCP SYN (SYN without ACK) found the source's SYN bucket empty.
    DropSynRateLimit = 2,
    /// The source is in the deny list.
    DropDenyList = 3,
    /// The source is in the allow list: no further checks.
    PassAllowList = 4,
    /// A header the frame announces is cut short or impossible (see the parser's table).
    DropMalformed = 5,
    /// UDP to a port of a gatewayd TCP listener, where nothing serves UDP. (Index 8: 6 and 7 are
    /// the new-source counters.)
    DropUdpClosed = 8,
    /// A TCP SYN to a listening socket, answered with the kernel's SYN cookie (the frame goes back
    /// out as the SYN-ACK: `XDP_TX`, or in TC a redirect to the device it came in on); see
    /// [`crate::syncookie`].
    SynCookie = 9,
}

/// Number of [`Verdict`] variants.
pub const VERDICT_COUNT: u32 = 8;

impl Verdict {
    /// Every verdict, in index order.
    pub const ALL: [Verdict; VERDICT_COUNT as usize] = [
        Verdict::Pass,
        Verdict::DropRateLimit,
        Verdict::DropSynRateLimit,
        Verdict::DropDenyList,
        Verdict::PassAllowList,
        Verdict::DropMalformed,
        Verdict::DropUdpClosed,
        Verdict::SynCookie,
    ];

    /// The `verdict` label value used in metrics.
    pub const fn label(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::DropRateLimit => "drop_ratelimit",
            Verdict::DropSynRateLimit => "drop_syn_ratelimit",
            Verdict::DropDenyList => "drop_denylist",
            Verdict::PassAllowList => "pass_allowlist",
            Verdict::DropMalformed => "drop_malformed",
            Verdict::DropUdpClosed => "drop_udp_closed",
            Verdict::SynCookie => "syn_cookie",
        }
    }

    /// Whether the frame is dropped.
    pub const fn is_drop(self) -> bool {
        matches!(
            self,
            Verdict::DropRateLimit
                | Verdict::DropSynRateLimit
                | Verdict::DropDenyList
                | Verdict::DropMalformed
                | Verdict::DropUdpClosed
        )
    }
}

/// Bits of [`GuardConfig::flags`].
pub mod flags {
    /// Master switch; without it every frame passes (and is counted as `pass`).
    pub const ENABLED: u64 = 1;
    /// Look sources up in the allow list.
    pub const ALLOW: u64 = 1 << 1;
    /// Look sources up in the deny list.
    pub const DENY: u64 = 1 << 2;
    /// Per-source packet bucket.
    pub const RATE: u64 = 1 << 3;
    /// Per-source SYN bucket.
    pub const SYN: u64 = 1 << 4;
    /// Drop UDP to the ports marked in [`super::UDP_CLOSED_MAP`] (gatewayd serves TCP only: a
    /// UDP flood at its port would otherwise cost the kernel a socket lookup and an ICMP error each).
    pub const UDP_CLOSED: u64 = 1 << 5;
    /// Answer SYNs to listening sockets with SYN cookies in XDP, once this CPU has seen more than
    /// [`super::GuardConfig::syn_cookie_threshold`] of them this second (see [`crate::syncookie`]).
    pub const SYN_COOKIES: u64 = 1 << 6;
}

/// The guard's settings, written by the daemon into [`CONFIG_MAP`] (index 0). All zero (the
/// state before the daemon writes it) means: pass everything.
///
/// Rates are kept as GCRA parameters (the token bucket's equivalent form, one timestamp per
/// bucket): a packet costs `interval_ns`, and passes while the bucket's theoretical arrival time
/// is at most `tolerance_ns` ahead of now; `tolerance_ns = (burst - 1) * interval_ns + tick_ns`
/// ([`crate::gcra::params`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuardConfig {
    pub flags: u64,
    /// Applied to IPv4 sources (mapped) to form the bucket key, e.g. /32.
    pub mask_v4: [u32; 4],
    /// Applied to IPv6 sources to form the bucket key, e.g. /64.
    pub mask_v6: [u32; 4],
    pub pkt_interval_ns: u64,
    pub pkt_tolerance_ns: u64,
    pub syn_interval_ns: u64,
    pub syn_tolerance_ns: u64,
    /// Busy evictions (see [`crate::sources`]) each CPU may make in [`SOURCES_MAP`] per second.
    pub new_sources_per_sec: u64,
    /// Nanoseconds per jiffy: the program's clock is `bpf_jiffies64() × tick_ns` (see
    /// [`crate::gcra`]; tolerances include one tick). 0 = `bpf_ktime_get_ns` (not calibrated).
    pub tick_ns: u64,
    /// Seed of [`crate::sources::set_index`], random per table (kept with a pinned table).
    pub hash_seed: u64,
    /// Sets in [`SOURCES_MAP`] − 1 (a power of two minus one); the overflow element follows.
    pub set_mask: u64,
    /// With [`flags::SYN_COOKIES`]: SYNs to listeners per CPU and second beyond which they are
    /// answered with cookies in XDP; 0 = always.
    pub syn_cookie_threshold: u64,
}

/// Key of [`SOURCES_MAP`]: the source address masked to the configured prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SourceKey {
    pub addr: [u32; 4],
}

/// How userspace names the shared overflow bucket (way 0 of the element after the last set).
/// No real source has this key: all-ones is multicast in IPv6, and IPv4 keys are `::ffff:…`.
pub const OVERFLOW_KEY: SourceKey = SourceKey { addr: [u32::MAX; 4] };

/// The buckets of one source (a way of [`SOURCES_MAP`]).
///
/// Updates from several CPUs race by design (no locks on 5.10): the arrival times advance with
/// a fire-and-forget atomic add, so concurrent passes are never lost, but a check and its add are
/// not one step. At any instant at most (CPUs − 1) packets beyond the burst can slip through, and
/// the drop counts are approximate.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceState {
    /// GCRA theoretical arrival time of the packet bucket (ns of the guard's clock: jiffies ×
    /// tick, or CLOCK_MONOTONIC when not calibrated).
    pub tat_ns: u64,
    /// GCRA theoretical arrival time of the SYN bucket.
    pub syn_tat_ns: u64,
    /// Packets dropped by the packet bucket (approximate).
    pub dropped: u64,
    /// SYNs dropped by the SYN bucket (approximate).
    pub syn_dropped: u64,
}

/// Key of the LPM tries: prefix length in bits (of the 128-bit mapped address) and the address.
/// Byte-compatible with aya's `lpm_trie::Key<[u32; 4]>`.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LpmAddr {
    pub prefix_len: u32,
    pub addr: [u32; 4],
}

/// Who put an entry in the deny list.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DenyOrigin {
    /// `xdp.deny` in the configuration file.
    Config = 1,
    /// `gatewayd xdp block`.
    Admin = 2,
    /// The L7 feedback loop (repeat offenders).
    Feedback = 3,
}

impl DenyOrigin {
    pub const fn from_u32(v: u32) -> Option<DenyOrigin> {
        match v {
            1 => Some(DenyOrigin::Config),
            2 => Some(DenyOrigin::Admin),
            3 => Some(DenyOrigin::Feedback),
            _ => None,
        }
    }

    pub const fn label(self) -> &'static str {
        match self {
            DenyOrigin::Config => "config",
            DenyOrigin::Admin => "admin",
            DenyOrigin::Feedback => "feedback",
        }
    }
}

/// Value of [`DENY_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DenyEntry {
    /// CLOCK_MONOTONIC ns after which the entry no longer applies; 0 = never expires. The
    /// program checks it itself, so an expiry is exact even while the daemon is not running.
    pub expires_ns: u64,
    /// Frames dropped by this entry (approximate).
    pub hits: u64,
    /// A [`DenyOrigin`].
    pub origin: u32,
    pub _pad: u32,
}

/// A source address the benchmark's probe programs look up (`::ffff:198.51.100.7`, the
/// benchmark's known source).
pub const PROBE_SOURCE: [u32; 4] = mapped_v4([198, 51, 100, 7]);

/// Value of [`NEW_SOURCES_MAP`]: this CPU's insert budget window.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NewSourceWindow {
    pub start_ns: u64,
    pub inserted: u64,
}

/// The mapped 16-byte form of an IPv4 address (`::ffff:a.b.c.d`), as words.
#[inline(always)]
pub const fn mapped_v4(octets: [u8; 4]) -> [u32; 4] {
    [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff]), u32::from_ne_bytes(octets)]
}

/// An IPv6 address as words.
#[inline(always)]
pub const fn words_v6(o: [u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([o[0], o[1], o[2], o[3]]),
        u32::from_ne_bytes([o[4], o[5], o[6], o[7]]),
        u32::from_ne_bytes([o[8], o[9], o[10], o[11]]),
        u32::from_ne_bytes([o[12], o[13], o[14], o[15]]),
    ]
}

/// The mask keeping the first `bits` bits of a 128-bit address, as words.
pub const fn prefix_mask(bits: u32) -> [u32; 4] {
    let mut bytes = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        let start = (i as u32) * 8;
        bytes[i] = if bits >= start + 8 {
            0xff
        } else if bits <= start {
            0
        } else {
            0xffu8 << (8 - (bits - start))
        };
        i += 1;
    }
    words_v6(bytes)
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: plain `#[repr(C)]` integers without padding (checked by the size tests below).
    unsafe impl aya::Pod for GuardConfig {}
    unsafe impl aya::Pod for SourceKey {}
    unsafe impl aya::Pod for SourceState {}
    unsafe impl aya::Pod for LpmAddr {}
    unsafe impl aya::Pod for DenyEntry {}
    unsafe impl aya::Pod for NewSourceWindow {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_have_no_padding() {
        assert_eq!(core::mem::size_of::<GuardConfig>(), 8 + 16 + 16 + 9 * 8);
        assert_eq!(core::mem::size_of::<SourceKey>(), 16);
        assert_eq!(core::mem::size_of::<SourceState>(), 32);
        assert_eq!(core::mem::size_of::<LpmAddr>(), 20);
        assert_eq!(core::mem::size_of::<DenyEntry>(), 24);
        assert_eq!(core::mem::size_of::<NewSourceWindow>(), 16);
    }

    #[test]
    fn masks_keep_leading_bits() {
        assert_eq!(prefix_mask(0), [0; 4]);
        assert_eq!(prefix_mask(128), [u32::MAX; 4]);
        assert_eq!(prefix_mask(64), words_v6([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0]));
        let m = prefix_mask(96 + 24);
        assert_eq!(m[3], u32::from_ne_bytes([0xff, 0xff, 0xff, 0]));
        assert_eq!(prefix_mask(4)[0], u32::from_ne_bytes([0xf0, 0, 0, 0]));
    }

    #[test]
    fn counter_slots() {
        assert_eq!(counter_index(1, Verdict::DropDenyList as u32), COUNTERS_PER_SLOT + 3);
        assert!(Verdict::ALL.iter().all(|v| (*v as u32) < COUNTERS_PER_SLOT));
        assert!(Verdict::ALL.iter().all(|v| *v as u32 != NEW_SOURCE_INSERTED && *v as u32 != NEW_SOURCE_OVER_CAP));
        assert_eq!(counter_index(IFINDEX_SLOTS + 7, NEW_SOURCE_OVER_CAP), 7);
        assert!(counter_index(IFINDEX_SLOTS - 1, NEW_SOURCE_OVER_CAP) < COUNTER_ENTRIES);
    }

    #[test]
    fn list_buckets_split_ipv4_and_ipv6_by_first_16_bits() {
        assert_eq!(list_bucket(&mapped_v4([198, 51, 100, 7])), (1 << 16) | (198 << 8) | 51);
        assert_eq!(list_bucket(&words_v6([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1])), 0x2001);
        assert_eq!(list_bucket(&words_v6([0; 16])), 0);
        assert!(list_bucket(&mapped_v4([255; 4])) < LIST_BUCKETS);
    }

    #[test]
    fn mapped_v4_is_the_ipv6_mapped_form() {
        let w = mapped_v4([192, 0, 2, 1]);
        assert_eq!(w, words_v6([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 1]));
    }
}
