//! Files that hold the site's secrets: the site key, the admin API's bearer token, webhook
//! signing secrets, JIRA credentials and the token directory's password; and the directories
//! the daemon keeps its own private files in (admin requests, the External Module's key copy).
//!
//! One rule for all of them, the one OpenSSH's `StrictModes` applies: a secret is read only
//! from a regular file that no other user can read or change (no access for others, no write
//! for the group) and that belongs to root or to the user reading it. Whoever could read the
//! site key could match fingerprints to guessed tokens; whoever could change it would make every
//! suspension miss its token. The file is opened once and checked through that open file
//! (`fstat`), so it cannot be swapped between the check and the read; a FIFO or device is
//! refused without blocking on it. Reads are bounded.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use zeroize::Zeroizing;

/// Why a secret file was not read; each message says how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    #[error("cannot be read: {0}")]
    Read(#[source] io::Error),
    #[error(
        "is not a regular file (a directory, FIFO or device): point the setting at the file that holds the secret"
    )]
    NotAFile,
    #[error("can be read or changed by every user (mode {mode:03o}): run `chmod o-rwx` on it")]
    OpenToOthers { mode: u32 },
    #[error("can be changed by its group (mode {mode:03o}): run `chmod g-w` on it")]
    GroupWritable { mode: u32 },
    #[error(
        "belongs to uid {owner}, neither root nor the user reading it (uid {reader}): `chown` it to one of them"
    )]
    ForeignOwner { owner: u32, reader: u32 },
    #[error("is larger than {max} bytes: is this the right file?")]
    TooLarge { max: u64 },
}

impl SecretFileError {
    /// The file does not exist (a caller may then create it).
    pub(crate) fn is_not_found(&self) -> bool {
        matches!(self, SecretFileError::Read(e) if e.kind() == io::ErrorKind::NotFound)
    }
}

/// The bytes of the secret file at `path`, at most `max_bytes` of them, after the checks above.
pub(crate) fn read_secret_file(
    path: &Path,
    max_bytes: u64,
) -> Result<Zeroizing<Vec<u8>>, SecretFileError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        // A FIFO would block the open until someone writes to it.
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(SecretFileError::Read)?;
    check(&file)?;
    let mut bytes = Zeroizing::new(Vec::new());
    file.take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(SecretFileError::Read)?;
    if bytes.len() as u64 > max_bytes {
        return Err(SecretFileError::TooLarge { max: max_bytes });
    }
    Ok(bytes)
}

/// [`read_secret_file`] as UTF-8 text.
pub(crate) fn read_secret_text(
    path: &Path,
    max_bytes: u64,
) -> Result<Zeroizing<String>, SecretFileError> {
    let bytes = read_secret_file(path, max_bytes)?;
    let text = std::str::from_utf8(&bytes).map_err(|_| {
        SecretFileError::Read(io::Error::new(
            io::ErrorKind::InvalidData,
            "the file is not UTF-8 text",
        ))
    })?;
    Ok(Zeroizing::new(text.to_owned()))
}

fn check(file: &File) -> Result<(), SecretFileError> {
    let metadata = file.metadata().map_err(SecretFileError::Read)?;
    // SAFETY: geteuid cannot fail.
    let reader = unsafe { libc::geteuid() };
    judge(metadata.is_file(), metadata.mode(), metadata.uid(), reader)
}

fn judge(is_file: bool, mode: u32, owner: u32, reader: u32) -> Result<(), SecretFileError> {
    if !is_file {
        return Err(SecretFileError::NotAFile);
    }
    let mode = mode & 0o777;
    if mode & 0o007 != 0 {
        return Err(SecretFileError::OpenToOthers { mode });
    }
    if mode & 0o020 != 0 {
        return Err(SecretFileError::GroupWritable { mode });
    }
    // Root may read what a service user owns (an admin running `redcap-monitor fingerprint`).
    if owner != 0 && owner != reader && reader != 0 {
        return Err(SecretFileError::ForeignOwner { owner, reader });
    }
    Ok(())
}

