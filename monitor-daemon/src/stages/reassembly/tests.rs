use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::*;
use crate::shared::model::TcpFlags;

use Direction::{ClientToServer as C2S, ServerToClient as S2C};

/// A stream event with owned bytes, easy to compare.
#[derive(Debug, PartialEq, Eq)]
enum Ev {
    Opened(u64, Endpoint, Endpoint),
    Data(u64, Direction, Vec<u8>),
    Gap(u64, Direction, u64),
    Closed(u64, CloseReason),
}

fn v4(last: u8, port: u16) -> Endpoint {
    Endpoint {
        ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)),
        port,
    }
}

const CLIENT_ISN: u32 = 1_000;
const SERVER_ISN: u32 = 9_000;

fn client() -> Endpoint {
    v4(1, 50_000)
}

fn server() -> Endpoint {
    v4(2, 80)
}

struct Harness {
    reassembler: Reassembler,
    events: Vec<Ev>,
    /// Capture time of the next pushed segment, in milliseconds.
    now_ms: u64,
    /// Data events' timestamps, in milliseconds, in order.
    data_ts_ms: Vec<u64>,
    /// Where each direction began, as the kernel probe reports it: (client's, server's).
    stream_starts: Option<(u32, u32)>,
}

impl Harness {
    fn new() -> Self {
        Self::with_limits(ReassemblyLimits::default())
    }

    fn with_limits(limits: ReassemblyLimits) -> Self {
        Self {
            reassembler: Reassembler::new(limits),
            events: Vec::new(),
            now_ms: 0,
            data_ts_ms: Vec::new(),
            stream_starts: None,
        }
    }

    fn record(events: &mut Vec<Ev>, data_ts: &mut Vec<u64>, event: StreamEvent<'_>) {
        events.push(match event {
            StreamEvent::Opened {
                conn,
                client,
                server,
                ..
            } => Ev::Opened(conn.0, client, server),
            StreamEvent::Data {
                conn,
                dir,
                bytes,
                ts,
            } => {
                data_ts.push(ts.as_nanos() / 1_000_000);
                Ev::Data(conn.0, dir, bytes.to_vec())
            }
            StreamEvent::Gap { conn, dir, len, .. } => Ev::Gap(conn.0, dir, len),
            StreamEvent::Closed { conn, reason, .. } => Ev::Closed(conn.0, reason),
        });
    }

    /// Pushes a segment from `src` to `dst`; `flags` is a string of S, A, F, R.
    fn seg(
        &mut self,
        src: Endpoint,
        dst: Endpoint,
        flags: &str,
        seq: u32,
        ack: u32,
        payload: &[u8],
    ) {
        let flags = TcpFlags {
            syn: flags.contains('S'),
            ack: flags.contains('A'),
            fin: flags.contains('F'),
            rst: flags.contains('R'),
        };
        let segment =
            TcpSegment {
                ts: Timestamp::from_nanos(self.now_ms * 1_000_000),
                src,
                dst,
                seq,
                ack: flags.ack.then_some(ack),
                flags,
                payload,
                stream_start: self.stream_starts.map(|(client, server)| {
                    if dst.port == 8080 { client } else { server }
                }),
            };
        let (events, data_ts) = (&mut self.events, &mut self.data_ts_ms);
        self.reassembler
            .push(&segment, &mut |e| Self::record(events, data_ts, e));
    }

    /// Client data at `offset` bytes into the client's stream.
    fn c(&mut self, offset: u32, payload: &[u8]) {
        let ack = SERVER_ISN.wrapping_add(1);
        self.seg(
            client(),
            server(),
            "A",
            CLIENT_ISN.wrapping_add(1 + offset),
            ack,
            payload,
        );
    }

    /// Server data at `offset` bytes into the server's stream.
    fn s(&mut self, offset: u32, payload: &[u8]) {
        let ack = CLIENT_ISN.wrapping_add(1);
        self.seg(
            server(),
            client(),
            "A",
            SERVER_ISN.wrapping_add(1 + offset),
            ack,
            payload,
        );
    }

