//! HTTP/2 end to end: nginx (`listen 443 ssl http2`, and `listen 8080 http2` for h2c with prior
//! knowledge) and Apache (mpm_event, mod_http2, `Protocols h2 http/1.1`) proxy to the REDCap
//! simulator in a server namespace; `redcap-monitor run` watches the veth with the TC probe and
//! both servers' OpenSSL with uprobes. curl (`--http2`: keep-alive with several calls on one
//! connection, `--parallel` streams multiplexed on one connection, large gzip exports) and
//! Python httpx with HTTP/2 (sequential and concurrent calls on one client) call both. Every API
//! call the simulator answered (its `--log`, the oracle) must be reported exactly once, with
//! `http_version` "2" and the simulator's fields and sizes, and no HTTP/2 problem counted; and
//! `analyze` of a tcpdump capture of the h2c port must report the same h2c calls offline.
//!
//! uprobes are system-wide and other tests run web servers concurrently: the daemon watches only
//! this test's process names (unique binary copies).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use monitor_tests::capture::Tcpdump;
use monitor_tests::daemon::{LiveDaemon, analyze_full, fingerprints, jsonl};
use monitor_tests::netns::{NamespacePair, command_in};
use monitor_tests::sim::{SimOptions, SimRecord, Simulator};
use monitor_tests::web::{Apache, Nginx, TestPki};
use serde_json::Value;

const TOKEN: &str = "3F6A9C2E5B8D1F4A7C0E3B6D9F2A5C8E";
const OTHER: &str = "B4C5D6E7F8091A2B3C4D5E6F7A8B9C0D";
const APACHE_PORT: u16 = 8443;

/// One curl transfer: a POST of `fields` (`-d` each) to `url`.
struct Transfer<'a> {
    url: &'a str,
    fields: Vec<String>,
}

fn post<'a>(url: &'a str, token: &str, fields: &[&str]) -> Transfer<'a> {
    let mut all = vec![format!("token={token}")];
    all.extend(fields.iter().map(|f| f.to_string()));
    Transfer { url, fields: all }
}

/// Runs one curl process with `transfers` joined by `--next` (so they share a connection),
/// all of them with `protocol` (`--http2` or `--http2-prior-knowledge`) and `--compressed`;
/// `parallel` adds `--parallel` (streams multiplexed on one connection). Asserts every
/// transfer spoke HTTP/2 and got a 2xx.
fn curl(ns: &str, ca: &Path, protocol: &str, parallel: bool, transfers: &[Transfer<'_>]) {
    let mut cmd = command_in(Some(ns), "curl");
    if parallel {
        cmd.args(["--parallel", "--parallel-max", "10"]);
    }
    for (i, t) in transfers.iter().enumerate() {
        if i > 0 {
            cmd.arg("--next");
        }
        cmd.args(["-sS", protocol, "--compressed", "--cacert"])
            .arg(ca)
            .args(["-o", "/dev/null", "-w", "%{http_version} %{http_code}\\n"]);
        for field in &t.fields {
            cmd.args(["-d", field]);
        }
        cmd.arg(t.url);
    }
    let out = cmd.output().expect("running curl");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), transfers.len(), "curl output: {stdout}");
    for line in lines {
        assert!(line.starts_with("2 2"), "not HTTP/2 or not 2xx: {line}");
    }
}

