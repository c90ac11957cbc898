//! API tokens as secrets: the raw token, its keyed fingerprint and its masked form.
//!
//! A [`RawToken`] has no `Debug`, `Display` or `Serialize` and is zeroed when dropped, so the
//! compiler keeps it out of logs and records. Only [`TokenFingerprint`] (first 16 hex digits of
//! HMAC-SHA256(site key, upper-cased token)) and [`MaskedToken`] (`ABC…EF`) may be shown.
//! [`SiteKey::load_or_create`] is the one place here that touches a file; it runs at start-up.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::secret_file::{SecretFileError, read_secret_file};

/// Longest token accepted. REDCap's own are 32 (project) or 64 (super token) characters; anything
/// much longer is not a token, and we never hold more than this of a secret-looking value.
pub(crate) const MAX_TOKEN_BYTES: usize = 128;

/// Bytes of key material in a site key file.
const SITE_KEY_BYTES: usize = 32;

/// A token as sent by a client, upper-cased. Never printed, serialised or stored.
pub struct RawToken {
    bytes: Zeroizing<Vec<u8>>,
}

/// Why a request's token cannot identify a caller.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum TokenProblem {
    /// No `token` field in the body.
    Missing,
    /// Empty, too long, or not `[A-Za-z0-9]` (REDCap rejects these with 403).
    Malformed,
    /// The request could not be read far enough to find the token (a head we cannot parse or
    /// that is over our limits): the server may have run it with a valid token.
    Unreadable,
}

/// The keyed fingerprint that names a token everywhere outside memory.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenFingerprint(pub [u8; 8]);

impl fmt::Display for TokenFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for TokenFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenFingerprint({self})")
    }
}

/// Hashing for maps keyed by [`TokenFingerprint`]: the fingerprint is already a keyed HMAC, so
/// its bytes are uniformly spread and no one without the site key can choose them (no hash
/// flooding); a multiply-and-fold of them is the hash, and SipHash's per-lookup cost is saved.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct FingerprintHash;

impl std::hash::BuildHasher for FingerprintHash {
    type Hasher = FingerprintHasher;

    fn build_hasher(&self) -> FingerprintHasher {
        FingerprintHasher(0)
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct FingerprintHasher(u64);

impl std::hash::Hasher for FingerprintHasher {
    fn finish(&self) -> u64 {
        // One multiply spreads every input bit over the high bits, and the shift brings them
        // down to the low ones the table indexes by: keys that differ only in a few bytes (made
        // up in tests and benches, unlike real fingerprints) still spread.
        let mixed = self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        mixed ^ (mixed >> 32)
    }

    fn write(&mut self, bytes: &[u8]) {
        // `[u8; 8]` hashes as its length, then its bytes; other keys are folded in (correct,
        // if not fast: only fingerprints are meant to use this hasher).
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(29) ^ u64::from_le_bytes(word);
        }
    }

    fn write_usize(&mut self, _len: usize) {
        // The length prefix of the fingerprint's array carries nothing.
    }
}

/// A map keyed by fingerprint with [`FingerprintHash`].
pub(crate) type FingerprintMap<V> = std::collections::HashMap<TokenFingerprint, V, FingerprintHash>;

/// A string that is not 16 hex digits was given where a fingerprint was expected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a token fingerprint is 16 hex digits (as shown in reports), not {given:?}")]
pub struct FingerprintParseError {
    pub(crate) given: String,
}

impl FromStr for TokenFingerprint {
    type Err = FingerprintParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut bytes = [0u8; 8];
        match hex::decode_to_slice(s, &mut bytes) {
            Ok(()) => Ok(TokenFingerprint(bytes)),
            Err(_) => Err(FingerprintParseError {
                // Cut so that a pasted raw token does not end up whole in an error message.
                given: s.chars().take(20).collect(),
            }),
        }
    }
}

