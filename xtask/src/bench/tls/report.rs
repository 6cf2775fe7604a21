//! `bench/results/tls.md`: medians and ratios per phase, the goal (handshakes per server
//! core-second ahead of nginx's), every raw run, and the setup (TLS parameters, kTLS, versions,
//! commands, configuration files).

use std::process::Command;

use super::{Phase, Run, Setup, Subject, client};
use crate::bench::report::{self, Report, median, num, ratio};

/// The report for `results[phase] = (phase, runs[subject][rep])`.
pub fn write(subjects: &[Subject], results: &[(Phase, Vec<Vec<Run>>)], setup: &Setup) -> Report {
    let cpus = setup.plan.subject.len();
    let med = |runs: &[Run], f: fn(&Run) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
    let names: Vec<&str> = subjects.iter().map(|s| s.name).collect();

    let mut rep = Report::new("Benchmark: tls");
    let all_background: Vec<f64> =
        results.iter().flat_map(|(_, runs)| runs.iter().flatten().map(|r| r.background)).collect();
    rep.paragraph(&format!(
        "Written by `cargo xtask bench tls` on {} (gatewayd {}). TLS termination by gatewayd and by nginx \
         (Debian's package) with the same certificates, {} worker(s) each on the same pinned CPU(s), both \
         proxying to the same upstream nginx. Medians of {} interleaved runs of {} s per subject and phase; raw \
         runs below. Load average {} at the start, {} at the end; other processes used a median {} of the \
         subject CPUs during the runs (\"background\" in the raw runs).",
        setup.machine.date,
        report::git_revision(),
        cpus,
        setup.reps,
        setup.duration.as_secs(),
        setup.machine.loadavg,
        setup.load_after,
        percent(median(&all_background)),
    ));
    rep.paragraph(&format!(
        "**No kTLS here:** the host kernel has no `CONFIG_TLS`, so gatewayd ran rustls in userspace for every \
         connection ({}), like nginx (OpenSSL, no `ssl_conf_command Options KTLS`). Both encrypt in userspace.",
        ktls_facts(&setup.metrics)
    ));

    rep.heading("Summary");
    let mut rows = Vec::new();
    for (phase, runs) in results {
        let row = |label: String, f: fn(&Run) -> f64, digits: usize| {
            let v: Vec<f64> = runs.iter().map(|r| med(r, f)).collect();
            let mut row = vec![label];
            row.extend(v.iter().map(|x| num(*x, digits)));
            row.push(ratio(v[0], v[1]));
            row
        };
        let (u, us) = (phase.unit, phase.units);
        rows.push(row(format!("{}: {us}/s", phase.name), Run::rate, 0));
        rows.push(row(format!("{}: server CPU µs per {u}", phase.name), Run::cpu_us_per_unit, 1));
        rows.push(row(format!("{}: **{us} per server core-second**", phase.name), Run::per_core_second, 0));
    }
    let mut header = vec![""];
    header.extend(&names);
    let ratio_header = format!("{} / {}", names[0], names[1]);
    header.push(&ratio_header);
    rep.table(&header, &rows);
    rep.paragraph(
        "Server CPU is user + system time of the subject's whole process tree (all threads; nginx's master \
         and workers) over the run. \"Per server core-second\" is the inverse of CPU per unit: what one core \
         of the subject does, independent of whether the client or the server limited the rate (see \"server \
         CPU busy\" in the raw runs: near 100%, the rate is the server's limit). For the CPU rows, lower is \
         better; for the others, higher.",
    );

    rep.paragraph(&format!(
        "nginx is Debian's package, linked with Debian's OpenSSL ({}); OpenSSL 3.0's handshake path is widely \
         reported to be slower than 1.1.1's and than later 3.x releases', so an nginx built on another TLS library \
         may do better than this one. The comparison is with what a Debian machine runs.",
        report::version_of(Command::new("openssl").arg("version"))
    ));

    rep.heading("Goals");
    let mut goal_rows = Vec::new();
    for (phase, runs) in results.iter().filter(|(p, _)| p.unit == "handshake") {
        let g = med(&runs[0], Run::per_core_second);
        let n = med(&runs[1], Run::per_core_second);
        goal_rows.push(vec![
            format!("{} per server core-second ≥ nginx's", phase.name),
            num(g, 0),
            num(n, 0),
            verdict(g, n).to_owned(),
        ]);
    }
    let mut goal_header = vec!["goal (issue 3)"];
    goal_header.extend(&names);
    goal_header.push("verdict");
    rep.table(&goal_header, &goal_rows);

    for (phase, runs) in results {
        rep.heading(&format!("Raw runs: {}", phase.name));
        let (u, us) = (phase.unit, phase.units);
        let reps = runs.iter().map(Vec::len).max().unwrap_or(0);
        let mut raw = Vec::new();
        for i in 0..reps {
            for (subject, runs) in subjects.iter().zip(runs) {
                let Some(r) = runs.get(i) else { continue };
                raw.push(vec![
                    (i + 1).to_string(),
                    subject.name.to_owned(),
                    num(r.rate(), 0),
                    num(r.units, 0),
                    num(r.seconds, 2),
                    num(r.cpu_us_per_unit(), 1),
                    percent(r.busy(cpus)),
                    percent(r.background),
                ]);
            }
        }
        let per_second = format!("{us}/s");
        let count = us.to_owned();
        let cpu = format!("server CPU µs/{u}");
        rep.table(
            &["run", "subject", &per_second, &count, "seconds", &cpu, "server CPU busy", "background on subject CPUs"],
            &raw,
        );
    }

    rep.heading("Setup");
    let m = &setup.machine;
    let resumed = metric_sum(&setup.metrics, "gateway_tls_handshake_duration_seconds_count", &[("resumed", "true")]);
    rep.table(
        &["", ""],
        &[
            vec!["machine".into(), format!("{}, {} × {}, {}", m.kernel, m.cpus, m.cpu_model, m.memory)],
            vec!["subject CPUs (gatewayd, nginx)".into(), format!("{} (taskset)", setup.plan.subject)],
            vec!["load CPUs (client, upstream, xtask)".into(), format!("{} (taskset)", setup.plan.load)],
            vec!["workers".into(), format!("gatewayd `workers = {cpus}`, nginx `worker_processes {cpus}`")],
            vec![
                "certificates".into(),
                "`gatewayd certs init --key-type ecdsa-p256` and `--key-type rsa-2048`: a leaf for localhost and \
                 127.0.0.1 (the server sends the leaf only), the same files for both subjects, one listener each"
                    .into(),
            ],
            vec![
                "TLS".into(),
                format!(
                    "TLS 1.3, {} with {}; the client offers only these, and checks every connection negotiated \
                     them. gatewayd: its defaults (TLS 1.3 only, tickets on, rustls {} on aws-lc-rs {}). nginx: \
                     `ssl_protocols TLSv1.3`, `ssl_ecdh_curve X25519`, all three TLS 1.3 suites, tickets on, no \
                     session cache",
                    client::SUITE,
                    client::GROUP,
                    locked_version("rustls"),
                    locked_version("aws-lc-rs")
                ),
            ],
            vec![
                "client".into(),
                format!(
                    "xtask's rustls client (release-optimized crypto), {} threads on the load CPUs, one connection \
                     at a time each. Handshakes: connect, handshake, `GET /` (`Connection: close`, answer \
                     \"ok\" proxied from the upstream), wait for the server's close. Full: no resumption offered. \
                     Resumed: every connection resumes with a ticket from its thread's store (primed by one full \
                     handshake before the run); one that does not fails the run (gatewayd counted {} resumed \
                     handshakes). 1 MiB: one keep-alive connection per thread, `GET /1m` again and again. The \
                     client checks the server's certificate byte for byte but skips the signature check",
                    setup.threads,
                    num(resumed, 0)
                ),
            ],
            vec![
                "upstream".into(),
                "nginx on the load CPUs: `/` answers `return 200 \"ok\"`, `/1m` a 1 MiB file; keep-alive".into(),
            ],
            vec![
                "runs".into(),
                format!(
                    "phases in the order of the tables; in each, a {} s warm-up per subject, then {} × {} s per \
                     subject, interleaved (gatewayd, nginx, gatewayd, …)",
                    super::WARMUP.as_secs(),
                    setup.reps,
                    setup.duration.as_secs()
                ),
            ],
            vec!["gatewayd".into(), report::git_revision()],
            vec![
                "rustc".into(),
                report::version_of(Command::new("rustc").arg("--version").current_dir(crate::cmd::workspace_root())),
            ],
            vec!["nginx".into(), report::version_of(Command::new("nginx").arg("-v"))],
            vec!["OpenSSL".into(), report::version_of(Command::new("openssl").arg("version"))],
        ],
    );
    rep.commands_and_configs(&setup.commands, &setup.configs);
    rep
}

