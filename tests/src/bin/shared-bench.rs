//! shared-bench: the shared windows (`[shared]`) through a real local `redis-server`, for
//! `cargo xtask bench shared`. Two hosts, each on its own thread with its own current-thread
//! tokio runtime (as each daemon runs its loop), each with the Redis edge
//! (`edges::shared_state::SharedState`) and the cluster stage; prints one JSON object:
//!
//! - **throughput**: host A serves `CALLS` calls from 10,000 tokens (into its own policy and its
//!   outbox, published in batches of `BATCH` as a busy loop publishes per tick); host B reads
//!   them from the stream into its cluster stage and its policy's windows. Calls per second from
//!   A's first publish to B's last call in its windows (and A's publishing alone).
//! - **decision delay**: A serves a call that breaks `api_calls` while B idles (publishing only
//!   its heartbeat watermark); A may judge the call only once B's watermark has passed its start.
//!   The delay from the end of the call to A's verdict, `SAMPLES` times, p50/p99/max, at the
//!   default `shared.heartbeat` (250 ms) and at a short one (5 ms).
//! - **memory**: `INFO memory` used_memory before and after 10,000 tokens each at the default
//!   limit (3 calls a minute) for the stream's whole retention (5 min + the 2 min reorder window):
//!   210,000 calls.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use monitor_tests::redis::{RedisOptions, RedisServer};
use redcap_monitor::edges::shared_state::{FromRedis, Retention, SharedConfig, SharedState};
use redcap_monitor::shared::model::{Endpoint, Span, Timestamp};
use redcap_monitor::shared::settings::Duration as ConfigDuration;
use redcap_monitor::shared::token::{HookToken, MaskedToken, RawToken, SiteKey, TokenFingerprint};
use redcap_monitor::stages::cluster::{Cluster, ClusterConfig, Outbox};
use redcap_monitor::stages::policy::{Hold, Policy, PolicyConfig};
use redcap_monitor::stages::redcap::{ApiCall, ApiParams, TokenIdentity};

