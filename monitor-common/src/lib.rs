//! Types and constants that cross the kernel/user-space boundary.
//!
//! Everything here is `#[repr(C)]` and `no_std`: the kernel programs in `monitor-ebpf` write these
//! values and the daemon reads them. The one piece of logic, [`classify_client_start`], lives here so
//! that the kernel's filter is unit-tested on the host. Nothing here allocates.
#![cfg_attr(not(test), no_std)]

/// Indexes into the kernel's per-CPU counter array. User space sums them over CPUs.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelCounter {
    /// Packets the classifier looked at (every packet, whatever it is).
    PacketsSeen = 0,
    /// TCP segments on a server port that belong to no tracked API flow and produced no event.
    Filtered = 1,
    /// Events written to the ring buffer.
    EventsSent = 2,
    /// Events lost because the ring buffer was full (reservation failed).
    RingFull = 3,
    /// Payload bytes of tracked segments that were never copied (per-segment copy limit reached,
    /// or the ring was full): user space sees them as a gap.
    TruncatedBytes = 4,
    /// API flows that could not be entered into the flow table.
    FlowInsertFailed = 5,
    /// API flows that started being tracked, as unconfirmed (in [`NEW_FLOWS_MAP`]) until the
    /// server acknowledges their request.
    FlowsStarted = 6,
    /// Confirmed flows that ended: FIN from both sides, the server's RST, or the server's
    /// SYN-ACK to a new SYN on the same 4-tuple (a client's RST or SYN may be forged: those are
    /// left to user space, which checks their sequence numbers).
    /// `FlowsConfirmed - FlowsEnded - live entries` is the number the LRU table evicted.
    FlowsEnded = 7,
    /// `SSL_read`/`SSL_read_ex` calls made by a process whose name is not in the TLS process
    /// list (e.g. a client, or a web server that is not configured): not looked at.
    TlsOtherProcess = 8,
    /// TLS reads and writes of configured processes on connections that are not tracked API
    /// connections: they produced no event.
    TlsFiltered = 9,
    /// TLS connections (process, `SSL*`) that started being tracked.
    TlsConnsStarted = 10,
    /// Tracked TLS connections that ended (`SSL_free`), or were restarted after an idle gap.
    /// `TlsConnsStarted - TlsConnsEnded - live entries` is the number the LRU table evicted.
    TlsConnsEnded = 11,
    /// SSL calls whose arguments could not be saved for the return probe (argument table
    /// full): that call's bytes are lost, and show as a gap.
    TlsArgsLost = 12,
    /// Client segments on a server port, on connections not tracked, that start a TLS
    /// handshake: HTTPS the TC probe cannot read (only the OpenSSL uprobes can).
    TlsHandshakes = 13,
    /// Client bytes (segments, or TLS reads) on connections not tracked that are HTTP/2
    /// requests of a connection whose preface was not seen: not readable until it reconnects.
    Http2Unseen = 14,
    /// Unconfirmed flows moved to the main table ([`FLOWS_MAP`]) because the server
    /// acknowledged their request. `FlowsStarted - FlowsConfirmed - live unconfirmed entries` is
    /// the number of flows nobody answered (forged, or pushed out of the small table by such).
    FlowsConfirmed = 15,
    /// Unconfirmed flows that ended before the server acknowledged anything (its RST, or its
    /// SYN-ACK to a new SYN).
    UnconfirmedEnded = 16,
    /// Client segments with data or RST, on tracked flows or starting one, whose TCP checksum
    /// is wrong (neither right nor the pseudo-header-only value of checksum offload or GRO):
    /// dropped before user space, as the server's stack drops them. A forged segment must not
    /// take the place of the real data (a decoy with another token) or end the copy (a RST).
    ChecksumBad = 17,
    /// `SSL_read`/`SSL_read_ex` calls by a process named like the web server but running as a
    /// user not in the TLS user list: a misconfigured list, or a local user imitating the web
    /// server to feed made-up calls. Not looked at.
    TlsOtherUser = 18,
}

/// Number of slots in the counter array; larger than needed so that counters can be added
/// without resizing the map.
pub const KERNEL_COUNTER_SLOTS: u32 = 24;

