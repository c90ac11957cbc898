//! TCP reassembly: turns captured segments into ordered byte streams per connection direction.
//!
//! Owns connection tracking (orientation, sequence numbers, FIN/RST, idle expiry) and the
//! out-of-order buffers. In-order bytes are passed on borrowed from the segment, never copied;
//! only out-of-order bytes are copied, within per-direction and total limits. Lost bytes are
//! reported as gaps, never glued over. Knows nothing about HTTP; has no clock of its own.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use monitor_common::{CLIENT_START_LEN, ClientStart, classify_client_start};

use crate::shared::model::{
    CloseReason, ConnectionId, Direction, Endpoint, ResumedEarly, Span, StreamEvent, TcpSegment,
    Timestamp,
};
use crate::shared::settings::{Duration, Problem, at_least_one};
use serde::Deserialize;

/// Bounds on what the reassembler tracks and buffers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReassemblyLimits {
    /// Connections tracked at once; the least recently active one is evicted to make room.
    pub max_connections: usize,
    /// Out-of-order bytes held per direction before the first hole is declared a gap.
    pub max_buffered_per_direction: usize,
    /// Out-of-order bytes held over all connections before the largest buffers are flushed.
    pub max_buffered_total: usize,
    /// A connection with no segment for this long is closed by [`Reassembler::expire`].
    pub idle_timeout: Span,
    /// Ports that identify the server of a connection picked up without its handshake.
    pub server_ports: Vec<u16>,
    /// Connections tracked before the server has answered (a SYN, or a client's data not yet
    /// acknowledged); past this the oldest of them is closed, never one the server answered.
    pub max_unconfirmed: usize,
}

impl Default for ReassemblyLimits {
    fn default() -> Self {
        Self {
            max_connections: 65_536,
            max_buffered_per_direction: 1 << 20,
            max_buffered_total: 256 << 20,
            idle_timeout: Span::from_secs(120),
            server_ports: vec![80, 443, 8080, 8443],
            max_unconfirmed: 8_192,
        }
    }
}

/// What the reassembler did, by reason. Counters only grow.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ReassemblyStats {
    /// Segments pushed.
    pub(crate) segments: u64,
    /// In-order payload bytes passed on as `Data`.
    pub(crate) bytes_delivered: u64,
    pub(crate) connections_opened: u64,
    /// Connections first seen without their SYN; their orientation is a guess.
    pub(crate) midstream_pickups: u64,
    /// Data segments that arrived ahead of a hole and were buffered.
    pub(crate) out_of_order_segments: u64,
    /// Segments whose data had all been delivered already.
    pub(crate) retransmitted_segments: u64,
    /// Bytes that had been delivered already (whole and partial retransmissions).
    pub(crate) retransmitted_bytes: u64,
    /// Bytes dropped because an earlier-seen buffered segment already covered them.
    pub(crate) overlapping_bytes: u64,
    pub(crate) gaps: u64,
    pub(crate) gap_bytes: u64,
    /// Gaps declared because the receiver acknowledged bytes the capture never saw.
    pub(crate) acked_gaps: u64,
    /// Gaps declared because a direction's out-of-order buffer reached its limit.
    pub(crate) buffer_overflows: u64,
    /// Buffers flushed (holes declared as gaps) to stay within the total memory limit.
    pub buffer_evictions: u64,
    /// Connections closed to stay within the connection limit.
    pub evicted_connections: u64,
    pub(crate) idle_closed: u64,
    pub(crate) fin_closed: u64,
    pub reset_closed: u64,
    /// Connections closed because a new SYN reused their 4-tuple (once the server answered it).
    pub(crate) port_reuses: u64,
    /// SYNs on an open connection: it stays open, as the server's own stack keeps it (RFC
    /// 5961), until the server answers the SYN with a SYN-ACK (then counted in `port_reuses`).
    pub(crate) syns_on_open: u64,
    /// RSTs whose sequence number is outside the window of their sender: ignored, as the
    /// receiving stack ignores them (RFC 5961); forged or stale.
    pub(crate) rst_out_of_window: u64,
    /// Connections the server had not answered, closed to make room (their own limit, or the
    /// table's); answered connections are evicted only when no unanswered one is left.
    pub(crate) unconfirmed_evicted: u64,
    /// Segments of unknown connections that carry nothing to start one (pure ACK, RST, FIN).
    pub(crate) untracked_segments: u64,
    /// Connections released between two requests (nothing worth reading until the next one).
    pub(crate) released_connections: u64,
    /// Payload bytes of released connections dropped unread (the rest of a request that is not
    /// an API call, and its response).
    pub(crate) released_bytes: u64,
    /// Released connections reopened by the client's next request.
    pub(crate) resumed_connections: u64,
    /// Of those, resumed on bytes the capture had copied before it heard of the release (the
    /// live edge then asks the kernel to copy the connection again).
    pub(crate) resumed_early: u64,
}

/// Bookkeeping cost charged per buffered segment on top of its bytes, so that a flood of tiny
/// out-of-order segments cannot hold far more memory than the limits say.
const PENDING_OVERHEAD: usize = 64;

