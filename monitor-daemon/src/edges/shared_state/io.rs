//! The Redis task: connects (and reconnects), publishes this host's batches and suspensions,
//! reads the stream and the suspension hash. Its state is the buffer of calls not yet in Redis.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::streams::{StreamId, StreamRangeReply, StreamReadOptions, StreamReadReply};
use redis::{AsyncCommands, Client, Script, Value};
use tokio::sync::mpsc;

use super::{FromRedis, SharedConfig, SharedStateError, SharedStats, SuspensionNote, ToRedis};
use crate::shared::model::{Span, Timestamp};
use crate::shared::secret_file::read_secret_text;
use crate::stages::cluster::{Batch, MAX_CALLS_PER_ENTRY, SharedCall};

/// Calls per publish (one script run, one stream entry): bounds one command's size after a long
/// outage, and what a reader takes from one entry.
const CHUNK: usize = MAX_CALLS_PER_ENTRY;
/// How long one `XREAD` waits for new entries.
const BLOCK: Duration = Duration::from_millis(1000);
/// Entries per read.
const READ_COUNT: usize = 1000;
/// Wait between attempts to reach a Redis that is away.
const RETRY: Duration = Duration::from_millis(500);
/// Largest text field taken from a peer (a suspension's JSON is a few hundred bytes); an entry's
/// calls are bounded by [`MAX_CALLS_PER_ENTRY`] and [`MAX_ENCODED_CALL`] instead.
const MAX_FIELD_BYTES: usize = 4096;

