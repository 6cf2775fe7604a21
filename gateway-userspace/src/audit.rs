//! The audit log: one JSON line per request (the seed's audit format plus route, service,
//! latency split and bytes), written by a dedicated thread behind a bounded queue so a slow disk
//! never blocks a request. When the queue is full the line is dropped and counted.
//! `reopen()` (SIGUSR1) makes the writer reopen its file, for logrotate.

use std::{
    fs::{File, OpenOptions},
    io::{BufWriter, Write},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc::{self, RecvTimeoutError, SyncSender, TrySendError},
    },
    time::{Duration, SystemTime},
};

use prometheus_client::{metrics::counter::Counter, registry::Registry};
use serde::Serialize;

use crate::{
    request::VerifyStatus,
    request::{Outcome, Phase, RequestCtx},
};

/// One line of the audit log. Field names follow the seed's format.
#[derive(Debug, Serialize)]
pub struct AuditRecord {
    pub timestamp: String,
    pub request_id: String,
    pub user_id: Option<String>,
    pub workspace_id: Option<String>,
    pub method: String,
    pub path: String,
    pub status_code: u16,
    /// Whole request, in milliseconds (rounded), as in the seed.
    pub latency_ms: u64,
    pub tokens_used: Option<u64>,
    pub model_name: Option<String>,
    pub tools_used: Vec<String>,
    pub ip_address: String,
    pub user_agent: Option<String>,
    pub route: Option<String>,
    pub service: Option<String>,
    pub upstream: Option<String>,
    pub upstream_latency_ms: Option<f64>,
    pub gateway_latency_ms: f64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub listener: String,
    /// The consumer the request's credentials belong to (`[[consumers]]` name).
    pub consumer: Option<String>,
    /// TLS version of the client connection (`TLSv1.3`), absent on plain HTTP.
    pub tls_version: Option<&'static str>,
    /// Client certificate status: `absent`, `failed` or `success`.
    pub client_cert_verify: &'static str,
    /// Why a presented certificate is `failed`: the `gateway_tls_handshakes_total` result
    /// (`revoked`, `unknown_ca`, `bad_ca`, …).
    pub client_cert_failure: Option<&'static str>,
    /// Subject DN (RFC 4514), SANs, SHA-256 fingerprint (hex) and serial (hex) of a verified
    /// client certificate.
    pub client_cert_subject: Option<String>,
    pub client_cert_san: Vec<String>,
    pub client_cert_sha256: Option<String>,
    pub client_cert_serial: Option<String>,
    /// Why the gateway answered itself (`no_route`, `connect_refused`, …), or how the request
    /// ended early (`client_aborted`, `upstream_body_failed`).
    pub error: Option<&'static str>,
}

impl AuditRecord {
    pub fn from_ctx(ctx: &RequestCtx) -> Self {
        let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
        let error = ctx.error.or(match ctx.outcome {
            Some(Outcome::ClientAborted) => Some("client_aborted"),
            Some(Outcome::UpstreamBodyFailed) => Some("upstream_body_failed"),
            _ => None,
        });
        let tls = ctx.conn.tls.as_ref();
        let (verify, failure) = ctx.client_cert;
        let cert = match verify {
            VerifyStatus::Success => tls.and_then(|t| t.client_cert.as_ref()).and_then(|c| c.facts()),
            _ => None,
        };
        AuditRecord {
            timestamp: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            request_id: ctx.request_id.to_str().unwrap_or_default().to_owned(),
            user_id: ctx.identity.user_id.clone(),
            workspace_id: ctx.identity.workspace_id.clone(),
            method: ctx.method.as_str().to_owned(),
            path: ctx.path().to_owned(),
            status_code: ctx.status,
            latency_ms: ctx.timings.total().as_millis() as u64,
            tokens_used: ctx.usage.tokens_used,
            model_name: ctx.usage.model_name.clone(),
            tools_used: ctx.usage.tools_used.clone(),
            ip_address: ctx.client_ip.to_string(),
            user_agent: ctx.user_agent.as_ref().map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
            route: ctx.route_name().map(|s| s.to_string()),
            service: ctx.service_name().map(|s| s.to_string()),
            upstream: ctx.target_label().map(|s| s.to_string()),
            upstream_latency_ms: ctx.timings.upstream().map(ms),
            gateway_latency_ms: ms(ctx.timings.gateway()),
            bytes_received: ctx.bytes_received.get(),
            bytes_sent: ctx.bytes_sent,
            listener: ctx.conn.listener.to_string(),
            consumer: ctx.identity.consumer.as_ref().map(|c| c.name.to_string()),
            tls_version: tls.map(|t| t.version),
            client_cert_verify: verify.as_str(),
            client_cert_failure: failure,
            client_cert_subject: cert.map(|c| c.subject.clone()),
            client_cert_san: cert.map(|c| c.sans.clone()).unwrap_or_default(),
            client_cert_sha256: cert.map(|c| c.sha256_hex()),
            client_cert_serial: cert.map(|c| c.serial.clone()),
            error,
        }
    }
}