fn verdict(gatewayd: f64, nginx: f64) -> &'static str {
    if gatewayd >= nginx { "met" } else { "**not met**" }
}

/// `0.123` → `12.3%`.
fn percent(share: f64) -> String {
    if share.is_finite() { format!("{:.1}%", share * 100.0) } else { "–".to_owned() }
}

/// What gatewayd's metrics say about kTLS: support and connections by mode.
fn ktls_facts(metrics: &str) -> String {
    let supported = metric_sum(metrics, "gateway_ktls_supported", &[]);
    let userspace = metric_sum(metrics, "gateway_tls_connections_total", &[("mode", "userspace")]);
    let ktls = metric_sum(metrics, "gateway_tls_connections_total", &[("mode", "ktls")]);
    format!(
        "gatewayd's metrics after the runs: `gateway_ktls_supported {}`, `gateway_tls_connections_total` \
         userspace {}, ktls {}",
        num(supported, 0),
        num(userspace, 0),
        num(ktls, 0)
    )
}

/// The sum of the samples of metric `name` (Prometheus text format) whose labels include all of
/// `labels`; 0 when there are none.
fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (label_text, value) = match rest.strip_prefix('{') {
                Some(rest) => rest.split_once('}')?,
                None if rest.starts_with(' ') => ("", rest),
                None => return None,
            };
            let matches = labels.iter().all(|(k, v)| label_text.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
            if matches { value.split_whitespace().next()?.parse::<f64>().ok() } else { None }
        })
        // Not `sum()`: an empty f64 sum is -0.
        .fold(0.0, |a, b| a + b)
}

