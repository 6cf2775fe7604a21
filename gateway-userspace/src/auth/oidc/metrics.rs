//! `gateway_oidc_*`: logins, refreshes, logouts and failures, by login. Rare events (a few per
//! session), so plain families.

use std::sync::Arc;

use prometheus_client::{
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

use crate::metrics::{LabelValue, Labels};

#[derive(Clone, Default)]
pub struct OidcMetrics(Arc<Inner>);

#[derive(Default)]
struct Inner {
    logins: Family<Labels<1>, Counter>,
    refreshes: Family<Labels<2>, Counter>,
    logouts: Family<Labels<1>, Counter>,
    failures: Family<Labels<2>, Counter>,
    redirects: Family<Labels<1>, Counter>,
}

impl std::fmt::Debug for OidcMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OidcMetrics")
    }
}

fn login(name: &Arc<str>) -> Labels<1> {
    Labels([("login", LabelValue::Shared(name.clone()))])
}

fn login_and(name: &Arc<str>, key: &'static str, value: &'static str) -> Labels<2> {
    Labels([("login", LabelValue::Shared(name.clone())), (key, LabelValue::Static(value))])
}

impl OidcMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = OidcMetrics::default();
        let i = &m.0;
        registry.register(
            "gateway_oidc_logins",
            "Completed browser logins (sessions created), by login",
            i.logins.clone(),
        );
        registry.register(
            "gateway_oidc_login_redirects",
            "Browsers sent to the identity provider to log in, by login",
            i.redirects.clone(),
        );
        registry.register(
            "gateway_oidc_refreshes",
            "Access token refreshes, by login and result (ok, failed: the session ended, coalesced: joined another request's refresh)",
            i.refreshes.clone(),
        );
        registry.register("gateway_oidc_logouts", "Sessions ended at the logout path, by login", i.logouts.clone());
        registry.register(
            "gateway_oidc_failures",
            "Login and session failures, by login and reason (bad_state, code_refused, bad_id_token, bad_return_url, no_session, idp_unavailable, store_unavailable)",
            i.failures.clone(),
        );
        m
    }

    pub fn login(&self, name: &Arc<str>) {
        self.0.logins.get_or_create(&login(name)).inc();
    }

    pub fn redirect(&self, name: &Arc<str>) {
        self.0.redirects.get_or_create(&login(name)).inc();
    }

    pub fn refresh(&self, name: &Arc<str>, result: &'static str) {
        self.0.refreshes.get_or_create(&login_and(name, "result", result)).inc();
    }

    pub fn logout(&self, name: &Arc<str>) {
        self.0.logouts.get_or_create(&login(name)).inc();
    }

    pub fn failure(&self, name: &Arc<str>, reason: &'static str) {
        self.0.failures.get_or_create(&login_and(name, "reason", reason)).inc();
    }
}
