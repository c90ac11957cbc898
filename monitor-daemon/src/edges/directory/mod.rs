//! The token directory: who a token belongs to (user, names, e-mail, project and its PI, and
//! REDCap's own view of the token: super token, user suspended, rights expired, last API use).
//!
//! A thread of its own reads the source (REDCap's MySQL/MariaDB, or a CSV file) every
//! `directory.refresh` and swaps in a new map; readers ([`Directory::owner`]) never wait on it,
//! so the capture path is never held up by a slow database. Only fingerprints are kept: each
//! raw token read is fingerprinted with the site key and zeroed at once, and no error, log or
//! record here can carry one. When the source fails the last names loaded stay in use, the
//! state says `directory_unavailable` with what to fix, and the daemon goes on by fingerprint.

mod csv;
mod mysql;

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration as StdDuration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::shared::model::{Span, Timestamp};
use crate::shared::settings::{Duration, Problem, longer_than_zero};
use crate::shared::token::{FingerprintMap, RawToken, SiteKey, TokenFingerprint};
use crate::stages::usage::{OwnerView, parse_day};

/// Where the directory reads from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum SourceKind {
    /// No directory: tokens are named by fingerprint only.
    #[default]
    None,
    /// REDCap's MySQL/MariaDB database, read with a read-only user.
    Mysql,
    /// A CSV file an admin exports (for sites that cannot grant database access).
    Csv,
}

/// `[directory]`: who a token belongs to.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct DirectoryConfig {
    pub(crate) source: SourceKind,
    /// How often the source is read again.
    pub(crate) refresh: Duration,
    /// How soon a failed read is tried again.
    pub(crate) retry: Duration,
    /// Database server (`source = "mysql"`); ignored when `socket` is set.
    pub(crate) host: String,
    pub(crate) port: u16,
    /// Unix socket of a database on this machine (e.g. `/run/mysqld/mysqld.sock`).
    pub(crate) socket: Option<PathBuf>,
    /// REDCap's database name.
    pub(crate) database: String,
    /// The read-only user (see the README for its GRANT).
    pub(crate) user: String,
    /// File holding the user's password on its first line (not world-readable).
    pub(crate) password_file: Option<PathBuf>,
    /// Require TLS to the database (rustls; `tls_ca_file` for a private CA).
    pub(crate) tls: bool,
    pub(crate) tls_ca_file: Option<PathBuf>,
    /// Read REDCap's last API use per user and project from its `redcap_log_event*` tables
    /// (one grouped scan of each table per refresh: turn off on very large logs).
    pub(crate) last_api_use: bool,
    /// The CSV file (`source = "csv"`).
    pub(crate) csv_file: Option<PathBuf>,
}

impl Default for DirectoryConfig {
    fn default() -> Self {
        Self {
            source: SourceKind::None,
            refresh: Duration(Span::from_secs(300)),
            retry: Duration(Span::from_secs(30)),
            host: "127.0.0.1".into(),
            port: 3306,
            socket: None,
            database: "redcap".into(),
            user: "redcap_monitor".into(),
            password_file: None,
            tls: false,
            tls_ca_file: None,
            last_api_use: true,
            csv_file: None,
        }
    }
}

impl DirectoryConfig {
    /// What is wrong with `[directory]`, each problem keyed by its full path.
    pub(crate) fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        longer_than_zero(
            &mut problems,
            &[
                ("directory.refresh", self.refresh),
                ("directory.retry", self.retry),
            ],
            "5m",
        );
        match self.source {
            SourceKind::None => {}
            SourceKind::Mysql => {
                if self.database.is_empty() {
                    problems.push(Problem::new(
                        "directory.database".into(),
                        "must name REDCap's database, e.g. \"redcap\"".into(),
                    ));
                }
                if self.user.is_empty() {
                    problems.push(Problem::new(
                        "directory.user".into(),
                        "must name the read-only database user, e.g. \"redcap_monitor\"".into(),
                    ));
                }
                if self.tls_ca_file.is_some() && !self.tls {
                    problems.push(Problem::new(
                        "directory.tls_ca_file".into(),
                        "is set but `directory.tls` is false: set `tls = true`".into(),
                    ));
                }
            }
            SourceKind::Csv => {
                if self.csv_file.is_none() {
                    problems.push(Problem::new(
                        "directory.csv_file".into(),
                        "must name the CSV file when `directory.source = \"csv\"`".into(),
                    ));
                }
            }
        }
        problems
    }
}

