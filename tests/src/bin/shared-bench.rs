//! shared-bench: the shared windows (`[shared]`) through a real local `redis-server`, for
//! `cargo xtask bench shared`. Two hosts, each on its own thread with its own current-thread
//! tokio runtime (as each daemon runs its loop), each with the Redis edge
//! (`edges::shared_state::SharedState`); prints one JSON object:
//!
//! - **throughput**: host A serves `CALLS` calls from 10,000 tokens (into its own policy and its
//!   outbox, handed to the Redis edge `BATCH` at a time; the edge puts what waits into one
//!   stream entry per publication); host B takes them as the live loop does (a `Pipeline` shared
//!   with peers: `receive_from_peer`, then `SharedState::publish_due`, which answers with B's
//!   watermark). Calls per second from A's first publish to B's last call in its windows (and
//!   A's publishing alone).
//! - **decision delay**: both hosts are `Pipeline`s driven as `commands::run` drives them: TCP
//!   segments in, then `publish_due` (calls finished by the input go out at once), each message
//!   of Redis into `receive_from_peer` then `publish_due`, and a 100 ms tick. A serves a call
//!   (handshake, request, response on loopback addresses) that breaks `api_calls` while B idles;
//!   A may judge it only once B's watermark has passed its start. The delay from the end of the
//!   call (its response pushed into A's pipeline) to A's verdict, `SAMPLES` times at random
//!   moments, p50/p99/max, at the default `shared.heartbeat` (250 ms) and at a short one (5 ms).
//! - **memory**: `INFO memory` used_memory before and after 10,000 tokens each at the default
//!   limit (3 calls a minute) for the stream's whole retention (5 min + the 2 min reorder window):
//!   210,000 calls, published as a host at that rate does: one call per stream entry (calls
//!   finish one at a time and go out at once), and, for comparison, 50 calls an entry.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use monitor_tests::bench::segment;
use monitor_tests::redis::{RedisOptions, RedisServer};
use redcap_monitor::commands::config::Config;
use redcap_monitor::edges::shared_state::{FromRedis, Retention, SharedConfig, SharedState};
use redcap_monitor::shared::model::{Endpoint, Span, Timestamp};
use redcap_monitor::shared::settings::Duration as ConfigDuration;
use redcap_monitor::shared::token::{HookToken, MaskedToken, RawToken, SiteKey, TokenFingerprint};
use redcap_monitor::stages::cluster::{ClusterConfig, Outbox};
use redcap_monitor::stages::pipeline::Pipeline;
use redcap_monitor::stages::policy::{Hold, Policy, PolicyConfig, Verdict};
use redcap_monitor::stages::redcap::{ApiCall, ApiParams, TokenIdentity};

const TOKENS: usize = 10_000;
const CALLS: usize = 500_000;
const BATCH: usize = 500;
const SAMPLES: usize = 500;
/// The stream's retention: the longest default rule window (5 min) + the reorder window (2 min).
const RETENTION: Span = Span::from_secs(420);

fn now() -> Timestamp {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp::from_nanos(since.as_nanos() as u64)
}

fn fingerprints(n: usize) -> Vec<TokenFingerprint> {
    let key = SiteKey::from_bytes([7; 32]);
    (0..n)
        .map(|t| {
            let token = RawToken::parse(format!("BENCH{t:027}").as_bytes()).expect("alphanumeric");
            key.fingerprint(&token)
        })
        .collect()
}

