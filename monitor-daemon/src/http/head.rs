//! Message heads: where an HTTP/1 message may start, collecting its head under the size limit,
//! and parsing it with httparse into what framing and selection need.
//!
//! Copies head bytes only (into one reused buffer per direction), never body bytes; knows nothing
//! about pending requests or bodies.

use memchr::{memchr, memmem, memrchr};

use super::{ContentCoding, HttpVersion, RequestHead};
use crate::model::Timestamp;

/// Which start line a direction carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MessageKind {
    Request,
    Response,
}

impl MessageKind {
    fn may_start_with(self, b: u8) -> bool {
        match self {
            MessageKind::Request => b.is_ascii_uppercase(),
            MessageKind::Response => b == b'H',
        }
    }
}

const VERSION_PREFIX: &[u8] = b"HTTP/1.";
/// Longest method token believed; longer uppercase runs are body text.
const METHOD_MAX: u16 = 20;
/// Methods recognised when a request line follows body text without a line break (the usual case
/// on keep-alive connections, where a body rarely ends in CRLF).
const KNOWN_METHODS: &[&[u8]] = &[
    b"GET",
    b"POST",
    b"PUT",
    b"DELETE",
    b"HEAD",
    b"OPTIONS",
    b"PATCH",
    b"TRACE",
    b"CONNECT",
    b"PROPFIND",
    b"PROPPATCH",
    b"MKCOL",
    b"COPY",
    b"MOVE",
    b"LOCK",
    b"UNLOCK",
    b"REPORT",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LineState {
    Method,
    Target,
    Version,
    VersionDigit,
    /// Request: after the version, expecting the line end.
    Eol,
    Lf,
    Space,
    Status,
    AfterStatus,
    Reason,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    More,
    Plausible,
    Implausible,
}

/// Byte-at-a-time check that a line looks like an HTTP/1 start line, so that a false start found
/// while resyncing is rejected at the first byte that cannot belong to one.
#[derive(Clone, Copy, Debug)]
struct StartLineCheck {
    kind: MessageKind,
    state: LineState,
    count: u16,
}

impl StartLineCheck {
    fn new(kind: MessageKind) -> Self {
        let state = match kind {
            MessageKind::Request => LineState::Method,
            MessageKind::Response => LineState::Version,
        };
        Self {
            kind,
            state,
            count: 0,
        }
    }

    fn step(&mut self, b: u8) -> Verdict {
        use LineState::*;
        match self.state {
            Method if b.is_ascii_uppercase() && self.count < METHOD_MAX => self.count += 1,
            Method if b == b' ' && self.count >= 3 => self.enter(Target),
            Target if b == b' ' && self.count > 0 => self.enter(Version),
            Target if b > b' ' && b != 0x7f => self.count = self.count.saturating_add(1),
            Version if VERSION_PREFIX.get(usize::from(self.count)) == Some(&b) => {
                self.count += 1;
                if usize::from(self.count) == VERSION_PREFIX.len() {
                    self.enter(VersionDigit);
                }
            }
            VersionDigit if b.is_ascii_digit() => match self.kind {
                MessageKind::Request => self.enter(Eol),
                MessageKind::Response => self.enter(Space),
            },
            Eol if b == b'\r' => self.enter(Lf),
            Eol | Lf | AfterStatus | Reason if b == b'\n' => return Verdict::Plausible,
            Space if b == b' ' => self.enter(Status),
            Status if b.is_ascii_digit() => {
                self.count += 1;
                if self.count == 3 {
                    self.enter(AfterStatus);
                }
            }
            AfterStatus if b == b' ' => self.enter(Reason),
            AfterStatus if b == b'\r' => self.enter(Lf),
            Reason => {}
            _ => return Verdict::Implausible,
        }
        Verdict::More
    }

    fn enter(&mut self, state: LineState) {
        self.state = state;
        self.count = 0;
    }
}

/// Where a message of `kind` may start in `input`.
///
/// Candidates are: the first byte when `at_line_start`, a byte after a line feed, and a start line
/// found by its ` HTTP/1.` / `HTTP/1.` anchor even when it follows body text directly. The search
/// goes line by line (a start line holds no line feed), so each byte is looked at a bounded number
/// of times even when false starts are rejected one after another.
pub(crate) fn find_message_start(
    input: &[u8],
    at_line_start: bool,
    kind: MessageKind,
) -> Option<usize> {
    let mut pos = 0;
    let mut line_start = at_line_start;
    while let Some(rest) = input.get(pos..).filter(|r| !r.is_empty()) {
        let line_len = memchr(b'\n', rest).map_or(rest.len(), |p| p + 1);
        let line = rest.get(..line_len).unwrap_or_default();
        if line_start && line.first().is_some_and(|&b| kind.may_start_with(b)) {
            return Some(pos);
        }
        if let Some(at) = find_anchor(line, kind) {
            return Some(pos + at);
        }
        pos += line_len;
        line_start = true;
    }
    None
}

fn find_anchor(input: &[u8], kind: MessageKind) -> Option<usize> {
    match kind {
        MessageKind::Response => memmem::find(input, VERSION_PREFIX),
        MessageKind::Request => {
            let mut from = 0;
            while let Some(p) = memmem::find(input.get(from..)?, b" HTTP/1.") {
                let at = from + p;
                if let Some(start) = request_line_start(input.get(..at)?) {
                    return Some(start);
                }
                from = at + 1;
            }
            None
        }
    }
}

/// Given the bytes before ` HTTP/1.`, where the request line (method, space, target) begins.
fn request_line_start(before: &[u8]) -> Option<usize> {
    let space = memrchr(b' ', before)?;
    let target = before.get(space + 1..)?;
    if target.is_empty() || target.iter().any(|&b| b <= b' ' || b == 0x7f) {
        return None;
    }
    let method_bytes = before.get(..space)?;
    let run = method_bytes
        .iter()
        .rev()
        .take_while(|b| b.is_ascii_uppercase())
        .count();
    let run_start = space - run;
    let method = method_bytes.get(run_start..)?;
    let known = KNOWN_METHODS
        .iter()
        .filter(|m| method.ends_with(m))
        .map(|m| m.len())
        .max();
    let starts_line = run_start == 0 || method_bytes.get(run_start - 1) == Some(&b'\n');
    match known {
        Some(len) => Some(space - len),
        None if starts_line && (3..=usize::from(METHOD_MAX)).contains(&run) => Some(run_start),
        None => None,
    }
}

/// What feeding bytes to a [`HeadReader`] produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HeadFeed {
    /// Every byte was taken; the head is not complete yet.
    NeedMore,
    /// The head ended after `consumed` bytes of this input.
    Complete { consumed: usize },
    /// Byte `consumed - 1` cannot belong to a start line of this kind.
    Implausible {
        consumed: usize,
        at_line_start: bool,
    },
    /// The head would exceed the limit; `consumed` bytes were scanned (and dropped).
    TooLarge {
        consumed: usize,
        at_line_start: bool,
    },
}