    fn handshake(&mut self) {
        self.seg(client(), server(), "S", CLIENT_ISN, 0, b"");
        self.seg(server(), client(), "SA", SERVER_ISN, CLIENT_ISN + 1, b"");
        self.seg(client(), server(), "A", CLIENT_ISN + 1, SERVER_ISN + 1, b"");
    }

    fn expire(&mut self, at_ms: u64) {
        let (events, data_ts) = (&mut self.events, &mut self.data_ts_ms);
        self.reassembler
            .expire(Timestamp::from_nanos(at_ms * 1_000_000), &mut |e| {
                Self::record(events, data_ts, e)
            });
    }

    fn finish(&mut self) {
        let (events, data_ts) = (&mut self.events, &mut self.data_ts_ms);
        let now = Timestamp::from_nanos(self.now_ms * 1_000_000);
        self.reassembler
            .finish(now, &mut |e| Self::record(events, data_ts, e));
    }

    fn take(&mut self) -> Vec<Ev> {
        std::mem::take(&mut self.events)
    }

    fn stats(&self) -> &ReassemblyStats {
        self.reassembler.stats()
    }
}

fn data(dir: Direction, bytes: &[u8]) -> Ev {
    Ev::Data(0, dir, bytes.to_vec())
}

#[test]
fn in_order_data_follows_opened_in_both_directions() {
    let mut h = Harness::new();
    h.handshake();
    h.c(0, b"GET / HTTP/1.1\r\n");
    h.s(0, b"HTTP/1.1 200 OK\r\n");
    h.c(16, b"\r\n");
    assert_eq!(
        h.take(),
        vec![
            Ev::Opened(0, client(), server()),
            data(C2S, b"GET / HTTP/1.1\r\n"),
            data(S2C, b"HTTP/1.1 200 OK\r\n"),
            data(C2S, b"\r\n"),
        ]
    );
    assert_eq!(h.stats().connections_opened, 1);
    assert_eq!(h.stats().midstream_pickups, 0);
    assert_eq!(h.stats().bytes_delivered, 35);
}

#[test]
fn zero_length_segments_carry_no_data() {
    let mut h = Harness::new();
    h.handshake();
    h.c(0, b"");
    h.s(0, b"");
    assert_eq!(h.take(), vec![Ev::Opened(0, client(), server())]);
}

#[test]
fn out_of_order_segment_waits_for_the_hole_and_keeps_its_own_time() {
    let mut h = Harness::new();
    h.handshake();
    h.now_ms = 10;
    h.c(3, b"def");
    h.c(6, b"ghi");
    h.now_ms = 20;
    h.c(0, b"abc");
    let events = h.take();
    assert_eq!(
        events[1..],
        [data(C2S, b"abc"), data(C2S, b"def"), data(C2S, b"ghi")]
    );
    assert_eq!(h.data_ts_ms, vec![20, 10, 10]);
    assert_eq!(h.stats().out_of_order_segments, 2);
    assert_eq!(h.reassembler.buffered_bytes(), 0);
}

#[test]
fn retransmission_is_dropped_and_counted() {
    let mut h = Harness::new();
    h.handshake();
    h.c(0, b"abc");
    h.c(0, b"abc");
    h.c(1, b"bcdef");
    assert_eq!(h.take()[1..], [data(C2S, b"abc"), data(C2S, b"def")]);
    assert_eq!(h.stats().retransmitted_segments, 1);
    assert_eq!(h.stats().retransmitted_bytes, 5);
}

