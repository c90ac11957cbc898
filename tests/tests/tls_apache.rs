//! HTTPS capture at Apache 2 (Debian's, prefork + mod_ssl + mod_php, under a unique process
//! name) serving a REDCap-like PHP script over HTTPS and plain HTTP in a server namespace, with
//! `redcap-monitor run` watching the veth (TC) and Apache's OpenSSL (uprobes) at once. curl
//! makes the same calls over both; every call must be reported exactly once, the HTTPS ones with
//! the same fields as over HTTP, and children started by a graceful restart must be covered.

use std::path::Path;

use monitor_tests::clients::curl_in;
use monitor_tests::daemon::{LiveDaemon, tls_capture_config};
use monitor_tests::netns::NamespacePair;
use monitor_tests::web::{Apache, TestPki};
use serde_json::Value;

const TOKEN: &str = "0F1E2D3C4B5A69788796A5B4C3D2E1F0";

/// Fields that may differ between the same call over HTTPS and over HTTP.
const TRANSPORT_FIELDS: [&str; 6] = [
    "ts_start",
    "ts_end",
    "ttfb_s",
    "client",
    "server",
    "transport",
];

/// The same curl work over `base`; returns how many API calls it made.
fn curl_calls(client: Option<&str>, base: &str, ca: &Path, dir: &Path) -> usize {
    let api = format!("{base}/redcap/api/index.php");
    let tok = format!("token={TOKEN}");
    let ca = ca.to_string_lossy();
    let upload = dir.join("upload.bin");
    std::fs::write(
        &upload,
        (0..100_000u32)
            .map(|i| (i * 7 % 251) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let file = format!("file=@{}", upload.display());
    let sink = "/dev/null";
    // Keep-alive: a small call, a small export, a large gzip-compressed export, a page.
    #[rustfmt::skip]
    curl_in(client, &[
        "-sS", "--cacert", &ca, "-o", sink, &api, "-d", &tok, "-d", "content=version",
        "--next", "--cacert", &ca, "-o", sink, "--compressed", &api, "-d", &tok,
        "-d", "content=record", "-d", "format=json", "-d", "records[0]=1", "-d", "rows=3",
        "--next", "--cacert", &ca, "-o", sink, "--compressed", &api, "-d", &tok,
        "-d", "content=record", "-d", "format=json", "-d", "rows=20000",
        "--next", "--cacert", &ca, "-o", sink, &format!("{base}/redcap/"),
    ]).unwrap();
    // A multipart file import, token last, on its own connection.
    #[rustfmt::skip]
    curl_in(client, &[
        "-sS", "--cacert", &ca, "-o", sink, &api, "-F", "content=file", "-F", "action=import",
        "-F", "record=1", "-F", "field=upload", "-F", &file, "-F", &tok,
    ]).unwrap();
    // A refused token, and a new connection per call.
    #[rustfmt::skip]
    curl_in(client, &["-sS", "--cacert", &ca, "-o", sink, &api, "-d", "token=nope",
                      "-d", "content=record"]).unwrap();
    #[rustfmt::skip]
    curl_in(client, &["-sS", "--cacert", &ca, "-o", sink, &api, "-d", &tok,
                      "-d", "content=metadata", "-d", "format=json"]).unwrap();
    6
}

#[test]
fn https_calls_seen_at_apache_mod_ssl_are_reported_once_with_the_fields_of_plain_http() {
    if !monitor_tests::require_root("tls_apache") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pair = NamespacePair::create(74).unwrap();
    let pki = TestPki::create(dir.path(), &pair.server_ip).unwrap();
    let apache = Apache::start(&pair.server_ns, dir.path(), &pki).unwrap();

    let key = dir.path().join("site.key");
    let calls = dir.path().join("calls.jsonl");
    let stats = dir.path().join("stats.json");
    let config = tls_capture_config(dir.path(), &pair.server_if, apache.name());
    let client = Some(pair.client_ns.as_str());
    let mut daemon = LiveDaemon::start(Some(&pair.server_ns), &config, &key).unwrap();

    let https = format!("https://{}", pair.server_ip);
    let http = format!("http://{}", pair.server_ip);
    let n_https = curl_calls(client, &https, &pki.ca_cert, dir.path());
    let n_http = curl_calls(client, &http, &pki.ca_cert, dir.path());

    // Children started after the uprobes were attached are covered.
    let before = apache.children().unwrap();
    let after = apache.graceful().unwrap();
    assert!(after.iter().all(|p| !before.contains(p)));
    let ca = pki.ca_cert.to_string_lossy();
    #[rustfmt::skip]
    curl_in(client, &["-sS", "--cacert", &ca, "-o", "/dev/null",
                      &format!("{https}/redcap/api/index.php"), "-d", &format!("token={TOKEN}"),
                      "-d", "content=project"]).unwrap();

    std::thread::sleep(std::time::Duration::from_millis(500));
    let (status, log) = daemon.stop().unwrap();
    assert!(
        status.success(),
        "redcap-monitor run exited {status}:\n{log}"
    );
    let all: Vec<Value> = std::fs::read_to_string(&calls)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let by_start = |a: &&Value, b: &&Value| {
        a["ts_start"]
            .as_f64()
            .unwrap()
            .total_cmp(&b["ts_start"].as_f64().unwrap())
    };
    let mut tls: Vec<&Value> = all.iter().filter(|c| c["transport"] == "tls").collect();
    let mut tcp: Vec<&Value> = all.iter().filter(|c| c["transport"] == "tcp").collect();
    tls.sort_by(by_start);
    tcp.sort_by(by_start);
    eprintln!(
        "tls_apache: {} HTTPS and {} HTTP calls reported",
        tls.len(),
        tcp.len()
    );
    assert_eq!(tcp.len(), n_http, "plain HTTP calls:\n{log}");
    assert_eq!(tls.len(), n_https + 1, "HTTPS calls:\n{log}");
    for (i, (secure, plain)) in tls.iter().zip(&tcp).enumerate() {
        let (mut secure, mut plain) = ((*secure).clone(), (*plain).clone());
        for field in TRANSPORT_FIELDS {
            secure.as_object_mut().unwrap().remove(field);
            plain.as_object_mut().unwrap().remove(field);
        }
        assert_eq!(secure, plain, "call {i}: HTTPS record differs from HTTP");
    }
    for call in &tls {
        // mod_ssl uses its own BIOs (no SSL_set_fd): the socket, and so the address, is not
        // known; an address, if any, can only be the client's.
        let client = call["client"].as_str().unwrap();
        assert!(
            client.is_empty() || client.starts_with(&format!("{}:", pair.client_ip)),
            "{call}"
        );
        assert_eq!(call["complete"], true, "{call}");
        assert!(call["ttfb_s"].as_f64().is_some_and(|t| t > 0.0), "{call}");
    }
    assert!(
        tls.iter()
            .any(|c| c["response_bytes"].as_u64().unwrap_or(0) > 1_000_000
                && c["response_wire_bytes"].as_u64() < c["response_bytes"].as_u64()),
        "no large gzip export over HTTPS"
    );
    assert!(
        tls.iter().any(|c| c["data_bytes"] == 100_000),
        "no multipart file import over HTTPS"
    );
    assert_eq!(tls.last().unwrap()["content"], "project");
    let stats: Value = serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    let kernel = &stats["kernel"];
    eprintln!("tls_apache: final kernel counters {kernel}");
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
