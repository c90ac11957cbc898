//! The pipeline's shared vocabulary: time, endpoints, TCP segments and stream events.
//!
//! Every stage speaks these types and nothing here knows about a later stage. Time is data: each
//! value carries the capture (or kernel) time it happened at, converted once at the edge.

use std::fmt;
use std::net::IpAddr;

/// A point in time, nanoseconds since the Unix epoch. Offline it is the capture's timestamp; live
/// it is kernel time converted once at the capture edge.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub u64);

impl Timestamp {
    pub const fn from_nanos(nanos: u64) -> Self {
        Self(nanos)
    }

    pub fn from_secs_f64(secs: f64) -> Self {
        Self((secs * 1e9) as u64)
    }

    pub(crate) const fn as_nanos(self) -> u64 {
        self.0
    }

    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / 1e9
    }

    /// Time from `earlier` to `self`, zero when `earlier` is later.
    pub const fn since(self, earlier: Timestamp) -> Span {
        Span(self.0.saturating_sub(earlier.0))
    }

    pub const fn plus(self, span: Span) -> Timestamp {
        Timestamp(self.0.saturating_add(span.0))
    }

    pub const fn minus(self, span: Span) -> Timestamp {
        Timestamp(self.0.saturating_sub(span.0))
    }
}

/// `2026-05-01T12:34:56Z`.
pub(crate) fn rfc3339(at: Timestamp) -> String {
    let secs = at.as_nanos() / 1_000_000_000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 to (year, month, day).
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The inverse of [`civil_from_days`].
pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A length of time in nanoseconds (the pipeline's own type, so that stages need no clock).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Span(pub u64);

/// Serialises a timestamp as Unix seconds (f64), as the JSONL records do.
pub(crate) fn as_secs<S: serde::Serializer>(at: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(at.as_secs_f64())
}

impl Span {
    pub const fn from_secs(secs: u64) -> Self {
        Self(secs * 1_000_000_000)
    }

    pub const fn from_millis(millis: u64) -> Self {
        Self(millis * 1_000_000)
    }

    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / 1e9
    }
}

impl From<std::time::Duration> for Span {
    fn from(d: std::time::Duration) -> Self {
        Span(d.as_nanos().min(u64::MAX as u128) as u64)
    }
}

/// One side of a TCP connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub port: u16,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip {
            IpAddr::V4(ip) => write!(f, "{ip}:{}", self.port),
            IpAddr::V6(ip) => write!(f, "[{ip}]:{}", self.port),
        }
    }
}

/// The TCP flags the pipeline cares about.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpFlags {
    pub syn: bool,
    pub ack: bool,
    pub fin: bool,
    pub rst: bool,
}

/// One TCP segment as captured, borrowing its payload from the capture buffer.
#[derive(Clone, Copy, Debug)]
pub struct TcpSegment<'a> {
    pub ts: Timestamp,
    pub src: Endpoint,
    pub dst: Endpoint,
    pub seq: u32,
    /// Present when the ACK flag is set.
    pub ack: Option<u32>,
    pub flags: TcpFlags,
    pub payload: &'a [u8],
    /// Where the sender's bytes begin, when the capture knows it without having seen a SYN (the
    /// kernel probe starts copying a connection at an API `POST`): bytes missing between this
    /// and the first byte received are a gap, not a mid-stream pickup.
    pub stream_start: Option<u32>,
}

#[cfg(test)]
impl<'a> TcpSegment<'a> {
    /// A data segment with ACK set, as the tests of later stages feed them (one builder, so that
    /// a new field is filled in one place).
    pub(crate) fn sample(
        ts: Timestamp,
        (src, dst): (Endpoint, Endpoint),
        seq: u32,
        payload: &'a [u8],
    ) -> TcpSegment<'a> {
        TcpSegment {
            ts,
            src,
            dst,
            seq,
            ack: Some(1),
            flags: TcpFlags {
                ack: true,
                ..TcpFlags::default()
            },
            payload,
            stream_start: None,
        }
    }
}

/// A released connection whose next request was copied before the capture stopped copying it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResumedEarly {
    pub client: Endpoint,
    pub(crate) server: Endpoint,
    /// Where the client's next request starts, and the server's answer to it (when known):
    /// the stream starts to give the capture for the connection copied again.
    pub(crate) client_start: u32,
    pub(crate) server_start: Option<u32>,
}

/// Which way bytes travel on a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    ClientToServer,
    ServerToClient,
}

impl Direction {
    pub const fn index(self) -> usize {
        match self {
            Direction::ClientToServer => 0,
            Direction::ServerToClient => 1,
        }
    }

    pub(crate) const fn reverse(self) -> Direction {
        match self {
            Direction::ClientToServer => Direction::ServerToClient,
            Direction::ServerToClient => Direction::ClientToServer,
        }
    }
}

/// A TCP connection as the reassembler numbers them: unique for the life of one pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub u64);

/// Why a connection stopped being tracked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// Both sides sent FIN (or one side's FIN and the other's data ended).
    Fin,
    Reset,
    /// No segment for longer than the idle timeout.
    Idle,
    /// Dropped to stay within the connection or memory limit.
    Evicted,
    /// The capture ended (offline) or the daemon is stopping.
    EndOfInput,
    /// Between two requests, the HTTP stage found nothing more worth reading until the client's
    /// next request (see `Reassembler::release`); a later request reopens it.
    Released,
}

/// What the reassembler tells the HTTP stage: in-order bytes per direction, holes, and ends.
#[derive(Debug)]
pub enum StreamEvent<'a> {
    Opened {
        conn: ConnectionId,
        ts: Timestamp,
        client: Endpoint,
        server: Endpoint,
    },
    /// The next in-order bytes of one direction.
    Data {
        conn: ConnectionId,
        dir: Direction,
        ts: Timestamp,
        bytes: &'a [u8],
    },
    /// `len` bytes of one direction were never captured; the stream continues after them.
    Gap {
        conn: ConnectionId,
        dir: Direction,
        ts: Timestamp,
        len: u64,
    },
    Closed {
        conn: ConnectionId,
        ts: Timestamp,
        reason: CloseReason,
    },
}
