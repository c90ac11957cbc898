//! What the daemon cannot see: judges the capture's counters for blind spots, so that a daemon
//! that misses API calls says so (in `status`, the metrics and a `capture_blind` alert) instead of
//! looking healthy.
//!
//! Sans-IO: the live edge hands it a [`CoverageSample`] of counters now and then, with the time;
//! it answers with the blind spots in force ([`Coverage::blind_spots`]) and queues the ones that
//! just began for the alert ([`Coverage::poll_blind`]). It never reads a counter itself.
//! Losses (a full ring, libpcap drops) are the `capture_loss` alert's; this is about traffic the
//! capture was never in a position to read.

use serde::Serialize;

use crate::shared::model::{Span, Timestamp};

/// With TLS capture on, handshakes count as unread only when no OpenSSL read at all followed
/// them for this long (their reads come after the handshake, often in the next sample).
pub(crate) const HTTPS_READ_GRACE: Span = Span::from_secs(5);

/// A blind spot stays reported this long after its counter last grew.
pub(crate) const BLIND_HOLD: Span = Span::from_secs(10 * 60);

/// Why some API calls may not be counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum BlindReason {
    /// TLS handshakes on the watched ports while no OpenSSL uprobe read anything: HTTPS that
    /// nothing decrypts (TLS capture off, no libssl attached, or a TLS library that is not a
    /// dynamically linked OpenSSL).
    HttpsUnread,
    /// HTTPS is on a watched port but the configuration cannot read it (libpcap mode, or TLS
    /// capture turned off).
    HttpsNotCaptured,
    /// Connections on the watched ports whose bytes are not HTTP/1 (another protocol, or TLS
    /// seen as ciphertext): given up on.
    NotHttp,
    /// Gaps that swallowed the start of at least one request: the call happened, its token is
    /// unknown.
    RequestStartsLost,
    /// Requests to an API path that could not be fully read (their token or fields may be
    /// missing from the records).
    UnreadableApiRequests,
    /// HTTP/2 connections whose frames or header compression could not be followed (a bad or
    /// hostile frame, HPACK state lost to a gap): their later streams are not read.
    Http2Unreadable,
    /// HTTP/2 requests on connections opened before capture started (their preface and header
    /// compression state were never seen): not readable until the client reconnects.
    Http2StartedUnseen,
    /// OpenSSL reads by a process named like the web server but running as a user not in
    /// `capture.tls.users`: not read. Either the web server runs as a user the list lacks (its
    /// HTTPS calls are then not counted), or a local user imitates it to feed made-up calls.
    HttpsOtherUser,
}

impl BlindReason {
    pub(crate) const ALL: [BlindReason; 8] = [
        BlindReason::HttpsUnread,
        BlindReason::HttpsNotCaptured,
        BlindReason::NotHttp,
        BlindReason::RequestStartsLost,
        BlindReason::UnreadableApiRequests,
        BlindReason::Http2Unreadable,
        BlindReason::Http2StartedUnseen,
        BlindReason::HttpsOtherUser,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            BlindReason::HttpsUnread => "https_unread",
            BlindReason::HttpsNotCaptured => "https_not_captured",
            BlindReason::NotHttp => "not_http",
            BlindReason::RequestStartsLost => "request_starts_lost",
            BlindReason::UnreadableApiRequests => "unreadable_api_requests",
            BlindReason::Http2Unreadable => "http2_unreadable",
            BlindReason::Http2StartedUnseen => "http2_started_unseen",
            BlindReason::HttpsOtherUser => "https_other_user",
        }
    }

    /// What it means and what to do, for the log, `status` and the alert.
    pub(crate) fn advice(self) -> &'static str {
        match self {
            BlindReason::HttpsUnread => {
                "HTTPS connections reach the watched ports but no OpenSSL read was seen: their API \
                 calls are not counted. Check that capture.tls is on, that the web server's \
                 process names are in capture.tls.processes and that it uses a dynamically linked \
                 OpenSSL (`redcap-monitor status` lists the libraries attached)"
            }
            BlindReason::HttpsNotCaptured => {
                "a TLS port is watched but no HTTPS is read: TLS capture is off in this \
                 configuration, or the OpenSSL uprobes could not be used (the start-up log says \
                 why, e.g. a missing CAP_SYS_ADMIN): API calls over HTTPS are not counted. Use \
                 capture.mode \"auto\" or \"ebpf\" with capture.tls enabled, and grant what the \
                 log names"
            }
            BlindReason::NotHttp => {
                "connections on the watched ports are not plaintext HTTP/1 and were given up on: \
                 if they carry API calls (another protocol, or HTTPS read as ciphertext) those \
                 are not counted"
            }
            BlindReason::RequestStartsLost => {
                "capture gaps swallowed the start of requests: those calls are not counted (see \
                 the losses line and the input problems)"
            }
            BlindReason::UnreadableApiRequests => {
                "requests to an API path could not be fully read: they are counted, but their \
                 token or fields may be missing"
            }
            BlindReason::Http2Unreadable => {
                "HTTP/2 connections could not be followed (bad frames, header compression lost \
                 to a gap): API calls on them after that point are not counted (see the h2_* \
                 input problems)"
            }
            BlindReason::Http2StartedUnseen => {
                "HTTP/2 connections opened before capture started carry requests: they cannot \
                 be read (their header compression began unseen) until the clients reconnect \
                 (e.g. after a graceful reload of the web server, which closes idle \
                 connections)"
            }
            BlindReason::HttpsOtherUser => {
                "a process named like the web server (capture.tls.processes) but running as a \
                 user not in capture.tls.users made OpenSSL reads, which were not read. If it is \
                 your web server, add the user its workers run as (`ps -o user= -C nginx`) to \
                 capture.tls.users, or its HTTPS calls are not counted; if not, a local user is \
                 imitating the web server"
            }
        }
    }
}

