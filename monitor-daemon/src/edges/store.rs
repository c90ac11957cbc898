//! Durable state: active suspensions, the audit log, the alert outbox, when each token was
//! first and last seen, and each token's daily use (rollups for the long-term reports), in one
//! redb file.
//!
//! Every mutating call is one write transaction that is on disk when the call returns: nothing the
//! daemon has accepted is lost on a crash, `kill -9` included. Tokens appear only as fingerprints
//! and masked forms (the types stored here cannot hold a raw token). No clock: callers pass time.

use std::fs::{DirBuilder, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use redb::{
    Builder, ConcurrencyMode, Database, DatabaseError, ReadOnlyDatabase, ReadTransaction,
    ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::shared::model::{Span, Timestamp};
use crate::shared::settings::{Duration, Problem, at_least_one, longer_than_zero};
use crate::shared::token::{MaskedToken, TokenFingerprint};
use crate::stages::policy::Violation;
use crate::stages::usage::{Day, DayRow, Usage};

/// Tables. Records are JSON (self-describing, readable with any redb tool); keys are fixed-width
/// so that ranges are cheap. The `_by_` tables are indexes kept in the same transactions.
type Fp = [u8; 8];
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
const AUDIT_BY_TIME: TableDefinition<(u64, u64), ()> = TableDefinition::new("audit_by_time");
const AUDIT_BY_TOKEN: TableDefinition<(Fp, u64), ()> = TableDefinition::new("audit_by_token");
const SUSPENSIONS: TableDefinition<Fp, &[u8]> = TableDefinition::new("suspensions");
/// Outbox items by arrival number (oldest first), with indexes by webhook id and by due time.
const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");
const OUTBOX_IDS: TableDefinition<&str, u64> = TableDefinition::new("outbox_ids");
const OUTBOX_DUE: TableDefinition<(u64, u64), ()> = TableDefinition::new("outbox_due");
const TOKENS: TableDefinition<Fp, &[u8]> = TableDefinition::new("tokens");
/// Daily use per token, keyed by (UTC day, token) so that the oldest days come first (schema 2).
const ROLLUPS: TableDefinition<(u32, Fp), &[u8]> = TableDefinition::new("rollups");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

const META_SCHEMA: &str = "schema";
const META_NEXT_AUDIT: &str = "next_audit_seq";
const META_NEXT_OUTBOX: &str = "next_outbox_seq";
/// Daily rows dropped to stay within `store.max_rollups`, and the newest day dropped so.
const META_ROLLUPS_EVICTED: &str = "rollups_evicted";
const META_ROLLUPS_EVICTED_DAY: &str = "rollups_evicted_through_day";
/// Bumped when a record or table changes. 1: no rollups; 2: adds `rollups` (an upgrade from 1
/// only creates the table).
const SCHEMA: u64 = 2;

/// redb caches pages in memory up to this; the default (1 GiB) is far more than the state needs.
const CACHE_BYTES: usize = 32 << 20;

/// Who acted on a suspension.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The daemon's own decision.
    Auto,
    /// An admin, from the command line.
    Manual,
}

/// A token that must not be used until `until` (or until lifted, when `until` is `None`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suspension {
    #[serde(rename = "token_fp")]
    pub token: TokenFingerprint,
    /// Unknown for a manual suspension of a token the daemon has never seen.
    #[serde(rename = "token_masked", with = "masked_opt")]
    pub masked: Option<MaskedToken>,
    #[serde(with = "nanos")]
    pub since: Timestamp,
    #[serde(with = "nanos_opt")]
    pub until: Option<Timestamp>,
    pub reason: String,
    /// Step on the escalation ladder (1 = first suspension); 0 for manual ones.
    pub level: u32,
    pub source: Source,
}

impl Suspension {
    pub(crate) fn is_active(&self, now: Timestamp) -> bool {
        self.until.is_none_or(|until| now < until)
    }
}

/// What an audit record is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditKind {
    Violation,
    Decision,
    Suspend,
    Lift,
    HookResult,
    Alert,
}

/// An audit record before the store numbers it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    #[serde(with = "nanos")]
    pub ts: Timestamp,
    pub kind: AuditKind,
    #[serde(rename = "token_fp")]
    pub token: Option<TokenFingerprint>,
    /// Evidence and context; times in it are epoch seconds, like the daemon's other JSON.
    pub details: serde_json::Value,
}

impl AuditEntry {
    /// The audit record of a rule broken.
    pub(crate) fn violation(v: &Violation) -> AuditEntry {
        AuditEntry {
            ts: v.ts,
            kind: AuditKind::Violation,
            token: Some(v.token),
            details: json!({
                "rule": v.rule,
                "limit": v.limit,
                "window_s": v.window.as_secs_f64(),
                "count": v.count,
            }),
        }
    }
}

impl AuditEntry {
    /// The audit record of a client address over the refused-calls rule (no token).
    pub(crate) fn client_violation(v: &crate::stages::policy::ClientViolation) -> AuditEntry {
        AuditEntry {
            ts: v.ts,
            kind: AuditKind::Violation,
            token: None,
            details: json!({
                "rule": crate::stages::policy::REFUSED_CALLS_RULE,
                "client": v.client,
                "limit": v.limit,
                "window_s": v.window.as_secs_f64(),
                "count": v.count,
            }),
        }
    }
}

/// An audit record as stored: `seq` grows by one per record and is never reused.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub seq: u64,
    #[serde(flatten)]
    pub entry: AuditEntry,
}

/// An alert waiting for delivery to one sink.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutboxItem {
    /// The webhook id, the same on every attempt.
    pub id: String,
    pub sink: String,
    pub payload: serde_json::Value,
    #[serde(with = "nanos")]
    pub created: Timestamp,
    pub attempts: u32,
    #[serde(with = "nanos")]
    pub next_attempt: Timestamp,
}

/// When a token was first and last seen, and how many calls it made in between.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenSeen {
    #[serde(rename = "token_fp")]
    pub(crate) token: TokenFingerprint,
    #[serde(rename = "token_masked", with = "masked")]
    pub masked: MaskedToken,
    #[serde(with = "nanos")]
    pub(crate) first_seen: Timestamp,
    #[serde(with = "nanos")]
    pub(crate) last_seen: Timestamp,
    pub(crate) calls: u64,
}

/// One or more calls of a token in one UTC day, for [`Store::touch_tokens`]: `ts` is the latest
/// call's time, and `usage` (its `calls` included) is added to the token's row of that day.
#[derive(Clone, Debug)]
pub(crate) struct Sighting {
    pub(crate) token: TokenFingerprint,
    pub(crate) masked: MaskedToken,
    pub(crate) ts: Timestamp,
    pub(crate) usage: Usage,
}

/// What [`Store::prune`] removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Pruned {
    pub(crate) audit_records: u64,
    pub(crate) tokens: u64,
    /// Daily rows older than `store.rollup_retention`.
    pub(crate) rollups: u64,
}

/// The daily rollups' extent, for the reports and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct RollupExtent {
    pub(crate) rows: u64,
    /// The oldest day held.
    #[serde(skip)]
    pub(crate) oldest: Option<Day>,
    /// Rows ever dropped to stay within `store.max_rollups` (oldest days first).
    pub(crate) evicted: u64,
    /// History up to this day is incomplete because of those drops.
    #[serde(skip)]
    pub(crate) evicted_through: Option<Day>,
}

