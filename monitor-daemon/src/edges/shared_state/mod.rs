//! Shared state across several web hosts through Redis (`[shared]`).
//!
//! Owns the `[shared]` section, the connection to Redis (a redis-rs `ConnectionManager`, plain,
//! `rediss://` or found through Sentinel; an ACL user and a password from a secret file), and
//! the task that carries the cluster stage's batches and the suspensions: this host's calls are
//! published to one stream, a batch per entry in the calls' compact binary form (a Lua script
//! that appends past the host's last sequence number only, and trims the stream by time and to
//! `max_stream_calls` calls), the stream is read back (`XREAD BLOCK`) into
//! [`FromRedis`] messages, and suspensions go to a hash and the stream. While Redis is away,
//! calls wait in a bounded buffer and the loop hears [`FromRedis::Down`] once.
//! Never writes a raw token (calls travel as [`SharedCall`]: fingerprints), and never decides:
//! the pipeline's cluster stage merges what comes in, and the loop in `commands::run` acts.

mod io;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::shared::model::{Span, Timestamp};
use crate::shared::settings::{Duration, Problem, at_least_one, longer_than_zero};
use crate::shared::token::TokenFingerprint;
use crate::stages::cluster::Batch;
use crate::stages::pipeline::Pipeline;

/// `[shared]`: where the hosts of one REDCap share their windows and suspensions.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SharedConfig {
    /// `redis://host:port/db`, `rediss://…` (TLS) or `redis+unix:///path/redis.sock`.
    pub url: String,
    /// Redis Sentinel addresses (`host:port`): the master `sentinel_master` is asked of them,
    /// and `url` only gives the database number and TLS.
    pub sentinels: Vec<String>,
    pub sentinel_master: String,
    /// The ACL user (Redis 6+), if not `default`.
    pub username: Option<String>,
    /// File holding the password on its first line (secret-file rules).
    pub password_file: Option<PathBuf>,
    /// The CA certificate (PEM) for `rediss://`, when not in the OS trust store.
    pub ca_file: Option<PathBuf>,
    /// This host's name in the cluster (default: the machine's host name).
    pub host: Option<String>,
    /// Prefix of every key: two REDCap instances may share one Redis.
    pub key_prefix: String,
    /// A host publishes its watermark at least this often when idle.
    pub heartbeat: Duration,
    /// A peer silent for this long holds nothing back (alert `shared_peer_lost`).
    pub peer_timeout: Duration,
    /// Longest wait for one Redis command.
    pub timeout: Duration,
    /// Calls kept while Redis is away; past it the oldest are dropped, counted.
    pub max_buffered_calls: usize,
    /// Hard cap of the calls the stream holds, whatever their age (the oldest entries go).
    pub max_stream_calls: usize,
}

impl Default for SharedConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379/0".into(),
            sentinels: Vec::new(),
            sentinel_master: "mymaster".into(),
            username: None,
            password_file: None,
            ca_file: None,
            host: None,
            key_prefix: "redcap-monitor:".into(),
            heartbeat: Duration(Span::from_millis(250)),
            peer_timeout: Duration(Span::from_secs(5)),
            timeout: Duration(Span::from_millis(500)),
            max_buffered_calls: 100_000,
            max_stream_calls: 1_000_000,
        }
    }
}

impl SharedConfig {
    pub(crate) fn problems(&self) -> Vec<Problem> {
        let key = |field: &str| format!("shared.{field}");
        let mut problems = Vec::new();
        if self.sentinels.is_empty() {
            let scheme = self.url.split("://").next().unwrap_or("");
            if !matches!(scheme, "redis" | "rediss" | "redis+unix" | "unix")
                || !self.url.contains("://")
            {
                problems.push(Problem::new(
                    key("url"),
                    "must be redis://host:port/db, rediss://host:port/db or redis+unix:///path"
                        .into(),
                ));
            } else if let Err(err) = redis::Client::open(self.url.as_str()) {
                problems.push(Problem::new(key("url"), format!("cannot be used: {err}")));
            }
        } else if self.sentinel_master.trim().is_empty() {
            problems.push(Problem::new(
                key("sentinel_master"),
                "must name the master the sentinels watch, e.g. \"mymaster\"".into(),
            ));
        }
        if let Some(host) = &self.host
            && (host.is_empty() || host.len() > 255 || host.contains(char::is_whitespace))
        {
            problems.push(Problem::new(
                key("host"),
                "must be a short name without spaces, e.g. \"web1\"".into(),
            ));
        }
        if self.key_prefix.contains(char::is_whitespace) {
            problems.push(Problem::new(
                key("key_prefix"),
                "must not contain spaces".into(),
            ));
        }
        longer_than_zero(
            &mut problems,
            &[
                ("shared.heartbeat", self.heartbeat),
                ("shared.peer_timeout", self.peer_timeout),
                ("shared.timeout", self.timeout),
            ],
            "500ms",
        );
        if self.heartbeat.span() >= self.peer_timeout.span() {
            problems.push(Problem::new(
                key("peer_timeout"),
                format!(
                    "must be longer than shared.heartbeat ({}), or every peer looks lost between two heartbeats",
                    self.heartbeat
                ),
            ));
        }
        at_least_one(
            &mut problems,
            &[
                ("shared.max_buffered_calls", self.max_buffered_calls as u64),
                ("shared.max_stream_calls", self.max_stream_calls as u64),
            ],
        );
        problems
    }