/// How HTTPS is being read at the moment of a sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TlsCoverage {
    /// The configuration reads no HTTPS (libpcap, or TLS capture off).
    Off,
    /// TLS capture is on; this many libssl files have the uprobes.
    On { libraries: usize },
}

/// Counters since the daemon started (they only grow), as the live edge read them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct CoverageSample {
    /// The kernel's count of TLS handshakes on the watched ports (0 without the TC probe).
    pub(crate) tls_handshakes: u64,
    /// OpenSSL calls of the configured processes the uprobes looked at (tracked or filtered).
    pub(crate) tls_reads: u64,
    pub(crate) not_http: u64,
    pub(crate) request_starts_lost: u64,
    pub(crate) unreadable_api_requests: u64,
    /// HTTP/2 connections given up on (frame, HPACK or protocol errors, gaps).
    pub(crate) http2_unreadable: u64,
    /// The kernel's count of OpenSSL reads by configured process names running as other users.
    pub(crate) tls_other_user: u64,
    /// The kernel's count of HTTP/2 requests on connections whose preface it never saw.
    pub(crate) http2_started_unseen: u64,
}

/// One blind spot in force.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct BlindSpot {
    pub(crate) reason: BlindReason,
    /// How many times its counter grew by (handshakes, connections, requests) since it began.
    pub(crate) count: u64,
    #[serde(serialize_with = "crate::shared::model::as_secs")]
    pub(crate) since: Timestamp,
    #[serde(serialize_with = "crate::shared::model::as_secs")]
    pub(crate) last: Timestamp,
    pub(crate) advice: &'static str,
}

/// The coverage judgement: blind spots in force and the ones not yet alerted.
pub(crate) struct Coverage {
    tls: TlsCoverage,
    https_port_watched: bool,
    last: Option<CoverageSample>,
    /// TLS handshakes seen while TLS capture is on but no OpenSSL read followed yet, and since
    /// when: a handshake's first read may come a moment (a sample) later.
    unread_handshakes: u64,
    unread_since: Option<Timestamp>,
    spots: Vec<BlindSpot>,
    newly_blind: Vec<BlindReason>,
}

impl Coverage {
    /// `https_port_watched`: a TLS port (443, 8443) is among the watched ports.
    pub(crate) fn new(tls: TlsCoverage, https_port_watched: bool) -> Coverage {
        Coverage {
            tls,
            https_port_watched,
            last: None,
            unread_handshakes: 0,
            unread_since: None,
            spots: Vec::new(),
            newly_blind: Vec::new(),
        }
    }

    /// The TLS side changed (libraries attached later, a reload).
    pub(crate) fn set_tls(&mut self, tls: TlsCoverage) {
        self.tls = tls;
    }

