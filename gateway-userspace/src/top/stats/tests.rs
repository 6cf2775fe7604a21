use super::*;

fn close(a: Option<f64>, b: f64) -> bool {
    a.is_some_and(|a| (a - b).abs() < 1e-9)
}

#[test]
fn quantile_interpolates_inside_the_bucket() {
    // 10 observations ≤ 0.1, 10 more in (0.1, 0.5], none above.
    let buckets = [(0.1, 10.0), (0.5, 20.0), (f64::INFINITY, 20.0)];
    assert!(close(quantile(0.5, &buckets), 0.1));
    // Rank 15: half-way through the second bucket.
    assert!(close(quantile(0.75, &buckets), 0.3));
    assert!(close(quantile(0.25, &buckets), 0.05));
    // In the +Inf bucket: the highest finite bound.
    assert!(close(quantile(0.99, &[(0.1, 1.0), (f64::INFINITY, 100.0)]), 0.1));
    assert_eq!(quantile(0.5, &[(0.1, 0.0), (f64::INFINITY, 0.0)]), None);
    assert_eq!(quantile(0.5, &[]), None);
}

#[test]
fn a_counter_that_went_down_was_reset() {
    assert_eq!(increase(Some(10.0), 15.0), 5.0);
    assert_eq!(increase(Some(10.0), 3.0), 3.0);
    assert_eq!(increase(None, 7.0), 7.0);
}

const FIRST: &str = r#"
gateway_http_requests_total{route="a",service="s",method="GET",status="200"} 100
gateway_http_requests_total{route="a",service="s",method="GET",status="502"} 10
gateway_http_requests_total{route="b",service="s",method="GET",status="429"} 5
gateway_request_duration_seconds_bucket{route="a",service="s",le="0.01"} 100
gateway_request_duration_seconds_bucket{route="a",service="s",le="0.1"} 110
gateway_request_duration_seconds_bucket{route="a",service="s",le="+Inf"} 110
gateway_cpu_seconds_total{cpu="0",mode="user"} 10
gateway_cpu_seconds_total{cpu="0",mode="idle"} 90
gateway_cpu_seconds_total{cpu="0",mode="softirq"} 0
"#;

// Two seconds later: route a saw 30 requests (10 of them 502), all between 10 and 100 ms;
// b went from 5 to 7 429s; a new 200 series appeared on b. CPU: 1 s user + 1 s softirq of 4 s.
const SECOND: &str = r#"
gateway_http_requests_total{route="a",service="s",method="GET",status="200"} 120
gateway_http_requests_total{route="a",service="s",method="GET",status="502"} 20
gateway_http_requests_total{route="b",service="s",method="GET",status="429"} 7
gateway_http_requests_total{route="b",service="s",method="GET",status="200"} 4
gateway_request_duration_seconds_bucket{route="a",service="s",le="0.01"} 100
gateway_request_duration_seconds_bucket{route="a",service="s",le="0.1"} 140
gateway_request_duration_seconds_bucket{route="a",service="s",le="+Inf"} 140
gateway_cpu_seconds_total{cpu="0",mode="user"} 11
gateway_cpu_seconds_total{cpu="0",mode="idle"} 92
gateway_cpu_seconds_total{cpu="0",mode="softirq"} 1
gateway_redis_up{target="127.0.0.1:6379"} 1
gateway_auth_idp_breaker_state{issuer="corp"} 1
gateway_thermal_zone_temperature_celsius{zone="0",type="x"} 41.5
gateway_hwmon_temperature_celsius{chip="c",sensor="t",label=""} 48
"#;

#[test]
fn rates_ratios_and_quantiles_come_from_the_interval() {
    let (prev, cur) = (Scrape::parse(FIRST).unwrap(), Scrape::parse(SECOND).unwrap());
    let f = Window { prev: Some(&prev), cur: &cur, secs: 2.0 }.figures();
    let a = &f.routes[0];
    assert_eq!((a.route.as_str(), a.requests), ("a", 140.0));
    assert!(close(a.rate, 15.0));
    assert!(close(a.error_ratio, 1.0 / 3.0));
    // All 30 in (0.01, 0.1]: the median is half-way, p99 near the top.
    assert!(close(a.p50, 0.055));
    assert!(close(a.p99, 0.01 + 0.09 * 0.99));
    assert_eq!(a.overhead_p99, None);
    let b = &f.routes[1];
    assert_eq!((b.route.as_str(), b.requests), ("b", 11.0));
    // The new series counts from zero: 2 × 429 + 4 × 200 in 2 s.
    assert!(close(b.rate, 3.0));
    assert!(close(b.limited_rate, 1.0));
    // No 5xx is 0, not -0 (shown as "-0.0%").
    assert!(b.error_ratio.is_some_and(|r| r == 0.0 && r.is_sign_positive()), "{:?}", b.error_ratio);
    assert!(close(f.rate, 18.0));
    assert!(close(f.error_ratio, 10.0 / 36.0));
    assert!(close(f.cpu_busy, 0.5));
    assert!(close(f.cpu_softirq, 0.25));
    assert_eq!(f.redis, [("127.0.0.1:6379".to_owned(), true)]);
    assert_eq!(f.idps, [("corp".to_owned(), "open")]);
    assert_eq!(f.temperature, Some(48.0));
}

#[test]
fn the_first_scrape_has_totals_but_no_rates() {
    let cur = Scrape::parse(FIRST).unwrap();
    let f = Window { prev: None, cur: &cur, secs: 1.0 }.figures();
    assert_eq!(f.routes.iter().map(|r| r.requests).collect::<Vec<_>>(), [110.0, 5.0]);
    assert!(f.routes.iter().all(|r| r.rate.is_none() && r.p99.is_none()));
    assert_eq!((f.rate, f.cpu_busy), (None, None));
}