impl serde::Serialize for TokenFingerprint {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for TokenFingerprint {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// REDCap's own masked style for people: first 3 and last 2 characters.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MaskedToken(pub String);

impl MaskedToken {
    /// `ABC…EF` for tokens of 8 characters or more. Shorter ones would give most of themselves
    /// away, so they show `…` and the last 2 characters only when at least 4 remain hidden, else
    /// just `…`.
    pub(crate) fn of(token: &RawToken) -> MaskedToken {
        let t = token.as_bytes();
        let n = t.len();
        let (head, tail) = if n >= 8 {
            (3, 2)
        } else if n >= 6 {
            (0, 2)
        } else {
            (0, 0)
        };
        let mut masked = String::with_capacity(head + tail + 3);
        // Token bytes are ASCII alphanumerics (checked by `RawToken::parse`).
        masked.extend(t.iter().take(head).map(|&b| char::from(b)));
        masked.push('…');
        masked.extend(t.iter().skip(n - tail).map(|&b| char::from(b)));
        MaskedToken(masked)
    }
}

impl fmt::Display for MaskedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl serde::Serialize for MaskedToken {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

/// The secret that keys fingerprints for one site.
#[derive(Clone)]
pub struct SiteKey {
    key: Zeroizing<[u8; SITE_KEY_BYTES]>,
}

#[derive(Debug, thiserror::Error)]
pub enum SiteKeyError {
    #[error("the site key {path} {source}")]
    Read {
        path: String,
        source: SecretFileError,
    },
    #[error("cannot create the site key {path}: {source}")]
    Create {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "the site key {path} must hold at least 32 bytes (it has {len}); delete it to make a new one"
    )]
    TooShort { path: String, len: usize },
}

/// A call's raw token, held from extraction to the suspend hooks only when some configured
/// suspend hook has `pass_raw_token = true`; empty otherwise (the default).
///
/// Its `Debug` prints `<redacted>` (or `None`), it has no `Display` or `Serialize`, and a clone
/// is always empty: a call record may be copied (templates, tests), the secret never is. The
/// token leaves only through [`HookToken::take`], and is zeroed when dropped.
#[derive(Default)]
pub struct HookToken(Option<RawToken>);

impl HookToken {
    /// Holds `raw` for the suspend hooks.
    pub(crate) fn held(raw: RawToken) -> HookToken {
        HookToken(Some(raw))
    }

    /// Whether a raw token is held.
    pub(crate) fn is_held(&self) -> bool {
        self.0.is_some()
    }

    /// Takes the raw token out, leaving this empty.
    pub(crate) fn take(&mut self) -> Option<RawToken> {
        self.0.take()
    }
}

impl Clone for HookToken {
    /// Empty: the raw token is never copied.
    fn clone(&self) -> HookToken {
        HookToken(None)
    }
}

impl fmt::Debug for HookToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.is_held() { "<redacted>" } else { "None" })
    }
}