/// Name of the per-CPU counter array in the kernel object.
pub const COUNTERS_MAP: &str = "COUNTERS";
/// Name of the ring buffer that carries [`SegmentEvent`]s.
pub const EVENTS_MAP: &str = "EVENTS";
/// Name of the LRU hash of tracked flows ([`FlowKey`] → [`FlowState`]) that the server has
/// answered: only such flows can push one another out.
pub const FLOWS_MAP: &str = "FLOWS";
/// Name of the small LRU hash of flows that started like an API request but that the server has
/// not acknowledged yet: a flood of forged requests cycles through this table only.
pub const NEW_FLOWS_MAP: &str = "NEW_FLOWS";
/// The unconfirmed table holds this fraction of the main table's entries (at least
/// [`MIN_NEW_FLOWS`]).
pub const NEW_FLOWS_DIVISOR: u32 = 8;
pub const MIN_NEW_FLOWS: u32 = 256;
/// Name of the TC classifier program.
pub const CLASSIFIER_PROGRAM: &str = "api_flow_classifier";

/// Name of the LRU hash of tracked TLS connections ([`TlsConnKey`] → [`TlsConnState`]).
pub const TLS_CONNS_MAP: &str = "TLS_CONNS";
/// Load-time global: `[[u8; COMM_LEN]; MAX_TLS_PROCESSES]`, process names whose TLS reads are
/// looked at (a name matches a process whose name starts with it); unused slots all zero.
pub const TLS_PROCESSES_GLOBAL: &str = "TLS_PROCESSES";
/// Load-time global: `u64`, nanoseconds after which a tracked TLS connection's next request
/// is taken as a new connection (its `SSL*` was freed unseen and reused).
pub const TLS_IDLE_NS_GLOBAL: &str = "TLS_IDLE_NS";
/// Load-time global: `[u32; MAX_TLS_USERS]`, the user ids a configured process must run as for
/// its TLS reads to be looked at; unused slots [`NO_USER`].
pub const TLS_USERS_GLOBAL: &str = "TLS_USERS";
/// The uprobe programs: (program name, OpenSSL function, return probe?).
pub const TLS_PROGRAMS: [(&str, &str, bool); 10] = [
    ("ssl_read_entry", "SSL_read", false),
    ("ssl_read_return", "SSL_read", true),
    ("ssl_read_ex_entry", "SSL_read_ex", false),
    ("ssl_read_ex_return", "SSL_read_ex", true),
    ("ssl_write_entry", "SSL_write", false),
    ("ssl_write_return", "SSL_write", true),
    ("ssl_write_ex_entry", "SSL_write_ex", false),
    ("ssl_write_ex_return", "SSL_write_ex", true),
    ("ssl_free_entry", "SSL_free", false),
    ("ssl_set_fd_entry", "SSL_set_fd", false),
];

/// Load-time global: `[u16; MAX_SERVER_PORTS]` of server ports, unused slots 0.
pub const SERVER_PORTS_GLOBAL: &str = "SERVER_PORTS";
/// Load-time global: `u32`, the most payload bytes one event carries (1..=MAX_CHUNK_BYTES).
pub const CHUNK_BYTES_GLOBAL: &str = "CHUNK_BYTES";

/// How many process names the TLS filter holds.
pub const MAX_TLS_PROCESSES: usize = 8;
/// How many user ids the TLS filter holds.
pub const MAX_TLS_USERS: usize = 8;
/// An unused slot of the TLS user filter (no process runs as `(uid_t)-1`).
pub const NO_USER: u32 = u32::MAX;
/// The kernel's `TASK_COMM_LEN`: process names are at most 15 bytes plus a NUL.
pub const COMM_LEN: usize = 16;
/// Default TLS idle gap (compiled in; user space overrides it at load): 120 s.
pub const DEFAULT_TLS_IDLE_NS: u64 = 120_000_000_000;
/// Default TLS connection table capacity.
pub const DEFAULT_MAX_TLS_CONNS: u32 = 16384;

