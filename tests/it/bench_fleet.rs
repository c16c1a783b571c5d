//! `seedq bench claims` and `seedq bench fleet` on a small scale: they run the real
//! store and the real `seedq serve` processes, and their own checks (no job claimed twice,
//! every job done with exactly one create, the account limits held) must pass.

use crate::helpers::{TestEnv, code_and_err, fresh_postgres, postgres_mode};

fn backend() -> &'static str {
    if postgres_mode() {
        "postgres"
    } else {
        "sqlite"
    }
}

#[test]
fn bench_claims_claims_every_job_once_and_times_stats_and_ls() {
    let env = TestEnv::new("");
    let mut args = vec![
        "bench",
        "claims",
        "--store",
        backend(),
        "--queued",
        "300",
        "--claims",
        "20",
        "--batch",
        "5",
        "--workers",
        "1,2",
        "--runs",
        "1",
    ];
    let url = postgres_mode().then(fresh_postgres);
    if let Some(u) = &url {
        args.extend(["--store-url", u.as_str()]);
    }
    let out = env.ok(&args);
    let b = backend();
    assert!(out.contains(&format!("{b}: enqueue 300 jobs")), "{out}");
    // 20 calls of 5 per run: 100 distinct jobs, with 1 and with 2 concurrent claimers.
    assert!(
        out.contains(&format!("{b}: W=1: 100 jobs in 20 calls")),
        "{out}"
    );
    assert!(
        out.contains(&format!("{b}: W=2: 100 jobs in 20 calls")),
        "{out}"
    );
    assert!(out.contains("100 in flight at the start"), "{out}");
    assert!(out.contains(&format!("{b}: stats with 300 jobs")), "{out}");
    assert!(out.contains(&format!("{b}: ls with 300 jobs")), "{out}");
    assert!(!out.contains("FAIL"), "{out}");
}

#[test]
fn bench_claims_refuses_zero_claimers() {
    let env = TestEnv::new("");
    let out = env.cli(&["bench", "claims", "--store", "sqlite", "--workers", "1,0"]);
    let (code, err) = code_and_err(&out);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--workers") && err.contains('0'), "{err}");
}

#[test]
fn bench_fleet_two_workers_share_the_jobs_within_the_limits() {
    let env = TestEnv::new("");
    let out = env.ok(&[
        "bench",
        "fleet",
        "--store",
        backend(),
        "--jobs",
        "40",
        "--workers",
        "1,2",
        "--concurrency",
        "20",
        "--rpm",
        "1000",
        "--timeout",
        "120",
    ]);
    assert!(out.contains("fleet: W=1: 40 of 40 succeeded"), "{out}");
    assert!(out.contains("fleet: W=2: 40 of 40 succeeded"), "{out}");
    assert!(out.contains("sim creates 40 (jobs 40), 429s 0"), "{out}");
    assert!(out.contains("fleet: PASS"), "{out}");
}