/// Bounds on the store's growth (from `[store]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreLimits {
    pub audit_retention: Span,
    pub max_outbox: usize,
    /// Daily rollups (and tokens' last-seen) are kept this long.
    pub rollup_retention: Span,
    /// Most daily rows; past it the oldest days are dropped (and counted).
    pub max_rollups: u64,
}

impl StoreLimits {
    pub fn from_config(config: &StoreConfig) -> StoreLimits {
        StoreLimits {
            audit_retention: config.audit_retention.span(),
            max_outbox: config.max_outbox,
            rollup_retention: config.rollup_retention.span(),
            max_rollups: config.max_rollups,
        }
    }
}

impl Default for StoreLimits {
    fn default() -> Self {
        StoreLimits::from_config(&StoreConfig::default())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the state directory {path}: {source}")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error(
        "cannot open the state store {path}: {source} (run as the daemon's user, or set `[store] path`)"
    )]
    Open { path: PathBuf, source: io::Error },
    #[error("there is no state store at {path}: the daemon has not run yet, or the path is wrong")]
    Missing { path: PathBuf },
    #[error(
        "the state store {path} is open for writing in another process (is the daemon running?); \
         only one process may write it at a time"
    )]
    Busy { path: PathBuf },
    #[error("the state store {path} was opened read-only and cannot be changed")]
    ReadOnly { path: PathBuf },
    #[error(
        "the state store {path} has schema {found}, newer than this redcap-monitor knows ({known}); \
         upgrade redcap-monitor"
    )]
    NewerSchema {
        path: PathBuf,
        found: u64,
        known: u64,
    },
    #[error("the state store {path} failed: {source}")]
    Database { path: PathBuf, source: redb::Error },
    #[error("the state store {path} holds a {what} record that cannot be read: {source}")]
    Record {
        path: PathBuf,
        what: &'static str,
        source: serde_json::Error,
    },
}

/// The durable state of one daemon.
pub struct Store {
    path: PathBuf,
    db: Handle,
    limits: StoreLimits,
}

enum Handle {
    Writer(Database),
    Reader(ReadOnlyDatabase),
}

