//! Builds the eBPF programs (gateway-ebpf) for the BPF target with the nightly toolchain and
//! bpf-linker, and leaves the object in OUT_DIR for `include_bytes_aligned!`.
//! `cargo xtask` installs what this needs (rust-src for nightly, bpf-linker).

fn main() -> anyhow::Result<()> {
    let ebpf_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../gateway-ebpf");
    let package = aya_build::Package { name: "gateway-ebpf", root_dir: ebpf_dir, ..Default::default() };
    aya_build::build_ebpf([package], aya_build::Toolchain::default())
}
