//! `redcap-monitor report lifecycle|usage` on real history: `analyze --store` replays a
//! hand-built capture whose calls span seven months into a store, then the reports read it in
//! each format, with and without the token directory (its CSV source) and with an attestation
//! CSV. Asserts the rows, the CSV and JSON shapes, and that no raw token appears in anything
//! redcap-monitor wrote; the HTML pages are opened in headless Chromium.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use monitor_tests::browser::{pixels_of, rgb, screenshot};
use monitor_tests::daemon::{fingerprints, monitor_bin};
use monitor_tests::synth::http::{self, BodyEncoding};
use monitor_tests::synth::{Conversation, PcapOut};
use serde_json::Value;

/// 2026-12-06T12:00:00Z: the reports judge "as of" this time (`--at`).
const NOW: f64 = 1_796_558_400.0;
const NOW_TEXT: &str = "2026-12-06T12:00:00Z";
const DAY: f64 = 86_400.0;
/// Last used 181 and 179 days before NOW.
const IDLE_181: &str = "181181181181181181181181181181AA";
const IDLE_179: &str = "179179179179179179179179179179BB";

/// Twelve busy tokens: token `i` makes `i + 1` calls in the last 30 days.
fn busy(i: usize) -> String {
    format!("{:02}{}", i, "C".repeat(30))
}

struct History {
    dir: tempfile::TempDir,
    key: PathBuf,
    store: PathBuf,
    analyze_output: Output,
}

impl History {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn all_tokens() -> Vec<String> {
    let mut tokens: Vec<String> = (0..12).map(busy).collect();
    tokens.push(IDLE_181.into());
    tokens.push(IDLE_179.into());
    tokens
}

/// Seven months of calls in one capture, replayed into a fresh store.
fn history() -> History {
    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("months.pcap");
    let mut out = PcapOut::create(&pcap).unwrap();
    let mut calls: Vec<(f64, String)> = vec![
        // A minute earlier, so that whole days idle come to 181 (the call's first byte is a
        // little after its handshake).
        (NOW - 181.0 * DAY - 60.0, IDLE_181.into()),
        (NOW - 179.0 * DAY, IDLE_179.into()),
    ];
    for i in 0..12 {
        for j in 0..=i {
            // Spread over the last 25 days, a few minutes apart: no rule is broken.
            let t = NOW - ((j * 2 + i) % 25 + 1) as f64 * DAY + (i * 300 + j * 7) as f64;
            calls.push((t, busy(i)));
        }
    }
    calls.sort_by(|a, b| a.0.total_cmp(&b.0));
    let version = http::response(
        200,
        "text/html; charset=UTF-8",
        b"15.7.6",
        BodyEncoding::Plain,
    )
    .bytes;
    for (n, (t, token)) in calls.iter().enumerate() {
        let client: SocketAddr = format!("10.0.0.1:{}", 20_000 + n).parse().unwrap();
        let mut conv = Conversation::new(client, "10.0.0.10:80".parse().unwrap());
        let request = http::post_form("/redcap/api/", &[("token", token), ("content", "version")]);
        out.write_exchange(&mut conv, *t, &request, &version)
            .unwrap();
    }
    out.finish().unwrap();
    let key = dir.path().join("site.key");
    let store = dir.path().join("state.redb");
    let analyze_output = Command::new(monitor_bin().unwrap())
        .arg("analyze")
        .arg(&pcap)
        .arg("--key")
        .arg(&key)
        .arg("--store")
        .arg(&store)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        analyze_output.status.success(),
        "analyze failed: {}",
        String::from_utf8_lossy(&analyze_output.stderr)
    );
    History {
        dir,
        key,
        store,
        analyze_output,
    }
}