/// Appends a host's calls past its last published sequence number as ONE stream entry (a batch
/// sent again after a lost reply is not appended twice; of one partly published, only the rest),
/// with the host's watermark (a reader that has the entry has every call before it: the script
/// is atomic; without calls the entry is a heartbeat). Each entry's id and number of calls go to
/// an index list, so the stream is trimmed exactly: by age (the ids are Redis's own clock) and
/// so that it holds at most `max_stream_calls` calls (always keeping the entry just written).
/// KEYS: stream, the host's last seq, the index, the count of calls in the stream.
/// ARGV: host, instance, retention ms, max calls, seq key expiry ms, sent at, watermark, then
/// (seq, encoded call) pairs in ascending seq order.
/// Returns {appended, already there, calls trimmed by the length cap}.
const PUBLISH: &str = r"
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local min_ms = math.max(now_ms - tonumber(ARGV[3]), 0)
local minid = tostring(min_ms)
local last = tonumber(redis.call('GET', KEYS[2]) or '-1')
local parts, first, skipped = {}, -1, 0
for a = 8, #ARGV, 2 do
  local seq = tonumber(ARGV[a])
  if seq > last then
    if first < 0 then first = seq end
    parts[#parts + 1] = ARGV[a + 1]
    last = seq
  else
    skipped = skipped + 1
  end
end
if last >= 0 then
  redis.call('SET', KEYS[2], tostring(last), 'PX', ARGV[5])
end
local id
if #parts > 0 then
  id = redis.call('XADD', KEYS[1], 'MINID', '~', minid, '*', 'k', 'b', 'h', ARGV[1],
    'i', ARGV[2], 't', ARGV[6], 'w', ARGV[7], 'q', tostring(first), 'n', tostring(#parts),
    'c', table.concat(parts))
else
  id = redis.call('XADD', KEYS[1], 'MINID', '~', minid, '*', 'k', 'b', 'h', ARGV[1],
    'i', ARGV[2], 't', ARGV[6], 'w', ARGV[7], 'n', '0')
end
redis.call('RPUSH', KEYS[3], id .. ' ' .. #parts)
local total = tonumber(redis.call('GET', KEYS[4]) or '0') + #parts
local max = tonumber(ARGV[4])
local capped, cut = 0, false
while true do
  local head = redis.call('LINDEX', KEYS[3], 0)
  if not head then break end
  local hid, hn = string.match(head, '^(%S+) (%d+)$')
  if not hid then
    redis.call('LPOP', KEYS[3])
  else
    local old = tonumber(string.match(hid, '^(%d+)')) < min_ms
    if hid == id or (not old and total <= max) then break end
    redis.call('LPOP', KEYS[3])
    total = total - tonumber(hn)
    if not old then capped = capped + tonumber(hn) end
    cut = true
  end
end
total = math.max(total, 0)
redis.call('SET', KEYS[4], tostring(total))
if cut then
  local head = redis.call('LINDEX', KEYS[3], 0)
  local hid = head and string.match(head, '^(%S+) ')
  if hid then redis.call('XTRIM', KEYS[1], 'MINID', hid) end
end
return {#parts, skipped, capped}
";

/// Records a suspension in the hash (or removes it, for a lift) and announces it on the stream
/// (indexed without calls: the next publication trims it with the rest).
const SUSPENSION: &str = r"
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local minid = tostring(math.max(now_ms - tonumber(ARGV[1]), 0))
if ARGV[7] == '1' then
  redis.call('HDEL', KEYS[2], ARGV[6])
else
  redis.call('HSET', KEYS[2], ARGV[6], ARGV[5])
end
local id = redis.call('XADD', KEYS[1], 'MINID', '~', minid, '*', 'k', 's', 'h', ARGV[2],
  'i', ARGV[3], 't', ARGV[4], 'j', ARGV[5])
redis.call('RPUSH', KEYS[3], id .. ' 0')
return 1
";

/// How to reach Redis: a client, or the sentinels to ask for one.
pub(super) enum Connector {
    Direct(Client),
    Sentinel(Box<redis::sentinel::SentinelClient>),
}

impl Connector {
    pub(super) fn new(config: &SharedConfig) -> Result<Connector, SharedStateError> {
        let password = config
            .password_file
            .as_ref()
            .map(|path| {
                read_secret_text(path, 4096)
                    .map(|text| text.lines().next().unwrap_or("").to_owned())
                    .map_err(|source| SharedStateError::Password {
                        path: path.clone(),
                        source,
                    })
            })
            .transpose()?;
        let root_cert = config
            .ca_file
            .as_ref()
            .map(|path| {
                std::fs::read(path).map_err(|source| SharedStateError::CaFile {
                    path: path.clone(),
                    source,
                })
            })
            .transpose()?;
        let url_error = |err: redis::RedisError| SharedStateError::Url(err.to_string());
        let base = redis::IntoConnectionInfo::into_connection_info(config.url.as_str())
            .map_err(url_error)?;
        let mut settings = base.redis_settings().clone();
        if let Some(user) = &config.username {
            settings = settings.set_username(user);
        }
        if let Some(password) = &password {
            settings = settings.set_password(password);
        }
        if !config.sentinels.is_empty() {
            let tls = matches!(base.addr(), redis::ConnectionAddr::TcpTls { .. });
            let mut builder = redis::sentinel::SentinelClientBuilder::new(
                config
                    .sentinels
                    .iter()
                    .filter_map(|s| {
                        let (host, port) = s.rsplit_once(':')?;
                        Some(redis::ConnectionAddr::Tcp(host.into(), port.parse().ok()?))
                    })
                    .collect::<Vec<_>>(),
                config.sentinel_master.clone(),
                redis::sentinel::SentinelServerType::Master,
            )
            .map_err(url_error)?
            .set_client_to_redis_db(settings.db())
            .set_client_to_redis_tcp_settings(tcp_settings());
            if let Some(user) = &config.username {
                builder = builder.set_client_to_redis_username(user);
            }
            if let Some(password) = &password {
                builder = builder.set_client_to_redis_password(password);
            }
            if tls {
                builder = builder.set_client_to_redis_tls_mode(redis::TlsMode::Secure);
                if let Some(root) = root_cert {
                    builder = builder.set_client_to_redis_certificates(redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(root),
                    });
                }
            }
            return Ok(Connector::Sentinel(Box::new(
                builder.build().map_err(url_error)?,
            )));
        }
        let info = base
            .set_redis_settings(settings)
            .set_tcp_settings(tcp_settings());
        let client = match root_cert {
            Some(root) => Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root),
                },
            ),
            None => Client::open(info),
        }
        .map_err(url_error)?;
        Ok(Connector::Direct(client))
    }

    async fn client(&mut self) -> redis::RedisResult<Client> {
        match self {
            Connector::Direct(client) => Ok(client.clone()),
            Connector::Sentinel(sentinel) => sentinel.async_get_client().await,
        }
    }
}

/// `TCP_NODELAY`, which redis-rs leaves off: each publication and each answering watermark is one
/// small command a peer waits for, and Nagle's algorithm holds a small write back until the
/// previous one is acknowledged (tens of milliseconds with delayed acknowledgments).
fn tcp_settings() -> redis::io::tcp::TcpSettings {
    redis::io::tcp::TcpSettings::default().set_nodelay(true)
}

