//! The Redis edge against a real `redis-server` that each test starts on a free loopback port
//! in its own temporary directory (never the machine's instance) and stops when it ends.

use std::process::{Child, Command, Stdio};
use std::time::{Duration as StdDuration, Instant};

use super::*;
use crate::stages::cluster::SharedCall;
use crate::stages::redcap::sample::call;

/// A private `redis-server` for one test.
pub(crate) struct RedisServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    pub(crate) port: u16,
    extra: Vec<String>,
}

impl RedisServer {
    pub(crate) fn start(extra: &[&str]) -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = RedisServer {
            child: None,
            dir: tempfile::tempdir().unwrap(),
            port,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        server.restart();
        server
    }

    /// Starts it (again) on the same port, empty (no persistence).
    pub(crate) fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(self.port_args())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (cargo xtask setup installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + StdDuration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.listening_port())).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(StdDuration::from_millis(20));
        }
    }

    fn port_args(&self) -> Vec<String> {
        if self.extra.iter().any(|a| a == "--tls-port") {
            vec!["--port".into(), "0".into()]
        } else {
            vec!["--port".into(), self.port.to_string()]
        }
    }

    fn listening_port(&self) -> u16 {
        self.extra
            .iter()
            .position(|a| a == "--tls-port")
            .map_or(self.port, |i| self.extra[i + 1].parse().unwrap())
    }

    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub(crate) fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// A command on a plain connection, as the default user.
    pub(crate) fn query<T: redis::FromRedisValue>(&self, cmd: &mut redis::Cmd) -> T {
        self.try_query(cmd).unwrap()
    }

    /// [`RedisServer::query`] for a server that may drop its connections meanwhile (a master
    /// that Sentinel turns into a replica closes its clients').
    pub(crate) fn try_query<T: redis::FromRedisValue>(
        &self,
        cmd: &mut redis::Cmd,
    ) -> redis::RedisResult<T> {
        let client = redis::Client::open(self.url())?;
        let mut conn = client.get_connection()?;
        cmd.query(&mut conn)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn config(url: &str) -> SharedConfig {
    SharedConfig {
        url: url.into(),
        // Generous: the machine running the tests is busy; a timeout is its own test.
        timeout: Duration(Span::from_secs(2)),
        ..SharedConfig::default()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn batch(host: &str, seqs: std::ops::Range<u64>, watermark: u64) -> Batch {
    Batch {
        host: host.into(),
        instance: 1,
        sent_at: Timestamp(watermark),
        watermark: Timestamp(watermark),
        calls: seqs
            .map(|seq| (seq, SharedCall::of(&call((seq % 200) as u8, seq))))
            .collect(),
    }
}

fn start(config: &SharedConfig, host: &str) -> SharedState {
    let config = SharedConfig {
        host: Some(host.into()),
        ..config.clone()
    };
    SharedState::start(&config, 1, Retention(Span::from_secs(3600))).unwrap()
}

/// Messages from `state` until `until` says it has what it waited for (or 20 s pass).
async fn collect(
    state: &mut SharedState,
    mut until: impl FnMut(&[FromRedis]) -> bool,
) -> Vec<FromRedis> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + StdDuration::from_secs(20);
    while !until(&got) {
        match tokio::time::timeout_at(deadline, state.recv()).await {
            Ok(message) => got.push(message),
            Err(_) => panic!("waited 20 s; got {got:?}"),
        }
    }
    got
}

/// The (host, seq) of every call in `messages`.
fn calls_in(messages: &[FromRedis]) -> Vec<(String, u64)> {
    messages
        .iter()
        .filter_map(|m| match m {
            FromRedis::Batch(b) => Some(b),
            _ => None,
        })
        .flat_map(|b| b.calls.iter().map(|(seq, _)| (b.host.clone(), *seq)))
        .collect()
}

/// Whether an entry of `host` with at least `watermark` is among `messages` (a batch carries
/// its watermark in the entry of its calls; without calls it is a heartbeat).
fn heartbeat_seen(messages: &[FromRedis], host: &str, watermark: u64) -> bool {
    messages
        .iter()
        .any(|m| matches!(m, FromRedis::Batch(b) if b.host == host && b.watermark.0 >= watermark))
}

#[test]
fn a_host_s_calls_reach_the_other_once_even_when_a_batch_is_sent_again() {
    let redis = RedisServer::start(&[]);
    runtime().block_on(async {
        let config = config(&redis.url());
        let mut a = start(&config, "a");
        let mut b = start(&config, "b");
        collect(&mut a, |m| {
            m.iter().any(|m| matches!(m, FromRedis::Up { .. }))
        })
        .await;
        collect(&mut b, |m| {
            m.iter().any(|m| matches!(m, FromRedis::Up { .. }))
        })
        .await;
        a.publish(batch("a", 0..3, 100));
        // The same calls again (a reply lost, the batch sent again), and one more.
        a.publish(batch("a", 0..4, 200));
        let got = collect(&mut b, |m| heartbeat_seen(m, "a", 200)).await;
        let seqs: Vec<u64> = calls_in(&got).into_iter().map(|(_, s)| s).collect();
        assert_eq!(seqs, [0, 1, 2, 3]);
        let stats = a.stats();
        assert_eq!((stats.calls_published, stats.calls_republished), (4, 3));
        assert!(stats.up);
        // A never hears its own calls.
        a.publish(batch("a", 4..4, 300));
        b.publish(batch("b", 0..1, 300));
        let got = collect(&mut a, |m| heartbeat_seen(m, "b", 300)).await;
        assert_eq!(calls_in(&got), [("b".to_string(), 0)]);
    });
}

fn up(messages: &[FromRedis]) -> bool {
    messages.iter().any(|m| matches!(m, FromRedis::Up { .. }))
}

#[test]
fn a_flood_of_random_tokens_leaves_the_stream_within_its_length_cap() {
    let redis = RedisServer::start(&[]);
    runtime().block_on(async {
        let config = SharedConfig {
            max_stream_calls: 1000,
            max_buffered_calls: 200_000,
            ..config(&redis.url())
        };
        let mut a = start(&config, "a");
        collect(&mut a, up).await;
        // 200,000 calls, each of another token (random fingerprints).
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        for chunk in 0..200u64 {
            let calls = (0..1000u64)
                .map(|i| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let mut c = SharedCall::of(&call(1, chunk));
                    c.fingerprint = Some(TokenFingerprint(state.to_le_bytes()));
                    (chunk * 1000 + i, c)
                })
                .collect();
            a.publish(Batch {
                host: "a".into(),
                instance: 1,
                sent_at: Timestamp(chunk),
                watermark: Timestamp(chunk),
                calls,
            });
        }
        let deadline = Instant::now() + StdDuration::from_secs(120);
        // A reply lost to a timeout is sent again and found in the stream (republished).
        while a.stats().calls_published + a.stats().calls_republished < 200_000 {
            assert!(Instant::now() < deadline, "{:?}", a.stats());
            tokio::time::sleep(StdDuration::from_millis(50)).await;
        }
        let stats = a.stats();
        assert!(
            stats.stream_capped + 1000 >= stats.calls_published,
            "the calls the cap removed are counted: {stats:?}"
        );
    });
    // One entry per publication (of up to 1,000 calls): the cap keeps at most 1,000 calls,
    // and always the newest entry.
    let len: u64 = redis.query(redis::cmd("XLEN").arg("redcap-monitor:calls"));
    assert!(len <= 2, "XLEN {len}");
    let held: u64 = redis.query(redis::cmd("GET").arg("redcap-monitor:calls-count"));
    assert!(held <= 1000, "{held} calls in the stream");
    let index: u64 = redis.query(redis::cmd("LLEN").arg("redcap-monitor:calls-index"));
    assert_eq!(index, len, "one index line per entry");
    let bytes: u64 = redis.query(
        redis::cmd("MEMORY")
            .arg("USAGE")
            .arg("redcap-monitor:calls")
            .arg("SAMPLES")
            .arg("0"),
    );
    assert!(bytes < 2_000_000, "the stream holds {bytes} bytes");
    let mut keys: Vec<String> = redis.query(redis::cmd("KEYS").arg("*"));
    keys.sort();
    assert_eq!(
        keys,
        [
            "redcap-monitor:calls",
            "redcap-monitor:calls-count",
            "redcap-monitor:calls-index",
            "redcap-monitor:seq:a:1"
        ],
        "the stream, its index and count, and this host's last sequence number"
    );
}

/// Waits until `state` has published (or found already published) `calls` calls.
async fn published(state: &SharedState, calls: u64) {
    let deadline = Instant::now() + StdDuration::from_secs(20);
    while state.stats().calls_published + state.stats().calls_republished < calls {
        assert!(Instant::now() < deadline, "{:?}", state.stats());
        tokio::time::sleep(StdDuration::from_millis(10)).await;
    }
}

/// Each entry of the stream: (kind, first seq, number of calls).
fn entries(redis: &RedisServer) -> Vec<(String, Option<u64>, u64)> {
    let reply: redis::streams::StreamRangeReply = redis.query(
        redis::cmd("XRANGE")
            .arg("redcap-monitor:calls")
            .arg("-")
            .arg("+"),
    );
    let text = |e: &redis::streams::StreamId, f: &str| e.get::<String>(f);
    reply
        .ids
        .iter()
        .map(|e| {
            (
                text(e, "k").unwrap(),
                text(e, "q").map(|q| q.parse().unwrap()),
                text(e, "n").map_or(0, |n| n.parse().unwrap()),
            )
        })
        .collect()
}

#[test]
fn a_publication_is_one_entry_and_a_resent_batch_adds_only_the_calls_past_the_last() {
    let redis = RedisServer::start(&[]);
    runtime().block_on(async {
        let mut a = start(&config(&redis.url()), "a");
        collect(&mut a, up).await;
        a.publish(batch("a", 0..3, 100));
        published(&a, 3).await;
        // Sent again whole (a lost reply): nothing appended, the entry is a heartbeat.
        a.publish(batch("a", 0..3, 200));
        published(&a, 6).await;
        // Partly published before: only 3 and 4 are appended.
        a.publish(batch("a", 1..5, 300));
        published(&a, 10).await;
        let stats = a.stats();
        assert_eq!((stats.calls_published, stats.calls_republished), (5, 5));
    });
    assert_eq!(
        entries(&redis),
        [
            ("b".to_string(), Some(0), 3),
            ("b".to_string(), None, 0),
            ("b".to_string(), Some(3), 2)
        ]
    );
    let held: u64 = redis.query(redis::cmd("GET").arg("redcap-monitor:calls-count"));
    assert_eq!(held, 5);
}

#[test]
fn corrupt_entries_are_counted_and_skipped_and_the_calls_after_them_arrive() {
    let redis = RedisServer::start(&[]);
    let mut good = Vec::new();
    SharedCall::of(&call(1, 1)).encode(&mut good);
    let mut cut = good.clone();
    cut.pop();
    let mut huge = Vec::new();
    for _ in 0..2000 {
        huge.extend_from_slice(&good);
    }
    runtime().block_on(async {
        let config = config(&redis.url());
        let mut a = start(&config, "a");
        collect(&mut a, up).await;
        let base = ["k", "b", "h", "x", "i", "1", "t", "5", "w", "5", "q", "0"];
        let add = |fields: &[(&str, &[u8])]| {
            let mut cmd = redis::cmd("XADD");
            cmd.arg("redcap-monitor:calls").arg("*").arg(&base[..]);
            for (k, v) in fields {
                cmd.arg(*k).arg(*v);
            }
            let _: String = redis.query(&mut cmd);
        };
        // Ends inside its call; more calls claimed than an entry may carry; one call claimed
        // and two given; bytes that are no call; a seq past the end of the numbers.
        add(&[("n", b"1"), ("c", &cut)]);
        add(&[("n", b"2000"), ("c", &huge)]);
        add(&[("n", b"1"), ("c", &[&good[..], &good[..]].concat())]);
        add(&[("n", b"3"), ("c", &[0xff; 40])]);
        let _: String = redis.query(
            redis::cmd("XADD")
                .arg("redcap-monitor:calls")
                .arg("*")
                .arg(&["k", "b", "h", "x", "i", "1", "t", "5", "w", "5"])
                .arg(&["q", "18446744073709551615", "n", "2"])
                .arg("c")
                .arg([&good[..], &good[..]].concat()),
        );
        let mut b = start(&config, "b");
        b.publish(batch("b", 0..2, 100));
        let got = collect(&mut a, |m| heartbeat_seen(m, "b", 100)).await;
        assert_eq!(calls_in(&got), [("b".to_string(), 0), ("b".to_string(), 1)]);
        assert_eq!(a.stats().entries_rejected, 5);
    });
}

#[test]
fn old_entries_are_trimmed_by_age_with_their_calls_uncounted() {
    let redis = RedisServer::start(&[]);
    runtime().block_on(async {
        let config = SharedConfig {
            host: Some("a".into()),
            ..config(&redis.url())
        };
        let mut a = SharedState::start(&config, 1, Retention(Span::from_millis(500))).unwrap();
        collect(&mut a, up).await;
        a.publish(batch("a", 0..5, 100));
        published(&a, 5).await;
        tokio::time::sleep(StdDuration::from_millis(800)).await;
        a.publish(batch("a", 5..6, 200));
        published(&a, 6).await;
        assert_eq!(a.stats().stream_capped, 0, "trimmed by age, not by the cap");
    });
    assert_eq!(entries(&redis), [("b".to_string(), Some(5), 1)]);
    let held: u64 = redis.query(redis::cmd("GET").arg("redcap-monitor:calls-count"));
    assert_eq!(held, 1);
    let index: u64 = redis.query(redis::cmd("LLEN").arg("redcap-monitor:calls-index"));
    assert_eq!(index, 1);
}

#[test]
fn calls_made_while_redis_is_away_are_published_once_when_it_returns() {
    let mut redis = RedisServer::start(&[]);
    let rt = runtime();
    let config = config(&redis.url());
    let (mut a, mut b) = rt.block_on(async {
        let mut a = start(&config, "a");
        let mut b = start(&config, "b");
        collect(&mut a, up).await;
        collect(&mut b, up).await;
        a.publish(batch("a", 0..2, 100));
        let got = collect(&mut b, |m| heartbeat_seen(m, "a", 100)).await;
        assert_eq!(calls_in(&got).len(), 2);
        while a.stats().buffered_calls > 0 {
            tokio::time::sleep(StdDuration::from_millis(10)).await;
        }
        (a, b)
    });
    redis.stop();
    rt.block_on(async {
        a.publish(batch("a", 2..5, 200));
        let got = collect(&mut a, |m| {
            m.iter().any(|m| matches!(m, FromRedis::Down { .. }))
        })
        .await;
        assert!(!up(&got));
        // Still away: more calls wait, and heartbeats do not pile up.
        for w in 300..310 {
            a.publish(batch("a", 5..5, w));
        }
        a.publish(batch("a", 5..6, 400));
        tokio::time::sleep(StdDuration::from_millis(300)).await;
        let stats = a.stats();
        assert!(!stats.up);
        assert_eq!(stats.buffered_calls, 4);
        assert_eq!(stats.outages, 1);
    });
    redis.restart();
    rt.block_on(async {
        let got = collect(&mut a, up).await;
        assert!(
            got.iter()
                .any(|m| matches!(m, FromRedis::Up { first: false }))
        );
        let got = collect(&mut b, |m| heartbeat_seen(m, "a", 400)).await;
        let seqs: Vec<u64> = calls_in(&got).into_iter().map(|(_, s)| s).collect();
        assert_eq!(seqs, [2, 3, 4, 5], "each call once, in order");
        let stats = a.stats();
        assert_eq!((stats.calls_published, stats.buffered_calls), (6, 0));
        assert!(stats.up);
    });
}

#[test]
fn a_full_buffer_drops_the_oldest_calls_and_counts_them() {
    let redis = RedisServer::start(&[]);
    let port = redis.port;
    drop(redis);
    runtime().block_on(async {
        let config = SharedConfig {
            max_buffered_calls: 3,
            ..config(&format!("redis://127.0.0.1:{port}/0"))
        };
        let mut a = start(&config, "a");
        collect(&mut a, |m| {
            m.iter().any(|m| matches!(m, FromRedis::Down { .. }))
        })
        .await;
        a.publish(batch("a", 0..5, 100));
        tokio::time::sleep(StdDuration::from_millis(200)).await;
        let stats = a.stats();
        assert_eq!((stats.buffered_calls, stats.buffered_dropped), (3, 2));
    });
}

#[test]
fn an_acl_user_with_a_password_file_is_let_in_and_a_wrong_password_is_not() {
    let redis = RedisServer::start(&[
        "--user",
        "default",
        "off",
        "--user",
        "monitor",
        "on",
        ">s3cret-pw",
        "~redcap-monitor:*",
        "+@all",
    ]);
    let file = redis.dir().join("redis-password");
    std::fs::write(&file, "s3cret-pw\n").unwrap();
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let wrong = redis.dir().join("wrong-password");
    std::fs::write(&wrong, "nope\n").unwrap();
    std::fs::set_permissions(&wrong, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    runtime().block_on(async {
        let base = SharedConfig {
            username: Some("monitor".into()),
            password_file: Some(file.clone()),
            ..config(&redis.url())
        };
        let mut a = start(&base, "a");
        let mut b = start(&base, "b");
        collect(&mut a, up).await;
        collect(&mut b, up).await;
        a.publish(batch("a", 0..1, 100));
        let got = collect(&mut b, |m| heartbeat_seen(m, "a", 100)).await;
        assert_eq!(calls_in(&got).len(), 1);

        let mut refused = start(
            &SharedConfig {
                password_file: Some(wrong.clone()),
                ..base.clone()
            },
            "c",
        );
        let got = collect(&mut refused, |m| {
            m.iter().any(|m| matches!(m, FromRedis::Down { .. }))
        })
        .await;
        let FromRedis::Down { error } = got.last().unwrap() else {
            unreachable!()
        };
        assert!(
            !error.contains("nope"),
            "the password is not in the error: {error}"
        );
        assert!(!refused.stats().up);
    });
    // A password file others can read is refused before anything connects.
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let open = SharedConfig {
        username: Some("monitor".into()),
        password_file: Some(file),
        ..config(&redis.url())
    };
    let err = runtime()
        .block_on(async { SharedState::start(&open, 1, Retention(Span::from_secs(60))).err() })
        .expect("refused");
    assert!(err.to_string().contains("chmod o-rwx"), "{err}");
}

#[test]
fn a_suspension_announced_by_one_host_reaches_the_others_and_a_host_starting_later() {
    let redis = RedisServer::start(&[]);
    let note = SuspensionNote {
        token: TokenFingerprint([7; 8]),
        until: Some(u64::MAX / 2),
        since: 1,
        reason: "api_calls: 4 calls in 60s".into(),
        origin: "a".into(),
        lifted: false,
    };
    runtime().block_on(async {
        let config = config(&redis.url());
        let mut a = start(&config, "a");
        let mut b = start(&config, "b");
        collect(&mut a, up).await;
        collect(&mut b, up).await;
        a.announce(note.clone());
        let got = collect(&mut b, |m| {
            m.iter().any(|m| matches!(m, FromRedis::Suspension(_)))
        })
        .await;
        assert!(
            got.iter()
                .any(|m| matches!(m, FromRedis::Suspension(n) if *n == note))
        );
        // A host starting now loads it from the hash (and hears it on the stream too).
        let mut c = start(&config, "c");
        let got = collect(&mut c, up).await;
        assert!(
            got.iter()
                .any(|m| matches!(m, FromRedis::Suspension(n) if *n == note)),
            "loaded before Up: {got:?}"
        );
        // Lifted: gone from the hash.
        a.announce(SuspensionNote {
            lifted: true,
            ..note.clone()
        });
        collect(&mut b, |m| {
            m.iter()
                .any(|m| matches!(m, FromRedis::Suspension(n) if n.lifted))
        })
        .await;
    });
    let left: u64 = redis.query(redis::cmd("HLEN").arg("redcap-monitor:suspensions"));
    assert_eq!(left, 0);
}

#[test]
fn rediss_with_a_private_ca_carries_the_calls() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let certs = tempfile::tempdir().unwrap();
    let path = |name: &str| certs.path().join(name);
    let openssl = |args: &[&str]| {
        let status = Command::new("openssl")
            .args(args)
            .current_dir(certs.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "openssl {args:?}");
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=test redis CA",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(
        path("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    let port_text = port.to_string();
    let cert = path("server.pem");
    let key = path("server.key");
    let ca = path("ca.pem");
    let redis = RedisServer::start(&[
        "--tls-port",
        &port_text,
        "--tls-cert-file",
        cert.to_str().unwrap(),
        "--tls-key-file",
        key.to_str().unwrap(),
        "--tls-ca-cert-file",
        ca.to_str().unwrap(),
        "--tls-auth-clients",
        "no",
    ]);
    runtime().block_on(async {
        let config = SharedConfig {
            ca_file: Some(ca.clone()),
            ..config(&format!("rediss://localhost:{port}/0"))
        };
        let mut a = start(&config, "a");
        let mut b = start(&config, "b");
        collect(&mut a, up).await;
        collect(&mut b, up).await;
        a.publish(batch("a", 0..2, 100));
        let got = collect(&mut b, |m| heartbeat_seen(m, "a", 100)).await;
        assert_eq!(calls_in(&got).len(), 2);
        // Without the CA, the server's certificate is not trusted.
        let untrusted = SharedConfig {
            ca_file: None,
            ..config.clone()
        };
        let mut c = start(&untrusted, "c");
        collect(&mut c, |m| {
            m.iter().any(|m| matches!(m, FromRedis::Down { .. }))
        })
        .await;
    });
    drop(redis);
}

/// A Redis Sentinel (`redis-server --sentinel`) watching `master` as "mymaster"; killed on drop.
struct Sentinel {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Sentinel {
    fn start(master: &RedisServer) -> Sentinel {
        Sentinel::start_with(master, "")
    }

    /// With more `sentinel` lines after `monitor` (e.g. a short down-after-milliseconds).
    fn start_with(master: &RedisServer, more: &str) -> Sentinel {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        // Sentinel rewrites its configuration file: it must be its own and writable.
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "bind 127.0.0.1\nport {port}\ndir {}\n\
                 sentinel monitor mymaster 127.0.0.1 {} 1\n{more}",
                dir.path().display(),
                master.port
            ),
        )
        .unwrap();
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server --sentinel");
        let deadline = Instant::now() + StdDuration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "sentinel did not start");
            std::thread::sleep(StdDuration::from_millis(20));
        }
        Sentinel {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn hosts_find_redis_through_sentinel() {
    let redis = RedisServer::start(&[]);
    let sentinel = Sentinel::start(&redis);
    runtime().block_on(async {
        // `url` is unused with sentinels: a port nobody listens on shows it is not the way in.
        let config = SharedConfig {
            sentinels: vec![format!("127.0.0.1:{}", sentinel.port)],
            ..config("redis://127.0.0.1:1/0")
        };
        let mut a = start(&config, "a");
        let mut b = start(&config, "b");
        collect(&mut a, up).await;
        collect(&mut b, up).await;
        a.publish(batch("a", 0..2, 100));
        let got = collect(&mut b, |m| heartbeat_seen(m, "a", 100)).await;
        assert_eq!(calls_in(&got), [("a".to_string(), 0), ("a".to_string(), 1)]);
    });
    // The calls went to the master the sentinel named.
    let held: u64 = redis.query(redis::cmd("GET").arg("redcap-monitor:calls-count"));
    assert!(held >= 2, "{held} calls in the stream");
}

/// Waits (up to 30 s) for `done`, saying `what` when it does not come.
fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + StdDuration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "waited 30 s for {what}");
        std::thread::sleep(StdDuration::from_millis(50));
    }
}

