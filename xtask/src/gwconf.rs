//! One small builder for the gatewayd configs xtask writes (benchmark subjects, vm-test guests),
//! so that each says only what is particular to it and the shared parts (`[server]`, listeners,
//! metrics, the admin socket, the demo upstream and its route) are spelled once. It writes TOML
//! text in gatewayd's schema; gatewayd itself validates what it reads.

use std::fmt::{Display, Write as _};

/// A gatewayd config under construction; `build` renders it.
pub struct GwConf {
    server: Vec<String>,
    sections: String,
}

impl GwConf {
    /// `[server] workers = N`.
    pub fn new(workers: usize) -> Self {
        GwConf { server: vec![format!("workers = {workers}")], sections: String::new() }
    }

    /// Another `[server]` line (`log_level = "warn"`, `steering = "client_hash"`).
    pub fn server(mut self, line: &str) -> Self {
        self.server.push(line.to_owned());
        self
    }

    /// A plain listener.
    pub fn listener(mut self, name: &str, bind: impl Display) -> Self {
        let _ = write!(self.sections, "[[listeners]]\nname = \"{name}\"\nbind = \"{bind}\"\n\n");
        self
    }

    /// A TLS listener with one certificate; `extra`: more `[listeners.tls]` lines (or "").
    pub fn tls_listener(
        mut self,
        name: &str,
        bind: impl Display,
        cert: impl Display,
        key: impl Display,
        extra: &str,
    ) -> Self {
        self = self.listener(name, bind);
        let _ = write!(
            self.sections,
            "[listeners.tls]\ncertificates = [{{ cert = \"{cert}\", key = \"{key}\" }}]\n{extra}\n"
        );
        self
    }

    pub fn metrics(mut self, bind: impl Display) -> Self {
        let _ = write!(self.sections, "[metrics]\nbind = \"{bind}\"\n\n");
        self
    }

    /// No admin socket (benchmarks and guests do not need one, and several may run at once).
    pub fn no_admin(mut self) -> Self {
        self.sections.push_str("[admin]\nsocket = \"\"\n\n");
        self
    }

    /// The built-in demo upstream on 127.0.0.1:8081 and the route `/demo` to it.
    pub fn demo(self) -> Self {
        let mut conf =
            self.raw("[demo]\nenabled = true\nbind = \"127.0.0.1:8081\"\n\n").service("demo", "127.0.0.1:8081", None);
        conf.sections.push_str("[[routes]]\nname = \"demo\"\nservice = \"demo\"\npaths = [\"/demo\"]\nstrip_path = true\nauth = \"none\"\n\n");
        conf
    }

    /// A service with one target; `max_idle`: its `max_idle_per_target` (default otherwise).
    pub fn service(mut self, name: &str, target: impl Display, max_idle: Option<usize>) -> Self {
        let _ = write!(self.sections, "[[services]]\nname = \"{name}\"\ntargets = [\"{target}\"]\n");
        if let Some(n) = max_idle {
            let _ = writeln!(self.sections, "max_idle_per_target = {n}");
        }
        self.sections.push('\n');
        self
    }

    /// A route to `service` (`paths` empty: every path) with `auth`, and `extra` lines (or "").
    pub fn route(mut self, name: &str, service: &str, paths: &[&str], auth: &str, extra: &str) -> Self {
        let _ = write!(self.sections, "[[routes]]\nname = \"{name}\"\nservice = \"{service}\"\n");
        if !paths.is_empty() {
            let quoted: Vec<String> = paths.iter().map(|p| format!("\"{p}\"")).collect();
            let _ = writeln!(self.sections, "paths = [{}]", quoted.join(", "));
        }
        let _ = write!(self.sections, "auth = \"{auth}\"\n{extra}\n");
        self
    }

    /// Anything else, as written (rate limits, `[xdp]`, `[redis]`, `[auth]`).
    pub fn raw(mut self, text: &str) -> Self {
        self.sections.push_str(text);
        if !text.ends_with("\n\n") {
            self.sections.push('\n');
        }
        self
    }

    pub fn build(&self) -> String {
        format!("[server]\n{}\n\n{}", self.server.join("\n"), self.sections.trim_end()) + "\n"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_table_comes_first_and_sections_keep_their_order() {
        let conf = GwConf::new(2)
            .listener("public", "127.0.0.1:8080")
            .tls_listener("tls", "127.0.0.1:8443", "/c.crt", "/c.key", "min_version = \"1.2\"\n")
            .metrics("127.0.0.1:9090")
            .server("log_level = \"warn\"")
            .no_admin()
            .demo()
            .service("up", "127.0.0.1:1", Some(64))
            .route("all", "up", &[], "none", "")
            .route("b", "up", &["/b", "/c"], "none", "response_buffering = true\n")
            .build();
        assert!(conf.starts_with("[server]\nworkers = 2\nlog_level = \"warn\"\n\n[[listeners]]\nname = \"public\""));
        let at = |s: &str| conf.find(s).unwrap_or(usize::MAX);
        assert!(at("name = \"tls\"") < at("[listeners.tls]") && at("[listeners.tls]") < at("[metrics]"));
        assert!(conf.contains("certificates = [{ cert = \"/c.crt\", key = \"/c.key\" }]\nmin_version = \"1.2\"\n"));
        assert!(conf.contains("[admin]\nsocket = \"\"\n"));
        assert_eq!(conf.matches("[[routes]]").count(), 3);
        assert!(conf.contains("paths = [\"/demo\"]\nstrip_path = true\nauth = \"none\"\n"));
        assert!(conf.contains("targets = [\"127.0.0.1:1\"]\nmax_idle_per_target = 64\n"));
        assert!(conf.contains("paths = [\"/b\", \"/c\"]\nauth = \"none\"\nresponse_buffering = true\n"));
        assert!(conf.ends_with("response_buffering = true\n"));
        assert!(!conf.contains("\n\n\n"));
    }
}