/// How many server ports the kernel program can match.
pub const MAX_SERVER_PORTS: usize = 8;
/// Largest payload copy per event; the per-CPU staging buffer has this size.
pub const MAX_CHUNK_BYTES: u32 = 16384;
/// Most events one segment is split into; the verifier needs the loop bounded. With 16 KiB
/// chunks this covers a 256 KiB GSO/GRO segment; bytes beyond it are counted as truncated.
pub const MAX_CHUNKS_PER_SEGMENT: u32 = 16;
/// How many bytes of an untracked connection's client segment (or TLS read) the kernel loads
/// to judge it with [`classify_client_start`].
pub const CLIENT_START_LEN: usize = 32;

/// Default server ports (the values compiled into the object).
pub const DEFAULT_SERVER_PORTS: [u16; MAX_SERVER_PORTS] = [80, 8080, 0, 0, 0, 0, 0, 0];
/// Default ring buffer size (compiled in; user space overrides it at load).
pub const DEFAULT_RING_BYTES: u32 = 1 << 18;
/// Default flow table capacity (compiled in; user space overrides it at load).
pub const DEFAULT_MAX_FLOWS: u32 = 16384;
/// Default size of [`NEW_FLOWS_MAP`].
pub const DEFAULT_MAX_NEW_FLOWS: u32 = DEFAULT_MAX_FLOWS / NEW_FLOWS_DIVISOR;

/// [`SegmentEvent::direction`] values.
pub const DIRECTION_CLIENT_TO_SERVER: u8 = 0;
pub const DIRECTION_SERVER_TO_CLIENT: u8 = 1;

/// [`SegmentEvent::family`] / [`FlowKey::family`] values.
pub const FAMILY_IPV4: u8 = 4;
pub const FAMILY_IPV6: u8 = 6;
/// [`TlsEvent::family`]: the record is a [`TlsEvent`], not a [`SegmentEvent`].
pub const FAMILY_TLS: u8 = 0x54;

/// TCP flag bits as in the TCP header's flags byte.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// One ring-buffer record's fixed header, followed by `copied` payload bytes.
///
/// A segment larger than the chunk size becomes several events, each with its own `seq` (of its
/// first byte) and `offset` (into the segment's payload). SYN/FIN/RST are sent as payload-less
/// events: a FIN or RST that came with data follows the data as its own event at
/// `seq + segment_len`, so that a chunked or truncated segment never claims an early end.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegmentEvent {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC nanoseconds.
    pub ktime_ns: u64,
    /// Sequence number of this event's first payload byte (of the segment for payload-less ones).
    pub seq: u32,
    /// The segment's acknowledgment number (meaningful when `tcp_flags` has ACK).
    pub ack: u32,
    /// TCP payload bytes of the whole segment as it was on the wire (or in the GSO/GRO skb).
    pub segment_len: u32,
    /// Where this event's bytes start within the segment's payload.
    pub offset: u32,
    /// Payload bytes that follow this header.
    pub copied: u32,
    /// Ports in host byte order.
    pub client_port: u16,
    pub server_port: u16,
    /// Addresses in network byte order; IPv4 uses the first 4 bytes, the rest are zero.
    pub client_addr: [u8; 16],
    pub server_addr: [u8; 16],
    /// [`FAMILY_IPV4`] or [`FAMILY_IPV6`].
    pub family: u8,
    /// [`DIRECTION_CLIENT_TO_SERVER`] or [`DIRECTION_SERVER_TO_CLIENT`].
    pub direction: u8,
    /// The TCP flags byte (FIN/SYN/RST/PSH/ACK/...), with FIN and RST cleared on data events.
    pub tcp_flags: u8,
    /// Non-zero when `stream_start` holds where this direction's tracked bytes begin.
    pub stream_start_known: u8,
    /// Sequence number of this direction's first byte since tracking began (the `POST` that
    /// started it, or the server's byte acknowledged by that `POST`). User space reassembles from
    /// here, so an event lost before the first one it sees is a gap, not a mid-stream pickup.
    pub stream_start: u32,
}

/// Size of the header that precedes every event's payload.
pub const SEGMENT_EVENT_LEN: usize = core::mem::size_of::<SegmentEvent>();

