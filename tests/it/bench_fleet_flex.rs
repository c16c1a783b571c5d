//! `seedq bench fleet --flex` on a small scale: three real `seedq serve` processes on one
//! scratch PostgreSQL against the sim's offline pool; the bench's own checks (every job
//! created once and finished, no TPD day over budget, RSS and `stats` / `batch show` times)
//! must pass.

use crate::helpers::{TestEnv, code_and_err, postgres_mode};

#[test]
fn bench_fleet_flex_finishes_every_job_once_across_tpd_days() {
    // The flex fleet always runs on its own scratch PostgreSQL cluster, whatever the pass's
    // store: running it in the PostgreSQL pass only is enough.
    if !postgres_mode() {
        return;
    }
    let env = TestEnv::new("");
    // 300 jobs at most 100 a 2 s day: at least three days, so the TPD budget binds.
    let out = env.ok(&[
        "bench",
        "fleet",
        "--flex",
        "--jobs",
        "300",
        "--pool",
        "50",
        "--tpd-jobs",
        "100",
        "--day-secs",
        "2",
    ]);
    assert!(out.contains("fleet --flex: enqueued 300 jobs"), "{out}");
    assert!(out.contains("300 of 300 succeeded"), "{out}");
    assert!(out.contains("sim: 300 creates for 300 jobs"), "{out}");
    assert!(out.contains("days over TPD: 0"), "{out}");
    assert!(out.contains("the run crossed a TPD day boundary"), "{out}");
    assert!(
        out.contains(
            "checks: created once ok, all finished ok, TPD ok, RSS ok, stats/batch show ok"
        ),
        "{out}"
    );
    assert!(out.contains("fleet --flex: PASS"), "{out}");
}

#[test]
fn bench_fleet_flex_refuses_a_bad_time_scale() {
    let env = TestEnv::new("");
    let out = env.cli(&["bench", "fleet", "--flex", "--time-scale", "0"]);
    let (code, err) = code_and_err(&out);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--time-scale") && err.contains("\"0\""),
        "{err}"
    );
}
