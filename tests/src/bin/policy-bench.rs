//! policy-bench: the policy stage alone on millions of synthetic calls from 10,000 tokens (or
//! as many as the second argument says: `policy-bench CALLS TOKENS`), for
//! `cargo xtask bench policy`. Prints one JSON object: calls per CPU second of one core of the
//! rate rules (push, release, evaluate, drop the verdict) — CPU time, so that other work on the
//! machine does not count — and per wall second, the same with the enforcement stage deciding
//! about every call that broke a rule, the heap the policy holds for its tokens, and the
//! process's peak RSS.
//!
//! Calls are made in batches outside the timed part (so only the stage is timed) and their
//! tokens are drawn at random from 10,000, one call every 10 ms of capture time: a token calls
//! about once in 100 s on average, at random, so a few percent of calls break `api_calls`
//! (3 per minute) and every rule path runs. Heap is counted by a counting allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use monitor_tests::cpu::thread_cpu_time;
use redcap_monitor::shared::model::{Endpoint, Span, Timestamp};
use redcap_monitor::shared::token::{HookToken, MaskedToken, RawToken, SiteKey, TokenFingerprint};
use redcap_monitor::stages::health::Assessment;
use redcap_monitor::stages::policy::Policy;
use redcap_monitor::stages::policy::PolicyConfig;
use redcap_monitor::stages::policy::enforce::{EnforcementConfig, Enforcer, HealthView};
use redcap_monitor::stages::redcap::{ApiCall, ApiParams, TokenIdentity};

/// Counts live heap bytes and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
/// Heap the bench's own input takes (the tokens' fingerprints and masked forms): part of the
/// peak, not of the stage's state.
static INPUT: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        // SAFETY: the caller upholds `alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller upholds `dealloc`'s contract.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const TOKENS: u64 = 10_000;
const BATCH: usize = 10_000;
const STEP: Span = Span::from_millis(10);
const T0: Timestamp = Timestamp(1_700_000_000_000_000_000);

struct Calls {
    template: ApiCall,
    masked: Vec<MaskedToken>,
    fingerprints: Vec<TokenFingerprint>,
    tokens: u64,
    rng: u64,
    next_ts: Timestamp,
}

impl Calls {
    fn new(tokens: u64) -> Calls {
        let key = SiteKey::from_bytes([7; 32]);
        let endpoint = |port| Endpoint {
            ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
            port,
        };
        Calls {
            template: ApiCall {
                ts_start: T0,
                ts_end: T0,
                ttfb: Some(Span::from_millis(30)),
                client: endpoint(40_000),
                server: endpoint(443),
                proxy: None,
                method: "POST".into(),
                path: "/api/".into(),
                http_version: redcap_monitor::stages::http::HttpVersion::Http11,
                token: Ok(TokenIdentity {
                    fingerprint: TokenFingerprint([0; 8]),
                    masked: MaskedToken(String::new()),
                }),
                params: ApiParams {
                    content: Some("record".into()),
                    format: Some("json".into()),
                    records: 2,
                    ..ApiParams::default()
                },
                status: Some(200),
                request_bytes: 120,
                response_bytes: Some(4_000),
                response_wire_bytes: Some(1_200),
                body_problem: None,
                complete: true,
                raw_token: HookToken::default(),
            },
            masked: (0..tokens)
                .map(|t| MaskedToken(format!("T{t:02}…{:02}", t % 100)))
                .collect(),
            // Real fingerprints (HMACs of made-up tokens), as the pipeline would key them.
            fingerprints: (0..tokens)
                .map(|t| {
                    let token = RawToken::parse(format!("BENCH{t:027}").as_bytes())
                        .expect("letters and digits");
                    key.fingerprint(&token)
                })
                .collect(),
            tokens,
            rng: 0x9E37_79B9_7F4A_7C15,
            next_ts: T0,
        }
    }

    /// xorshift64*: reproducible and cheap.
    fn random(&mut self) -> u64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn batch(&mut self) -> Vec<ApiCall> {
        (0..BATCH)
            .map(|_| {
                let token = self.random() % self.tokens;
                let mut call = self.template.clone();
                call.ts_start = self.next_ts;
                call.ts_end = self.next_ts.plus(Span::from_millis(30));
                self.next_ts = self.next_ts.plus(STEP);
                call.token = Ok(TokenIdentity {
                    fingerprint: self.fingerprints[token as usize],
                    masked: self.masked[token as usize].clone(),
                });
                call
            })
            .collect()
    }
}

