//! `redcap-monitor certify` on a hand-built capture of a QA testing window and on the call
//! records `analyze` writes from it (the daemon's record format, rotated as logrotate does): the
//! binary's exit status and the evidence it prints, in each output format (the HTML page opened
//! in headless Chromium), and no raw token anywhere.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use monitor_tests::browser::{pixels_of, print_pdf, rgb, screenshot};
use monitor_tests::daemon::{fingerprint, monitor_bin};
use monitor_tests::synth::http::{self, BodyEncoding};
use monitor_tests::synth::{Conversation, PcapOut};

const T0: f64 = 1_767_600_000.0;
/// 2026-01-05T08:00:00Z, the T0 above.
const T0_UTC: &str = "2026-01-05T08:00:00Z";
const COMPLIANT: &str = "0123456789ABCDEF0123456789ABCDEF";
const TOO_FAST: &str = "FEDCBA9876543210FEDCBA9876543210";
const HEAVY: &str = "AAAABBBBCCCCDDDDEEEEFFFF00001111";
/// A script whose request carries markup where REDCap expects a word.
const HOSTILE: &str = "99998888777766665555444433332222";
/// A compliant script whose one export is large.
const LARGE: &str = "1111222233334444555566667777AAAA";
const HOSTILE_CONTENT: &str = "<script>alert(document.title)</script>";

struct Window {
    dir: tempfile::TempDir,
    pcap: PathBuf,
    key: PathBuf,
}

/// A testing window: a compliant script (3 calls in a minute, then one more a minute later), a
/// script too fast (5 calls 10 s apart), and one exporting all records twice within 5 minutes.
fn testing_window() -> Window {
    testing_window_with(false)
}

