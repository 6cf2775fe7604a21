//! The framework against real processes: a pinned nginx, wrk, CPU and memory readings, idle
//! connections. nginx and wrk come with `cargo xtask deps`; without them this fails.

use std::time::Duration;

use anyhow::Result;

use super::{
    cpus::CpuList, free_port, http, idle, interleave, load::Wrk, process::Service, proxy::nginx_upstream_conf,
};

/// The command line of `cargo xtask bench`, as `main` flattens it.
#[derive(clap::Parser)]
struct Cli {
    #[command(flatten)]
    opts: super::Options,
}

fn parse(args: &[&str]) -> Result<super::Options> {
    use clap::Parser as _;
    Ok(Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied()))?.opts)
}

#[test]
fn the_comparison_modes_take_binaries_and_their_options() -> Result<()> {
    let o = parse(&[
        "callgrind",
        "--proto",
        "h2s",
        "--against",
        "nginx",
        "--requests",
        "800",
        "old/gatewayd",
        "new/gatewayd",
    ])?;
    assert!(matches!(o.target, super::Target::Callgrind));
    assert_eq!(o.proto, super::callgrind::Proto::H2s);
    assert_eq!(o.against, [super::callgrind::Against::Nginx]);
    assert_eq!(o.requests, Some(800));
    assert_eq!(o.bins, [std::path::PathBuf::from("old/gatewayd"), "new/gatewayd".into()]);
    let o = parse(&["cpu-compare", "--reps", "5", "--duration", "8", "a", "b"])?;
    assert!(matches!(o.target, super::Target::CpuCompare));
    assert_eq!((o.reps, o.duration, o.bins.len(), o.syscalls, o.rate), (5, Some(8), 2, false, None));
    let o = parse(&["cpu-compare", "--against", "nginx,haproxy", "--syscalls", "--rate", "5000", "a"])?;
    use super::callgrind::Against::{Haproxy, Nginx};
    assert_eq!((o.against, o.syscalls, o.rate, o.bins.len()), (vec![Nginx, Haproxy], true, Some(5000), 1));
    let o = parse(&["slow-clients"])?;
    assert_eq!((o.proto, o.against, o.requests, o.bins.len()), (super::callgrind::Proto::H1, vec![], None, 0));
    assert!(parse(&["callgrind", "--proto", "h3"]).is_err());
    // Binaries where the mode measures the release build are refused, not ignored.
    let err = super::run(&parse(&["proxy", "some/gatewayd"])?).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("only callgrind, cpu-compare, slow-clients and ktls-idle take binaries"), "{err}");
    Ok(())
}

#[test]
fn idle_only_is_a_mode_of_bench_proxy() -> Result<()> {
    let o = parse(&["proxy", "--idle-only", "--idle-connections", "1000,10000"])?;
    assert!(o.idle_only && matches!(o.target, super::Target::Proxy));
    assert_eq!(o.idle_connections, [1000, 10_000]);
    assert!(!parse(&["proxy"])?.idle_only);
    let err = super::run(&parse(&["tls", "--idle-only"])?).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("--idle-only is a mode of bench proxy only"), "{err}");
    Ok(())
}

#[test]
fn runs_are_interleaved_rotated_and_grouped_by_subject() {
    let mut order = Vec::new();
    let results = interleave(4, &["a", "b", "c"], |rep, s| {
        order.push(format!("{s}{rep}"));
        Ok(rep)
    })
    .ok();
    // Each round starts one subject later: no subject always follows the same one.
    assert_eq!(order, ["a0", "b0", "c0", "b1", "c1", "a1", "c2", "a2", "b2", "a3", "b3", "c3"]);
    assert_eq!(results, Some(vec![vec![0, 1, 2, 3], vec![0, 1, 2, 3], vec![0, 1, 2, 3]]));
}

#[test]
fn a_pinned_nginx_is_loaded_and_measured() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("xtask-bench-test-{}", std::process::id()));
    let result = load_and_measure(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn load_and_measure(dir: &std::path::Path) -> Result<()> {
    let cpus = CpuList(CpuList::allowed()?.0.into_iter().take(1).collect());
    let addr = free_port()?;
    let conf = nginx_upstream_conf(dir, addr, 1, 1024)?;
    std::fs::write(dir.join("nginx.conf"), conf)?;
    let mut cmd = cpus.taskset("nginx");
    cmd.arg("-p").arg(dir).arg("-e").arg(dir.join("error.log")).arg("-c").arg(dir.join("nginx.conf"));
    let mut nginx = Service::start("test nginx", cmd, &dir.join("stdout.log"))?;
    nginx.wait_http_ok(addr, "/", Duration::from_secs(20))?;
    let tree = nginx.tree();

    // The master and its one worker, pinned where taskset put them.
    let pids = tree.pids()?;
    assert_eq!(pids.len(), 2, "nginx master and worker: {pids:?}");
    for pid in &pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let allowed = status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).map(str::trim);
        assert_eq!(allowed, Some(cpus.to_string().as_str()), "pid {pid}");
    }

    let cpu_before = tree.cpu_time()?;
    let wrk = Wrk { connections: 4, duration: Duration::from_secs(1) }.run(&cpus, &format!("http://{addr}/"))?;
    assert!(wrk.requests > 100 && wrk.rps > 100.0, "{wrk:?}");
    assert!(tree.cpu_time()? > cpu_before, "serving {} requests took no CPU time", wrk.requests);

    let idle = idle::measure(tree, addr, "/", 200)?;
    assert!(idle.connected.rss_bytes > 0 && idle.after_request.pss_bytes > 0);
    // Closed again: back to (about) the descriptors it had.
    assert!(tree.open_fds()? < 50, "{} descriptors left open", tree.open_fds()?);
    assert_eq!(http::get(addr, "/")?.body, b"ok");
    nginx.stop()
}
