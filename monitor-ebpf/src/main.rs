//! redcap-monitor's kernel program: a TC classifier that finds connections that may carry REDCap
//! API calls (a client's `POST`, however its path is spelled) and copies their TCP payload (both
//! directions) to user space through one ring buffer.
//!
//! It decides only what must be decided in the kernel (is this connection worth copying?) and
//! leaves parsing and reassembly to user space. It never drops or modifies a packet: every path
//! returns `TC_ACT_OK`, and every loss (full ring, copy limit, full flow table) is counted. What
//! anyone can send is not trusted: a flow earns the main table only once the server acknowledges
//! its request, and a client segment with a wrong checksum is not copied (the server's stack
//! drops it too).
#![no_std]
#![no_main]

mod tls;

use aya_ebpf::{
    bindings::TC_ACT_OK,
    helpers::generated::{bpf_csum_diff, bpf_ktime_get_ns, bpf_skb_load_bytes},
    macros::{classifier, map},
    maps::{LruHashMap, PerCpuArray, RingBuf},
    programs::TcContext,
};
use monitor_common::{
    CLIENT_START_LEN, ClientStart, DEFAULT_MAX_FLOWS, DEFAULT_MAX_NEW_FLOWS, DEFAULT_RING_BYTES,
    DEFAULT_SERVER_PORTS, DIRECTION_CLIENT_TO_SERVER, DIRECTION_SERVER_TO_CLIENT, FAMILY_IPV4,
    FAMILY_IPV6, FlowKey, FlowState, KERNEL_COUNTER_SLOTS, KernelCounter, MAX_CHUNK_BYTES,
    MAX_CHUNKS_PER_SEGMENT, MAX_SERVER_PORTS, SEGMENT_EVENT_LEN, SegmentEvent, TCP_ACK, TCP_FIN,
    TCP_RST, TCP_SYN, classify_client_start,
};

/// Server ports, set by user space at load (`EbpfLoader::set_global`); 0 = unused slot.
#[unsafe(no_mangle)]
static SERVER_PORTS: [u16; MAX_SERVER_PORTS] = DEFAULT_SERVER_PORTS;

/// Most payload bytes per event, set at load; clamped to `MAX_CHUNK_BYTES` below.
#[unsafe(no_mangle)]
static CHUNK_BYTES: u32 = MAX_CHUNK_BYTES;

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(KERNEL_COUNTER_SLOTS, 0);

/// Sized by user space at load with `set_max_entries`.
#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

/// Flows the server has answered. LRU so that connections that vanish without FIN/RST cannot
/// fill the table for good; only answered flows can push one another out.
#[map(name = "FLOWS")]
static FLOWS: LruHashMap<FlowKey, FlowState> = LruHashMap::with_max_entries(DEFAULT_MAX_FLOWS, 0);

/// Flows that started like an API request and that the server has not acknowledged yet: one
/// forged segment needs no handshake, so a flood of them cycles through this small table and
/// never evicts an answered flow in `FLOWS`.
#[map(name = "NEW_FLOWS")]
static NEW_FLOWS: LruHashMap<FlowKey, FlowState> =
    LruHashMap::with_max_entries(DEFAULT_MAX_NEW_FLOWS, 0);

/// An event is assembled here and then copied into the ring with `bpf_ringbuf_output`, because
/// `bpf_ringbuf_reserve` only takes a size known at verification time and would waste ring space
/// on small segments. One per CPU is enough: egress runs with bottom halves disabled, so ingress
/// on the same CPU cannot interleave with it.
#[repr(C)]
struct EventBuffer {
    header: SegmentEvent,
    bytes: [u8; MAX_CHUNK_BYTES as usize],
}