    /// Judges the counters read at `now`.
    pub(crate) fn observe(&mut self, sample: CoverageSample, now: Timestamp) {
        let before = self.last.replace(sample).unwrap_or_default();
        let grew = |now: u64, then: u64| now.saturating_sub(then);
        let handshakes = grew(sample.tls_handshakes, before.tls_handshakes);
        let tls_reads = grew(sample.tls_reads, before.tls_reads);
        let https_unread = match self.tls {
            TlsCoverage::Off | TlsCoverage::On { libraries: 0 } => handshakes,
            TlsCoverage::On { .. } if tls_reads > 0 => {
                self.unread_handshakes = 0;
                self.unread_since = None;
                0
            }
            TlsCoverage::On { .. } => {
                self.unread_handshakes = self.unread_handshakes.saturating_add(handshakes);
                if handshakes > 0 && self.unread_since.is_none() {
                    self.unread_since = Some(now);
                }
                match self.unread_since {
                    Some(since) if now.since(since) >= HTTPS_READ_GRACE => {
                        std::mem::take(&mut self.unread_handshakes)
                    }
                    _ => 0,
                }
            }
        };
        let static_https = u64::from(self.https_port_watched && self.tls == TlsCoverage::Off);
        for (reason, n) in [
            (BlindReason::HttpsUnread, https_unread),
            (BlindReason::HttpsNotCaptured, static_https),
            (BlindReason::NotHttp, grew(sample.not_http, before.not_http)),
            (
                BlindReason::RequestStartsLost,
                grew(sample.request_starts_lost, before.request_starts_lost),
            ),
            (
                BlindReason::UnreadableApiRequests,
                grew(
                    sample.unreadable_api_requests,
                    before.unreadable_api_requests,
                ),
            ),
            (
                BlindReason::Http2Unreadable,
                grew(sample.http2_unreadable, before.http2_unreadable),
            ),
            (
                BlindReason::Http2StartedUnseen,
                grew(sample.http2_started_unseen, before.http2_started_unseen),
            ),
            (
                BlindReason::HttpsOtherUser,
                grew(sample.tls_other_user, before.tls_other_user),
            ),
        ] {
            if n > 0 {
                self.grew(reason, n, now);
            }
        }
        self.spots.retain(|spot| {
            if spot.reason == BlindReason::HttpsNotCaptured {
                static_https > 0
            } else {
                now.since(spot.last) < BLIND_HOLD
            }
        });
    }

    fn grew(&mut self, reason: BlindReason, n: u64, now: Timestamp) {
        if let Some(spot) = self.spots.iter_mut().find(|s| s.reason == reason) {
            // The configuration-made blind spot counts samples, not traffic: keep it at 1.
            if reason != BlindReason::HttpsNotCaptured {
                spot.count = spot.count.saturating_add(n);
            }
            spot.last = now;
            return;
        }
        self.spots.push(BlindSpot {
            reason,
            count: n,
            since: now,
            last: now,
            advice: reason.advice(),
        });
        self.spots.sort_by_key(|s| s.reason);
        self.newly_blind.push(reason);
    }

    /// The blind spots in force, most serious first; empty when everything is seen.
    pub(crate) fn blind_spots(&self) -> &[BlindSpot] {
        &self.spots
    }

    #[cfg(test)]
    pub(crate) fn is_blind(&self) -> bool {
        !self.spots.is_empty()
    }