/// Collects one message head (start line and header block) under a size limit.
#[derive(Debug)]
pub(crate) struct HeadReader {
    buf: Vec<u8>,
    check: StartLineCheck,
    in_start_line: bool,
    at_line_start: bool,
    cr_at_line_start: bool,
    ts_first: Timestamp,
}

impl HeadReader {
    pub(crate) fn new(kind: MessageKind) -> Self {
        Self {
            buf: Vec::new(),
            check: StartLineCheck::new(kind),
            in_start_line: true,
            at_line_start: false,
            cr_at_line_start: false,
            ts_first: Timestamp::default(),
        }
    }

    /// Forgets the current head, keeping the buffer's capacity.
    pub(crate) fn reset(&mut self) {
        self.buf.clear();
        self.check = StartLineCheck::new(self.check.kind);
        self.in_start_line = true;
        self.at_line_start = false;
        self.cr_at_line_start = false;
    }

    /// Whether any byte of a head has been taken.
    pub(crate) fn started(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Whether a plausible start line has been seen, i.e. this is a real message.
    pub(crate) fn start_line_seen(&self) -> bool {
        !self.in_start_line
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Time of the event that held the head's first byte.
    pub(crate) fn ts_first(&self) -> Timestamp {
        self.ts_first
    }

    pub(crate) fn feed(&mut self, input: &[u8], ts: Timestamp, max: usize) -> HeadFeed {
        let mut start = 0;
        if self.buf.is_empty() && self.in_start_line {
            // RFC 9112 §2.2: empty lines before a start line are ignored.
            start = input
                .iter()
                .position(|&b| b != b'\r' && b != b'\n')
                .unwrap_or(input.len());
        }
        let room = max.saturating_sub(self.buf.len());
        let end = input.len().min(start.saturating_add(room));
        let window = input.get(..end).unwrap_or_default();
        let mut i = start;
        while self.in_start_line && i < end {
            let b = window.get(i).copied().unwrap_or(b'\n');
            i += 1;
            match self.check.step(b) {
                Verdict::More => {}
                Verdict::Plausible => {
                    self.in_start_line = false;
                    self.at_line_start = true;
                }
                Verdict::Implausible => {
                    return HeadFeed::Implausible {
                        consumed: i,
                        at_line_start: b == b'\n',
                    };
                }
            }
        }
        let mut complete = false;
        while !self.in_start_line && !complete && i < end {
            if self.at_line_start {
                match window.get(i) {
                    Some(b'\n') => {
                        i += 1;
                        complete = true;
                    }
                    Some(b'\r') if !self.cr_at_line_start => {
                        self.cr_at_line_start = true;
                        i += 1;
                    }
                    _ => {
                        self.at_line_start = false;
                        self.cr_at_line_start = false;
                    }
                }
            } else {
                match memchr(b'\n', window.get(i..).unwrap_or_default()) {
                    Some(p) => {
                        i += p + 1;
                        self.at_line_start = true;
                    }
                    None => i = end,
                }
            }
        }
        if let Some(taken) = window.get(start..i).filter(|t| !t.is_empty()) {
            if self.buf.is_empty() {
                self.ts_first = ts;
            }
            self.buf.extend_from_slice(taken);
        }
        if complete {
            HeadFeed::Complete { consumed: i }
        } else if i >= input.len() {
            HeadFeed::NeedMore
        } else {
            // At least one byte, so that a zero limit cannot stall the caller.
            HeadFeed::TooLarge {
                consumed: i.max(1),
                at_line_start: self.at_line_start,
            }
        }
    }
}

/// Why a complete head was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HeadError {
    Malformed,
    TooManyHeaders,
    BadContentLength,
    /// A request whose last transfer coding is not chunked (RFC 9112 §6.3): unframeable.
    BadTransferCoding,
}

/// How a request body is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RequestFraming {
    NoBody,
    Length(u64),
    Chunked,
}

