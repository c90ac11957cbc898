//! Admin requests to a running daemon: how `redcap-monitor suspend` and `lift` act while the
//! daemon holds the store (redb lets one process write it).
//!
//! The command line writes one JSON request into a directory beside the store
//! (`<store path>.requests/`, mode 0700 like the store's own directory, so only the daemon's user
//! and root can ask), the daemon picks it up on its next tick, carries it out exactly as the
//! admin API would, and writes the reply next to it. Requests are bounded in size and number.

use std::fs::{self, DirBuilder};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::ActionsError;
use crate::edges::store::{AuditEntry, Suspension};
use crate::shared::secret_file::foreign_directory;
use crate::shared::token::TokenFingerprint;

/// A request larger than this is refused unread.
const MAX_REQUEST_BYTES: u64 = 64 * 1024;

/// What an admin asks of the running daemon.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Suspend for `for_s` seconds, or until lifted when absent.
    Suspend {
        token_fp: TokenFingerprint,
        for_s: Option<f64>,
        reason: String,
    },
    Lift {
        token_fp: TokenFingerprint,
        reason: String,
    },
    /// Audit records of hooks an admin command ran (`report lifecycle --revoke --execute`)
    /// while the daemon holds the store; only `hook_result` records are taken.
    HookResults { entries: Vec<AuditEntry> },
}

/// The daemon's answer: the suspension made or lifted, or why not.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    pub error: Option<String>,
    pub suspension: Option<Suspension>,
}

impl Reply {
    pub(crate) fn done(suspension: Option<&Suspension>) -> Reply {
        Reply {
            ok: true,
            error: None,
            suspension: suspension.cloned(),
        }
    }

    pub(crate) fn error(message: &str) -> Reply {
        Reply {
            ok: false,
            error: Some(message.to_owned()),
            suspension: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error(
        "the state store {store} is open for writing in another process that takes no admin \
         requests ({dir} is missing): stop that process, or run `redcap-monitor run` on this \
         [store] path to have suspend and lift carried out by the daemon"
    )]
    NoDaemon { store: PathBuf, dir: PathBuf },
    #[error("cannot write the request into {dir}: {source} (run as the daemon's user or root)")]
    Write {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the daemon did not answer within {0:?}: it may be stopped or stuck; check its log \
         (the request was withdrawn)"
    )]
    Timeout(Duration),
    #[error("the daemon's reply {path} cannot be read: {message}")]
    BadReply { path: PathBuf, message: String },
}

/// Where a daemon using the store at `store_path` picks up requests.
pub(crate) fn request_dir(store_path: &Path) -> PathBuf {
    let mut dir = store_path.as_os_str().to_owned();
    dir.push(".requests");
    PathBuf::from(dir)
}