#[map(name = "EVENT_BUFFER")]
static EVENT_BUFFER: PerCpuArray<EventBuffer> = PerCpuArray::with_max_entries(1, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_TCP: u8 = 6;

/// A TCP segment on a server port, parsed just enough to key and copy it.
struct Segment {
    key: FlowKey,
    direction: u8,
    tcp_offset: u32,
    seq: u32,
    ack: u32,
    flags: u8,
    payload_offset: u32,
    payload_len: u32,
}

#[classifier]
pub fn api_flow_classifier(ctx: TcContext) -> i32 {
    count(KernelCounter::PacketsSeen, 1);
    if let Some(segment) = server_port_segment(&ctx) {
        observe(&ctx, &segment);
    }
    TC_ACT_OK
}

fn observe(ctx: &TcContext, segment: &Segment) {
    let tracked = FLOWS.get_ptr_mut(&segment.key);
    let waiting = if tracked.is_none() {
        NEW_FLOWS.get_ptr_mut(&segment.key)
    } else {
        None
    };
    // A client's data or RST on a tracked flow is checked before user space sees it: the
    // server's stack drops a segment with a wrong checksum, so a forged one must not take the
    // place of the real data (a decoy with another token) or end the copy (a RST).
    if (tracked.is_some() || waiting.is_some()) && !client_segment_sound(ctx, segment) {
        return;
    }
    if let Some(state) = tracked {
        // SAFETY: the LRU value stays valid for this program run; the start fields never change.
        let start = unsafe { *state };
        send(ctx, segment, &start, false);
        follow(segment, state);
        return;
    }
    if let Some(state) = waiting {
        // SAFETY: as above.
        let start = unsafe { *state };
        let from_server = segment.direction == DIRECTION_SERVER_TO_CLIENT;
        let ends = from_server && segment.flags & (TCP_RST | TCP_SYN) != 0;
        // The server acknowledged bytes of the request: the flow is real.
        let confirms = from_server
            && !ends
            && segment.flags & TCP_ACK != 0
            && (segment.ack.wrapping_sub(start.client_start) as i32) > 0;
        // The confirming segment is sent even when it is a bare ACK: user space confirms its
        // own connection on it (it too keeps unanswered connections apart).
        send(ctx, segment, &start, confirms);
        if ends {
            if NEW_FLOWS.remove(&segment.key).is_ok() {
                count(KernelCounter::UnconfirmedEnded, 1);
            }
        } else if confirms {
            if FLOWS.insert(&segment.key, &start, 0).is_ok() {
                count(KernelCounter::FlowsConfirmed, 1);
            } else {
                count(KernelCounter::FlowInsertFailed, 1);
            }
            let _ = NEW_FLOWS.remove(&segment.key);
        }
        return;
    }
    let start = if segment.direction == DIRECTION_CLIENT_TO_SERVER {
        client_start(ctx, segment)
    } else {
        ClientStart::Other
    };
    if start == ClientStart::Track {
        if !client_segment_sound(ctx, segment) {
            return;
        }
        let state = start_tracking(segment);
        send(ctx, segment, &state, false);
    } else {
        match start {
            ClientStart::TlsHandshake => count(KernelCounter::TlsHandshakes, 1),
            ClientStart::Http2Unseen => count(KernelCounter::Http2Unseen, 1),
            _ => {}
        }
        count(KernelCounter::Filtered, 1);
    }
}

/// Ends tracking of an answered flow on what only the server's own stack sends: its RST, or
/// its SYN-ACK to a new SYN on the 4-tuple (port reuse; the new connection earns tracking with
/// its own API request). These leave this host (egress), so they cannot be forged from the
/// network; a client's RST or SYN can be, and is left to user space, which checks its sequence
/// number and stops the copy when it is real. FIN from both sides ends it too.
#[inline(always)]
fn follow(segment: &Segment, state: *mut FlowState) {
    let from_server = segment.direction == DIRECTION_SERVER_TO_CLIENT;
    if from_server && segment.flags & (TCP_RST | TCP_SYN) != 0 {
        end_tracking(&segment.key);
    } else if segment.flags & TCP_FIN != 0 {
        let bit = if from_server { 2 } else { 1 };
        // SAFETY: the LRU value stays valid for this program run; a racing FIN on another CPU can
        // lose a bit, which only leaves the entry for the LRU to evict.
        let fins = unsafe {
            (*state).fins |= bit;
            (*state).fins
        };
        if fins == 3 {
            end_tracking(&segment.key);
        }
    }
}

/// False (and counted) for a client segment with data or RST whose TCP checksum is wrong.
#[inline(never)]
fn client_segment_sound(ctx: &TcContext, segment: &Segment) -> bool {
    if segment.direction != DIRECTION_CLIENT_TO_SERVER
        || (segment.payload_len == 0 && segment.flags & TCP_RST == 0)
    {
        return true;
    }
    if checksum_ok(ctx, segment) {
        return true;
    }
    count(KernelCounter::ChecksumBad, 1);
    false
}

/// Most payload bytes summed (a jumbo frame's). A larger segment is a GSO/GRO one, whose
/// checksum field holds the pseudo-header-only value and is accepted without summing (GRO merges
/// only segments whose checksum it verified); one that does not is taken unverified.
const MAX_SUMMED_PAYLOAD: u32 = 9216;
/// Bytes summed per helper call (`bpf_csum_diff` takes at most 512).
const SUM_PIECE: u32 = 512;

/// Whether the segment's TCP checksum is right, or is the pseudo-header-only value that checksum
/// offload (a packet sent from this host) or GRO leaves in the field. The header (at most 60
/// bytes) and the payload (in pieces of 512 bytes) are summed with `bpf_csum_diff`.
#[inline(always)]
fn checksum_ok(ctx: &TcContext, segment: &Segment) -> bool {
    // The data offset times 4: a multiple of 4 up to 60, masked so that the verifier bounds it.
    let header_len = segment.payload_offset.wrapping_sub(segment.tcp_offset);
    let len = core::hint::black_box(header_len) & 0x3c;
    if len < 20 {
        return false;
    }
    let mut header = [0u32; 16];
    // Unchanged (20..=60), in a form the verifier bounds to 1..=64 (the buffer's size).
    let len = (core::hint::black_box(len).wrapping_sub(1) & 0x3f) + 1;
    // SAFETY: `len` ≤ 64 bytes = the buffer's size.
    let loaded = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb.cast(),
            segment.tcp_offset,
            header.as_mut_ptr().cast(),
            len,
        )
    };
    if loaded != 0 {
        return false;
    }
    let key = &segment.key;
    let addr_words = if key.family == FAMILY_IPV4 { 2 } else { 8 };
    let mut addresses: u64 = 6;
    let mut i = 0;
    while i < 8 {
        if i < addr_words {
            let (a, b) = (key.client_addr, key.server_addr);
            addresses += u64::from(u16::from_be_bytes([a[2 * i], a[2 * i + 1]]));
            addresses += u64::from(u16::from_be_bytes([b[2 * i], b[2 * i + 1]]));
        }
        i += 1;
    }
    let tcp_len = u64::from(len) + u64::from(segment.payload_len);
    let pseudo = addresses + (tcp_len >> 16) + (tcp_len & 0xffff);
    // The checksum field: bytes 16 and 17 of the header, the low half of word 4 in memory.
    let word = header[4].to_le_bytes();
    let field = u16::from_be_bytes([word[0], word[1]]);
    if field == fold(pseudo) || field == fold(addresses) {
        return true;
    }
    if segment.payload_len > MAX_SUMMED_PAYLOAD {
        return true;
    }
    // SAFETY: a stack buffer of `len` initialised bytes; `from` is empty.
    let mut sum = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, header.as_mut_ptr(), len, 0) };
    if sum < 0 {
        return false;
    }
    let Some(buffer) = EVENT_BUFFER.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: per-CPU value, used by one program run at a time (see EventBuffer); `send`
    // loads its bytes afresh.
    let bytes = unsafe { &mut (*buffer).bytes };
    let mut offset: u32 = 0;
    let mut piece_index = 0;
    while piece_index < MAX_SUMMED_PAYLOAD / SUM_PIECE {
        if offset >= segment.payload_len {
            break;
        }
        let remaining = segment.payload_len - offset;
        let piece = if remaining < SUM_PIECE {
            remaining
        } else {
            SUM_PIECE
        };
        let piece = verifier_bounded_piece(piece);
        // SAFETY: `piece` ≤ SUM_PIECE bytes into a buffer of MAX_CHUNK_BYTES.
        let loaded = unsafe {
            bpf_skb_load_bytes(
                ctx.skb.skb.cast(),
                segment.payload_offset.wrapping_add(offset),
                bytes.as_mut_ptr().cast(),
                piece,
            )
        };
        if loaded != 0 {
            return false;
        }
        // Pad a short last piece to a multiple of 4 with zeros (past a full piece, harmless).
        let end = (piece & (SUM_PIECE * 2 - 1)) as usize;
        bytes[end] = 0;
        bytes[end + 1] = 0;
        bytes[end + 2] = 0;
        let padded = verifier_bounded_piece((piece + 3) & !3);
        // SAFETY: `padded` ≤ SUM_PIECE initialised bytes of the buffer.
        sum = unsafe {
            bpf_csum_diff(
                core::ptr::null_mut(),
                0,
                bytes.as_mut_ptr().cast(),
                padded,
                sum as u32,
            )
        };
        if sum < 0 {
            return false;
        }
        offset += piece;
        piece_index += 1;
    }
    if offset < segment.payload_len {
        return false;
    }
    // The helper sums the bytes as they lie in memory (little-endian words): swapped, it is the
    // network-order sum the pseudo-header's is added to.
    let segment_sum = u64::from(fold(sum as u64).swap_bytes());
    fold(pseudo + segment_sum) == 0xffff
}