pub(super) struct Settings {
    pub(crate) host: String,
    pub(crate) instance: u64,
    pub(crate) prefix: String,
    pub(crate) retention: Span,
    pub(crate) timeout: Duration,
    pub(crate) max_buffered: usize,
    pub(crate) max_stream: usize,
}

impl Settings {
    fn stream(&self) -> String {
        format!("{}calls", self.prefix)
    }
    /// Each stream entry's id and number of calls, oldest first (what trimming reads).
    fn index(&self) -> String {
        format!("{}calls-index", self.prefix)
    }
    /// How many calls the stream holds.
    fn count(&self) -> String {
        format!("{}calls-count", self.prefix)
    }
    fn suspensions(&self) -> String {
        format!("{}suspensions", self.prefix)
    }
    fn seq_key(&self) -> String {
        format!("{}seq:{}:{}", self.prefix, self.host, self.instance)
    }
    fn retention_ms(&self) -> u64 {
        (self.retention.0 / 1_000_000).max(1)
    }
}

/// What waits for Redis.
struct Pending {
    calls: VecDeque<(u64, SharedCall)>,
    /// The newest batch's time and watermark (sent with the next heartbeat).
    sent_at: Timestamp,
    watermark: Timestamp,
    heartbeat_due: bool,
    suspensions: VecDeque<SuspensionNote>,
    /// The newest watermark Redis took.
    published_watermark: Timestamp,
}

pub(super) async fn run(
    mut connector: Connector,
    settings: Settings,
    mut rx: mpsc::UnboundedReceiver<ToRedis>,
    tx: mpsc::Sender<FromRedis>,
    stats: Arc<Mutex<SharedStats>>,
) {
    let mut pending = Pending {
        calls: VecDeque::new(),
        sent_at: Timestamp::default(),
        watermark: Timestamp::default(),
        heartbeat_due: false,
        suspensions: VecDeque::new(),
        published_watermark: Timestamp::default(),
    };
    let publish = Script::new(PUBLISH);
    let announce = Script::new(SUSPENSION);
    let mut conn: Option<ConnectionManager> = None;
    let mut reader: Option<tokio::task::JoinHandle<()>> = None;
    // Where the reader is in the stream, kept across its restarts.
    let cursor: Arc<Mutex<Option<String>>> = Arc::default();
    let mut first = true;
    let mut up = false;
    let mut next_attempt = tokio::time::Instant::now();
    let mut closing = false;
    loop {
        if !closing {
            // Connected: wait for work. Not: also for the next attempt to connect.
            let wait = if up { None } else { Some(next_attempt) };
            let message = match wait {
                Some(at) => tokio::select! {
                    m = rx.recv() => Some(m),
                    _ = tokio::time::sleep_until(at) => None,
                },
                None => Some(rx.recv().await),
            };
            match message {
                Some(Some(m)) => take(&mut pending, m, &settings, &stats),
                Some(None) => closing = true,
                None => {}
            }
            while let Ok(m) = rx.try_recv() {
                take(&mut pending, m, &settings, &stats);
            }
        }
        if conn.is_none() && tokio::time::Instant::now() >= next_attempt {
            match connect(&mut connector, &settings).await {
                Ok(manager) => conn = Some(manager),
                Err(err) => {
                    next_attempt = tokio::time::Instant::now() + RETRY;
                    if up || first {
                        went_down(&tx, &stats, &err.to_string(), &mut up).await;
                        first = false;
                    }
                }
            }
        }
        if let Some(manager) = &mut conn {
            let result = async {
                if !up {
                    // Back (or first): the suspensions in force before the buffered calls.
                    load_suspensions(manager, &settings, &tx, &stats).await?;
                }
                flush(
                    manager,
                    &settings,
                    &mut pending,
                    &publish,
                    &announce,
                    &stats,
                )
                .await
            }
            .await;
            match result {
                Ok(()) => {
                    if !up {
                        up = true;
                        if let Ok(mut s) = stats.lock() {
                            s.up = true;
                        }
                        let was_first = std::mem::replace(&mut first, false);
                        // A new reader on the server that answers now (after a Sentinel
                        // failover, the new master), from where the last one stopped.
                        if let Some(old) = reader.take() {
                            old.abort();
                        }
                        reader = Some(tokio::spawn(read(
                            connector_client(&mut connector).await,
                            clone_settings(&settings),
                            tx.clone(),
                            stats.clone(),
                            cursor.clone(),
                        )));
                        let _ = tx.send(FromRedis::Up { first: was_first }).await;
                    }
                }
                Err(err) => {
                    conn = None;
                    next_attempt = tokio::time::Instant::now() + RETRY;
                    if up || first {
                        first = false;
                        went_down(&tx, &stats, &err.to_string(), &mut up).await;
                    }
                }
            }
        }
        if closing && (pending.is_empty() || conn.is_none()) {
            break;
        }
    }
    if let Some(reader) = reader {
        reader.abort();
    }
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.calls.is_empty() && self.suspensions.is_empty() && !self.heartbeat_due
    }
}