/// One ring-buffer record of plaintext read or written through OpenSSL, followed by `copied`
/// bytes. Same size as [`SegmentEvent`], with `family` at the same place ([`FAMILY_TLS`]), so
/// that one ring carries both and the reader tells them apart by that byte.
///
/// A TLS connection is (`tgid`, `ssl`, `conn_since_ns`): the pointer may be reused after
/// `SSL_free`, the start time tells the uses apart. `stream_offset` counts the bytes of this
/// direction since tracking started, so user space can number them like TCP sequence numbers
/// and see a lost event as a gap. An `SSL_free` of a tracked connection is a payload-less event
/// with [`TCP_FIN`] set, `stream_offset` the bytes read and `peer_offset` the bytes written.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlsEvent {
    /// When the call was made (writes) or returned (reads): `bpf_ktime_get_ns()`.
    pub ktime_ns: u64,
    /// Offset of this event's first byte in its direction, since tracking started (mod 2^32).
    pub stream_offset: u32,
    /// On a FIN event, the other direction's end offset; 0 otherwise.
    pub peer_offset: u32,
    /// Bytes the SSL call moved.
    pub call_len: u32,
    /// Where this event's bytes start within the call's bytes.
    pub offset: u32,
    /// Payload bytes that follow this header.
    pub copied: u32,
    /// On the event that started tracking: the socket the web server gave `SSL_set_fd`, or
    /// [`NO_FD`] (unknown, e.g. Apache's own BIOs). Otherwise [`NO_FD`].
    pub fd: u32,
    /// The `SSL*` (an address in the web server process).
    pub ssl: u64,
    /// The web server process (thread group id).
    pub tgid: u32,
    pub _pad1: u32,
    /// When the kernel started tracking this connection.
    pub conn_since_ns: u64,
    pub _pad2: u64,
    /// Always [`FAMILY_TLS`].
    pub family: u8,
    /// [`DIRECTION_CLIENT_TO_SERVER`] (read by the server) or [`DIRECTION_SERVER_TO_CLIENT`].
    pub direction: u8,
    /// [`TCP_SYN`] on the event that started tracking, [`TCP_FIN`] on the end event.
    pub flags: u8,
    pub _reserved: [u8; 5],
}

/// [`TlsEvent::fd`] when the socket is not known.
pub const NO_FD: u32 = u32::MAX;

/// Key of the kernel's TLS connection table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlsConnKey {
    pub ssl: u64,
    pub tgid: u32,
    /// Always zero: the kernel hashes every byte of the key.
    pub _pad: u32,
}

/// What the kernel keeps per tracked TLS connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlsConnState {
    pub since_ns: u64,
    pub last_ns: u64,
    /// Plaintext bytes read (client → server) and written (server → client) since tracking
    /// started.
    pub read_bytes: u64,
    pub written_bytes: u64,
}

/// Whether process name `comm` (the kernel's NUL-padded `TASK_COMM_LEN` bytes) starts with one
/// of the configured `names` (each NUL-padded; an all-zero slot is unused).
#[inline(always)]
pub fn comm_matches(comm: &[u8; COMM_LEN], names: &[[u8; COMM_LEN]; MAX_TLS_PROCESSES]) -> bool {
    let mut i = 0;
    while i < MAX_TLS_PROCESSES {
        let name = &names[i];
        if name[0] != 0 {
            let mut j = 0;
            let mut same = true;
            while j < COMM_LEN {
                if name[j] == 0 {
                    break;
                }
                if name[j] != comm[j] {
                    same = false;
                    break;
                }
                j += 1;
            }
            if same {
                return true;
            }
        }
        i += 1;
    }
    false
}

/// Whether a process running as `uid` may feed TLS plaintext: a name alone can be taken by any
/// local user (`prctl(PR_SET_NAME)`), a user id cannot.
#[inline(always)]
pub fn uid_allowed(uid: u32, users: &[u32; MAX_TLS_USERS]) -> bool {
    let mut i = 0;
    while i < MAX_TLS_USERS {
        if users[i] == uid && uid != NO_USER {
            return true;
        }
        i += 1;
    }
    false
}

/// A connection, normalised so that both directions map to the same key.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowKey {
    pub client_addr: [u8; 16],
    pub server_addr: [u8; 16],
    pub client_port: u16,
    pub server_port: u16,
    pub family: u8,
    /// Always zero: the kernel hashes every byte of the key.
    pub _pad: [u8; 3],
}

