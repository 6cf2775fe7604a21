//! Writing `bench/results/<name>.md`: tables of raw numbers and medians, ratios against a
//! baseline, and what is needed to reproduce them (machine, versions, date, commands, configs).

use std::{fmt::Write as _, fs, path::PathBuf, process::Command};

use anyhow::{Context as _, Result};

use crate::cmd::{capture, workspace_root};

/// A markdown document built section by section.
#[derive(Default)]
pub struct Report {
    text: String,
}

impl Report {
    pub fn new(title: &str) -> Self {
        let mut r = Self::default();
        r.line(&format!("# {title}"));
        r.blank();
        r
    }

    pub fn heading(&mut self, text: &str) {
        self.line(&format!("## {text}"));
        self.blank();
    }

    /// A heading one level down (inside a section that `write_section` places).
    pub fn subheading(&mut self, text: &str) {
        self.line(&format!("### {text}"));
        self.blank();
    }

    pub fn paragraph(&mut self, text: &str) {
        self.line(text);
        self.blank();
    }

    /// A table; every row should have as many cells as the header.
    pub fn table(&mut self, header: &[&str], rows: &[Vec<String>]) {
        self.line(&format!("| {} |", header.join(" | ")));
        self.line(&format!("|{}", " --- |".repeat(header.len())));
        for row in rows {
            self.line(&format!("| {} |", row.join(" | ")));
        }
        self.blank();
    }

    /// A fenced block (commands, configuration files).
    pub fn code(&mut self, lang: &str, body: &str) {
        self.line(&format!("```{lang}"));
        self.line(body.trim_end());
        self.line("```");
        self.blank();
    }

    /// The commands a run used, then each config file (title, code-block language, text).
    pub fn commands_and_configs<N: AsRef<str>>(&mut self, commands: &[String], configs: &[(N, &str, String)]) {
        self.paragraph("Commands (ports are picked free for each run):");
        self.code("sh", &commands.join("\n"));
        for (name, lang, text) in configs {
            self.paragraph(&format!("{}:", name.as_ref()));
            self.code(lang, text);
        }
    }

    /// Writes `bench/results/<name>.md` and returns its path. Sections other modes put there
    /// (`write_section`, e.g. `bench ktls-idle` into tls.md) are kept, after this report.
    pub fn write(&self, name: &str) -> Result<PathBuf> {
        let dir = workspace_root().join("bench").join("results");
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let path = dir.join(format!("{name}.md"));
        let kept = fs::read_to_string(&path).map(|old| marked_sections(&old)).unwrap_or_default();
        let text = if kept.is_empty() { self.text.clone() } else { format!("{}\n{kept}", self.text.trim_end()) };
        fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(path)
    }

    /// Puts this report, as the section `key`, into `bench/results/<name>.md`: in place of the
    /// section's previous text, or appended (creating the file under `title`). The rest of the
    /// file, written by hand or by other modes, stays as it is.
    pub fn write_section(&self, name: &str, title: &str, key: &str) -> Result<PathBuf> {
        let dir = workspace_root().join("bench").join("results");
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let path = dir.join(format!("{name}.md"));
        let existing = fs::read_to_string(&path).unwrap_or_else(|_| format!("# {title}\n"));
        fs::write(&path, replace_section(&existing, key, &self.text))
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(path)
    }

    #[cfg(test)]
    pub fn text(&self) -> &str {
        &self.text
    }

    fn line(&mut self, text: &str) {
        let _ = writeln!(self.text, "{text}");
    }

    fn blank(&mut self) {
        self.text.push('\n');
    }
}

/// `doc` with the text between `<!-- begin KEY -->` and `<!-- end KEY -->` replaced by `body`,
/// or, without those markers, with the marked `body` appended.
pub fn replace_section(doc: &str, key: &str, body: &str) -> String {
    let (begin, end) = (format!("<!-- begin {key} -->"), format!("<!-- end {key} -->"));
    let marked = format!("{begin}\n{}\n{end}", body.trim_end());
    if let Some(b) = doc.find(&begin)
        && let Some(e) = doc[b..].find(&end)
    {
        return format!("{}{marked}{}", &doc[..b], &doc[b + e + end.len()..]);
    }
    format!("{}\n\n{marked}\n", doc.trim_end())
}

/// Every `<!-- begin KEY -->` … `<!-- end KEY -->` section of `doc`, markers included, each
/// followed by a newline, preceded by a blank line.
pub fn marked_sections(doc: &str) -> String {
    let mut out = String::new();
    let mut rest = doc;
    while let Some(b) = rest.find("<!-- begin ") {
        let key_end = rest[b..].find(" -->").map_or(rest.len(), |k| b + k);
        let end = format!("<!-- end {} -->", &rest[b + "<!-- begin ".len()..key_end]);
        let Some(e) = rest[b..].find(&end) else { break };
        let _ = write!(out, "\n{}\n", &rest[b..b + e + end.len()]);
        rest = &rest[b + e + end.len()..];
    }
    out
}

