//! The SO_REUSEPORT steering program's shared vocabulary. One instance of the program (with its
//! own maps) is loaded per listener, because a socket array may only hold sockets of the
//! reuseport group the program runs for.
//!
//! The program maps a key (the receiving CPU, or a hash of the client address) to one of
//! [`SLOT_COUNT`] slots, and the slot table (written by the daemon) to a worker, whose listening
//! socket sits at that worker's index in the socket array. A draining worker's slots are handed to
//! the others before its socket leaves the array, and the other slots keep their worker, so only
//! the draining worker's clients move.

/// The `#[sk_reuseport]` entry point.
pub const PROGRAM: &str = "gateway_steer";
/// `ReusePortSockArray`: index = worker id.
pub const SOCKETS_MAP: &str = "GW_SOCKETS";
/// Array, one [`SteerConfig`].
pub const CONFIG_MAP: &str = "GW_STEER";
/// Array of [`SLOT_COUNT`] `u32`: slot → worker id.
pub const SLOTS_MAP: &str = "GW_SLOTS";
/// Per-CPU array of `u64`: connections steered to each worker; index [`FALLBACK_INDEX`] counts
/// those left to the kernel's own hash (the worker's socket was not in the array).
pub const COUNTS_MAP: &str = "GW_STEERED";

/// Most workers steering supports.
pub const MAX_WORKERS: u32 = 256;
/// Entries of the slot table.
pub const SLOT_COUNT: u32 = 256;
/// The fallback counter's index in [`COUNTS_MAP`].
pub const FALLBACK_INDEX: u32 = MAX_WORKERS;
/// Size of [`COUNTS_MAP`].
pub const COUNT_ENTRIES: u32 = MAX_WORKERS + 1;

/// Values of [`SteerConfig::policy`].
pub mod policy {
    /// Leave the choice to the kernel (hash of the 4-tuple).
    pub const NONE: u32 = 0;
    /// The worker of the CPU that received the SYN (locality with pinned workers).
    pub const CPU: u32 = 1;
    /// A hash of the client address: a client's reconnects land on the worker holding its TLS
    /// session state.
    pub const CLIENT_HASH: u32 = 2;
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SteerConfig {
    pub policy: u32,
    pub _pad: u32,
}

/// The client-address hash both the program and the daemon's tests use: the address in its
/// mapped 16-byte form (see [`crate::xdp::mapped_v4`]), as words.
#[inline(always)]
pub const fn client_hash(words: [u32; 4]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    let mut i = 0;
    while i < 4 {
        h = (h ^ words[i]).wrapping_mul(0x9e37_79b1);
        h = h.rotate_left(13);
        i += 1;
    }
    // murmur3's finalizer: every input bit reaches the low bits the slot is taken from.
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// The slot a key falls in.
#[inline(always)]
pub const fn slot_of(key: u32) -> u32 {
    key % SLOT_COUNT
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: two u32, no padding.
    unsafe impl aya::Pod for super::SteerConfig {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xdp::mapped_v4;

    #[test]
    fn hash_spreads_neighbouring_addresses() {
        let mut seen = [false; SLOT_COUNT as usize];
        for last in 0..=255u8 {
            seen[slot_of(client_hash(mapped_v4([10, 0, 0, last]))) as usize] = true;
        }
        // 256 neighbours should cover well over half of the slots.
        assert!(seen.iter().filter(|s| **s).count() > 128);
    }
}
