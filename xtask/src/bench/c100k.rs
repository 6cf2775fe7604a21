//! `cargo xtask bench c100k`: 100,000 concurrent keep-alive connections to gatewayd, in a
//! systemd-booted bookworm guest (its own kernel, so its own file limits; the host caps a
//! process at ~20,000 descriptors). The packaged gatewayd (release) runs under its unit; the
//! client is this xtask binary (`c100k-client`), which opens the connections from several
//! threads to several loopback addresses (127.0.0.1–.10: each destination has its own
//! ephemeral port range), sends one request on each, and holds them idle. Meanwhile `hey`, a
//! separate client, keeps asking at a steady rate; its p99 is reported. RSS is gatewayd's
//! (`/proc/PID/status`), before and with the connections open.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    cmd::workspace_root,
    dist,
    vm::{self, rootfs},
};

const CONNECTIONS: usize = 100_000;
const THREADS: usize = 10;

const UNIT: &str = "[Unit]\nDescription=c100k bench\nAfter=multi-user.target\n\n\
[Service]\nType=simple\nLimitNOFILE=1048576\nExecStart=/opt/vmtest/run.sh\n\n[Install]\nWantedBy=multi-user.target\n";

pub fn run() -> Result<()> {
    let root = workspace_root();
    let deb = dist::build_packages(dist::Profile::Release, &[dist::version()?.as_str()])?.remove(0);
    let rootfs = rootfs::bookworm(root)?;
    let script = include_str!("c100k.sh").replace("@CONNECTIONS@", &CONNECTIONS.to_string());
    let (work, guest_files) = rootfs::run_files(root, "c100k", UNIT, &script)?;
    let mut files =
        vec![(deb, "/opt/vmtest/gatewayd.deb".to_owned()), (std::env::current_exe()?, "/opt/vmtest/xtask".to_owned())];
    files.extend(guest_files);
    let image = work.join("root.img");
    rootfs::image(&rootfs, &image, &files, &rootfs::RUN_UNIT_LINKS)?;
    let mut args = rootfs::qemu_args(&rootfs, &image);
    // Room for 100k sockets on both sides plus gatewayd's buffers.
    if let Some(i) = args.iter().position(|a| a == "2048") {
        args[i] = "4096".into();
    }
    let console = vm::boot_with(&args, "Loading, please wait", Duration::from_secs(3000));
    let _ = std::fs::remove_file(&image);
    let console = console?;
    std::fs::write(work.join("console.log"), &console)?;
    if !console.contains("VMTEST-EXIT:0") {
        bail!("c100k: the guest run failed\n{}", vm::tail(&console));
    }
    let report: Vec<&str> = console.lines().filter_map(|l| l.trim().strip_prefix("c100k: ")).collect();
    let md = render(&report);
    let out = root.join("bench/results/c100k.md");
    std::fs::write(&out, md)?;
    eprintln!("xtask: wrote {}", out.display());
    Ok(())
}

fn value<'a>(report: &[&'a str], key: &str) -> &'a str {
    report.iter().find_map(|l| l.strip_prefix(key)?.strip_prefix('=')).unwrap_or("?")
}

fn render(report: &[&str]) -> String {
    let v = |k| value(report, k);
    let rss_before: f64 = v("rss_before_kb").parse().unwrap_or(f64::NAN);
    let rss_after: f64 = v("rss_after_kb").parse().unwrap_or(f64::NAN);
    let open: f64 = v("open").parse().unwrap_or(f64::NAN);
    let per_conn = (rss_after - rss_before) * 1024.0 / open;
    format!(
        "# 100,000 concurrent keep-alive connections (`cargo xtask bench c100k`)\n\n\
         A real run in a qemu guest (TCG, 2 vCPUs, 4 GiB; Debian bookworm, Linux {kernel}, systemd), gatewayd\n\
         {version} (release, from the .deb, under its unit: `LimitNOFILE=1048576`), 2 workers, the demo route.\n\
         The client (`xtask c100k-client`, {THREADS} threads, destinations 127.0.0.1–127.0.0.10) opens each\n\
         connection, sends one `GET /demo/hello`, reads the answer and keeps the connection open and idle.\n\
         TCG emulates every instruction: times are a slow machine's, memory is what it would be anywhere.\n\n\
         | What | Value |\n| --- | --- |\n\
         | connections open at once (served once, then idle) | {open} of {CONNECTIONS} |\n\
         | time to open and serve them | {secs} s |\n\
         | gatewayd RSS before / with them | {before:.0} MiB / {after:.0} MiB |\n\
         | RSS per connection | {per_conn:.0} bytes |\n\
         | gatewayd descriptors with them | {fds} |\n\
         | separate client (hey, 20 req/s, keep-alive) while they were open: p50 / p99 | {p50} / {p99} |\n\
         | its requests / errors | {reqs} / {errors} |\n",
        kernel = v("kernel"),
        version = v("version"),
        open = v("open"),
        secs = v("seconds"),
        before = rss_before / 1024.0,
        after = rss_after / 1024.0,
        fds = v("fds"),
        p50 = v("p50"),
        p99 = v("p99"),
        reqs = v("hey_requests"),
        errors = v("hey_errors"),
    )
}

/// The guest-side client: opens `connections` keep-alive connections, one request each, then
/// holds them until stdin closes. Prints `open=N seconds=S` when they are all up.
pub fn client(connections: usize, port: u16) -> Result<()> {
    let start = Instant::now();
    let per_thread = connections.div_ceil(THREADS);
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            std::thread::spawn(move || -> Result<Vec<TcpStream>> {
                let mut held = Vec::with_capacity(per_thread);
                let dest = format!("127.0.0.{}:{port}", 1 + t % 10);
                let mut buf = [0u8; 4096];
                for _ in 0..per_thread {
                    let mut s = TcpStream::connect(&dest).with_context(|| format!("connect {dest}"))?;
                    s.write_all(b"GET /demo/hello HTTP/1.1\r\nHost: c100k\r\n\r\n")?;
                    let n = s.read(&mut buf)?;
                    if !buf[..n].starts_with(b"HTTP/1.1 200") {
                        bail!("unexpected answer: {:?}", String::from_utf8_lossy(&buf[..n.min(80)]));
                    }
                    held.push(s);
                }
                Ok(held)
            })
        })
        .collect();
    let mut held = Vec::new();
    for t in threads {
        held.extend(t.join().map_err(|_| anyhow::anyhow!("client thread panicked"))??);
    }
    println!("open={} seconds={:.1}", held.len(), start.elapsed().as_secs_f64());
    std::io::stdout().flush()?;
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    drop(held);
    Ok(())
}
