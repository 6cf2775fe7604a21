//! The configuration file as written by users (TOML). Only shape and defaults live here;
//! meaning is checked by `validate`, which turns this into a [`super::Snapshot`].
//! Every key is documented next to its field, with its default.

use std::{collections::BTreeMap, time::Duration};

use serde::Deserialize;

mod xdp;
pub use crate::{ebpf::SteeringPolicy, logging::LogFormat, upstream::LbAlgorithm};
pub use xdp::{XdpFeedbackSection, XdpRateSection, XdpSection};
mod limits;
pub use limits::*;
mod oidc;
pub use oidc::LoginSection;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub server: ServerSection,
    /// Client-facing listeners. Default: none (a config with no listener is refused).
    #[serde(default)]
    pub listeners: Vec<ListenerSection>,
    #[serde(default)]
    pub metrics: MetricsSection,
    #[serde(default)]
    pub audit: AuditSection,
    #[serde(default)]
    pub admin: AdminSection,
    #[serde(default)]
    pub services: Vec<ServiceSection>,
    #[serde(default)]
    pub routes: Vec<RouteSection>,
    /// The built-in demo upstream (used by the embedded defaults). Default: off.
    #[serde(default)]
    pub demo: DemoSection,
    /// The XDP/TC guard. Default: off.
    #[serde(default)]
    pub xdp: XdpSection,
    /// Identity: token issuers, route policies, token sources, identity headers. Default: none
    /// (then every route must say `auth = "none"`).
    #[serde(default)]
    pub auth: AuthSection,
    /// The parties that call the gateway and their credentials. Default: none.
    #[serde(default)]
    pub consumers: Vec<ConsumerSection>,
    /// Redis shared by the fleet. Default: none.
    pub redis: Option<RedisSection>,
    /// Rate-limit layers, in evaluation order. Default: none.
    #[serde(default)]
    pub rate_limits: Vec<RateLimitSection>,
    /// Daily token budgets. Default: none.
    #[serde(default)]
    pub token_budgets: Vec<TokenBudgetSection>,
}

/// `[server]`: process-wide settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// `"auto"` (one worker per online CPU) or a number. Default: `"auto"`.
    #[serde(default)]
    pub workers: Workers,
    /// Pin worker k to CPU k (modulo the CPU count). Default: false.
    #[serde(default)]
    pub pin_workers: bool,
    /// Peers (CIDRs) whose X-Forwarded-*/Forwarded headers are believed. Default: none.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Forward client headers whose name contains `_` (nginx's `underscores_in_headers`).
    /// Default: false, they are dropped, as nginx does by default. Either way, a name that reads
    /// as a header the gateway sets once `_` is read as `-` is always dropped.
    #[serde(default)]
    pub underscores_in_headers: bool,
    /// On SIGTERM, how long in-flight requests may take before the process exits. Default: 30s.
    #[serde(default = "default_drain_timeout", with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// `"text"` or `"json"` logs on stderr. Default: `"text"`.
    #[serde(default)]
    pub log_format: LogFormat,
    /// tracing filter (e.g. `"info"`, `"gatewayd=debug"`); RUST_LOG overrides it. Default: `"info"`.
    #[serde(default = "default_log_level")]
    pub log_level: String,
    #[serde(default)]
    pub limits: LimitsSection,
    #[serde(default)]
    pub buffering: BufferingSection,
    /// How new connections are spread over workers: `"none"` (kernel hash), `"cpu"` (the
    /// receiving CPU's worker) or `"client_hash"` (per client address). Default: `"none"`.
    #[serde(default)]
    pub steering: SteeringPolicy,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            workers: Workers::default(),
            pin_workers: false,
            trusted_proxies: Vec::new(),
            underscores_in_headers: false,
            drain_timeout: default_drain_timeout(),
            log_format: LogFormat::default(),
            log_level: default_log_level(),
            limits: LimitsSection::default(),
            buffering: BufferingSection::default(),
            steering: SteeringPolicy::default(),
        }
    }
}

/// `workers = "auto" | N`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Workers {
    #[default]
    #[serde(with = "auto_keyword")]
    Auto,
    Count(u32),
}

mod auto_keyword {
    use serde::{Deserialize, Deserializer, de::Error};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<(), D::Error> {
        let s = String::deserialize(d)?;
        if s == "auto" { Ok(()) } else { Err(D::Error::custom("expected \"auto\" or a number")) }
    }
}

