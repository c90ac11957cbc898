//! The suspension list that REDCap's External Module reads (`redcap-module/` in the repository).
//!
//! Owns `[redcap_module]`: a directory readable by the web server's group holding
//! `suspended.txt` (the suspensions in force, one line each, rewritten atomically whenever they
//! change; its mtime refreshed every `heartbeat` so that the module can tell a live list from a
//! stale one) and `fingerprint.key` (a copy of the site key, so that the module can fingerprint
//! the token it is handed exactly as the daemon does); both are removed when the daemon stops.
//! Never holds or writes a raw token; the list names tokens by fingerprint. [`render`] is pure; [`Publisher`] is the file edge.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Deserialize;

use crate::edges::store::Suspension;
use crate::shared::model::{Span, Timestamp};
use crate::shared::secret_file::foreign_directory;
use crate::shared::settings::{Duration, Problem};
use crate::shared::token::SiteKey;

/// The list's first line: the module refuses a file that does not start with it.
pub(crate) const LIST_HEADER: &str = "# redcap-monitor suspended tokens, format 1";
/// The list's file name inside `[redcap_module] dir`.
pub(crate) const LIST_FILE: &str = "suspended.txt";
/// The key copy's file name inside `[redcap_module] dir`.
pub(crate) const KEY_FILE: &str = "fingerprint.key";
/// Longest reason written (bytes): the 403 message must stay one readable sentence.
const MAX_REASON_BYTES: usize = 400;

/// `[redcap_module]`: where the External Module finds the suspensions.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RedcapModuleConfig {
    /// Publish the list (and the key copy) for the module.
    pub(crate) enabled: bool,
    /// Directory of `suspended.txt` and `fingerprint.key`; mode 2750, `group`'s (0750 without one).
    pub(crate) dir: PathBuf,
    /// Group given read access (the web server's, whose PHP runs the module); empty: the
    /// daemon's own group.
    pub(crate) group: String,
    /// How often the list's mtime is refreshed while nothing changes (the module's
    /// `stale-after` must be longer).
    pub(crate) heartbeat: Duration,
}

impl Default for RedcapModuleConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: PathBuf::from("/run/redcap-monitor/redcap-module"),
            group: "www-data".into(),
            heartbeat: Duration(Span::from_secs(1)),
        }
    }
}

impl RedcapModuleConfig {
    /// Problems with the values, keyed `redcap_module.*`.
    pub(crate) fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if !self.dir.is_absolute() {
            problems.push(Problem::new(
                "redcap_module.dir".into(),
                format!(
                    "{:?} is not an absolute path, e.g. \"/run/redcap-monitor/redcap-module\"",
                    self.dir
                ),
            ));
        }
        let heartbeat = self.heartbeat.span();
        if heartbeat < Span::from_millis(100) || heartbeat > Span::from_secs(60) {
            problems.push(Problem::new(
                "redcap_module.heartbeat".into(),
                "must be between 100ms and 60s (the module judges the list stale after its \
                 `stale-after` seconds, 10 by default)"
                    .into(),
            ));
        }
        if self.group.len() > 64 || self.group.contains(['\0', ':', '/', ' ']) {
            problems.push(Problem::new(
                "redcap_module.group".into(),
                format!("{:?} is not a group name, e.g. \"www-data\"", self.group),
            ));
        }
        problems
    }
}

