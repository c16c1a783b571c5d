//! A PostgreSQL store that refuses new connections, or turns read-only, while the service
//! runs: no crash, `/readyz` fails with the reason, nothing is claimed, every job is created
//! once and finishes when the server takes writes again.
//!
//! Each test starts a PostgreSQL cluster of its own (the changes are server-wide).

use std::time::{Duration, Instant};

use seedq::pgscratch::Cluster;

use crate::helpers::{SimProc, TestEnv, free_port, get_status as get, wait_until, worker_config};

const MODEL: &str = "doubao-seedance-1-0-pro-250528";
const JOBS: usize = 20;

/// A service on a database of `cluster`, with [`JOBS`] jobs queued that run two at a time
/// for three seconds each, so the run is under way when the server turns: thirty seconds of
/// work, of which the hog below can take twenty on a loaded machine before it holds every
/// connection.
struct Run {
    env: TestEnv,
    sim: SimProc,
    admin: u16,
    url: String,
}

impl Run {
    fn start(cluster: &Cluster) -> (Self, crate::helpers::Guard) {
        let sim = SimProc::start(
            "video_downscale = 16\nreuse_videos = true\n[generation]\nbase = \"3s\"\nper_video_second = \"0s\"\n",
        );
        let admin = free_port();
        let url = cluster.create_db("outage").expect("create a database");
        let env = TestEnv::new_sqlite(&worker_config(&sim, ""));
        let sqlite = format!(
            "path = {:?}",
            env.path().join("seedq.db").display().to_string()
        );
        let cfg = std::fs::read_to_string(&env.config)
            .expect("config")
            .replacen(&sqlite, &format!("url = {url:?}"), 1)
            .replacen(
                "[archive]\nurl = \"\"",
                &format!(
                    "[archive]\nurl = \"file://{}\"",
                    env.path().join("archive").display()
                ),
                1,
            )
            .replacen(
                "[admin]\nlisten = \"\"\n",
                &format!(
                    "[admin]\nlisten = \"127.0.0.1:{admin}\"\n\n[models.\"{MODEL}\"]\nlimits = {{ concurrency = 2 }}\n"
                ),
                1,
            );
        assert!(cfg.contains(&url), "{cfg}");
        std::fs::write(&env.config, cfg).expect("config");
        let lines: Vec<String> = (0..JOBS)
            .map(|i| {
                serde_json::json!({"model": MODEL, "prompt": format!("outage {i}"), "resolution": "480p"})
                    .to_string()
            })
            .collect();
        let file = crate::helpers::write_jobs(&env, "jobs.jsonl", &lines);
        env.ok(&["submit", "--file", &file]);
        let serve = env.serve();
        let run = Run {
            env,
            sim,
            admin,
            url,
        };
        wait_until(30, "a few jobs archived", || {
            get(admin, "/healthz").is_some_and(|(s, _)| s == 200) && run.archived() >= 2
        });
        (run, serve)
    }