/// The version of `package` in the workspace's Cargo.lock (the first, if several), or `unknown`.
fn locked_version(package: &str) -> String {
    let lock = std::fs::read_to_string(crate::cmd::workspace_root().join("Cargo.lock")).unwrap_or_default();
    version_in_lock(&lock, package).unwrap_or_else(|| "unknown".to_owned())
}

fn version_in_lock(lock: &str, package: &str) -> Option<String> {
    let mut lines = lock.lines();
    let wanted = format!("name = \"{package}\"");
    lines.by_ref().find(|l| *l == wanted)?;
    let version = lines.next()?.strip_prefix("version = \"")?.strip_suffix('"')?;
    Some(version.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{
        cpus::{CpuList, CpuPlan},
        procfs::Tree,
        report::Machine,
        tls::{
            client::{KeyKind, Target, Work},
            phases,
        },
    };

    const METRICS: &str = "# HELP gateway_ktls_supported 1 when the kernel accepted TLS offload
# TYPE gateway_ktls_supported gauge
gateway_ktls_supported 0
gateway_tls_connections_total{listener=\"ecdsa\",mode=\"userspace\"} 120
gateway_tls_connections_total{listener=\"rsa\",mode=\"userspace\"} 30
gateway_tls_handshake_duration_seconds_count{listener=\"ecdsa\",version=\"TLSv1_3\",resumed=\"true\"} 70
gateway_tls_handshake_duration_seconds_count{listener=\"ecdsa\",version=\"TLSv1_3\",resumed=\"false\"} 50
gateway_tls_handshake_duration_seconds_sum{listener=\"ecdsa\",version=\"TLSv1_3\",resumed=\"true\"} 0.5
";

    #[test]
    fn metrics_are_summed_by_label() {
        assert_eq!(metric_sum(METRICS, "gateway_ktls_supported", &[]), 0.0);
        assert_eq!(metric_sum(METRICS, "gateway_tls_connections_total", &[("mode", "userspace")]), 150.0);
        assert_eq!(metric_sum(METRICS, "gateway_tls_connections_total", &[("mode", "ktls")]), 0.0);
        assert_eq!(metric_sum(METRICS, "gateway_tls_handshake_duration_seconds_count", &[("resumed", "true")]), 70.0);
        assert_eq!(metric_sum(METRICS, "gateway_tls_handshake_duration_seconds_count", &[]), 120.0);
        assert!(
            ktls_facts(METRICS).contains("`gateway_ktls_supported 0`, `gateway_tls_connections_total` userspace 150")
        );
    }

    #[test]
    fn lockfile_versions_are_read() {
        let lock = "[[package]]\nname = \"rustls-pki-types\"\nversion = \"1.0.0\"\n\n[[package]]\nname = \"rustls\"\nversion = \"0.23.46\"\n";
        assert_eq!(version_in_lock(lock, "rustls").as_deref(), Some("0.23.46"));
        assert_eq!(version_in_lock(lock, "ring"), None);
    }

    #[test]
    fn the_report_has_ratios_goals_and_raw_runs() -> anyhow::Result<()> {
        let target = |key| Target { addr: "127.0.0.1:1".parse().unwrap(), leaf: vec![1].into(), key };
        let subject =
            |name| Subject { name, ecdsa: target(KeyKind::EcdsaP256), rsa: target(KeyKind::Rsa2048), tree: Tree(1) };
        let subjects = [subject("gatewayd"), subject("nginx")];
        let run = |units: f64, cpu_seconds: f64| Run { units, seconds: 5.0, cpu_seconds, background: 0.01 };
        // gatewayd: 2 µs less CPU per handshake on ECDSA, more on RSA.
        let results: Vec<(Phase, Vec<Vec<Run>>)> = phases()
            .into_iter()
            .map(|phase| {
                let (g, n) = match phase.key {
                    _ if matches!(phase.work, Work::Download { .. }) => ((5000.0, 4.0), (4000.0, 4.0)),
                    KeyKind::EcdsaP256 => ((10_000.0, 4.0), (10_000.0, 5.0)),
                    KeyKind::Rsa2048 => ((4000.0, 5.0), (4000.0, 4.0)),
                };
                (phase, vec![vec![run(g.0, g.1); 3], vec![run(n.0, n.1); 3]])
            })
            .collect();
        let setup = Setup {
            reps: 3,
            duration: std::time::Duration::from_secs(5),
            threads: 64,
            plan: CpuPlan { subject: CpuList(vec![1]), load: CpuList(vec![0]) },
            machine: Machine::read(),
            load_after: "0 0 0".into(),
            commands: vec!["nginx".into()],
            configs: vec![("nginx.conf".into(), "nginx", "daemon off;".into())],
            metrics: METRICS.into(),
        };
        let text = write(&subjects, &results, &setup).text().to_owned();
        assert!(text.contains("| full handshakes, ECDSA P-256: handshakes/s | 2000 | 2000 | 1.00× |"), "{text}");
        assert!(
            text.contains(
                "| full handshakes, ECDSA P-256: **handshakes per server core-second** | 2500 | 2000 | 1.25× |"
            )
        );
        assert!(text.contains("| full handshakes, ECDSA P-256 per server core-second ≥ nginx's | 2500 | 2000 | met |"));
        assert!(
            text.contains("| full handshakes, RSA-2048 per server core-second ≥ nginx's | 800 | 1000 | **not met** |")
        );
        assert!(text.contains("| 1 MiB responses over keep-alive: server CPU µs per MiB | 800.0 | 1000.0 | 0.80× |"));
        assert!(text.contains("| 1 | gatewayd | 2000 | 10000 | 5.00 | 400.0 | 80.0% | 1.0% |"));
        assert!(text.contains("resumed handshakes (ECDSA P-256 certificate) per server core-second"));
        assert!(text.contains("userspace 150"));
        Ok(())
    }
}