/// What the kernel keeps per tracked flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowState {
    /// When tracking started (`bpf_ktime_get_ns`).
    pub since_ns: u64,
    /// Which directions have sent FIN (bit 0: client, bit 1: server).
    pub fins: u32,
    /// Non-zero when `server_start` is known (the starting `POST` carried an ACK).
    pub server_start_known: u32,
    /// Sequence number of the starting `POST`'s first payload byte.
    pub client_start: u32,
    /// The server's next sequence number, as acknowledged by the starting `POST`.
    pub server_start: u32,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` structs of integers and byte arrays with explicit padding fields.
    unsafe impl aya::Pod for super::SegmentEvent {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowState {}
    unsafe impl aya::Pod for super::TlsEvent {}
    unsafe impl aya::Pod for super::TlsConnKey {}
    unsafe impl aya::Pod for super::TlsConnState {}
}

/// What the first bytes a client sends on a connection the kernel does not track yet say about
/// it. Only [`ClientStart::Track`] makes the kernel copy the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientStart {
    /// May carry a REDCap API call: a `POST` (or the start of one, cut by the segment or TLS
    /// record), the HTTP/2 connection preface, or a request of another method with more bytes
    /// behind its head (a pipelined request, or a head split across segments).
    Track,
    /// A TLS handshake (ClientHello record): HTTPS that only the OpenSSL uprobes can read.
    TlsHandshake,
    /// An HTTP/2 request (a HEADERS frame of a client stream) on a connection whose preface was
    /// not seen (opened before capture started): its requests cannot be read, since their
    /// header compression state began before it.
    Http2Unseen,
    /// Anything else: a complete non-`POST` request head, an empty line, a continuation.
    Other,
}

/// Whether a client's bytes on an untracked connection are worth copying. `head` holds the first
/// `len` valid bytes of a segment (or TLS read) of `segment_len` bytes; `ends_with_blank_line`
/// says whether its last four bytes are `CR LF CR LF`, i.e. it ends exactly where a request head
/// ends.
///
/// The kernel must not decide on anything the web server normalises (the path's spelling, its
/// case, its encoding), so this is a cheap superset: which requests are API calls is user space's
/// call. Only `POST` reaches REDCap's API (any other method gets 501), and Apache and PHP
/// compare the method case-sensitively, so `post` is not one. CR/LF before the request line is
/// skipped, as Apache (up to 10 empty lines) and nginx (any number) skip it; bytes that are all
/// CR/LF as far as the kernel looks, with more behind them, are tracked. Loops are bounded by
/// [`CLIENT_START_LEN`] and use `get` so the BPF verifier can prove every access.
#[inline(always)]
pub fn classify_client_start(
    head: &[u8],
    len: usize,
    segment_len: usize,
    ends_with_blank_line: bool,
) -> ClientStart {
    let len = if len < CLIENT_START_LEN {
        len
    } else {
        CLIENT_START_LEN
    };
    if let (true, Some(&0x16), Some(&0x03), Some(&minor)) =
        (len >= 3, head.first(), head.get(1), head.get(2))
        && minor <= 0x04
    {
        return ClientStart::TlsHandshake;
    }
    if is_http2_request_frame(head, len) {
        return ClientStart::Http2Unseen;
    }
    let mut start = 0;
    while start < CLIENT_START_LEN {
        match head.get(start) {
            Some(b'\r') | Some(b'\n') if start < len => start += 1,
            _ => break,
        }
    }
    if start >= len {
        return if segment_len > len {
            ClientStart::Track
        } else {
            ClientStart::Other
        };
    }
    if starts_with_or_is_cut_in(head, start, len, b"POST")
        || starts_with_or_is_cut_in(head, start, len, b"PRI * HTTP/2.0")
    {
        return ClientStart::Track;
    }
    match head.get(start) {
        Some(&b) if b.is_ascii_uppercase() && !ends_with_blank_line => ClientStart::Track,
        _ => ClientStart::Other,
    }
}

/// An HTTP/2 frame header (RFC 9113 §4.1) of a HEADERS frame (type 1) on a client-initiated
/// (odd) stream, with only HEADERS' flags, a non-empty payload of at most the default maximum
/// frame size, and the reserved bit clear.
#[inline(always)]
fn is_http2_request_frame(head: &[u8], len: usize) -> bool {
    if len < 9 {
        return false;
    }
    match (
        head.first(),
        head.get(1),
        head.get(2),
        head.get(3),
        head.get(4),
        head.get(5),
        head.get(8),
    ) {
        (Some(&l0), Some(&l1), Some(&l2), Some(&1), Some(&flags), Some(&s0), Some(&s3)) => {
            let length = (u32::from(l0) << 16) | (u32::from(l1) << 8) | u32::from(l2);
            length > 0 && length <= 16_384 && flags & !0x2d == 0 && s0 & 0x80 == 0 && s3 & 1 == 1
        }
        _ => false,
    }
}

/// `head[start..len]` starts with `word`, or is a non-empty prefix of it that ends at `len`
/// (the request line continues in the next segment or record).
#[inline(always)]
fn starts_with_or_is_cut_in(head: &[u8], start: usize, len: usize, word: &[u8]) -> bool {
    let mut i = 0;
    while i < word.len() {
        if start + i >= len {
            return i > 0;
        }
        match (head.get(start + i), word.get(i)) {
            (Some(&b), Some(&w)) if b == w => {}
            _ => return false,
        }
        i += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judge(bytes: &[u8]) -> ClientStart {
        classify_client_start(
            bytes,
            bytes.len().min(CLIENT_START_LEN),
            bytes.len(),
            bytes.ends_with(b"\r\n\r\n"),
        )
    }

    #[test]
    fn every_post_is_tracked_whatever_its_path_looks_like() {
        for line in [
            &b"POST /api/ HTTP/1.1\r\nHost: x\r\n"[..],
            b"POST /ap%69/ HTTP/1.1\r\n",
            b"POST //redcap/./x/../api/ HTTP/1.1\r\n",
            b"POST http://redcap.example/api/ HTTP/1.1\r\n",
            b"POST /api/index.php/extra HTTP/1.1\r\n",
            b"POST /index.php HTTP/1.1\r\n\r\n",
            b"POST",
        ] {
            assert_eq!(judge(line), ClientStart::Track, "{line:?}");
        }
    }

    #[test]
    fn a_request_line_cut_by_the_segment_is_tracked() {
        for cut in [&b"P"[..], b"PO", b"POS", b"\r\nPO", b"PRI * HT"] {
            assert_eq!(judge(cut), ClientStart::Track, "{cut:?}");
        }
    }

    #[test]
    fn empty_lines_before_the_request_line_are_skipped() {
        assert_eq!(
            judge(b"\r\n\r\nPOST /api/ HTTP/1.1\r\n"),
            ClientStart::Track
        );
        assert_eq!(judge(b"\n\nPOST /api/ HTTP/1.1\r\n"), ClientStart::Track);
        assert_eq!(judge(b"\r\n\r\n"), ClientStart::Other);
        // More empty lines than the kernel looks at (nginx skips any number): tracked.
        let mut many = b"\r\n".repeat(CLIENT_START_LEN);
        many.extend_from_slice(b"POST /api/ HTTP/1.1\r\n");
        assert_eq!(judge(&many), ClientStart::Track);
    }

    #[test]
    fn the_http2_preface_is_tracked() {
        assert_eq!(
            judge(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            ClientStart::Track
        );
    }

    #[test]
    fn a_complete_head_of_another_method_is_not_copied() {
        assert_eq!(
            judge(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
            ClientStart::Other
        );
        assert_eq!(judge(b"HEAD /api/ HTTP/1.1\r\n\r\n"), ClientStart::Other);
        // The method is case-sensitive: PHP fills $_POST only for `POST`.
        assert_eq!(judge(b"post /api/ HTTP/1.1\r\n\r\n"), ClientStart::Other);
        assert_eq!(judge(b""), ClientStart::Other);
        assert_eq!(judge(b"\x00\x01binary"), ClientStart::Other);
    }

    #[test]
    fn another_method_with_bytes_behind_its_head_is_tracked() {
        // A pipelined request may follow, or the head continues in the next segment.
        assert_eq!(
            judge(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nPOST /api/ HTTP/1.1\r\n"),
            ClientStart::Track
        );
        assert_eq!(judge(b"GET / HTTP/1.1\r\nCookie: a"), ClientStart::Track);
    }

    #[test]
    fn an_http2_request_without_its_preface_is_recognised() {
        // HEADERS, END_STREAM|END_HEADERS, stream 3, 20 bytes of header block.
        let mut frame = vec![0, 0, 20, 1, 0x05, 0, 0, 0, 3];
        frame.extend([0x82; 20]);
        assert_eq!(judge(&frame), ClientStart::Http2Unseen);
        // A server's stream (even), a DATA frame, an unknown flag: not a client's request.
        for (at, value) in [(8, 2u8), (3, 0), (4, 0x40)] {
            let mut other = frame.clone();
            other[at] = value;
            assert_ne!(
                judge(&other),
                ClientStart::Http2Unseen,
                "byte {at} = {value}"
            );
        }
    }

    #[test]
    fn a_tls_client_hello_is_recognised() {
        assert_eq!(
            judge(b"\x16\x03\x01\x02\x00\x01"),
            ClientStart::TlsHandshake
        );
        assert_eq!(judge(b"\x16\x03\x09\x02"), ClientStart::Other);
    }

    #[test]
    fn only_the_valid_length_is_read() {
        let line = b"POST /api/ HTTP/1.1\r\n";
        assert_eq!(classify_client_start(line, 0, 0, false), ClientStart::Other);
        assert_eq!(
            classify_client_start(b"HEAD", 2, 2, true),
            ClientStart::Other
        );
        assert_eq!(
            classify_client_start(b"\r\nPOST", 2, 2, false),
            ClientStart::Other
        );
    }

    #[test]
    fn event_header_layout_is_stable() {
        assert_eq!(SEGMENT_EVENT_LEN, 72);
        assert_eq!(core::mem::size_of::<FlowKey>(), 40);
        assert_eq!(core::mem::size_of::<FlowState>(), 24);
        assert_eq!(core::mem::offset_of!(SegmentEvent, stream_start), 68);
    }

    #[test]
    fn a_tls_event_has_the_segment_event_size_and_family_place() {
        assert_eq!(core::mem::size_of::<TlsEvent>(), SEGMENT_EVENT_LEN);
        assert_eq!(
            core::mem::offset_of!(TlsEvent, family),
            core::mem::offset_of!(SegmentEvent, family)
        );
        assert_eq!(core::mem::size_of::<TlsConnKey>(), 16);
    }

    fn names(list: &[&str]) -> [[u8; COMM_LEN]; MAX_TLS_PROCESSES] {
        let mut out = [[0u8; COMM_LEN]; MAX_TLS_PROCESSES];
        for (slot, name) in out.iter_mut().zip(list) {
            slot[..name.len()].copy_from_slice(name.as_bytes());
        }
        out
    }

    fn comm(name: &str) -> [u8; COMM_LEN] {
        let mut out = [0u8; COMM_LEN];
        out[..name.len()].copy_from_slice(name.as_bytes());
        out
    }

    #[test]
    fn only_listed_users_are_allowed() {
        let mut users = [NO_USER; MAX_TLS_USERS];
        users[0] = 0;
        users[1] = 33;
        assert!(uid_allowed(0, &users));
        assert!(uid_allowed(33, &users));
        assert!(!uid_allowed(65534, &users));
        assert!(!uid_allowed(NO_USER, &users));
        assert!(!uid_allowed(0, &[NO_USER; MAX_TLS_USERS]));
    }

    #[test]
    fn process_names_match_by_prefix() {
        let list = names(&["apache2", "nginx", "php-fpm"]);
        assert!(comm_matches(&comm("nginx"), &list));
        assert!(comm_matches(&comm("apache2"), &list));
        assert!(comm_matches(&comm("php-fpm8.2"), &list));
        assert!(!comm_matches(&comm("curl"), &list));
        assert!(!comm_matches(&comm("python3"), &list));
        assert!(!comm_matches(&comm("ngin"), &list));
        assert!(!comm_matches(&comm("nginx"), &names(&[])));
        let full = names(&["abcdefghijklmno"]);
        assert!(comm_matches(&comm("abcdefghijklmno"), &full));
    }
}
