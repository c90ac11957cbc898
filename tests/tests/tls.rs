//! HTTPS capture end to end: nginx (Debian's, under a unique process name) serves the REDCap
//! simulator over HTTPS and plain HTTP in a server namespace; `redcap-monitor run` watches the
//! veth with the TC probe and nginx's OpenSSL with uprobes at the same time; PyCap (verifying
//! against the test CA) and curl make the same calls over both. Every call must be reported
//! exactly once, the HTTPS ones with the same fields as the same calls over HTTP.
//!
//! uprobes are system-wide and other tests run nginx concurrently: the daemon watches only this
//! test's nginx name, and nothing here depends on counters that foreign processes move.
//! This binary holds a single test (it sets CA variables in its own environment).

use std::path::Path;
use std::time::Duration;

use monitor_tests::clients::{PycapSet, curl_in, run_curl_set_in, run_pycap_in};
use monitor_tests::daemon::{LiveDaemon, jsonl, tls_capture_config};
use monitor_tests::netns::NamespacePair;
use monitor_tests::sim::{SimOptions, Simulator};
use monitor_tests::web::{Nginx, PythonHttps, TestPki};
use serde_json::Value;

const TOKEN: &str = "7C3A9E1B5D2F4A6C8E0B1D3F5A7C9E2B";
const OTHER: &str = "A1B2C3D4E5F60718293A4B5C6D7E8F90";

/// Fields that may differ between the same call over HTTPS and over HTTP: times, and the
/// addresses (which the uprobes do not know) and the transport.
const TRANSPORT_FIELDS: [&str; 6] = [
    "ts_start",
    "ts_end",
    "ttfb_s",
    "client",
    "server",
    "transport",
];

/// The number of API requests the simulator has answered, once it stops changing.
fn settled_api_count(sim: &Simulator) -> usize {
    sim.settled_api().unwrap().len()
}

/// The same client work over `base` (http:// or https://).
fn client_calls(client: Option<&str>, base: &str, dir: &Path) {
    run_pycap_in(
        client,
        &format!("{base}/redcap/api/"),
        TOKEN,
        PycapSet::Full,
    )
    .unwrap();
    // Large gzip-compressed exports (chunked, many TLS records and SSL_write calls).
    run_pycap_in(client, &format!("{base}/api/"), TOKEN, PycapSet::Heavy).unwrap();
    // Keep-alive with --next, Expect: 100-continue with a 80 KiB body, multipart, new
    // connections, non-API pages and a login form.
    run_curl_set_in(client, base, TOKEN, dir).unwrap();
    run_pycap_in(client, &format!("{base}/api/"), OTHER, PycapSet::Light).unwrap();
}

