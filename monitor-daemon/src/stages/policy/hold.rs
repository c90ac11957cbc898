//! Which finished calls the reorder buffer must still hold back, and for whom.
//!
//! Owns the question "can a request still open start before this call and count against the
//! same window?". A request whose token is known (its body read up to a `token` field, or read
//! whole without one) can only count against that token's windows, or against its client
//! address's (when the server refuses it, or it has no usable token): it holds back only those
//! calls. A request whose token is not known yet (head or body still arriving) could be anyone's:
//! it holds back every call that started after it, for at most `policy.unknown_token_hold`. A
//! watermark (e.g. from other hosts) may hold back everything after it as well.

use std::net::IpAddr;

use crate::shared::model::Timestamp;
use crate::shared::token::TokenFingerprint;
use crate::stages::http::{ExchangeSelector, HttpTracker};

/// The requests still open, as the policy needs to know them.
pub trait OpenRequests {
    /// Start of the oldest open request whose token is not known yet among those that started
    /// after `after`.
    fn oldest_unknown_after(&self, after: Timestamp) -> Option<Timestamp>;
    /// Start of the oldest open request known to carry this token.
    fn oldest_of_token(&self, token: &TokenFingerprint) -> Option<Timestamp>;
    /// Start of the oldest open request whose token is known (or known to be missing) on a
    /// connection from this address.
    fn oldest_from_peer(&self, peer: IpAddr) -> Option<Timestamp>;
}

/// No request open (offline replays that judge in start order, tests).
pub(crate) struct NothingOpen;

impl OpenRequests for NothingOpen {
    fn oldest_unknown_after(&self, _: Timestamp) -> Option<Timestamp> {
        None
    }
    fn oldest_of_token(&self, _: &TokenFingerprint) -> Option<Timestamp> {
        None
    }
    fn oldest_from_peer(&self, _: IpAddr) -> Option<Timestamp> {
        None
    }
}

impl<S: ExchangeSelector> OpenRequests for HttpTracker<S> {
    fn oldest_unknown_after(&self, after: Timestamp) -> Option<Timestamp> {
        self.oldest_open_unknown_after(after)
    }
    fn oldest_of_token(&self, token: &TokenFingerprint) -> Option<Timestamp> {
        self.oldest_open_of_token(token)
    }
    fn oldest_from_peer(&self, peer: IpAddr) -> Option<Timestamp> {
        self.oldest_open_from_peer(peer)
    }
}

/// What holds finished calls back at one release: the requests still open, and optionally a
/// time after which every call waits whoever it is from.
pub struct Hold<'a> {
    pub(crate) open: &'a dyn OpenRequests,
    /// Every call that started at or after this waits (a watermark from elsewhere).
    pub(crate) all_since: Option<Timestamp>,
}

impl<'a> Hold<'a> {
    pub fn new(open: &'a dyn OpenRequests) -> Hold<'a> {
        Hold {
            open,
            all_since: None,
        }
    }

    /// Holds back every call that started at or after `since` (`None`: nothing).
    pub fn all_since(since: Option<Timestamp>) -> Hold<'static> {
        Hold {
            open: &NothingOpen,
            all_since: since,
        }
    }

    /// Also holds back every call that started at or after `since`.
    pub(crate) fn and_all_since(mut self, since: Option<Timestamp>) -> Hold<'a> {
        self.all_since = match (self.all_since, since) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self
    }
}
