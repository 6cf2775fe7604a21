//! Budget usage in memory and in a real Redis: charges add up per key and per day, and a new
//! day starts empty (driven by explicit times, no sleeping).

use std::time::Duration;

use super::*;
use crate::{
    kv::{KvMetrics, testing::RedisServer, testing::SpecOf as _, testing::eventually},
    limits::{LimitMetrics, ManualClock, key::Value},
};

/// 2026-01-01T10:00:00Z.
const T0: u64 = 1_767_261_600_000;
const DAY: u64 = 86_400_000;

fn spec(backend: Backend) -> BudgetSpec {
    BudgetSpec {
        name: "ws-daily".into(),
        routes: None,
        key: vec![KeySource::Workspace],
        daily_tokens: 1000,
        zone: Zone::utc(),
        backend,
        usage_header: None,
        overrides: HashMap::from([("big".to_owned(), 5000)]),
        workspace_label: false,
    }
}

fn state() -> Arc<LimitState> {
    Arc::new(LimitState::new(Arc::new(ManualClock::new(T0)), Arc::new(LimitMetrics::default()), KvMetrics::default()))
}

async fn charges_add_up_and_reset_daily(budgets: &Budgets, spec: &BudgetSpec, settle: Duration) {
    let ws = KeySource::Workspace;
    let key = |w: &'static str| Key { source: &ws, value: Value::Text(w.as_bytes()), consumer: None };
    let today = spec.zone.day(T0);
    let a = budgets.counter(spec, &key("workspace-123"), today);
    assert_eq!(budgets.used(&a, today).await.unwrap(), 0);
    budgets.charge(&a, today, 150, T0);
    budgets.charge(&a, today, 850, T0 + 1);
    let reached = eventually(settle, async || budgets.used(&a, today).await.unwrap() == 1000).await;
    assert!(reached, "charges add up: {}", budgets.used(&a, today).await.unwrap());
    assert_eq!(spec.limit_for(&key("workspace-123")), 1000);
    assert_eq!(spec.limit_for(&key("big")), 5000, "override");

    // Another workspace has its own budget.
    let b = budgets.counter(spec, &key("workspace-456"), today);
    assert_eq!(budgets.used(&b, today).await.unwrap(), 0);

    // The next day starts empty.
    let tomorrow = spec.zone.day(T0 + DAY);
    assert_ne!(tomorrow, today);
    assert_eq!(tomorrow.ends_ms, today.ends_ms + DAY);
    let a2 = budgets.counter(spec, &key("workspace-123"), tomorrow);
    assert_eq!(budgets.used(&a2, tomorrow).await.unwrap(), 0);
}

#[tokio::test]
async fn memory_budgets() {
    let s = state();
    charges_add_up_and_reset_daily(&Budgets::new(s, None), &spec(Backend::Memory), Duration::ZERO).await;
}

#[tokio::test]
async fn redis_budgets() {
    let server = RedisServer::start();
    let kv = Kv::start(server.spec(), KvMetrics::default());
    assert!(kv.settled(Duration::from_secs(5)).await);
    let spec = spec(Backend::Redis(FailMode::Closed));
    let budgets = Budgets::new(state(), Some(kv.clone()));
    charges_add_up_and_reset_daily(&budgets, &spec, Duration::from_secs(5)).await;
    // Charged counters expire an hour after their day (10:00 + 14 h + 1 h).
    let ws = KeySource::Workspace;
    let c = budgets.counter(
        &spec,
        &Key { source: &ws, value: Value::Text(b"workspace-123"), consumer: None },
        spec.zone.day(T0),
    );
    let ttl: u64 = kv.query("t", redis::cmd("PTTL").arg(c.redis_key.as_deref().unwrap())).await.unwrap();
    let expected = 15 * 3_600_000;
    assert!(ttl <= expected && ttl > expected - 10_000, "{ttl}");
}

#[test]
fn headers_show_the_tightest_known_budget() {
    let c = |limit, used| Checked {
        counter: Counter { digest: 0, redis_key: None },
        day: Zone::utc().day(T0),
        limit,
        used,
    };
    let mut h = HeaderMap::new();
    budget_headers(&[c(1_000_000, Some(50)), c(100, Some(90)), c(10, None)], &mut h);
    assert_eq!(h["x-token-budget-limit"], "100");
    assert_eq!(h["x-token-budget-used"], "90");
    assert_eq!(h["x-token-budget-remaining"], "10");
}