fn report(h: &History, kind: &str, format: &str, extra: &[&str]) -> Output {
    let out = Command::new(monitor_bin().unwrap())
        .args(["report", kind, "--format", format, "--at", NOW_TEXT])
        .arg("--store")
        .arg(&h.store)
        .arg("--key")
        .arg(&h.key)
        .args(extra)
        .current_dir(h.dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "report {kind} --format {format} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    no_raw_token(&format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ));
    out
}

fn no_raw_token(text: &str) {
    let upper = text.to_uppercase();
    for token in all_tokens() {
        assert!(!upper.contains(&token), "raw token written:\n{text}");
    }
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap()
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A configuration with the directory's CSV source and the attestation CSV: alice's token
/// (project 12) was attested 364 days ago (due tomorrow), bob's (project 13) 366 days ago
/// (overdue), busy token 5 by fingerprint 10 days ago (not due). REDCap's log says the token
/// idle 179 days by the daemon's count was last used 200 days ago, and the one idle 181 days
/// 10 days ago (the daemon did not see that use).
fn connected_config(h: &History, fps: &[String]) -> PathBuf {
    let (idle181, idle179) = (&fps[12], &fps[13]);
    let directory = h.path("directory.csv");
    std::fs::write(
        &directory,
        format!(
            "token_fp,username,first_name,last_name,project_id,project_title,last_api_use\n\
             {},alice,Alice,Ames,12,Heart study,\n\
             {},bob,Bob,Berg,13,\"Lung, cohort\",\n\
             {idle181},carol,Carol,Cole,14,Old study,2026-11-26 12:00:00\n\
             {idle179},dave,Dave,Dunn,15,Older study,2026-05-20 12:00:00\n",
            fps[11], fps[10],
        ),
    )
    .unwrap();
    let attestations = h.path("attestations.csv");
    std::fs::write(
        &attestations,
        format!(
            "username,project_id,token_fp,attested_on,note\n\
             alice,12,,2025-12-07,signed\n\
             bob,13,,2025-12-05,\n\
             ,,{},2026-11-26,by fingerprint\n",
            fps[5]
        ),
    )
    .unwrap();
    let config = h.path("config.toml");
    std::fs::write(
        &config,
        format!(
            "[directory]\nsource = \"csv\"\ncsv_file = \"{}\"\n\n\
             [lifecycle]\nattestations = \"{}\"\n",
            directory.display(),
            attestations.display()
        ),
    )
    .unwrap();
    config
}

#[test]
fn reports_judge_months_of_history_in_every_format_without_a_raw_token() {
    let h = history();
    let fps = fingerprints(
        &h.key,
        &all_tokens().iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .unwrap();
    let (idle181, idle179) = (&fps[12], &fps[13]);

    // Lifecycle by the daemon's own sightings: 181 days idle is stale, 179 is not.
    let lifecycle = json(&report(&h, "lifecycle", "json", &[]));
    assert_eq!(lifecycle["report"], "lifecycle");
    assert_eq!(lifecycle["directory_connected"], false);
    assert_eq!(lifecycle["tokens_known"], 14);
    let stale = lifecycle["stale"].as_array().unwrap();
    assert_eq!(stale.len(), 1, "{lifecycle:#}");
    assert_eq!(stale[0]["token_fp"], idle181.as_str());
    assert_eq!(stale[0]["idle_days"], 181);
    assert_eq!(stale[0]["last_use_source"], "daemon");
    assert!(stale[0]["token_masked"].as_str().unwrap().contains('…'));
    assert_eq!(lifecycle["attestations_checked"], false);

    // Usage over the default 30 days: the twelve busy tokens, 78 calls, the top 10 made 75.
    let usage = json(&report(&h, "usage", "json", &[]));
    assert_eq!(usage["report"], "usage");
    assert_eq!(usage["period"]["from"], "2026-11-07");
    assert_eq!(usage["period"]["to"], "2026-12-06");
    assert_eq!(usage["totals"]["calls"], 78);
    assert_eq!(usage["active_tokens"], 12);
    let share = usage["top10_share"].as_f64().unwrap();
    assert!((share - 75.0 / 78.0).abs() < 1e-9, "{share}");
    let tokens = usage["tokens"].as_array().unwrap();
    assert_eq!(tokens[0]["token_fp"], fps[11].as_str());
    assert_eq!(
        (tokens[0]["calls"].clone(), tokens[0]["rank"].clone()),
        (12.into(), 1.into())
    );
    assert!(usage["users"].as_array().unwrap().is_empty());
    // A longer period takes the idle tokens' calls in too.
    let longer = json(&report(&h, "usage", "json", &["--from", "2026-06-01"]));
    assert_eq!(longer["totals"]["calls"], 80);

    let csv = text(&report(&h, "usage", "csv", &[]));
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "scope,rank,name,token_fp,token_masked,username,project,tokens,calls,heavy_calls,\
         violations,request_bytes,response_bytes,server_time_s,share_of_calls,\
         share_of_server_time"
    );
    assert!(
        lines[1].starts_with("total,") && lines[1].contains(",12,78,"),
        "{csv}"
    );
    assert!(
        lines[2].starts_with("top10,") && lines[2].contains(",0.9615,"),
        "{csv}"
    );
    assert_eq!(lines.iter().filter(|l| l.starts_with("token,")).count(), 12);
    let table = text(&report(&h, "usage", "text", &[]));
    assert!(
        table.contains("The top 10 tokens made 96.2% of the calls."),
        "{table}"
    );

    // With the directory and the attestations.
    let config = connected_config(&h, &fps);
    let config_arg = ["--config", config.to_str().unwrap()];
    let lifecycle = json(&report(&h, "lifecycle", "json", &config_arg));
    assert_eq!(lifecycle["directory_connected"], true);
    let stale: Vec<(&str, &str)> = lifecycle["stale"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["token_fp"].as_str().unwrap(),
                s["last_use_source"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(stale, [(idle179.as_str(), "redcap")], "{lifecycle:#}");
    assert_eq!(lifecycle["stale"][0]["idle_days"], 200);
    assert_eq!(lifecycle["stale"][0]["owner"]["username"], "dave");
    let attestation = |fp: &str| {
        lifecycle["attestations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["token_fp"] == fp)
            .cloned()
    };
    let alice = attestation(&fps[11]).expect("alice's attestation listed");
    assert_eq!(
        (alice["status"].as_str(), alice["days_left"].as_i64()),
        (Some("due"), Some(1))
    );
    assert_eq!(alice["due"], "2026-12-07");
    let bob = attestation(&fps[10]).expect("bob's attestation listed");
    assert_eq!(
        (bob["status"].as_str(), bob["days_left"].as_i64()),
        (Some("overdue"), Some(-1))
    );
    assert!(
        attestation(&fps[5]).is_none(),
        "a fresh attestation is not listed"
    );
    assert_eq!(attestation(&fps[0]).unwrap()["status"], "missing");

    let csv = text(&report(&h, "lifecycle", "csv", &config_arg));
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "section,token_fp,token_masked,username,person,project_id,project,last_use,\
         last_use_source,idle_days,attestation_status,last_attested,due,days_left"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("stale,{idle179},"))
                && l.contains(",dave,Dave Dunn (dave),15,#15 Older study,")
                && l.contains(",redcap,200,")),
        "{csv}"
    );
    // A project title with a comma stays one cell.
    assert!(csv.contains("\"#13 Lung, cohort\""), "{csv}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("attestation,{},", fps[10]))
                && l.ends_with(",overdue,2025-12-05,2026-12-05,-1")),
        "{csv}"
    );

    let usage = json(&report(&h, "usage", "json", &config_arg));
    let users: Vec<(&str, u64)> = usage["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| (u["name"].as_str().unwrap(), u["calls"].as_u64().unwrap()))
        .collect();
    assert_eq!(users, [("alice", 12), ("bob", 11)]);
    let table = text(&report(&h, "lifecycle", "text", &config_arg));
    assert!(
        table.contains("Dave Dunn (dave)") && table.contains("overdue"),
        "{table}"
    );

    // Nothing redcap-monitor wrote holds a raw token: its output, the store, the key's dir.
    no_raw_token(&format!(
        "{}{}",
        String::from_utf8_lossy(&h.analyze_output.stdout),
        String::from_utf8_lossy(&h.analyze_output.stderr)
    ));
    let store_bytes = std::fs::read(&h.store).unwrap();
    for token in all_tokens() {
        for form in [token.clone(), token.to_lowercase()] {
            assert!(
                !contains(&store_bytes, form.as_bytes()),
                "raw token in the store file"
            );
        }
    }
    assert!(Path::new(&h.store).exists());
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn run(h: &History, args: &[&str]) -> Output {
    let out = Command::new(monitor_bin().unwrap())
        .args(args)
        .current_dir(h.dir.path())
        .output()
        .unwrap();
    no_raw_token(&format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ));
    out
}

#[test]
fn revoke_is_a_dry_run_until_executed_then_runs_the_token_stale_hook_and_audits_it() {
    let h = history();
    let fps = fingerprints(&h.key, &[IDLE_181]).unwrap();
    let idle181 = &fps[0];
    let store = h.store.to_str().unwrap().to_owned();
    let key = h.key.to_str().unwrap().to_owned();
    let lifecycle = |config: &Path, extra: &[&str]| {
        let mut args = vec![
            "report",
            "lifecycle",
            "--at",
            NOW_TEXT,
            "--store",
            &store,
            "--key",
            &key,
            "--config",
            config.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        run(&h, &args)
    };

    // Without a hook there is nothing to revoke with, and the message says what to add.
    let bare = h.path("bare.toml");
    std::fs::write(&bare, "").unwrap();
    let out = lifecycle(&bare, &["--revoke"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("[[hooks.token_stale]]"),
        "{out:?}"
    );
    // --execute alone is refused.
    assert_eq!(lifecycle(&bare, &["--execute"]).status.code(), Some(2));

    let events = h.path("events.jsonl");
    let config = h.path("revoke.toml");
    std::fs::write(
        &config,
        format!(
            "[[hooks.token_stale]]\nname = \"revoke-in-redcap\"\nkind = \"exec\"\n\
             program = \"/bin/sh\"\nargs = [\"-c\", \"cat >> {}; echo >> {}\"]\n",
            events.display(),
            events.display()
        ),
    )
    .unwrap();
    let dry = lifecycle(&config, &["--revoke"]);
    assert!(dry.status.success(), "{dry:?}");
    let text = String::from_utf8_lossy(&dry.stdout);
    assert!(text.starts_with("Dry run"), "{text}");
    assert!(
        text.contains(&format!("would run `revoke-in-redcap` for {idle181}")),
        "{text}"
    );
    assert_eq!(text.matches("would run").count(), 1, "{text}");
    assert!(!events.exists(), "a dry run runs nothing");
    let audit = |h: &History| {
        let out = run(h, &["audit", "--store", &store, "--json"]);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|r| r["kind"] == "hook_result")
            .collect::<Vec<_>>()
    };
    assert!(audit(&h).is_empty());

    let done = lifecycle(&config, &["--revoke", "--execute", "--format", "json"]);
    assert!(done.status.success(), "{done:?}");
    let run_doc: Value = serde_json::from_slice(&done.stdout).unwrap();
    assert_eq!(run_doc["executed"], true);
    assert_eq!(run_doc["audited_in"], "store");
    let runs = run_doc["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1, "{run_doc:#}");
    assert_eq!(runs[0]["token_fp"], idle181.as_str());
    assert_eq!(runs[0]["outcome"]["result"], "exited");
    assert_eq!(runs[0]["outcome"]["success"], true);
    // The hook got the event on stdin, by fingerprint.
    let written = std::fs::read_to_string(&events).unwrap();
    no_raw_token(&written);
    let event: Value = serde_json::from_str(written.lines().next().unwrap()).unwrap();
    assert_eq!(event["action"], "token_stale");
    assert_eq!(event["token_fp"], idle181.as_str());
    assert!(
        event["reason"]
            .as_str()
            .unwrap()
            .contains("unused for 181 days"),
        "{event}"
    );
    assert_eq!(event["evidence"]["last_use_source"], "daemon");
    // And its result is in the audit log.
    let records = audit(&h);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["token_fp"], idle181.as_str());
    assert_eq!(records[0]["details"]["action"], "token_stale");
    assert_eq!(records[0]["details"]["hook"], "revoke-in-redcap");
}

#[test]
fn html_reports_open_in_chromium_with_their_charts_and_without_a_raw_token() {
    let h = history();
    let fps = fingerprints(
        &h.key,
        &all_tokens().iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .unwrap();
    let config = connected_config(&h, &fps);
    let config_arg = ["--config", config.to_str().unwrap()];

    let usage = text(&report(&h, "usage", "html", &config_arg));
    assert!(usage.starts_with("<!DOCTYPE html>"), "{usage}");
    for expected in [
        "2026-11-07 to 2026-12-06",
        "96.15%",
        fps[11].as_str(),
        "<h2>By user</h2>",
        "alice",
        "#13 Lung, cohort",
    ] {
        assert!(usage.contains(expected), "{expected} not in {usage}");
    }
    let lifecycle = text(&report(&h, "lifecycle", "html", &config_arg));
    for expected in [
        fps[13].as_str(),
        "Dave Dunn (dave)",
        ">overdue</span>",
        ">due</span>",
        ">missing</span>",
        ">180 days</text>",
    ] {
        assert!(
            lifecycle.contains(expected),
            "{expected} not in {lifecycle}"
        );
    }

    for (name, html, bars_at_least, limit_at_least) in [
        ("usage", &usage, 20_000, 0),
        ("lifecycle", &lifecycle, 4_000, 30),
    ] {
        let page = h.dir.path().join(format!("{name}.html"));
        std::fs::write(&page, html).unwrap();
        let (log, png) = screenshot(&page);
        if let Some(keep) = std::env::var_os("REPORT_KEEP_HTML") {
            std::fs::copy(&png, Path::new(&keep).join(format!("{name}.png"))).unwrap();
        }
        let console: Vec<&str> = log.lines().filter(|l| l.contains("CONSOLE")).collect();
        assert!(console.is_empty(), "{name}: console messages: {console:#?}");
        // The bar chart's and the limit line's colours (redcap_monitor::commands::html);
        // measured 49,312 and 0 (usage: twelve bars, no limit), 9,840 and 61 (lifecycle: one
        // stale token's bar and its 180-day line).
        let bars = pixels_of(&png, rgb("#00897b"));
        let limit = pixels_of(&png, rgb("#d50000"));
        eprintln!("{name}: bar pixels {bars}, limit-line pixels {limit}");
        assert!(bars >= bars_at_least, "{name}: bar pixels {bars}");
        assert!(limit >= limit_at_least, "{name}: limit-line pixels {limit}");
    }
}
