//! `live-demo`, the README's main job, in a short run: it must exit 0, print calls and
//! violations as the daemon writes them, and leave no network namespace behind. Needs root;
//! REDCAP_MONITOR_SKIP_ROOT_TESTS=1 skips it.

use std::process::Command;

fn namespaces() -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("running ip netns list");
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next().map(String::from))
        .collect();
    names.sort();
    names
}

#[test]
fn a_short_live_demo_shows_calls_and_violations_and_cleans_up() {
    if !monitor_tests::require_root("live demo") {
        return;
    }
    // Fails clearly when the daemon has not been built.
    monitor_tests::daemon::monitor_bin().unwrap();
    let before = namespaces();
    let out = Command::new(env!("CARGO_BIN_EXE_live-demo"))
        .args(["--seconds", "10"])
        .env("NO_COLOR", "1")
        .output()
        .expect("running live-demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let all = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        out.status.success(),
        "live-demo exited {}\n{all}",
        out.status
    );
    let calls = stdout.lines().filter(|l| l.starts_with("CALL ")).count();
    let violations = stdout
        .lines()
        .filter(|l| l.starts_with("VIOLATION "))
        .count();
    assert!(calls >= 10, "too few call lines ({calls})\n{all}");
    assert!(violations >= 1, "no violation line\n{all}");
    assert!(
        stdout.contains("api_calls") && stdout.contains("heavy_calls"),
        "both rules must be broken\n{all}"
    );
    assert!(stdout.contains("ring_full 0 "), "events were lost\n{all}");
    // The daemon wrote what the demo showed.
    assert!(
        stdout.contains(&format!(
            "daemon: {calls} calls and {violations} violations written"
        )),
        "{all}"
    );
    // Other tests on the machine may add namespaces meanwhile: check the demo's own.
    let header = stdout
        .lines()
        .find(|l| l.starts_with("live-demo: namespaces "))
        .unwrap_or_else(|| panic!("no namespace line\n{all}"));
    let words: Vec<&str> = header.split_whitespace().collect();
    let ours = [words[2], words[6]];
    let dir = header.rsplit(' ').next().unwrap();
    let after = namespaces();
    for ns in ours {
        assert!(before.iter().all(|n| n != ns), "{ns} existed before");
        assert!(
            after.iter().all(|n| n != ns),
            "namespace {ns} left behind\n{all}"
        );
    }
    assert!(!std::path::Path::new(dir).exists(), "{dir} left behind");
    // nginx and the daemon name the demo's directory on their command lines.
    let leftovers = Command::new("pgrep")
        .args(["-af", dir])
        .output()
        .expect("pgrep");
    assert!(
        leftovers.stdout.is_empty(),
        "processes left behind: {}",
        String::from_utf8_lossy(&leftovers.stdout)
    );
}