/// A failure inside a transaction, given its path when it leaves the store.
enum Fault {
    Db(redb::Error),
    Record(&'static str, serde_json::Error),
}

macro_rules! fault_from_redb {
    ($($error:ty),*) => {$(
        impl From<$error> for Fault {
            fn from(err: $error) -> Fault {
                Fault::Db(err.into())
            }
        }
    )*};
}
fault_from_redb!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

type Faulty<T> = Result<T, Fault>;

impl Store {
    /// Opens the store for writing, creating it (directory 0700, file 0600) if absent. A store
    /// left by a crash is recovered here. Other processes may read it meanwhile, not write it.
    pub fn open(path: &Path, limits: StoreLimits) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && !dir.exists()
        {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| StoreError::CreateDir {
                    path: dir.to_owned(),
                    source,
                })?;
        }
        // Create the file ourselves so that its mode is 0600 from the first byte on.
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|source| StoreError::Open {
                path: path.to_owned(),
                source,
            })?;
        let db = builder()
            .create(path)
            .map_err(|err| open_error(path, err))?;
        let store = Store {
            path: path.to_owned(),
            db: Handle::Writer(db),
            limits,
        };
        store
            .write(|txn| {
                // Opening each table creates it, so that readers find every table.
                txn.open_table(AUDIT)?;
                txn.open_table(AUDIT_BY_TIME)?;
                txn.open_table(AUDIT_BY_TOKEN)?;
                txn.open_table(SUSPENSIONS)?;
                txn.open_table(OUTBOX)?;
                txn.open_table(OUTBOX_IDS)?;
                txn.open_table(OUTBOX_DUE)?;
                txn.open_table(TOKENS)?;
                txn.open_table(ROLLUPS)?;
                let mut meta = txn.open_table(META)?;
                let found = meta.get(META_SCHEMA)?.map(|v| v.value());
                // A new store, or an older one upgraded in place: every table it lacked was
                // created above, and its records read as they are.
                if found.is_none_or(|found| found < SCHEMA) {
                    meta.insert(META_SCHEMA, SCHEMA)?;
                }
                Ok(found)
            })
            .and_then(|found| store.check_schema(found))?;
        Ok(store)
    }

    /// Opens an existing store for reading only, beside a daemon that may be writing it.
    pub fn open_read_only(path: &Path) -> Result<Store, StoreError> {
        if !path.exists() {
            return Err(StoreError::Missing {
                path: path.to_owned(),
            });
        }
        let db = match builder().open_read_only(path) {
            // A crash (`kill -9`) left the file to be repaired, which only a writer may do: open
            // it for writing once (that repairs it) and read it then. If the daemon holds it, it
            // has repaired it already and this is not reached.
            Err(DatabaseError::RepairAborted) => {
                drop(Store::open(path, StoreLimits::default())?);
                builder().open_read_only(path)
            }
            other => other,
        }
        .map_err(|err| open_error(path, err))?;
        let store = Store {
            path: path.to_owned(),
            db: Handle::Reader(db),
            limits: StoreLimits::default(),
        };
        let found =
            store.read(|txn| Ok(txn.open_table(META)?.get(META_SCHEMA)?.map(|v| v.value())))?;
        store.check_schema(found)?;
        Ok(store)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one audit record and returns its sequence number.
    pub fn append_audit(&self, entry: &AuditEntry) -> Result<u64, StoreError> {
        self.write(|txn| append_audit_in(txn, entry))
    }

    /// The newest `limit` audit records at or after `since` (about `token`, if given), oldest
    /// first.
    pub fn audit(
        &self,
        since: Option<Timestamp>,
        token: Option<TokenFingerprint>,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        self.read(|txn| {
            let audit = txn.open_table(AUDIT)?;
            let since = since.unwrap_or_default();
            // Newest first through an index, so that the limit keeps the newest records.
            let seqs: Vec<u64> = match token {
                Some(token) => {
                    let index = txn.open_table(AUDIT_BY_TOKEN)?;
                    let rows = index.range((token.0, 0)..=(token.0, u64::MAX))?.rev();
                    rows.map(|row| row.map(|(k, _)| k.value().1))
                        .collect::<Result<_, _>>()?
                }
                None => {
                    let index = txn.open_table(AUDIT_BY_TIME)?;
                    let rows = index.range((since.0, 0)..)?.rev().take(limit);
                    rows.map(|row| row.map(|(k, _)| k.value().1))
                        .collect::<Result<_, _>>()?
                }
            };
            let mut records = Vec::new();
            for seq in seqs {
                if records.len() >= limit {
                    break;
                }
                if let Some(bytes) = audit.get(seq)? {
                    let record: AuditRecord = decode(bytes.value(), "audit")?;
                    if record.entry.ts >= since {
                        records.push(record);
                    }
                }
            }
            records.sort_by_key(|r| r.seq);
            Ok(records)
        })
    }

    /// Records a suspension (replacing any for the same token) with its `suspend` audit record,
    /// in one transaction; returns the audit sequence number.
    pub fn suspend(&self, suspension: &Suspension) -> Result<u64, StoreError> {
        self.write(|txn| {
            let bytes = encode(suspension);
            txn.open_table(SUSPENSIONS)?
                .insert(suspension.token.0, bytes.as_slice())?;
            let entry = AuditEntry {
                ts: suspension.since,
                kind: AuditKind::Suspend,
                token: Some(suspension.token),
                details: suspension_details(suspension),
            };
            append_audit_in(txn, &entry)
        })
    }

    /// Ends a token's suspension, with a `lift` audit record; returns the suspension lifted, or
    /// `None` (and writes nothing) when the token was not suspended.
    pub fn lift(
        &self,
        token: TokenFingerprint,
        ts: Timestamp,
        source: Source,
        reason: &str,
    ) -> Result<Option<Suspension>, StoreError> {
        self.write(|txn| {
            let removed = txn
                .open_table(SUSPENSIONS)?
                .remove(token.0)?
                .map(|bytes| decode::<Suspension>(bytes.value(), "suspension"))
                .transpose()?;
            if let Some(lifted) = &removed {
                append_audit_in(txn, &lift_entry(lifted, ts, source, reason))?;
            }
            Ok(removed)
        })
    }

    /// The token's suspension if it is active at `now`.
    #[cfg(test)]
    pub(crate) fn suspension(
        &self,
        token: TokenFingerprint,
        now: Timestamp,
    ) -> Result<Option<Suspension>, StoreError> {
        self.read(|txn| {
            let table = txn.open_table(SUSPENSIONS)?;
            let found = table.get(token.0)?;
            let suspension = found
                .map(|bytes| decode::<Suspension>(bytes.value(), "suspension"))
                .transpose()?;
            Ok(suspension.filter(|s| s.is_active(now)))
        })
    }

    /// Suspensions in force at `now` (expired ones are not, even before [`Store::purge_expired`]).
    pub fn active_suspensions(&self, now: Timestamp) -> Result<Vec<Suspension>, StoreError> {
        self.read(|txn| {
            let mut active = Vec::new();
            for row in txn.open_table(SUSPENSIONS)?.range::<Fp>(..)? {
                let suspension: Suspension = decode(row?.1.value(), "suspension")?;
                if suspension.is_active(now) {
                    active.push(suspension);
                }
            }
            Ok(active)
        })
    }

    /// Removes suspensions that have expired by `now`, each with a `lift` audit record.
    #[cfg(test)]
    pub(crate) fn purge_expired(&self, now: Timestamp) -> Result<Vec<Suspension>, StoreError> {
        self.write(|txn| {
            let mut expired = Vec::new();
            {
                let mut table = txn.open_table(SUSPENSIONS)?;
                for row in table.extract_if(|_, bytes| {
                    // Unreadable records stay, to be reported by readers, not silently dropped.
                    serde_json::from_slice::<Suspension>(bytes).is_ok_and(|s| !s.is_active(now))
                })? {
                    expired.push(decode::<Suspension>(row?.1.value(), "suspension")?);
                }
            }
            for lifted in &expired {
                let ts = lifted.until.unwrap_or(now);
                append_audit_in(txn, &lift_entry(lifted, ts, Source::Auto, "expired"))?;
            }
            Ok(expired)
        })
    }

    /// Queues an alert. Returns false (and changes nothing) when its id is already queued. When
    /// the outbox is full the oldest alert is dropped, with an `alert` audit record.
    pub fn enqueue_alert(&self, item: &OutboxItem) -> Result<bool, StoreError> {
        let max = self.limits.max_outbox;
        self.write(|txn| {
            let mut ids = txn.open_table(OUTBOX_IDS)?;
            if ids.get(item.id.as_str())?.is_some() {
                return Ok(false);
            }
            let seq = next_counter(txn, META_NEXT_OUTBOX)?;
            let mut outbox = txn.open_table(OUTBOX)?;
            let mut due = txn.open_table(OUTBOX_DUE)?;
            outbox.insert(seq, encode(item).as_slice())?;
            ids.insert(item.id.as_str(), seq)?;
            due.insert((item.next_attempt.0, seq), ())?;
            let mut dropped = Vec::new();
            while outbox.len()? > max as u64 {
                let Some((old_seq, bytes)) = outbox.pop_first()? else {
                    break;
                };
                let old_seq = old_seq.value();
                let old: OutboxItem = decode(bytes.value(), "outbox")?;
                drop(bytes);
                ids.remove(old.id.as_str())?;
                due.remove((old.next_attempt.0, old_seq))?;
                dropped.push(old);
            }
            drop((outbox, ids, due));
            for old in dropped {
                let entry = AuditEntry {
                    ts: item.created,
                    kind: AuditKind::Alert,
                    token: None,
                    details: json!({
                        "dropped": old.id,
                        "sink": old.sink,
                        "attempts": old.attempts,
                        "created": old.created.as_secs_f64(),
                        "why": format!("the outbox holds at most {max} alerts (store.max_outbox)"),
                    }),
                };
                append_audit_in(txn, &entry)?;
            }
            Ok(true)
        })
    }

    /// Up to `limit` alerts whose next attempt is due at `now`, soonest first.
    pub fn due_alerts(&self, now: Timestamp, limit: usize) -> Result<Vec<OutboxItem>, StoreError> {
        self.read(|txn| {
            let outbox = txn.open_table(OUTBOX)?;
            let mut items = Vec::new();
            for row in txn
                .open_table(OUTBOX_DUE)?
                .range(..=(now.0, u64::MAX))?
                .take(limit)
            {
                let seq = row?.0.value().1;
                if let Some(bytes) = outbox.get(seq)? {
                    items.push(decode(bytes.value(), "outbox")?);
                }
            }
            Ok(items)
        })
    }

    /// Alerts waiting for delivery.
    pub fn outbox_len(&self) -> Result<u64, StoreError> {
        self.read(|txn| Ok(txn.open_table(OUTBOX)?.len()?))
    }

    /// Removes a delivered (or permanently refused) alert; false when it was not queued.
    pub(crate) fn delivered(&self, id: &str) -> Result<bool, StoreError> {
        self.write(|txn| {
            let Some(seq) = txn.open_table(OUTBOX_IDS)?.remove(id)?.map(|s| s.value()) else {
                return Ok(false);
            };
            if let Some(bytes) = txn.open_table(OUTBOX)?.remove(seq)? {
                let item: OutboxItem = decode(bytes.value(), "outbox")?;
                txn.open_table(OUTBOX_DUE)?
                    .remove((item.next_attempt.0, seq))?;
            }
            Ok(true)
        })
    }

    /// Records a failed attempt: the alert is next due at `next_attempt`. False when not queued.
    pub(crate) fn reschedule(
        &self,
        id: &str,
        attempts: u32,
        next_attempt: Timestamp,
    ) -> Result<bool, StoreError> {
        self.write(|txn| {
            let Some(seq) = txn.open_table(OUTBOX_IDS)?.get(id)?.map(|s| s.value()) else {
                return Ok(false);
            };
            let mut outbox = txn.open_table(OUTBOX)?;
            let Some(mut item) = outbox
                .get(seq)?
                .map(|bytes| decode::<OutboxItem>(bytes.value(), "outbox"))
                .transpose()?
            else {
                return Ok(false);
            };
            let mut due = txn.open_table(OUTBOX_DUE)?;
            due.remove((item.next_attempt.0, seq))?;
            item.attempts = attempts;
            item.next_attempt = next_attempt;
            outbox.insert(seq, encode(&item).as_slice())?;
            due.insert((next_attempt.0, seq), ())?;
            Ok(true)
        })
    }

    /// Notes one call of a token at `ts`.
    pub fn touch_token(
        &self,
        token: TokenFingerprint,
        masked: &MaskedToken,
        ts: Timestamp,
    ) -> Result<(), StoreError> {
        self.touch_tokens(&[Sighting {
            token,
            masked: masked.clone(),
            ts,
            usage: Usage {
                calls: 1,
                ..Usage::default()
            },
        }])
    }

    /// Notes many sightings in one transaction (the live path batches them: one commit costs a
    /// disk sync), with their daily use.
    pub(crate) fn touch_tokens(&self, sightings: &[Sighting]) -> Result<(), StoreError> {
        let max = self.limits.max_rollups;
        self.write(|txn| touch_in(txn, sightings, max))
    }

    /// Appends audit records and notes sightings in one transaction (one disk sync): how the
    /// live path writes what it batched since its last tick. Returns the audit sequence numbers.
    pub(crate) fn record(
        &self,
        entries: &[AuditEntry],
        sightings: &[Sighting],
    ) -> Result<Vec<u64>, StoreError> {
        if entries.is_empty() && sightings.is_empty() {
            return Ok(Vec::new());
        }
        self.write(|txn| {
            let seqs = entries
                .iter()
                .map(|entry| append_audit_in(txn, entry))
                .collect::<Faulty<Vec<u64>>>()?;
            touch_in(txn, sightings, self.limits.max_rollups)?;
            Ok(seqs)
        })
    }

    pub fn token_seen(&self, token: TokenFingerprint) -> Result<Option<TokenSeen>, StoreError> {
        self.read(|txn| {
            let tokens = txn.open_table(TOKENS)?;
            let found = tokens.get(token.0)?;
            found
                .map(|bytes| decode(bytes.value(), "token"))
                .transpose()
        })
    }

    /// Every token seen (and not yet pruned), by fingerprint.
    pub(crate) fn tokens(&self) -> Result<Vec<TokenSeen>, StoreError> {
        self.read(|txn| {
            let mut tokens = Vec::new();
            for row in txn.open_table(TOKENS)?.range::<Fp>(..)? {
                tokens.push(decode(row?.1.value(), "token")?);
            }
            Ok(tokens)
        })
    }

    /// The daily rows of the days `from..=to`, oldest first. A store of schema 1 (opened
    /// read-only, not yet upgraded by the daemon) has none.
    pub(crate) fn rollups(&self, from: Day, to: Day) -> Result<Vec<DayRow>, StoreError> {
        self.read(|txn| {
            let table = match txn.open_table(ROLLUPS) {
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                other => other?,
            };
            let mut rows = Vec::new();
            for row in table.range((from.0, [0; 8])..=(to.0, [0xff; 8]))? {
                let (key, value) = row?;
                let (day, token) = key.value();
                rows.push(DayRow {
                    day: Day(day),
                    token: TokenFingerprint(token),
                    usage: decode(value.value(), "rollup")?,
                });
            }
            Ok(rows)
        })
    }

    /// How many daily rows are held, since when, and how many were dropped for room.
    pub(crate) fn rollup_extent(&self) -> Result<RollupExtent, StoreError> {
        self.read(|txn| {
            let meta = txn.open_table(META)?;
            let evicted = meta.get(META_ROLLUPS_EVICTED)?.map_or(0, |v| v.value());
            let evicted_through = meta
                .get(META_ROLLUPS_EVICTED_DAY)?
                .map(|v| Day(u32::try_from(v.value()).unwrap_or(u32::MAX)));
            let (rows, oldest) = match txn.open_table(ROLLUPS) {
                Err(redb::TableError::TableDoesNotExist(_)) => (0, None),
                other => {
                    let table = other?;
                    let oldest = table.first()?.map(|(k, _)| Day(k.value().0));
                    (table.len()?, oldest)
                }
            };
            Ok(RollupExtent {
                rows,
                oldest,
                evicted,
                evicted_through,
            })
        })
    }

    /// Deletes audit records older than `store.audit_retention`, and daily rollups and tokens
    /// not seen for longer than `store.rollup_retention`.
    pub(crate) fn prune(&self, now: Timestamp) -> Result<Pruned, StoreError> {
        let cutoff = now.minus(self.limits.audit_retention);
        let long_cutoff = now.minus(self.limits.rollup_retention);
        self.write(|txn| {
            let mut pruned = Pruned::default();
            let mut by_time = txn.open_table(AUDIT_BY_TIME)?;
            let mut by_token = txn.open_table(AUDIT_BY_TOKEN)?;
            let mut audit = txn.open_table(AUDIT)?;
            for row in by_time.extract_from_if(..(cutoff.0, 0), |_, ()| true)? {
                let seq = row?.0.value().1;
                if let Some(bytes) = audit.remove(seq)? {
                    let record: AuditRecord = decode(bytes.value(), "audit")?;
                    if let Some(token) = record.entry.token {
                        by_token.remove((token.0, seq))?;
                    }
                }
                pruned.audit_records += 1;
            }
            let mut tokens = txn.open_table(TOKENS)?;
            for row in tokens.extract_if(|_, bytes| {
                serde_json::from_slice::<TokenSeen>(bytes).is_ok_and(|t| t.last_seen < long_cutoff)
            })? {
                row?;
                pruned.tokens += 1;
            }
            let mut rollups = txn.open_table(ROLLUPS)?;
            let first_kept = Day::of(long_cutoff);
            for row in rollups.extract_from_if(..(first_kept.0, [0; 8]), |_, _| true)? {
                row?;
                pruned.rollups += 1;
            }
            Ok(pruned)
        })
    }

    /// Checks every page's checksum (and repairs the allocator state); false means the file was
    /// damaged and repaired to its last good commit.
    pub fn check_integrity(&mut self) -> Result<bool, StoreError> {
        match &mut self.db {
            Handle::Writer(db) => db.check_integrity().map_err(|err| StoreError::Database {
                path: self.path.clone(),
                source: err.into(),
            }),
            Handle::Reader(_) => Err(StoreError::ReadOnly {
                path: self.path.clone(),
            }),
        }
    }

    fn check_schema(&self, found: Option<u64>) -> Result<(), StoreError> {
        match found {
            Some(found) if found > SCHEMA => Err(StoreError::NewerSchema {
                path: self.path.clone(),
                found,
                known: SCHEMA,
            }),
            _ => Ok(()),
        }
    }

    /// Runs `f` in one write transaction and commits it durably (on disk when this returns).
    fn write<T>(&self, f: impl FnOnce(&WriteTransaction) -> Faulty<T>) -> Result<T, StoreError> {
        let Handle::Writer(db) = &self.db else {
            return Err(StoreError::ReadOnly {
                path: self.path.clone(),
            });
        };
        let result = (|| {
            let txn = db.begin_write()?;
            let value = f(&txn)?;
            txn.commit()?;
            Ok(value)
        })();
        result.map_err(|fault| self.error(fault))
    }

    fn read<T>(&self, f: impl FnOnce(&ReadTransaction) -> Faulty<T>) -> Result<T, StoreError> {
        let result = (|| {
            let txn = match &self.db {
                Handle::Writer(db) => db.begin_read()?,
                Handle::Reader(db) => db.begin_read()?,
            };
            f(&txn)
        })();
        result.map_err(|fault| self.error(fault))
    }

    fn error(&self, fault: Fault) -> StoreError {
        let path = self.path.clone();
        match fault {
            Fault::Db(source) => StoreError::Database { path, source },
            Fault::Record(what, source) => StoreError::Record { path, what, source },
        }
    }
}