/// `len` (in 1..=SUM_PIECE) in a form the verifier can bound (see [`verifier_bounded`]).
#[inline(always)]
fn verifier_bounded_piece(len: u32) -> u32 {
    const _: () = assert!(SUM_PIECE.is_power_of_two());
    (core::hint::black_box(len).wrapping_sub(1) & (SUM_PIECE - 1)) + 1
}

/// Folds a one's-complement sum to 16 bits.
#[inline(always)]
fn fold(mut sum: u64) -> u16 {
    let mut i = 0;
    while i < 4 && sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
        i += 1;
    }
    sum as u16
}

/// Starts tracking at `segment`, the client's request, as unconfirmed (`NEW_FLOWS`) until the
/// server acknowledges it: where each direction's bytes begin is kept, so that user space can
/// tell an event lost before the first one it receives.
fn start_tracking(segment: &Segment) -> FlowState {
    let state = FlowState {
        since_ns: unsafe { bpf_ktime_get_ns() },
        fins: 0,
        server_start_known: u32::from(segment.flags & TCP_ACK != 0),
        client_start: data_seq(segment),
        server_start: segment.ack,
    };
    if NEW_FLOWS.insert(&segment.key, &state, 0).is_ok() {
        count(KernelCounter::FlowsStarted, 1);
    } else {
        count(KernelCounter::FlowInsertFailed, 1);
    }
    state
}

