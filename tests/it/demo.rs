//! `seedq demo`: the newcomer's first command runs the whole pipeline and reports it.

use crate::helpers::TestEnv;

#[test]
fn demo_runs_every_mode_to_the_end() {
    let env = TestEnv::new("");
    let dir = env.path().join("demo");
    let out = env
        .cmd(&[
            "demo",
            "--dir",
            dir.to_str().expect("path"),
            "--time-scale",
            "0.002",
        ])
        .output()
        .expect("run demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    for mode in [
        "text-to-video",
        "first frame",
        "first+last frame",
        "reference images",
        "flex tier",
        "inline commands",
    ] {
        let line = stdout
            .lines()
            .find(|l| l.contains(mode))
            .unwrap_or_else(|| panic!("no row for {mode}:\n{stdout}"));
        assert!(line.contains("archived"), "{mode} did not finish: {line}");
        let path = line.split_whitespace().last().expect("a path");
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let info = seedq::media::probe_bytes(&bytes).expect("a real MP4");
        assert!(info.frames >= 29, "{mode}: {info:?}");
        let sidecar = std::path::Path::new(path).with_extension("json");
        assert!(
            sidecar.is_file(),
            "{mode}: no sidecar at {}",
            sidecar.display()
        );
    }
    assert!(
        dir.join("seedq.db").is_file(),
        "the demo's database is kept for inspection"
    );
}