/// Gives `dir` to group `gid` with mode 2750: the group may read what is in it, and every file
/// created in it belongs to that group (the set-group-ID bit), so that the daemon hands files to
/// the web server without belonging to its group (a member could read the web server's files,
/// REDCap's database password among them). Only a member of the group or root may give a
/// directory to it, so where the daemon is neither the directory must already be the group's
/// with that bit set: the shipped unit creates it so (`ExecStartPre=+…install -d …`).
fn hand_directory_to(
    handle: &File,
    dir: &Path,
    gid: Option<u32>,
    group: &str,
) -> Result<(), PublishError> {
    use std::os::unix::fs::MetadataExt;
    let io_error = |what, source| PublishError::Io {
        what,
        path: dir.to_owned(),
        source,
    };
    let Some(gid) = gid else {
        // The daemon's own group reads; nothing is handed over.
        return handle
            .set_permissions(fs::Permissions::from_mode(0o750))
            .map_err(|e| io_error("set the mode of", e));
    };
    let metadata = handle.metadata().map_err(|e| io_error("examine", e))?;
    if metadata.gid() != gid
        && let Err(source) = std::os::unix::fs::fchown(handle, None, Some(gid))
    {
        return Err(if source.kind() == io::ErrorKind::PermissionDenied {
            PublishError::NotTheGroups {
                dir: dir.to_owned(),
                group: group.to_owned(),
            }
        } else {
            io_error("hand to the group the directory", source)
        });
    }
    // Without the group's membership the kernel drops the set-group-ID bit from a chmod, so
    // the mode is only set where it differs (a directory made ready by root is left as it is).
    if !handed_to(&metadata, gid) {
        handle
            .set_permissions(fs::Permissions::from_mode(0o2750))
            .map_err(|e| io_error("set the mode of", e))?;
    }
    let mode = handle
        .metadata()
        .map_err(|e| io_error("examine", e))?
        .mode();
    if mode & 0o2000 == 0 {
        return Err(PublishError::NotTheGroups {
            dir: dir.to_owned(),
            group: group.to_owned(),
        });
    }
    Ok(())
}

/// Whether a directory is group `gid`'s with mode 2750, as the module's must be.
pub(crate) fn handed_to(metadata: &fs::Metadata, gid: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    metadata.gid() == gid && metadata.mode() & 0o7777 == 0o2750
}

/// Why the list cannot be published.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PublishError {
    #[error(
        "[redcap_module] group {group:?} does not exist on this host: set `redcap_module.group` to \
         the web server's group (www-data on Debian, apache on RHEL)"
    )]
    UnknownGroup { group: String },
    #[error(
        "{dir} must belong to group {group:?} with the set-group-ID bit (mode 2750) for the \
         daemon to hand the REDCap module its files, and this user may not make it so: create it \
         before the daemon starts, as root: `install -d -o <daemon's user> -g {group} -m 2750 \
         {dir}` (the shipped unit does so in its ExecStartPre=+ line; a site whose web server \
         runs under another group changes that line and `redcap_module.group` together)",
        dir = dir.display()
    )]
    NotTheGroups { dir: PathBuf, group: String },
    #[error("cannot {what} {path}: {source}{advice}", advice = advice(source))]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

fn advice(source: &io::Error) -> &'static str {
    if source.kind() == io::ErrorKind::PermissionDenied {
        " (the directory must belong to `redcap_module.group` with mode 2750, which hands \
         every file made in it to that group: see the shipped unit's ExecStartPre=+ line)"
    } else {
        ""
    }
}

/// What the publisher did, for `status` and the metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub(crate) struct PublishStats {
    /// Lists written (a change of the suspensions, or a rewrite after the file went missing).
    pub(crate) writes: u64,
    /// mtime refreshes.
    pub(crate) heartbeats: u64,
    /// Writes or refreshes that failed (logged once per run of failures).
    pub(crate) errors: u64,
}

/// The list's text for the suspensions in force at `now`: a header, then one line per token,
/// sorted by fingerprint: `<fingerprint> <until: epoch seconds, or - until lifted> <reason>`.
pub(crate) fn render(suspensions: &[Suspension], now: Timestamp) -> String {
    let mut active: Vec<&Suspension> = suspensions.iter().filter(|s| s.is_active(now)).collect();
    active.sort_by_key(|s| s.token);
    active.dedup_by_key(|s| s.token);
    let mut text = format!(
        "{LIST_HEADER}\n# written {} by the daemon; its mtime is refreshed while the daemon runs\n",
        now.as_nanos() / 1_000_000_000
    );
    for suspension in active {
        let until = match suspension.until {
            // Rounded up: the module must not lift a suspension before the daemon does.
            Some(until) => until.as_nanos().div_ceil(1_000_000_000).to_string(),
            None => "-".into(),
        };
        text.push_str(&format!(
            "{} {until} {}\n",
            suspension.token,
            one_line(&suspension.reason)
        ));
    }
    text
}