const TOKENS: usize = 10_000;
const CALLS: usize = 500_000;
const BATCH: usize = 500;
const SAMPLES: usize = 200;
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
    // Host B: reads A's calls into its cluster stage and its policy's windows.
    let reader = std::thread::spawn(move || {
        runtime().block_on(async move {
            let mut shared = SharedState::start(
                &config(&url_b, "b", prefix, Span::from_millis(250)),
                2,
                Retention(RETENTION),
            )
            .expect("edge");
            connected(&mut shared).await;
            let mut cluster = Cluster::new(
                ClusterConfig {
                    host: "b".into(),
                    instance: 2,
                    peer_timeout: Span::from_secs(5),
                },
                now(),
            );
            let mut policy = Policy::new(&PolicyConfig::default());
            ready_tx.send(()).unwrap();
            let started = start_rx.recv().unwrap();
            while (cluster.stats().calls_received as usize) < CALLS {
                if let FromRedis::Batch(batch) = shared.recv().await {
                    let at = now();
                    cluster.receive(batch, at);
                    while let Some(call) = cluster.poll_call() {
                        policy.push_from_peer(call);
                    }
                    while policy.poll(at, &Hold::all_since(cluster.hold())).is_some() {}
                }
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

/// Delays (ms) from the end of a violating call on A to A's verdict, with B idle.
fn decision_delays(url: &str, heartbeat: Span, prefix: &'static str) -> Vec<f64> {
    let fp = fingerprints(1)[0];
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let url_b = url.to_owned();
    // Host B: idle, publishing its watermark every heartbeat, reading A's calls.
    let idle = std::thread::spawn(move || {
        runtime().block_on(async move {
            let mut shared = SharedState::start(
                &config(&url_b, "b", prefix, heartbeat),
                2,
                Retention(RETENTION),
            )
            .expect("edge");
            connected(&mut shared).await;
            let mut outbox = Outbox::new("b".into(), 2);
            ready_tx.send(()).unwrap();
            while stop_rx.try_recv().is_err() {
                let at = now();
                if shared.due(false, at) {
                    shared.publish(outbox.take_batch(at, at));
                }
                let _ = tokio::time::timeout(Duration::from_millis(1), shared.recv()).await;
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
        let mut cluster = Cluster::new(
            ClusterConfig {
                host: "a".into(),
                instance: 1,
                peer_timeout: Span::from_secs(5),
            },
            now(),
        );
        let mut outbox = Outbox::new("a".into(), 1);
        let mut policy = Policy::new(&PolicyConfig::default());
        // Until B is a live peer, nothing is held back.
        while cluster.live_peers() == 0 {
            if let FromRedis::Batch(batch) = shared.recv().await {
                cluster.receive(batch, now());
            }
        }
        let mut delays = Vec::with_capacity(SAMPLES);
        let mut rng: u64 = 0x9E37_79B9_7F4A_7C15;
        // Three compliant calls first: every call after them breaks api_calls (3 a minute).
        for n in 0..SAMPLES + 3 {
            rng ^= rng >> 12;
            rng ^= rng << 25;
            rng ^= rng >> 27;
            // A call at a random moment relative to B's heartbeats.
            let pause = rng.wrapping_mul(0x2545_F491_4F6C_DD1D) % heartbeat.0.max(1_000_000);
            tokio::time::sleep(Duration::from_nanos(pause)).await;
            let end = now();
            let served = Instant::now();
            let c = call(fp, Timestamp::from_nanos(end.0 - 1_000_000), end, 40_000);
            outbox.push(&c);
            policy.push(c);
            shared.publish(outbox.take_batch(end, end));
            let judged = loop {
                let at = now();
                cluster.handle_timeout(at);
                if let Some(verdict) = policy.poll(at, &Hold::all_since(cluster.hold())) {
                    break verdict;
                }
                if let Ok(FromRedis::Batch(batch)) =
                    tokio::time::timeout(Duration::from_millis(50), shared.recv()).await
                {
                    cluster.receive(batch, now());
                }
            };
            if n >= 3 {
                assert!(
                    !judged.violations.is_empty(),
                    "the bench's call broke no rule"
                );
                delays.push(served.elapsed().as_secs_f64() * 1000.0);
            }
        }
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

/// used_memory growth for 10,000 tokens at 3 calls a minute over the retention.
fn memory(redis: &RedisServer, url: &str) -> (u64, u64, u64) {
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
            if (n + 1) % BATCH == 0 {
                let at = now();
                shared.publish(outbox.take_batch(at, at));
                tokio::task::yield_now().await;
            }
        }
        while (shared.stats().calls_published as usize) < total {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let after = redis.used_memory().expect("INFO memory");
    (total as u64, before, after)
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
    eprintln!("shared-bench: Redis memory for {TOKENS} active tokens");
    let (calls, before, after) = memory(&redis, &url);
    println!(
        "{{\n  \"calls\": {CALLS},\n  \"tokens\": {TOKENS},\n  \"batch\": {BATCH},\n  \
         \"end_to_end_calls_per_s\": {:.0},\n  \"publish_calls_per_s\": {:.0},\n  \
         \"redis_cpu_s_per_million_calls\": {:.2},\n  \"hosts_cpu_s_per_million_calls\": {:.2},\n  \
         \"delay_samples\": {SAMPLES},\n  \
         \"delay_ms_p50_heartbeat_250ms\": {:.2},\n  \"delay_ms_p99_heartbeat_250ms\": {:.2},\n  \
         \"delay_ms_max_heartbeat_250ms\": {:.2},\n  \
         \"delay_ms_p50_heartbeat_5ms\": {:.2},\n  \"delay_ms_p99_heartbeat_5ms\": {:.2},\n  \
         \"delay_ms_max_heartbeat_5ms\": {:.2},\n  \
         \"memory_calls\": {calls},\n  \"used_memory_before\": {before},\n  \
         \"used_memory_after\": {after},\n  \"used_memory_bytes\": {}\n}}",
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
        after.saturating_sub(before),
    );
}