struct Run {
    calls: u64,
    violations: u64,
    decisions: u64,
    elapsed: Duration,
    /// CPU time of this thread in the timed part: what the stage costs on one core, whatever
    /// else the machine runs.
    cpu: Duration,
    tracked_tokens: usize,
    /// Heap held by the stage(s) at the end: their per-token state.
    state_bytes: usize,
    /// Tokens the policy let go to stay within `policy.max_tokens`.
    evicted_tokens: u64,
}

fn run(total: u64, tokens: u64, enforce: bool) -> Run {
    let start_heap = LIVE.load(Ordering::Relaxed);
    let mut calls = Calls::new(tokens);
    let before = LIVE.load(Ordering::Relaxed);
    INPUT.store(before.saturating_sub(start_heap), Ordering::Relaxed);
    let mut policy = Policy::new(&PolicyConfig::default());
    let mut enforcer = Enforcer::new(EnforcementConfig::default());
    let assessment = Assessment::default();
    let view = HealthView {
        degraded: false,
        assessment: &assessment,
        load_share: None,
    };
    let (mut done, mut violations, mut decisions) = (0u64, 0u64, 0u64);
    let mut elapsed = Duration::ZERO;
    let mut cpu = Duration::ZERO;
    while done < total {
        let batch = calls.batch();
        let n = batch.len() as u64;
        let start = Instant::now();
        let cpu_start = thread_cpu_time();
        for call in batch {
            let now = call.ts_start;
            policy.push(call);
            while let Some(verdict) =
                policy.poll(now, &redcap_monitor::stages::policy::Hold::all_since(None))
            {
                violations += verdict.violations.len() as u64;
                if enforce && !verdict.violations.is_empty() {
                    decisions += u64::from(enforcer.decide(&verdict, &view).is_some());
                }
            }
        }
        cpu += thread_cpu_time().saturating_sub(cpu_start);
        elapsed += start.elapsed();
        done += n;
    }
    // Forgetting runs in the pipeline once a second of capture time; once here, at the end.
    policy.forget_idle(calls.next_ts);
    enforcer.forget_idle(calls.next_ts);
    let state_bytes = LIVE.load(Ordering::Relaxed).saturating_sub(before);
    Run {
        calls: done,
        violations,
        decisions,
        elapsed,
        cpu,
        tracked_tokens: policy.tracked_tokens(),
        state_bytes,
        evicted_tokens: policy.stats().evicted_tokens,
    }
}

/// `VmHWM` (peak resident set) of this process, in KiB.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let total: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5_000_000);
    let tokens: u64 = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(TOKENS);
    // Best of three for the rate; the state is the same in every run.
    let best = |enforce: bool| {
        (0..3)
            .map(|_| run(total, tokens, enforce))
            .min_by_key(|r| r.cpu)
            .expect("three runs")
    };
    let rules = best(false);
    let with_enforcement = best(true);
    let rate = |r: &Run| r.calls as f64 / r.cpu.as_secs_f64();
    let wall_rate = |r: &Run| r.calls as f64 / r.elapsed.as_secs_f64();
    println!(
        "{{\n  \"calls\": {},\n  \"tokens\": {tokens},\n  \"violations\": {},\n  \
         \"decisions\": {},\n  \"policy_calls_per_s\": {:.0},\n  \
         \"policy_and_enforcement_calls_per_s\": {:.0},\n  \
         \"policy_calls_per_wall_s\": {:.0},\n  \"tracked_tokens\": {},\n  \
         \"policy_state_bytes\": {},\n  \"policy_and_enforcement_state_bytes\": {},\n  \
         \"heap_peak_bytes\": {},\n  \"peak_rss_kib\": {},\n  \"evicted_tokens\": {},\n  \"input_bytes\": {}\n}}",
        rules.calls,
        rules.violations,
        with_enforcement.decisions,
        rate(&rules),
        rate(&with_enforcement),
        wall_rate(&rules),
        rules.tracked_tokens,
        rules.state_bytes,
        with_enforcement.state_bytes,
        PEAK.load(Ordering::Relaxed),
        peak_rss_kib(),
        rules.evicted_tokens,
        INPUT.load(Ordering::Relaxed),
    );
}