/// `reason` on one line of printable text (an admin's `--reason` may hold anything), cut at
/// [`MAX_REASON_BYTES`] on a character boundary.
fn one_line(reason: &str) -> String {
    let mut line = String::with_capacity(reason.len().min(MAX_REASON_BYTES));
    for c in reason.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if line.len() + c.len_utf8() > MAX_REASON_BYTES {
            break;
        }
        line.push(c);
    }
    let line = line.trim();
    if line.is_empty() {
        "suspended by an administrator".into()
    } else {
        line.into()
    }
}

/// Writes the list when the suspensions change, refreshes its mtime every heartbeat, and
/// removes it with the key copy when the daemon stops (so that the module sees at once that no
/// list is kept).
pub(crate) struct Publisher {
    dir: PathBuf,
    list: PathBuf,
    gid: Option<u32>,
    heartbeat: Span,
    /// The suspensions changed since the last write (or the file must be written again).
    changed: bool,
    next_heartbeat: Timestamp,
    /// Within a run of failures: only its first is logged.
    failing: bool,
    stats: PublishStats,
}

impl Publisher {
    /// Creates the directory and the key copy for `config`; `None` when publishing is off.
    pub(crate) fn start(
        config: &RedcapModuleConfig,
        key: &SiteKey,
    ) -> Result<Option<Publisher>, PublishError> {
        if !config.enabled {
            return Ok(None);
        }
        let gid = match config.group.as_str() {
            "" => None,
            name => Some(group_id(name).ok_or_else(|| PublishError::UnknownGroup {
                group: name.to_owned(),
            })?),
        };
        let dir = config.dir.clone();
        let io_error = |what, path: &Path| {
            let path = path.to_owned();
            move |source| PublishError::Io { what, path, source }
        };
        fs::create_dir_all(&dir).map_err(io_error("create", &dir))?;
        // Not through a link: the chown and chmod below would land on its target.
        if let Some(problem) = foreign_directory(&dir, false) {
            return Err(io_error("use", &dir)(io::Error::other(format!(
                "it {problem}; remove it and start the daemon again, which creates it"
            ))));
        }
        let handle = File::open(&dir).map_err(io_error("open", &dir))?;
        hand_directory_to(&handle, &dir, gid, &config.group)?;
        let key_path = dir.join(KEY_FILE);
        key.with_bytes(|bytes| write_atomically(&key_path, bytes, gid))
            .map_err(io_error("write the module's key copy", &key_path))?;
        Ok(Some(Publisher {
            list: dir.join(LIST_FILE),
            dir,
            gid,
            heartbeat: config.heartbeat.span(),
            changed: true,
            next_heartbeat: Timestamp::from_nanos(0),
            failing: false,
            stats: PublishStats::default(),
        }))
    }

    /// [`Publisher::start`] for `run`: what went wrong is logged (the daemon runs on without
    /// the list, and the module acts as it is configured to when the list is missing).
    pub(crate) fn start_or_log(config: &RedcapModuleConfig, key: &SiteKey) -> Option<Publisher> {
        match Publisher::start(config, key) {
            Ok(Some(publisher)) => {
                tracing::info!(dir = %publisher.dir.display(), group = %config.group,
                    "publishing the suspensions for the REDCap module");
                Some(publisher)
            }
            Ok(None) => None,
            Err(err) => {
                tracing::error!(
                    "{err}; the REDCap module gets no suspension list and acts as configured \
                     for a missing list (fail open by default)"
                );
                None
            }
        }
    }

    pub(crate) fn stats(&self) -> &PublishStats {
        &self.stats
    }

    /// The suspensions changed: the list is rewritten at the next [`Publisher::tick`].
    pub(crate) fn mark_changed(&mut self) {
        self.changed = true;
    }