    fn jobs(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.env.ok(&["ls", "--json", "--limit", "1000"])).expect("ls")
    }

    fn archived(&self) -> usize {
        self.jobs()
            .iter()
            .filter(|j| j["state"] == "archived")
            .count()
    }

    fn creates(&self) -> u64 {
        self.sim.stats()["creates_total"].as_u64().unwrap_or(0)
    }

    /// While the server is out: `/readyz` fails naming `reason`, `/healthz` passes, and no
    /// create reaches Ark for three seconds.
    fn ridden_out(&self, serve: &mut crate::helpers::Guard, reason: &str) {
        let since = Instant::now();
        let mut body = String::new();
        wait_until(15, "/readyz to fail with the reason", || {
            match get(self.admin, "/readyz") {
                Some((503, b)) if b.contains(reason) => {
                    body = b;
                    true
                }
                _ => false,
            }
        });
        eprintln!("/readyz 503 after {:?}:\n{body}", since.elapsed());
        // Claims in flight when the server turned finish (or fail to record) first.
        std::thread::sleep(Duration::from_millis(1500));
        let held = self.creates();
        std::thread::sleep(Duration::from_secs(3));
        assert_eq!(self.creates(), held, "a job was claimed during the outage");
        assert!((held as usize) < JOBS, "the outage came after the run");
        assert_eq!(
            get(self.admin, "/healthz").map(|(s, _)| s),
            Some(200),
            "the service is alive"
        );
        assert!(
            serve.0.try_wait().expect("try_wait").is_none(),
            "seedq serve exited"
        );
    }

    /// After the server is back: ready within seconds, every job archived, one create each.
    fn resumed(&self) {
        let back = Instant::now();
        wait_until(15, "/readyz to pass again", || {
            get(self.admin, "/readyz").is_some_and(|(s, _)| s == 200)
        });
        let ready = back.elapsed();
        wait_until(60, "every job archived", || {
            let jobs = self.jobs();
            jobs.len() == JOBS && jobs.iter().all(|j| j["state"] == "archived")
        });
        eprintln!(
            "ready {ready:?} after the server came back; every job archived after {:?}",
            back.elapsed()
        );
        assert!(ready < Duration::from_secs(5), "ready only after {ready:?}");
        assert_eq!(self.creates(), JOBS as u64, "one create per job");
        // A claim whose record could not be written in the outage may be claimed once more
        // after its lease (the reconciler then adopts the task by its identity): one create
        // per job is the promise, checked above; a job never needs more than that one retry.
        for j in self.jobs() {
            assert!(
                j["attempts"].as_i64().is_some_and(|a| (1..=2).contains(&a)),
                "{j}"
            );
        }
    }
}

/// Runs `f` on a fresh runtime.
fn block_on<T>(rt: &tokio::runtime::Runtime, f: impl std::future::Future<Output = T>) -> T {
    rt.block_on(f)
}

async fn connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

#[test]
fn a_postgres_server_that_refuses_connections_is_ridden_out() {
    let cluster = Cluster::start_with_max_connections(30).expect("a PostgreSQL cluster");
    let (run, mut serve) = Run::start(&cluster);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    // Another client takes every connection the server has: it ends seedq's sessions and
    // takes the freed slots, until seedq holds none.
    let hog = block_on(&rt, async {
        let mut held = Vec::new();
        // seedq's pool reconnects as fast as it can; on a loaded machine it can win a few
        // rounds, so the hog keeps at it for up to 20 s.
        for _ in 0..400 {
            while let Ok(c) = connect(&run.url).await {
                held.push(c);
            }
            let mut ours = Vec::new();
            for c in &held {
                ours.push(
                    c.query_one("SELECT pg_backend_pid()", &[])
                        .await
                        .expect("pid")
                        .get::<_, i32>(0),
                );
            }
            let ended = held[0]
                .query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE backend_type = 'client backend' AND NOT (pid = ANY($1))",
                    &[&ours],
                )
                .await
                .expect("terminate")
                .len();
            if ended == 0 {
                return held;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("seedq kept taking connections back");
    });
    assert_eq!(hog.len(), 30, "the other client holds every connection");
    run.ridden_out(&mut serve, "too many clients");
    drop(hog);
    run.resumed();
}

#[test]
fn a_postgres_server_that_turns_read_only_is_ridden_out() {
    let cluster = Cluster::start().expect("a PostgreSQL cluster");
    let (run, mut serve) = Run::start(&cluster);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    // What a failover onto a standby or an operator does: every session, seedq's included,
    // becomes read-only at the reload.
    let admin = block_on(&rt, connect(&run.url)).expect("connect");
    // ALTER SYSTEM runs outside a transaction: one statement per call.
    for sql in [
        "ALTER SYSTEM SET default_transaction_read_only = on",
        "SELECT pg_reload_conf()",
    ] {
        block_on(&rt, admin.batch_execute(sql)).expect("read-only");
    }
    run.ridden_out(&mut serve, "read-only");
    for sql in [
        "ALTER SYSTEM RESET default_transaction_read_only",
        "SELECT pg_reload_conf()",
    ] {
        block_on(&rt, admin.batch_execute(sql)).expect("writable again");
    }
    run.resumed();
}