/// Sequence number of the segment's first payload byte: after the SYN's own (TCP Fast Open).
fn data_seq(segment: &Segment) -> u32 {
    if segment.flags & TCP_SYN != 0 {
        segment.seq.wrapping_add(1)
    } else {
        segment.seq
    }
}

fn end_tracking(key: &FlowKey) {
    if FLOWS.remove(key).is_ok() {
        count(KernelCounter::FlowsEnded, 1);
    }
}

/// Judges an untracked connection's client segment by its first bytes and whether it ends
/// exactly at the end of a request head (see [`classify_client_start`]).
fn client_start(ctx: &TcContext, segment: &Segment) -> ClientStart {
    if segment.payload_len == 0 {
        return ClientStart::Other;
    }
    let Some(buffer) = EVENT_BUFFER.get_ptr_mut(0) else {
        return ClientStart::Other;
    };
    // SAFETY: per-CPU value, used by one program run at a time (see EventBuffer).
    let bytes = unsafe { &mut (*buffer).bytes };
    let ends_with_blank_line = segment.payload_len >= 4
        && ctx
            .load::<[u8; 4]>((segment.payload_offset + segment.payload_len - 4) as usize)
            .is_ok_and(|tail| tail == *b"\r\n\r\n");
    let len = load_payload(
        ctx,
        segment.payload_offset,
        segment.payload_len,
        bytes,
        CLIENT_START_LEN as u32,
    );
    classify_client_start(
        bytes,
        len as usize,
        segment.payload_len as usize,
        ends_with_blank_line,
    )
}

/// Loads `min(available, limit)` bytes (limit ≤ MAX_CHUNK_BYTES) from `offset` into `bytes`;
/// returns how many, 0 on failure.
#[inline(always)]
fn load_payload(
    ctx: &TcContext,
    offset: u32,
    available: u32,
    bytes: &mut [u8; MAX_CHUNK_BYTES as usize],
    limit: u32,
) -> u32 {
    let len = if available < limit { available } else { limit };
    if len == 0 || len > MAX_CHUNK_BYTES {
        return 0;
    }
    let len = verifier_bounded(len);
    let ret =
        unsafe { bpf_skb_load_bytes(ctx.skb.skb.cast(), offset, bytes.as_mut_ptr().cast(), len) };
    if ret == 0 { len } else { 0 }
}