/// `[server.limits]`: what a client may send. Each limit answers with its own status.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// Largest request body, in bytes or with a unit ("10MiB"); larger bodies get 413. Default: 10 MiB.
    #[serde(default = "default_max_body")]
    pub max_request_body: ByteSize,
    /// Largest request head (request line + headers); larger heads get 431. Default: 32 KiB.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: ByteSize,
    /// Most header fields in one request; more get 431. Default: 100.
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
    /// Longest request target (path + query); longer gets 414. Default: 8 KiB.
    #[serde(default = "default_max_request_line")]
    pub max_request_line: ByteSize,
    /// A client that started a request must finish its head within this; slowloris clients are
    /// closed. Default: 10s.
    #[serde(default = "default_header_timeout", with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A keep-alive connection with no request in flight is closed after this. Default: 60s.
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// An idle HTTP/1 keep-alive connection gives its HTTP state and buffers back after this
    /// without a request (it is parked), and keeps its socket. Default: 1s.
    #[serde(default = "default_park_after", with = "humantime_serde")]
    pub park_after: Duration,
    /// Concurrent streams per HTTP/2 connection. Default: 128.
    #[serde(default = "default_h2_streams")]
    pub h2_max_concurrent_streams: u32,
    /// Frames of each kind that carry no request (PING, SETTINGS, PRIORITY, WINDOW_UPDATE,
    /// RST_STREAM, empty DATA, GOAWAY, unknown types) one HTTP/2 connection may send per second,
    /// plus 10 for each request it opens and each DATA frame it is sent; past that it is closed
    /// with GOAWAY ENHANCE_YOUR_CALM. Default: 100.
    #[serde(default = "default_h2_control_frames")]
    pub h2_control_frames_per_second: u32,
    /// Longest pause between two reads of a request body (nginx's `client_body_timeout`); past
    /// it the request gets 408. Routes may override it. Default: 60s.
    #[serde(default = "default_client_body_timeout", with = "humantime_serde")]
    pub client_body_timeout: Duration,
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self {
            max_request_body: default_max_body(),
            max_header_bytes: default_max_header_bytes(),
            max_headers: default_max_headers(),
            max_request_line: default_max_request_line(),
            header_read_timeout: default_header_timeout(),
            idle_timeout: default_idle_timeout(),
            park_after: default_park_after(),
            h2_max_concurrent_streams: default_h2_streams(),
            h2_control_frames_per_second: default_h2_control_frames(),
            client_body_timeout: default_client_body_timeout(),
        }
    }
}

/// `[server.buffering]`: what the gateway holds for a request so that slow clients do not hold
/// upstream connections (nginx's `proxy_request_buffering` and `proxy_buffering`). Routes may
/// switch either kind on or off.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BufferingSection {
    /// Read a request body of up to `request_buffer_size` completely before an upstream
    /// connection is taken; larger bodies stream. Default: true.
    #[serde(default = "default_true")]
    pub request_buffering: bool,
    /// Largest request body held in memory. Default: 64 KiB.
    #[serde(default = "default_buffer_size")]
    pub request_buffer_size: ByteSize,
    /// Read the upstream response as fast as the upstream sends it, into memory up to
    /// `response_buffer_size` and then into a temp file, so the upstream connection is released
    /// while a slow client reads. Default: false (responses stream).
    #[serde(default)]
    pub response_buffering: bool,
    /// Response bytes held in memory per response before the temp file. Default: 32 KiB.
    #[serde(default = "default_response_buffer_size")]
    pub response_buffer_size: ByteSize,
    /// Most bytes one response keeps in its temp file; past it the upstream is read only as
    /// fast as the client reads. `0`: no temp file. Default: 1 GiB.
    #[serde(default = "default_max_temp_file_size")]
    pub max_temp_file_size: ByteSize,
    /// Directory of the temp files (each is unlinked as soon as it is created). Default: the
    /// system temp directory (`$TMPDIR`, else `/tmp`).
    pub temp_dir: Option<String>,
}

impl Default for BufferingSection {
    fn default() -> Self {
        Self {
            request_buffering: true,
            request_buffer_size: default_buffer_size(),
            response_buffering: false,
            response_buffer_size: default_response_buffer_size(),
            max_temp_file_size: default_max_temp_file_size(),
            temp_dir: None,
        }
    }
}