/// Transfer-Encoding of a response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TransferCoding {
    Absent,
    Chunked,
    /// Some other final coding: the body runs until the connection closes.
    Other,
}

/// What framing and decoding need from a response head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ResponseInfo {
    pub(crate) status: u16,
    pub(crate) content_length: Option<u64>,
    pub(crate) transfer: TransferCoding,
    pub(crate) coding: ContentCoding,
}

/// Bodies claiming more than this are treated as hostile framing, not as data to skip.
pub(crate) const MAX_PLAUSIBLE_BODY_BYTES: u64 = 1 << 40;

/// httparse header storage, reused for every head so that parsing does not allocate.
#[derive(Debug, Default)]
pub(crate) struct HeaderSlots {
    slots: Vec<httparse::Header<'static>>,
}

impl HeaderSlots {
    /// Takes the storage for a head borrowed for `'b` (covariance turns `'static` into `'b`).
    fn lend<'b>(&mut self, count: usize) -> Vec<httparse::Header<'b>> {
        let mut slots: Vec<httparse::Header<'b>> = std::mem::take(&mut self.slots);
        slots.resize(count, httparse::EMPTY_HEADER);
        slots
    }

    /// Returns the storage; the emptied vector is collected in place, keeping its allocation.
    fn give_back(&mut self, mut slots: Vec<httparse::Header<'_>>) {
        slots.clear();
        self.slots = slots.into_iter().map(|_| httparse::EMPTY_HEADER).collect();
    }

    /// Parses a complete request head into `head`, returning how its body is framed.
    pub(crate) fn parse_request(
        &mut self,
        bytes: &[u8],
        max_headers: usize,
        head: &mut RequestHead,
    ) -> Result<RequestFraming, HeadError> {
        let mut slots = self.lend(max_headers);
        let mut request = httparse::Request::new(&mut slots);
        let result = match request.parse(bytes) {
            Ok(httparse::Status::Complete(_)) => fill_request_head(&request, head),
            Ok(httparse::Status::Partial) => Err(HeadError::Malformed),
            Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooManyHeaders),
            Err(_) => Err(HeadError::Malformed),
        };
        self.give_back(slots);
        result
    }

    /// Parses a complete response head.
    pub(crate) fn parse_response(
        &mut self,
        bytes: &[u8],
        max_headers: usize,
    ) -> Result<ResponseInfo, HeadError> {
        let mut slots = self.lend(max_headers);
        let mut response = httparse::Response::new(&mut slots);
        let parsed = httparse::ParserConfig::default()
            .allow_spaces_after_header_name_in_responses(true)
            .allow_obsolete_multiline_headers_in_responses(true)
            .allow_multiple_spaces_in_response_status_delimiters(true)
            .parse_response(&mut response, bytes);
        let result = match parsed {
            Ok(httparse::Status::Complete(_)) => response_info(&response),
            Ok(httparse::Status::Partial) => Err(HeadError::Malformed),
            Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooManyHeaders),
            Err(_) => Err(HeadError::Malformed),
        };
        self.give_back(slots);
        result
    }
}

