//! How the raw floods reach the gateway's veth end.
//!
//! - `xdp-softirq` (the default) and `xdp`: as a NIC's receive ring would deliver them. xtask/floodgen's XDP
//!   program runs under `BPF_PROG_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES` (what xdp-tools'
//!   xdp-trafgen does) in the attacker's namespace: the kernel runs it on page-pool frames made
//!   from one template, the program writes each frame's source (the attack's scheme, checksums
//!   updated) and redirects it to `fl-a1`, whose `ndo_xdp_xmit` queues the `xdp_frame` on
//!   `fl-a0`'s receive ring. `fl-a0`'s NAPI then runs native XDP on the frame itself (no skb, no
//!   copy), or builds the skb from it for the stack, nftables and TC (as a NIC driver does from
//!   its DMA buffer). veth only has that NAPI ring while an XDP program is attached or GRO is on:
//!   `Topology::create` turns GRO on at `fl-a0`, so every defence gets the same delivery. With
//!   `xdp-softirq` that NAPI runs in softirq when each run ends, on the generator's CPU (the
//!   generator floats at nice 19), as a NIC's interrupt raises it; with `xdp` it is threaded and
//!   pinned to its own CPU, the generator to the other (`napi.rs`).
//! - `skb`: xtask's AF_PACKET sender (`attack.rs`): the sender builds an skb per frame, and
//!   veth's native XDP copies each one into a page-pool page first (bench/README.md).
//!
//! The program lives outside gatewayd (bench tooling in a shipped daemon would be attack tooling
//! on every gateway) and is built here, with the nightly toolchain and bpf-linker the guard's
//! programs need anyway, the way aya-build builds gateway-ebpf.

use std::{
    net::IpAddr,
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf,
    maps::Array,
    programs::{TestRun as _, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
};

use super::{
    attack::SERVICE_PORT,
    packet::{self, Frame, Link, Payload},
    topology::{self, ANCHOR_IF, ATTACK_IF, GW_ATTACK_ADDR, GW_ATTACK_ADDR6},
};
use crate::{cmd::workspace_root, deps::NIGHTLY};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Feed {
    /// XDP frames through veth's `ndo_xdp_xmit` (BPF_PROG_RUN live frames): like a NIC's ring,
    /// drained by a threaded NAPI pinned to one CPU (`napi.rs`).
    Xdp,
    /// The same frames, drained by veth's NAPI in softirq on the generator's CPU at the end of
    /// each run, as a NIC's interrupt raises it: the skb feed's timing without its copy.
    #[value(name = "xdp-softirq")]
    #[default]
    XdpSoftirq,
    /// skbs from an AF_PACKET socket (veth's native XDP copies each one).
    Skb,
}

impl Feed {
    pub fn label(self) -> &'static str {
        match self {
            Feed::Xdp => "xdp",
            Feed::XdpSoftirq => "xdp-softirq",
            Feed::Skb => "skb",
        }
    }

    /// Whether the floods arrive as XDP frames from the generator (not AF_PACKET skbs).
    pub fn frames(self) -> bool {
        matches!(self, Feed::Xdp | Feed::XdpSoftirq)
    }

    /// Whether the gateway end's NAPI runs in a pinned kernel thread (`napi.rs`).
    pub fn threaded(self) -> bool {
        self == Feed::Xdp
    }
}

/// The generator's eBPF object (an ELF), built once per benchmark run.
#[derive(Clone)]
pub struct Object(std::sync::Arc<Vec<u8>>);

impl Object {
    pub fn build() -> Result<Self> {
        let root = workspace_root();
        let target_dir = root.join("target").join("floodgen");
        let mut cmd = Command::new("rustup");
        cmd.current_dir(root)
            .args(["run", NIGHTLY, "cargo", "build", "--locked", "--release", "--package", "floodgen"])
            .args(["--bin", "floodgen", "--features", "ebpf", "--target", "bpfel-unknown-none"])
            .args(["-Z", "build-std=core", "--target-dir"])
            .arg(&target_dir)
            // aya-build's flags for gateway-ebpf (BTF for the loader, the cfg aya-ebpf reads).
            .env("CARGO_ENCODED_RUSTFLAGS", "--cfg=bpf_target_arch=\"x86_64\"\x1f-Cdebuginfo=2\x1f-Clink-arg=--btf")
            .env_remove("RUSTFLAGS")
            // The outer cargo's rustc would be stable's: let rustup pick the nightly's.
            .env_remove("RUSTC")
            .env_remove("RUSTC_WORKSPACE_WRAPPER");
        crate::cmd::exec(&mut cmd).context("building xtask/floodgen's XDP program (nightly, bpf-linker)")?;
        let path = target_dir.join("bpfel-unknown-none").join("release").join("floodgen");
        let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        Ok(Object(std::sync::Arc::new(bytes)))
    }
}