/// Who a token belongs to, as an admin's view shows it. Never in metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Owner {
    pub(crate) username: String,
    pub(crate) first_name: Option<String>,
    pub(crate) last_name: Option<String>,
    pub(crate) email: Option<String>,
    /// Absent for a super token (it is not tied to a project).
    pub(crate) project_id: Option<u64>,
    pub(crate) project_title: Option<String>,
    pub(crate) pi_first_name: Option<String>,
    pub(crate) pi_last_name: Option<String>,
    pub(crate) pi_email: Option<String>,
    pub(crate) super_token: bool,
    /// REDCap has suspended the user (the token no longer works).
    pub(crate) user_suspended: bool,
    /// The user's rights in the project have expired (the token no longer works).
    pub(crate) rights_expired: bool,
    /// REDCap's own last API use by this user in this project (server-local time), if read.
    pub(crate) last_api_use: Option<String>,
}

impl Owner {
    /// `Jane Doe (jdoe)`, or the user name alone.
    pub(crate) fn person(&self) -> String {
        let name = join_name(&self.first_name, &self.last_name);
        if name.is_empty() {
            self.username.clone()
        } else {
            format!("{name} ({})", self.username)
        }
    }

    /// `#12 Trial X`, `super token`, or nothing known.
    pub(crate) fn project(&self) -> Option<String> {
        if self.super_token {
            return Some("super token (all of the user's projects)".into());
        }
        match (self.project_id, &self.project_title) {
            (Some(id), Some(title)) => Some(format!("#{id} {title}")),
            (Some(id), None) => Some(format!("#{id}")),
            (None, Some(title)) => Some(title.clone()),
            (None, None) => None,
        }
    }

    /// What the long-term reports show of the owner.
    pub(crate) fn view(&self) -> OwnerView {
        OwnerView {
            username: self.username.clone(),
            person: self.person(),
            project_id: self.project_id,
            project: self.project(),
        }
    }

    /// REDCap's last API use as a time. REDCap writes server-local time (`2026-12-01
    /// 10:00:00`); it is taken as UTC, as a few hours do not matter to a rule counted in months.
    pub(crate) fn last_api_use_at(&self) -> Option<Timestamp> {
        let text = self.last_api_use.as_deref()?.trim();
        let (date, clock) = text.split_once([' ', 'T']).unwrap_or((text, "00:00:00"));
        let day = parse_day(date)?;
        let mut parts = clock.trim_end_matches('Z').split(':');
        let h: u64 = parts.next()?.parse().ok()?;
        let m: u64 = parts.next().unwrap_or("0").parse().ok()?;
        let s: f64 = parts.next().unwrap_or("0").parse().ok()?;
        if h > 23 || m > 59 || !(0.0..61.0).contains(&s) {
            return None;
        }
        Some(
            day.start()
                .plus(Span::from_secs(h * 3600 + m * 60 + s as u64)),
        )
    }

    /// The PI's name and e-mail, if REDCap has them.
    pub(crate) fn pi(&self) -> Option<String> {
        let name = join_name(&self.pi_first_name, &self.pi_last_name);
        match (name.is_empty(), &self.pi_email) {
            (true, None) => None,
            (true, Some(email)) => Some(email.clone()),
            (false, None) => Some(name),
            (false, Some(email)) => Some(format!("{name} <{email}>")),
        }
    }
}