/// A command to the Sentinel on `port`.
fn ask_sentinel<T: redis::FromRedisValue>(
    port: u16,
    cmd: &mut redis::Cmd,
) -> redis::RedisResult<T> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    cmd.query(&mut client.get_connection()?)
}

#[test]
fn hosts_go_on_sharing_through_the_replica_sentinel_promotes_when_the_master_dies() {
    sentinel_failover(Failover::MasterKilled);
}

#[test]
fn hosts_go_on_sharing_through_the_new_master_after_sentinel_failover_demotes_the_old() {
    sentinel_failover(Failover::Asked);
}

enum Failover {
    /// The master's process is killed; the Sentinel finds it down and promotes the replica.
    MasterKilled,
    /// `SENTINEL FAILOVER mymaster`: the master, still running, becomes the new one's replica
    /// (the hosts' connections to it are closed; writes there are refused `READONLY`).
    Asked,
}

/// Two hosts share through a master, a replica and a Sentinel; after the failover the calls
/// and a suspension published go through the new master.
fn sentinel_failover(how: Failover) {
    let mut master = RedisServer::start(&[]);
    let master_port = master.port.to_string();
    let replica = RedisServer::start(&["--replicaof", "127.0.0.1", &master_port]);
    let info =
        |server: &RedisServer| -> String { server.query(redis::cmd("INFO").arg("replication")) };
    wait_for("the replica to sync", || {
        info(&replica).contains("master_link_status:up")
    });
    let sentinel = Sentinel::start_with(
        &master,
        "sentinel down-after-milliseconds mymaster 1000\nsentinel failover-timeout mymaster 5000\n",
    );
    wait_for("the sentinel to know the replica", || {
        ask_sentinel::<Vec<redis::Value>>(
            sentinel.port,
            redis::cmd("SENTINEL").arg("REPLICAS").arg("mymaster"),
        )
        .is_ok_and(|r| r.len() == 1)
    });
    let config = SharedConfig {
        sentinels: vec![format!("127.0.0.1:{}", sentinel.port)],
        ..config("redis://127.0.0.1:1/0")
    };
    let note = |lifted: bool| SuspensionNote {
        token: TokenFingerprint([9; 8]),
        until: Some(u64::MAX / 2),
        since: 1,
        reason: "api_calls: 4 calls in 60s".into(),
        origin: "a".into(),
        lifted,
    };
    let rt = runtime();
    let (mut a, mut b) = rt.block_on(async {
        let mut a = start(&config, "a");
        let mut b = start(&config, "b");
        collect(&mut a, up).await;
        collect(&mut b, up).await;
        a.publish(batch("a", 0..2, 100));
        let got = collect(&mut b, |m| heartbeat_seen(m, "a", 100)).await;
        assert_eq!(calls_in(&got), [("a".to_string(), 0), ("a".to_string(), 1)]);
        (a, b)
    });
    // Replicated before the master dies (asynchronous replication: what is not, is lost with
    // it; README, High availability with Sentinel).
    let acked: i64 = master.query(redis::cmd("WAIT").arg(1).arg(5000));
    assert_eq!(acked, 1, "the replica has the calls");
    match how {
        Failover::MasterKilled => master.stop(),
        // Refused (NOGOODSLAVE) until the Sentinel has heard from the replica itself.
        Failover::Asked => wait_for("the sentinel to begin a failover", || {
            ask_sentinel::<String>(
                sentinel.port,
                redis::cmd("SENTINEL").arg("FAILOVER").arg("mymaster"),
            )
            .is_ok()
        }),
    }
    wait_for("the sentinel to promote the replica", || {
        ask_sentinel::<Vec<String>>(
            sentinel.port,
            redis::cmd("SENTINEL")
                .arg("GET-MASTER-ADDR-BY-NAME")
                .arg("mymaster"),
        )
        .is_ok_and(|addr| addr.get(1) == Some(&replica.port.to_string()))
    });
    assert!(info(&replica).contains("role:master"));
    if let Failover::Asked = how {
        wait_for("the old master to follow the new one", || {
            master
                .try_query::<String>(redis::cmd("INFO").arg("replication"))
                .is_ok_and(|info| info.contains("role:slave"))
        });
    }
    rt.block_on(async {
        // Calls after the failover, and a suspension; both hosts beat as the daemon's loop does
        // (every shared.heartbeat), which is how an idle host finds its server gone.
        a.publish(batch("a", 2..4, 200));
        a.announce(note(false));
        let mut heard_a = Vec::new();
        let mut heard_b = Vec::new();
        let deadline = tokio::time::Instant::now() + StdDuration::from_secs(30);
        let mut beat = tokio::time::interval(StdDuration::from_millis(250));
        while !(heartbeat_seen(&heard_b, "a", 200)
            && heard_b
                .iter()
                .any(|m| matches!(m, FromRedis::Suspension(n) if *n == note(false))))
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "b after the failover: {heard_b:?}; a: {heard_a:?}"
            );
            tokio::select! {
                m = b.recv() => heard_b.push(m),
                m = a.recv() => heard_a.push(m),
                _ = beat.tick() => {
                    a.publish(batch("a", 4..4, 200));
                    b.publish(batch("b", 0..0, 150));
                }
            }
        }
        assert_eq!(
            calls_in(&heard_b),
            [("a".to_string(), 2), ("a".to_string(), 3)],
            "each call after the failover once, none before it again"
        );
        // The failover is an outage like Redis going away: lost, then restored (the Up follows
        // the first publication to the new master; a moment later when it was the last one).
        let restored = |heard: &[FromRedis]| {
            let last_down = heard
                .iter()
                .rposition(|m| matches!(m, FromRedis::Down { .. }));
            last_down.is_none_or(|d| heard[d..].iter().any(|m| matches!(m, FromRedis::Up { .. })))
        };
        let (mut heard_a, mut heard_b) = (heard_a, heard_b);
        for (heard, state) in [(&mut heard_a, &mut a), (&mut heard_b, &mut b)] {
            while let Some(m) = state.try_recv() {
                heard.push(m);
            }
            if !restored(heard) {
                let more = collect(state, up).await;
                heard.extend(more);
            }
        }
        for (name, heard, state) in [("a", &heard_a, &a), ("b", &heard_b, &b)] {
            let downs = heard
                .iter()
                .filter(|m| matches!(m, FromRedis::Down { .. }))
                .count();
            let ups = heard
                .iter()
                .filter(|m| matches!(m, FromRedis::Up { first: false }))
                .count();
            let stats = state.stats();
            assert!(
                downs >= 1 && ups == downs && stats.outages == downs as u64 && stats.up,
                "{name}: {heard:?} {stats:?}"
            );
            assert!(
                !heard
                    .iter()
                    .any(|m| matches!(m, FromRedis::Up { first: true })),
                "{name}: {heard:?}"
            );
        }
        let stats = a.stats();
        assert_eq!(
            (
                stats.calls_published,
                stats.calls_republished,
                stats.buffered_calls
            ),
            (4, 0, 0)
        );
        // A host starting after the failover finds the suspension in the new master's hash.
        let mut c = start(&config, "c");
        let got = collect(&mut c, up).await;
        assert!(
            got.iter()
                .any(|m| matches!(m, FromRedis::Suspension(n) if *n == note(false))),
            "{got:?}"
        );
    });
    let last: String = replica.query(redis::cmd("GET").arg("redcap-monitor:seq:a:1"));
    assert_eq!(last, "3", "the new master holds a's calls");
    drop(sentinel);
}