/// Frames per BPF_PROG_RUN batch (the kernel's NAPI weight, what a NIC driver hands up per poll),
/// and per run while the generator keeps to its schedule.
const NAPI_BATCH: u32 = 64;

/// The most frames one run may take: veth's receive ring (`VETH_RING_SIZE`). A run's frames
/// reach the ring faster than any receiver drains it, so a bigger burst would overflow it.
const MAX_RUN: u32 = 256;

/// `FEED` entries (xtask/floodgen/src/main.rs).
const SCHEME: u32 = 0;
const IFINDEX: u32 = 1;
const COUNT_V4: u32 = 2;
const COUNT_V6: u32 = 3;

/// The generator, loaded in the attacker's namespace (the redirect's ifindex is looked up there)
/// and ready to run: loading and verifying take a while on a busy machine, and the attack must
/// be on before the clients start.
pub struct Generator {
    ebpf: Ebpf,
    feed: Array<aya::maps::MapData, u64>,
    templates: [Vec<u8>; 2],
    both: bool,
}

/// What a generator's runs did.
#[derive(Debug, Clone, Copy)]
pub struct Fed {
    /// Frames the program made (and redirected).
    pub frames: u64,
    /// The generator thread's run time over the runs, in seconds: with `xdp-softirq` that
    /// includes the gateway's receive of the frames (`receive.rs`).
    pub cpu: f64,
    /// `BPF_PROG_RUN` calls (each costs a fixed setup besides its frames: a run's share of the
    /// generator's own cost depends on how many frames it made, 64 while on schedule).
    pub runs: u64,
}

impl Generator {
    /// A generator whose frames go to the gateway (`fl-a1`, the attacker's veth end).
    pub fn load(object: &Object, link: Link, scheme: u64, payload: Payload) -> Result<Self> {
        Self::load_to(object, link, scheme, payload, ATTACK_IF)
    }

    /// A generator whose frames are redirected to `target` (the dispatcher anchor, which is down:
    /// each frame is freed at once, so its runs cost the frame making alone; `receive.rs`).
    pub fn load_to(object: &Object, link: Link, scheme: u64, payload: Payload, target: &str) -> Result<Self> {
        let ifindex = ifindex(target)?;
        let mut ebpf = Ebpf::load(&object.0).context("loading xtask/floodgen's object")?;
        let mut feed: Array<_, u64> =
            Array::try_from(ebpf.take_map("FEED").context("no FEED map in floodgen")?).context("FEED")?;
        feed.set(SCHEME, scheme, 0)?;
        feed.set(IFINDEX, u64::from(ifindex), 0)?;
        let program: &mut Xdp =
            ebpf.program_mut("floodgen").context("no floodgen program")?.try_into().context("floodgen is not XDP")?;
        program.load().context("loading the floodgen XDP program")?;
        // `BPF_PROG_RUN` puts an XDP program in the kernel's XDP dispatcher for the run and takes
        // it out after, each time with a `synchronize_rcu` (measured: 28 ms per run on this
        // machine at load 3.7, whatever the run's size) unless the program is in it already:
        // attached in driver mode to a veth that carries nothing, it stays there, and a run costs
        // what its frames cost. The attachment goes with the program (dropped with `ebpf`).
        program.attach(ANCHOR_IF, XdpMode::Driver).context("attaching floodgen to the dispatcher anchor veth")?;
        let templates = [false, true].map(|v6| template(link, v6, payload));
        Ok(Generator { ebpf, feed, templates, both: floodgen::both_families(scheme) })
    }