fn join_name(first: &Option<String>, last: &Option<String>) -> String {
    [first, last]
        .into_iter()
        .flatten()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// One entry read from a source: the token (raw, or already a fingerprint) and its owner.
pub(crate) enum EntryToken {
    Raw(RawToken),
    Fingerprint(TokenFingerprint),
}

/// The fingerprint → owner map a source's entries make. Raw tokens are fingerprinted and
/// dropped (zeroed) here, one at a time. A token listed twice keeps its first owner.
pub(crate) fn build_map(
    key: &SiteKey,
    entries: impl IntoIterator<Item = (EntryToken, Owner)>,
) -> FingerprintMap<Arc<Owner>> {
    let mut map = FingerprintMap::default();
    for (token, owner) in entries {
        let fingerprint = match token {
            EntryToken::Raw(raw) => key.fingerprint(&raw),
            EntryToken::Fingerprint(fp) => fp,
        };
        map.entry(fingerprint).or_insert_with(|| Arc::new(owner));
    }
    map
}

/// Why the directory cannot be read; each says what to fix. Never holds a token.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DirectoryError {
    #[error(
        "cannot reach REDCap's database at {address} (`directory.host`/`port`/`socket`): \
         {message}; check that the server runs and the address is right"
    )]
    Unreachable { address: String, message: String },
    #[error(
        "REDCap's database refused the login of `{user}` (`directory.user`, \
         `directory.password_file`): {message}; check the password and that the user was \
         created with the GRANT in the README"
    )]
    Login { user: String, message: String },
    #[error(
        "REDCap's database `{database}` (`directory.database`) lacks what the directory reads: \
         {message}; is this REDCap's database, and a REDCap version with these tables?"
    )]
    MissingTable { database: String, message: String },
    #[error(
        "user `{user}` may not read what the directory needs: {message}; run the GRANT SELECT \
         statements in the README's token directory section"
    )]
    Denied { user: String, message: String },
    #[error("reading REDCap's database failed: {0}")]
    Query(String),
    #[error("the database password file {path} (`directory.password_file`) {message}")]
    PasswordFile { path: PathBuf, message: String },
    #[error("the directory CSV {path} (`directory.csv_file`): {message}")]
    Csv { path: PathBuf, message: String },
}

/// The directory's state, as `status` and the admin API show it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DirectoryState {
    /// Not configured.
    #[default]
    Off,
    /// Configured, first read not finished.
    Loading,
    Available,
    /// The last read failed: names may be stale or missing; `error` says what to fix.
    DirectoryUnavailable,
}

/// What `status` shows of the directory: no personal data.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DirectoryStatus {
    pub state: DirectoryState,
    pub(crate) source: SourceKind,
    /// Tokens known.
    pub entries: usize,
    /// When the names in use were read (epoch seconds).
    pub(crate) loaded_at: Option<f64>,
    /// When the last read was tried (epoch seconds).
    pub(crate) attempted_at: Option<f64>,
    pub error: Option<String>,
    pub(crate) reads: u64,
    pub(crate) failures: u64,
}

struct Snapshot {
    owners: Arc<FingerprintMap<Arc<Owner>>>,
    status: DirectoryStatus,
}

struct Inner {
    snapshot: RwLock<Snapshot>,
    stop: Mutex<bool>,
    wake: Condvar,
}

/// A handle on the directory: cheap to clone, never blocks on the source.
#[derive(Clone)]
pub(crate) struct Directory {
    inner: Arc<Inner>,
}

