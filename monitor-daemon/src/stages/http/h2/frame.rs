//! HTTP/2 frames (RFC 9113 §4, §6) read from one direction's byte stream, split anywhere, and
//! header blocks decoded with HPACK (RFC 7541).
//!
//! Turns bytes into [`Event`]s: decoded header blocks, DATA payloads without their padding, the
//! ends of streams, resets, GOAWAY and the peer's header table size. Streams DATA through without
//! keeping it; buffers only a header block (HEADERS + CONTINUATION, at most the head limit) and
//! the small control frames. Knows nothing about exchanges. A direction whose framing or HPACK
//! state is lost (a gap, a decoding error, a frame over its limit, a broken frame) stops: no
//! later byte of it can be trusted. Never panics on input.

use loona_hpack::Decoder;

use super::super::{HttpStats, append_forwarded};
use crate::shared::model::Timestamp;

/// What a client sends first on an HTTP/2 connection (RFC 9113 §3.4).
pub(crate) const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const FRAME_HEADER_LEN: usize = 9;

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PUSH_PROMISE: u8 = 0x5;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;

const FLAG_END_STREAM: u8 = 0x1;
const FLAG_ACK: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;

const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;
/// A SETTINGS frame longer than this (64 settings) is not believed.
const MAX_SETTINGS_BYTES: u32 = 6 * 64;

/// The dynamic table size every HPACK context starts with (RFC 9113 §6.5.2).
pub(crate) const DEFAULT_HEADER_TABLE_SIZE: usize = 4096;
/// The largest dynamic table a decoder keeps, whatever the peer advertises.
pub(crate) const MAX_HEADER_TABLE_SIZE: usize = 64 * 1024;

/// Why a direction stopped being read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    /// Bytes were lost in capture: frame boundaries are unknown after them.
    Gap,
    /// A frame that breaks the protocol, an HPACK error, or a frame over its limit.
    Malformed,
}

/// The header fields of one decoded header block that later stages use.
#[derive(Debug, Default)]
pub(crate) struct HeaderFields {
    pub(crate) method: Option<String>,
    pub(crate) path: Option<String>,
    pub(crate) authority: Option<String>,
    pub(crate) host: Option<String>,
    pub(crate) status: Option<u16>,
    /// A `:status` that is not three digits.
    pub(crate) bad_status: bool,
    pub(crate) content_type: Option<String>,
    pub(crate) content_length: Option<u64>,
    /// Every `content-encoding` value, joined by commas.
    pub(crate) content_encoding: Vec<u8>,
    pub(crate) expect_continue: bool,
    pub(crate) forwarded_for: Option<String>,
    pub(crate) forwarded: Option<String>,
}

impl HeaderFields {
    fn clear(&mut self) {
        *self = HeaderFields {
            content_encoding: std::mem::take(&mut self.content_encoding),
            ..HeaderFields::default()
        };
        self.content_encoding.clear();
    }

    fn take(&mut self, name: &[u8], value: &[u8]) {
        let text = || String::from_utf8_lossy(value.trim_ascii()).into_owned();
        match name {
            b":method" => self.method = Some(text()),
            b":path" => self.path = Some(text()),
            b":authority" => self.authority = Some(text()),
            b":status" => {
                self.status = parse_status(value);
                self.bad_status = self.status.is_none();
            }
            b"host" => self.host = Some(text()),
            b"content-type" => self.content_type = Some(text()),
            b"content-length" => self.content_length = parse_decimal(value.trim_ascii()),
            b"content-encoding" => {
                if !self.content_encoding.is_empty() {
                    self.content_encoding.push(b',');
                }
                self.content_encoding.extend_from_slice(value);
            }
            b"expect" => {
                self.expect_continue |= value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
            }
            b"x-forwarded-for" => append_forwarded(&mut self.forwarded_for, value),
            b"forwarded" => append_forwarded(&mut self.forwarded, value),
            _ => {}
        }
    }
}