/// Counters shared by every audit writer the process starts.
#[derive(Debug, Clone, Default)]
pub struct AuditMetrics {
    written: Counter,
    dropped: Counter,
    write_errors: Counter,
}

impl AuditMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = AuditMetrics::default();
        registry.register("gateway_audit_lines", "Audit lines written", m.written.clone());
        registry.register(
            "gateway_audit_dropped",
            "Audit lines dropped because the writer queue was full",
            m.dropped.clone(),
        );
        registry.register("gateway_audit_write_errors", "Audit file write or open errors", m.write_errors.clone());
        m
    }
}

/// The sending side, held by the audit phase.
#[derive(Debug, Clone)]
pub struct AuditSink {
    tx: SyncSender<AuditLine>,
    reopen: Arc<AtomicBool>,
    metrics: AuditMetrics,
    path: PathBuf,
}

impl AuditSink {
    /// Opens `path` (append, created 0640) and starts the writer thread; the thread exits when
    /// every sink clone is dropped.
    pub fn start(path: &Path, queue_size: usize, metrics: AuditMetrics) -> std::io::Result<AuditSink> {
        let file = open(path)?;
        let (tx, rx) = mpsc::sync_channel(queue_size);
        let reopen = Arc::new(AtomicBool::new(false));
        let writer = Writer {
            path: path.to_owned(),
            out: BufWriter::with_capacity(64 * 1024, file),
            reopen: reopen.clone(),
            metrics: metrics.clone(),
        };
        std::thread::Builder::new().name("audit-writer".into()).spawn(move || writer.run(&rx))?;
        Ok(AuditSink { tx, reopen, metrics, path: path.to_owned() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn send(&self, record: AuditRecord) {
        self.send_line(AuditLine::Request(record));
    }

    /// An operator event (a change requested, approved, applied, …): one JSON object, written
    /// in order with the request lines.
    pub fn send_event(&self, event: serde_json::Value) {
        self.send_line(AuditLine::Event(event));
    }

    fn send_line(&self, line: AuditLine) {
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.metrics.dropped.inc();
            }
            Err(TrySendError::Disconnected(_)) => {
                self.metrics.write_errors.inc();
            }
        }
    }

    /// Asks the writer to reopen its file (after logrotate moved it).
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Release);
    }
}

/// What the writer thread writes: a request's record, or an operator event.
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "request records go through the queue by value, as before events existed: boxing them would cost an allocation per request"
)]
enum AuditLine {
    Request(AuditRecord),
    Event(serde_json::Value),
}

struct Writer {
    path: PathBuf,
    out: BufWriter<File>,
    reopen: Arc<AtomicBool>,
    metrics: AuditMetrics,
}

impl Writer {
    fn run(mut self, rx: &mpsc::Receiver<AuditLine>) {
        loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(record) => {
                    self.write(&record);
                    // Batch whatever else is queued, then flush once.
                    while let Ok(r) = rx.try_recv() {
                        self.write(&r);
                    }
                    self.flush();
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.flush();
                    return;
                }
            }
            if self.reopen.swap(false, Ordering::AcqRel) {
                self.flush();
                match open(&self.path) {
                    Ok(f) => self.out = BufWriter::with_capacity(64 * 1024, f),
                    Err(e) => {
                        self.metrics.write_errors.inc();
                        tracing::error!(path = %self.path.display(), error = %e, "cannot reopen audit log; still writing to the old file");
                    }
                }
            }
        }
    }

    fn write(&mut self, line: &AuditLine) {
        let result = match line {
            AuditLine::Request(record) => serde_json::to_writer(&mut self.out, record),
            AuditLine::Event(event) => serde_json::to_writer(&mut self.out, event),
        };
        let result = result.map_err(std::io::Error::other).and_then(|()| self.out.write_all(b"\n"));
        match result {
            Ok(()) => {
                self.metrics.written.inc();
            }
            Err(e) => {
                self.metrics.write_errors.inc();
                tracing::error!(error = %e, "audit log write failed");
            }
        };
    }

    fn flush(&mut self) {
        if let Err(e) = self.out.flush() {
            self.metrics.write_errors.inc();
            tracing::error!(error = %e, "audit log flush failed");
        }
    }
}

fn open(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new().create(true).append(true).mode(0o640).open(path)
}

/// The log phase that writes the audit line.
pub struct AuditPhase(pub AuditSink);

impl Phase for AuditPhase {
    fn name(&self) -> &'static str {
        "audit"
    }

    fn on_log(&self, ctx: &RequestCtx) {
        self.0.send(AuditRecord::from_ctx(ctx));
    }
}