    /// Writes the list if the suspensions changed (asking `suspensions` for those in force),
    /// else refreshes its mtime when a heartbeat is due. Failures are logged and retried on the
    /// next tick; they never stop the daemon.
    pub(crate) fn tick<E: std::fmt::Display>(
        &mut self,
        now: Timestamp,
        suspensions: impl FnOnce() -> Result<Vec<Suspension>, E>,
    ) {
        if !self.changed && now < self.next_heartbeat {
            return;
        }
        let result = if self.changed {
            match suspensions() {
                Ok(active) => {
                    write_atomically(&self.list, render(&active, now).as_bytes(), self.gid)
                        .map(|()| self.stats.writes += 1)
                        .map_err(|e| {
                            format!("cannot write {}: {e}{}", self.list.display(), advice(&e))
                        })
                }
                Err(e) => Err(format!("cannot read the suspensions to publish: {e}")),
            }
        } else {
            match touch(&self.list) {
                Ok(()) => {
                    self.stats.heartbeats += 1;
                    Ok(())
                }
                // Removed by someone: written again now.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.changed = true;
                    return;
                }
                Err(e) => Err(format!("cannot refresh {}: {e}", self.list.display())),
            }
        };
        match result {
            Ok(()) => {
                if self.failing {
                    tracing::info!(list = %self.list.display(), "the REDCap module's suspension list is written again");
                }
                self.failing = false;
                self.changed = false;
                self.next_heartbeat = now.plus(self.heartbeat);
            }
            Err(message) => {
                self.stats.errors += 1;
                if !self.failing {
                    tracing::error!(
                        "{message}; the REDCap module will find the list stale and \
                        act as configured (fail open or closed); retrying every tick"
                    );
                }
                self.failing = true;
            }
        }
    }

    /// Removes the list and the key copy (the daemon stops): the module then finds no list, at
    /// once, and no copy of the key outlives the run. The directory stays: the daemon may not
    /// be able to give a new one to the web server's group (the unit's `RuntimeDirectory=`
    /// goes with the service anyway).
    pub(crate) fn withdraw(self) {
        for path in [&self.list, &self.dir.join(KEY_FILE)] {
            if let Err(e) = fs::remove_file(path)
                && e.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove a file published for the REDCap module");
            }
        }
    }
}

/// `bytes` at `path` for the module: a temporary file beside it (mode 0640, given to `gid`),
/// synced, renamed over `path`, and the directory synced, so that a reader sees the old or the
/// new content whole, also after a crash.
fn write_atomically(path: &Path, bytes: &[u8], gid: Option<u32>) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"))?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(".{}.tmp", std::process::id()));
    let temp = path.with_file_name(temp_name);
    let _ = fs::remove_file(&temp);
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)?;
        // The directory's set-group-ID bit gave the file its group already; a chown is only
        // needed (and only allowed) where root runs the daemon without it.
        if let Some(gid) = gid
            && std::os::unix::fs::MetadataExt::gid(&file.metadata()?) != gid
        {
            std::os::unix::fs::fchown(&file, None, Some(gid))?;
        }
        // After the chown, and explicitly: the unit's UMask=0077 would take the group's bit.
        file.set_permissions(fs::Permissions::from_mode(0o640))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&temp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written?;
    if let Some(dir) = path.parent()
        && let Ok(dir) = File::open(dir)
    {
        let _ = dir.sync_all();
    }
    Ok(())
}

fn touch(path: &Path) -> io::Result<()> {
    OpenOptions::new()
        .write(true)
        .open(path)?
        .set_modified(SystemTime::now())
}

