//! `redcap-monitor certify` on a hand-built capture of a QA testing window: the binary's exit
//! status and the evidence it prints, in each output format, and no raw token anywhere.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use monitor_tests::daemon::{fingerprint, monitor_bin};
use monitor_tests::synth::http::{self, BodyEncoding};
use monitor_tests::synth::{Conversation, PcapOut};

const T0: f64 = 1_767_600_000.0;
/// 2026-01-05T08:00:00Z, the T0 above.
const T0_UTC: &str = "2026-01-05T08:00:00Z";
const COMPLIANT: &str = "0123456789ABCDEF0123456789ABCDEF";
const TOO_FAST: &str = "FEDCBA9876543210FEDCBA9876543210";
const HEAVY: &str = "AAAABBBBCCCCDDDDEEEEFFFF00001111";

struct Window {
    dir: tempfile::TempDir,
    pcap: PathBuf,
    key: PathBuf,
}

/// A testing window: a compliant script (3 calls in a minute, then one more a minute later), a
/// script too fast (5 calls 10 s apart), and one exporting all records twice within 5 minutes.
fn testing_window() -> Window {
    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("qa.pcap");
    let mut out = PcapOut::create(&pcap).unwrap();
    let mut port = 40_000;
    let mut call = |t: f64, request: &[u8], response: &[u8]| {
        port += 1;
        let client: SocketAddr = format!("10.0.0.1:{port}").parse().unwrap();
        let mut conv = Conversation::new(client, "10.0.0.10:80".parse().unwrap());
        out.write_exchange(&mut conv, T0 + t, request, response)
            .unwrap();
    };
    let version =
        |token: &str| http::post_form("/redcap/api/", &[("token", token), ("content", "version")]);
    let small = http::response(
        200,
        "text/html; charset=UTF-8",
        b"15.7.6",
        BodyEncoding::Plain,
    )
    .bytes;
    for t in [0.0, 20.0, 40.0, 61.0] {
        call(t, &version(COMPLIANT), &small);
    }
    for t in [1.0, 11.0, 21.0, 31.0, 41.0] {
        call(t, &version(TOO_FAST), &small);
    }
    let export = http::post_form(
        "/redcap/api/",
        &[
            ("token", HEAVY),
            ("content", "record"),
            ("format", "json"),
            ("type", "flat"),
        ],
    );
    let records = format!(
        "[{}]",
        (1..=200)
            .map(|i| format!(r#"{{"record_id":"{i}","age":"{}"}}"#, 20 + i % 50))
            .collect::<Vec<_>>()
            .join(",")
    );
    let big = http::response(
        200,
        "application/json",
        records.as_bytes(),
        BodyEncoding::Plain,
    )
    .bytes;
    call(100.0, &export, &big);
    call(300.0, &export, &big);
    out.finish().unwrap();
    let key = dir.path().join("site.key");
    Window { dir, pcap, key }
}

fn certify(w: &Window, args: &[&str]) -> Output {
    Command::new(monitor_bin().unwrap())
        .arg("certify")
        .arg(&w.pcap)
        .arg("--key")
        .arg(&w.key)
        .args(args)
        .current_dir(w.dir.path())
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn no_raw_token(out: &Output) {
    let all = format!("{}{}", stdout(out), String::from_utf8_lossy(&out.stderr));
    for token in [COMPLIANT, TOO_FAST, HEAVY] {
        assert!(
            !all.to_uppercase().contains(token),
            "raw token printed:\n{all}"
        );
    }
}

/// The block of the text report about one token: from its line to the next blank line.
fn block<'a>(text: &'a str, fp: &str) -> &'a str {
    let start = text
        .find(&format!("  {fp}  "))
        .unwrap_or_else(|| panic!("{fp} not in:\n{text}"));
    let start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let end = text[start..].find("\n\n").map_or(text.len(), |i| start + i);
    &text[start..end]
}

#[test]
fn certify_fails_the_window_and_names_the_evidence_of_each_failing_script() {
    let w = testing_window();
    let out = certify(&w, &[]);
    let text = stdout(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with("QA-window certification: FAIL"), "{text}");
    no_raw_token(&out);

    let ok = block(&text, &fingerprint(&w.key, COMPLIANT).unwrap());
    assert!(ok.starts_with("PASS"), "{ok}");
    assert!(ok.contains("4 call(s), 0 heavy"), "{ok}");
    assert!(
        ok.contains("api_calls (all calls): peak 3 in any 60 s (limit 3)"),
        "{ok}"
    );
    assert!(!ok.contains("violations"), "{ok}");
    assert!(ok.contains("server time caused"), "{ok}");

    let fast = block(&text, &fingerprint(&w.key, TOO_FAST).unwrap());
    assert!(fast.starts_with("FAIL"), "{fast}");
    assert!(
        fast.contains(
            "api_calls (all calls): peak 5 in any 60 s (limit 3) at 2026-01-05T08:00:41Z"
        ),
        "{fast}"
    );
    assert!(fast.contains("violations (2):"), "{fast}");
    assert!(
        fast.contains(
            "2026-01-05T08:00:31Z  api_calls: 4 calls in 60 s (limit 3), content=version"
        ),
        "{fast}"
    );
    assert!(
        fast.contains(
            "2026-01-05T08:00:41Z  api_calls: 5 calls in 60 s (limit 3), content=version"
        ),
        "{fast}"
    );

    let heavy = block(&text, &fingerprint(&w.key, HEAVY).unwrap());
    assert!(heavy.starts_with("FAIL"), "{heavy}");
    assert!(heavy.contains("2 call(s), 2 heavy"), "{heavy}");
    assert!(
        heavy.contains(
            "heavy_calls (heavy calls): peak 2 in any 300 s (limit 1) at 2026-01-05T08:05:00Z"
        ),
        "{heavy}"
    );
    assert!(
        heavy.contains(
            "2026-01-05T08:05:00Z  heavy_calls: 2 calls in 300 s (limit 1), content=record"
        ),
        "{heavy}"
    );
    assert!(heavy.contains("largest response: "), "{heavy}");
    assert!(
        heavy.contains("(content=record) at 2026-01-05T08:01:40Z"),
        "{heavy}"
    );
}

#[test]
fn certify_passes_a_compliant_token_and_writes_markdown_and_json() {
    let w = testing_window();
    let fp = fingerprint(&w.key, COMPLIANT).unwrap();

    let out = certify(&w, &["--token", &fp, "--format", "markdown"]);
    let md = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{md}");
    assert!(
        md.starts_with("# QA-window certification: **PASS**"),
        "{md}"
    );
    assert!(md.contains(&format!("| **PASS** | `{fp}` ")), "{md}");
    assert!(md.contains("api_calls: 3 in 60 s (3)"), "{md}");
    assert!(
        md.contains("7 call(s) outside the window or of other tokens, not judged"),
        "{md}"
    );
    no_raw_token(&out);

    // The compliant script's first minute, as JSON.
    let out = certify(
        &w,
        &[
            "--token",
            &fp,
            "--from",
            T0_UTC,
            "--to",
            &format!("{}", T0 + 50.0),
            "--format",
            "json",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let doc: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let cert = &doc["certification"];
    assert_eq!(cert["outcome"], "PASS");
    assert_eq!(cert["tokens"][0]["token_fp"], fp.as_str());
    assert_eq!(cert["tokens"][0]["calls"], 3);
    assert_eq!(cert["tokens"][0]["rules"][0]["peak"], 3);
    no_raw_token(&out);

    // A window starting after the heavy script's first export still fails its second: the
    // policy counts what the capture shows before the window, as the daemon would have.
    let heavy = fingerprint(&w.key, HEAVY).unwrap();
    let out = certify(
        &w,
        &[
            "--token",
            &heavy,
            "--from",
            &format!("{}", T0 + 200.0),
            "--format",
            "json",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let t = &doc["certification"]["tokens"][0];
    assert_eq!(t["calls"], 1);
    assert!(t["largest_response"]["bytes"].as_u64().unwrap() > 4000);
    let v = &t["violations"][0];
    assert_eq!(
        (v["rule"].as_str(), v["count"].as_u64()),
        (Some("heavy_calls"), Some(2))
    );
    no_raw_token(&out);
}

#[test]
fn certify_usage_and_io_errors_exit_2_saying_what_is_wrong() {
    let w = testing_window();
    let out = certify(&w, &["--from", "yesterday"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Unix seconds or UTC"));

    let missing = Window {
        pcap: Path::new("/nonexistent/qa.pcap").to_owned(),
        key: w.key.clone(),
        dir: tempfile::tempdir().unwrap(),
    };
    let out = certify(&missing, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/nonexistent/qa.pcap"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
