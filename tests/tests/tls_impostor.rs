//! A process name proves nothing: any local user can call a process `nginx`. nginx (root
//! workers, under a unique name) serves the REDCap simulator over HTTPS while a Python HTTPS
//! server that names itself like that nginx, running as `nobody`, answers API calls of its own
//! with the same libssl. With the default `capture.tls.users` the impostor's calls are not
//! counted, the kernel counts its reads and the coverage check names it; with `nobody` added to
//! the list, the same calls are counted (so it is the user filter that kept them out).

use std::path::{Path, PathBuf};
use std::time::Duration;

use monitor_tests::clients::curl_in;
use monitor_tests::daemon::{LiveDaemon, jsonl};
use monitor_tests::netns::NamespacePair;
use monitor_tests::sim::{SimOptions, Simulator, wait_until};
use monitor_tests::web::{Impostor, Nginx, PythonHttps, TestPki};
use serde_json::Value;

const TOKEN: &str = "3E5A7C9B1D2F4A6C8E0B2D4F6A8C0E1B";
const NOBODY: u32 = 65534;
const WAIT: Duration = Duration::from_secs(20);

fn config(dir: &Path, pair: &NamespacePair, nginx: &Nginx, users: &str, run: &str) -> PathBuf {
    let d = dir.display();
    let path = dir.join(format!("{run}.toml"));
    std::fs::write(
        &path,
        format!(
            "[capture]\nmode = \"ebpf\"\ninterfaces = [\"{}\"]\nports = [80, 443, 8443]\n\
             [capture.tls]\nenabled = true\nprocesses = [\"{}\"]\n{users}rescan_interval = \"1s\"\n\
             [output]\ncalls = \"{d}/{run}-calls.jsonl\"\nstats = \"{d}/{run}-stats.json\"\n\
             stats_interval = \"1s\"\n\
             [store]\npath = \"{d}/{run}-state/state.redb\"\n\
             [api]\nlisten = \"127.0.0.1:0\"\n",
            pair.server_if,
            nginx.name(),
        ),
    )
    .unwrap();
    path
}

fn https_call(pair: &NamespacePair, pki: &TestPki, port: u16) {
    let url = format!("https://{}:{port}/api/", pair.server_ip);
    #[rustfmt::skip]
    curl_in(Some(&pair.client_ns), &[
        "-sS", "-o", "/dev/null", "--http1.1", "--cacert", pki.ca_cert.to_str().unwrap(), &url,
        "-d", &format!("token={TOKEN}"), "-d", "content=version",
    ])
    .unwrap();
}

fn tls_calls(path: &Path) -> usize {
    jsonl(&std::fs::read_to_string(path).unwrap_or_default())
        .iter()
        .filter(|c| c["transport"] == "tls")
        .count()
}

fn stats(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_default()).unwrap_or_default()
}

#[test]
fn a_process_named_like_the_web_server_is_read_only_as_a_configured_user() {
    if !monitor_tests::require_root("tls_impostor") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pair = NamespacePair::create(89).unwrap();
    let pki = TestPki::create(dir.path(), &pair.server_ip).unwrap();
    let sim = Simulator::start(&SimOptions {
        tokens: vec![TOKEN.into()],
        log: Some(dir.path().join("sim.jsonl")),
        netns: Some(pair.server_ns.clone()),
        ..SimOptions::default()
    })
    .unwrap();
    let nginx = Nginx::start(&pair.server_ns, dir.path(), sim.port(), &pki, 1).unwrap();
    let impostor = PythonHttps::start(
        &pair.server_ns,
        &pair.server_ip,
        &pki,
        Some(Impostor {
            name: nginx.name(),
            uid: NOBODY,
        }),
    );
    let key = dir.path().join("site.key");

    // 1. The default users: nginx's two calls are counted, the impostor's three are not.
    let first = config(dir.path(), &pair, &nginx, "", "default");
    let mut daemon = LiveDaemon::start(Some(&pair.server_ns), &first, &key).unwrap();
    daemon
        .wait_for_log("uprobes attached", 1, WAIT)
        .expect("the uprobes attach");
    for _ in 0..2 {
        https_call(&pair, &pki, 443);
    }
    for _ in 0..3 {
        https_call(&pair, &pki, 8443);
    }
    let calls = dir.path().join("default-calls.jsonl");
    let stats_path = dir.path().join("default-stats.json");
    assert!(
        wait_until(WAIT, || tls_calls(&calls) >= 2),
        "nginx's calls are counted"
    );
    assert!(
        wait_until(WAIT, || {
            let s = stats(&stats_path);
            s["kernel"]["tls_other_user"].as_u64().unwrap_or(0) > 0
                && s["coverage"]
                    .as_array()
                    .is_some_and(|spots| spots.iter().any(|b| b["reason"] == "https_other_user"))
        }),
        "the impostor's reads are counted and named: {}",
        stats(&stats_path)
    );
    let (status, log) = daemon.stop().unwrap();
    assert!(status.success(), "{log}");
    assert_eq!(tls_calls(&calls), 2, "only nginx's calls: {log}");
    assert!(
        log.contains("https_other_user"),
        "the log names the blind spot:\n{log}"
    );
    assert_eq!(
        sim.settled_api().unwrap().len(),
        2,
        "nginx passed on its two calls"
    );

    // 2. With nobody listed, the same impostor's calls are read: the user filter is what
    // kept them out.
    let users = format!("users = [\"root\", \"{NOBODY}\"]\n");
    let second = config(dir.path(), &pair, &nginx, &users, "listed");
    let mut daemon = LiveDaemon::start(Some(&pair.server_ns), &second, &key).unwrap();
    daemon
        .wait_for_log("uprobes attached", 1, WAIT)
        .expect("the uprobes attach");
    for _ in 0..3 {
        https_call(&pair, &pki, 8443);
    }
    let calls = dir.path().join("listed-calls.jsonl");
    assert!(
        wait_until(WAIT, || tls_calls(&calls) >= 3),
        "the listed user's calls are read"
    );
    daemon.stop().unwrap();
    drop(impostor);
}