fn builder() -> Builder {
    let mut builder = Builder::new();
    // One daemon writes; the admin commands may read at the same time.
    builder
        .set_concurrency_mode(ConcurrencyMode::SingleWriter)
        .set_cache_size(CACHE_BYTES);
    builder
}

fn open_error(path: &Path, err: DatabaseError) -> StoreError {
    let path = path.to_owned();
    match err {
        DatabaseError::DatabaseAlreadyOpen => StoreError::Busy { path },
        DatabaseError::Storage(redb::StorageError::Io(source)) => StoreError::Open { path, source },
        other => StoreError::Database {
            path,
            source: other.into(),
        },
    }
}

/// Notes sightings of tokens: first and last seen, calls, and the day's use. Past `max_rollups`
/// daily rows the oldest are dropped (oldest day first) and counted in the meta table.
fn touch_in(txn: &WriteTransaction, sightings: &[Sighting], max_rollups: u64) -> Faulty<()> {
    let mut tokens = txn.open_table(TOKENS)?;
    let mut rollups = txn.open_table(ROLLUPS)?;
    for s in sightings {
        let key = (Day::of(s.ts).0, s.token.0);
        let mut usage = rollups
            .get(key)?
            .map(|bytes| decode::<Usage>(bytes.value(), "rollup"))
            .transpose()?
            .unwrap_or_default();
        usage.add(&s.usage);
        rollups.insert(key, encode(&usage).as_slice())?;
        let known = tokens
            .get(s.token.0)?
            .map(|bytes| decode::<TokenSeen>(bytes.value(), "token"))
            .transpose()?;
        let seen = match known {
            Some(mut seen) => {
                seen.first_seen = seen.first_seen.min(s.ts);
                seen.last_seen = seen.last_seen.max(s.ts);
                seen.calls = seen.calls.saturating_add(s.usage.calls);
                seen.masked = s.masked.clone();
                seen
            }
            None => TokenSeen {
                token: s.token,
                masked: s.masked.clone(),
                first_seen: s.ts,
                last_seen: s.ts,
                calls: s.usage.calls,
            },
        };
        tokens.insert(s.token.0, encode(&seen).as_slice())?;
    }
    let mut evicted = 0u64;
    let mut through = None;
    while rollups.len()? > max_rollups.max(1) {
        let Some((key, _)) = rollups.pop_first()? else {
            break;
        };
        through = Some(key.value().0);
        evicted += 1;
    }
    drop((tokens, rollups));
    if let Some(day) = through {
        let mut meta = txn.open_table(META)?;
        let before = meta.get(META_ROLLUPS_EVICTED)?.map_or(0, |v| v.value());
        meta.insert(META_ROLLUPS_EVICTED, before.saturating_add(evicted))?;
        meta.insert(META_ROLLUPS_EVICTED_DAY, u64::from(day))?;
    }
    Ok(())
}