/// Sends the segment's payload in chunks, then a payload-less event for SYN/FIN/RST (or for a
/// bare ACK when `bare_ack` says it matters).
fn send(ctx: &TcContext, segment: &Segment, flow: &FlowState, bare_ack: bool) {
    // Most packets of a tracked connection are bare ACKs: they carry nothing user space needs
    // (every data event carries the ACK number), so they cost the lookup and no more.
    let control = segment.flags & (TCP_SYN | TCP_FIN | TCP_RST) != 0
        || (bare_ack && segment.payload_len == 0);
    if segment.payload_len == 0 && !control {
        return;
    }
    let Some(buffer) = EVENT_BUFFER.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU value, used by one program run at a time (see EventBuffer).
    let buffer = unsafe { &mut *buffer };
    let chunk = match unsafe { core::ptr::read_volatile(&CHUNK_BYTES) } {
        0 => MAX_CHUNK_BYTES,
        n if n > MAX_CHUNK_BYTES => MAX_CHUNK_BYTES,
        n => n,
    };
    let key = &segment.key;
    buffer.header = SegmentEvent {
        ktime_ns: unsafe { bpf_ktime_get_ns() },
        seq: segment.seq,
        ack: segment.ack,
        segment_len: segment.payload_len,
        offset: 0,
        copied: 0,
        client_port: key.client_port,
        server_port: key.server_port,
        client_addr: key.client_addr,
        server_addr: key.server_addr,
        family: key.family,
        direction: segment.direction,
        tcp_flags: segment.flags & !(TCP_FIN | TCP_RST),
        stream_start_known: 0,
        stream_start: 0,
    };
    if segment.direction == DIRECTION_CLIENT_TO_SERVER {
        buffer.header.stream_start_known = 1;
        buffer.header.stream_start = flow.client_start;
    } else if flow.server_start_known != 0 {
        buffer.header.stream_start_known = 1;
        buffer.header.stream_start = flow.server_start;
    }
    let data_seq = data_seq(segment);

    let mut offset: u32 = 0;
    let mut i = 0;
    while i < MAX_CHUNKS_PER_SEGMENT {
        if offset >= segment.payload_len {
            break;
        }
        let len = load_payload(
            ctx,
            segment.payload_offset.wrapping_add(offset),
            segment.payload_len - offset,
            &mut buffer.bytes,
            chunk,
        );
        if len == 0 {
            break;
        }
        buffer.header.seq = data_seq.wrapping_add(offset);
        buffer.header.offset = offset;
        buffer.header.copied = len;
        if !output(buffer, len) {
            break;
        }
        offset += len;
        i += 1;
    }
    if offset < segment.payload_len {
        count(
            KernelCounter::TruncatedBytes,
            u64::from(segment.payload_len - offset),
        );
    }

    if control {
        // FIN and RST take their place after all the segment's data, copied or not.
        buffer.header.seq = if segment.flags & TCP_SYN != 0 {
            segment.seq
        } else {
            data_seq.wrapping_add(segment.payload_len)
        };
        buffer.header.offset = segment.payload_len;
        buffer.header.copied = 0;
        buffer.header.tcp_flags = segment.flags;
        output(buffer, 0);
    }
}

/// `len` (already checked to be in 1..=MAX_CHUNK_BYTES) in a form the verifier can bound: LLVM
/// folds range checks into shapes the verifier does not follow, so the value is hidden from the
/// optimiser and then masked, which the verifier tracks exactly and which leaves it unchanged.
#[inline(always)]
fn verifier_bounded(len: u32) -> u32 {
    const _: () = assert!(MAX_CHUNK_BYTES.is_power_of_two());
    (core::hint::black_box(len).wrapping_sub(1) & (MAX_CHUNK_BYTES - 1)) + 1
}

/// Writes a staged event, its header plus the first `len` of its payload bytes, to the ring;
/// counts a full ring. `Staged` is a 72-byte header followed by `MAX_CHUNK_BYTES` of payload
/// (the TC program's and the TLS uprobes' staging buffers).
#[inline(always)]
fn output<Staged>(staged: &Staged, len: u32) -> bool {
    const { assert!(core::mem::size_of::<Staged>() == SEGMENT_EVENT_LEN + MAX_CHUNK_BYTES as usize) };
    if len > MAX_CHUNK_BYTES {
        return false;
    }
    let size = SEGMENT_EVENT_LEN
        + if len == 0 {
            0
        } else {
            verifier_bounded(len) as usize
        };
    // SAFETY: `size` ≤ size_of::<Staged>() (checked above); the buffer is plain bytes.
    let event =
        unsafe { core::slice::from_raw_parts(core::ptr::from_ref(staged).cast::<u8>(), size) };
    if EVENTS.output::<[u8]>(event, 0).is_ok() {
        count(KernelCounter::EventsSent, 1);
        true
    } else {
        count(KernelCounter::RingFull, 1);
        false
    }
}

