//! connections-bench: the whole pipeline (reassembly, HTTP, REDCap extraction, policy,
//! enforcement) holding 100,000 API connections in flight at once, for `cargo xtask bench
//! connections`. Prints one JSON object: the process's peak RSS (`VmHWM`) and the RSS with every
//! connection open, what the stages hold, and whether a real token's calls made meanwhile are
//! still judged right and released without waiting for the reorder window.
//!
//! Each connection (a distinct client address and port) completes its handshake, sends an API
//! request head and the start of its body, and is never answered: nine in ten have sent their
//! random token (the policy knows whose they are), one in ten only the head (slowloris: its token
//! is unknown). While all are open, a real token makes five calls in a minute on fresh
//! connections, each answered: the fourth and fifth break `api_calls` (3 a minute). At the end
//! every connection is closed and every call judged. `connections-bench [CONNECTIONS]
//! [MAX_CONNECTIONS]` (defaults 100,000 and 131,072: the reassembly table is raised to hold
//! them all; with the default 65,536 the oldest are evicted and counted).

use std::net::{IpAddr, Ipv4Addr};

use monitor_tests::bench::segment;
use redcap_monitor::commands::config::Config;
use redcap_monitor::shared::model::{Endpoint, Span, Timestamp};
use redcap_monitor::shared::token::SiteKey;
use redcap_monitor::stages::pipeline::Pipeline;
use redcap_monitor::stages::policy::Verdict;

const T0: u64 = 1_700_000_000_000_000_000;
const REAL_TOKEN: &str = "C0FFEE00C0FFEE00C0FFEE00C0FFEE00";
const SERVER: Endpoint = Endpoint {
    ip: IpAddr::V4(Ipv4Addr::new(10, 255, 0, 1)),
    port: 443,
};

fn at(ns: u64) -> Timestamp {
    Timestamp(T0 + ns)
}

fn client(i: u32) -> Endpoint {
    Endpoint {
        ip: IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (i / 16 + 1))),
        port: 30_000 + (i % 16) as u16,
    }
}

/// SYN, SYN-ACK, ACK, then the client's bytes and the server's acknowledgment of them.
fn open(
    pipeline: &mut Pipeline,
    c: Endpoint,
    ts: Timestamp,
    request: &[u8],
    out: &mut impl FnMut(Verdict),
) {
    let (cs, ss) = (1_000u32, 9_000u32);
    pipeline.push_segment(&segment(ts, (c, SERVER), cs, None, true, b""), out);
    pipeline.push_segment(&segment(ts, (SERVER, c), ss, Some(cs + 1), true, b""), out);
    pipeline.push_segment(
        &segment(ts, (c, SERVER), cs + 1, Some(ss + 1), false, request),
        out,
    );
    let acked = cs + 1 + request.len() as u32;
    pipeline.push_segment(
        &segment(ts, (SERVER, c), ss + 1, Some(acked), false, b""),
        out,
    );
}

fn head(content_length: usize) -> String {
    format!(
        "POST /api/ HTTP/1.1\r\nHost: redcap.example.org\r\nUser-Agent: bench\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {content_length}\r\n\r\n"
    )
}

/// A token that looks real (32 hex digits), from a small generator (no dependency).
fn random_token(state: &mut u64) -> String {
    let mut next = || {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    };
    format!("{:016X}{:016X}", next(), next())
}

