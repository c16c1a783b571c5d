//! Clients we did not write, through seedq's Ark door (`[api] listen`, docs/api.md) rather
//! than straight at Ark: the official BytePlus Python SDK, the third-party `seedance` CLI and
//! the Vercel AI SDK's ByteDance provider each get the door (`http://<api.listen>/api/v3`) as
//! their base URL and a key made by `seedq keys create`, then create → poll → download as
//! their users do (tests/sdk/byteplus_check.py, tests/sdk/vercel_check.mjs, `seedance generate
//! --wait`). The bytes each one downloaded — from the door's signed file URL, served out of
//! seedq's archive — must be the sim's video of the task seedq created for that job
//! (`clients::assert_same_video`). The official Volcengine SDK and the `openai` SDK go through
//! the doors in tests/it/api.rs; the same clients against the sim alone are in
//! tests/it/clients.rs and tests/it/validation.rs. A missing client fails with the set-up
//! command, as there: nothing is skipped.

use crate::api::{env_with_doors, make_key, serve, wait_for_door};
use crate::clients::{ark_task, assert_same_video, byteplus, read, vercel};
use crate::helpers::free_port;
use crate::helpers::{Guard, SimProc, TestEnv, fast_sim, seedance_generate};

/// `seedq serve` with the Ark door on, archiving, against its own sim, and one key.
struct Door {
    // Dropped in this order: the worker before its store's directory and its sim.
    _serve: Guard,
    env: TestEnv,
    sim: SimProc,
    port: u16,
    key: String,
}

impl Door {
    fn start() -> Self {
        // Unknown model ids are refused, as by Ark: the clients' BytePlus ids must be known.
        let sim = fast_sim("accept_unknown_models = false");
        let port = free_port();
        let env = env_with_doors(&sim, port);
        let key = make_key(&env, "client", &[]);
        let serve = serve(&env);
        wait_for_door(port);
        Self {
            _serve: serve,
            env,
            sim,
            port,
            key,
        }
    }

    /// The base URL a client is given: the door, where Ark's would be `…/api/v3`.
    fn base(&self) -> String {
        format!("http://127.0.0.1:{}/api/v3", self.port)
    }

    /// The job `id` as the store has it (seedq's id is the one the door answers with).
    fn job(&self, id: &str) -> serde_json::Value {
        self.env
            .jobs()
            .into_iter()
            .find(|j| j["id"] == id)
            .unwrap_or_else(|| panic!("the store has no job {id}"))
    }

    /// Ark's (the sim's) task id of job `id`.
    fn remote(&self, id: &str) -> String {
        let job = self.job(id);
        job["remote_task_id"]
            .as_str()
            .unwrap_or_else(|| panic!("job {id} has no Ark task: {job}"))
            .to_string()
    }
}

/// The BytePlus SDK with its own id for 1.0 pro: the door answers the create with seedq's
/// job id, its polls see `succeeded` once the video is archived, and the file it downloads
/// from `content.video_url` is the sim's video, with the sim's usage and 1.0 pro's default.
#[test]
fn the_byteplus_sdk_creates_polls_and_downloads_through_the_ark_door() {
    let door = Door::start();
    let out = tempfile::tempdir().expect("tempdir");
    let lines = byteplus(
        &door.base(),
        &door.key,
        out.path(),
        &["seedance-1-0-pro-250528"],
    );
    let t = &lines[0];
    assert_eq!(
        (t["model"].as_str(), t["status"].as_str()),
        (Some("seedance-1-0-pro-250528"), Some("succeeded")),
        "{t}"
    );
    let id = t["id"].as_str().expect("an id");
    assert_eq!(door.job(id)["state"], "archived");
    let remote = door.remote(id);
    assert_same_video(
        &door.sim,
        &remote,
        &read(&t["video"]),
        "BytePlus SDK via the door",
    );
    let task = ark_task(&door.sim, &remote);
    assert_eq!(t["resolution"], "1080p", "1.0 pro's default: {t}");
    assert_eq!(t["duration"], 5, "{t}");
    assert_eq!(
        t["completion_tokens"], task["usage"]["completion_tokens"],
        "the door reports Ark's usage: {t} vs {task}"
    );
}

/// The `seedance` CLI (its defaults: `dreamina-seedance-2-0-260128`, seed -1, 720p, audio)
/// through the door: `generate --wait` creates, polls and downloads the sim's video.
#[test]
fn the_seedance_cli_generates_and_downloads_through_the_ark_door() {
    let door = Door::start();
    let home = tempfile::tempdir().expect("tempdir");
    let out_file = home.path().join("clip.mp4");
    let stdout = seedance_generate(&door.base(), &door.key, home.path(), &out_file);
    let jobs = door.env.jobs();
    assert_eq!(jobs.len(), 1, "exactly one create: {jobs:?}");
    let id = jobs[0]["id"].as_str().expect("an id");
    assert!(stdout.contains(id), "it reports seedq's job id: {stdout}");
    assert_eq!(
        jobs[0]["model"], "dreamina-seedance-2-0-260128",
        "{}",
        jobs[0]
    );
    let video = std::fs::read(&out_file).expect("seedance wrote the video");
    let remote = door.remote(id);
    assert_same_video(&door.sim, &remote, &video, "seedance CLI via the door");
    // The task it last read from the door reports what Ark's did, not what was asked: the
    // seed used for its `seed: -1` and the ratio chosen for its `adaptive`
    // (docs/ark-api.md §3.1), with Ark's frame rate and usage.
    let printed: serde_json::Value = serde_json::from_str(&stdout).expect("its --json output");
    let got = &printed["data"]["task"];
    let want = ark_task(&door.sim, &remote);
    for k in [
        "seed",
        "ratio",
        "resolution",
        "duration",
        "framespersecond",
        "usage",
    ] {
        assert_eq!(got[k], want[k], "{k}: the door's {got} vs Ark's {want}");
    }
    assert_ne!(got["seed"], -1, "{got}");
}

/// The Vercel AI SDK's ByteDance provider through the door: the task id in its
/// providerMetadata is seedq's job id, the URL it downloads is the door's signed file URL,
/// and the bytes are the sim's video.
#[test]
fn the_vercel_ai_sdk_creates_polls_and_downloads_through_the_ark_door() {
    let door = Door::start();
    let out = tempfile::tempdir().expect("tempdir");
    let (v, bytes) = vercel(
        &door.base(),
        &door.key,
        out.path(),
        "dreamina-seedance-2-0-260128",
    );
    let id = v["id"].as_str().expect("the task id in providerMetadata");
    let files = format!("http://127.0.0.1:{}/files/{id}/video.mp4?", door.port);
    assert!(
        v["downloaded"]
            .as_array()
            .is_some_and(|u| u.len() == 1 && u[0].as_str().is_some_and(|u| u.starts_with(&files))),
        "{v}"
    );
    let remote = door.remote(id);
    assert_same_video(&door.sim, &remote, &bytes, "Vercel AI SDK via the door");
    assert_eq!(
        v["usage"]["completion_tokens"],
        ark_task(&door.sim, &remote)["usage"]["completion_tokens"],
        "{v}"
    );
}