/// The id of group `name`, from the system's group database.
pub(crate) fn group_id(name: &str) -> Option<u32> {
    let name = CString::new(name).ok()?;
    let mut group: libc::group = unsafe { std::mem::zeroed() };
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; the buffer outlives it, and only the gid
    // (a plain integer) is read from the result.
    let rc = unsafe {
        libc::getgrnam_r(
            name.as_ptr(),
            &mut group,
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut found,
        )
    };
    (rc == 0 && !found.is_null()).then_some(group.gr_gid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edges::store::Source;
    use crate::shared::token::TokenFingerprint;

    fn suspension(fp: u8, until: Option<u64>, reason: &str) -> Suspension {
        Suspension {
            token: TokenFingerprint([fp; 8]),
            masked: None,
            since: Timestamp::from_nanos(0),
            until: until.map(|s| Timestamp::from_nanos(s * 1_000_000_000)),
            reason: reason.into(),
            level: 1,
            source: Source::Auto,
        }
    }

    #[test]
    fn the_list_has_the_header_and_one_sorted_line_per_token_in_force() {
        let now = Timestamp::from_nanos(1_000 * 1_000_000_000);
        let text = render(
            &[
                suspension(0xbb, Some(2_000), "broke heavy (2 calls in 300 s, limit 1)"),
                suspension(0xaa, None, "by hand"),
                suspension(0xcc, Some(999), "ended already"),
            ],
            now,
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], LIST_HEADER);
        assert!(lines[1].starts_with("# written 1000 "));
        assert_eq!(
            &lines[2..],
            [
                "aaaaaaaaaaaaaaaa - by hand",
                "bbbbbbbbbbbbbbbb 2000 broke heavy (2 calls in 300 s, limit 1)"
            ]
        );
    }

    #[test]
    fn an_end_within_a_second_is_rounded_up_so_the_module_never_lifts_early() {
        let mut s = suspension(1, None, "x");
        s.until = Some(Timestamp::from_nanos(1_500_000_001));
        let text = render(&[s], Timestamp::from_nanos(0));
        assert!(text.ends_with("0101010101010101 2 x\n"), "{text}");
    }

    #[test]
    fn a_reason_stays_on_one_printable_line_of_bounded_length() {
        let now = Timestamp::from_nanos(0);
        let text = render(
            &[suspension(1, None, "line one\nline two\r\t\u{7}end")],
            now,
        );
        assert!(
            text.ends_with("0101010101010101 - line one line two   end\n"),
            "{text}"
        );
        let long = "é".repeat(1000);
        let text = render(&[suspension(1, None, &long)], now);
        let line = text.lines().last().unwrap();
        assert!(line.len() <= 16 + 3 + MAX_REASON_BYTES, "{}", line.len());
        let text = render(&[suspension(1, None, " \n ")], now);
        assert!(
            text.ends_with(" - suspended by an administrator\n"),
            "{text}"
        );
    }

    #[test]
    fn bad_settings_are_named_by_key() {
        let config = RedcapModuleConfig {
            dir: "relative".into(),
            heartbeat: Duration(Span::from_millis(10)),
            group: "a:b".into(),
            ..RedcapModuleConfig::default()
        };
        let keys: Vec<String> = config.problems().into_iter().map(|p| p.key).collect();
        assert_eq!(
            keys,
            [
                "redcap_module.dir",
                "redcap_module.heartbeat",
                "redcap_module.group"
            ]
        );
        assert!(RedcapModuleConfig::default().problems().is_empty());
    }

    #[test]
    fn an_unknown_group_is_refused_with_what_to_set() {
        let dir = tempfile::tempdir().unwrap();
        let config = RedcapModuleConfig {
            dir: dir.path().join("m"),
            group: "no-such-group-redcap-monitor".into(),
            ..RedcapModuleConfig::default()
        };
        let err = Publisher::start(&config, &SiteKey::from_bytes([1; 32]))
            .err()
            .unwrap();
        assert!(err.to_string().contains("redcap_module.group"), "{err}");
    }

    #[test]
    fn a_directory_that_is_a_link_is_refused_and_its_target_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        fs::create_dir(&target).unwrap();
        fs::set_permissions(&target, fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join("module")).unwrap();
        let config = RedcapModuleConfig {
            dir: dir.path().join("module"),
            group: String::new(),
            ..RedcapModuleConfig::default()
        };
        let err = Publisher::start(&config, &SiteKey::from_bytes([1; 32]))
            .err()
            .unwrap();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        let mode = fs::metadata(&target).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o755);
        assert!(!target.join(KEY_FILE).exists());
    }

    #[test]
    fn the_directory_hands_every_file_made_in_it_to_the_group() {
        if !test_support::is_root() {
            eprintln!("skipped: only root may give a directory to a group it is not in");
            return;
        }
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let config = RedcapModuleConfig {
            dir: dir.path().join("module"),
            group: "nogroup".into(),
            ..RedcapModuleConfig::default()
        };
        let gid = group_id("nogroup").expect("Debian has the group nogroup");
        let mut publisher = Publisher::start(&config, &SiteKey::from_bytes([5; 32]))
            .unwrap()
            .unwrap();
        publisher.tick(Timestamp::from_nanos(1), || Ok::<_, String>(vec![]));
        let module = fs::metadata(dir.path().join("module")).unwrap();
        assert_eq!(module.mode() & 0o7777, 0o2750);
        assert_eq!(module.gid(), gid);
        for file in [KEY_FILE, LIST_FILE] {
            let meta = fs::metadata(dir.path().join("module").join(file)).unwrap();
            assert_eq!((meta.gid(), meta.mode() & 0o777), (gid, 0o640), "{file}");
        }
    }

    #[test]
    fn the_publisher_writes_on_change_refreshes_on_heartbeat_and_withdraws_on_stop() {
        let dir = tempfile::tempdir().unwrap();
        let config = RedcapModuleConfig {
            dir: dir.path().join("module"),
            group: String::new(),
            ..RedcapModuleConfig::default()
        };
        let key = SiteKey::from_bytes([5; 32]);
        let mut publisher = Publisher::start(&config, &key).unwrap().unwrap();
        let module_dir = dir.path().join("module");
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&module_dir), 0o750);
        assert_eq!(fs::read(module_dir.join(KEY_FILE)).unwrap(), [5; 32]);
        assert_eq!(mode(&module_dir.join(KEY_FILE)), 0o640);

        let t = |s: u64| Timestamp::from_nanos(s * 1_000_000_000);
        let calls = std::cell::Cell::new(0);
        let active = || {
            calls.set(calls.get() + 1);
            Ok::<_, String>(vec![suspension(7, Some(100), "r")])
        };
        publisher.tick(t(10), active);
        let list = module_dir.join(LIST_FILE);
        assert_eq!(mode(&list), 0o640);
        assert!(
            fs::read_to_string(&list)
                .unwrap()
                .contains("0707070707070707 100 r\n")
        );
        // Nothing changed and no heartbeat due: the store is not asked, nothing is written.
        publisher.tick(t(10), || Err::<Vec<Suspension>, _>("not asked"));
        assert_eq!(publisher.stats().writes, 1);
        assert_eq!(publisher.stats().heartbeats, 0);
        // A heartbeat refreshes the mtime only.
        let old = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1);
        File::options()
            .write(true)
            .open(&list)
            .unwrap()
            .set_modified(old)
            .unwrap();
        publisher.tick(t(11), || Err::<Vec<Suspension>, _>("not asked"));
        assert_eq!(publisher.stats().heartbeats, 1);
        assert!(fs::metadata(&list).unwrap().modified().unwrap() > old);
        // A change rewrites it whole.
        publisher.mark_changed();
        publisher.tick(t(11), || Ok::<_, String>(Vec::new()));
        assert!(!fs::read_to_string(&list).unwrap().contains("0707"));
        assert_eq!(calls.get(), 1);
        // A list removed behind the daemon's back comes back.
        fs::remove_file(&list).unwrap();
        publisher.tick(t(13), || Ok::<_, String>(Vec::new()));
        publisher.tick(t(13), || Ok::<_, String>(Vec::new()));
        assert!(list.exists());
        // Only the two files: no temporary file is left.
        assert_eq!(fs::read_dir(&module_dir).unwrap().count(), 2);
        publisher.withdraw();
        assert_eq!(
            fs::read_dir(&module_dir).unwrap().count(),
            0,
            "the list and the key copy are gone"
        );
    }
}