    /// This host's name: `host`, or the machine's.
    pub(crate) fn host_name(&self) -> String {
        self.host
            .clone()
            .unwrap_or_else(crate::edges::alerts::host_name)
    }
}

/// A suspension begun or lifted on one host, for every other host's enforcer (the hash holds
/// those in force; the stream announces each change).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SuspensionNote {
    pub(crate) token: TokenFingerprint,
    /// Nanoseconds since the epoch; `None`: until lifted.
    pub(crate) until: Option<u64>,
    pub(crate) since: u64,
    pub(crate) reason: String,
    /// The host that decided it (or where the admin asked).
    pub(crate) origin: String,
    /// True for a lift.
    #[serde(default)]
    pub(crate) lifted: bool,
}

/// What the Redis task tells the loop.
#[derive(Debug)]
pub enum FromRedis {
    /// One entry of the stream: a peer's call or heartbeat (or this host's previous instance's,
    /// read back at start).
    Batch(Batch),
    /// A suspension or lift from another host (or one in force, loaded from the hash).
    Suspension(SuspensionNote),
    /// Redis answers (again): `first` on the first connection since start.
    Up { first: bool },
    /// Redis does not answer: the host goes on alone, buffering its calls.
    Down { error: String },
}

/// What the loop gives the Redis task.
#[derive(Debug)]
enum ToRedis {
    Batch(Batch),
    Suspension(SuspensionNote),
}

/// Counters of the Redis edge (shared with its task).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SharedStats {
    pub(crate) up: bool,
    pub calls_published: u64,
    /// Calls a retried publish found in the stream already (not appended twice).
    pub(crate) calls_republished: u64,
    /// Calls waiting for Redis now.
    pub(crate) buffered_calls: u64,
    /// Calls dropped from a full buffer (`shared.max_buffered_calls`).
    pub(crate) buffered_dropped: u64,
    /// Calls removed from the stream by its cap (`shared.max_stream_calls`), not by age.
    pub(crate) stream_capped: u64,
    /// Stream entries that could not be read (not this version's format, or corrupt): skipped.
    pub(crate) entries_rejected: u64,
    pub(crate) suspensions_published: u64,
    pub(crate) suspensions_received: u64,
    /// Times Redis went away.
    pub(crate) outages: u64,
    /// The last error Redis gave, for `status`.
    pub(crate) last_error: Option<String>,
}

/// Why the shared state cannot start.
#[derive(Debug, thiserror::Error)]
pub enum SharedStateError {
    #[error("shared.password_file {path}: {source}")]
    Password {
        path: PathBuf,
        source: crate::shared::secret_file::SecretFileError,
    },
    #[error("shared.ca_file {path}: {source}")]
    CaFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("shared.url: {0}")]
    Url(String),
}

/// The handle the loop holds: channels to and from the Redis task, which ends when this is
/// dropped.
pub struct SharedState {
    host: String,
    instance: u64,
    /// `None` once closing: the task publishes what waits and ends.
    to_redis: Option<mpsc::UnboundedSender<ToRedis>>,
    from_redis: mpsc::Receiver<FromRedis>,
    stats: Arc<Mutex<SharedStats>>,
    heartbeat: Span,
    last_sent: Timestamp,
    /// A peer published calls since this host's last batch: its judgement of them waits for
    /// this host's watermark, so the next batch goes at once rather than at the heartbeat.
    watermark_owed: bool,
    task: tokio::task::JoinHandle<()>,
}