fn clone_settings(s: &Settings) -> Settings {
    Settings {
        host: s.host.clone(),
        instance: s.instance,
        prefix: s.prefix.clone(),
        retention: s.retention,
        timeout: s.timeout,
        max_buffered: s.max_buffered,
        max_stream: s.max_stream,
    }
}

async fn connector_client(connector: &mut Connector) -> Option<Client> {
    connector.client().await.ok()
}

async fn went_down(
    tx: &mpsc::Sender<FromRedis>,
    stats: &Mutex<SharedStats>,
    error: &str,
    up: &mut bool,
) {
    *up = false;
    if let Ok(mut s) = stats.lock() {
        s.up = false;
        s.outages += 1;
        s.last_error = Some(error.to_owned());
    }
    let _ = tx
        .send(FromRedis::Down {
            error: error.to_owned(),
        })
        .await;
}

/// Takes one message of the loop into the buffer (bounded: the oldest calls go first).
fn take(pending: &mut Pending, message: ToRedis, settings: &Settings, stats: &Mutex<SharedStats>) {
    match message {
        ToRedis::Batch(batch) => {
            let mut dropped = 0;
            for call in batch.calls {
                if pending.calls.len() >= settings.max_buffered {
                    pending.calls.pop_front();
                    dropped += 1;
                }
                pending.calls.push_back(call);
            }
            pending.sent_at = pending.sent_at.max(batch.sent_at);
            pending.watermark = pending.watermark.max(batch.watermark);
            pending.heartbeat_due = true;
            if let Ok(mut s) = stats.lock() {
                s.buffered_dropped += dropped;
                s.buffered_calls = pending.calls.len() as u64;
            }
        }
        ToRedis::Suspension(note) => pending.suspensions.push_back(note),
    }
}

async fn connect(
    connector: &mut Connector,
    settings: &Settings,
) -> redis::RedisResult<ConnectionManager> {
    let client = connector.client().await?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(settings.timeout))
        .set_response_timeout(Some(settings.timeout))
        .set_number_of_retries(1);
    let mut manager = tokio::time::timeout(
        settings.timeout * 2,
        client.get_connection_manager_with_config(config),
    )
    .await
    .map_err(|_| timed_out())??;
    let _: String = redis::cmd("PING").query_async(&mut manager).await?;
    Ok(manager)
}

fn timed_out() -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "Redis did not answer within shared.timeout",
    ))
}

/// Publishes what waits: calls in chunks (each chunk's heartbeat carries a watermark no later
/// than the earliest start still waiting), then the heartbeat, then suspensions (with the new
/// watermark after them when there are any). What Redis took leaves the buffer only once it
/// answered.
async fn flush(
    conn: &mut ConnectionManager,
    settings: &Settings,
    pending: &mut Pending,
    publish: &Script,
    announce: &Script,
    stats: &Mutex<SharedStats>,
) -> redis::RedisResult<()> {
    // A suspension decided here goes out before the watermark that lets peers judge the calls
    // after it (they would decide a second time otherwise): the calls first under the watermark
    // already published, then the suspensions, then the new watermark.
    let watermark = pending.watermark;
    let suspensions_wait = !pending.suspensions.is_empty();
    if suspensions_wait {
        pending.watermark = pending.published_watermark.min(watermark);
    }
    publish_calls(conn, settings, pending, publish, stats).await?;
    while let Some(note) = pending.suspensions.front() {
        let json = serde_json::to_string(note).unwrap_or_default();
        let _: i64 = announce
            .key(settings.stream())
            .key(settings.suspensions())
            .key(settings.index())
            .arg(settings.retention_ms())
            .arg(&settings.host)
            .arg(settings.instance.to_string())
            .arg(pending.sent_at.0.to_string())
            .arg(&json)
            .arg(note.token.to_string())
            .arg(if note.lifted { "1" } else { "0" })
            .invoke_async(conn)
            .await?;
        pending.suspensions.pop_front();
        if let Ok(mut s) = stats.lock() {
            s.suspensions_published += 1;
        }
    }
    if suspensions_wait {
        pending.watermark = pending.watermark.max(watermark);
        pending.heartbeat_due = true;
        publish_calls(conn, settings, pending, publish, stats).await?;
    }
    Ok(())
}