#[test]
fn a_peer_s_calls_make_this_host_s_watermark_due_at_once() {
    let redis = RedisServer::start(&[]);
    runtime().block_on(async {
        let config = SharedConfig {
            heartbeat: Duration(Span::from_secs(3600)),
            ..config(&redis.url())
        };
        let mut a = start(&config, "a");
        a.publish(batch("a", 0..0, 100));
        assert!(
            !a.due(false, Timestamp(200)),
            "the heartbeat is an hour away"
        );
        a.owe_watermark();
        assert!(
            a.due(false, Timestamp(200)),
            "a peer waits for the watermark"
        );
        a.publish(batch("a", 0..0, 200));
        assert!(!a.due(false, Timestamp(300)), "answered");
    });
}

#[test]
fn the_section_s_problems_name_their_keys() {
    let text = "[shared]\nurl = \"http://x\"\nheartbeat = \"10s\"\npeer_timeout = \"5s\"\n\
                host = \"web 1\"\nmax_buffered_calls = 0\n";
    let err = crate::commands::config::Config::parse(text, std::path::Path::new("c.toml"))
        .unwrap_err()
        .to_string();
    for key in [
        "shared.url",
        "shared.peer_timeout",
        "shared.host",
        "shared.max_buffered_calls",
    ] {
        assert!(err.contains(key), "{key} in {err}");
    }
    let ok = crate::commands::config::Config::parse(
        "[shared]\nurl = \"rediss://redis.example:6380/2\"\nhost = \"web1\"\n",
        std::path::Path::new("c.toml"),
    )
    .unwrap();
    let shared = ok.shared.unwrap();
    assert_eq!(shared.host_name(), "web1");
    assert_eq!(shared.peer_timeout, Duration(Span::from_secs(5)));
    let alone = crate::commands::config::Config::parse("", std::path::Path::new("c.toml")).unwrap();
    assert!(alone.shared.is_none(), "no section, no Redis");
    let err = crate::commands::config::Config::parse(
        "[shared]\nsentinels = [\"10.0.0.5:26379\"]\nsentinel_master = \"\"\nbogus = 1\n",
        std::path::Path::new("c.toml"),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("bogus"), "{err}");
}

