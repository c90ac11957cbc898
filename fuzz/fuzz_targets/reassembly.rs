//! TCP reassembly (`reassembly.rs`): a structured sequence of segments on a few connections
//! (flags, sequence and acknowledgment numbers near the 2^32 wrap, overlaps, retransmissions,
//! reordering), idle expiries, releases and the end of input, under small limits.
//!
//! Every copy of a byte carries the same value, a function of its sequence number, so whatever
//! reassembly delivers can be checked: each direction's bytes and gaps must continue one
//! another exactly. Also checked after every step: the connection and memory limits hold, and
//! events come in a well-formed order per connection (opened first, nothing after closed).
#![no_main]

use std::collections::HashMap;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use redcap_monitor::shared::model::{
    ConnectionId, Endpoint, Span, StreamEvent, TcpFlags, TcpSegment, Timestamp,
};
use redcap_monitor::stages::reassembly::{Reassembler, ReassemblyLimits};

const CONNECTIONS: u8 = 4;
const MAX_CONNECTIONS: usize = 3;
const MAX_PER_DIRECTION: usize = 2048;
const MAX_TOTAL: usize = 3000;
/// Payload bytes repeat with this period (a prime, so that offsets cannot alias by accident).
const PERIOD: u64 = 251;

#[derive(Arbitrary, Debug)]
enum Op {
    Segment {
        conn: u8,
        from_client: bool,
        /// Sequence number, relative to the sender's initial one.
        seq: u16,
        len: u8,
        syn: bool,
        fin: bool,
        rst: bool,
        /// Acknowledgment, relative to the receiver's initial sequence number.
        ack: Option<u16>,
        /// Where the sender's bytes begin, as the kernel probe says (relative).
        stream_start: Option<u16>,
        advance_ms: u16,
    },
    Expire {
        advance_s: u8,
    },
    Release {
        conn: u8,
        client_remaining: u16,
    },
    Finish,
}

/// Initial sequence numbers close to the wrap, different per connection and direction.
fn isn(conn: u8, from_client: bool) -> u32 {
    0xffff_f000u32.wrapping_add(u32::from(conn) * 0x300 + if from_client { 0 } else { 0x9000 })
}

fn ends(conn: u8) -> (Endpoint, Endpoint) {
    // The last connection is on a port reassembly does not know: its orientation is a guess.
    let server_port = if conn == CONNECTIONS - 1 { 9999 } else { 80 };
    (
        monitor_fuzz::endpoint(conn + 1, 40000 + u16::from(conn)),
        monitor_fuzz::endpoint(100, server_port),
    )
}

/// What has been seen of one connection's events.
#[derive(Default)]
struct Seen {
    closed: bool,
    /// Per direction: the position (mod PERIOD) the next delivered byte must have.
    next: [Option<u64>; 2],
}

struct Checker {
    conns: HashMap<ConnectionId, Seen>,
}

impl Checker {
    fn event(&mut self, event: &StreamEvent<'_>) {
        match *event {
            StreamEvent::Opened { conn, .. } => {
                assert!(
                    self.conns.insert(conn, Seen::default()).is_none(),
                    "{conn:?} opened twice"
                );
            }
            StreamEvent::Data {
                conn, dir, bytes, ..
            } => {
                assert!(!bytes.is_empty(), "empty Data event");
                let seen = self.live(conn);
                let next = &mut seen.next[dir.index()];
                for &b in bytes {
                    let at = u64::from(b);
                    assert!(at < PERIOD, "a byte no segment carried: {b}");
                    if let Some(expected) = *next {
                        assert_eq!(at, expected, "{conn:?} {dir:?}: bytes out of order");
                    }
                    *next = Some((at + 1) % PERIOD);
                }
            }
            StreamEvent::Gap { conn, dir, len, .. } => {
                assert!(len > 0, "empty gap");
                let seen = self.live(conn);
                if let Some(next) = &mut seen.next[dir.index()] {
                    *next = (*next + len % PERIOD) % PERIOD;
                }
            }
            StreamEvent::Closed { conn, .. } => {
                self.live(conn).closed = true;
            }
        }
    }

    fn live(&mut self, conn: ConnectionId) -> &mut Seen {
        let seen = self
            .conns
            .get_mut(&conn)
            .unwrap_or_else(|| panic!("event for {conn:?} before it was opened"));
        assert!(!seen.closed, "event for {conn:?} after it was closed");
        seen
    }
}

fn payload(seq_offset: u32, len: u8) -> Vec<u8> {
    (0..u32::from(len))
        .map(|i| (u64::from(seq_offset + i) % PERIOD) as u8)
        .collect()
}

fuzz_target!(|ops: Vec<Op>| {
    let mut reassembler = Reassembler::new(ReassemblyLimits {
        max_connections: MAX_CONNECTIONS,
        max_buffered_per_direction: MAX_PER_DIRECTION,
        max_buffered_total: MAX_TOTAL,
        idle_timeout: Span::from_secs(10),
        server_ports: vec![80],
        max_unconfirmed: (MAX_CONNECTIONS / 8).max(1),
    });
    let mut checker = Checker {
        conns: HashMap::new(),
    };
    let mut now = Timestamp(1_767_600_000_000_000_000);
    for op in ops.into_iter().take(512) {
        let emit = &mut |event: StreamEvent<'_>| checker.event(&event);
        match op {
            Op::Segment {
                conn,
                from_client,
                seq,
                len,
                syn,
                fin,
                rst,
                ack,
                stream_start,
                advance_ms,
            } => {
                let conn = conn % CONNECTIONS;
                let (client, server) = ends(conn);
                let (src, dst) = if from_client {
                    (client, server)
                } else {
                    (server, client)
                };
                let own = isn(conn, from_client);
                let other = isn(conn, !from_client);
                // A SYN's own number carries no byte: data starts one after it.
                let first = u32::from(seq) + u32::from(syn);
                let bytes = payload(first, len);
                now = now.plus(Span::from_millis(u64::from(advance_ms)));
                let segment = TcpSegment {
                    ts: now,
                    src,
                    dst,
                    seq: own.wrapping_add(u32::from(seq)),
                    ack: ack.map(|a| other.wrapping_add(u32::from(a))),
                    flags: TcpFlags {
                        syn,
                        ack: ack.is_some(),
                        fin,
                        rst,
                    },
                    payload: &bytes,
                    stream_start: stream_start.map(|s| own.wrapping_add(u32::from(s))),
                };
                reassembler.push(&segment, emit);
            }
            Op::Expire { advance_s } => {
                now = now.plus(Span::from_secs(u64::from(advance_s)));
                reassembler.expire(now, emit);
            }
            Op::Release {
                conn,
                client_remaining,
            } => {
                let (client, server) = ends(conn % CONNECTIONS);
                reassembler.release(client, server, u64::from(client_remaining), now, emit);
                let _ = reassembler.take_resumed_early().count();
            }
            Op::Finish => reassembler.finish(now, emit),
        }
        assert!(reassembler.connections() <= MAX_CONNECTIONS);
        assert!(
            reassembler.buffered_bytes() <= MAX_TOTAL,
            "{} bytes buffered over the limit of {MAX_TOTAL}",
            reassembler.buffered_bytes()
        );
    }
    reassembler.finish(now, &mut |event| checker.event(&event));
    assert_eq!(reassembler.connections(), 0);
    assert_eq!(reassembler.buffered_bytes(), 0);
});
