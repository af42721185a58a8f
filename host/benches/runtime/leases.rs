//! Figure 7: the worst a client or guest can make one lease operation cost, at the size caps
//! (`lease::REQUEST_CAP`, `MAX_TARGET_BYTES`), side by side with a typical lease. Adversarial
//! patterns (`**a**a…`) keep every state of the matcher alive, the case that once took 12.7 s
//! for a 148 KB request. Measured in process, single-threaded, on the public lease API.

use std::time::{Duration, Instant};

use corral::config::Policy;
use corral::lease::{Grants, Lease, LeaseRequest, MAX_TARGET_BYTES, REQUEST_CAP, Scope};
use serde_json::json;

use crate::report::Figure;

/// `n` layered kv.read patterns of `len` bytes each, every one distinct and adversarial.
fn adversarial(n: usize, len: usize) -> String {
    let layers: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            let mut p = "**a".repeat(len / 3 + 1);
            p.truncate(len - 4);
            p.push_str(&format!("{i:04}"));
            json!([p])
        })
        .collect();
    json!({"grants": {"kv.read": layers, "log": ["**"]}}).to_string()
}

/// Median time of `f` in microseconds over `n` runs.
fn median_us(n: usize, mut f: impl FnMut()) -> f64 {
    let mut times: Vec<Duration> = (0..n)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    times.sort_unstable();
    times.get(n / 2).map_or(f64::NAN, |d| d.as_secs_f64() * 1e6)
}

pub fn measure(quick: bool) -> Vec<Figure> {
    let policy = Policy::builtin().expect("built-in policy");
    let ceiling = policy.ceiling_for("local", Some("counter"));
    let declared = Grants::from_declared(&["log".to_owned(), "kv.read".to_owned()]).expect("declared");
    let now = time::OffsetDateTime::now_utc();
    let typical = r#"{"grants": {"kv.read": ["counter/*"], "log": ["**"]}, "ttl_ms": 60000}"#.to_owned();
    // One pattern is `log`; the rest fill the caps.
    let at_cap = adversarial(REQUEST_CAP.patterns - 1, REQUEST_CAP.bytes / REQUEST_CAP.patterns);
    let runs = if quick { 50 } else { 300 };

    let effective = |text: &str| {
        let request = LeaseRequest::parse_json(text).expect("request within the caps");
        Lease::effective(&declared, &ceiling, &request, None, now).expect("effective lease")
    };
    let parse_typical = median_us(runs * 10, || drop(std::hint::black_box(effective(&typical))));
    let parse_cap = median_us(runs, || drop(std::hint::black_box(effective(&at_cap))));

    let typical_lease = effective(&typical);
    let cap_lease = effective(&at_cap);
    let short = "counter/visits";
    let long = "a".repeat(MAX_TARGET_BYTES);
    let check_typical = median_us(runs * 10, || {
        std::hint::black_box(typical_lease.check(Scope::KvRead, std::hint::black_box(short), now)).ok();
    });
    let check_cap = median_us(runs, || {
        std::hint::black_box(cap_lease.check(Scope::KvRead, std::hint::black_box(&long), now)).ok();
    });
    // A child asking for exactly its parent's lease: the subset test over every layer pair.
    let parent = cap_lease.clone();
    let child_request = LeaseRequest::parse_json(&at_cap).expect("request");
    let delegate_cap = median_us(runs, || {
        std::hint::black_box(Lease::effective(&declared, &ceiling, &child_request, Some(&parent), now)).ok();
    });
    eprintln!(
        "  lease at the caps ({} patterns, {} bytes): parse+effective {parse_cap:.0} µs (typical {parse_typical:.1}), \
         check of a {MAX_TARGET_BYTES}-byte target {check_cap:.0} µs (typical {check_typical:.2}), delegation {delegate_cap:.0} µs",
        REQUEST_CAP.patterns, REQUEST_CAP.bytes
    );
    vec![
        Figure::new("lease_parse_at_cap", parse_cap, "us").baseline(parse_typical).at_most(5_000.0),
        Figure::new("lease_check_at_cap", check_cap, "us").baseline(check_typical).at_most(1_000.0),
        Figure::new("lease_delegate_at_cap", delegate_cap, "us").baseline(parse_typical).at_most(5_000.0),
    ]
}