#[test]
fn two_pipelines_sharing_through_redis_find_the_violations_of_one_pipeline_seeing_all() {
    use crate::commands::config::Config;
    use crate::shared::model::Endpoint;
    use crate::shared::token::SiteKey;
    use crate::stages::cluster::ClusterConfig;
    use crate::stages::pipeline::Pipeline;
    use crate::stages::pipeline::sample::{CLIENT, request_by, segment_from, violations};
    use crate::stages::policy::Verdict;

    let redis = RedisServer::start(&[]);
    let response = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n14.0";
    // 14 calls of two tokens over 70 s, answered 5 ms later, served by hosts in no pattern.
    let calls: Vec<(u64, usize, usize)> = (0..14u64)
        .map(|i| (i * 5_000, (i % 3 == 0) as usize, ((i * 7) % 3 % 2) as usize))
        .collect();
    let mut packets = Vec::new();
    for (i, &(t, _, host)) in calls.iter().enumerate() {
        packets.push((t, host, i, true));
        packets.push((t + 5, host, i, false));
    }
    packets.sort();
    let segment = |&(t, _, i, is_request): &(u64, usize, usize, bool)| {
        let (_, token, _) = calls[i];
        let client = Endpoint {
            port: 42000 + i as u16,
            ..CLIENT
        };
        let request = request_by(token, "version");
        let bytes: Vec<u8> = if is_request {
            request.into_bytes()
        } else {
            response.to_vec()
        };
        (t, client, is_request, bytes)
    };
    let key = SiteKey::from_bytes([9; 32]);
    let daemon = Config::default();
    let mut alone = Pipeline::new(daemon.pipeline(), key.clone());
    let mut all = Vec::new();
    for packet in &packets {
        let (t, client, is_request, bytes) = segment(packet);
        let (seq, to_server) = if is_request {
            (1000, true)
        } else {
            (5000, false)
        };
        alone.push_segment(&segment_from(client, t, to_server, seq, &bytes), &mut |v| {
            all.push(v)
        });
    }
    alone.finish(&mut |v| all.push(v));
    let expected = violations(&all);
    assert!(expected.len() >= 5, "{expected:?}");

    let base = Timestamp(1_700_000_000_000_000_000);
    runtime().block_on(async {
        let shared_config = config(&redis.url());
        let mut hosts: Vec<(Pipeline, SharedState)> = (0..2)
            .map(|i| {
                let name = format!("web{i}");
                let mut pipeline = Pipeline::new(daemon.pipeline(), key.clone());
                pipeline.share_with_peers(ClusterConfig {
                    host: name.clone(),
                    instance: 1,
                    peer_timeout: Span::from_secs(5),
                });
                (pipeline, start(&shared_config, &name))
            })
            .collect();
        for (_, state) in &mut hosts {
            collect(state, up).await;
        }
        let mut served: [Vec<Verdict>; 2] = [Vec::new(), Vec::new()];
        // Both hosts publish at `now`, then each takes what the other published up to then.
        async fn exchange(
            hosts: &mut [(Pipeline, SharedState)],
            served: &mut [Vec<Verdict>; 2],
            now: Timestamp,
        ) {
            for (pipeline, state) in hosts.iter_mut() {
                let batch = pipeline.take_batch().unwrap();
                state.publish(batch);
            }
            for (i, (pipeline, state)) in hosts.iter_mut().enumerate() {
                let other = format!("web{}", 1 - i);
                let deadline = tokio::time::Instant::now() + StdDuration::from_secs(20);
                loop {
                    let message = tokio::time::timeout_at(deadline, state.recv())
                        .await
                        .expect("the other host's heartbeat");
                    let FromRedis::Batch(batch) = message else {
                        continue;
                    };
                    let done = batch.host == other && batch.sent_at >= now;
                    pipeline.receive_from_peer(batch, now, &mut |v| served[i].push(v));
                    if done {
                        break;
                    }
                }
            }
        }
        for packet in &packets {
            let (t, client, is_request, bytes) = segment(packet);
            let (seq, to_server) = if is_request {
                (1000, true)
            } else {
                (5000, false)
            };
            let now = base.plus(Span::from_millis(t));
            let host = packet.1;
            let (pipeline, _) = &mut hosts[host];
            pipeline.push_segment(&segment_from(client, t, to_server, seq, &bytes), &mut |v| {
                served[host].push(v)
            });
            hosts[1 - host]
                .0
                .tick(now, &mut |v| served[1 - host].push(v));
            exchange(&mut hosts, &mut served, now).await;
        }
        let end = base.plus(Span::from_secs(200));
        for (i, (pipeline, _)) in hosts.iter_mut().enumerate() {
            pipeline.tick(end, &mut |v| served[i].push(v));
        }
        exchange(&mut hosts, &mut served, end).await;
        for (i, (pipeline, _)) in hosts.iter_mut().enumerate() {
            pipeline.finish(&mut |v| served[i].push(v));
            assert_eq!(pipeline.stats().policy.late_peer_calls, 0);
        }
        let mut both = served[0].clone();
        both.extend(served[1].iter().cloned());
        assert_eq!(
            both.len(),
            calls.len(),
            "one verdict per call, where it was served"
        );
        assert_eq!(violations(&both), expected);
    });
}