/// `[[listeners]]`: one client-facing socket, bound by every worker (SO_REUSEPORT).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSection {
    /// Unique name, used in metrics labels and logs. Required.
    pub name: String,
    /// `ip:port` to listen on. Required.
    pub bind: String,
    /// Accept HTTP/2 with prior knowledge (h2c) next to HTTP/1.1. Default: true.
    #[serde(default = "default_true")]
    pub http2: bool,
    /// listen(2) backlog per worker socket. Default: 1024.
    #[serde(default = "default_backlog")]
    pub backlog: u32,
    /// Terminate TLS on this listener (HTTPS). Default: none (plain HTTP).
    pub tls: Option<ListenerTlsSection>,
}

/// `[listeners.tls]`: TLS termination. Paths are relative to the config file's directory.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTlsSection {
    /// Server certificates (chain + key, PEM; RSA, ECDSA P-256/P-384 or Ed25519), chosen by SNI.
    /// Required, at least one, unless `acme` provides the certificate.
    #[serde(default)]
    pub certificates: Vec<CertificateSection>,
    /// Obtain and renew the certificate from an ACME CA (README: ACME certificates).
    pub acme: Option<crate::tls::acme::AcmeSection>,
    /// `"1.3"`, or `"1.2"` to also accept TLS 1.2 (ECDHE with AEAD suites only). Default: `"1.3"`.
    #[serde(default)]
    pub min_version: crate::tls::MinVersion,
    /// Refuse handshakes whose SNI names no certificate (and those without SNI) instead of
    /// serving the default certificate. Default: false.
    #[serde(default)]
    pub strict_sni: bool,
    /// Session resumption with tickets (keys rotate every 6 hours). Default: true.
    #[serde(default = "default_true")]
    pub session_tickets: bool,
    /// Move the session into the kernel after the handshake when the kernel supports it (kTLS).
    /// Default: true.
    #[serde(default = "default_true")]
    pub ktls: bool,
    /// Client certificates: `"none"`, `"optional"` or `"required"`. Default: `"none"`.
    #[serde(default)]
    pub client_auth: crate::tls::ClientAuth,
    /// How a missing (on `required`) or unverifiable client certificate is refused: `"status"`
    /// (the handshake completes, requests get 400 with the reason, as nginx and Kong answer)
    /// or `"handshake"` (a TLS alert). Default: `"status"`.
    #[serde(default)]
    pub client_cert_refusal: crate::tls::ClientCertRefusal,
    /// CA bundles (PEM) client certificates must chain to. Required unless client_auth is "none".
    #[serde(default)]
    pub client_ca: Vec<String>,
    /// Certificate revocation lists (PEM or DER) for client certificates. With CRLs, a client
    /// certificate whose issuer has no CRL here, or whose CRL is past nextUpdate, is refused.
    /// Default: none.
    #[serde(default)]
    pub client_crl: Vec<String>,
    /// Online revocation of client certificates (OCSP, CRLs from URLs): see the README.
    pub revocation: Option<crate::tls::revocation::RevocationSection>,
}

/// One server certificate of a TLS listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateSection {
    /// PEM file with the certificate chain, leaf first. Required.
    pub cert: String,
    /// PEM file with the private key. Required.
    pub key: String,
    /// SNI names this certificate is served for (`*.example.com` for one label). Default: the
    /// certificate's DNS names.
    #[serde(default)]
    pub names: Vec<String>,
    /// Served when the SNI names no certificate (or is absent). Default: the first certificate.
    #[serde(default)]
    pub default: bool,
    /// Staple the OCSP response of the responder the certificate names (the issuer must follow
    /// the leaf in `cert`). Default: true.
    #[serde(default = "default_true")]
    pub ocsp_stapling: bool,
    /// A DER OCSP response to staple instead of fetching one (re-read on reload). Default: none.
    pub ocsp_response_file: Option<String>,
}

/// `[[consumers]]`: a party that calls the gateway, with its credentials.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerSection {
    /// Unique name (the `X-Consumer-Name` header, audit and logs). Required.
    pub name: String,
    /// Unique stable identifier (`X-Consumer-Id`). Default: the name.
    pub id: Option<String>,
    /// Client certificates that identify this consumer. Default: none.
    #[serde(default)]
    pub client_certs: Vec<ClientCertCredential>,
    /// SHA-256 digests of its API keys: `"sha256:<64 hex>"` (`printf %s "$KEY" | sha256sum`).
    /// Default: none.
    #[serde(default)]
    pub api_keys: Vec<String>,
    /// Scopes the consumer is granted (by its API keys and client certificates). Default: none.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Its workspace (`X-Workspace-Id`, audit `workspace_id`). Default: none.
    pub workspace_id: Option<String>,
}