    /// Runs paced to `pps` until `stop` or `deadline`; returns the frames the program made (and
    /// redirected), and the thread's run time over the runs.
    ///
    /// A run is one NAPI batch (64 frames: 0.43 ms of a 150k pps flood), so that the flood
    /// reaches the gateway's ring as the short bursts a NIC's interrupt moderation would hand
    /// its NAPI. While the generator is more than a run behind its schedule, runs double in size,
    /// up to the ring's 256 frames. With a threaded NAPI the thread runs on the attacker's CPU
    /// (`napi.rs`); without, it floats at nice 19 as the AF_PACKET sender does (`attack.rs`), and
    /// the gateway's receive of each run is the softirq at the run's end, on its CPU.
    pub fn run(mut self, feed: Feed, pps: u64, deadline: Instant, stop: &AtomicBool) -> Result<Fed> {
        let program: &mut Xdp = self.ebpf.program_mut("floodgen").context("no floodgen program")?.try_into()?;
        if feed.threaded() {
            crate::bench::cpus::pin(0, &[super::napi::attacker_cpu()])?;
        } else {
            super::attack::yield_to_the_host()?;
        }
        let pps = pps.max(1);
        let base = NAPI_BATCH;
        let mut per_run = base;
        // Sleeps of a fraction of a millisecond between runs: the default 50 µs of timer slack
        // would be a tenth of one.
        // SAFETY: a prctl with integer arguments on the calling thread.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1u64) };
        let cpu_before = super::receive::thread_cpu()?;
        let start = Instant::now();
        let mut runs: u64 = 0;
        let mut asked: u64 = 0;
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            let due = (start.elapsed().as_secs_f64() * pps as f64) as u64;
            if asked > due {
                std::thread::sleep(Duration::from_secs_f64((asked - due) as f64 / pps as f64));
                continue;
            }
            per_run = if due - asked > u64::from(per_run) { (per_run * 2).min(MAX_RUN) } else { base };
            // Schemes with both families alternate them run by run (a run has one template).
            let frame = &self.templates[usize::from(self.both && runs % 2 == 1)];
            let opts = TestRunOptions {
                data_in: Some(frame),
                repeat: per_run,
                attrs: TestRunAttrs::new().xdp_live_frames(NAPI_BATCH),
                ..TestRunOptions::new()
            };
            runs += 1;
            match program.test_run(opts) {
                Ok(_) => asked += u64::from(per_run),
                // A signal to the process (a child of xtask exiting) cuts a run short: the frames
                // it made are counted by the program, the next run goes on.
                Err(aya::programs::ProgramError::SyscallError(e))
                    if e.io_error.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e).context("BPF_PROG_RUN (live frames) of floodgen"),
            }
        }
        let cpu = super::receive::thread_cpu()? - cpu_before;
        let made = self.feed.get(&COUNT_V4, 0)? + self.feed.get(&COUNT_V6, 0)?;
        // Pacing counts whole runs; a run cut short by a signal is not in `asked`, and made all
        // of its frames only if it finished them (checked below for the rest).
        if made < asked {
            bail!("floodgen made {made} frames of {asked} asked for (the program refused a template?)");
        }
        Ok(Fed { frames: made, cpu, runs })
    }
}

/// The frame every run starts from (valid checksums; the program rewrites the source, the
/// source port and the TCP sequence number of each copy).
fn template(link: Link, v6: bool, payload: Payload) -> Vec<u8> {
    let (src, dst) = if v6 {
        (IpAddr::V6(topology::spoofed_v6(0)), IpAddr::V6(GW_ATTACK_ADDR6))
    } else {
        (IpAddr::V4(topology::spoofed_v4(0)), IpAddr::V4(GW_ATTACK_ADDR))
    };
    let mut buf = Vec::with_capacity(packet::frame_len(v6, payload));
    packet::build(&mut buf, link, Frame { src, dst, sport: 1024, dport: SERVICE_PORT, payload, seq: 0 });
    buf
}

fn ifindex(name: &str) -> Result<u32> {
    let cname = std::ffi::CString::new(name)?;
    // SAFETY: a NUL-terminated name; no other precondition.
    let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if index == 0 {
        bail!("no interface {name} in this namespace");
    }
    Ok(index)
}
