//! Types shared by the eBPF programs and the daemon: map names, keys, values, verdicts.
//! `no_std`, `#[repr(C)]`, no padding surprises: both sides read the same bytes.
#![no_std]

pub mod cpusteer;
pub mod gcra;
pub mod sources;
pub mod steer;
pub mod syncookie;
pub mod xdp;