/// How a client certificate identifies a consumer: exactly one key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientCertCredential {
    /// SHA-256 fingerprint of the certificate (hex, colons allowed): this exact certificate.
    pub sha256: Option<String>,
    /// Subject common name, as issued by any CA the listener trusts.
    pub subject_cn: Option<String>,
    /// A subject alternative name as gatewayd writes it: `DNS:…`, `URI:…`, `email:…`, `IP:…`.
    pub san: Option<String>,
}

/// `[metrics]`: the Prometheus endpoint, /healthz and /readyz.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// `ip:port` of the metrics endpoint. Default: `127.0.0.1:9090`.
    #[serde(default = "default_metrics_bind")]
    pub bind: String,
    /// Root of procfs for host metrics (tests point it at fixtures). Default: `/proc`.
    #[serde(default = "default_proc_root")]
    pub proc_root: String,
    /// Root of sysfs for thermal, hwmon and cpufreq metrics. Default: `/sys`.
    #[serde(default = "default_sys_root")]
    pub sys_root: String,
    /// Adds a `consumer_id` label to `gateway_http_requests_total`. Default: false.
    #[serde(default)]
    pub consumer_label: bool,
    /// Distinct `consumer_id` values before the rest are counted as `other`. Default: 100.
    #[serde(default = "default_consumer_label_limit")]
    pub consumer_label_limit: usize,
}

impl Default for MetricsSection {
    fn default() -> Self {
        Self {
            bind: default_metrics_bind(),
            proc_root: default_proc_root(),
            sys_root: default_sys_root(),
            consumer_label: false,
            consumer_label_limit: default_consumer_label_limit(),
        }
    }
}

fn default_consumer_label_limit() -> usize {
    100
}

/// `[audit]`: one JSON line per request, written off the request path.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSection {
    /// File to append to; SIGUSR1 reopens it (logrotate). Default: none (no audit log).
    pub path: Option<String>,
    /// Lines buffered between workers and the writer; when full, lines are dropped and counted.
    /// Default: 65536.
    pub queue_size: Option<usize>,
}

/// `[admin]`: the local control endpoint used by `gatewayd` subcommands.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    /// Unix socket path (mode 0600). Empty string disables it. Default: `/run/gatewayd/admin.sock`.
    #[serde(default = "default_admin_socket")]
    pub socket: String,
    /// Where `gatewayd mcp --http` serves MCP's streamable HTTP transport (`127.0.0.1:9181`).
    /// Unset (the default): only stdio. Never one of the proxy listeners' addresses.
    pub mcp_listen: Option<String>,
}

impl Default for AdminSection {
    fn default() -> Self {
        Self { socket: default_admin_socket(), mcp_listen: None }
    }
}

/// `[[services]]`: an upstream pool.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSection {
    /// Unique name, referenced by routes. Required.
    pub name: String,
    /// `ip:port` targets. Required, at least one.
    pub targets: Vec<String>,
    /// `"round_robin"` or `"least_conn"`. Default: `"round_robin"`.
    #[serde(default)]
    pub lb: LbAlgorithm,
    /// Time to establish a TCP connection to a target. Default: 2s.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Time to wait for the response head, and between two body reads. Default: 30s.
    #[serde(default = "default_read_timeout", with = "humantime_serde")]
    pub read_timeout: Duration,
    /// Consecutive failures (connect errors, timeouts) that eject a target. Default: 3.
    #[serde(default = "default_max_fails")]
    pub max_fails: u32,
    /// How long an ejected target is left alone before one request probes it again. Default: 10s.
    #[serde(default = "default_fail_timeout", with = "humantime_serde")]
    pub fail_timeout: Duration,
    /// Other targets tried after a connect failure, for idempotent methods only. Default: 2.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Idle keep-alive connections kept per target per worker. Default: 64.
    #[serde(default = "default_max_idle")]
    pub max_idle_per_target: usize,
    /// An idle upstream connection older than this is closed. Default: 60s.
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Speak TLS to the targets (HTTPS upstream). Default: false.
    #[serde(default)]
    pub tls: bool,
    /// CA bundles (PEM) that verify the targets' certificates. Default: the system's CAs.
    #[serde(default)]
    pub tls_ca: Vec<String>,
    /// Name sent as SNI and verified in the targets' certificates. Default: each target's host
    /// as written in `targets` (a DNS name, or an IP address checked against IP SANs).
    pub tls_server_name: Option<String>,
    /// Client certificate chain (PEM) gatewayd presents to the targets (upstream mTLS).
    /// Default: none. Needs `tls_client_key`.
    pub tls_client_cert: Option<String>,
    /// Private key (PEM) of `tls_client_cert`.
    pub tls_client_key: Option<String>,
}