fn fill_request_head(
    request: &httparse::Request<'_, '_>,
    head: &mut RequestHead,
) -> Result<RequestFraming, HeadError> {
    let (Some(method), Some(target)) = (request.method, request.path) else {
        return Err(HeadError::Malformed);
    };
    // The scratch head is refilled in place so that its strings keep their capacity.
    replace_text(&mut head.method, method.as_bytes());
    replace_text(&mut head.target, target.as_bytes());
    head.version = match request.version {
        Some(0) => HttpVersion::Http10,
        _ => HttpVersion::Http11,
    };
    head.content_length = None;
    head.chunked = false;
    head.expect_continue = false;
    let (mut content_type, mut host, mut forwarded_for) = (false, false, false);
    let mut transfer = TransferCoding::Absent;
    for header in request.headers.iter() {
        let name = header.name;
        let value = trim(header.value);
        if name.eq_ignore_ascii_case("content-length") {
            head.content_length = Some(merge_content_length(head.content_length, value)?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            transfer = merge_transfer_coding(transfer, value);
        } else if name.eq_ignore_ascii_case("content-type") {
            content_type = true;
            replace_text(head.content_type.get_or_insert_default(), value);
        } else if name.eq_ignore_ascii_case("host") {
            host = true;
            replace_text(head.host.get_or_insert_default(), value);
        } else if name.eq_ignore_ascii_case("expect") {
            head.expect_continue |= value.eq_ignore_ascii_case(b"100-continue");
        } else if name.eq_ignore_ascii_case("x-forwarded-for") && !forwarded_for {
            let first = trim(value.split(|&b| b == b',').next().unwrap_or_default());
            forwarded_for = !first.is_empty();
            replace_text(head.forwarded_for.get_or_insert_default(), first);
        }
    }
    for (seen, slot) in [
        (content_type, &mut head.content_type),
        (host, &mut head.host),
        (forwarded_for, &mut head.forwarded_for),
    ] {
        if !seen {
            *slot = None;
        }
    }
    // RFC 9112 §6.3: Transfer-Encoding overrides Content-Length.
    match transfer {
        TransferCoding::Chunked => {
            head.chunked = true;
            Ok(RequestFraming::Chunked)
        }
        TransferCoding::Other => Err(HeadError::BadTransferCoding),
        TransferCoding::Absent => match head.content_length {
            Some(0) | None => Ok(RequestFraming::NoBody),
            Some(len) => Ok(RequestFraming::Length(len)),
        },
    }
}

fn response_info(response: &httparse::Response<'_, '_>) -> Result<ResponseInfo, HeadError> {
    let status = response.code.ok_or(HeadError::Malformed)?;
    let mut info = ResponseInfo {
        status,
        content_length: None,
        transfer: TransferCoding::Absent,
        coding: ContentCoding::Identity,
    };
    for header in response.headers.iter() {
        let name = header.name;
        let value = trim(header.value);
        if name.eq_ignore_ascii_case("content-length") {
            info.content_length = Some(merge_content_length(info.content_length, value)?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            info.transfer = merge_transfer_coding(info.transfer, value);
        }
    }
    info.coding = content_coding(
        response
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("content-encoding"))
            .map(|h| h.value),
    );
    Ok(info)
}

/// The content coding named by a response's `Content-Encoding` values (HTTP/1.1 or HTTP/2).
pub(crate) fn content_coding<'v>(values: impl Iterator<Item = &'v [u8]>) -> ContentCoding {
    let mut coding = ContentCoding::Identity;
    let mut codings = 0u32;
    for value in values {
        for token in value.split(|&b| b == b',').map(trim) {
            if token.is_empty() || token.eq_ignore_ascii_case(b"identity") {
                continue;
            }
            codings += 1;
            coding = if token.eq_ignore_ascii_case(b"gzip") || token.eq_ignore_ascii_case(b"x-gzip")
            {
                ContentCoding::Gzip
            } else if token.eq_ignore_ascii_case(b"deflate") {
                ContentCoding::Deflate
            } else {
                ContentCoding::Other
            };
        }
    }
    if codings > 1 {
        // Stacked codings are rare enough not to be worth decoding.
        coding = ContentCoding::Other;
    }
    coding
}