/// Tracks TCP connections and reassembles both directions of each; see the module docs.
pub struct Reassembler {
    limits: ReassemblyLimits,
    stats: ReassemblyStats,
    table: ConnectionTable,
    next_id: u64,
    /// Sum of all directions' `pending_bytes`.
    pending_total: usize,
    /// Connections released between requests, until the client's next request or their end.
    released: HashMap<FlowKey, Released>,
    /// Connections reopened on bytes copied before the capture heard of their release: the
    /// live edge asks the kernel to copy them again.
    resumed_early: Vec<ResumedEarly>,
    /// Connections the server has not answered yet.
    unconfirmed: usize,
    /// (slot, id) of unanswered connections in the order they were opened; entries of
    /// connections answered or closed since are skipped when met.
    unconfirmed_order: VecDeque<(usize, ConnectionId)>,
    /// Every direction holding out-of-order bytes, by how many: (bytes, slot, direction index).
    /// Memory relief takes the largest from the end instead of scanning every connection.
    buffers: BTreeSet<(usize, usize, usize)>,
}

/// What a SYN on a tracked 4-tuple leads to.
enum SynOnOpen {
    /// Taken like any segment (a repeated SYN, or a SYN-ACK of the connection's own handshake).
    Continue,
    /// Ignored: a new SYN that the server has not answered.
    Drop,
    /// The server's SYN-ACK confirmed a new connection, opened in this slot.
    Reopened(usize),
}

/// A connection released between two requests: its bytes are dropped until the client sends
/// from `resume_seq` on (its next request), or the capture starts copying it afresh.
struct Released {
    client: Endpoint,
    /// Where the client's next request starts.
    resume_seq: u32,
    /// The client stream's start as the capture gave it (kernel tracking): a segment with
    /// another start comes from a new tracking, which begins at a request.
    client_start: Option<u32>,
    last_seen: Timestamp,
}

impl Reassembler {
    pub fn new(limits: ReassemblyLimits) -> Self {
        Self {
            limits,
            stats: ReassemblyStats::default(),
            table: ConnectionTable::default(),
            next_id: 0,
            pending_total: 0,
            released: HashMap::new(),
            resumed_early: Vec::new(),
            unconfirmed: 0,
            unconfirmed_order: VecDeque::new(),
            buffers: BTreeSet::new(),
        }
    }

    pub fn stats(&self) -> &ReassemblyStats {
        &self.stats
    }

    /// Connections currently tracked.
    pub fn connections(&self) -> usize {
        self.table.len()
    }

    /// Out-of-order bytes currently buffered (with per-segment overhead), over all connections.
    pub fn buffered_bytes(&self) -> usize {
        self.pending_total
    }