/// The testing window, with `more` two more scripts: one making 4 calls within a minute whose
/// `content` is markup (over the rate, so the violation table names it), and a compliant one
/// whose single filtered export answers 700 kB (heavy by size, once: it passes).
fn testing_window_with(more: bool) -> Window {
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
    if more {
        let markup = http::post_form(
            "/redcap/api/",
            &[("token", HOSTILE), ("content", HOSTILE_CONTENT)],
        );
        for t in [2.0, 12.0, 22.0, 32.0] {
            call(t, &markup, &small);
        }
        let filtered = http::post_form(
            "/redcap/api/",
            &[
                ("token", LARGE),
                ("content", "record"),
                ("format", "json"),
                ("records[0]", "1"),
            ],
        );
        let large = format!(
            "[{{\"record_id\":\"1\",\"notes\":\"{}\"}}]",
            "x".repeat(700_000)
        );
        let large = http::response(
            200,
            "application/json",
            large.as_bytes(),
            BodyEncoding::Plain,
        )
        .bytes;
        call(150.0, &filtered, &large);
    }
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
    for token in [COMPLIANT, TOO_FAST, HEAVY, HOSTILE, LARGE] {
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

fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

/// The window's call records as the daemon writes them (`analyze --calls` writes the same
/// records as `run`), split as logrotate leaves them: the oldest compressed (`calls.jsonl.2.gz`),
/// the next plain (`delaycompress`: `calls.jsonl.1`), the newest in `calls.jsonl`; the live
/// file's last line cut short (a partial write).
fn rotated_records(w: &Window) -> PathBuf {
    let dir = w.dir.path().join("records");
    std::fs::create_dir(&dir).unwrap();
    let all = w.dir.path().join("all-calls.jsonl");
    run_ok(
        Command::new(monitor_bin().unwrap())
            .arg("analyze")
            .arg(&w.pcap)
            .arg("--key")
            .arg(&w.key)
            .arg("--calls")
            .arg(&all),
    );
    let text = std::fs::read_to_string(&all).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 11, "{text}");
    let part = |range: std::ops::Range<usize>| {
        lines[range]
            .iter()
            .map(|l| format!("{l}\n"))
            .collect::<String>()
    };
    let third = lines.len() / 3;
    std::fs::write(
        dir.join("calls.jsonl.2.gz"),
        gzip(part(0..third).as_bytes()),
    )
    .unwrap();
    std::fs::write(dir.join("calls.jsonl.1"), part(third..2 * third)).unwrap();
    let live = format!("{}{{\"ts_start\": 17676000\n", part(2 * third..lines.len()));
    std::fs::write(dir.join("calls.jsonl"), live).unwrap();
    // Other outputs beside them are not call records.
    std::fs::write(dir.join("violations.jsonl"), "{}\n").unwrap();
    dir
}

fn certify_records(w: &Window, records: &Path, args: &[&str]) -> Output {
    Command::new(monitor_bin().unwrap())
        .arg("certify")
        .arg("--records")
        .arg(records)
        .args(args)
        .current_dir(w.dir.path())
        .output()
        .unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_str(&stdout(out)).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            stdout(out),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn certify_from_rotated_call_records_gives_the_verdicts_of_the_capture() {
    let w = testing_window();
    let records = rotated_records(&w);
    let from_capture = certify(&w, &["--format", "json"]);
    let from_records = certify_records(&w, &records, &["--format", "json"]);
    assert_eq!(from_records.status.code(), Some(1));
    let (capture_doc, records_doc) = (json(&from_capture), json(&from_records));
    assert_eq!(
        capture_doc["certification"]["tokens"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert_eq!(
        capture_doc["certification"], records_doc["certification"],
        "the same traffic, judged from the capture and from its records"
    );
    // The malformed line is counted and said, not fatal.
    assert_eq!(records_doc["input_problems"]["malformed_record_lines"], 1);
    let warnings = records_doc["capture_warnings"].to_string();
    assert!(warnings.contains("calls.jsonl:"), "{warnings}");
    no_raw_token(&from_records);

    // The text report from the records names each failing script's evidence, by fingerprint.
    let out = certify_records(&w, &records.join("calls.jsonl"), &[]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("judged: call records "), "{text}");
    let fast = block(&text, &fingerprint(&w.key, TOO_FAST).unwrap());
    assert!(fast.starts_with("FAIL"), "{fast}");
    assert!(
        fast.contains(
            "2026-01-05T08:00:41Z  api_calls: 5 calls in 60 s (limit 3), content=version"
        ),
        "{fast}"
    );
    assert!(text.contains("malformed_record_lines=1"), "{text}");

    // One token in a window that starts after the heavy script's first export: the calls before
    // the window still count in the rule's 5 minutes, as they did live.
    let heavy = fingerprint(&w.key, HEAVY).unwrap();
    let from = format!("{}", T0 + 200.0);
    let window = [
        "--token-fingerprint",
        &heavy,
        "--from",
        &from,
        "--to",
        "1767700000",
        "--format",
        "json",
    ];
    let a = json(&certify(&w, &window));
    let b = json(&certify_records(&w, &records, &window));
    assert_eq!(a["certification"], b["certification"]);
    let t = &b["certification"]["tokens"][0];
    assert_eq!(
        (t["outcome"].as_str(), t["calls"].as_u64()),
        (Some("FAIL"), Some(1))
    );
    assert_eq!(t["violations"][0]["rule"], "heavy_calls");

    // The compliant script alone passes from its records too.
    let ok = fingerprint(&w.key, COMPLIANT).unwrap();
    let out = certify_records(&w, &records, &["--token", &ok]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
}

#[test]
fn certify_records_errors_say_what_to_give() {
    let w = testing_window();
    let out = certify_records(&w, w.dir.path(), &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no call records") && err.contains("output.calls"),
        "{err}"
    );
    let out = Command::new(monitor_bin().unwrap())
        .args(["certify", "--format", "json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(monitor_bin().unwrap())
        .arg("certify")
        .arg(&w.pcap)
        .arg("--records")
        .arg(w.dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a capture and records at once");
}

#[test]
fn certify_html_opens_in_chromium_without_console_messages_and_shows_its_charts() {
    let w = testing_window_with(true);
    let out = certify(&w, &["--format", "html"]);
    assert_eq!(out.status.code(), Some(1));
    no_raw_token(&out);
    let html = stdout(&out);
    assert!(html.starts_with("<!DOCTYPE html>"), "{html}");
    // The hostile `content` stays text.
    assert!(!html.to_lowercase().contains("<script"), "{html}");
    assert!(
        html.contains("content=&lt;script&gt;alert(document.title)&lt;/script&gt;"),
        "{html}"
    );
    for (token, outcome) in [
        (COMPLIANT, "PASS"),
        (TOO_FAST, "FAIL"),
        (HEAVY, "FAIL"),
        (HOSTILE, "FAIL"),
        (LARGE, "PASS"),
    ] {
        let fp = fingerprint(&w.key, token).unwrap();
        let heading = format!(
            "<span class=\"badge {}\">{outcome}</span> Token {fp} ",
            outcome.to_lowercase()
        );
        assert!(html.contains(&heading), "{heading} not in {html}");
    }
    // Each kind of violation with its evidence: the rate (5 calls in 60 s) and heavy calls (2
    // unfiltered exports in 300 s); the compliant scripts' peaks at their limits.
    for evidence in [
        "<td>2026-01-05T08:00:41Z</td><td>api_calls</td><td class=\"num\">5 in 60 s</td>\
         <td class=\"num\">3</td><td>content=version</td>",
        "<td>2026-01-05T08:05:00Z</td><td>heavy_calls</td><td class=\"num\">2 in 300 s</td>\
         <td class=\"num\">1</td><td>content=record</td><td>unfiltered_record_export</td>",
        "api_calls (all calls): peak 5 in any 60 s (limit 3) at 2026-01-05T08:00:41Z — over \
         the limit",
        "heavy_calls (heavy calls): peak 2 in any 300 s (limit 1) at 2026-01-05T08:05:00Z — \
         over the limit",
        "api_calls (all calls): peak 3 in any 60 s (limit 3) at 2026-01-05T08:00:40Z;",
        "heavy_calls (heavy calls): peak 1 in any 300 s (limit 1) at 2026-01-05T08:02:30Z",
    ] {
        assert!(html.contains(evidence), "{evidence} not in {html}");
    }
    assert!(html.contains(">api_calls: limit 3 in any 60 s</text>"));
    assert!(html.contains(">heavy above 500 kB</text>"));
    let page = w.dir.path().join("certification.html");
    std::fs::write(&page, &html).unwrap();

    let (log, png) = screenshot(&page);
    if let Some(keep) = std::env::var_os("CERTIFY_KEEP_HTML") {
        std::fs::copy(&page, Path::new(&keep).join("certification.html")).unwrap();
        std::fs::copy(&png, Path::new(&keep).join("certification.png")).unwrap();
    }
    let console: Vec<&str> = log.lines().filter(|l| l.contains("CONSOLE")).collect();
    assert!(console.is_empty(), "console messages: {console:#?}");
    // The charts' own colours (redcap_monitor::commands::html): the series, the limit lines,
    // the bars.
    let series = pixels_of(&png, rgb("#1565c0"));
    let limit = pixels_of(&png, rgb("#d50000"));
    let bars = pixels_of(&png, rgb("#00897b"));
    // Measured: about 2500, 6200 and 8700 (ten time series, the 700 kB bar most of the bars').
    eprintln!("chart pixels: series {series}, limit lines {limit}, bars {bars}");
    assert!(series > 1000, "series pixels: {series}");
    assert!(limit > 2500, "limit-line pixels: {limit}");
    assert!(bars > 4000, "bar pixels: {bars}");

    // It prints: Chromium's PDF of it has a page per token or so (A4/Letter, print stylesheet).
    let pdf = print_pdf(&page);
    assert!(pdf.starts_with(b"%PDF-"));
    let pages = pdf
        .windows(b"/Type /Page".len() + 1)
        .filter(|w| w.starts_with(b"/Type /Page") && !w.ends_with(b"s"))
        .count();
    assert!((3..=20).contains(&pages), "{pages} pages");

    // The check sees charts, not the page: the same page without its SVG has none of them.
    let mut bare = html.clone();
    while let (Some(start), Some(end)) = (bare.find("<svg"), bare.find("</svg>")) {
        bare.replace_range(start..end + "</svg>".len(), "");
    }
    let bare_page = w.dir.path().join("bare.html");
    std::fs::write(&bare_page, &bare).unwrap();
    let (_, bare_png) = screenshot(&bare_page);
    assert_eq!(
        (
            pixels_of(&bare_png, rgb("#1565c0")),
            pixels_of(&bare_png, rgb("#d50000")),
            pixels_of(&bare_png, rgb("#00897b"))
        ),
        (0, 0, 0)
    );
}