/// The median (the mean of the middle two for an even count); NaN for no values.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len().is_multiple_of(2) { (sorted[mid - 1] + sorted[mid]) / 2.0 } else { sorted[mid] }
}

/// The nearest-rank percentile `q` (0–1) of `samples`; NaN when there are none.
pub fn percentile(samples: &[f64], q: f64) -> f64 {
    let mut sorted: Vec<f64> = samples.iter().copied().filter(|v| v.is_finite()).collect();
    sorted.sort_by(f64::total_cmp);
    nearest_rank(&sorted, q)
}

/// `q`'s nearest rank in `sorted` (ascending, finite); NaN when empty.
fn nearest_rank(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Latency percentiles over the requests of every run together, and how many there were. A
/// median of per-run tail percentiles rests on each run's few slowest requests (a p99.9 of
/// 96,000 requests is the 96th slowest, which one scheduler hiccup moves); pooled over three
/// runs it is the ~290th slowest of ~290,000.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pooled {
    pub samples: usize,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
}

impl Pooled {
    /// Every sample of every run (seconds, or any one unit).
    pub fn of<'a>(runs: impl IntoIterator<Item = &'a [f64]>) -> Pooled {
        let mut sorted: Vec<f64> = runs.into_iter().flatten().copied().filter(|v| v.is_finite()).collect();
        sorted.sort_by(f64::total_cmp);
        Pooled {
            samples: sorted.len(),
            p50: nearest_rank(&sorted, 0.50),
            p99: nearest_rank(&sorted, 0.99),
            p999: nearest_rank(&sorted, 0.999),
        }
    }
}

/// `290,112`: a count with thousands separators.
pub fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `a / b` as `1.23×`, or `–` when it is meaningless.
pub fn ratio(a: f64, b: f64) -> String {
    if a.is_finite() && b.is_finite() && b != 0.0 { format!("{:.2}×", a / b) } else { "–".to_owned() }
}

/// A number with `digits` decimals, `–` for NaN.
pub fn num(value: f64, digits: usize) -> String {
    if value.is_finite() { format!("{value:.digits$}") } else { "–".to_owned() }
}

/// Facts about the machine and the moment, for the report's setup section.
#[derive(Clone)]
pub struct Machine {
    pub date: String,
    pub kernel: String,
    pub cpu_model: String,
    pub cpus: usize,
    pub memory: String,
    pub loadavg: String,
}

impl Machine {
    pub fn read() -> Self {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|(_, v)| v.trim().to_owned()))
            .unwrap_or_else(|| "unknown".to_owned());
        let cpus = cpuinfo.lines().filter(|l| l.starts_with("processor")).count();
        let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
            .map_or_else(|| "unknown".to_owned(), |kib| format!("{:.1} GiB", kib as f64 / 1024.0 / 1024.0));
        Self {
            date: output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M:%S UTC"])),
            kernel: output(Command::new("uname").args(["-srm"])),
            cpu_model,
            cpus,
            memory,
            loadavg: loadavg(),
        }
    }
}

/// The first rows of a three-proxy benchmark's setup table (`proxy`, `h2`): the machine, the CPU
/// split and the worker count of gatewayd, nginx and HAProxy.
pub fn proxy_setup_rows(m: &Machine, plan: &super::cpus::CpuPlan) -> Vec<Vec<String>> {
    vec![
        vec!["machine".into(), format!("{}, {} × {}, {}", m.kernel, m.cpus, m.cpu_model, m.memory)],
        vec!["subject CPUs (proxies)".into(), format!("{} (taskset)", plan.subject)],
        vec!["load CPUs (client, upstream, xtask)".into(), format!("{} (taskset)", plan.load)],
        vec![
            "workers".into(),
            format!(
                "gatewayd `workers = {0}`, nginx `worker_processes {0}`, haproxy `nbthread {0}`",
                plan.subject.len()
            ),
        ],
    ]
}

/// A summary row of a three-proxy benchmark: `values` per subject in the order upstream direct,
/// gatewayd, nginx, HAProxy (`–` for direct when only the proxies have it), then gatewayd's
/// ratios to nginx and to HAProxy.
pub fn proxy_row(label: String, values: &[f64], digits: usize, proxies_only: bool) -> Vec<String> {
    let mut cells = vec![label];
    for (s, v) in values.iter().enumerate() {
        cells.push(if proxies_only && s == 0 { "–".to_owned() } else { num(*v, digits) });
    }
    cells.push(ratio(values[1], values[2]));
    cells.push(ratio(values[1], values[3]));
    cells
}