/// Publishes the calls waiting, in chunks, and the heartbeat.
async fn publish_calls(
    conn: &mut ConnectionManager,
    settings: &Settings,
    pending: &mut Pending,
    publish: &Script,
    stats: &Mutex<SharedStats>,
) -> redis::RedisResult<()> {
    // The earliest start from each call to the end of the buffer, computed once: each chunk's
    // watermark stays before the calls still waiting (a rescan per chunk was quadratic in a
    // buffer refilled during an outage).
    let mut earliest_from: Vec<Timestamp> = pending
        .calls
        .iter()
        .rev()
        .scan(pending.watermark, |earliest, (_, c)| {
            *earliest = (*earliest).min(Timestamp(c.start));
            Some(*earliest)
        })
        .collect();
    earliest_from.reverse();
    let mut sent = 0;
    while !pending.calls.is_empty() || pending.heartbeat_due {
        let n = pending.calls.len().min(CHUNK);
        let watermark = earliest_from
            .get(sent + n)
            .copied()
            .unwrap_or(pending.watermark);
        let mut invocation = publish.key(settings.stream());
        invocation
            .key(settings.seq_key())
            .key(settings.index())
            .key(settings.count())
            .arg(&settings.host)
            .arg(settings.instance.to_string())
            .arg(settings.retention_ms())
            .arg(settings.max_stream)
            .arg(settings.retention_ms().max(60_000))
            .arg(pending.sent_at.0.to_string())
            .arg(watermark.0.to_string());
        let mut encoded = Vec::new();
        for (seq, call) in pending.calls.iter().take(n) {
            encoded.clear();
            call.encode(&mut encoded);
            invocation.arg(*seq).arg(&encoded[..]);
        }
        let (added, skipped, capped): (u64, u64, u64) = invocation.invoke_async(conn).await?;
        pending.published_watermark = pending.published_watermark.max(watermark);
        pending.calls.drain(..n);
        sent += n;
        if n == 0 || pending.calls.is_empty() {
            pending.heartbeat_due = false;
        }
        if let Ok(mut s) = stats.lock() {
            s.calls_published += added;
            s.calls_republished += skipped;
            s.stream_capped += capped;
            s.buffered_calls = pending.calls.len() as u64;
        }
    }
    Ok(())
}

/// Loads the suspensions in force from the hash (and removes those that have ended).
async fn load_suspensions(
    conn: &mut ConnectionManager,
    settings: &Settings,
    tx: &mpsc::Sender<FromRedis>,
    stats: &Mutex<SharedStats>,
) -> redis::RedisResult<()> {
    let all: HashMap<String, String> = conn.hgetall(settings.suspensions()).await?;
    let now = now_nanos();
    for (field, json) in all {
        match serde_json::from_str::<SuspensionNote>(&json) {
            Ok(note) if note.until.is_some_and(|u| u <= now) => {
                let _: i64 = conn.hdel(settings.suspensions(), &field).await?;
            }
            Ok(note) => {
                if let Ok(mut s) = stats.lock() {
                    s.suspensions_received += 1;
                }
                let _ = tx.send(FromRedis::Suspension(note)).await;
            }
            Err(_) => {
                if let Ok(mut s) = stats.lock() {
                    s.entries_rejected += 1;
                }
            }
        }
    }
    Ok(())
}