/// What is wrong with an existing directory the daemon keeps private files in, if anything: it
/// must be a real directory (not a link that would send writes, `chown` and `chmod` elsewhere)
/// owned by the daemon's user, and with `private`, closed to everyone else.
pub(crate) fn foreign_directory(path: &Path, private: bool) -> Option<String> {
    let metadata = match std::fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(err) => return Some(format!("cannot be examined: {err}")),
    };
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    judge_directory(&metadata, me, private)
}

fn judge_directory(metadata: &std::fs::Metadata, me: u32, private: bool) -> Option<String> {
    if metadata.file_type().is_symlink() {
        return Some("is a symbolic link".into());
    }
    if !metadata.is_dir() {
        return Some("is not a directory".into());
    }
    if metadata.uid() != me {
        return Some(format!(
            "belongs to uid {}, not to the daemon's user (uid {me})",
            metadata.uid()
        ));
    }
    let mode = metadata.mode() & 0o777;
    (private && mode & 0o077 != 0).then(|| format!("other users may use it (mode {mode:03o})"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn secret(dir: &Path, mode: u32) -> std::path::PathBuf {
        let path = dir.join(format!("secret-{mode:o}"));
        std::fs::write(&path, b"s3cret").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn private_files_are_read_and_open_ones_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o600, 0o640, 0o400] {
            let bytes = read_secret_file(&secret(dir.path(), mode), 64).unwrap();
            assert_eq!(bytes.as_slice(), b"s3cret");
        }
        let err = read_secret_file(&secret(dir.path(), 0o644), 64).unwrap_err();
        assert!(err.to_string().contains("chmod o-rwx"), "{err}");
        let err = read_secret_file(&secret(dir.path(), 0o660), 64).unwrap_err();
        assert!(err.to_string().contains("chmod g-w"), "{err}");
        let err = read_secret_file(&secret(dir.path(), 0o600), 3).unwrap_err();
        assert!(matches!(err, SecretFileError::TooLarge { max: 3 }));
        assert!(
            read_secret_file(&dir.path().join("absent"), 64)
                .unwrap_err()
                .is_not_found()
        );
    }

    #[test]
    fn the_owner_must_be_root_or_the_reader() {
        assert!(judge(true, 0o600, 0, 999).is_ok());
        assert!(judge(true, 0o600, 999, 999).is_ok());
        assert!(judge(true, 0o600, 999, 0).is_ok());
        let err = judge(true, 0o600, 1000, 999).unwrap_err();
        assert!(err.to_string().contains("`chown`"), "{err}");
    }

    #[test]
    fn a_directory_must_be_a_real_one_of_the_daemons_user() {
        let dir = tempfile::tempdir().unwrap();
        let own = dir.path().join("own");
        std::fs::create_dir(&own).unwrap();
        std::fs::set_permissions(&own, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(foreign_directory(&own, true), None);
        std::fs::set_permissions(&own, std::fs::Permissions::from_mode(0o750)).unwrap();
        assert_eq!(foreign_directory(&own, false), None);
        assert!(foreign_directory(&own, true).unwrap().contains("mode 750"));
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&own, &link).unwrap();
        assert!(
            foreign_directory(&link, false)
                .unwrap()
                .contains("symbolic link")
        );
        let metadata = std::fs::metadata(&own).unwrap();
        assert!(
            judge_directory(&metadata, 4242, false)
                .unwrap()
                .contains("uid 4242")
        );
    }

    #[test]
    fn a_fifo_or_directory_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(matches!(
            read_secret_file(&fifo, 64),
            Err(SecretFileError::NotAFile)
        ));
        assert!(matches!(
            read_secret_file(dir.path(), 64),
            Err(SecretFileError::NotAFile)
        ));
    }
}