/// Content-Length as RFC 9110 §8.6 allows it: digits, possibly repeated as an identical list.
fn merge_content_length(seen: Option<u64>, value: &[u8]) -> Result<u64, HeadError> {
    let mut merged = seen;
    for item in value.split(|&b| b == b',').map(trim) {
        if item.is_empty() || item.len() > 19 || !item.iter().all(u8::is_ascii_digit) {
            return Err(HeadError::BadContentLength);
        }
        let len = item
            .iter()
            .try_fold(0u64, |acc, &d| {
                acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
            })
            .ok_or(HeadError::BadContentLength)?;
        if len > MAX_PLAUSIBLE_BODY_BYTES || merged.is_some_and(|m| m != len) {
            return Err(HeadError::BadContentLength);
        }
        merged = Some(len);
    }
    merged.ok_or(HeadError::BadContentLength)
}

/// Only the last transfer coding decides framing.
fn merge_transfer_coding(seen: TransferCoding, value: &[u8]) -> TransferCoding {
    value
        .split(|&b| b == b',')
        .map(trim)
        .rfind(|t| !t.is_empty())
        .map_or(seen, |last| {
            if last.eq_ignore_ascii_case(b"chunked") {
                TransferCoding::Chunked
            } else {
                TransferCoding::Other
            }
        })
}

fn trim(bytes: &[u8]) -> &[u8] {
    bytes.trim_ascii()
}

fn replace_text(slot: &mut String, bytes: &[u8]) {
    slot.clear();
    slot.push_str(&String::from_utf8_lossy(bytes));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_all(reader: &mut HeadReader, bytes: &[u8], max: usize) -> HeadFeed {
        reader.feed(bytes, Timestamp(1), max)
    }

    #[test]
    fn head_completes_at_blank_line_and_leaves_body_bytes() {
        let mut reader = HeadReader::new(MessageKind::Request);
        let msg = b"\r\nGET /a HTTP/1.1\r\nHost: x\r\n\r\nBODY";
        let consumed = msg.len() - 4;
        assert_eq!(
            feed_all(&mut reader, msg, 1024),
            HeadFeed::Complete { consumed }
        );
        assert_eq!(reader.bytes(), &msg[2..consumed]);
    }

    #[test]
    fn head_split_at_every_byte_completes_once() {
        let msg = b"HTTP/1.1 200 OK\r\nA: b\r\n\r\n";
        for split in 0..msg.len() {
            let mut reader = HeadReader::new(MessageKind::Response);
            let (a, b) = msg.split_at(split);
            let first = reader.feed(a, Timestamp(1), 1024);
            if split > 0 {
                assert_eq!(first, HeadFeed::NeedMore, "split {split}");
            }
            assert_eq!(
                reader.feed(b, Timestamp(2), 1024),
                HeadFeed::Complete { consumed: b.len() },
                "split {split}"
            );
            assert_eq!(reader.bytes(), msg);
        }
    }

    #[test]
    fn implausible_start_line_is_rejected_at_the_offending_byte() {
        let mut reader = HeadReader::new(MessageKind::Request);
        assert_eq!(
            feed_all(&mut reader, b"Hello world\n", 1024),
            HeadFeed::Implausible {
                consumed: 2,
                at_line_start: false
            }
        );
    }

    #[test]
    fn oversize_head_stops_at_the_limit() {
        let mut reader = HeadReader::new(MessageKind::Request);
        let mut msg = b"GET / HTTP/1.1\r\nX: ".to_vec();
        msg.extend(std::iter::repeat_n(b'a', 100));
        assert_eq!(
            feed_all(&mut reader, &msg, 32),
            HeadFeed::TooLarge {
                consumed: 32,
                at_line_start: false
            }
        );
    }

    #[test]
    fn request_start_is_found_after_body_text_without_line_break() {
        let bytes = b"token=ABCPOSTAL&format=JSONPOST /api/ HTTP/1.1\r\n";
        let at = find_message_start(bytes, false, MessageKind::Request);
        assert_eq!(at, Some(27));
        let bytes = b"zz\nGET / HTTP/1.0\r\n";
        assert_eq!(
            find_message_start(bytes, false, MessageKind::Request),
            Some(3)
        );
        assert_eq!(
            find_message_start(b"xx HTTP/1.1", false, MessageKind::Request),
            None
        );
    }

    #[test]
    fn content_length_lists_must_agree() {
        assert_eq!(merge_content_length(None, b"12, 12"), Ok(12));
        assert_eq!(
            merge_content_length(None, b"12, 13"),
            Err(HeadError::BadContentLength)
        );
        assert_eq!(
            merge_content_length(None, b"99999999999999999999"),
            Err(HeadError::BadContentLength)
        );
        assert_eq!(
            merge_content_length(None, b"-1"),
            Err(HeadError::BadContentLength)
        );
    }
}
