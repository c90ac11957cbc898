//! The kernel copies what the pipeline reads and little else: a keep-alive connection that a
//! browser-like client starts with a login `POST` (which makes the classifier copy it) and then
//! uses for pages is released once the login's answer needs no reading, so the pages are not
//! copied; an API call later on the same connection is tracked afresh and reported like any
//! other, and nothing is lost on the way.

use std::time::Duration;

use monitor_tests::clients::curl_in;
use monitor_tests::daemon::{LiveDaemon, without_api_listener};
use monitor_tests::netns::NamespacePair;
use monitor_tests::sim::{SimOptions, Simulator, wait_until};
use serde_json::Value;

const TOKEN: &str = "7C3A9E1B5D2F4A6C8E0B1D3F5A7C9E2B";

#[test]
fn a_connection_with_nothing_worth_reading_is_released_and_its_next_api_call_still_counted() {
    if !monitor_tests::require_root("release") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pair = NamespacePair::create(83).unwrap();
    let sim = Simulator::start(&SimOptions {
        tokens: vec![TOKEN.into()],
        log: Some(dir.path().join("sim.jsonl")),
        netns: Some(pair.server_ns.clone()),
        bind: Some(pair.server_ip.clone()),
        port: Some(80),
        ..SimOptions::default()
    })
    .unwrap();
    let d = dir.path().display();
    let config = dir.path().join("release.toml");
    std::fs::write(
        &config,
        format!(
            "[capture]\nmode = \"ebpf\"\ninterfaces = [\"{}\"]\nports = [80]\n\
             [output]\ncalls = \"{d}/calls.jsonl\"\nstats = \"{d}/stats.json\"\n\
             stats_interval = \"1s\"\n[store]\npath = \"{d}/state.redb\"\n{}",
            pair.server_if,
            without_api_listener()
        ),
    )
    .unwrap();
    let key = dir.path().join("site.key");
    let mut daemon = LiveDaemon::start(Some(&pair.server_ns), &config, &key).unwrap();

    // One keep-alive connection: a login form, twenty pages, then an API call (a connection
    // that carried an API call stays copied: API clients send the next call at once).
    let base = format!("http://{}", pair.server_ip);
    let mut args: Vec<String> = vec![
        "-sS".into(),
        "-o".into(),
        "/dev/null".into(),
        format!("{base}/redcap/index.php"),
        "-d".into(),
        "username=alice&password=secret".into(),
    ];
    for _ in 0..20 {
        args.extend(["--next", "-sS", "-o", "/dev/null"].map(String::from));
        args.push(format!("{base}/redcap/"));
    }
    args.extend(["--next", "-sS", "-o", "/dev/null"].map(String::from));
    args.push(format!("{base}/api/"));
    args.extend(["-d", &format!("token={TOKEN}&content=project&format=json")].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    curl_in(Some(&pair.client_ns), &args).unwrap();

    let calls = || {
        std::fs::read_to_string(dir.path().join("calls.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .collect::<Vec<_>>()
    };
    assert!(wait_until(Duration::from_secs(10), || calls().len() == 1));
    std::thread::sleep(Duration::from_millis(1500));
    let (status, log) = daemon.stop().unwrap();
    assert!(status.success(), "{log}");

    // The oracle: the simulator ran one API call, on the same connection as every page.
    let served = sim.log().unwrap();
    assert_eq!(served.len(), 22, "{served:?}");
    let api: Vec<_> = served.iter().filter(|r| r.api).collect();
    assert_eq!(api.len(), 1);
    assert!(served.iter().all(|r| r.client_port == api[0].client_port));
    let calls = calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0]["content"], "project");
    assert_eq!(calls[0]["status"], 200);
    assert_eq!(calls[0]["complete"], true, "{}", calls[0]);
    assert!(calls[0]["response_bytes"].as_u64().unwrap() > 0);

    let stats: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("stats.json")).unwrap())
            .unwrap();
    eprintln!("release: ring {} kernel {}", stats["ring"], stats["kernel"]);
    let released = stats["ring"]["flows_released"].as_u64().unwrap();
    assert!(released >= 1, "released after the login: {released}");
    assert_eq!(
        stats["kernel"]["flows_evicted"], 0,
        "a release is not a loss"
    );
    assert_eq!(
        stats["problems"],
        serde_json::json!({}),
        "nothing lost or unreadable"
    );
    // The pages were not copied: of 22 answers of ~2.6 KB, the kernel sent the login's and the
    // API call's exchanges and little else.
    let delivered = stats["pipeline"]["reassembly"]["bytes_delivered"]
        .as_u64()
        .expect("the stats file counts the bytes reassembly delivered");
    assert!(
        delivered < 12_000,
        "{delivered} bytes reached reassembly: the pages were copied ({})",
        stats["pipeline"]["reassembly"]
    );
}