/// Hands `request` to the daemon running on the store at `store_path` and waits for its reply.
pub fn submit_request(
    store_path: &Path,
    request: &Request,
    timeout: Duration,
) -> Result<Reply, RequestError> {
    let dir = request_dir(store_path);
    if !dir.is_dir() {
        return Err(RequestError::NoDaemon {
            store: store_path.to_owned(),
            dir,
        });
    }
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let name = format!("{nanos}-{}", std::process::id());
    let path = dir.join(format!("{name}.json"));
    let partial = dir.join(format!("{name}.partial"));
    let reply_path = dir.join(format!("{name}.reply"));
    let write_error = |source| RequestError::Write {
        dir: dir.clone(),
        source,
    };
    let text = serde_json::to_vec(request).unwrap_or_default();
    // Readable by the daemon's user when root asks: the 0700 directory keeps everyone else out.
    write_new(&partial, &text, 0o644).map_err(write_error)?;
    // The daemon reads only complete `.json` files: the rename is the hand-over.
    fs::rename(&partial, &path).map_err(write_error)?;
    let started = Instant::now();
    while started.elapsed() < timeout {
        if let Ok(bytes) = fs::read(&reply_path) {
            let _ = fs::remove_file(&reply_path);
            return serde_json::from_slice(&bytes).map_err(|err| RequestError::BadReply {
                path: reply_path.clone(),
                message: err.to_string(),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Withdraw it if the daemon has not taken it yet; if it has, the reply is left behind.
    let _ = fs::remove_file(&path);
    Err(RequestError::Timeout(timeout))
}

/// The daemon's side: the directory it watches.
pub(super) struct RequestDir {
    dir: PathBuf,
}

/// Where to put the reply to one request file.
pub(crate) struct Answer(PathBuf);

/// Where the reply to an admin request goes.
pub(crate) enum ReplyTo {
    /// Next to the request file it came in (`redcap-monitor suspend/lift`).
    File(Answer),
    /// To whoever handed it in (the admin API's handler, over its channel).
    Callback(Box<dyn FnOnce(Reply) + Send>),
}

/// One admin request, from a request file or the admin API: they wait in one queue
/// ([`super::Actions::submit`]) and are carried out in order by the same code.
pub(crate) struct AdminRequest {
    /// `Err`: a request file that could not be read (answered with the problem).
    pub(crate) request: Result<Request, String>,
    pub(crate) reply: ReplyTo,
}

impl RequestDir {
    pub(super) fn create(store_path: &Path) -> Result<RequestDir, ActionsError> {
        let dir = request_dir(store_path);
        let error = |source| ActionsError::RequestDir {
            path: dir.clone(),
            source,
        };
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(error)?;
        // An existing directory is used only if it is what this code would have made: whoever
        // else could write into it could answer requests or plant links for the replies.
        if let Some(problem) = foreign_directory(&dir, true) {
            return Err(error(std::io::Error::other(format!(
                "it exists but {problem}; remove it (`rm -r {}`) and start the daemon again, \
                 which creates it with mode 0700",
                dir.display()
            ))));
        }
        Ok(RequestDir { dir })
    }

    pub(super) fn path(&self) -> &Path {
        &self.dir
    }

    /// Takes up to `limit` waiting requests, oldest first, removing them from the directory.
    pub(super) fn take(&self, limit: usize) -> Vec<AdminRequest> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut names: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        names.sort();
        names.truncate(limit);
        names
            .into_iter()
            .map(|path| {
                let request = read_request(&path);
                let _ = fs::remove_file(&path);
                AdminRequest {
                    request,
                    reply: ReplyTo::File(Answer(path.with_extension("reply"))),
                }
            })
            .collect()
    }

    /// Writes the reply where the requester waits for it (write a sibling, rename over).
    pub(super) fn answer(answer: &Answer, reply: &Reply) {
        let partial = answer.0.with_extension("reply-partial");
        let text = serde_json::to_vec(reply).unwrap_or_default();
        let _ = fs::remove_file(&partial);
        if let Err(err) =
            write_new(&partial, &text, 0o600).and_then(|()| fs::rename(&partial, &answer.0))
        {
            tracing::error!(path = %answer.0.display(), error = %err, "cannot answer an admin request");
        }
    }
}

fn read_request(path: &Path) -> Result<Request, String> {
    // Not through a link, and not blocking on a FIFO: only a regular file is a request.
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|err| format!("cannot read the request: {err}"))?;
    if !file.metadata().is_ok_and(|m| m.is_file()) {
        return Err("the request is not a regular file".into());
    }
    let mut bytes = Vec::new();
    file.take(MAX_REQUEST_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|err| format!("cannot read the request: {err}"))?;
    if bytes.len() as u64 > MAX_REQUEST_BYTES {
        return Err(format!(
            "the request is larger than {MAX_REQUEST_BYTES} bytes"
        ));
    }
    serde_json::from_slice(&bytes).map_err(|err| format!("not a request: {err}"))
}

/// Creates `path` (never through an existing file or link) holding `bytes`.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    // The umask may have taken bits the reader needs.
    file.set_permissions(fs::Permissions::from_mode(mode))?;
    file.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_existing_directory_others_could_use_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("state.redb");
        let requests = request_dir(&store);
        fs::create_dir(&requests).unwrap();
        fs::set_permissions(&requests, fs::Permissions::from_mode(0o777)).unwrap();
        let err = RequestDir::create(&store).err().unwrap().to_string();
        assert!(err.contains("mode 777") && err.contains("rm -r"), "{err}");
        fs::set_permissions(&requests, fs::Permissions::from_mode(0o700)).unwrap();
        assert!(RequestDir::create(&store).is_ok());

        let elsewhere = dir.path().join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        let linked = dir.path().join("linked.redb");
        std::os::unix::fs::symlink(&elsewhere, request_dir(&linked)).unwrap();
        let err = RequestDir::create(&linked).err().unwrap().to_string();
        assert!(err.contains("symbolic link"), "{err}");
    }

    #[test]
    fn only_regular_files_are_taken_as_requests() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("state.redb");
        let requests = RequestDir::create(&store).unwrap();
        let fifo = requests.path().join("1-fifo.json");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let target = dir.path().join("outside.json");
        fs::write(
            &target,
            br#"{"op":"lift","token_fp":"0011223344556677","reason":"x"}"#,
        )
        .unwrap();
        std::os::unix::fs::symlink(&target, requests.path().join("2-link.json")).unwrap();
        let taken = requests.take(10);
        assert_eq!(taken.len(), 2);
        assert!(
            taken.iter().all(|admin| admin.request.is_err()),
            "nothing read through a FIFO or link"
        );
        // A reply never follows a link planted where it is written.
        let ReplyTo::File(answer) = &taken[1].reply else {
            panic!("a request file is answered by file");
        };
        let partial = answer.0.with_extension("reply-partial");
        std::os::unix::fs::symlink(&target, &partial).unwrap();
        RequestDir::answer(answer, &Reply::error("refused"));
        assert!(fs::read_to_string(&target).unwrap().contains("lift"));
        assert!(fs::read_to_string(&answer.0).unwrap().contains("refused"));
    }
}
