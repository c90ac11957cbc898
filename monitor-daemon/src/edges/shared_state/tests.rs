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
    pub port: u16,
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
        let client = redis::Client::open(self.url()).unwrap();
        let mut conn = client.get_connection().unwrap();
        cmd.query(&mut conn).unwrap()
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
        timeout: Duration(Span::from_millis(300)),
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

/// Whether a heartbeat of `host` with at least `watermark` is among `messages`.
fn heartbeat_seen(messages: &[FromRedis], host: &str, watermark: u64) -> bool {
    messages.iter().any(|m| {
        matches!(m, FromRedis::Batch(b) if b.host == host && b.calls.is_empty()
            && b.watermark.0 >= watermark)
    })
}

#[test]
fn a_host_s_calls_reach_the_other_once_even_when_a_batch_is_sent_again() {
    let redis = RedisServer::start(&[]);
    runtime().block_on(async {
        let config = config(&redis.url());
        let mut a = start(&config, "a");
        let mut b = start(&config, "b");
        collect(&mut a, |m| m.iter().any(|m| matches!(m, FromRedis::Up { .. }))).await;
        collect(&mut b, |m| m.iter().any(|m| matches!(m, FromRedis::Up { .. }))).await;
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