fn append_audit_in(txn: &WriteTransaction, entry: &AuditEntry) -> Faulty<u64> {
    let seq = next_counter(txn, META_NEXT_AUDIT)?;
    let record = AuditRecord {
        seq,
        entry: entry.clone(),
    };
    txn.open_table(AUDIT)?
        .insert(seq, encode(&record).as_slice())?;
    txn.open_table(AUDIT_BY_TIME)?
        .insert((entry.ts.0, seq), ())?;
    if let Some(token) = entry.token {
        txn.open_table(AUDIT_BY_TOKEN)?.insert((token.0, seq), ())?;
    }
    Ok(seq)
}

/// Takes the next number of a counter that starts at 1 and never goes back, even when the
/// records it numbered are pruned.
fn next_counter(txn: &WriteTransaction, name: &str) -> Faulty<u64> {
    let mut meta = txn.open_table(META)?;
    let next = meta.get(name)?.map_or(1, |v| v.value());
    meta.insert(name, next.saturating_add(1))?;
    Ok(next)
}

/// A suspension's details as the audit log (and the admin API) show them: times in epoch seconds.
pub(crate) fn suspension_details(s: &Suspension) -> serde_json::Value {
    json!({
        "token_masked": s.masked.as_ref().map(|m| m.0.as_str()),
        "since": s.since.as_secs_f64(),
        "until": s.until.map(Timestamp::as_secs_f64),
        "reason": s.reason,
        "level": s.level,
        "source": s.source,
    })
}

fn lift_entry(lifted: &Suspension, ts: Timestamp, source: Source, reason: &str) -> AuditEntry {
    AuditEntry {
        ts,
        kind: AuditKind::Lift,
        token: Some(lifted.token),
        details: json!({
            "reason": reason,
            "source": source,
            "suspension": suspension_details(lifted),
        }),
    }
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // The record types are plain data with string keys: serialising them cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

fn decode<T: DeserializeOwned>(bytes: &[u8], what: &'static str) -> Faulty<T> {
    serde_json::from_slice(bytes).map_err(|err| Fault::Record(what, err))
}

/// Timestamps are stored as integer nanoseconds, exactly.
mod nanos {
    use super::Timestamp;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(ts: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(ts.0)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        u64::deserialize(d).map(Timestamp)
    }
}

mod nanos_opt {
    use super::Timestamp;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(crate) fn serialize<S: Serializer>(
        ts: &Option<Timestamp>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        ts.map(|t| t.0).serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Timestamp>, D::Error> {
        Option::<u64>::deserialize(d).map(|t| t.map(Timestamp))
    }
}

mod masked {
    use super::MaskedToken;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(crate) fn serialize<S: Serializer>(m: &MaskedToken, s: S) -> Result<S::Ok, S::Error> {
        m.serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<MaskedToken, D::Error> {
        String::deserialize(d).map(MaskedToken)
    }
}

mod masked_opt {
    use super::MaskedToken;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(crate) fn serialize<S: Serializer>(
        m: &Option<MaskedToken>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        m.serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<MaskedToken>, D::Error> {
        Option::<String>::deserialize(d).map(|m| m.map(MaskedToken))
    }
}

/// The durable state: suspensions, audit log, alert outbox, tokens first/last seen, daily use.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// The store file; its directory is created with mode 0700 and the file with 0600.
    pub path: PathBuf,
    /// Audit records older than this are pruned.
    pub(crate) audit_retention: Duration,
    /// Most alerts waiting for delivery; past it the oldest is dropped (and audited).
    pub(crate) max_outbox: usize,
    /// Daily rollups, and tokens' first/last seen, are kept this long (the lifecycle report
    /// needs more than the 180 days of staleness and the year between attestations).
    pub(crate) rollup_retention: Duration,
    /// Most daily rows (one per token and day it was used); past it the oldest days go first.
    pub(crate) max_rollups: u64,
}

/// Shortest `store.rollup_retention`: a year of attestations and the staleness rule need it.
const MIN_ROLLUP_RETENTION_DAYS: u64 = 400;

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("/var/lib/redcap-monitor/state.redb"),
            audit_retention: Duration(Span::from_secs(90 * 86_400)),
            max_outbox: 10_000,
            rollup_retention: Duration(Span::from_secs(MIN_ROLLUP_RETENTION_DAYS * 86_400)),
            max_rollups: 2_000_000,
        }
    }
}

