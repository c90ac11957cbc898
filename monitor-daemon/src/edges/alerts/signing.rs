//! Standard Webhooks signing (standardwebhooks.com): ids, secrets and the `v1` signature.
//!
//! `webhook-signature: v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>` where the key is
//! the base64 part of a `whsec_<base64>` secret. Secrets are read once at start-up and zeroed on
//! drop; they have no `Debug` output beyond their presence.

use std::fmt;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::shared::secret_file::{SecretFileError, read_secret_text};

/// The key of a generic sink.
pub(crate) struct WebhookSecret {
    key: Zeroizing<Vec<u8>>,
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{0}")]
    File(#[from] SecretFileError),
    #[error("must hold `whsec_` followed by base64 (as Standard Webhooks secrets are written)")]
    Format,
    #[error(
        "the key is shorter than 24 bytes; make one with `echo whsec_$(head -c 32 /dev/urandom | base64)`"
    )]
    TooShort,
}

impl WebhookSecret {
    pub(crate) fn read(path: &Path) -> Result<WebhookSecret, SecretError> {
        let text = read_secret_text(path, 4096)?;
        WebhookSecret::parse(text.trim())
    }

    /// `whsec_<base64>`.
    pub(crate) fn parse(text: &str) -> Result<WebhookSecret, SecretError> {
        let encoded = text.strip_prefix("whsec_").ok_or(SecretError::Format)?;
        let key = Zeroizing::new(STANDARD.decode(encoded).map_err(|_| SecretError::Format)?);
        // Standard Webhooks secrets are 24 to 64 bytes.
        if key.len() < 24 {
            return Err(SecretError::TooShort);
        }
        Ok(WebhookSecret { key })
    }

    /// The `webhook-signature` header value for one attempt.
    pub(crate) fn sign(&self, id: &str, timestamp: u64, body: &str) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .expect("HMAC accepts keys of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body.as_bytes());
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(…)")
    }
}

/// A fresh `webhook-id`: `msg_` and 32 random hex digits.
pub(crate) fn new_webhook_id() -> String {
    let mut bytes = [0u8; 16];
    // Without randomness ids could repeat and receivers would drop alerts as duplicates, so a
    // failure here falls back to the clock and a counter, which are still unique per process.
    if getrandom::fill(&mut bytes).is_err() {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        bytes[..8].copy_from_slice(&nanos.to_be_bytes());
        bytes[8..].copy_from_slice(&COUNTER.fetch_add(1, Ordering::Relaxed).to_be_bytes());
    }
    format!("msg_{}", hex::encode(bytes))
}