/// `[[routes]]`: what requests go to which service. See the README for the priority rules.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    /// Unique name, used in metrics labels and logs. Required.
    pub name: String,
    /// Service that serves this route. Required.
    pub service: String,
    /// Host names (`api.example.com`) or leading wildcards (`*.example.org`). Default: any host.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Path prefixes, matched on segment boundaries. Default: any path.
    #[serde(default)]
    pub paths: Vec<String>,
    /// HTTP methods. Default: any method.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Header name → accepted values (any of, case-insensitive). Default: none.
    #[serde(default)]
    pub headers: BTreeMap<String, Vec<String>>,
    /// Remove the matched path prefix before proxying. Default: false.
    #[serde(default)]
    pub strip_path: bool,
    /// Send the client's Host header upstream instead of the target address. Default: false.
    #[serde(default)]
    pub preserve_host: bool,
    /// Overrides `server.buffering.request_buffering` for this route. Default: the server's.
    pub request_buffering: Option<bool>,
    /// Overrides `server.buffering.response_buffering` for this route. Default: the server's.
    pub response_buffering: Option<bool>,
    /// Overrides `server.limits.client_body_timeout` for this route. Default: the server's.
    #[serde(default, with = "humantime_serde")]
    pub client_body_timeout: Option<Duration>,
    /// `"optional"` (whatever the listener allows), `"required"` (a verified client certificate,
    /// else 403) or `"consumer"` (a verified certificate of a `[[consumers]]` entry, else 403).
    /// Default: `"optional"`.
    #[serde(default)]
    pub client_cert: crate::tls::ClientCertRequirement,
    /// `"none"` (open to anyone) or the name of an `[[auth.policies]]` entry. Default:
    /// `auth.default_policy`; a route with neither is refused at load.
    pub auth: Option<String>,
}

/// `[demo]`: a tiny built-in upstream so a fresh install answers something.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemoSection {
    /// Start the demo upstream. Default: false.
    #[serde(default)]
    pub enabled: bool,
    /// Where it listens. Default: `127.0.0.1:8081`.
    pub bind: Option<String>,
}