impl StoreConfig {
    /// What is wrong with `[store]`, each problem keyed by its full path.
    pub(crate) fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        longer_than_zero(
            &mut problems,
            &[("store.audit_retention", self.audit_retention)],
            "90d",
        );
        at_least_one(
            &mut problems,
            &[
                ("store.max_outbox", self.max_outbox as u64),
                ("store.max_rollups", self.max_rollups),
            ],
        );
        if self.rollup_retention.span() < Span::from_secs(MIN_ROLLUP_RETENTION_DAYS * 86_400) {
            problems.push(Problem::new(
                "store.rollup_retention".into(),
                format!(
                    "must be at least {MIN_ROLLUP_RETENTION_DAYS}d: the lifecycle report needs a \
                     year of history and more (e.g. \"400d\")"
                ),
            ));
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const HOUR: Span = Span::from_secs(3600);
    const T0: Timestamp = Timestamp(1_700_000_000_000_000_000);

    fn fp(n: u8) -> TokenFingerprint {
        TokenFingerprint([n; 8])
    }

    fn open(dir: &tempfile::TempDir) -> Store {
        open_with(dir, StoreLimits::default())
    }

    fn open_with(dir: &tempfile::TempDir, limits: StoreLimits) -> Store {
        Store::open(&dir.path().join("state.redb"), limits).unwrap()
    }

    fn entry(ts: Timestamp, kind: AuditKind, token: Option<TokenFingerprint>) -> AuditEntry {
        AuditEntry {
            ts,
            kind,
            token,
            details: json!({"note": "test"}),
        }
    }

    fn suspension(token: TokenFingerprint, until: Option<Timestamp>) -> Suspension {
        Suspension {
            token,
            masked: Some(MaskedToken("ABC…EF".into())),
            since: T0,
            until,
            reason: "api_calls while degraded".into(),
            level: 1,
            source: Source::Auto,
        }
    }

    fn alert(id: &str, created: Timestamp) -> OutboxItem {
        OutboxItem {
            id: id.into(),
            sink: "slack".into(),
            payload: json!({"text": id}),
            created,
            attempts: 0,
            next_attempt: created,
        }
    }

    #[test]
    fn open_creates_a_private_directory_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lib").join("state.redb");
        Store::open(&path, StoreLimits::default()).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
    }