/// Parses Ethernet → IPv4/IPv6 → TCP and returns the segment if either port is a server port.
/// Headers are read with `bpf_skb_load_bytes`, so non-linear (GSO/GRO) skbs work too.
fn server_port_segment(ctx: &TcContext) -> Option<Segment> {
    let ethertype = u16::from_be(ctx.load::<u16>(12).ok()?);
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    let (family, tcp_offset, l4_len) = match ethertype {
        ETH_P_IP => {
            let ip: [u8; 20] = ctx.load(ETH_HLEN).ok()?;
            let header_len = usize::from(ip[0] & 0x0f) * 4;
            // Fragments carry no usable TCP header (or only part of the payload).
            let fragment = (u16::from(ip[6] & 0x3f) << 8) | u16::from(ip[7]);
            if ip[9] != IPPROTO_TCP || header_len < 20 || fragment != 0 {
                return None;
            }
            let total = u32::from(u16::from_be_bytes([ip[2], ip[3]]));
            // BIG TCP sends a zero total length; the skb length is then the truth.
            let l4_len = if total == 0 {
                ctx.len().checked_sub((ETH_HLEN + header_len) as u32)?
            } else {
                total.checked_sub(header_len as u32)?
            };
            src[..4].copy_from_slice(&ip[12..16]);
            dst[..4].copy_from_slice(&ip[16..20]);
            (FAMILY_IPV4, ETH_HLEN + header_len, l4_len)
        }
        ETH_P_IPV6 => {
            let ip: [u8; 40] = ctx.load(ETH_HLEN).ok()?;
            // Extension headers are not walked: TCP must be the first next header.
            if ip[6] != IPPROTO_TCP {
                return None;
            }
            let payload = u32::from(u16::from_be_bytes([ip[4], ip[5]]));
            let l4_len = if payload == 0 {
                ctx.len().checked_sub((ETH_HLEN + 40) as u32)?
            } else {
                payload
            };
            src.copy_from_slice(&ip[8..24]);
            dst.copy_from_slice(&ip[24..40]);
            (FAMILY_IPV6, ETH_HLEN + 40, l4_len)
        }
        _ => return None,
    };

    let tcp: [u8; 20] = ctx.load(tcp_offset).ok()?;
    let src_port = u16::from_be_bytes([tcp[0], tcp[1]]);
    let dst_port = u16::from_be_bytes([tcp[2], tcp[3]]);
    let direction = if is_server_port(dst_port) {
        DIRECTION_CLIENT_TO_SERVER
    } else if is_server_port(src_port) {
        DIRECTION_SERVER_TO_CLIENT
    } else {
        return None;
    };
    let tcp_header_len = u32::from(tcp[12] >> 4) * 4;
    let payload_offset = tcp_offset as u32 + tcp_header_len;
    // Ethernet padding of short frames is not payload: trust the IP length, bounded by the skb.
    let payload_len = l4_len.checked_sub(tcp_header_len)?;
    let payload_len = payload_len.min(ctx.len().saturating_sub(payload_offset));

    let (client_addr, server_addr, client_port, server_port) =
        if direction == DIRECTION_CLIENT_TO_SERVER {
            (src, dst, src_port, dst_port)
        } else {
            (dst, src, dst_port, src_port)
        };
    let flags = tcp[13];
    Some(Segment {
        tcp_offset: tcp_offset as u32,
        key: FlowKey {
            client_addr,
            server_addr,
            client_port,
            server_port,
            family,
            _pad: [0; 3],
        },
        direction,
        seq: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
        ack: if flags & TCP_ACK != 0 {
            u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]])
        } else {
            0
        },
        flags,
        payload_offset,
        payload_len,
    })
}

#[inline(always)]
fn is_server_port(port: u16) -> bool {
    // Volatile: the value is patched into .rodata at load, after compilation.
    let ports = unsafe { core::ptr::read_volatile(&SERVER_PORTS) };
    let mut i = 0;
    while i < MAX_SERVER_PORTS {
        if ports[i] != 0 && ports[i] == port {
            return true;
        }
        i += 1;
    }
    false
}

#[inline(always)]
fn count(counter: KernelCounter, n: u64) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: a per-CPU slot is only written by programs on this CPU, one at a time.
        unsafe { *slot += n };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// Some helpers (e.g. bpf_probe_read_user) are GPL-only; the kernel checks this section.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