/// `[auth]`: who may call which route. See the README's identity section.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// Policy of routes that name none: `"none"` (open) or a policy name. Default: unset, and
    /// then every route must set `auth`.
    pub default_policy: Option<String>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`. Default: 30s.
    #[serde(default = "default_auth_leeway", with = "humantime_serde")]
    pub leeway: Duration,
    /// Longest accepted bearer token, in bytes; longer ones are refused (401 malformed).
    /// Default: 8KiB.
    #[serde(default = "default_max_token_size")]
    pub max_token_size: ByteSize,
    /// Query parameters a bearer token is also read from (Kong's `uri_param_names`). Tokens in
    /// URLs end up in logs: prefer the Authorization header. Default: none.
    #[serde(default)]
    pub uri_param_names: Vec<String>,
    /// Cookies a bearer token is also read from (Kong's `cookie_names`). Default: none.
    #[serde(default)]
    pub cookie_names: Vec<String>,
    /// Header that carries API keys. Default: `"X-API-Key"`.
    #[serde(default = "default_api_key_header")]
    pub api_key_header: String,
    /// Validated tokens cached per worker (keyed by the token's SHA-256, until it expires).
    /// Default: 10000.
    #[serde(default = "default_token_cache_size")]
    pub token_cache_size: usize,
    #[serde(default)]
    pub headers: IdentityHeadersSection,
    /// Trusted token issuers. Default: none.
    #[serde(default)]
    pub issuers: Vec<IssuerSection>,
    /// Named policies that routes refer to. Default: none.
    #[serde(default)]
    pub policies: Vec<PolicySection>,
    #[serde(default)]
    pub revocation: RevocationSection,
    /// OIDC logins for browsers (see `schema/oidc.rs`). Default: none.
    #[serde(default)]
    pub logins: Vec<LoginSection>,
}

impl Default for AuthSection {
    fn default() -> Self {
        AuthSection {
            default_policy: None,
            leeway: default_auth_leeway(),
            max_token_size: default_max_token_size(),
            uri_param_names: Vec::new(),
            cookie_names: Vec::new(),
            api_key_header: default_api_key_header(),
            token_cache_size: default_token_cache_size(),
            headers: IdentityHeadersSection::default(),
            issuers: Vec::new(),
            policies: Vec::new(),
            revocation: RevocationSection::default(),
            logins: Vec::new(),
        }
    }
}

/// `[auth.headers]`: identity headers set upstream after authentication. Client-supplied
/// headers with these names are always removed, on every route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityHeadersSection {
    /// The user (token's user claim, or the API consumer's id). Default: `"X-Forwarded-User"`.
    #[serde(default = "default_user_header")]
    pub user: String,
    /// The API consumer's name. Default: `"X-Consumer-Username"`.
    #[serde(default = "default_consumer_username_header")]
    pub consumer_username: String,
    /// The API consumer's id. Default: `"X-Consumer-Id"`.
    #[serde(default = "default_consumer_id_header")]
    pub consumer_id: String,
    /// Granted scopes, space-separated. Default: `"X-Authenticated-Scope"`.
    #[serde(default = "default_scope_header")]
    pub scope: String,
    /// The workspace (token's workspace claim, or the consumer's). Default: `"X-Workspace-Id"`.
    #[serde(default = "default_workspace_header")]
    pub workspace: String,
    /// Forward the client's credentials (Authorization header, API key header) upstream after
    /// checking them. Default: false (removed).
    #[serde(default)]
    pub forward_credentials: bool,
}

impl Default for IdentityHeadersSection {
    fn default() -> Self {
        IdentityHeadersSection {
            user: default_user_header(),
            consumer_username: default_consumer_username_header(),
            consumer_id: default_consumer_id_header(),
            scope: default_scope_header(),
            workspace: default_workspace_header(),
            forward_credentials: false,
        }
    }
}

/// `[[auth.issuers]]`: a token issuer (an OIDC identity provider, or static keys).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerSection {
    /// Unique name: policies refer to it, metrics label it. Required.
    pub name: String,
    /// The exact `iss` of its tokens (and the base of OIDC discovery). Required.
    pub issuer: String,
    /// `aud` must contain one of these. Required, at least one.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Accepted signature algorithms: RS256/384/512, PS256/384/512, ES256/384, EdDSA.
    /// Default: all of them (each key still only verifies its own type).
    #[serde(default)]
    pub algorithms: Vec<String>,
    /// Fetch `<issuer>/.well-known/openid-configuration` for `jwks_uri` (and the introspection
    /// endpoint). Default: true unless `jwks_uri`, `jwks_file` or `keys` is set.
    pub discovery: Option<bool>,
    /// JWKS URL, fetched and refreshed in the background. Default: none.
    pub jwks_uri: Option<String>,
    /// A JWKS file, read at (re)load. Default: none.
    pub jwks_file: Option<String>,
    /// Static PEM public keys, read at (re)load. Default: none.
    #[serde(default)]
    pub keys: Vec<StaticKeySection>,
    /// PEM file of the CAs that sign the IdP's HTTPS certificate. Default: the system's roots.
    pub ca_file: Option<String>,
    /// Longest time fetched keys go without a refresh; also the refresh period when
    /// Cache-Control says nothing shorter. Default: 10m.
    #[serde(default = "default_refresh_interval", with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// Shortest refresh period, whatever Cache-Control says. Default: 30s.
    #[serde(default = "default_min_refresh_interval", with = "humantime_serde")]
    pub min_refresh_interval: Duration,
    /// A token with an unknown `kid` triggers at most one refetch per this. Default: 10s.
    #[serde(default = "default_unknown_kid_refetch_interval", with = "humantime_serde")]
    pub unknown_kid_refetch_interval: Duration,
    /// Deadline of one discovery or JWKS fetch. Default: 5s.
    #[serde(default = "default_fetch_timeout", with = "humantime_serde")]
    pub fetch_timeout: Duration,
    /// How long cached keys stay in use while refreshes fail, counted from the first failed
    /// refresh. Must leave room for 3 retries (see README). Default: 5m.
    #[serde(default = "default_idp_outage_grace", with = "humantime_serde")]
    pub idp_outage_grace: Duration,
    /// Consecutive IdP calls that found it unreachable (timeout, connection or TLS failure)
    /// that open the issuer's circuit breaker. Default: 3.
    #[serde(default = "default_breaker_failures")]
    pub breaker_failures: u32,
    /// How long an open breaker fails fast (503 `idp_unavailable`) before one call probes the
    /// IdP. Default: 5s.
    #[serde(default = "default_breaker_cool_down", with = "humantime_serde")]
    pub breaker_cool_down: Duration,
    /// Past the grace period: `"fail_closed"` (refuse the issuer's tokens, 503) or
    /// `"fail_open"` (keep using the old keys). Default: `"fail_closed"`.
    #[serde(default)]
    pub on_idp_outage: FailMode,
    /// Claim naming the user (`X-Forwarded-User`, audit `user_id`). Default: `"sub"`.
    #[serde(default = "default_user_claim")]
    pub user_claim: String,
    /// Claim naming the workspace (`X-Workspace-Id`, audit `workspace_id`). Default:
    /// `"workspace_id"`.
    #[serde(default = "default_workspace_claim")]
    pub workspace_claim: String,
    /// RFC 7662 introspection of opaque tokens. Default: off.
    pub introspection: Option<IntrospectionSection>,
}

/// `[[auth.issuers.keys]]`: a static public key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticKeySection {
    /// The `kid` tokens name it by. Default: none (tokens without `kid` try every key).
    pub kid: Option<String>,
    /// PEM file with a `PUBLIC KEY` (RSA ≥ 2048 bits, P-256, P-384 or Ed25519). Required.
    pub pem_file: String,
}

/// `[auth.issuers.introspection]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionSection {
    /// Introspection endpoint. Default: the discovery document's `introspection_endpoint`.
    pub endpoint: Option<String>,
    /// The gateway's client id at the IdP. Required.
    pub client_id: String,
    /// File holding the client secret (kept out of the config file). Required.
    pub client_secret_file: String,
    /// Active answers are reused up to this long (never past the token's `exp`). Default: 60s.
    #[serde(default = "default_introspection_cache_ttl", with = "humantime_serde")]
    pub cache_ttl: Duration,
    /// Inactive answers are reused this long. Default: 10s.
    #[serde(default = "default_introspection_negative_ttl", with = "humantime_serde")]
    pub negative_cache_ttl: Duration,
    /// Deadline of one introspection call. Default: 2s.
    #[serde(default = "default_introspection_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Where answers are cached: `"memory"` (each worker's token cache only) or `"redis"` (also
    /// shared through `[redis]`, so one introspection serves every node; Redis down or slow
    /// falls back to the IdP). Default: `"memory"`.
    #[serde(default)]
    pub cache: IntrospectionCache,
}