    #[test]
    fn audit_sequence_grows_by_one_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        assert_eq!(
            store
                .append_audit(&entry(T0, AuditKind::Decision, None))
                .unwrap(),
            1
        );
        assert_eq!(
            store
                .append_audit(&entry(T0, AuditKind::Alert, None))
                .unwrap(),
            2
        );
        drop(store);
        let store = open(&dir);
        assert_eq!(
            store
                .append_audit(&entry(T0, AuditKind::Alert, None))
                .unwrap(),
            3
        );
        let seqs: Vec<u64> = store
            .audit(None, None, 10)
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect();
        assert_eq!(seqs, [1, 2, 3]);
    }

    #[test]
    fn audit_filters_by_time_and_token_and_keeps_the_newest_within_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        for i in 0..10u64 {
            let token = Some(fp((i % 2) as u8));
            store
                .append_audit(&entry(
                    T0.plus(Span::from_secs(i)),
                    AuditKind::Violation,
                    token,
                ))
                .unwrap();
        }
        let since = Some(T0.plus(Span::from_secs(6)));
        let seqs = |r: Vec<AuditRecord>| r.iter().map(|r| r.seq).collect::<Vec<_>>();
        assert_eq!(seqs(store.audit(since, None, 100).unwrap()), [7, 8, 9, 10]);
        assert_eq!(
            seqs(store.audit(None, Some(fp(1)), 100).unwrap()),
            [2, 4, 6, 8, 10]
        );
        assert_eq!(seqs(store.audit(since, Some(fp(1)), 100).unwrap()), [8, 10]);
        assert_eq!(seqs(store.audit(None, None, 3).unwrap()), [8, 9, 10]);
        assert_eq!(seqs(store.audit(None, Some(fp(0)), 2).unwrap()), [7, 9]);
        assert!(store.audit(None, Some(fp(9)), 100).unwrap().is_empty());
    }

    #[test]
    fn audit_record_round_trips_its_details() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let violation = Violation {
            ts: T0,
            token: fp(3),
            rule: "api_calls".into(),
            limit: 3,
            window: Span::from_secs(60),
            count: 4,
        };
        store
            .append_audit(&AuditEntry::violation(&violation))
            .unwrap();
        let record = store.audit(None, None, 1).unwrap().remove(0);
        assert_eq!(record.entry.token, Some(fp(3)));
        assert_eq!(record.entry.ts, T0);
        assert_eq!(record.entry.kind, AuditKind::Violation);
        assert_eq!(
            record.entry.details,
            json!({"rule": "api_calls", "limit": 3, "window_s": 60.0, "count": 4})
        );
    }

    #[test]
    fn suspension_is_active_until_it_expires_and_is_audited() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let s = suspension(fp(1), Some(T0.plus(HOUR)));
        let seq = store.suspend(&s).unwrap();
        assert_eq!(
            store.active_suspensions(T0).unwrap(),
            std::slice::from_ref(&s)
        );
        assert_eq!(store.suspension(fp(1), T0).unwrap(), Some(s.clone()));
        assert_eq!(store.active_suspensions(T0.plus(HOUR)).unwrap(), []);
        assert_eq!(store.suspension(fp(1), T0.plus(HOUR)).unwrap(), None);
        let record = store.audit(None, Some(fp(1)), 10).unwrap().remove(0);
        assert_eq!((record.seq, record.entry.kind), (seq, AuditKind::Suspend));
        assert_eq!(record.entry.details["level"], 1);
    }

    #[test]
    fn suspension_until_lifted_never_expires() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        store.suspend(&suspension(fp(1), None)).unwrap();
        let far = Timestamp(u64::MAX);
        assert_eq!(store.active_suspensions(far).unwrap().len(), 1);
        assert!(store.purge_expired(far).unwrap().is_empty());
    }

    #[test]
    fn lift_removes_the_suspension_with_an_audit_record() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let s = suspension(fp(1), None);
        store.suspend(&s).unwrap();
        let lifted = store
            .lift(fp(1), T0.plus(HOUR), Source::Manual, "false alarm")
            .unwrap();
        assert_eq!(lifted, Some(s));
        assert!(store.active_suspensions(T0).unwrap().is_empty());
        let records = store.audit(None, Some(fp(1)), 10).unwrap();
        let last = records.last().unwrap();
        assert_eq!(last.entry.kind, AuditKind::Lift);
        assert_eq!(last.entry.details["reason"], "false alarm");
        assert_eq!(last.entry.details["source"], "manual");
        // Lifting again changes nothing and writes nothing.
        assert_eq!(
            store.lift(fp(1), T0, Source::Manual, "again").unwrap(),
            None
        );
        assert_eq!(store.audit(None, None, 10).unwrap().len(), 2);
    }

    #[test]
    fn purge_expired_moves_expired_suspensions_out_with_lift_records() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        store
            .suspend(&suspension(fp(1), Some(T0.plus(HOUR))))
            .unwrap();
        store
            .suspend(&suspension(fp(2), Some(T0.plus(Span(3 * HOUR.0)))))
            .unwrap();
        let purged = store.purge_expired(T0.plus(Span(2 * HOUR.0))).unwrap();
        assert_eq!(purged.iter().map(|s| s.token).collect::<Vec<_>>(), [fp(1)]);
        assert_eq!(store.active_suspensions(T0).unwrap().len(), 1);
        let lift = store.audit(None, Some(fp(1)), 10).unwrap().pop().unwrap();
        assert_eq!(lift.entry.kind, AuditKind::Lift);
        assert_eq!(lift.entry.ts, T0.plus(HOUR));
        assert_eq!(lift.entry.details["reason"], "expired");
    }

    #[test]
    fn prune_drops_audit_records_and_tokens_older_than_the_retention() {
        let dir = tempfile::tempdir().unwrap();
        let limits = StoreLimits {
            audit_retention: Span::from_secs(86_400),
            rollup_retention: Span::from_secs(86_400),
            ..StoreLimits::default()
        };
        let store = open_with(&dir, limits);
        let old = T0;
        let new = T0.plus(Span::from_secs(2 * 86_400));
        store
            .append_audit(&entry(old, AuditKind::Violation, Some(fp(1))))
            .unwrap();
        store
            .append_audit(&entry(new, AuditKind::Violation, Some(fp(1))))
            .unwrap();
        let masked = MaskedToken("ABC…EF".into());
        store.touch_token(fp(1), &masked, old).unwrap();
        store.touch_token(fp(2), &masked, new).unwrap();
        let pruned = store.prune(new.plus(HOUR)).unwrap();
        assert_eq!(
            pruned,
            Pruned {
                audit_records: 1,
                tokens: 1,
                rollups: 1,
            }
        );
        let left = store.audit(None, Some(fp(1)), 10).unwrap();
        assert_eq!(left.iter().map(|r| r.seq).collect::<Vec<_>>(), [2]);
        assert!(store.token_seen(fp(1)).unwrap().is_none());
        assert!(store.token_seen(fp(2)).unwrap().is_some());
        // Numbers are never reused after a prune.
        assert_eq!(
            store
                .append_audit(&entry(new, AuditKind::Alert, None))
                .unwrap(),
            3
        );
    }

    #[test]
    fn outbox_delivers_due_alerts_in_time_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        assert!(store.enqueue_alert(&alert("msg_a", T0.plus(HOUR))).unwrap());
        assert!(store.enqueue_alert(&alert("msg_b", T0)).unwrap());
        // The same webhook id is queued once.
        assert!(!store.enqueue_alert(&alert("msg_b", T0)).unwrap());
        let ids = |items: Vec<OutboxItem>| items.into_iter().map(|i| i.id).collect::<Vec<_>>();
        assert_eq!(ids(store.due_alerts(T0, 10).unwrap()), ["msg_b"]);
        assert_eq!(
            ids(store.due_alerts(T0.plus(HOUR), 10).unwrap()),
            ["msg_b", "msg_a"]
        );
        assert_eq!(ids(store.due_alerts(T0.plus(HOUR), 1).unwrap()), ["msg_b"]);
        assert!(store.delivered("msg_b").unwrap());
        assert!(!store.delivered("msg_b").unwrap());
        assert_eq!(ids(store.due_alerts(T0.plus(HOUR), 10).unwrap()), ["msg_a"]);
        assert_eq!(store.outbox_len().unwrap(), 1);
    }

    #[test]
    fn reschedule_moves_an_alert_later_and_counts_the_attempt() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        store.enqueue_alert(&alert("msg_a", T0)).unwrap();
        assert!(store.reschedule("msg_a", 1, T0.plus(HOUR)).unwrap());
        assert!(store.due_alerts(T0, 10).unwrap().is_empty());
        let due = store.due_alerts(T0.plus(HOUR), 10).unwrap();
        assert_eq!((due[0].attempts, due[0].next_attempt), (1, T0.plus(HOUR)));
        assert!(!store.reschedule("msg_x", 1, T0).unwrap());
    }

    #[test]
    fn full_outbox_drops_the_oldest_alert_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let limits = StoreLimits {
            max_outbox: 2,
            ..StoreLimits::default()
        };
        let store = open_with(&dir, limits);
        for (i, id) in ["msg_1", "msg_2", "msg_3"].into_iter().enumerate() {
            store
                .enqueue_alert(&alert(id, T0.plus(Span::from_secs(i as u64))))
                .unwrap();
        }
        assert_eq!(store.outbox_len().unwrap(), 2);
        let due = store.due_alerts(Timestamp(u64::MAX), 10).unwrap();
        assert_eq!(
            due.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
            ["msg_2", "msg_3"]
        );
        let audit = store.audit(None, None, 10).unwrap();
        assert_eq!(audit.len(), 1);
        assert_eq!(audit[0].entry.kind, AuditKind::Alert);
        assert_eq!(audit[0].entry.details["dropped"], "msg_1");
        // The dropped id may be queued again (it is no longer known).
        assert!(!store.delivered("msg_1").unwrap());
    }

    #[test]
    fn token_seen_tracks_first_last_and_calls() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let masked = MaskedToken("ABC…EF".into());
        store.touch_token(fp(1), &masked, T0.plus(HOUR)).unwrap();
        store.touch_token(fp(1), &masked, T0).unwrap();
        store
            .touch_tokens(&[Sighting {
                token: fp(1),
                masked: masked.clone(),
                ts: T0.plus(Span(2 * HOUR.0)),
                usage: Usage {
                    calls: 5,
                    ..Usage::default()
                },
            }])
            .unwrap();
        let seen = store.token_seen(fp(1)).unwrap().unwrap();
        assert_eq!(
            (seen.first_seen, seen.last_seen),
            (T0, T0.plus(Span(2 * HOUR.0)))
        );
        assert_eq!(seen.calls, 7);
        assert_eq!(seen.masked, masked);
        assert!(store.token_seen(fp(2)).unwrap().is_none());
    }

    #[test]
    fn reopen_keeps_everything() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let s = suspension(fp(1), None);
        store.suspend(&s).unwrap();
        store.enqueue_alert(&alert("msg_a", T0)).unwrap();
        store
            .touch_token(fp(1), &MaskedToken("ABC…EF".into()), T0)
            .unwrap();
        drop(store);
        let mut store = open(&dir);
        assert!(store.check_integrity().unwrap());
        assert_eq!(store.active_suspensions(T0).unwrap(), [s]);
        assert_eq!(store.due_alerts(T0, 10).unwrap(), [alert("msg_a", T0)]);
        assert_eq!(store.audit(None, None, 10).unwrap().len(), 1);
        assert_eq!(store.token_seen(fp(1)).unwrap().unwrap().calls, 1);
    }

    #[test]
    fn read_only_store_reads_but_refuses_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        Store::open(&path, StoreLimits::default())
            .unwrap()
            .suspend(&suspension(fp(1), None))
            .unwrap();
        let reader = Store::open_read_only(&path).unwrap();
        assert_eq!(reader.active_suspensions(T0).unwrap().len(), 1);
        assert!(matches!(
            reader.lift(fp(1), T0, Source::Manual, "x"),
            Err(StoreError::ReadOnly { .. })
        ));
        assert!(matches!(
            Store::open_read_only(&dir.path().join("absent.redb")),
            Err(StoreError::Missing { .. })
        ));
    }

    #[test]
    fn a_second_writer_is_told_the_store_is_busy() {
        let dir = tempfile::tempdir().unwrap();
        let _first = open(&dir);
        let second = Store::open(&dir.path().join("state.redb"), StoreLimits::default());
        let err = second.err().expect("a second writer must be refused");
        assert!(matches!(err, StoreError::Busy { .. }), "{err}");
        assert!(err.to_string().contains("daemon"), "{err}");
    }

    fn used(token: u8, ts: Timestamp, calls: u64) -> Sighting {
        Sighting {
            token: fp(token),
            masked: MaskedToken("ABC…EF".into()),
            ts,
            usage: Usage {
                calls,
                heavy_calls: 1,
                violations: 2,
                request_bytes: 100,
                response_bytes: 1000,
                server_time_ns: 5_000_000,
            },
        }
    }

    const DAY: Span = Span::from_secs(86_400);

    #[test]
    fn sightings_add_up_into_daily_rollups_per_token() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let day0 = Day::of(T0);
        store
            .touch_tokens(&[used(1, T0, 3), used(2, T0, 1)])
            .unwrap();
        store.record(&[], &[used(1, T0.plus(HOUR), 2)]).unwrap();
        store.touch_tokens(&[used(1, T0.plus(DAY), 7)]).unwrap();
        let rows = store.rollups(day0, day0.plus(1)).unwrap();
        let summary: Vec<(u32, TokenFingerprint, u64, u64, u64)> = rows
            .iter()
            .map(|r| {
                (
                    r.day.0 - day0.0,
                    r.token,
                    r.usage.calls,
                    r.usage.heavy_calls,
                    r.usage.server_time_ns,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (0, fp(1), 5, 2, 10_000_000),
                (0, fp(2), 1, 1, 5_000_000),
                (1, fp(1), 7, 1, 5_000_000),
            ]
        );
        assert_eq!(store.rollups(day0.plus(1), day0.plus(1)).unwrap().len(), 1);
        assert_eq!(store.token_seen(fp(1)).unwrap().unwrap().calls, 12);
        let extent = store.rollup_extent().unwrap();
        assert_eq!(
            (extent.rows, extent.oldest, extent.evicted),
            (3, Some(day0), 0)
        );
    }

    #[test]
    fn rollups_and_last_seen_outlive_the_audit_log_until_their_own_retention() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        store.touch_tokens(&[used(1, T0, 1)]).unwrap();
        store
            .touch_tokens(&[used(2, T0.plus(Span(300 * DAY.0)), 1)])
            .unwrap();
        // 399 days on: past the 90 days of audit, within the 400 days of rollups.
        let pruned = store.prune(T0.plus(Span(399 * DAY.0))).unwrap();
        assert_eq!((pruned.tokens, pruned.rollups), (0, 0));
        assert!(store.token_seen(fp(1)).unwrap().is_some());
        let pruned = store.prune(T0.plus(Span(402 * DAY.0))).unwrap();
        assert_eq!((pruned.tokens, pruned.rollups), (1, 1));
        assert!(store.token_seen(fp(1)).unwrap().is_none());
        let left = store.rollups(Day(0), Day(u32::MAX)).unwrap();
        assert_eq!(left.iter().map(|r| r.token).collect::<Vec<_>>(), [fp(2)]);
    }

    #[test]
    fn past_max_rollups_the_oldest_days_are_dropped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let limits = StoreLimits {
            max_rollups: 4,
            ..StoreLimits::default()
        };
        let store = open_with(&dir, limits);
        for day in 0..3u64 {
            let at = T0.plus(Span(day * DAY.0));
            store
                .touch_tokens(&[used(1, at, 1), used(2, at, 1)])
                .unwrap();
        }
        let extent = store.rollup_extent().unwrap();
        assert_eq!(extent.rows, 4);
        assert_eq!(extent.evicted, 2);
        assert_eq!(extent.evicted_through, Some(Day::of(T0)));
        assert_eq!(extent.oldest, Some(Day::of(T0).plus(1)));
        // Tokens' last-seen is not what the cap bounds.
        assert_eq!(store.token_seen(fp(1)).unwrap().unwrap().calls, 3);
    }

    #[test]
    fn a_schema_1_store_upgrades_in_place_and_keeps_its_records() {
        // Written by redcap-monitor before rollups (schema 1): token 1111111111111111 seen with
        // 42 calls, one audit record.
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/state-schema1.redb");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        std::fs::copy(&fixture, &path).unwrap();
        let schema = |store: &Store| {
            store
                .read(|txn| Ok(txn.open_table(META)?.get(META_SCHEMA)?.map(|v| v.value())))
                .ok()
                .flatten()
        };
        let token = TokenFingerprint([0x11; 8]);
        {
            // A reader (the daemon not yet upgraded) sees no rollups rather than an error.
            let reader = Store::open_read_only(&path).unwrap();
            assert_eq!(schema(&reader), Some(1));
            assert!(reader.rollups(Day(0), Day(u32::MAX)).unwrap().is_empty());
            assert_eq!(reader.rollup_extent().unwrap().rows, 0);
            assert_eq!(reader.tokens().unwrap().len(), 1);
        }
        let store = Store::open(&path, StoreLimits::default()).unwrap();
        assert_eq!(schema(&store), Some(SCHEMA));
        let seen = store.token_seen(token).unwrap().unwrap();
        assert_eq!(seen.calls, 42);
        assert_eq!(store.audit(None, None, 10).unwrap().len(), 1);
        let later = seen.last_seen.plus(DAY);
        store
            .touch_tokens(&[Sighting {
                token,
                ..used(0, later, 1)
            }])
            .unwrap();
        assert_eq!(store.token_seen(token).unwrap().unwrap().calls, 43);
        let rows = store.rollups(Day(0), Day(u32::MAX)).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].day, rows[0].usage.calls), (Day::of(later), 1));
        drop(store);
        let reopened = Store::open_read_only(&path).unwrap();
        assert_eq!(schema(&reopened), Some(SCHEMA));
        assert_eq!(reopened.rollups(Day(0), Day(u32::MAX)).unwrap().len(), 1);
    }

    #[test]
    fn store_section_keeps_rollups_at_least_400_days() {
        let config = StoreConfig {
            rollup_retention: Duration(Span(399 * DAY.0)),
            max_rollups: 0,
            ..StoreConfig::default()
        };
        let keys: Vec<String> = config.problems().into_iter().map(|p| p.key).collect();
        assert_eq!(keys, ["store.max_rollups", "store.rollup_retention"]);
        assert!(StoreConfig::default().problems().is_empty());
    }

    #[test]
    fn stored_records_name_tokens_only_by_fingerprint_and_mask() {
        let s = suspension(fp(0xab), None);
        let text = String::from_utf8(encode(&s)).unwrap();
        assert!(text.contains("\"token_fp\":\"abababababababab\""), "{text}");
        assert!(text.contains("\"token_masked\":\"ABC…EF\""), "{text}");
        assert_eq!(serde_json::from_str::<Suspension>(&text).unwrap(), s);
    }
}