/// `VmHWM` (peak resident set) or `VmRSS` of this process, in KiB.
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let connections: u32 = args
        .next()
        .map_or(100_000, |a| a.parse().expect("CONNECTIONS"));
    let max_connections: usize = args
        .next()
        .map_or(131_072, |a| a.parse().expect("MAX_CONNECTIONS"));
    let text = format!("[reassembly]\nmax_connections = {max_connections}\n");
    let config = Config::parse(&text, std::path::Path::new("bench.toml")).expect("config");
    let mut pipeline = Pipeline::new(config.pipeline(), SiteKey::from_bytes([5; 32]));
    let rss_start = status_kib("VmRSS:");

    // Real-token verdicts: (call start, violations as (rule, count), pipeline time released).
    let mut real: Vec<(Timestamp, Vec<(String, u32)>)> = Vec::new();
    let mut other_verdicts = 0u64;
    let mut released_at: Vec<Timestamp> = Vec::new();
    let real_fp = redcap_monitor::shared::token::RawToken::parse(REAL_TOKEN.as_bytes())
        .map(|raw| SiteKey::from_bytes([5; 32]).fingerprint(&raw))
        .expect("token");
    let mut now = at(0);
    let sink = |v: Verdict,
                now: Timestamp,
                real: &mut Vec<_>,
                released_at: &mut Vec<_>,
                other: &mut u64| {
        if v.call
            .token
            .as_ref()
            .is_ok_and(|t| t.fingerprint == real_fp)
        {
            real.push((
                v.call.ts_start,
                v.violations
                    .iter()
                    .map(|x| (x.rule.clone(), x.count))
                    .collect(),
            ));
            released_at.push(now);
        } else {
            *other += 1;
        }
    };

    // The crowd: one connection every 10 µs (a second for 100,000).
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut slowloris = 0u32;
    for i in 0..connections {
        now = at(u64::from(i) * 10_000);
        let body_start = format!(
            "token={}&content=record&format=json&records[0]=",
            random_token(&mut state)
        );
        let request = if i % 10 == 9 {
            slowloris += 1;
            head(4096)
        } else {
            head(4096) + &body_start
        };
        open(
            &mut pipeline,
            client(i),
            now,
            request.as_bytes(),
            &mut |v| sink(v, now, &mut real, &mut released_at, &mut other_verdicts),
        );
    }
    let crowd_open = now;
    let (tracked_connections, _) = pipeline.tracked();
    let rss_open = status_kib("VmRSS:");
    let state_bytes = pipeline.stats().http.state_bytes;

    // The real token: five calls 10 s apart, starting 2 s after the crowd.
    let response =
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n[]";
    let body = format!("token={REAL_TOKEN}&content=version");
    let request = head(body.len()) + &body;
    for k in 0..5u32 {
        let c = Endpoint {
            ip: IpAddr::V4(Ipv4Addr::new(10, 254, 0, 1)),
            port: 50_000 + k as u16,
        };
        now = crowd_open.plus(Span::from_secs(2 + 10 * u64::from(k)));
        open(&mut pipeline, c, now, request.as_bytes(), &mut |v| {
            sink(v, now, &mut real, &mut released_at, &mut other_verdicts)
        });
        let acked = 1_001 + request.len() as u32;
        let answered = now.plus(Span::from_millis(5));
        now = answered;
        pipeline.push_segment(
            &segment(answered, (SERVER, c), 9_001, Some(acked), false, response),
            &mut |v| {
                sink(
                    v,
                    answered,
                    &mut real,
                    &mut released_at,
                    &mut other_verdicts,
                )
            },
        );
        // The live loop's clock ticks meanwhile.
        for ms in (100..10_000u64).step_by(100) {
            let t = answered.plus(Span::from_millis(ms));
            pipeline.tick(t, &mut |v| {
                sink(v, t, &mut real, &mut released_at, &mut other_verdicts)
            });
            now = t;
        }
    }
    // Idle time passes (a tick a second, as the live loop's clock does) up to a minute after
    // the last call: well within the reorder window (120 s), past `unknown_token_hold`.
    for s in 1..=60u64 {
        let t = now.plus(Span::from_secs(s));
        pipeline.tick(t, &mut |v| {
            sink(v, t, &mut real, &mut released_at, &mut other_verdicts)
        });
    }
    let released_before_end = real.len();
    let last_release_delay_s = real
        .iter()
        .zip(&released_at)
        .map(|((start, _), at)| at.since(*start).0 as f64 / 1e9)
        .fold(0.0, f64::max);
    let end = now.plus(Span::from_secs(61));
    pipeline.finish(&mut |v| sink(v, end, &mut real, &mut released_at, &mut other_verdicts));

    let expected: Vec<Vec<(String, u32)>> = vec![
        vec![],
        vec![],
        vec![],
        vec![("api_calls".into(), 4)],
        vec![("api_calls".into(), 5)],
    ];
    let got: Vec<Vec<(String, u32)>> = real.iter().map(|(_, v)| v.clone()).collect();
    let judged_right = got == expected;
    let stats = pipeline.stats();
    println!(
        "{{\n  \"connections\": {connections},\n  \"slowloris\": {slowloris},\n  \
         \"max_connections\": {max_connections},\n  \"tracked_connections\": {tracked_connections},\n  \
         \"evicted_connections\": {},\n  \"rss_start_kib\": {rss_start},\n  \
         \"rss_all_open_kib\": {rss_open},\n  \"peak_rss_kib\": {},\n  \
         \"http_state_bytes\": {state_bytes},\n  \"state_budget_resets\": {},\n  \
         \"real_calls\": {},\n  \"real_released_before_end\": {released_before_end},\n  \
         \"real_last_release_delay_s\": {last_release_delay_s:.1},\n  \
         \"real_judged_right\": {judged_right},\n  \"other_calls\": {other_verdicts}\n}}",
        stats.reassembly.evicted_connections,
        status_kib("VmHWM:"),
        stats.http.state_budget_resets,
        real.len(),
    );
    if !judged_right || released_before_end != 5 {
        eprintln!("real token's verdicts: {got:?} ({released_before_end} before the end)");
        std::process::exit(1);
    }
}