/// The 1, 5 and 15 minute load averages: how busy the machine was (others share it).
pub fn loadavg() -> String {
    let text = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// The first line a command prints (on stdout, or stderr: `nginx -v`), or `unknown`.
pub fn version_of(cmd: &mut Command) -> String {
    match cmd.output() {
        Ok(out) => {
            let text = if out.stdout.is_empty() { out.stderr } else { out.stdout };
            String::from_utf8_lossy(&text).lines().next().unwrap_or("unknown").trim().to_owned()
        }
        Err(_) => "unknown".to_owned(),
    }
}

/// The commit being measured, `-dirty` when the worktree has changes.
pub fn git_revision() -> String {
    let root = workspace_root();
    let rev = capture(Command::new("git").arg("-C").arg(root).args(["rev-parse", "--short", "HEAD"]))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned());
    let dirty =
        capture(Command::new("git").arg("-C").arg(root).args(["status", "--porcelain", "--untracked-files=no"]))
            .is_ok_and(|s| !s.trim().is_empty());
    if dirty { format!("{rev}-dirty") } else { rev }
}

fn output(cmd: &mut Command) -> String {
    capture(cmd).map(|s| s.trim().to_owned()).unwrap_or_else(|_| "unknown".to_owned())
}

/// A command as it would be typed (for the report's command section).
pub fn shell_line(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_is_the_nearest_rank() {
        let samples: Vec<f64> = (1..=1000).map(f64::from).collect();
        assert_eq!(percentile(&samples, 0.99), 990.0);
        assert_eq!(percentile(&samples[..100], 0.99), 99.0);
        assert_eq!(percentile(&[3.0], 0.99), 3.0);
        assert!(percentile(&[], 0.99).is_nan());
    }

    #[test]
    fn pooled_percentiles_rank_every_run_together() {
        // Two runs of 1..=1000 and 1001..=2000, given unsorted: ranks over all 2,000.
        let a: Vec<f64> = (1..=1000).rev().map(f64::from).collect();
        let b: Vec<f64> = (1001..=2000).map(f64::from).collect();
        let pooled = Pooled::of([a.as_slice(), b.as_slice(), &[f64::NAN]]);
        assert_eq!(pooled, Pooled { samples: 2000, p50: 1000.0, p99: 1980.0, p999: 1998.0 });
        assert!(Pooled::of([]).p999.is_nan());
        assert_eq!(thousands(290_112), "290,112");
        assert_eq!(thousands(96), "96");
    }

    #[test]
    fn sections_are_replaced_in_place_or_appended() {
        let doc = "# T\n\nBy hand.\n";
        let once = replace_section(doc, "h1", "## h1\n\n1 instruction");
        assert_eq!(once, "# T\n\nBy hand.\n\n<!-- begin h1 -->\n## h1\n\n1 instruction\n<!-- end h1 -->\n");
        let twice = replace_section(&replace_section(&once, "h2", "h2 text"), "h1", "2 instructions\n");
        assert!(twice.starts_with("# T\n\nBy hand.\n\n<!-- begin h1 -->\n2 instructions\n<!-- end h1 -->\n"));
        assert!(twice.ends_with("<!-- begin h2 -->\nh2 text\n<!-- end h2 -->\n"));
        assert_eq!(twice.matches("<!-- begin").count(), 2);
    }

    #[test]
    fn a_rewritten_report_keeps_the_sections_other_modes_placed() {
        let doc = replace_section(&replace_section("# T\n\nold run\n", "a", "A"), "b", "B\nmore");
        let kept = marked_sections(&doc);
        assert_eq!(kept, "\n<!-- begin a -->\nA\n<!-- end a -->\n\n<!-- begin b -->\nB\nmore\n<!-- end b -->\n");
        assert_eq!(marked_sections("# T\n\nno sections\n<!-- begin x -->\nunterminated"), "");
        // Kept text is itself a document whose sections can be replaced again.
        assert_eq!(marked_sections(&format!("# T\n\nnew run\n{kept}")), kept);
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[f64::NAN, 5.0]), 5.0);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn ratios_and_numbers() {
        assert_eq!(ratio(3.0, 2.0), "1.50×");
        assert_eq!(ratio(1.0, 0.0), "–");
        assert_eq!(ratio(f64::NAN, 2.0), "–");
        assert_eq!(num(1.23456, 2), "1.23");
        assert_eq!(num(f64::NAN, 1), "–");
    }

    #[test]
    fn tables_render_as_markdown() {
        let mut r = Report::new("T");
        r.table(&["a", "b"], &[vec!["1".into(), "2".into()]]);
        assert_eq!(r.text, "# T\n\n| a | b |\n| --- | --- |\n| 1 | 2 |\n\n");
    }
}