    /// A blind spot that began since the last call (one alert each).
    pub(crate) fn poll_blind(&mut self) -> Option<BlindSpot> {
        if self.newly_blind.is_empty() {
            return None;
        }
        let reason = self.newly_blind.remove(0);
        self.spots.iter().find(|s| s.reason == reason).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn at(s: u64) -> Timestamp {
        Timestamp(1_700_000_000 * SEC + s * SEC)
    }

    #[test]
    fn https_without_tls_capture_is_blind_and_alerted_once() {
        let mut c = Coverage::new(TlsCoverage::Off, false);
        c.observe(CoverageSample::default(), at(0));
        assert!(!c.is_blind());
        let seen = |n| CoverageSample {
            tls_handshakes: n,
            ..CoverageSample::default()
        };
        c.observe(seen(5), at(1));
        c.observe(seen(9), at(2));
        let spot = c.poll_blind().expect("alerted");
        assert_eq!(spot.reason, BlindReason::HttpsUnread);
        assert!(c.poll_blind().is_none(), "one alert per blind spot");
        assert_eq!(c.blind_spots()[0].count, 9);
        assert!(c.blind_spots()[0].advice.contains("capture.tls"));
    }

    #[test]
    fn reads_by_an_unlisted_user_are_a_blind_spot_that_names_the_setting() {
        let mut c = Coverage::new(TlsCoverage::On { libraries: 1 }, true);
        c.observe(CoverageSample::default(), Timestamp(0));
        assert!(c.blind_spots().is_empty());
        let sample = CoverageSample {
            tls_other_user: 4,
            ..CoverageSample::default()
        };
        c.observe(sample, Timestamp::from_nanos(1_000_000_000));
        let spots = c.blind_spots();
        assert_eq!(spots.len(), 1);
        assert_eq!(spots[0].reason, BlindReason::HttpsOtherUser);
        assert_eq!(spots[0].count, 4);
        assert!(spots[0].advice.contains("capture.tls.users"));
    }

    #[test]
    fn https_read_by_the_uprobes_is_not_blind() {
        let mut c = Coverage::new(TlsCoverage::On { libraries: 1 }, true);
        c.observe(CoverageSample::default(), at(0));
        c.observe(
            CoverageSample {
                tls_handshakes: 3,
                tls_reads: 12,
                ..CoverageSample::default()
            },
            at(1),
        );
        assert!(!c.is_blind(), "{:?}", c.blind_spots());
    }

    #[test]
    fn handshakes_that_no_uprobe_reads_are_blind_even_with_tls_on() {
        // A statically linked OpenSSL or another TLS library: the uprobes see nothing.
        let mut c = Coverage::new(TlsCoverage::On { libraries: 1 }, true);
        let handshakes = |n| CoverageSample {
            tls_handshakes: n,
            ..CoverageSample::default()
        };
        c.observe(handshakes(4), at(1));
        c.observe(handshakes(4), at(5));
        assert!(!c.is_blind(), "the reads may still come");
        c.observe(handshakes(5), at(6));
        assert_eq!(c.blind_spots()[0].reason, BlindReason::HttpsUnread);
        assert_eq!(c.blind_spots()[0].count, 5);
    }

    #[test]
    fn a_handshake_whose_read_comes_a_sample_later_is_not_blind() {
        let mut c = Coverage::new(TlsCoverage::On { libraries: 1 }, true);
        c.observe(CoverageSample::default(), at(0));
        c.observe(
            CoverageSample {
                tls_handshakes: 1,
                ..CoverageSample::default()
            },
            at(1),
        );
        c.observe(
            CoverageSample {
                tls_handshakes: 1,
                tls_reads: 3,
                ..CoverageSample::default()
            },
            at(2),
        );
        for t in 3..20 {
            c.observe(
                CoverageSample {
                    tls_handshakes: 1,
                    tls_reads: 3,
                    ..CoverageSample::default()
                },
                at(t),
            );
        }
        assert!(!c.is_blind(), "{:?}", c.blind_spots());
    }

    #[test]
    fn a_watched_tls_port_without_tls_capture_is_blind_from_the_start() {
        let mut c = Coverage::new(TlsCoverage::Off, true);
        c.observe(CoverageSample::default(), at(0));
        assert_eq!(
            c.poll_blind().unwrap().reason,
            BlindReason::HttpsNotCaptured
        );
        // It stays while the configuration stays, however long.
        c.observe(CoverageSample::default(), at(3600));
        assert!(c.is_blind());
        c.set_tls(TlsCoverage::On { libraries: 1 });
        c.observe(CoverageSample::default(), at(3601));
        assert!(!c.is_blind());
    }

    #[test]
    fn http2_that_cannot_be_followed_is_blind() {
        let mut c = Coverage::new(TlsCoverage::On { libraries: 1 }, false);
        c.observe(CoverageSample::default(), at(0));
        c.observe(
            CoverageSample {
                http2_unreadable: 1,
                http2_started_unseen: 7,
                ..CoverageSample::default()
            },
            at(1),
        );
        let reasons: Vec<_> = c.blind_spots().iter().map(|s| s.reason).collect();
        assert_eq!(
            reasons,
            [
                BlindReason::Http2Unreadable,
                BlindReason::Http2StartedUnseen
            ]
        );
    }

    #[test]
    fn a_blind_spot_ends_when_its_counter_stops_growing_for_the_hold_time() {
        let mut c = Coverage::new(TlsCoverage::On { libraries: 1 }, false);
        c.observe(CoverageSample::default(), at(0));
        let lost = |n| CoverageSample {
            request_starts_lost: n,
            ..CoverageSample::default()
        };
        c.observe(lost(1), at(10));
        assert_eq!(
            c.poll_blind().unwrap().reason,
            BlindReason::RequestStartsLost
        );
        c.observe(lost(1), at(10 + 599));
        assert!(c.is_blind());
        c.observe(lost(1), at(10 + 600));
        assert!(!c.is_blind());
        c.observe(lost(2), at(700));
        assert_eq!(
            c.poll_blind().unwrap().reason,
            BlindReason::RequestStartsLost,
            "again"
        );
        assert!(c.poll_blind().is_none());
    }
}