fn call(fingerprint: TokenFingerprint, start: Timestamp, end: Timestamp, port: u16) -> ApiCall {
    let endpoint = |port| Endpoint {
        ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
        port,
    };
    ApiCall {
        ts_start: start,
        ts_end: end,
        ttfb: Some(Span::from_millis(30)),
        client: endpoint(port),
        server: endpoint(443),
        proxy: None,
        method: "POST".into(),
        path: "/api/".into(),
        http_version: redcap_monitor::stages::http::HttpVersion::Http11,
        token: Ok(TokenIdentity {
            fingerprint,
            masked: MaskedToken("BEN…00".into()),
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
    }
}

fn config(url: &str, host: &str, prefix: &str, heartbeat: Span) -> SharedConfig {
    SharedConfig {
        url: url.to_owned(),
        host: Some(host.to_owned()),
        key_prefix: prefix.to_owned(),
        heartbeat: ConfigDuration(heartbeat),
        max_buffered_calls: CALLS * 2,
        ..SharedConfig::default()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Waits for the edge's first `Up`.
async fn connected(shared: &mut SharedState) {
    loop {
        match shared.recv().await {
            FromRedis::Up { .. } => return,
            FromRedis::Down { error } => panic!("redis-server is not reachable: {error}"),
            _ => {}
        }
    }
}

struct Throughput {
    end_to_end_calls_per_s: f64,
    publish_calls_per_s: f64,
    /// CPU seconds redis-server spent per million calls (INFO cpu), and the two hosts' threads.
    redis_cpu_s_per_million: f64,
    hosts_cpu_s_per_million: f64,
}

/// redis-server's CPU seconds so far (`INFO cpu`: user + system).
fn redis_cpu(redis: &RedisServer) -> f64 {
    let info = redis.cli(&["INFO", "cpu"]).expect("INFO cpu");
    ["used_cpu_user:", "used_cpu_sys:"]
        .iter()
        .filter_map(|k| info.lines().find_map(|l| l.strip_prefix(k)))
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .sum()
}

/// This process's CPU seconds so far (every thread).
fn process_cpu() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

fn throughput(redis: &RedisServer, url: &str) -> Throughput {
    let (redis_before, hosts_before) = (redis_cpu(redis), process_cpu());
    let prefix = "bench-throughput:";
    let fps = fingerprints(TOKENS);
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let (start_tx, start_rx) = mpsc::channel::<Instant>();
    let url_b = url.to_owned();
    // Host B: takes A's calls as the live loop does (into its pipeline's windows, answering
    // with its watermark).
    let reader = std::thread::spawn(move || {
        runtime().block_on(async move {
            let mut shared = SharedState::start(
                &config(&url_b, "b", prefix, Span::from_millis(250)),
                2,
                Retention(RETENTION),
            )
            .expect("edge");
            connected(&mut shared).await;
            let mut pipeline = pipeline("b", 2);
            ready_tx.send(()).unwrap();
            let started = start_rx.recv().unwrap();
            let received =
                |p: &Pipeline| p.cluster().map_or(0, |c| c.stats().calls_received as usize);
            while received(&pipeline) < CALLS {
                let message = shared.recv().await;
                take(&mut shared, &mut pipeline, message, &mut |_| {});
            }
            started.elapsed()
        })
    });
    ready_rx.recv().unwrap();
    // Host A: serves the calls (its own policy, its outbox) and publishes them.
    let publish = runtime().block_on(async {
        let mut shared = SharedState::start(
            &config(url, "a", prefix, Span::from_millis(250)),
            1,
            Retention(RETENTION),
        )
        .expect("edge");
        connected(&mut shared).await;
        let mut outbox = Outbox::new("a".into(), 1);
        let mut policy = Policy::new(&PolicyConfig::default());
        let started = Instant::now();
        start_tx.send(started).unwrap();
        let t0 = now();
        for n in 0..CALLS {
            let start = t0.plus(Span(n as u64 * 1_000));
            let c = call(
                fps[n % TOKENS],
                start,
                start.plus(Span::from_millis(30)),
                (n % 60_000) as u16,
            );
            outbox.push(&c);
            policy.push(c);
            while policy.poll(start, &Hold::all_since(None)).is_some() {}
            if (n + 1) % BATCH == 0 {
                let at = now();
                shared.publish(outbox.take_batch(at, at));
                // Let the Redis task run, as the daemon's loop does between ticks.
                tokio::task::yield_now().await;
            }
        }
        while (shared.stats().calls_published as usize) < CALLS {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        started.elapsed()
    });
    let end_to_end = reader.join().expect("reader thread");
    let millions = CALLS as f64 / 1e6;
    Throughput {
        end_to_end_calls_per_s: CALLS as f64 / end_to_end.as_secs_f64(),
        publish_calls_per_s: CALLS as f64 / publish.as_secs_f64(),
        redis_cpu_s_per_million: (redis_cpu(redis) - redis_before) / millions,
        hosts_cpu_s_per_million: (process_cpu() - hosts_before) / millions,
    }
}

/// A host's pipeline, sharing its windows with its peers (as `run` sets it up).
fn pipeline(host: &str, instance: u64) -> Pipeline {
    let mut pipeline = Pipeline::new(Config::default().pipeline(), SiteKey::from_bytes([5; 32]));
    pipeline.share_with_peers(ClusterConfig {
        host: host.into(),
        instance,
        peer_timeout: Span::from_secs(5),
    });
    pipeline
}

/// One message of Redis, as the live loop takes it (`commands::run`, `Event::Shared`): a
/// peer's batch into the pipeline, then what is due published (a batch with calls made this
/// host's watermark due in `recv`).
fn take(
    shared: &mut SharedState,
    pipeline: &mut Pipeline,
    message: FromRedis,
    out: &mut impl FnMut(Verdict),
) {
    let at = now();
    if let FromRedis::Batch(batch) = message {
        pipeline.receive_from_peer(batch, at, out);
    }
    shared.publish_due(pipeline, at);
}

/// The live loop's tick (`Event::Tick`): time passes in the pipeline, the heartbeat when due.
fn tick(shared: &mut SharedState, pipeline: &mut Pipeline, out: &mut impl FnMut(Verdict)) {
    let at = now();
    pipeline.tick(at, out);
    shared.publish_due(pipeline, at);
}

/// The live loop's tick period (`commands::run::TICK`).
const TICK: Duration = Duration::from_millis(100);

const SERVER: Endpoint = Endpoint {
    ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
    port: 443,
};

/// One API call on a fresh connection from `port` (handshake, request, response, close) into
/// `pipeline` at `ts`, then what the input finished published at once (`run`'s
/// `share_finished_calls` after each input event).
fn serve(
    shared: &mut SharedState,
    pipeline: &mut Pipeline,
    port: u16,
    ts: Timestamp,
    out: &mut impl FnMut(Verdict),
) {
    const BODY: &str = "token=0123456789ABCDEF0123456789ABCDEF&content=version&format=json";
    let request = format!(
        "POST /api/ HTTP/1.1\r\nHost: redcap.example.org\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n14.0";
    let client = Endpoint {
        ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
        port,
    };
    let (c, s) = (1_000u32, 9_000u32);
    let request = request.as_bytes();
    let acked = c + 1 + request.len() as u32;
    for segment in [
        segment(ts, (client, SERVER), c, None, true, b""),
        segment(ts, (SERVER, client), s, Some(c + 1), true, b""),
        segment(ts, (client, SERVER), c + 1, Some(s + 1), false, request),
        segment(ts, (SERVER, client), s + 1, Some(acked), false, RESPONSE),
    ] {
        pipeline.push_segment(&segment, out);
    }
    shared.publish_due(pipeline, now());
}

/// Delays (ms) from the end of a violating call on A to A's verdict, with B idle; both hosts
/// driven as the live loop drives them.
fn decision_delays(url: &str, heartbeat: Span, prefix: &'static str) -> Vec<f64> {
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let url_b = url.to_owned();
    // Host B: idle (no calls of its own), reading A's calls and answering with its watermark.
    let idle = std::thread::spawn(move || {
        runtime().block_on(async move {
            let mut shared = SharedState::start(
                &config(&url_b, "b", prefix, heartbeat),
                2,
                Retention(RETENTION),
            )
            .expect("edge");
            connected(&mut shared).await;
            let mut pipeline = pipeline("b", 2);
            let mut ticks = tokio::time::interval(TICK);
            ready_tx.send(()).unwrap();
            while stop_rx.try_recv().is_err() {
                tokio::select! {
                    message = shared.recv() => take(&mut shared, &mut pipeline, message, &mut |_| {}),
                    _ = ticks.tick() => tick(&mut shared, &mut pipeline, &mut |_| {}),
                }
            }
        })
    });
    ready_rx.recv().unwrap();
    let delays = runtime().block_on(async {
        let mut shared = SharedState::start(
            &config(url, "a", prefix, heartbeat),
            1,
            Retention(RETENTION),
        )
        .expect("edge");
        connected(&mut shared).await;
        let mut pipeline = pipeline("a", 1);
        // Until B is a live peer, nothing is held back.
        while pipeline.cluster().is_none_or(|c| c.live_peers() == 0) {
            let message = shared.recv().await;
            take(&mut shared, &mut pipeline, message, &mut |_| {});
        }
        let mut ticks = tokio::time::interval(TICK);
        let mut delays = Vec::with_capacity(SAMPLES);
        let mut verdicts: Vec<(Instant, Verdict)> = Vec::new();
        let mut rng: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut pause = || {
            rng ^= rng >> 12;
            rng ^= rng << 25;
            rng ^= rng >> 27;
            // A call at a random moment relative to B's heartbeats and the ticks.
            let span = heartbeat.0.max(TICK.as_nanos() as u64);
            Duration::from_nanos(rng.wrapping_mul(0x2545_F491_4F6C_DD1D) % span)
        };
        let mut next_call = tokio::time::Instant::now() + pause();
        let mut served: Option<Instant> = None;
        let mut judged = 0;
        let mut port = 20_000u16;
        // Three compliant calls first: every call after them breaks api_calls (3 a minute).
        while judged < SAMPLES + 3 {
            if let Some(at) = served {
                assert!(
                    at.elapsed() < Duration::from_secs(10),
                    "no verdict 10 s after the call: policy {:?}, http {:?}",
                    pipeline.stats().policy,
                    pipeline.stats().http
                );
            }
            enum Event {
                Redis(FromRedis),
                Tick,
                Call,
            }
            let event = tokio::select! {
                message = shared.recv() => Event::Redis(message),
                _ = ticks.tick() => Event::Tick,
                _ = tokio::time::sleep_until(next_call), if served.is_none() => Event::Call,
            };
            let mut out = |v: Verdict| verdicts.push((Instant::now(), v));
            match event {
                Event::Redis(message) => take(&mut shared, &mut pipeline, message, &mut out),
                Event::Tick => tick(&mut shared, &mut pipeline, &mut out),
                Event::Call => {
                    port += 1;
                    serve(&mut shared, &mut pipeline, port, now(), &mut out);
                    served = Some(Instant::now());
                }
            }
            for (at, verdict) in verdicts.drain(..) {
                let started = served.take().expect("a verdict of the call served");
                if judged >= 3 {
                    assert!(
                        !verdict.violations.is_empty(),
                        "the bench's call broke no rule"
                    );
                    delays.push((at - started).as_secs_f64() * 1000.0);
                }
                judged += 1;
                next_call = tokio::time::Instant::now() + pause();
            }
        }
        assert_eq!(
            pipeline.stats().policy.late_peer_calls,
            0,
            "no call came late"
        );
        delays
    });
    stop_tx.send(()).unwrap();
    idle.join().expect("idle host");
    delays
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// used_memory growth for 10,000 tokens at 3 calls a minute over the retention, the calls
/// published `per_entry` at a time, each publication waited for (so that each is one entry).
fn memory(redis: &RedisServer, url: &str, per_entry: usize) -> (u64, u64) {
    redis.cli(&["FLUSHALL"]).expect("FLUSHALL");
    let before = redis.used_memory().expect("INFO memory");
    let fps = fingerprints(TOKENS);
    let per_token = 3 * (RETENTION.0 / 60_000_000_000) as usize;
    let total = TOKENS * per_token;
    runtime().block_on(async {
        let mut shared = SharedState::start(
            &config(url, "web1", "redcap-monitor:", Span::from_millis(250)),
            1,
            Retention(RETENTION),
        )
        .expect("edge");
        connected(&mut shared).await;
        let mut outbox = Outbox::new("web1".into(), 1);
        let t0 = now();
        for n in 0..total {
            let start = t0.plus(Span(n as u64 * 1_000));
            outbox.push(&call(fps[n % TOKENS], start, start, (n % 60_000) as u16));
            if (n + 1) % per_entry == 0 || n + 1 == total {
                let at = now();
                shared.publish(outbox.take_batch(at, at));
                while (shared.stats().calls_published as usize) < n + 1 {
                    tokio::task::yield_now().await;
                }
            }
        }
    });
    let after = redis.used_memory().expect("INFO memory");
    (total as u64, after.saturating_sub(before))
}

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let redis = RedisServer::start(RedisOptions {
        netns: None,
        bind: "127.0.0.1".into(),
        port,
        dir: dir.path().join("redis"),
        password: None,
        users: Vec::new(),
    })
    .expect("redis-server (installed by `cargo xtask setup`)");
    let url = redis.url();
    // `shared-bench delay`: the decision delay alone (while working on it), no JSON.
    if std::env::args().nth(1).as_deref() == Some("delay") {
        for heartbeat in [250, 5] {
            let mut d = decision_delays(&url, Span::from_millis(heartbeat), "bench-delay:");
            d.sort_by(f64::total_cmp);
            eprintln!(
                "heartbeat {heartbeat} ms: p50 {:.2} p99 {:.2} max {:.2}",
                percentile(&d, 0.5),
                percentile(&d, 0.99),
                percentile(&d, 1.0)
            );
        }
        return;
    }
    eprintln!("shared-bench: throughput, {CALLS} calls from {TOKENS} tokens, batches of {BATCH}");
    let best = (0..3)
        .map(|_| {
            redis.cli(&["FLUSHALL"]).expect("FLUSHALL");
            throughput(&redis, &url)
        })
        .max_by(|a, b| {
            a.end_to_end_calls_per_s
                .total_cmp(&b.end_to_end_calls_per_s)
        })
        .expect("three runs");
    eprintln!("shared-bench: decision delay, {SAMPLES} violating calls, heartbeat 250 ms and 5 ms");
    let mut slow = decision_delays(&url, Span::from_millis(250), "bench-delay-250:");
    let mut fast = decision_delays(&url, Span::from_millis(5), "bench-delay-5:");
    slow.sort_by(f64::total_cmp);
    fast.sort_by(f64::total_cmp);
    eprintln!("shared-bench: Redis memory for {TOKENS} active tokens, 1 and 50 calls an entry");
    let (calls, bytes) = memory(&redis, &url, 1);
    let (_, bytes_50) = memory(&redis, &url, 50);
    println!(
        "{{\n  \"calls\": {CALLS},\n  \"tokens\": {TOKENS},\n  \"batch\": {BATCH},\n  \
         \"end_to_end_calls_per_s\": {:.0},\n  \"publish_calls_per_s\": {:.0},\n  \
         \"redis_cpu_s_per_million_calls\": {:.2},\n  \"hosts_cpu_s_per_million_calls\": {:.2},\n  \
         \"delay_samples\": {SAMPLES},\n  \
         \"delay_ms_p50_heartbeat_250ms\": {:.2},\n  \"delay_ms_p99_heartbeat_250ms\": {:.2},\n  \
         \"delay_ms_max_heartbeat_250ms\": {:.2},\n  \
         \"delay_ms_p50_heartbeat_5ms\": {:.2},\n  \"delay_ms_p99_heartbeat_5ms\": {:.2},\n  \
         \"delay_ms_max_heartbeat_5ms\": {:.2},\n  \
         \"memory_calls\": {calls},\n  \"used_memory_bytes\": {bytes},\n  \
         \"used_memory_bytes_50_calls_an_entry\": {bytes_50}\n}}",
        best.end_to_end_calls_per_s,
        best.publish_calls_per_s,
        best.redis_cpu_s_per_million,
        best.hosts_cpu_s_per_million,
        percentile(&slow, 0.5),
        percentile(&slow, 0.99),
        percentile(&slow, 1.0),
        percentile(&fast, 0.5),
        percentile(&fast, 0.99),
        percentile(&fast, 1.0),
    );
}