/// How long a host's calls stay in the stream: the longest rule window plus the reorder wait
/// (what a restarted host reads back to rebuild its windows).
#[derive(Clone, Copy, Debug)]
pub struct Retention(pub Span);

impl SharedState {
    /// Reads the secrets and starts the Redis task on the current tokio runtime. Connecting is
    /// the task's job: a Redis that is away at start is a [`FromRedis::Down`], not an error.
    pub fn start(
        config: &SharedConfig,
        instance: u64,
        retention: Retention,
    ) -> Result<SharedState, SharedStateError> {
        let connector = io::Connector::new(config)?;
        let host = config.host_name();
        let stats = Arc::new(Mutex::new(SharedStats::default()));
        let (to_redis, rx) = mpsc::unbounded_channel();
        let (tx, from_redis) = mpsc::channel(1024);
        let settings = io::Settings {
            host: host.clone(),
            instance,
            prefix: config.key_prefix.clone(),
            retention: retention.0,
            timeout: std::time::Duration::from_nanos(config.timeout.span().0),
            max_buffered: config.max_buffered_calls.max(1),
            max_stream: config.max_stream_calls.max(1),
        };
        let task = tokio::spawn(io::run(connector, settings, rx, tx, stats.clone()));
        Ok(SharedState {
            host,
            instance,
            to_redis: Some(to_redis),
            from_redis,
            stats,
            heartbeat: config.heartbeat.span(),
            last_sent: Timestamp::default(),
            watermark_owed: false,
            task,
        })
    }

    pub(crate) fn host(&self) -> &str {
        &self.host
    }

    pub fn instance(&self) -> u64 {
        self.instance
    }

    /// Whether a batch is due at `now`: calls wait, a peer waits for this host's watermark, or
    /// the heartbeat interval has passed.
    pub fn due(&self, has_calls: bool, now: Timestamp) -> bool {
        has_calls || self.watermark_owed || self.last_sent.plus(self.heartbeat) <= now
    }

    /// A peer's batch with calls came in: answer with this host's watermark at once.
    /// ([`recv`](Self::recv) and [`try_recv`](Self::try_recv) call it for every such batch.)
    pub(crate) fn owe_watermark(&mut self) {
        self.watermark_owed = true;
    }

    /// Publishes the pipeline's calls (or a heartbeat with its watermark) when [`due`](Self::due):
    /// what the live loop does after taking input or a peer's batch, and each tick.
    pub fn publish_due(&mut self, pipeline: &mut Pipeline, now: Timestamp) {
        if self.due(pipeline.has_batch(), now)
            && let Some(batch) = pipeline.take_batch()
        {
            self.publish(batch);
        }
    }

    /// Hands this host's batch (calls and watermark) to the Redis task.
    pub fn publish(&mut self, batch: Batch) {
        self.last_sent = batch.sent_at;
        self.watermark_owed = false;
        if let Some(to_redis) = &self.to_redis {
            let _ = to_redis.send(ToRedis::Batch(batch));
        }
    }

    /// Announces a suspension begun or lifted here to the other hosts.
    pub(crate) fn announce(&mut self, note: SuspensionNote) {
        if let Some(to_redis) = &self.to_redis {
            let _ = to_redis.send(ToRedis::Suspension(note));
        }
    }

    /// The next message from Redis (for `select!`); waits forever once the task has ended.
    /// A peer's batch with calls makes this host's watermark due at once (the peer's judgement
    /// of those calls waits for it).
    pub async fn recv(&mut self) -> FromRedis {
        match self.from_redis.recv().await {
            Some(message) => self.heard(message),
            None => std::future::pending().await,
        }
    }

    /// A message from Redis if one waits.
    pub fn try_recv(&mut self) -> Option<FromRedis> {
        let message = self.from_redis.try_recv().ok()?;
        Some(self.heard(message))
    }

    fn heard(&mut self, message: FromRedis) -> FromRedis {
        if let FromRedis::Batch(batch) = &message
            && !batch.calls.is_empty()
        {
            self.owe_watermark();
        }
        message
    }

    pub fn stats(&self) -> SharedStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl SharedState {
    /// Stopping: publishes what waits (if Redis answers) within `within`, then ends the task.
    pub(crate) async fn close(mut self, within: std::time::Duration) {
        self.to_redis = None;
        let _ = tokio::time::timeout(within, &mut self.task).await;
    }
}

impl Drop for SharedState {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests;