/// `[auth.issuers.introspection] cache`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntrospectionCache {
    #[default]
    Memory,
    Redis,
}

/// `[[auth.policies]]`: what a route requires. Exactly one of `any_of`, `all_of`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySection {
    /// Unique name, referenced by routes' `auth`. Required.
    pub name: String,
    /// One of these credentials suffices: `"jwt"`, `"api_key"`, `"mtls"`.
    pub any_of: Option<Vec<String>>,
    /// Every one of these credentials is required.
    pub all_of: Option<Vec<String>>,
    /// Issuers whose tokens are accepted. Default: every issuer.
    #[serde(default)]
    pub issuers: Vec<String>,
    /// Scopes that must all be granted (else 403 insufficient_scope). Default: none.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// An `[[auth.logins]]` name: browsers without a session are sent to log in. Default: none.
    pub login: Option<String>,
}

/// `[auth.revocation]`: the jti denylist.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationSection {
    /// `"memory"`: this process only, lost at restart; `"redis"`: shared through `[redis]`
    /// (keys expire with the tokens; pub/sub tells every node at once). Default: `"memory"`.
    #[serde(default)]
    pub store: RevocationStore,
    /// When the shared store cannot answer: `"fail_closed"` (503) or `"fail_open"`.
    /// Default: `"fail_closed"`.
    #[serde(default)]
    pub on_store_error: FailMode,
    /// How long a worker reuses a "not revoked" answer of the shared store. Default: 5s.
    #[serde(default, with = "humantime_serde")]
    pub cache_ttl: Option<Duration>,
    /// Where the revocation list is kept across restarts (with the revocations not yet published
    /// to Redis). Absolute path; `""` disables it. Default: `revocations.json` in
    /// `$STATE_DIRECTORY` (systemd's `StateDirectory=`), else in `/var/lib/gatewayd`.
    #[serde(default)]
    pub state_file: Option<String>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevocationStore {
    #[default]
    Memory,
    Redis,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailMode {
    #[default]
    FailClosed,
    FailOpen,
}

/// A byte count written as an integer or with a unit (`"64KiB"`, `"10MB"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(ByteSize(n)),
            Raw::Text(s) => parse_byte_size(&s).map(ByteSize).map_err(serde::de::Error::custom),
        }
    }
}