/// Owns the refresh thread; dropping it stops the thread.
pub(crate) struct DirectoryWorker {
    inner: Arc<Inner>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for DirectoryWorker {
    fn drop(&mut self) {
        if let Ok(mut stop) = self.inner.stop.lock() {
            *stop = true;
        }
        self.inner.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Directory {
    /// A directory that knows nobody (`source = "none"`, and tests).
    pub(crate) fn off() -> Directory {
        Directory::with_state(SourceKind::None, DirectoryState::Off)
    }

    fn with_state(source: SourceKind, state: DirectoryState) -> Directory {
        Directory {
            inner: Arc::new(Inner {
                snapshot: RwLock::new(Snapshot {
                    owners: Arc::new(FingerprintMap::default()),
                    status: DirectoryStatus {
                        state,
                        source,
                        entries: 0,
                        loaded_at: None,
                        attempted_at: None,
                        error: None,
                        reads: 0,
                        failures: 0,
                    },
                }),
                stop: Mutex::new(false),
                wake: Condvar::new(),
            }),
        }
    }

    /// Starts the refresh thread (none for `source = "none"`). The first read happens on that
    /// thread: start-up never waits for the database.
    pub(crate) fn start(
        config: &DirectoryConfig,
        key: SiteKey,
    ) -> std::io::Result<(Directory, Option<DirectoryWorker>)> {
        if config.source == SourceKind::None {
            return Ok((Directory::off(), None));
        }
        let directory = Directory::with_state(config.source, DirectoryState::Loading);
        let inner = directory.inner.clone();
        let config = config.clone();
        let thread = std::thread::Builder::new()
            .name("directory".into())
            .spawn(move || refresh_loop(&inner, &config, &key))?;
        let worker = DirectoryWorker {
            inner: directory.inner.clone(),
            thread: Some(thread),
        };
        Ok((directory, Some(worker)))
    }

    /// Who `token` belongs to, if known.
    pub(crate) fn owner(&self, token: &TokenFingerprint) -> Option<Arc<Owner>> {
        let snapshot = self.inner.snapshot.read().ok()?;
        snapshot.owners.get(token).cloned()
    }

    pub(crate) fn status(&self) -> DirectoryStatus {
        match self.inner.snapshot.read() {
            Ok(snapshot) => snapshot.status.clone(),
            Err(poisoned) => poisoned.into_inner().status.clone(),
        }
    }

    /// Replaces the map after a good read.
    fn loaded(&self, owners: FingerprintMap<Arc<Owner>>, now: f64) {
        if let Ok(mut snapshot) = self.inner.snapshot.write() {
            snapshot.status.state = DirectoryState::Available;
            snapshot.status.entries = owners.len();
            snapshot.status.loaded_at = Some(now);
            snapshot.status.attempted_at = Some(now);
            snapshot.status.error = None;
            snapshot.status.reads += 1;
            snapshot.owners = Arc::new(owners);
        }
    }

    /// Marks a failed read; the names loaded before stay in use.
    fn failed(&self, error: &DirectoryError, now: f64) {
        if let Ok(mut snapshot) = self.inner.snapshot.write() {
            snapshot.status.state = DirectoryState::DirectoryUnavailable;
            snapshot.status.attempted_at = Some(now);
            snapshot.status.error = Some(error.to_string());
            snapshot.status.failures += 1;
        }
    }

    #[cfg(test)]
    pub(crate) fn from_map(owners: FingerprintMap<Arc<Owner>>) -> Directory {
        let directory = Directory::with_state(SourceKind::Csv, DirectoryState::Loading);
        directory.loaded(owners, 0.0);
        directory
    }
}

fn wall_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Reads the configured source once.
pub(crate) fn read_source(
    config: &DirectoryConfig,
    key: &SiteKey,
) -> Result<FingerprintMap<Arc<Owner>>, DirectoryError> {
    match config.source {
        SourceKind::None => Ok(FingerprintMap::default()),
        SourceKind::Mysql => mysql::read(config, key),
        SourceKind::Csv => {
            let path = config.csv_file.clone().unwrap_or_default();
            csv::read_file(&path, key)
        }
    }
}

fn refresh_loop(inner: &Arc<Inner>, config: &DirectoryConfig, key: &SiteKey) {
    let directory = Directory {
        inner: inner.clone(),
    };
    let mut was_failing = false;
    loop {
        let wait = match read_source(config, key) {
            Ok(owners) => {
                if was_failing {
                    tracing::info!(entries = owners.len(), "token directory available again");
                } else {
                    tracing::debug!(entries = owners.len(), "token directory read");
                }
                was_failing = false;
                directory.loaded(owners, wall_secs());
                config.refresh.span()
            }
            Err(error) => {
                if !was_failing {
                    tracing::error!(%error, "token directory unavailable: alerts and views \
                        name tokens by fingerprint (and by names read before) until it is back");
                }
                was_failing = true;
                directory.failed(&error, wall_secs());
                config.retry.span()
            }
        };
        let Ok(stop) = inner.stop.lock() else { return };
        let wait = StdDuration::from_nanos(wait.0);
        let (stop, _) = match inner.wake.wait_timeout_while(stop, wait, |stop| !*stop) {
            Ok(result) => result,
            Err(_) => return,
        };
        if *stop {
            return;
        }
    }
}

/// Reads a secret file's first line, refusing a world-readable file.
pub(crate) fn read_password(
    path: &std::path::Path,
) -> Result<zeroize::Zeroizing<String>, DirectoryError> {
    let text = crate::shared::secret_file::read_secret_text(path, 4096).map_err(|e| {
        DirectoryError::PasswordFile {
            path: path.to_owned(),
            message: e.to_string(),
        }
    })?;
    let line = text.lines().next().unwrap_or("").trim_end_matches('\r');
    Ok(zeroize::Zeroizing::new(line.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SiteKey {
        SiteKey::from_bytes([7; 32])
    }

    fn raw(text: &str) -> EntryToken {
        EntryToken::Raw(RawToken::parse(text.as_bytes()).ok().unwrap())
    }

    #[test]
    fn map_is_keyed_by_the_fingerprint_of_the_upper_cased_token() {
        let owner = Owner {
            username: "jdoe".into(),
            ..Owner::default()
        };
        let map = build_map(
            &key(),
            [(raw("abcdef0123456789abcdef0123456789"), owner.clone())],
        );
        let fp = key().fingerprint(
            &RawToken::parse(b"ABCDEF0123456789ABCDEF0123456789")
                .ok()
                .unwrap(),
        );
        assert_eq!(map.get(&fp).map(|o| o.as_ref()), Some(&owner));
        assert_eq!(map.len(), 1);
    }

    #[test]
    fn a_token_listed_twice_keeps_its_first_owner() {
        let first = Owner {
            username: "first".into(),
            ..Owner::default()
        };
        let second = Owner {
            username: "second".into(),
            ..Owner::default()
        };
        let token = "0123456789ABCDEF0123456789ABCDEF";
        let map = build_map(&key(), [(raw(token), first), (raw(token), second)]);
        assert_eq!(map.len(), 1);
        assert_eq!(map.values().next().unwrap().username, "first");
    }

    #[test]
    fn owner_names_person_project_and_pi() {
        let owner = Owner {
            username: "jdoe".into(),
            first_name: Some("Jane".into()),
            last_name: Some("Doe".into()),
            project_id: Some(12),
            project_title: Some("Trial X".into()),
            pi_first_name: Some("Ada".into()),
            pi_last_name: Some("Lovelace".into()),
            pi_email: Some("ada@example.org".into()),
            ..Owner::default()
        };
        assert_eq!(owner.person(), "Jane Doe (jdoe)");
        assert_eq!(owner.project().as_deref(), Some("#12 Trial X"));
        assert_eq!(
            owner.pi().as_deref(),
            Some("Ada Lovelace <ada@example.org>")
        );
        let bare = Owner {
            username: "svc".into(),
            ..Owner::default()
        };
        assert_eq!(bare.person(), "svc");
        assert_eq!(bare.project(), None);
        assert_eq!(bare.pi(), None);
    }

    #[test]
    fn config_checks_name_the_missing_keys() {
        let csv = DirectoryConfig {
            source: SourceKind::Csv,
            ..DirectoryConfig::default()
        };
        assert_eq!(csv.problems()[0].key, "directory.csv_file");
        let mysql = DirectoryConfig {
            source: SourceKind::Mysql,
            tls_ca_file: Some("/ca.pem".into()),
            ..DirectoryConfig::default()
        };
        assert_eq!(mysql.problems()[0].key, "directory.tls_ca_file");
        assert!(DirectoryConfig::default().problems().is_empty());
    }

    #[test]
    fn a_failed_read_keeps_the_names_and_says_directory_unavailable() {
        let owner = Owner {
            username: "jdoe".into(),
            ..Owner::default()
        };
        let fp = TokenFingerprint([1; 8]);
        let directory =
            Directory::from_map(build_map(&key(), [(EntryToken::Fingerprint(fp), owner)]));
        assert_eq!(directory.status().state, DirectoryState::Available);
        directory.failed(&DirectoryError::Query("gone".into()), 1.0);
        let status = directory.status();
        assert_eq!(status.state, DirectoryState::DirectoryUnavailable);
        assert!(status.error.unwrap().contains("gone"));
        assert_eq!(directory.owner(&fp).unwrap().username, "jdoe");
        let json = serde_json::to_value(directory.status()).unwrap();
        assert_eq!(json["state"], "directory_unavailable");
    }
}