    /// Takes one captured segment. Events for in-order data borrow the segment's payload.
    pub fn push(&mut self, seg: &TcpSegment<'_>, emit: &mut dyn FnMut(StreamEvent<'_>)) {
        self.stats.segments += 1;
        let key = FlowKey::new(seg.src, seg.dst);
        let flags = seg.flags;
        if self.released.contains_key(&key) && !self.resume(key, seg, emit) {
            return;
        }
        let mut slot = self.table.find(&key);

        if let Some(index) = slot
            && flags.syn
        {
            match self.syn_on_open(index, seg, emit) {
                SynOnOpen::Continue => {}
                SynOnOpen::Drop => return,
                SynOnOpen::Reopened(new) => slot = Some(new),
            }
        }

        let index = match slot {
            Some(index) => index,
            None if flags.rst || (!flags.syn && seg.payload.is_empty()) => {
                // Nothing to reassemble, and most likely the tail of a connection already closed.
                self.stats.untracked_segments += 1;
                return;
            }
            None => self.open(key, seg, emit),
        };

        if flags.rst {
            if !self.reset_in_window(index, seg) {
                self.stats.rst_out_of_window += 1;
                return;
            }
            self.close(index, seg.ts, CloseReason::Reset, emit);
            return;
        }
        self.table.touch(index);
        self.confirm_if_answered(index, seg);

        let Some(conn) = self.table.get_mut(index) else {
            return;
        };
        conn.last_seen = conn.last_seen.max(seg.ts);
        conn.acks_seen |= seg.ack.is_some();
        let pending_before = conn.pending_bytes();
        let before = conn.streams.each_ref().map(|s| s.pending_bytes);
        let dir = if seg.src == conn.client {
            Direction::ClientToServer
        } else {
            Direction::ServerToClient
        };
        let limit = self.limits.max_buffered_per_direction;
        let [client_stream, server_stream] = &mut conn.streams;
        let (sender, receiver) = match dir {
            Direction::ClientToServer => (client_stream, server_stream),
            Direction::ServerToClient => (server_stream, client_stream),
        };

        let mut out = Out {
            conn: conn.id,
            dir,
            stats: &mut self.stats,
            emit,
        };
        let mut data_seq = seg.seq;
        if flags.syn {
            // The SYN occupies the initial sequence number; data (TCP Fast Open) follows it.
            data_seq = seg.seq.wrapping_add(1);
            if sender.next_seq.is_none() {
                sender.syn_seq = Some(seg.seq);
                sender.next_seq = Some(data_seq);
            }
        } else if let (None, Some(start)) = (sender.next_seq, seg.stream_start) {
            // The capture says where this direction began: what is missing before this segment
            // was lost, and becomes a gap like any other hole.
            sender.next_seq = Some(start);
            sender.start = Some(start);
        }
        // The acknowledgment first: the sender had received those bytes before it sent this
        // data, so a hole it acknowledges (and the data behind it) comes first in time too.
        if let Some(ack) = seg.ack {
            out.dir = dir.reverse();
            receiver.acknowledged(ack, seg.ts, &mut out);
            out.dir = dir;
        }
        if !seg.payload.is_empty() || flags.fin {
            sender.receive(data_seq, seg.payload, flags.fin, seg.ts, limit, &mut out);
        }

        let both_fins = sender.fin_seq.is_some() && receiver.fin_seq.is_some();
        let pending_after = conn.pending_bytes();
        self.pending_total = (self.pending_total + pending_after).saturating_sub(pending_before);
        self.reindex_buffers(index, before);
        if both_fins {
            self.close(index, seg.ts, CloseReason::Fin, emit);
        }
        if self.pending_total > self.limits.max_buffered_total {
            self.relieve_memory(seg.ts, emit);
        }
    }

    /// A SYN on a tracked 4-tuple. A repeated SYN goes on as usual. Another SYN does not close
    /// the connection (RFC 5961: the server answers it with a challenge ACK and keeps the
    /// connection, so a forged SYN must not end what the monitor reads); it is remembered, and
    /// the server's SYN-ACK acknowledging it proves the old connection ended unseen: it is then
    /// closed and the new one opened.
    fn syn_on_open(
        &mut self,
        index: usize,
        seg: &TcpSegment<'_>,
        emit: &mut dyn FnMut(StreamEvent<'_>),
    ) -> SynOnOpen {
        let Some(conn) = self.table.get_mut(index) else {
            return SynOnOpen::Continue;
        };
        if !seg.flags.ack {
            if conn.client == seg.src && conn.streams[0].syn_seq == Some(seg.seq) {
                return SynOnOpen::Continue;
            }
            conn.new_syn = Some((seg.src, seg.seq));
            self.stats.syns_on_open += 1;
            return SynOnOpen::Drop;
        }
        let Some((client, syn_seq)) = conn.new_syn else {
            return SynOnOpen::Continue;
        };
        if seg.dst != client || seg.ack != Some(syn_seq.wrapping_add(1)) {
            return SynOnOpen::Continue;
        }
        self.stats.port_reuses += 1;
        self.close(index, seg.ts, CloseReason::Evicted, emit);
        let key = FlowKey::new(seg.src, seg.dst);
        let index = self.open_oriented(key, client, seg.src, seg.ts, true, emit);
        if let Some(conn) = self.table.get_mut(index) {
            conn.streams[0].syn_seq = Some(syn_seq);
            conn.streams[0].next_seq = Some(syn_seq.wrapping_add(1));
        }
        SynOnOpen::Reopened(index)
    }

    /// Whether a RST lands where its sender's stack would put it: from the next byte the
    /// monitor expects of that sender to the most it may be ahead (bytes the capture missed),
    /// the receive window being unknown to a passive reader. A RST elsewhere is ignored by the
    /// receiving stack (RFC 5961), so it must not close what the monitor reads either.
    fn reset_in_window(&self, index: usize, seg: &TcpSegment<'_>) -> bool {
        let Some(conn) = self.table.get(index) else {
            return true;
        };
        let dir = if seg.src == conn.client {
            Direction::ClientToServer
        } else {
            Direction::ServerToClient
        };
        let Some(next) = conn.streams[dir.index()].next_seq else {
            // Nothing seen of that direction: nothing to check against.
            return true;
        };
        let window = self.limits.max_buffered_per_direction.max(1 << 16);
        let ahead = seq_distance(next, seg.seq);
        ahead >= 0 && ahead.unsigned_abs() as usize <= window
    }

    /// A segment from the server that acknowledges something, or that carries data or a FIN
    /// (the TLS uprobes' connections have no acknowledgments), confirms the connection: only
    /// then is it safe from being evicted by connections nobody answered (a flood of SYNs or
    /// of forged requests).
    fn confirm_if_answered(&mut self, index: usize, seg: &TcpSegment<'_>) {
        let Some(conn) = self.table.get_mut(index) else {
            return;
        };
        let answer = seg.ack.is_some() || !seg.payload.is_empty() || seg.flags.fin;
        if !conn.confirmed && seg.src != conn.client && answer {
            conn.confirmed = true;
            self.unconfirmed = self.unconfirmed.saturating_sub(1);
        }
    }

    /// Closes the oldest connection the server has not answered; false when there is none.
    fn evict_unconfirmed(&mut self, ts: Timestamp, emit: &mut dyn FnMut(StreamEvent<'_>)) -> bool {
        while let Some((index, id)) = self.unconfirmed_order.pop_front() {
            let waiting = self
                .table
                .get(index)
                .is_some_and(|conn| conn.id == id && !conn.confirmed);
            if waiting && self.close(index, ts, CloseReason::Evicted, emit) {
                self.stats.unconfirmed_evicted += 1;
                return true;
            }
        }
        false
    }

    /// Closes connections idle longer than the timeout, as of `now`.
    pub fn expire(&mut self, now: Timestamp, emit: &mut dyn FnMut(StreamEvent<'_>)) {
        let idle = self.limits.idle_timeout;
        self.released
            .retain(|_, released| now.since(released.last_seen) <= idle);
        // The table is ordered by last activity, so the idle ones are all at the old end.
        while let Some(index) = self.table.oldest() {
            let idle = self
                .table
                .get(index)
                .is_some_and(|conn| now.since(conn.last_seen) > self.limits.idle_timeout);
            if !idle || !self.close(index, now, CloseReason::Idle, emit) {
                break;
            }
        }
    }

    /// End of input: flushes what is buffered (declaring remaining holes as gaps) and closes all.
    pub fn finish(&mut self, now: Timestamp, emit: &mut dyn FnMut(StreamEvent<'_>)) {
        while let Some(index) = self.table.oldest() {
            if !self.close(index, now, CloseReason::EndOfInput, emit) {
                break;
            }
        }
    }

    /// The HTTP stage has read everything worth reading on the connection between `client` and
    /// `server` until the client's next request, which starts `client_remaining` bytes after
    /// what was delivered: the connection is closed ([`CloseReason::Released`]) and what it
    /// sends is dropped unread until then; the client's next request (or a new tracking from
    /// the capture) reopens it as a new connection. Refused (false) while out-of-order bytes
    /// are buffered, when the capture gives no acknowledgments (where the server's next answer
    /// begins would not be known), or when the connection is unknown.
    pub fn release(
        &mut self,
        client: Endpoint,
        server: Endpoint,
        client_remaining: u64,
        ts: Timestamp,
        emit: &mut dyn FnMut(StreamEvent<'_>),
    ) -> bool {
        let key = FlowKey::new(client, server);
        let Some(index) = self.table.find(&key) else {
            return false;
        };
        let Some(conn) = self.table.get(index) else {
            return false;
        };
        let [client_stream, server_stream] = &conn.streams;
        let (Some(next), 0, 0, false) = (
            client_stream.next_seq,
            client_stream.pending_bytes,
            server_stream.pending_bytes,
            client_stream.finished,
        ) else {
            return false;
        };
        if conn.client != client || !conn.acks_seen || client_remaining > u64::from(u32::MAX / 2) {
            return false;
        }
        let released = Released {
            client,
            resume_seq: next.wrapping_add(client_remaining as u32),
            client_start: client_stream.start,
            last_seen: ts,
        };
        if self.released.len() >= self.limits.max_connections.max(1) {
            // Bounded like the table: the oldest release is forgotten (its connection, if it
            // comes back, is picked up mid-stream like any other).
            if let Some(oldest) = self
                .released
                .iter()
                .min_by_key(|(_, r)| r.last_seen)
                .map(|(k, _)| *k)
            {
                self.released.remove(&oldest);
            }
        }
        self.close(index, ts, CloseReason::Released, emit);
        self.released.insert(key, released);
        self.stats.released_connections += 1;
        true
    }

    /// Connections reopened on bytes copied before the capture heard of their release, since
    /// the last call.
    pub fn take_resumed_early(&mut self) -> std::vec::Drain<'_, ResumedEarly> {
        self.resumed_early.drain(..)
    }

    /// A segment of a released connection: true when it reopens the connection (it is then
    /// taken like any other), false when it is dropped unread.
    fn resume(
        &mut self,
        key: FlowKey,
        seg: &TcpSegment<'_>,
        emit: &mut dyn FnMut(StreamEvent<'_>),
    ) -> bool {
        let Some(released) = self.released.get_mut(&key) else {
            return true;
        };
        released.last_seen = released.last_seen.max(seg.ts);
        let flags = seg.flags;
        if flags.syn && !flags.ack {
            // A new connection on the same 4-tuple.
            self.released.remove(&key);
            return true;
        }
        if flags.rst || flags.fin {
            self.released.remove(&key);
            self.stats.released_bytes += seg.payload.len() as u64;
            return false;
        }
        let from_client = seg.src == released.client;
        let new_tracking = seg
            .stream_start
            .is_some_and(|start| Some(start) != released.client_start);
        let at_next_request = seq_distance(released.resume_seq, seg.seq) >= 0;
        if !from_client || seg.payload.is_empty() || !(new_tracking || at_next_request) {
            self.stats.released_bytes += seg.payload.len() as u64;
            return false;
        }
        if !new_tracking && !worth_tracking(seg.payload) {
            // The next request is one the classifier itself would not copy (a whole head of
            // another method): it and its answer are skipped too, as the kernel skips them.
            released.resume_seq = seg.seq.wrapping_add(seg.payload.len() as u32);
            self.stats.released_bytes += seg.payload.len() as u64;
            return false;
        }
        let Some(released) = self.released.remove(&key) else {
            return true;
        };
        self.stats.resumed_connections += 1;
        let client_next = match seg.stream_start {
            Some(start) if new_tracking => start,
            _ => released.resume_seq,
        };
        if !new_tracking && released.client_start.is_some() {
            self.stats.resumed_early += 1;
            self.resumed_early.push(ResumedEarly {
                client: seg.src,
                server: seg.dst,
                client_start: client_next,
                server_start: seg.ack,
            });
        }
        let index = self.open_oriented(key, seg.src, seg.dst, seg.ts, true, emit);
        if let Some(conn) = self.table.get_mut(index) {
            let [client_stream, server_stream] = &mut conn.streams;
            client_stream.next_seq = Some(client_next);
            client_stream.start = Some(client_next);
            // The client's acknowledgment says where the server's next answer begins.
            server_stream.next_seq = seg.ack;
        }
        true
    }

    /// Starts tracking the connection `seg` belongs to, evicting the least recently active
    /// connection when the table is full.
    fn open(
        &mut self,
        key: FlowKey,
        seg: &TcpSegment<'_>,
        emit: &mut dyn FnMut(StreamEvent<'_>),
    ) -> usize {
        let (client, server) = self.orient(seg);
        self.open_oriented(key, client, server, seg.ts, false, emit)
    }

    /// Opens a connection whose client and server are known; `confirmed` when the server is
    /// known to have answered it. Room is made by closing connections nobody answered first.
    fn open_oriented(
        &mut self,
        key: FlowKey,
        client: Endpoint,
        server: Endpoint,
        ts: Timestamp,
        confirmed: bool,
        emit: &mut dyn FnMut(StreamEvent<'_>),
    ) -> usize {
        if !confirmed {
            while self.unconfirmed >= self.limits.max_unconfirmed.max(1)
                && self.evict_unconfirmed(ts, emit)
            {}
        }
        while self.table.len() >= self.limits.max_connections.max(1) {
            if self.evict_unconfirmed(ts, emit) {
                continue;
            }
            let Some(oldest) = self.table.oldest() else {
                break;
            };
            if !self.close(oldest, ts, CloseReason::Evicted, emit) {
                break;
            }
            self.stats.evicted_connections += 1;
        }
        let id = ConnectionId(self.next_id);
        self.next_id += 1;
        self.stats.connections_opened += 1;
        emit(StreamEvent::Opened {
            conn: id,
            ts,
            client,
            server,
        });
        let index = self.table.insert(
            key,
            Connection {
                id,
                client,
                last_seen: ts,
                acks_seen: false,
                confirmed,
                new_syn: None,
                streams: Default::default(),
            },
        );
        if !confirmed {
            self.unconfirmed += 1;
            self.unconfirmed_order.push_back((index, id));
            if self.unconfirmed_order.len() > 2 * self.limits.max_unconfirmed.max(1) + 64 {
                // Entries of connections since answered or closed are dropped in one pass, so
                // the queue stays within twice the limit at an amortised O(1) per open.
                let table = &self.table;
                self.unconfirmed_order.retain(|&(index, id)| {
                    table
                        .get(index)
                        .is_some_and(|conn| conn.id == id && !conn.confirmed)
                });
            }
        }
        index
    }

    /// Which end of a new connection is the client: the handshake says so when it was seen,
    /// otherwise the server-port hint, otherwise the lower port is taken to be the server.
    fn orient(&mut self, seg: &TcpSegment<'_>) -> (Endpoint, Endpoint) {
        let flags = seg.flags;
        if flags.syn && !flags.ack {
            return (seg.src, seg.dst);
        }
        if seg.stream_start.is_none() {
            self.stats.midstream_pickups += 1;
        }
        if flags.syn {
            return (seg.dst, seg.src);
        }
        let is_server_port = |port| self.limits.server_ports.contains(&port);
        let src_is_server = match (is_server_port(seg.src.port), is_server_port(seg.dst.port)) {
            (true, false) => true,
            (false, true) => false,
            _ => seg.src.port < seg.dst.port,
        };
        if src_is_server {
            (seg.dst, seg.src)
        } else {
            (seg.src, seg.dst)
        }
    }

    /// Flushes both directions (declaring holes as gaps), reports the close and forgets it.
    /// False when there was no connection at `index`.
    fn close(
        &mut self,
        index: usize,
        ts: Timestamp,
        reason: CloseReason,
        emit: &mut dyn FnMut(StreamEvent<'_>),
    ) -> bool {
        let Some(mut conn) = self.table.remove(index) else {
            return false;
        };
        if !conn.confirmed {
            self.unconfirmed = self.unconfirmed.saturating_sub(1);
        }
        for (dir, stream) in conn.streams.iter().enumerate() {
            self.buffers.remove(&(stream.pending_bytes, index, dir));
        }
        self.pending_total = self.pending_total.saturating_sub(conn.pending_bytes());
        for (stream, dir) in conn
            .streams
            .iter_mut()
            .zip([Direction::ClientToServer, Direction::ServerToClient])
        {
            let mut out = Out {
                conn: conn.id,
                dir,
                stats: &mut self.stats,
                emit,
            };
            stream.flush(ts, &mut out);
        }
        match reason {
            CloseReason::Fin => self.stats.fin_closed += 1,
            CloseReason::Reset => self.stats.reset_closed += 1,
            CloseReason::Idle => self.stats.idle_closed += 1,
            CloseReason::Evicted | CloseReason::EndOfInput | CloseReason::Released => {}
        }
        emit(StreamEvent::Closed {
            conn: conn.id,
            ts,
            reason,
        });
        true
    }

    /// Over the total buffer limit: flush the largest buffers (their holes become gaps) until
    /// well under it. The largest is the last entry of the buffer index: no scan.
    fn relieve_memory(&mut self, ts: Timestamp, emit: &mut dyn FnMut(StreamEvent<'_>)) {
        let target = self.limits.max_buffered_total - self.limits.max_buffered_total / 8;
        while self.pending_total > target {
            let Some((before, index, dir)) = self.buffers.pop_last() else {
                break;
            };
            let Some(conn) = self.table.get_mut(index) else {
                continue;
            };
            let dir = if dir == 0 {
                Direction::ClientToServer
            } else {
                Direction::ServerToClient
            };
            let stream = &mut conn.streams[dir.index()];
            let mut out = Out {
                conn: conn.id,
                dir,
                stats: &mut self.stats,
                emit,
            };
            stream.flush(ts, &mut out);
            self.stats.buffer_evictions += 1;
            self.pending_total = self.pending_total.saturating_sub(before);
        }
    }

    /// Brings the buffer index up to date for the connection at `index`, whose directions held
    /// `before` bytes.
    fn reindex_buffers(&mut self, index: usize, before: [usize; 2]) {
        let Some(conn) = self.table.get(index) else {
            return;
        };
        for (dir, stream) in conn.streams.iter().enumerate() {
            let now = stream.pending_bytes;
            if now != before[dir] {
                self.buffers.remove(&(before[dir], index, dir));
                if now > 0 {
                    self.buffers.insert((now, index, dir));
                }
            }
        }
    }
}

/// A connection's 4-tuple in a canonical order, so both directions find the same entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FlowKey {
    low: Endpoint,
    high: Endpoint,
}

impl FlowKey {
    fn new(a: Endpoint, b: Endpoint) -> Self {
        if a <= b {
            Self { low: a, high: b }
        } else {
            Self { low: b, high: a }
        }
    }
}

struct Connection {
    id: ConnectionId,
    client: Endpoint,
    last_seen: Timestamp,
    /// The capture gives acknowledgment numbers (not the TLS uprobes' synthetic connections):
    /// only then is it known where the server's answer to a reopened connection begins.
    acks_seen: bool,
    /// The server has answered (acknowledged something): see [`Reassembler::confirm_if_answered`].
    confirmed: bool,
    /// A new SYN on this 4-tuple, waiting for the server's SYN-ACK: (its sender, its sequence).
    new_syn: Option<(Endpoint, u32)>,
    /// Indexed by [`Direction::index`]: what the client sends, then what the server sends.
    streams: [Stream; 2],
}

impl Connection {
    fn pending_bytes(&self) -> usize {
        self.streams[0].pending_bytes + self.streams[1].pending_bytes
    }
}

/// One direction's byte stream.
#[derive(Default)]
struct Stream {
    /// The sequence number of the next byte to pass on; `None` until the direction is seen.
    next_seq: Option<u32>,
    /// Where the capture said this direction's bytes begin (kernel tracking), if it did.
    start: Option<u32>,
    /// The SYN's sequence number, to tell a repeated SYN from a new connection.
    syn_seq: Option<u32>,
    /// Where the FIN sits once seen (it occupies one sequence number).
    fin_seq: Option<u32>,
    /// The FIN has been reached in order: nothing more will be passed on.
    finished: bool,
    /// Where `next_seq` is in the direction's whole byte stream (it does not wrap): the key of
    /// buffered data, so that finding a segment's place is a lookup, not a scan from the front.
    next_pos: u64,
    /// Out-of-order data after a hole, by stream position ([`Stream::next_pos`]'s scale), not
    /// overlapping.
    pending: BTreeMap<u64, Pending>,
    /// Buffered bytes plus [`PENDING_OVERHEAD`] per entry.
    pending_bytes: usize,
}

/// A copied out-of-order piece of a segment, with its own capture time. Its bytes may be part of
/// a request body (a token): zeroed when dropped.
struct Pending {
    seq: u32,
    ts: Timestamp,
    bytes: zeroize::Zeroizing<Vec<u8>>,
}

/// Where a stream's events go: the connection and direction they belong to, and the counters.
struct Out<'a, 'e> {
    conn: ConnectionId,
    dir: Direction,
    stats: &'a mut ReassemblyStats,
    emit: &'a mut (dyn FnMut(StreamEvent<'_>) + 'e),
}

impl Out<'_, '_> {
    fn data(&mut self, ts: Timestamp, bytes: &[u8]) {
        self.stats.bytes_delivered += bytes.len() as u64;
        (self.emit)(StreamEvent::Data {
            conn: self.conn,
            dir: self.dir,
            ts,
            bytes,
        });
    }

    fn gap(&mut self, ts: Timestamp, len: u32) {
        if len == 0 {
            return;
        }
        self.stats.gaps += 1;
        self.stats.gap_bytes += u64::from(len);
        (self.emit)(StreamEvent::Gap {
            conn: self.conn,
            dir: self.dir,
            ts,
            len: u64::from(len),
        });
    }
}

/// Whether a client segment starting a request may carry an API call, by the kernel
/// classifier's own rule, so that a released connection resumes exactly where the kernel would
/// start copying it again.
fn worth_tracking(payload: &[u8]) -> bool {
    let head = payload.len().min(CLIENT_START_LEN);
    classify_client_start(payload, head, payload.len(), payload.ends_with(b"\r\n\r\n"))
        == ClientStart::Track
}

/// Signed distance from `from` to `to` in sequence space (RFC 1982 style, wrapping).
fn seq_distance(from: u32, to: u32) -> i32 {
    to.wrapping_sub(from) as i32
}

impl Stream {
    /// Takes a segment's data (which may be empty) starting at `seq`, with or without a FIN.
    fn receive(
        &mut self,
        seq: u32,
        data: &[u8],
        fin: bool,
        ts: Timestamp,
        limit: usize,
        out: &mut Out<'_, '_>,
    ) {
        // A direction first seen mid-stream starts at its first segment.
        let next = *self.next_seq.get_or_insert(seq);
        if self.finished {
            if !data.is_empty() {
                out.stats.retransmitted_segments += 1;
                out.stats.retransmitted_bytes += data.len() as u64;
            }
            return;
        }
        if fin && self.fin_seq.is_none() {
            self.fin_seq = Some(seq.wrapping_add(data.len() as u32));
        }
        let offset = seq_distance(next, seq);
        if offset <= 0 {
            let old = (offset.unsigned_abs() as usize).min(data.len());
            if !data.is_empty() && old == data.len() {
                out.stats.retransmitted_segments += 1;
            }
            out.stats.retransmitted_bytes += old as u64;
            self.deliver(data.get(old..).unwrap_or_default(), ts, out);
            return;
        }
        if !data.is_empty() {
            out.stats.out_of_order_segments += 1;
            self.buffer(seq, data, ts, out.stats);
            while self.pending_bytes > limit && !self.pending.is_empty() {
                out.stats.buffer_overflows += 1;
                self.skip_hole(ts, out);
            }
        }
    }

    /// Passes on `data`, which starts at `next_seq`, and then whatever buffered data it makes
    /// contiguous. Buffered bytes were seen first, so they win where the two overlap.
    fn deliver(&mut self, mut data: &[u8], ts: Timestamp, out: &mut Out<'_, '_>) {
        let Some(mut next) = self.next_seq else {
            return;
        };
        loop {
            let room = self
                .pending
                .first_key_value()
                .map_or(usize::MAX, |(_, p)| p.seq.wrapping_sub(next) as usize);
            let (now, later) = data.split_at(data.len().min(room));
            if !now.is_empty() {
                out.data(ts, now);
                next = next.wrapping_add(now.len() as u32);
            }
            data = later;
            match self.pending.first_key_value() {
                Some((_, p)) if p.seq == next => {}
                _ => break,
            }
            let Some((_, p)) = self.pending.pop_first() else {
                break;
            };
            self.pending_bytes = self
                .pending_bytes
                .saturating_sub(p.bytes.len() + PENDING_OVERHEAD);
            out.data(p.ts, &p.bytes);
            next = next.wrapping_add(p.bytes.len() as u32);
            let covered = data.len().min(p.bytes.len());
            out.stats.overlapping_bytes += covered as u64;
            data = data.get(covered..).unwrap_or_default();
        }
        self.move_next(next);
        self.reach_fin();
    }

    /// Moves `next_seq` (forward) to `seq`, keeping `next_pos` in step.
    fn move_next(&mut self, seq: u32) {
        if let Some(next) = self.next_seq {
            self.next_pos = self
                .next_pos
                .wrapping_add_signed(i64::from(seq_distance(next, seq)));
        }
        self.next_seq = Some(seq);
    }

    /// Once everything before the FIN has been passed on, the direction is finished.
    fn reach_fin(&mut self) {
        if let (Some(fin), Some(next), false) = (self.fin_seq, self.next_seq, self.finished)
            && seq_distance(next, fin) <= 0
        {
            self.finished = true;
            self.move_next(fin.wrapping_add(1));
            // Nothing after a FIN is part of the stream.
            self.pending.clear();
            self.pending_bytes = 0;
        }
    }

    /// Copies an out-of-order segment into the buffer, keeping only bytes not buffered yet.
    /// Finds its place by lookup (O(log n) per piece it meets), so a stream of segments behind
    /// one hole costs no rescan of what is already buffered.
    fn buffer(&mut self, seq: u32, data: &[u8], ts: Timestamp, stats: &mut ReassemblyStats) {
        let Some(next) = self.next_seq else {
            return;
        };
        // Buffered data is always ahead of `next` and within 2^31 of it.
        let base = self.next_pos + u64::from(seq.wrapping_sub(next));
        let end = base + data.len() as u64;
        let mut start = base;
        // A piece that starts before this segment may reach into it.
        let mut cursor = self
            .pending
            .range(..base)
            .next_back()
            .map_or(base, |(&at, _)| at);
        while start < end {
            let Some((&p_start, p)) = self.pending.range(cursor..end).next() else {
                break;
            };
            let p_end = p_start + p.bytes.len() as u64;
            cursor = p_start + 1;
            if p_end <= start {
                continue;
            }
            if start < p_start {
                self.insert_piece(seq, data, base, start, p_start, ts);
            }
            stats.overlapping_bytes += end.min(p_end) - start.max(p_start);
            start = p_end;
        }
        if start < end {
            self.insert_piece(seq, data, base, start, end, ts);
        }
    }

    /// Buffers `data[from - base .. to - base]` (stream positions; `data` starts at `seq`).
    fn insert_piece(
        &mut self,
        seq: u32,
        data: &[u8],
        base: u64,
        from: u64,
        to: u64,
        ts: Timestamp,
    ) {
        let skip = (from - base) as usize;
        let Some(bytes) = data.get(skip..(to - base) as usize) else {
            return;
        };
        self.pending_bytes += bytes.len() + PENDING_OVERHEAD;
        self.pending.insert(
            from,
            Pending {
                seq: seq.wrapping_add(skip as u32),
                ts,
                bytes: zeroize::Zeroizing::new(bytes.to_vec()),
            },
        );
    }

    /// Declares the hole before the first buffered segment a gap and passes on what follows.
    fn skip_hole(&mut self, ts: Timestamp, out: &mut Out<'_, '_>) {
        let (Some(next), Some((_, first))) = (self.next_seq, self.pending.first_key_value()) else {
            return;
        };
        let first_seq = first.seq;
        out.gap(ts, first_seq.wrapping_sub(next));
        self.move_next(first_seq);
        self.deliver(&[], ts, out);
    }

    /// The peer acknowledged everything before `ack`: holes before it were lost by the capture,
    /// not by the network, so nothing will fill them.
    fn acknowledged(&mut self, ack: u32, ts: Timestamp, out: &mut Out<'_, '_>) {
        while let Some((_, first)) = self.pending.first_key_value() {
            if seq_distance(first.seq, ack) < 0 {
                return;
            }
            out.stats.acked_gaps += 1;
            self.skip_hole(ts, out);
        }
        if let (Some(next), Some(fin), false) = (self.next_seq, self.fin_seq, self.finished)
            && seq_distance(fin, ack) >= 0
            && next != fin
        {
            out.stats.acked_gaps += 1;
            self.skip_to_fin(ts, out);
        }
    }

    /// Declares every remaining hole a gap and passes on all buffered data (up to the FIN).
    fn flush(&mut self, ts: Timestamp, out: &mut Out<'_, '_>) {
        while !self.pending.is_empty() {
            self.skip_hole(ts, out);
        }
        if self.fin_seq.is_some() && !self.finished {
            self.skip_to_fin(ts, out);
        }
    }

    /// The bytes between what was passed on and the FIN were never captured.
    fn skip_to_fin(&mut self, ts: Timestamp, out: &mut Out<'_, '_>) {
        if let (Some(next), Some(fin)) = (self.next_seq, self.fin_seq)
            && seq_distance(next, fin) > 0
        {
            out.gap(ts, fin.wrapping_sub(next));
            self.move_next(fin);
        }
        self.reach_fin();
    }
}

/// Sentinel for "no neighbour" in the recency list.
const NONE: usize = usize::MAX;

/// Connections by 4-tuple, also kept in order of last activity (a list threaded through the
/// slots) so that the idle and the least recently active connection are found in O(1).
struct ConnectionTable {
    index: HashMap<FlowKey, usize>,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    /// Most recently active slot, or [`NONE`].
    newest: usize,
    /// Least recently active slot, or [`NONE`].
    oldest: usize,
}

impl Default for ConnectionTable {
    fn default() -> Self {
        Self {
            index: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            newest: NONE,
            oldest: NONE,
        }
    }
}

struct Slot {
    key: FlowKey,
    conn: Connection,
    newer: usize,
    older: usize,
}

impl ConnectionTable {
    fn len(&self) -> usize {
        self.index.len()
    }

    fn find(&self, key: &FlowKey) -> Option<usize> {
        self.index.get(key).copied()
    }

    fn slot(&self, index: usize) -> Option<&Slot> {
        self.slots.get(index).and_then(Option::as_ref)
    }

    fn slot_mut(&mut self, index: usize) -> Option<&mut Slot> {
        self.slots.get_mut(index).and_then(Option::as_mut)
    }

    fn get(&self, index: usize) -> Option<&Connection> {
        self.slot(index).map(|slot| &slot.conn)
    }

    fn get_mut(&mut self, index: usize) -> Option<&mut Connection> {
        self.slot_mut(index).map(|slot| &mut slot.conn)
    }

    fn oldest(&self) -> Option<usize> {
        (self.oldest != NONE).then_some(self.oldest)
    }

    fn insert(&mut self, key: FlowKey, conn: Connection) -> usize {
        let slot = Slot {
            key,
            conn,
            newer: NONE,
            older: NONE,
        };
        let index = match self.free.pop() {
            Some(index) => {
                self.slots[index] = Some(slot);
                index
            }
            None => {
                self.slots.push(Some(slot));
                self.slots.len() - 1
            }
        };
        self.index.insert(key, index);
        self.link_newest(index);
        index
    }

    fn remove(&mut self, index: usize) -> Option<Connection> {
        self.unlink(index);
        let slot = self.slots.get_mut(index)?.take()?;
        self.index.remove(&slot.key);
        self.free.push(index);
        Some(slot.conn)
    }

    /// Marks a connection as the most recently active.
    fn touch(&mut self, index: usize) {
        if self.newest != index {
            self.unlink(index);
            self.link_newest(index);
        }
    }

    fn link_newest(&mut self, index: usize) {
        let previous_newest = self.newest;
        if let Some(slot) = self.slot_mut(index) {
            slot.older = previous_newest;
            slot.newer = NONE;
        }
        match self.slot_mut(previous_newest) {
            Some(previous) => previous.newer = index,
            None => self.oldest = index,
        }
        self.newest = index;
    }

    fn unlink(&mut self, index: usize) {
        let Some(slot) = self.slot(index) else {
            return;
        };
        let (newer, older) = (slot.newer, slot.older);
        match self.slot_mut(newer) {
            Some(n) => n.older = older,
            None => self.newest = older,
        }
        match self.slot_mut(older) {
            Some(o) => o.newer = newer,
            None => self.oldest = newer,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ReassemblyConfig {
    pub(crate) max_connections: usize,
    pub(crate) max_buffered_bytes_per_direction: usize,
    pub(crate) max_buffered_bytes_total: usize,
    pub(crate) idle_timeout: Duration,
}

impl Default for ReassemblyConfig {
    fn default() -> Self {
        Self {
            max_connections: 65_536,
            max_buffered_bytes_per_direction: 1 << 20,
            max_buffered_bytes_total: 256 << 20,
            idle_timeout: Duration(Span::from_secs(120)),
        }
    }
}

impl ReassemblyConfig {
    /// What is wrong with `[reassembly]`, each problem keyed by its full path.
    pub(crate) fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        at_least_one(
            &mut problems,
            &[
                ("reassembly.max_connections", self.max_connections as u64),
                (
                    "reassembly.max_buffered_bytes_per_direction",
                    self.max_buffered_bytes_per_direction as u64,
                ),
            ],
        );
        problems
    }
}

#[cfg(test)]
mod tests;