/// Parses `"512"`, `"64KiB"`, `"10 MB"`, `"1GiB"`. Binary and decimal units.
pub fn parse_byte_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 =
        digits.parse().map_err(|_| format!("invalid size {s:?}: expected a number and a unit like \"64KiB\""))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1_000,
        "kib" => 1 << 10,
        "mb" | "m" => 1_000_000,
        "mib" => 1 << 20,
        "gb" | "g" => 1_000_000_000,
        "gib" => 1 << 30,
        other => return Err(format!("invalid size unit {other:?} in {s:?} (use B, KiB, MiB, GiB, KB, MB, GB)")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("size {s:?} is too large"))
}

fn default_true() -> bool {
    true
}
fn default_backlog() -> u32 {
    1024
}
fn default_drain_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_log_level() -> String {
    "info".into()
}
fn default_max_body() -> ByteSize {
    ByteSize(10 << 20)
}
fn default_max_header_bytes() -> ByteSize {
    ByteSize(32 << 10)
}
fn default_max_headers() -> usize {
    100
}
fn default_max_request_line() -> ByteSize {
    ByteSize(8 << 10)
}
fn default_header_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_park_after() -> Duration {
    Duration::from_secs(1)
}
fn default_h2_streams() -> u32 {
    128
}
fn default_h2_control_frames() -> u32 {
    100
}
fn default_client_body_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_buffer_size() -> ByteSize {
    ByteSize(64 << 10)
}
fn default_response_buffer_size() -> ByteSize {
    ByteSize(32 << 10)
}
fn default_max_temp_file_size() -> ByteSize {
    ByteSize(1 << 30)
}
fn default_metrics_bind() -> String {
    "127.0.0.1:9090".into()
}
fn default_proc_root() -> String {
    "/proc".into()
}
fn default_sys_root() -> String {
    "/sys".into()
}
fn default_admin_socket() -> String {
    "/run/gatewayd/admin.sock".into()
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_read_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_max_fails() -> u32 {
    3
}
fn default_fail_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_retries() -> u32 {
    2
}
fn default_max_idle() -> usize {
    64
}
fn default_auth_leeway() -> Duration {
    Duration::from_secs(30)
}
fn default_max_token_size() -> ByteSize {
    ByteSize(8 << 10)
}
fn default_api_key_header() -> String {
    "X-API-Key".into()
}
fn default_token_cache_size() -> usize {
    10_000
}
fn default_user_header() -> String {
    "X-Forwarded-User".into()
}
fn default_consumer_username_header() -> String {
    "X-Consumer-Username".into()
}
fn default_consumer_id_header() -> String {
    "X-Consumer-Id".into()
}
fn default_scope_header() -> String {
    "X-Authenticated-Scope".into()
}
fn default_workspace_header() -> String {
    "X-Workspace-Id".into()
}
fn default_refresh_interval() -> Duration {
    Duration::from_secs(600)
}
fn default_min_refresh_interval() -> Duration {
    Duration::from_secs(30)
}
fn default_unknown_kid_refetch_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_fetch_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_idp_outage_grace() -> Duration {
    Duration::from_secs(300)
}
fn default_breaker_failures() -> u32 {
    crate::auth::BreakerSpec::default().failures
}
fn default_breaker_cool_down() -> Duration {
    crate::auth::BreakerSpec::default().cool_down
}
fn default_user_claim() -> String {
    "sub".into()
}
fn default_workspace_claim() -> String {
    "workspace_id".into()
}
fn default_introspection_cache_ttl() -> Duration {
    Duration::from_secs(60)
}
fn default_introspection_negative_ttl() -> Duration {
    Duration::from_secs(10)
}
fn default_introspection_timeout() -> Duration {
    Duration::from_secs(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_byte_size("512"), Ok(512));
        assert_eq!(parse_byte_size("64KiB"), Ok(65536));
        assert_eq!(parse_byte_size("10 MB"), Ok(10_000_000));
        assert!(parse_byte_size("ten").is_err());
        assert!(parse_byte_size("5 parsecs").is_err());
        assert!(parse_byte_size("99999999999999GiB").is_err());
    }
}
