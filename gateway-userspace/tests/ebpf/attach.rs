//! Attaching the guard: each mode on a veth, the automatic fallback, pinned links adopted by a
//! later instance, and the pin-directory lock.

use std::process::Command;

use gateway_common::xdp::{GuardConfig, Verdict, flags, prefix_mask};
use gateway_userspace::ebpf::{AttachMode, EbpfError, LoadOptions, XdpGuard, remove_stale_pins};

use crate::netns::{GW_IF, VethPair, run};

const PINGS: u64 = 3;

fn guard(pin_dir: Option<&std::path::Path>) -> XdpGuard {
    let opts = LoadOptions { pin_dir: pin_dir.map(Into::into), max_sources: 4096 };
    let mut g = XdpGuard::load(&opts).unwrap_or_else(|e| panic!("loading the guard failed: {e}"));
    let config = GuardConfig {
        flags: flags::ENABLED,
        mask_v4: prefix_mask(128),
        mask_v6: prefix_mask(64),
        ..Default::default()
    };
    g.write_config(&config).expect("write config");
    g
}

fn ping(net: &VethPair) {
    let count = PINGS.to_string();
    run(net.peer.command("ping").args(["-c", &count, "-i", "0.2", "-W", "1", &net.gw_addr.to_string()]));
}

fn passed(g: &XdpGuard) -> u64 {
    let ifindex = g.attachments().first().map(|a| a.1).expect("attached");
    g.counters(ifindex).expect("counters")[Verdict::Pass as usize]
}

fn counted_in(mode: AttachMode, tag: &str, subnet: u8) {
    let net = VethPair::new(tag, subnet, 1);
    let mut g = guard(None);
    let took = net.gw.run(|| g.attach(GW_IF, Some(mode))).unwrap_or_else(|e| panic!("attach {mode}: {e}"));
    assert_eq!(took, mode);
    ping(&net);
    let pass = passed(&g);
    assert!(pass >= PINGS, "{mode}: {pass} frames counted as pass for {PINGS} pings");
    let counters = g.counters(g.attachments()[0].1).expect("counters");
    for v in Verdict::ALL.into_iter().filter(|v| *v != Verdict::Pass) {
        assert_eq!(counters[v as usize], 0, "{mode}: unexpected {}", v.label());
    }
    drop(g);
    assert!(!xdp_attached(&net), "{mode}: still attached after the guard was dropped");
}

fn xdp_attached(net: &VethPair) -> bool {
    let link = net.gw.ip_output(&["link", "show", "dev", GW_IF]);
    let tc = net.gw.run(|| Command::new("tc").args(["filter", "show", "dev", GW_IF, "ingress"]).output());
    let tc = tc.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    link.contains("xdp") || tc.contains("gateway_tc")
}

#[test]
fn native_xdp_counts_pings_on_veth() {
    counted_in(AttachMode::XdpDriver, "drv", 1);
}

#[test]
fn generic_xdp_counts_pings_on_veth() {
    counted_in(AttachMode::XdpSkb, "skb", 2);
}

#[test]
fn tc_classifier_counts_pings_on_veth() {
    counted_in(AttachMode::Tc, "tc", 3);
}

#[test]
fn auto_mode_falls_back_and_says_which_took() {
    let net = VethPair::new("auto", 4, 1);
    // Loopback has no native XDP: generic takes.
    let mut on_lo = guard(None);
    assert_eq!(net.gw.run(|| on_lo.attach("lo", None)).expect("attach lo"), AttachMode::XdpSkb);
    // Another program holds the XDP hook of gw0: both XDP modes fail, TC takes.
    let mut holder = guard(None);
    net.gw.run(|| holder.attach(GW_IF, Some(AttachMode::XdpDriver))).expect("holder attach");
    let mut second = guard(None);
    let took = net.gw.run(|| second.attach(GW_IF, None)).expect("auto attach");
    assert_eq!(took, AttachMode::Tc);
    ping(&net);
    assert!(passed(&second) >= PINGS, "the TC fallback saw {} frames", passed(&second));
    // An explicit mode that cannot attach is an error naming the attempt.
    let mut third = guard(None);
    match net.gw.run(|| third.attach(GW_IF, Some(AttachMode::XdpSkb))) {
        Err(EbpfError::Attach { attempts, .. }) => assert!(attempts.starts_with("xdp-skb:"), "{attempts}"),
        other => panic!("expected an attach error, got {other:?}"),
    }
    match net.gw.run(|| third.attach("nosuch0", None)) {
        Err(EbpfError::NoInterface(name)) => assert_eq!(name, "nosuch0"),
        other => panic!("expected NoInterface, got {other:?}"),
    }
}