/// Reads the stream on its own connection (a blocking `XREAD` would hold up the publishing
/// connection): first back over the retention (a restarted host rebuilds its windows), then
/// whatever is appended, from where it left off after any error.
async fn read(
    client: Option<Client>,
    settings: Settings,
    tx: mpsc::Sender<FromRedis>,
    stats: Arc<Mutex<SharedStats>>,
    cursor: Arc<Mutex<Option<String>>>,
) {
    let Some(client) = client else {
        return;
    };
    let mut last_id: Option<String> = cursor.lock().ok().and_then(|c| c.clone());
    let remember = |id: &str| {
        if let Ok(mut c) = cursor.lock() {
            *c = Some(id.to_owned());
        }
    };
    loop {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(settings.timeout))
            .set_response_timeout(Some(BLOCK + settings.timeout));
        let mut conn: MultiplexedConnection = match client
            .get_multiplexed_async_connection_with_config(&config)
            .await
        {
            Ok(conn) => conn,
            Err(_) => {
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        if last_id.is_none() {
            let from = (now_nanos() / 1_000_000).saturating_sub(settings.retention_ms());
            let mut start = format!("{from}-0");
            loop {
                let range: redis::RedisResult<StreamRangeReply> = redis::cmd("XRANGE")
                    .arg(settings.stream())
                    .arg(&start)
                    .arg("+")
                    .arg("COUNT")
                    .arg(READ_COUNT)
                    .query_async(&mut conn)
                    .await;
                let Ok(range) = range else { break };
                let n = range.ids.len();
                for entry in range.ids {
                    let id = entry.id.clone();
                    if !deliver(entry, &settings, &tx, &stats).await {
                        return;
                    }
                    start = format!("({id}");
                    remember(&id);
                    last_id = Some(id);
                }
                if n < READ_COUNT {
                    break;
                }
            }
            if last_id.is_none() {
                remember("0-0");
                last_id = Some("0-0".into());
            }
        }
        loop {
            let options = StreamReadOptions::default()
                .block(BLOCK.as_millis() as usize)
                .count(READ_COUNT);
            let id = last_id.clone().unwrap_or_else(|| "0-0".into());
            let reply: redis::RedisResult<Option<StreamReadReply>> = conn
                .xread_options(&[settings.stream()], &[id], &options)
                .await;
            let reply = match reply {
                Ok(reply) => reply,
                Err(_) => break,
            };
            for key in reply.map(|r| r.keys).unwrap_or_default() {
                for entry in key.ids {
                    let id = entry.id.clone();
                    if !deliver(entry, &settings, &tx, &stats).await {
                        return;
                    }
                    remember(&id);
                    last_id = Some(id);
                }
            }
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// Turns one stream entry into a message for the loop; false when the loop is gone.
async fn deliver(
    entry: StreamId,
    settings: &Settings,
    tx: &mpsc::Sender<FromRedis>,
    stats: &Mutex<SharedStats>,
) -> bool {
    let message = match parse(&entry.map) {
        Some(Parsed::Batch(batch)) => {
            if batch.host == settings.host && batch.instance == settings.instance {
                return true;
            }
            FromRedis::Batch(batch)
        }
        Some(Parsed::Suspension {
            host,
            instance,
            note,
        }) => {
            if host == settings.host && instance == settings.instance {
                return true;
            }
            if let Ok(mut s) = stats.lock() {
                s.suspensions_received += 1;
            }
            FromRedis::Suspension(note)
        }
        None => {
            if let Ok(mut s) = stats.lock() {
                s.entries_rejected += 1;
            }
            return true;
        }
    };
    tx.send(message).await.is_ok()
}

pub(super) enum Parsed {
    Batch(Batch),
    Suspension {
        host: String,
        instance: u64,
        note: SuspensionNote,
    },
}

fn field(map: &HashMap<String, Value>, name: &str) -> Option<String> {
    let Value::BulkString(bytes) = map.get(name)? else {
        return None;
    };
    if bytes.len() > MAX_FIELD_BYTES {
        return None;
    }
    String::from_utf8(bytes.clone()).ok()
}

fn number(map: &HashMap<String, Value>, name: &str) -> Option<u64> {
    field(map, name)?.parse().ok()
}

/// One stream entry, as its fields came from `XREAD`/`XRANGE`: `None` for anything this version
/// does not write (rejected and counted by the caller; never trusted, never a panic).
pub(super) fn parse(map: &HashMap<String, Value>) -> Option<Parsed> {
    let host = field(map, "h")?;
    let instance = number(map, "i")?;
    let sent_at = Timestamp(number(map, "t")?);
    match field(map, "k")?.as_str() {
        "b" => {
            let count = usize::try_from(number(map, "n")?).ok()?;
            let calls = if count == 0 {
                Vec::new()
            } else {
                let first = number(map, "q")?;
                let Some(Value::BulkString(bytes)) = map.get("c") else {
                    return None;
                };
                let calls = SharedCall::decode_all(bytes, count).ok()?;
                // The calls are numbered on from the first, within u64.
                first.checked_add(count as u64 - 1)?;
                (0..)
                    .zip(calls)
                    .map(|(i, call)| (first + i, call))
                    .collect()
            };
            Some(Parsed::Batch(Batch {
                host,
                instance,
                sent_at,
                watermark: Timestamp(number(map, "w")?),
                calls,
            }))
        }
        "s" => Some(Parsed::Suspension {
            host,
            instance,
            note: serde_json::from_str(&field(map, "j")?).ok()?,
        }),
        _ => None,
    }
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