impl RawToken {
    /// Validates and upper-cases a token taken from a request body.
    ///
    /// REDCap accepts `^[A-Za-z0-9]+$` and looks tokens up case-insensitively, so `abc…` and
    /// `ABC…` are the same caller and must share one fingerprint. PHP's `$` also matches before
    /// a final line feed, so `ABC…\n` passes REDCap's check too and is taken for `ABC…`.
    pub fn parse(value: &[u8]) -> Result<RawToken, TokenProblem> {
        let value = value.strip_suffix(b"\n").unwrap_or(value);
        if value.is_empty()
            || value.len() > MAX_TOKEN_BYTES
            || !value.iter().all(u8::is_ascii_alphanumeric)
        {
            return Err(TokenProblem::Malformed);
        }
        let mut bytes = Zeroizing::new(Vec::with_capacity(value.len()));
        bytes.extend(value.iter().map(u8::to_ascii_uppercase));
        Ok(RawToken { bytes })
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The token's characters (upper-cased ASCII) for the one sanctioned exit: the stdin of a
    /// suspension hook configured with `pass_raw_token = true` (see `hooks`). Never for argv,
    /// the environment, logs or records.
    pub(crate) fn expose_for_hook(&self) -> &[u8] {
        &self.bytes
    }
}

impl SiteKey {
    /// Reads the key file, creating it with 32 random bytes and mode 0600 if it does not exist.
    ///
    /// Creation is atomic: the key is written to a private temporary file and hard-linked into
    /// place, so a concurrent reader sees either no file or a whole key, and when two processes
    /// race the loser reads the winner's key.
    pub fn load_or_create(path: &Path) -> Result<SiteKey, SiteKeyError> {
        match Self::load(path) {
            Err(SiteKeyError::Read { source, .. }) if source.is_not_found() => {}
            other => return other,
        }
        let create_error = |source| SiteKeyError::Create {
            path: path.display().to_string(),
            source,
        };
        let mut key = Zeroizing::new([0u8; SITE_KEY_BYTES]);
        getrandom::fill(key.as_mut_slice())
            .map_err(|e| create_error(io::Error::other(e.to_string())))?;
        let temp = temp_path_beside(path).map_err(create_error)?;
        let published = write_private(&temp, key.as_slice()).and_then(|()| publish(&temp, path));
        let _ = fs::remove_file(&temp);
        match published {
            Ok(()) => {
                sync_parent(path);
                Ok(SiteKey { key })
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Self::load(path),
            Err(e) => Err(create_error(e)),
        }
    }

    /// A key from known bytes (tests, or a key held elsewhere).
    pub fn from_bytes(bytes: [u8; SITE_KEY_BYTES]) -> SiteKey {
        SiteKey {
            key: Zeroizing::new(bytes),
        }
    }

    pub fn fingerprint(&self, token: &RawToken) -> TokenFingerprint {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.key.as_slice())
            .expect("HMAC accepts keys of any length");
        mac.update(token.as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut fp = [0u8; 8];
        fp.copy_from_slice(&digest[..8]);
        TokenFingerprint(fp)
    }

    /// The key's bytes, lent to `f` for the one copy made of them: the key file that REDCap's
    /// External Module fingerprints tokens with (`actions::publish`). Not for logs or records.
    pub(crate) fn with_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        f(self.key.as_slice())
    }

    fn load(path: &Path) -> Result<SiteKey, SiteKeyError> {
        // Only the first 32 bytes matter; the bound keeps a wrong path (a huge file) cheap.
        let bytes = read_secret_file(path, 4096).map_err(|source| SiteKeyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let bytes = bytes.get(..SITE_KEY_BYTES).unwrap_or(&bytes);
        let key: [u8; SITE_KEY_BYTES] = bytes.try_into().map_err(|_| SiteKeyError::TooShort {
            path: path.display().to_string(),
            len: bytes.len(),
        })?;
        Ok(SiteKey::from_bytes(key))
    }
}

fn temp_path_beside(path: &Path) -> io::Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"))?;
    let mut nonce = [0u8; 8];
    getrandom::fill(&mut nonce).map_err(|e| io::Error::other(e.to_string()))?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(
        ".{}.{}.tmp",
        std::process::id(),
        hex::encode(nonce)
    ));
    Ok(path.with_file_name(temp_name))
}

fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Puts the finished temporary file at `path` without ever replacing an existing key.
fn publish(temp: &Path, path: &Path) -> io::Result<()> {
    match fs::hard_link(temp, path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(e),
        // A file system without hard links: rename is still atomic for readers, but could
        // replace a key another process created in the same instant.
        Err(_) => fs::rename(temp, path),
    }
}

/// Makes the new directory entry durable; failure only weakens crash safety, so it is ignored.
fn sync_parent(path: &Path) {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && let Ok(dir) = File::open(dir)
    {
        let _ = dir.sync_all();
    }
}

// The section is named `site` because the key is the site's secret, not the token module's.
/// Where the site's secrets live.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SiteConfig {
    /// Key for token fingerprints; created (32 random bytes, mode 0600) if absent.
    pub key_file: PathBuf,
}