#[test]
fn pinned_links_and_maps_survive_the_process_and_the_pin_dir_is_locked() {
    let net = VethPair::new("pin", 5, 1);
    let dir = std::path::PathBuf::from(format!("/sys/fs/bpf/gwtest-{}-pin", std::process::id()));
    let _cleanup = Cleanup(dir.clone());
    let mut first = guard(Some(&dir));
    assert_eq!(net.gw.run(|| first.attach(GW_IF, Some(AttachMode::XdpSkb))).expect("attach"), AttachMode::XdpSkb);
    let blocked: ipnet::IpNet = "192.0.2.0/24".parse().unwrap();
    first.deny_insert(blocked, gateway_common::xdp::DenyEntry { origin: 2, ..Default::default() }).expect("deny");
    ping(&net);
    let before = passed(&first);

    match XdpGuard::load(&LoadOptions { pin_dir: Some(dir.clone()), max_sources: 4096 }) {
        Err(EbpfError::Busy(path)) => assert_eq!(path, dir),
        Err(e) => panic!("expected Busy, got {e}"),
        Ok(_) => panic!("a second instance loaded on a locked pin directory"),
    }

    assert_eq!(first.keep_attached(), vec![GW_IF.to_owned()]);
    drop(first);
    assert!(xdp_attached(&net), "the kept link was detached with its process");

    let mut second = guard(Some(&dir));
    assert_eq!(
        second.attach(GW_IF, None).err().map(|e| e.to_string()),
        Some(format!("no network interface \"{GW_IF}\"")),
        "outside the namespace the interface does not exist"
    );
    let took = net.gw.run(|| second.attach(GW_IF, None)).expect("adopt");
    assert_eq!(took, AttachMode::XdpSkb, "the pinned generic-mode link is adopted, not replaced by native");
    assert!(second.deny_entries().expect("deny").iter().any(|(n, _)| *n == blocked), "pinned deny list lost");
    assert!(passed(&second) >= before, "pinned counters were reset");
    ping(&net);
    assert!(passed(&second) >= before + PINGS, "the adopted link does not run the new program");

    second.detach_all();
    assert!(!xdp_attached(&net), "detach_all left the guard attached");
    assert!(
        !std::fs::read_dir(&dir)
            .expect("pin dir")
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("link-"))
    );
}

#[test]
fn a_pinned_map_of_another_capacity_is_replaced() {
    let dir = std::path::PathBuf::from(format!("/sys/fs/bpf/gwtest-{}-cap", std::process::id()));
    let _cleanup = Cleanup(dir.clone());
    drop(XdpGuard::load(&LoadOptions { pin_dir: Some(dir.clone()), max_sources: 2048 }).expect("load"));
    drop(XdpGuard::load(&LoadOptions { pin_dir: Some(dir.clone()), max_sources: 8192 }).expect("reload"));
    let info = aya::maps::MapInfo::from_pin(dir.join("GW_SOURCES")).expect("pinned map");
    // 8192 ways: 2048 sets of 4, plus the overflow element.
    assert_eq!(info.max_entries(), 2049);
}

/// A restart keeps the source table and the seed that placed its sources: a bucket charged
/// before is found (and still charged) after.
#[test]
fn a_pinned_source_table_keeps_its_buckets_and_seed() {
    use gateway_userspace::ebpf::{
        GuardProgram,
        selftest::frames::{FrameSpec, L4},
    };
    let dir = std::path::PathBuf::from(format!("/sys/fs/bpf/gwtest-{}-table", std::process::id()));
    let _cleanup = Cleanup(dir.clone());
    let frame = FrameSpec::new("198.51.100.9", L4::TcpData).build();
    let key = gateway_common::xdp::SourceKey { addr: gateway_common::xdp::mapped_v4([198, 51, 100, 9]) };
    let limited = |g: &mut XdpGuard| {
        let (interval, tolerance) = gateway_common::gcra::params(1, 1000, 0);
        let config = GuardConfig {
            flags: flags::ENABLED | flags::RATE,
            mask_v4: prefix_mask(128),
            mask_v6: prefix_mask(64),
            pkt_interval_ns: interval,
            pkt_tolerance_ns: tolerance,
            new_sources_per_sec: 100,
            ..Default::default()
        };
        g.write_config(&config).expect("write config");
    };
    let mut first = guard(Some(&dir));
    limited(&mut first);
    first.test_run(GuardProgram::Xdp, &frame.bytes, 1).expect("test run");
    let charged = first.source(&key).expect("read").expect("the source got a way");
    assert!(charged.tat_ns > 0);
    drop(first);
    let mut second = guard(Some(&dir));
    limited(&mut second);
    assert_eq!(second.source(&key).expect("read"), Some(charged), "the pinned table or its seed was lost");
    assert_eq!(second.tracked_sources().expect("walk"), 1);
}

struct Cleanup(std::path::PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Err(e) = remove_stale_pins(&self.0) {
            eprintln!("cleanup {}: {e}", self.0.display());
        }
    }
}
