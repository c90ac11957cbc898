//! API tokens as secrets: the raw token, its keyed fingerprint and its masked form.
//!
//! A [`RawToken`] has no `Debug`, `Display` or `Serialize` and is zeroed when dropped, so the
//! compiler keeps it out of logs and records. Only [`TokenFingerprint`] (first 16 hex digits of
//! HMAC-SHA256(site key, upper-cased token)) and [`MaskedToken`] (`ABC…EF`) may be shown.

use std::fmt;
use std::path::Path;

/// A token as sent by a client, upper-cased. Never printed, serialised or stored.
pub struct RawToken {
    _bytes: zeroize::Zeroizing<Vec<u8>>,
}

/// Why a request's token cannot identify a caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenProblem {
    /// No `token` field in the body.
    Missing,
    /// Empty, too long, or not `[A-Za-z0-9]` (REDCap rejects these with 403).
    Malformed,
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

/// REDCap's own masked style for people: first 3 and last 2 characters.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MaskedToken(pub String);

/// The secret that keys fingerprints for one site.
pub struct SiteKey {
    _key: zeroize::Zeroizing<[u8; 32]>,
}

#[derive(Debug, thiserror::Error)]
pub enum SiteKeyError {
    #[error("cannot read the site key {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("cannot create the site key {path}: {source}")]
    Create { path: String, source: std::io::Error },
    #[error("the site key {path} must hold at least 32 bytes (it has {len}); delete it to make a new one")]
    TooShort { path: String, len: usize },
}

impl RawToken {
    /// Validates and upper-cases a token taken from a request body.
    pub fn parse(_value: &[u8]) -> Result<RawToken, TokenProblem> {
        todo!()
    }
}

impl SiteKey {
    /// Reads the key file, creating it with 32 random bytes and mode 0600 if it does not exist.
    pub fn load_or_create(_path: &Path) -> Result<SiteKey, SiteKeyError> {
        todo!()
    }

    pub fn fingerprint(&self, _token: &RawToken) -> TokenFingerprint {
        todo!()
    }
}