fn parse_status(value: &[u8]) -> Option<u16> {
    match value {
        [a, b, c] if value.iter().all(u8::is_ascii_digit) => {
            Some(u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0'))
        }
        _ => None,
    }
}

fn parse_decimal(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    value.iter().try_fold(0u64, |acc, &d| {
        acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// What one direction's frames said.
#[derive(Debug)]
pub(crate) enum Event<'a> {
    /// A complete header block (HEADERS and its CONTINUATIONs), decoded. `ts_start` is when its
    /// first frame began.
    Head {
        stream: u32,
        ts_start: Timestamp,
        end_stream: bool,
        fields: &'a HeaderFields,
    },
    /// DATA payload bytes of a stream, padding removed.
    Data {
        stream: u32,
        ts: Timestamp,
        bytes: &'a [u8],
    },
    /// A DATA frame with END_STREAM ended.
    EndStream {
        stream: u32,
        ts: Timestamp,
    },
    Reset {
        stream: u32,
        code: u32,
    },
    GoAway {
        last_stream: u32,
    },
    /// The sender's SETTINGS_HEADER_TABLE_SIZE: the most the *other* direction's encoder may use.
    HeaderTableSize(u32),
    /// Nothing more will come from this direction.
    Stopped(Stop),
}

#[derive(Clone, Copy, Debug)]
struct FrameHeader {
    len: u32,
    kind: u8,
    flags: u8,
    stream: u32,
}

impl FrameHeader {
    fn parse(b: &[u8; FRAME_HEADER_LEN]) -> Self {
        FrameHeader {
            len: u32::from_be_bytes([0, b[0], b[1], b[2]]),
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        }
    }

    fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

/// Where a DATA frame's payload is.
#[derive(Clone, Copy, Debug)]
enum DataPart {
    PadLength,
    Data { left: u32 },
    Padding,
}

#[derive(Debug)]
struct InFrame {
    header: FrameHeader,
    ts_start: Timestamp,
    remaining: u32,
    /// Payload bytes to buffer (the rest is framed and skipped).
    keep: u32,
    data: DataPart,
}

/// A header block waiting for its CONTINUATION frames.
#[derive(Clone, Copy, Debug)]
struct BlockStart {
    stream: u32,
    ts_start: Timestamp,
    end_stream: bool,
    /// PUSH_PROMISE: decoded to keep the HPACK state, not reported.
    promise: bool,
}

/// One direction of an HTTP/2 connection: its frames and its HPACK decoding context.
pub(crate) struct FrameReader {
    header: [u8; FRAME_HEADER_LEN],
    header_len: usize,
    ts_header: Timestamp,
    frame: Option<InFrame>,
    payload: Vec<u8>,
    block: Vec<u8>,
    continuation: Option<BlockStart>,
    hpack: Decoder<'static>,
    fields: HeaderFields,
    /// Most bytes a header block may take (`max_head_bytes`).
    max_block: usize,
    stopped: bool,
}

impl FrameReader {
    /// Heap this reader holds: frame and header-block buffers, and the HPACK table (its
    /// entries are bounded by [`DEFAULT_HEADER_TABLE_SIZE`]; each costs some 32 bytes more).
    pub(crate) fn held_bytes(&self) -> usize {
        self.payload.capacity()
            + self.block.capacity()
            + self.fields.content_encoding.capacity()
            + 2 * DEFAULT_HEADER_TABLE_SIZE
    }

    pub(crate) fn new(max_block: usize) -> Self {
        let mut hpack = Decoder::new();
        hpack.set_max_allowed_table_size(DEFAULT_HEADER_TABLE_SIZE);
        Self {
            header: [0; FRAME_HEADER_LEN],
            header_len: 0,
            ts_header: Timestamp(0),
            frame: None,
            payload: Vec::new(),
            block: Vec::new(),
            continuation: None,
            hpack,
            fields: HeaderFields::default(),
            max_block,
            stopped: false,
        }
    }

    /// The peer advertised SETTINGS_HEADER_TABLE_SIZE `size`: this direction's encoder may grow
    /// its dynamic table up to it. Followed up to [`MAX_HEADER_TABLE_SIZE`]; a smaller value than
    /// the default is not enforced (the encoder may not have seen it yet when its blocks come).
    pub(crate) fn allow_header_table_size(&mut self, size: u32) {
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        self.hpack.set_max_allowed_table_size(
            size.clamp(DEFAULT_HEADER_TABLE_SIZE, MAX_HEADER_TABLE_SIZE),
        );
    }

    /// Bytes were lost: stop reading this direction.
    pub(crate) fn gap(&mut self, stats: &mut HttpStats, emit: &mut impl FnMut(Event<'_>)) {
        if !self.stopped {
            stats.h2_gaps += 1;
            self.stop(Stop::Gap, emit);
        }
    }

    /// Reads `input`, received at `ts`, reporting what it says through `emit`.
    pub(crate) fn feed(
        &mut self,
        mut input: &[u8],
        ts: Timestamp,
        stats: &mut HttpStats,
        emit: &mut impl FnMut(Event<'_>),
    ) {
        while !input.is_empty() && !self.stopped {
            let Some(frame) = self.frame.as_mut() else {
                if self.header_len == 0 {
                    self.ts_header = ts;
                }
                let take = (FRAME_HEADER_LEN - self.header_len).min(input.len());
                let (piece, rest) = input.split_at(take);
                if let Some(slot) = self.header.get_mut(self.header_len..self.header_len + take) {
                    slot.copy_from_slice(piece);
                }
                self.header_len += take;
                input = rest;
                if self.header_len == FRAME_HEADER_LEN {
                    self.header_len = 0;
                    let header = FrameHeader::parse(&self.header);
                    self.start_frame(header, ts, stats, emit);
                }
                continue;
            };
            let take = usize::try_from(frame.remaining)
                .unwrap_or(usize::MAX)
                .min(input.len());
            let (piece, rest) = input.split_at(take);
            input = rest;
            frame.remaining -= take as u32;
            self.frame_bytes(piece, ts, stats, emit);
            if self.frame.as_ref().is_some_and(|f| f.remaining == 0) {
                self.end_frame(ts, stats, emit);
            }
        }
    }

    fn stop(&mut self, why: Stop, emit: &mut impl FnMut(Event<'_>)) {
        self.stopped = true;
        self.frame = None;
        self.continuation = None;
        // Give back what a hostile peer may have made us hold.
        self.payload = Vec::new();
        self.block = Vec::new();
        emit(Event::Stopped(why));
    }

    fn protocol_error(&mut self, stats: &mut HttpStats, emit: &mut impl FnMut(Event<'_>)) {
        stats.h2_protocol_errors += 1;
        self.stop(Stop::Malformed, emit);
    }

    fn too_large(&mut self, stats: &mut HttpStats, emit: &mut impl FnMut(Event<'_>)) {
        stats.h2_frame_too_large += 1;
        self.stop(Stop::Malformed, emit);
    }

    fn start_frame(
        &mut self,
        header: FrameHeader,
        ts: Timestamp,
        stats: &mut HttpStats,
        emit: &mut impl FnMut(Event<'_>),
    ) {
        if let Some(waiting) = self.continuation
            && (header.kind != CONTINUATION || header.stream != waiting.stream)
        {
            return self.protocol_error(stats, emit);
        }
        let len = header.len;
        let mut data = DataPart::Padding;
        let keep = match header.kind {
            DATA => {
                if header.stream == 0 || (header.has(FLAG_PADDED) && len == 0) {
                    return self.protocol_error(stats, emit);
                }
                data = if header.has(FLAG_PADDED) {
                    DataPart::PadLength
                } else {
                    DataPart::Data { left: len }
                };
                0
            }
            HEADERS | PUSH_PROMISE | CONTINUATION => {
                if header.stream == 0 {
                    return self.protocol_error(stats, emit);
                }
                if self.block.len().saturating_add(len as usize) > self.max_block {
                    return self.too_large(stats, emit);
                }
                len
            }
            SETTINGS => {
                if header.stream != 0
                    || !len.is_multiple_of(6)
                    || (header.has(FLAG_ACK) && len != 0)
                {
                    return self.protocol_error(stats, emit);
                }
                if len > MAX_SETTINGS_BYTES {
                    return self.too_large(stats, emit);
                }
                len
            }
            RST_STREAM if len != 4 || header.stream == 0 => {
                return self.protocol_error(stats, emit);
            }
            RST_STREAM => 4,
            GOAWAY if len < 8 => return self.protocol_error(stats, emit),
            // Only the last stream ID matters; the debug data is skipped.
            GOAWAY => 8,
            PING if len != 8 => return self.protocol_error(stats, emit),
            PRIORITY if len != 5 => return self.protocol_error(stats, emit),
            WINDOW_UPDATE if len != 4 => return self.protocol_error(stats, emit),
            // PING, PRIORITY, WINDOW_UPDATE and unknown types are framed and skipped.
            _ => 0,
        };
        self.payload.clear();
        self.frame = Some(InFrame {
            header,
            ts_start: self.ts_header,
            remaining: len,
            keep,
            data,
        });
        if len == 0 {
            self.end_frame(ts, stats, emit);
        }
    }

    fn frame_bytes(
        &mut self,
        mut piece: &[u8],
        ts: Timestamp,
        stats: &mut HttpStats,
        emit: &mut impl FnMut(Event<'_>),
    ) {
        let Some(frame) = self.frame.as_mut() else {
            return;
        };
        if frame.header.kind != DATA {
            let room = (frame.keep as usize).saturating_sub(self.payload.len());
            self.payload
                .extend_from_slice(piece.get(..room.min(piece.len())).unwrap_or_default());
            return;
        }
        while let Some((&first, rest)) = piece.split_first() {
            match frame.data {
                DataPart::PadLength => {
                    // `remaining` already excludes this piece: the bytes after the pad length.
                    let after = frame.remaining + rest.len() as u32;
                    if u32::from(first) > after {
                        return self.protocol_error(stats, emit);
                    }
                    frame.data = DataPart::Data {
                        left: after - u32::from(first),
                    };
                    piece = rest;
                }
                DataPart::Data { left } => {
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(piece.len());
                    let (bytes, rest) = piece.split_at(take);
                    emit(Event::Data {
                        stream: frame.header.stream,
                        ts,
                        bytes,
                    });
                    let left = left - take as u32;
                    frame.data = if left == 0 {
                        DataPart::Padding
                    } else {
                        DataPart::Data { left }
                    };
                    piece = rest;
                }
                DataPart::Padding => return,
            }
        }
    }

    fn end_frame(
        &mut self,
        ts: Timestamp,
        stats: &mut HttpStats,
        emit: &mut impl FnMut(Event<'_>),
    ) {
        let Some(frame) = self.frame.take() else {
            return;
        };
        let header = frame.header;
        match header.kind {
            DATA if header.has(FLAG_END_STREAM) => emit(Event::EndStream {
                stream: header.stream,
                ts,
            }),
            HEADERS | PUSH_PROMISE => {
                let payload = std::mem::take(&mut self.payload);
                let skip = match header.kind {
                    HEADERS if header.has(FLAG_PRIORITY) => 5,
                    HEADERS => 0,
                    // The promised stream's ID.
                    _ => 4,
                };
                match unpad(&payload, header.has(FLAG_PADDED)).and_then(|p| p.get(skip..)) {
                    Some(fragment) => self.block.extend_from_slice(fragment),
                    None => return self.protocol_error(stats, emit),
                }
                self.payload = payload;
                let start = BlockStart {
                    stream: header.stream,
                    ts_start: frame.ts_start,
                    end_stream: header.kind == HEADERS && header.has(FLAG_END_STREAM),
                    promise: header.kind == PUSH_PROMISE,
                };
                if header.has(FLAG_END_HEADERS) {
                    self.decode_block(start, stats, emit);
                } else {
                    self.continuation = Some(start);
                }
            }
            CONTINUATION => {
                let Some(start) = self.continuation else {
                    return self.protocol_error(stats, emit);
                };
                self.block.extend_from_slice(&self.payload);
                if header.has(FLAG_END_HEADERS) {
                    self.continuation = None;
                    self.decode_block(start, stats, emit);
                }
            }
            SETTINGS if !header.has(FLAG_ACK) => {
                for setting in self.payload.chunks_exact(6) {
                    let id = u16::from_be_bytes([setting[0], setting[1]]);
                    let value =
                        u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]);
                    if id == SETTINGS_HEADER_TABLE_SIZE {
                        emit(Event::HeaderTableSize(value));
                    }
                }
            }
            RST_STREAM => {
                if let Some(code) = self.payload.first_chunk::<4>() {
                    emit(Event::Reset {
                        stream: header.stream,
                        code: u32::from_be_bytes(*code),
                    });
                }
            }
            GOAWAY => {
                if let Some(last) = self.payload.first_chunk::<4>() {
                    emit(Event::GoAway {
                        last_stream: u32::from_be_bytes(*last) & 0x7fff_ffff,
                    });
                }
            }
            _ => {}
        }
    }

    fn decode_block(
        &mut self,
        start: BlockStart,
        stats: &mut HttpStats,
        emit: &mut impl FnMut(Event<'_>),
    ) {
        let fields = &mut self.fields;
        fields.clear();
        let decoded = self
            .hpack
            .decode_with_cb(&self.block, |name, value| fields.take(&name, &value));
        self.block.clear();
        if decoded.is_err() {
            // The dynamic table may now differ from the encoder's: nothing after is readable.
            stats.h2_hpack_errors += 1;
            return self.stop(Stop::Malformed, emit);
        }
        if !start.promise {
            emit(Event::Head {
                stream: start.stream,
                ts_start: start.ts_start,
                end_stream: start.end_stream,
                fields: &self.fields,
            });
        }
    }
}

/// A padded frame's payload without its pad length byte and padding (RFC 9113 §6.1).
fn unpad(payload: &[u8], padded: bool) -> Option<&[u8]> {
    if !padded {
        return Some(payload);
    }
    let (&pad, rest) = payload.split_first()?;
    rest.get(..rest.len().checked_sub(usize::from(pad))?)
}
