//! Behind a proxy, the client is the proxy: nginx in a server namespace proxies to the REDCap
//! simulator and appends the client's address to `X-Forwarded-For`, and `redcap-monitor run`
//! watches the proxy's connections to the simulator on the namespace's loopback. With the proxy
//! in `redcap.trusted_proxies`, each call's client is the address nginx itself saw (its access
//! log is the oracle), whatever the client wrote in the header; a connection that does not come
//! from the proxy is never believed; refused-token probing through the proxy is a violation of
//! the probing client, not of the proxy.

use std::path::{Path, PathBuf};
use std::time::Duration;

use monitor_tests::clients::api_call_in;
use monitor_tests::daemon::{LiveDaemon, jsonl};
use monitor_tests::netns::NamespacePair;
use monitor_tests::sim::{SimOptions, Simulator, wait_until};
use monitor_tests::web::{Nginx, TestPki};
use serde_json::Value;

const TOKEN: &str = "5B1D9F3A7C2E4B6D8F0A1C3E5B7D9F2A";
const WAIT: Duration = Duration::from_secs(20);

fn config(dir: &Path, sim_port: u16) -> PathBuf {
    let d = dir.display();
    let path = dir.join("proxies.toml");
    std::fs::write(
        &path,
        format!(
            "[capture]\nmode = \"pcap\"\ninterfaces = [\"lo\"]\nports = [{sim_port}]\n\
             [redcap]\ntrusted_proxies = [\"127.0.0.1\"]\n\
             [output]\ncalls = \"{d}/calls.jsonl\"\nviolations = \"{d}/violations.jsonl\"\n\
             stats = \"{d}/stats.json\"\nstats_interval = \"1s\"\n\
             [store]\npath = \"{d}/state/state.redb\"\n\
             [api]\nlisten = \"127.0.0.1:0\"\n"
        ),
    )
    .unwrap();
    path
}

fn records(path: &Path) -> Vec<Value> {
    jsonl(&std::fs::read_to_string(path).unwrap_or_default())
}

fn ip_of(endpoint: &str) -> &str {
    endpoint.rsplit_once(':').map_or(endpoint, |(ip, _)| ip)
}

#[test]
fn behind_a_trusted_proxy_the_client_is_the_one_the_proxy_saw() {
    if !monitor_tests::require_root("proxies") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pair = NamespacePair::create(88).unwrap();
    let pki = TestPki::create(dir.path(), &pair.server_ip).unwrap();
    let sim = Simulator::start(&SimOptions {
        tokens: vec![TOKEN.into()],
        netns: Some(pair.server_ns.clone()),
        log: Some(dir.path().join("sim.jsonl")),
        ..SimOptions::default()
    })
    .unwrap();
    let upstream = format!("upstream redcap {{ server 127.0.0.1:{}; }}\n", sim.port());
    let site = "location / {\n      proxy_pass http://redcap;\n      proxy_http_version 1.1;\n      \
                proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n    }\n";
    let nginx =
        Nginx::start_serving(&pair.server_ns, dir.path(), &pki, 1, &upstream, site).unwrap();
    let config = config(dir.path(), sim.port());
    let key = dir.path().join("site.key");
    let mut daemon = LiveDaemon::start(Some(&pair.server_ns), &config, &key).unwrap();

    let via_proxy = format!("http://{}/api/", pair.server_ip);
    // Through the proxy: an honest call, one whose client forges the header, and five with
    // made-up tokens (refused: probing).
    api_call_in(Some(&pair.client_ns), &via_proxy, TOKEN, &[]);
    api_call_in(
        Some(&pair.client_ns),
        &via_proxy,
        TOKEN,
        &["-H", "X-Forwarded-For: 198.51.100.66"],
    );
    for n in 0..5 {
        let made_up = format!("{:032X}", 0xABCDEF00u64 + n);
        api_call_in(Some(&pair.client_ns), &via_proxy, &made_up, &[]);
    }
    // Straight to the simulator from another loopback address, forging the header: not a
    // trusted proxy, so not believed.
    let direct = format!("http://127.0.0.1:{}/api/", sim.port());
    api_call_in(
        Some(&pair.server_ns),
        &direct,
        TOKEN,
        &[
            "--interface",
            "127.0.0.2",
            "-H",
            "X-Forwarded-For: 198.51.100.77",
        ],
    );

    let calls_path = dir.path().join("calls.jsonl");
    assert!(
        wait_until(WAIT, || records(&calls_path).len() >= 8),
        "8 calls recorded; got {:?}",
        records(&calls_path)
    );
    let violations_path = dir.path().join("violations.jsonl");
    assert!(
        wait_until(WAIT, || !records(&violations_path).is_empty()),
        "the probing client is a violation"
    );
    daemon.stop().unwrap();

    // The oracle: the addresses nginx saw (`combined` log format: `$remote_addr - …`).
    let access = std::fs::read_to_string(dir.path().join("nginx-access.log")).unwrap();
    let seen_by_nginx: Vec<&str> = access
        .lines()
        .filter(|l| l.contains("POST /api/"))
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    assert_eq!(seen_by_nginx.len(), 7, "{access}");
    assert!(
        seen_by_nginx.iter().all(|ip| *ip == pair.client_ip),
        "{access}"
    );
    assert_eq!(sim.settled_api().unwrap().len(), 8);

    let calls = records(&calls_path);
    let proxied: Vec<&Value> = calls.iter().filter(|c| !c["proxy"].is_null()).collect();
    assert_eq!(proxied.len(), 7, "{calls:?}");
    for c in &proxied {
        assert_eq!(ip_of(c["client"].as_str().unwrap()), pair.client_ip, "{c}");
        assert_eq!(ip_of(c["proxy"].as_str().unwrap()), "127.0.0.1", "{c}");
    }
    let direct: Vec<&Value> = calls.iter().filter(|c| c["proxy"].is_null()).collect();
    assert_eq!(direct.len(), 1, "{calls:?}");
    assert_eq!(ip_of(direct[0]["client"].as_str().unwrap()), "127.0.0.2");
    let written = std::fs::read_to_string(&calls_path).unwrap();
    assert!(
        !written.contains("198.51.100."),
        "a forged address was believed: {written}"
    );

    // Probing through the proxy blames the prober, not the proxy every user shares.
    let violations = records(&violations_path);
    assert!(!violations.is_empty());
    for v in &violations {
        assert_eq!(v["rule"], "refused_calls", "{v}");
        assert_eq!(v["client"].as_str(), Some(pair.client_ip.as_str()), "{v}");
    }

    let stats: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("stats.json")).unwrap())
            .unwrap();
    let redcap = stats
        .pointer("/pipeline/redcap")
        .or(stats.pointer("/redcap"));
    assert_eq!(
        redcap.and_then(|r| r["client_from_proxy"].as_u64()),
        Some(7),
        "{stats}"
    );
    drop(nginx);
}