#[test]
fn https_calls_seen_at_nginx_openssl_are_reported_once_with_the_fields_of_plain_http() {
    if !monitor_tests::require_root("tls") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pair = NamespacePair::create(73).unwrap();
    let pki = TestPki::create(dir.path(), &pair.server_ip).unwrap();
    // SAFETY: this binary runs one test and sets these before it starts any thread; curl and
    // PyCap (requests) read them to trust the test CA.
    unsafe {
        std::env::set_var("CURL_CA_BUNDLE", &pki.ca_cert);
        std::env::set_var("REQUESTS_CA_BUNDLE", &pki.ca_cert);
    }
    let sim = Simulator::start(&SimOptions {
        tokens: vec![TOKEN.into(), OTHER.into()],
        project_sizes: vec![(TOKEN.into(), 1500), (OTHER.into(), 5)],
        log: Some(dir.path().join("sim-log.jsonl")),
        netns: Some(pair.server_ns.clone()),
        ..SimOptions::default()
    })
    .unwrap();
    let nginx = Nginx::start(&pair.server_ns, dir.path(), sim.port(), &pki, 2).unwrap();

    let key = dir.path().join("site.key");
    let calls = dir.path().join("calls.jsonl");
    let stats = dir.path().join("stats.json");
    let config = tls_capture_config(dir.path(), &pair.server_if, nginx.name());
    let ns = Some(pair.server_ns.as_str());
    let client = Some(pair.client_ns.as_str());
    let mut daemon = LiveDaemon::start(ns, &config, &key).unwrap();

    // 1. HTTPS, then the same over plain HTTP.
    let https = format!("https://{}", pair.server_ip);
    let http = format!("http://{}", pair.server_ip);
    client_calls(client, &https, dir.path());
    let n_https = settled_api_count(&sim);
    client_calls(client, &http, dir.path());
    let n_http = settled_api_count(&sim) - n_https;
    assert_eq!(n_https, n_http, "the simulator saw different call sets");

    // 2. Reload: new workers (started after the uprobes were attached) are covered.
    let old_workers = nginx.workers().unwrap();
    let new_workers = nginx.reload().unwrap();
    assert!(new_workers.iter().all(|p| !old_workers.contains(p)));
    let tok = format!("token={TOKEN}");
    #[rustfmt::skip]
    curl_in(client, &["-sS", "-o", "/dev/null", &format!("{https}/api/"), "-d", &tok,
                      "-d", "content=project", "-d", "format=json"]).unwrap();
    assert_eq!(settled_api_count(&sim), n_https + n_http + 1);

    // 3. A process that is not configured, with the same libssl: no call.
    let python = PythonHttps::start(&pair.server_ns, &pair.server_ip, &pki, None);
    #[rustfmt::skip]
    curl_in(client, &["-sS", "-o", "/dev/null", &format!("https://{}:8443/api/", pair.server_ip),
                      "-d", &tok, "-d", "content=version"]).unwrap();
    drop(python);

    // Give the daemon a moment to read the last events, then stop it.
    std::thread::sleep(Duration::from_millis(500));
    let (status, log) = daemon.stop().unwrap();
    assert!(
        status.success(),
        "redcap-monitor run exited {status}:\n{log}"
    );
    assert!(
        log.contains("TLS capture: uprobes attached") && log.contains(nginx.name()),
        "the log does not say which library and processes are covered:\n{log}"
    );
    let all = jsonl(&std::fs::read_to_string(&calls).unwrap());
    let mut tls: Vec<&Value> = all.iter().filter(|c| c["transport"] == "tls").collect();
    let mut tcp: Vec<&Value> = all.iter().filter(|c| c["transport"] == "tcp").collect();
    let by_start = |a: &&Value, b: &&Value| {
        a["ts_start"]
            .as_f64()
            .unwrap()
            .total_cmp(&b["ts_start"].as_f64().unwrap())
    };
    tls.sort_by(by_start);
    tcp.sort_by(by_start);

    eprintln!(
        "tls: {} HTTPS and {} HTTP calls reported; simulator answered {n_https} + {n_http} + 1",
        tls.len(),
        tcp.len()
    );
    // Exactly once: every call the simulator answered, nothing from python3, nothing twice.
    assert_eq!(tcp.len(), n_http, "plain HTTP calls:\n{log}");
    assert_eq!(tls.len(), n_https + 1, "HTTPS calls:\n{log}");
    assert_eq!(all.len(), n_https + n_http + 1);

    // The same fields as over HTTP, call for call.
    for (i, (secure, plain)) in tls.iter().zip(&tcp).enumerate() {
        let (mut secure, mut plain) = ((*secure).clone(), (*plain).clone());
        for field in TRANSPORT_FIELDS {
            secure.as_object_mut().unwrap().remove(field);
            plain.as_object_mut().unwrap().remove(field);
        }
        assert_eq!(secure, plain, "call {i}: HTTPS record differs from HTTP");
    }
    // The client address, where nginx's socket could be looked up while the connection was
    // still open (nginx hands it to SSL_set_fd): the client namespace's, never another.
    let client_prefix = format!("{}:", pair.client_ip);
    let with_address = tls
        .iter()
        .filter(|c| c["client"] != "")
        .inspect(|c| {
            let client = c["client"].as_str().unwrap();
            assert!(client.starts_with(&client_prefix), "wrong client: {c}");
        })
        .count();
    eprintln!(
        "tls: {with_address} of {} HTTPS calls carry the client address",
        tls.len()
    );
    assert!(with_address > 0, "no HTTPS call has its client address");
    for call in &tls {
        assert_eq!(call["server"], "");
        assert_eq!(call["complete"], true, "{call}");
        assert!(call["ttfb_s"].as_f64().is_some_and(|t| t > 0.0), "{call}");
        assert!(call["ts_end"].as_f64() >= call["ts_start"].as_f64());
    }
    // The big exports really went through many SSL_write calls.
    assert!(
        tls.iter()
            .any(|c| c["response_wire_bytes"].as_u64().unwrap_or(0) > 256 * 1024),
        "no large response over HTTPS"
    );
    let last = tls.last().unwrap();
    assert_eq!(
        last["content"], "project",
        "the call after the reload: {last}"
    );

    let stats: Value = serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    let kernel = &stats["kernel"];
    eprintln!("tls: final kernel counters {kernel}");
    for loss in [
        "ring_full",
        "truncated_bytes",
        "flow_insert_failed",
        "tls_args_lost",
        "tls_conns_evicted",
    ] {
        assert_eq!(kernel[loss], 0, "kernel.{loss}: {kernel}");
    }
}