impl Default for SiteConfig {
    fn default() -> Self {
        Self {
            key_file: PathBuf::from("/var/lib/redcap-monitor/site.key"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const TOKEN: &[u8] = b"0123456789ABCDEF0123456789ABCDEF";

    fn token(bytes: &[u8]) -> RawToken {
        match RawToken::parse(bytes) {
            Ok(token) => token,
            Err(problem) => panic!("test token refused: {problem:?}"),
        }
    }

    #[test]
    fn fingerprint_is_stable_for_one_key() {
        let key = SiteKey::from_bytes([7; 32]);
        let a = key.fingerprint(&token(TOKEN));
        let b = key.fingerprint(&token(TOKEN));
        assert_eq!(a, b);
        assert_eq!(a.to_string().len(), 16);
        assert!(
            a.to_string()
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
    }

    #[test]
    fn a_hook_token_prints_redacted_and_its_clone_is_empty() {
        let mut held = HookToken::held(token(TOKEN));
        assert_eq!(format!("{held:?}"), "<redacted>");
        assert_eq!(format!("{:#?}", Some(&held)), "Some(\n    <redacted>,\n)");
        let copy = held.clone();
        assert!(!copy.is_held(), "a clone never carries the token");
        assert_eq!(format!("{copy:?}"), "None");
        let raw = held.take().map(|raw| raw.expose_for_hook().to_vec());
        assert_eq!(raw.as_deref(), Some(TOKEN));
        assert!(!held.is_held() && held.take().is_none());
    }

    #[test]
    fn fingerprint_depends_on_the_site_key() {
        let a = SiteKey::from_bytes([7; 32]).fingerprint(&token(TOKEN));
        let b = SiteKey::from_bytes([8; 32]).fingerprint(&token(TOKEN));
        assert_ne!(a, b);
    }

    #[test]
    fn fingerprint_matches_hmac_of_upper_cased_token() {
        let key = SiteKey::from_bytes([1; 32]);
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&[1; 32]).unwrap();
        mac.update(b"ABCDEF0123");
        let expected = mac.finalize().into_bytes();
        assert_eq!(key.fingerprint(&token(b"abcdef0123")).0, expected[..8]);
    }

    #[test]
    fn fingerprint_maps_find_what_they_hold_and_spread_the_hash() {
        use std::hash::BuildHasher;
        let mut map = FingerprintMap::default();
        for n in 0..1000u64 {
            map.insert(TokenFingerprint(n.to_be_bytes()), n);
        }
        for n in 0..1000u64 {
            assert_eq!(map.get(&TokenFingerprint(n.to_be_bytes())), Some(&n));
        }
        assert_eq!(map.get(&TokenFingerprint([0xff; 8])), None);
        let hash = |bytes: [u8; 8]| FingerprintHash.hash_one(TokenFingerprint(bytes));
        assert_ne!(
            hash([1, 0, 0, 0, 0, 0, 0, 0]),
            hash([0, 0, 0, 0, 0, 0, 0, 1])
        );
    }

    #[test]
    fn token_case_does_not_change_the_fingerprint() {
        let key = SiteKey::from_bytes([7; 32]);
        let upper = key.fingerprint(&token(b"ABCDEF0123456789ABCDEF0123456789"));
        let lower = key.fingerprint(&token(b"abcdef0123456789abcdef0123456789"));
        let mixed = key.fingerprint(&token(b"AbCdEf0123456789aBcDeF0123456789"));
        assert_eq!(upper, lower);
        assert_eq!(upper, mixed);
    }

    #[test]
    fn different_tokens_have_different_fingerprints() {
        let key = SiteKey::from_bytes([7; 32]);
        assert_ne!(
            key.fingerprint(&token(b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")),
            key.fingerprint(&token(b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB"))
        );
    }

    #[test]
    fn fingerprint_round_trips_through_text_and_serde() {
        let fp = SiteKey::from_bytes([3; 32]).fingerprint(&token(TOKEN));
        let text = fp.to_string();
        assert_eq!(text.parse::<TokenFingerprint>(), Ok(fp));
        assert_eq!(text.to_uppercase().parse::<TokenFingerprint>(), Ok(fp));
        let json = serde_json::to_string(&fp).unwrap();
        assert_eq!(json, format!("\"{text}\""));
        assert_eq!(serde_json::from_str::<TokenFingerprint>(&json).unwrap(), fp);
    }

    #[test]
    fn fingerprint_text_must_be_16_hex_digits() {
        assert!("0123456789abcde".parse::<TokenFingerprint>().is_err());
        assert!("0123456789abcdef0".parse::<TokenFingerprint>().is_err());
        assert!("0123456789abcdeg".parse::<TokenFingerprint>().is_err());
        assert!("".parse::<TokenFingerprint>().is_err());
    }

    #[test]
    fn masked_form_shows_first_three_and_last_two() {
        assert_eq!(MaskedToken::of(&token(TOKEN)).0, "012…EF");
        assert_eq!(MaskedToken::of(&token(b"abcdefgh")).0, "ABC…GH");
        assert_eq!(MaskedToken::of(&token(b"abcdefgh")).to_string(), "ABC…GH");
    }

    #[test]
    fn masked_form_of_short_tokens_never_shows_the_token() {
        for t in [
            &b"A"[..],
            b"AB",
            b"ABC",
            b"ABCD",
            b"ABCDE",
            b"ABCDEF",
            b"ABCDEFG",
        ] {
            let masked = MaskedToken::of(&token(t)).0;
            let shown = masked.replace('…', "");
            assert!(
                shown.len() * 3 <= t.len(),
                "{masked} shows too much of a {}-byte token",
                t.len()
            );
        }
        assert_eq!(MaskedToken::of(&token(b"ABCDEFG")).0, "…FG");
        assert_eq!(MaskedToken::of(&token(b"ABC")).0, "…");
    }

    #[test]
    fn malformed_tokens_are_rejected() {
        let long = [b'A'; MAX_TOKEN_BYTES + 1];
        for bad in [
            &b""[..],
            b"ABC DEF",
            b"ABC-DEF",
            b"ABC\0",
            b"ABC\n\n",
            b"ABC\r\n",
            b"\n",
            "ÄBC".as_bytes(),
            &long,
        ] {
            assert_eq!(RawToken::parse(bad).err(), Some(TokenProblem::Malformed));
        }
        assert!(RawToken::parse(&long[..MAX_TOKEN_BYTES]).is_ok());
    }

    #[test]
    fn a_final_line_feed_passes_as_it_passes_redcap_s_check() {
        let key = SiteKey::from_bytes([3; 32]);
        let plain = RawToken::parse(b"0123456789ABCDEF0123456789ABCDEF")
            .ok()
            .unwrap();
        let with_lf = RawToken::parse(b"0123456789abcdef0123456789abcdef\n")
            .ok()
            .unwrap();
        assert_eq!(key.fingerprint(&plain), key.fingerprint(&with_lf));
    }

    #[test]
    fn key_file_is_created_private_and_read_back_identically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("site.key");
        let created = SiteKey::load_or_create(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(fs::read(&path).unwrap().len(), 32);
        let reread = SiteKey::load_or_create(&path).unwrap();
        assert_eq!(created.key.as_slice(), reread.key.as_slice());
        // No temporary files are left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn key_file_uses_its_first_32_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("site.key");
        let mut bytes = vec![9u8; 32];
        bytes.extend_from_slice(b"\ntrailing text");
        write_key(&path, &bytes);
        let key = SiteKey::load_or_create(&path).unwrap();
        let fp = key.fingerprint(&token(TOKEN));
        assert_eq!(fp, SiteKey::from_bytes([9; 32]).fingerprint(&token(TOKEN)));
    }

    #[test]
    fn short_key_file_is_refused_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("site.key");
        write_key(&path, &[1u8; 31]);
        match SiteKey::load_or_create(&path) {
            Err(SiteKeyError::TooShort { len: 31, .. }) => {}
            other => panic!("expected TooShort, got {:?}", other.err()),
        }
        assert_eq!(fs::read(&path).unwrap(), [1u8; 31]);
    }

    fn write_key(path: &Path, bytes: &[u8]) {
        fs::write(path, bytes).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
    }

    #[test]
    fn a_key_others_can_read_is_refused_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("site.key");
        fs::write(&path, [3u8; 32]).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = SiteKey::load_or_create(&path).err().unwrap().to_string();
        assert!(
            err.contains("site.key") && err.contains("chmod o-rwx"),
            "{err}"
        );
        assert_eq!(fs::read(&path).unwrap(), [3u8; 32]);
    }

    #[test]
    fn missing_directory_is_a_create_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no-such-dir").join("site.key");
        assert!(matches!(
            SiteKey::load_or_create(&path),
            Err(SiteKeyError::Create { .. })
        ));
    }
}