/// httpx with HTTP/2: calls in sequence, then concurrently as asyncio tasks, on one client (one
/// connection, multiplexed); over `http://` with prior knowledge (h2c). Returns how many calls
/// it made. (Not from threads on a synchronous client: httpcore's HTTP/2 connection is not safe
/// across threads and sometimes fails there with `LocalProtocolError`, the client's own race.)
fn httpx(ns: &str, ca: &Path, url: &str, token: &str) -> usize {
    const CLIENT: &str = r#"
import asyncio, sys, httpx
url, ca, token = sys.argv[1:4]
prior_knowledge = url.startswith("http://")
sequential = [
    {"content": "version"},
    {"content": "project", "format": "json"},
    {"content": "record", "format": "json", "type": "flat"},
    {"content": "metadata", "format": "csv"},
]
concurrent_calls = [
    {"content": "record", "format": "csv", "records[0]": "1", "records[1]": "2"},
    {"content": "metadata", "format": "json"},
    {"content": "record", "format": "json", "fields[0]": "record_id"},
    {"content": "version", "format": "json"},
    {"content": "record", "format": "xml"},
]
async def main():
    async with httpx.AsyncClient(http1=not prior_knowledge, http2=True, verify=ca, timeout=60) as client:
        async def call(params):
            response = await client.post(url, data=dict(params, token=token))
            assert response.http_version == "HTTP/2", response.http_version
            assert response.status_code == 200, response.status_code
        for params in sequential:
            await call(params)
        await asyncio.gather(*(call(params) for params in concurrent_calls))
asyncio.run(main())
print(len(sequential) + len(concurrent_calls))
"#;
    let out = command_in(Some(ns), "python3")
        .args(["-c", CLIENT, url])
        .arg(ca)
        .arg(token)
        .output()
        .expect("running python3 (httpx: `cargo xtask setup`)");
    assert!(
        out.status.success(),
        "httpx client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// What a call and the simulator's record of it must agree on.
fn essence_of_call(c: &Value) -> String {
    format!(
        "{} {} {} {} {} req={} body={} wire={}",
        c["token_fp"],
        c["content"],
        c["action"],
        c["format"],
        c["status"],
        c["request_bytes"],
        c["response_bytes"],
        c["response_wire_bytes"]
    )
}

fn essence_of_sim(r: &SimRecord, fp_of: &BTreeMap<String, String>) -> String {
    let json = |v: &Option<String>| serde_json::to_string(v).unwrap();
    format!(
        "\"{}\" {} {} {} {} req={} body={} wire={}",
        fp_of[r.token.as_deref().unwrap()],
        json(&r.content),
        json(&r.action),
        json(&r.format),
        r.status,
        r.request_body_bytes,
        r.body_bytes,
        r.wire_bytes
    )
}

#[test]
fn http2_calls_through_nginx_and_apache_are_reported_once_as_the_simulator_answered_them() {
    if !monitor_tests::require_root("h2") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pair = NamespacePair::create(74).unwrap();
    let pki = TestPki::create(dir.path(), &pair.server_ip).unwrap();
    let sim = Simulator::start(&SimOptions {
        tokens: vec![TOKEN.into(), OTHER.into()],
        project_sizes: vec![(TOKEN.into(), 1500), (OTHER.into(), 5)],
        log: Some(dir.path().join("sim-log.jsonl")),
        netns: Some(pair.server_ns.clone()),
        ..SimOptions::default()
    })
    .unwrap();
    let nginx = Nginx::start_http2(&pair.server_ns, dir.path(), sim.port(), &pki, 2).unwrap();
    let apache =
        Apache::start_http2_proxy(&pair.server_ns, dir.path(), APACHE_PORT, sim.port(), &pki)
            .unwrap();

    let key = dir.path().join("site.key");
    let calls = dir.path().join("calls.jsonl");
    let stats = dir.path().join("stats.json");
    let config = dir.path().join("h2.toml");
    // 8080 is h2c (plaintext, read by the TC probe); 443 and 8443 are HTTPS (uprobes). The
    // state store is the test's own: other tests' daemons may be running.
    std::fs::write(
        &config,
        format!(
            "[capture]\nmode = \"ebpf\"\ninterfaces = [\"{}\"]\nports = [80, 443, 8080, {APACHE_PORT}]\n\
             [capture.tls]\nenabled = true\nprocesses = [\"{}\", \"{}\"]\nrescan_interval = \"1s\"\n\
             [output]\ncalls = \"{}\"\nstats = \"{}\"\nstats_interval = \"1s\"\n\
             [store]\npath = \"{}\"\n",
            pair.server_if,
            nginx.name(),
            apache.name(),
            calls.display(),
            stats.display(),
            dir.path().join("state").join("state.redb").display()
        ),
    )
    .unwrap();
    let ns = pair.server_ns.as_str();
    let client = pair.client_ns.as_str();
    let mut daemon = LiveDaemon::start(Some(ns), &config, &key).unwrap();
    // The h2c packets, for `analyze` to read offline.
    let pcap = dir.path().join("h2c.pcap");
    let mut tcpdump = Tcpdump::start_in(Some(ns), &pair.server_if, "tcp port 8080", &pcap).unwrap();
    let fp_of: BTreeMap<String, String> = [TOKEN, OTHER]
        .iter()
        .zip(fingerprints(&key, &[TOKEN, OTHER]).unwrap())
        .map(|(t, fp)| (t.to_string(), fp))
        .collect();

    let nginx_https = format!("https://{}/redcap/api/", pair.server_ip);
    let nginx_h2c = format!("http://{}:8080/api/", pair.server_ip);
    let apache_https = format!("https://{}:{APACHE_PORT}/api/", pair.server_ip);
    let ca = pki.ca_cert.as_path();
    for (url, protocol) in [
        (nginx_https.as_str(), "--http2"),
        (apache_https.as_str(), "--http2"),
    ] {
        // Keep-alive: several calls on one connection, two of them large gzip exports (the
        // 1,500-record project: hundreds of KiB over many DATA frames).
        let keep_alive = [
            post(url, TOKEN, &["content=version"]),
            post(url, TOKEN, &["content=record", "format=json"]),
            post(url, OTHER, &["content=metadata", "format=json"]),
            post(url, TOKEN, &["content=record", "format=csv", "type=flat"]),
            post(url, TOKEN, &["content=project", "format=json"]),
        ];
        curl(client, ca, protocol, false, &keep_alive);
        // Concurrent streams on one connection.
        let parallel = [
            post(url, TOKEN, &["content=record", "format=json"]),
            post(url, OTHER, &["content=version"]),
            post(url, TOKEN, &["content=metadata", "format=csv"]),
            post(url, OTHER, &["content=record", "format=xml"]),
            post(url, TOKEN, &["content=log", "format=json"]),
            post(url, OTHER, &["content=project", "format=json"]),
        ];
        curl(client, ca, protocol, true, &parallel);
    }
    // h2c with prior knowledge: curl 7.88 cannot reuse such a connection ("Error in the HTTP2
    // framing layer" from the second transfer on), so one call per curl, and httpx for
    // keep-alive and concurrent streams.
    let mut h2c_calls = 0;
    for fields in [&["content=version"][..], &["content=record", "format=json"]] {
        curl(
            client,
            ca,
            "--http2-prior-knowledge",
            false,
            &[post(&nginx_h2c, TOKEN, fields)],
        );
        h2c_calls += 1;
    }
    h2c_calls += httpx(client, ca, &nginx_h2c, OTHER);
    let mut more_calls = h2c_calls;
    for url in [&nginx_https, &apache_https] {
        more_calls += httpx(client, ca, url, TOKEN);
    }
    let answered = sim.settled_api().unwrap();
    assert_eq!(answered.len(), 2 * 11 + more_calls, "the simulator's count");

    std::thread::sleep(Duration::from_millis(500));
    tcpdump.stop().unwrap();
    let (status, log) = daemon.stop().unwrap();
    assert!(
        status.success(),
        "redcap-monitor run exited {status}:\n{log}"
    );
    let all = jsonl(&std::fs::read_to_string(&calls).unwrap());
    let stats: Value = serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    let http_stats = stats["pipeline"]["http"].to_string();
    eprintln!(
        "h2: {} calls reported ({} tls, {} tcp); simulator answered {}\nhttp: {http_stats}\nproblems: {}",
        all.len(),
        all.iter().filter(|c| c["transport"] == "tls").count(),
        all.iter().filter(|c| c["transport"] == "tcp").count(),
        answered.len(),
        stats["problems"],
    );

    // Exactly once, each as the simulator answered it.
    let mut reported: Vec<String> = all.iter().map(essence_of_call).collect();
    let mut oracle: Vec<String> = answered.iter().map(|r| essence_of_sim(r, &fp_of)).collect();
    reported.sort();
    oracle.sort();
    assert_eq!(reported, oracle, "calls vs the simulator's log\n{log}");
    for call in &all {
        assert_eq!(call["http_version"], "2", "{call}");
        assert_eq!(call["complete"], true, "{call}");
        assert_eq!(call["method"], "POST", "{call}");
        assert!(call["ttfb_s"].as_f64().is_some(), "{call}");
    }
    let tcp = all.iter().filter(|c| c["transport"] == "tcp").count();
    assert_eq!(tcp, h2c_calls, "h2c calls (TC probe)");
    assert_eq!(
        all.len() - tcp,
        answered.len() - h2c_calls,
        "HTTPS calls (uprobes)"
    );
    // Offline, `analyze` of the h2c packets reports the same calls as the live TC probe.
    let offline = analyze_full(&pcap, &key, None).unwrap();
    let mut offline: Vec<String> = jsonl(&offline.calls_text)
        .iter()
        .inspect(|c| assert_eq!(c["http_version"], "2", "{c}"))
        .map(essence_of_call)
        .collect();
    let mut live_h2c: Vec<String> = all
        .iter()
        .filter(|c| c["transport"] == "tcp")
        .map(essence_of_call)
        .collect();
    offline.sort();
    live_h2c.sort();
    assert_eq!(
        offline, live_h2c,
        "analyze of the h2c capture vs the live calls"
    );
    // Large gzip exports went through: decoded sizes well above their wire sizes.
    assert!(
        all.iter()
            .any(|c| c["response_bytes"].as_u64().unwrap_or(0) > 256 * 1024
                && c["response_wire_bytes"].as_u64() < c["response_bytes"].as_u64()),
        "no large gzip export reported"
    );
    // Nothing that cannot be seen.
    let problems = stats["problems"].as_object().cloned().unwrap_or_default();
    assert!(
        problems.keys().all(|k| !k.starts_with("http.h2_")),
        "HTTP/2 problems: {problems:?}"
    );
    let h2_connections = stats["pipeline"]["http"]["h2_connections"]
        .as_u64()
        .unwrap_or(0);
    // curl: 2 connections per server (keep-alive, parallel) and 2 h2c; httpx: at least one
    // per server and one h2c.
    assert!(h2_connections >= 9, "h2_connections = {h2_connections}");
    drop(apache);
    drop(nginx);
}