#[test]
fn overlap_with_buffered_data_keeps_the_first_seen_bytes() {
    let mut h = Harness::new();
    h.handshake();
    h.c(4, b"EFGH");
    h.c(2, b"cdXXXXkl");
    h.c(0, b"abYYYYYYYYmn");
    let delivered: Vec<u8> = h
        .take()
        .into_iter()
        .filter_map(|e| match e {
            Ev::Data(_, C2S, bytes) => Some(bytes),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(delivered, b"abcdEFGHklmn");
    // 4 bytes of the second segment under "EFGH", 8 of the third under "cdEFGHkl".
    assert_eq!(h.stats().overlapping_bytes, 12);
    assert_eq!(h.stats().gaps, 0);
}

#[test]
fn ack_past_a_hole_declares_it_a_gap() {
    let mut h = Harness::new();
    h.handshake();
    h.c(3, b"def");
    // The server acknowledges only up to the hole: it may still be retransmitted.
    h.seg(server(), client(), "A", SERVER_ISN + 1, CLIENT_ISN + 1, b"");
    assert_eq!(h.take().len(), 1);
    // Now it acknowledges the buffered bytes: it got the hole, the capture did not.
    h.seg(
        server(),
        client(),
        "A",
        SERVER_ISN + 1,
        CLIENT_ISN + 1 + 6,
        b"",
    );
    assert_eq!(h.take(), vec![Ev::Gap(0, C2S, 3), data(C2S, b"def")]);
    assert_eq!(h.stats().acked_gaps, 1);
    assert_eq!(h.stats().gap_bytes, 3);
    // The hole's bytes arriving late are old now.
    h.c(0, b"abc");
    assert_eq!(h.take(), vec![]);
}

#[test]
fn full_direction_buffer_declares_the_hole_a_gap() {
    let mut h = Harness::with_limits(ReassemblyLimits {
        max_buffered_per_direction: 2 * 100 + PENDING_OVERHEAD,
        ..ReassemblyLimits::default()
    });
    h.handshake();
    h.c(10, &[b'a'; 100]);
    assert_eq!(h.take().len(), 1);
    h.c(110, &[b'b'; 100]);
    assert_eq!(
        h.take(),
        vec![
            Ev::Gap(0, C2S, 10),
            data(C2S, &[b'a'; 100]),
            data(C2S, &[b'b'; 100]),
        ]
    );
    assert_eq!(h.stats().buffer_overflows, 1);
    assert_eq!(h.reassembler.buffered_bytes(), 0);
}

#[test]
fn fin_from_both_sides_closes_after_the_data() {
    let mut h = Harness::new();
    h.handshake();
    h.c(0, b"req");
    h.seg(
        client(),
        server(),
        "FA",
        CLIENT_ISN + 4,
        SERVER_ISN + 1,
        b"",
    );
    assert_eq!(h.reassembler.connections(), 1);
    h.seg(
        server(),
        client(),
        "FA",
        SERVER_ISN + 1,
        CLIENT_ISN + 5,
        b"resp",
    );
    assert_eq!(
        h.take()[1..],
        [
            data(C2S, b"req"),
            data(S2C, b"resp"),
            Ev::Closed(0, CloseReason::Fin)
        ]
    );
    assert_eq!(h.reassembler.connections(), 0);
    assert_eq!(h.stats().fin_closed, 1);
    // The last ACK belongs to a forgotten connection and must not start a new one.
    h.seg(client(), server(), "A", CLIENT_ISN + 5, SERVER_ISN + 6, b"");
    assert_eq!(h.reassembler.connections(), 0);
    assert_eq!(h.stats().untracked_segments, 1);
}

#[test]
fn fin_after_a_hole_becomes_a_gap_when_the_connection_closes() {
    let mut h = Harness::new();
    h.handshake();
    h.seg(
        client(),
        server(),
        "FA",
        CLIENT_ISN + 1 + 3,
        SERVER_ISN + 1,
        b"def",
    );
    h.seg(
        server(),
        client(),
        "FA",
        SERVER_ISN + 1,
        CLIENT_ISN + 1,
        b"",
    );
    assert_eq!(
        h.take()[1..],
        [
            Ev::Gap(0, C2S, 3),
            data(C2S, b"def"),
            Ev::Closed(0, CloseReason::Fin)
        ]
    );
}

#[test]
fn rst_flushes_buffered_data_and_closes() {
    let mut h = Harness::new();
    h.handshake();
    h.c(0, b"ab");
    h.c(5, b"fg");
    h.seg(server(), client(), "R", SERVER_ISN + 1, 0, b"");
    assert_eq!(
        h.take()[1..],
        [
            data(C2S, b"ab"),
            Ev::Gap(0, C2S, 3),
            data(C2S, b"fg"),
            Ev::Closed(0, CloseReason::Reset)
        ]
    );
    assert_eq!(h.stats().reset_closed, 1);
    assert_eq!(h.reassembler.connections(), 0);
    assert_eq!(h.reassembler.buffered_bytes(), 0);
}

#[test]
fn bytes_lost_before_the_first_seen_segment_of_a_known_start_are_a_gap() {
    let mut h = Harness::new();
    h.stream_starts = Some((700, 500));
    let (client, server) = (v4(1, 40_000), v4(2, 8080));
    // The kernel started at the client's byte 700 (and server byte 500), but the events for
    // the first 10 client bytes were lost: the server's ACK past them declares the gap.
    h.seg(client, server, "A", 710, 500, b"tail");
    h.seg(server, client, "A", 500, 714, b"HTTP/1.1 200 OK");
    assert_eq!(
        h.take(),
        vec![
            Ev::Opened(0, client, server),
            Ev::Gap(0, C2S, 10),
            data(C2S, b"tail"),
            data(S2C, b"HTTP/1.1 200 OK"),
        ]
    );
    assert_eq!(h.stats().midstream_pickups, 0);
    assert_eq!(h.stats().acked_gaps, 1);
}

#[test]
fn midstream_pickup_takes_the_hinted_port_as_server() {
    let mut h = Harness::new();
    let (browser, proxy) = (v4(1, 40_000), v4(2, 8080));
    // The first segment seen is the server's answer.
    h.seg(proxy, browser, "A", 500, 700, b"HTTP/1.1 200 OK");
    h.seg(browser, proxy, "A", 700, 515, b"GET");
    assert_eq!(
        h.take(),
        vec![
            Ev::Opened(0, browser, proxy),
            data(S2C, b"HTTP/1.1 200 OK"),
            data(C2S, b"GET"),
        ]
    );
    assert_eq!(h.stats().midstream_pickups, 1);
}

#[test]
fn midstream_pickup_without_a_hint_takes_the_lower_port_as_server() {
    let mut h = Harness::new();
    let (high, low) = (v4(1, 6_000), v4(2, 5_000));
    h.seg(low, high, "A", 1, 1, b"x");
    assert_eq!(h.take()[0], Ev::Opened(0, high, low));
}

#[test]
fn syn_ack_sender_is_the_server_when_the_syn_was_missed() {
    let mut h = Harness::new();
    h.seg(server(), client(), "SA", SERVER_ISN, CLIENT_ISN + 1, b"");
    h.s(0, b"hi");
    assert_eq!(
        h.take(),
        vec![Ev::Opened(0, client(), server()), data(S2C, b"hi")]
    );
}

#[test]
fn new_syn_on_a_tracked_tuple_closes_the_old_connection_once_the_server_answers_it() {
    let mut h = Harness::new();
    h.handshake();
    h.c(0, b"old");
    // A repeated SYN is not a new connection.
    h.seg(client(), server(), "S", CLIENT_ISN, 0, b"");
    assert_eq!(h.stats().port_reuses, 0);
    h.seg(client(), server(), "S", 77_777, 0, b"");
    assert_eq!(
        h.stats().port_reuses,
        0,
        "only the server's SYN-ACK confirms a reuse"
    );
    h.seg(server(), client(), "SA", 5, 77_778, b"");
    h.seg(client(), server(), "A", 77_778, 6, b"new");
    assert_eq!(
        h.take()[1..],
        [
            data(C2S, b"old"),
            Ev::Closed(0, CloseReason::Evicted),
            Ev::Opened(1, client(), server()),
            Ev::Data(1, C2S, b"new".to_vec()),
        ]
    );
    assert_eq!(h.stats().port_reuses, 1);
    assert_eq!(h.reassembler.connections(), 1);
}

#[test]
fn a_forged_syn_on_an_open_connection_leaves_it_open() {
    let mut h = Harness::new();
    h.handshake();
    h.c(0, b"POST /api/ HTTP/1.1\r\n");
    // The server answers a SYN in an open connection with a challenge ACK, not a SYN-ACK.
    h.seg(client(), server(), "S", 123_456, 0, b"");
    h.s(0, b"");
    h.c(21, b"\r\n");
    assert_eq!(
        h.take(),
        vec![
            Ev::Opened(0, client(), server()),
            data(C2S, b"POST /api/ HTTP/1.1\r\n"),
            data(C2S, b"\r\n"),
        ]
    );
    assert_eq!(h.stats().port_reuses, 0);
    assert_eq!(h.stats().syns_on_open, 1);
}

#[test]
fn a_reset_outside_the_window_is_ignored_and_counted() {
    let mut h = Harness::new();
    h.handshake();
    h.c(0, b"token=real");
    // Off by 2^30 (a blind guess) from either side: not the peer's stack.
    h.seg(client(), server(), "R", CLIENT_ISN + (1 << 30), 0, b"");
    h.seg(
        server(),
        client(),
        "RA",
        SERVER_ISN.wrapping_sub(1 << 30),
        0,
        b"",
    );
    // Behind what was already sent: a replayed or guessed RST.
    h.seg(client(), server(), "R", CLIENT_ISN - 5, 0, b"");
    h.c(10, b"&more");
    assert_eq!(h.stats().rst_out_of_window, 3);
    assert_eq!(h.stats().reset_closed, 0);
    // The stack's own RST carries its next sequence number.
    h.seg(client(), server(), "R", CLIENT_ISN + 16, 0, b"");
    assert_eq!(
        h.take()[1..],
        [
            data(C2S, b"token=real"),
            data(C2S, b"&more"),
            Ev::Closed(0, CloseReason::Reset),
        ]
    );
    assert_eq!(h.stats().reset_closed, 1);
}

#[test]
fn a_flood_of_unanswered_syns_does_not_evict_answered_connections() {
    let mut h = Harness::with_limits(ReassemblyLimits {
        max_connections: 8,
        max_unconfirmed: 2,
        ..ReassemblyLimits::default()
    });
    h.handshake();
    for port in 0..1_000u16 {
        h.seg(v4(66, 1024 + port), server(), "S", u32::from(port), 0, b"");
    }
    h.c(0, b"still tracked");
    let events = h.take();
    assert!(!events.contains(&Ev::Closed(0, CloseReason::Evicted)));
    assert_eq!(events.last(), Some(&data(C2S, b"still tracked")));
    assert_eq!(h.stats().unconfirmed_evicted, 998);
    assert_eq!(h.stats().evicted_connections, 0);
    assert_eq!(h.reassembler.connections(), 3);
}

#[test]
fn a_connection_without_acknowledgments_is_confirmed_by_the_servers_answer() {
    let mut h = Harness::with_limits(ReassemblyLimits {
        max_connections: 8,
        max_unconfirmed: 1,
        ..ReassemblyLimits::default()
    });
    // As the TLS uprobes give it: data both ways, no ACK flag anywhere.
    let (a, b, c) = (v4(3, 1000), v4(4, 1000), v4(5, 1000));
    h.seg(a, server(), "", 1, 0, b"POST /api/ HTTP/1.1\r\n");
    h.seg(server(), a, "", 1, 0, b"HTTP/1.1 200 OK\r\n");
    h.seg(b, server(), "", 1, 0, b"POST");
    h.seg(c, server(), "", 1, 0, b"POST");
    let events = h.take();
    assert!(
        events.contains(&Ev::Closed(1, CloseReason::Evicted)),
        "{events:?}"
    );
    assert!(
        !events.contains(&Ev::Closed(0, CloseReason::Evicted)),
        "{events:?}"
    );
    assert_eq!(h.stats().unconfirmed_evicted, 1);
}

#[test]
fn idle_connections_close_after_the_timeout() {
    let mut h = Harness::new();
    h.handshake();
    h.now_ms = 100_000;
    h.seg(v4(3, 1234), server(), "S", 1, 0, b"");
    h.take();
    h.expire(120_000);
    assert_eq!(h.take(), vec![]);
    h.expire(120_001);
    assert_eq!(h.take(), vec![Ev::Closed(0, CloseReason::Idle)]);
    h.expire(220_001);
    assert_eq!(h.take(), vec![Ev::Closed(1, CloseReason::Idle)]);
    assert_eq!(h.stats().idle_closed, 2);
    assert_eq!(h.reassembler.connections(), 0);
}

#[test]
fn connection_limit_evicts_the_least_recently_active() {
    let mut h = Harness::with_limits(ReassemblyLimits {
        max_connections: 2,
        ..ReassemblyLimits::default()
    });
    let (a, b, c) = (v4(3, 1000), v4(4, 1000), v4(5, 1000));
    for peer in [a, b] {
        h.seg(peer, server(), "S", 1, 0, b"");
        h.seg(server(), peer, "SA", 7, 2, b"");
    }
    h.seg(a, server(), "A", 2, 8, b"still here");
    h.seg(c, server(), "S", 1, 0, b"");
    let events = h.take();
    assert_eq!(
        events[3..],
        [
            Ev::Closed(1, CloseReason::Evicted),
            Ev::Opened(2, c, server())
        ]
    );
    assert_eq!(h.stats().evicted_connections, 1);
    assert_eq!(h.reassembler.connections(), 2);
}

#[test]
fn sequence_numbers_wrap_around() {
    let mut h = Harness::new();
    let isn = u32::MAX - 2;
    h.seg(client(), server(), "S", isn, 0, b"");
    // The stream starts at u32::MAX - 1: "ab" ends right at the wrap, "cd" follows it.
    h.seg(client(), server(), "A", 2, 1, b"ef");
    h.seg(client(), server(), "A", 0, 1, b"cd");
    h.seg(client(), server(), "A", u32::MAX - 1, 1, b"abc");
    h.seg(client(), server(), "A", u32::MAX - 1, 1, b"ab");
    assert_eq!(
        h.take()[1..],
        [data(C2S, b"ab"), data(C2S, b"cd"), data(C2S, b"ef")]
    );
    // The "c" of "abc" lies under the buffered "cd": first seen wins.
    assert_eq!(h.stats().overlapping_bytes, 1);
    assert_eq!(h.stats().retransmitted_bytes, 2);
}

#[test]
fn ipv6_connections_reassemble() {
    let mut h = Harness::new();
    let c = Endpoint {
        ip: IpAddr::V6(Ipv6Addr::LOCALHOST),
        port: 40_000,
    };
    let s = Endpoint {
        ip: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
        port: 443,
    };
    h.seg(c, s, "S", 10, 0, b"");
    h.seg(c, s, "A", 14, 1, b"lo");
    h.seg(c, s, "A", 11, 1, b"hel");
    assert_eq!(
        h.take(),
        vec![Ev::Opened(0, c, s), data(C2S, b"hel"), data(C2S, b"lo")]
    );
}

#[test]
fn total_memory_limit_flushes_the_largest_buffer() {
    let mut h = Harness::with_limits(ReassemblyLimits {
        max_buffered_total: 1_000,
        ..ReassemblyLimits::default()
    });
    let other = v4(3, 1000);
    h.seg(other, server(), "S", 1, 0, b"");
    h.seg(other, server(), "A", 12, 1, &[b'o'; 100]);
    h.handshake();
    h.c(5, &[b'x'; 500]);
    h.take();
    h.c(505, &[b'y'; 300]);
    assert_eq!(
        h.take(),
        vec![
            Ev::Gap(1, C2S, 5),
            Ev::Data(1, C2S, vec![b'x'; 500]),
            Ev::Data(1, C2S, vec![b'y'; 300]),
        ]
    );
    assert_eq!(h.stats().buffer_evictions, 1);
    assert_eq!(h.reassembler.buffered_bytes(), 100 + PENDING_OVERHEAD);
}

#[test]
fn finish_declares_holes_and_closes_everything() {
    let mut h = Harness::new();
    h.handshake();
    h.c(2, b"cd");
    h.finish();
    assert_eq!(
        h.take()[1..],
        [
            Ev::Gap(0, C2S, 2),
            data(C2S, b"cd"),
            Ev::Closed(0, CloseReason::EndOfInput)
        ]
    );
    assert_eq!(h.reassembler.connections(), 0);
    assert_eq!(h.reassembler.buffered_bytes(), 0);
}

#[test]
fn data_before_the_handshake_completes_is_delivered_in_order() {
    // TCP Fast Open: data rides on the SYN, after the initial sequence number.
    let mut h = Harness::new();
    h.seg(client(), server(), "S", CLIENT_ISN, 0, b"early");
    h.c(5, b"late");
    assert_eq!(h.take()[1..], [data(C2S, b"early"), data(C2S, b"late")]);
}

impl Harness {
    fn release(&mut self, client_remaining: u64) -> bool {
        self.release_to(server(), client_remaining)
    }

    fn release_to(&mut self, server: Endpoint, client_remaining: u64) -> bool {
        let (events, data_ts) = (&mut self.events, &mut self.data_ts_ms);
        let now = Timestamp::from_nanos(self.now_ms * 1_000_000);
        self.reassembler
            .release(client(), server, client_remaining, now, &mut |e| {
                Self::record(events, data_ts, e)
            })
    }
}

const UI_HEAD: &[u8] = b"POST /index.php HTTP/1.1\r\nContent-Length: 10\r\n\r\n";
const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

#[test]
fn a_released_connection_drops_the_rest_of_its_request_and_answer_until_the_next_request() {
    let mut h = Harness::new();
    h.handshake();
    h.c(0, UI_HEAD);
    assert!(h.release(10));
    let head = UI_HEAD.len() as u32;
    // The body's rest and the answer are dropped unread, retransmissions too.
    h.c(head, b"0123456789");
    h.c(head, b"0123456789");
    h.s(0, ANSWER);
    // A page request the classifier would not copy either: skipped with its answer.
    let page = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    let answered = SERVER_ISN + 1 + ANSWER.len() as u32;
    h.seg(
        client(),
        server(),
        "A",
        CLIENT_ISN + 1 + head + 10,
        answered,
        page,
    );
    h.seg(
        server(),
        client(),
        "A",
        answered,
        CLIENT_ISN + 1 + head + 10,
        ANSWER,
    );
    let answered = answered + ANSWER.len() as u32;
    let head = head + page.len() as u32;
    let next = b"POST /api/ HTTP/1.1\r\n\r\n";
    h.seg(
        client(),
        server(),
        "A",
        CLIENT_ISN + 1 + head + 10,
        answered,
        next,
    );
    h.seg(
        server(),
        client(),
        "A",
        answered,
        CLIENT_ISN + 1 + head + 10,
        b"HTTP/1.1 200 OK\r\n",
    );
    let events = h.take();
    assert_eq!(
        events,
        [
            Ev::Opened(0, client(), server()),
            data(C2S, UI_HEAD),
            Ev::Closed(0, CloseReason::Released),
            Ev::Opened(1, client(), server()),
            Ev::Data(1, C2S, next.to_vec()),
            Ev::Data(
                1,
                Direction::ServerToClient,
                b"HTTP/1.1 200 OK\r\n".to_vec()
            ),
        ]
    );
    let stats = h.stats();
    assert_eq!(stats.released_connections, 1);
    assert_eq!(stats.resumed_connections, 1);
    assert_eq!(
        stats.released_bytes,
        20 + 2 * ANSWER.len() as u64 + page.len() as u64
    );
    assert_eq!(stats.gaps, 0, "a release is not a loss");
    assert_eq!(stats.resumed_early, 0, "libpcap has no stream starts");
}

#[test]
fn a_release_is_refused_without_acknowledgments() {
    let mut h = Harness::new();
    h.seg(client(), server(), "", CLIENT_ISN + 1, 0, UI_HEAD);
    assert!(!h.release(10));
}

#[test]
fn a_release_is_refused_while_out_of_order_bytes_wait() {
    let mut h = Harness::new();
    h.handshake();
    h.c(0, b"POST /index.php HTTP/1.1\r\n");
    h.c(100, b"later");
    assert!(!h.release(0));
    assert!(!h.take().contains(&Ev::Closed(0, CloseReason::Released)));
}

#[test]
fn a_released_connection_ends_with_its_fin_and_is_forgotten() {
    let mut h = Harness::new();
    h.handshake();
    h.c(0, UI_HEAD);
    assert!(h.release(10));
    h.seg(
        client(),
        server(),
        "AF",
        CLIENT_ISN + 1 + UI_HEAD.len() as u32,
        SERVER_ISN + 1,
        b"",
    );
    assert!(h.reassembler.released.is_empty());
}

#[test]
fn with_kernel_stream_starts_a_new_tracking_or_an_early_copy_reopens_the_connection() {
    // The harness gives segments to port 8080 the client's stream start.
    let srv = v4(2, 8080);
    let mut h = Harness::new();
    let (c0, s0) = (CLIENT_ISN + 1, SERVER_ISN + 1);
    h.stream_starts = Some((c0, s0));
    h.seg(client(), srv, "A", c0, s0, UI_HEAD);
    assert!(h.release_to(srv, 10));
    // Copied before the kernel heard: the body's rest is dropped...
    h.seg(
        client(),
        srv,
        "A",
        c0 + UI_HEAD.len() as u32,
        s0,
        b"0123456789",
    );
    // ...but the next request on the same tracking reopens it, and the edge is told.
    let at = c0 + UI_HEAD.len() as u32 + 10;
    h.seg(client(), srv, "A", at, s0 + 50, b"POST /api/ HTTP/1.1\r\n");
    let resumed: Vec<_> = h.reassembler.take_resumed_early().collect();
    assert_eq!(
        resumed,
        [ResumedEarly {
            client: client(),
            server: srv,
            client_start: at,
            server_start: Some(s0 + 50),
        }]
    );
    assert!(
        h.take()
            .contains(&Ev::Data(1, C2S, b"POST /api/ HTTP/1.1\r\n".to_vec()))
    );

    // Released again; the kernel then tracks the next POST afresh, with its own starts.
    assert!(h.release_to(srv, 0));
    let fresh = at + 5000;
    h.stream_starts = Some((fresh, s0 + 900));
    h.seg(
        client(),
        srv,
        "A",
        fresh,
        s0 + 900,
        b"POST /api/ HTTP/1.1\r\n",
    );
    assert!(
        h.take()
            .contains(&Ev::Data(2, C2S, b"POST /api/ HTTP/1.1\r\n".to_vec()))
    );
    assert_eq!(h.reassembler.take_resumed_early().count(), 0);
    assert_eq!(h.stats().gaps, 0);
}
