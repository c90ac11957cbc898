//! Message heads: where an HTTP/1 message may start, collecting its head under the size limit,
//! and parsing it with httparse into what framing and selection need.
//!
//! Copies head bytes only (into one reused buffer per direction), never body bytes; knows nothing
//! about pending requests or bodies. A head longer than the limit (padding headers, a huge
//! cookie) is skimmed, not dropped: past the limit only the header lines that framing and
//! selection read are kept, so padding is no way to hide a request.

use memchr::{memchr, memmem, memrchr};
use zeroize::Zeroizing;

use super::{ContentCoding, HttpVersion, RequestHead, append_forwarded};
use crate::shared::model::Timestamp;

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
            // More than one space between the parts, as nginx accepts (Apache's default
            // `HttpProtocolOptions Strict` answers 400): a superset.
            Target | Version if b == b' ' && self.count == 0 => {}
            Target if b == b' ' => self.enter(Version),
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
            // Blanks after the version, as nginx reads them (Apache answers 400: a superset).
            Eol if b == b' ' || b == b'\t' => {}
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
    let before = trim_spaces_end(before);
    let space = memrchr(b' ', before)?;
    let target = before.get(space + 1..)?;
    if target.is_empty() || target.iter().any(|&b| b <= b' ' || b == 0x7f) {
        return None;
    }
    let method_bytes = trim_spaces_end(before.get(..space)?);
    let space = method_bytes.len();
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

fn trim_spaces_end(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().rposition(|&b| b != b' ').map_or(0, |p| p + 1);
    bytes.get(..end).unwrap_or_default()
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

/// Header names whose lines are kept when a head is skimmed: all that framing, selection and
/// the call record read.
const SKIM_KEPT: &[&[u8]] = &[
    b"content-length",
    b"transfer-encoding",
    b"content-type",
    b"content-encoding",
    b"host",
    b"expect",
    b"x-forwarded-for",
    b"forwarded",
];
/// Bytes a request line may always take, whatever the head limit: Apache's default
/// `LimitRequestLine` (8190) and its line end.
const MIN_START_LINE_BYTES: usize = 8192;
/// Bytes of a skimmed line looked at to decide whether to keep it: more than the longest kept
/// name and its colon.
const SKIM_PREFIX: usize = 32;

/// What happens to the current line of a head being skimmed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SkimLine {
    /// Its first bytes are being gathered in `skim_prefix`.
    Deciding,
    Keep,
    Drop,
}

/// Collects one message head (start line and header block) under a size limit.
#[derive(Debug)]
pub(crate) struct HeadReader {
    /// Zeroed when dropped: a head may carry a token in its query string or a cookie.
    buf: Zeroizing<Vec<u8>>,
    check: StartLineCheck,
    in_start_line: bool,
    at_line_start: bool,
    cr_at_line_start: bool,
    ts_first: Timestamp,
    /// The head outgrew the limit after its start line: only kept lines are still collected.
    skimming: bool,
    skim_line: SkimLine,
    skim_prefix: Vec<u8>,
    /// The last header line (not a continuation) was kept: its folded continuations are too.
    skim_last_kept: bool,
    /// Header lines seen while skimming.
    skim_lines: usize,
    /// Bytes of the start line (with any empty lines before it), once it is complete.
    start_line_len: usize,
}

impl HeadReader {
    pub(crate) fn new(kind: MessageKind) -> Self {
        Self {
            buf: Zeroizing::new(Vec::new()),
            check: StartLineCheck::new(kind),
            in_start_line: true,
            at_line_start: false,
            cr_at_line_start: false,
            ts_first: Timestamp::default(),
            skimming: false,
            skim_line: SkimLine::Deciding,
            skim_prefix: Vec::new(),
            skim_last_kept: false,
            skim_lines: 0,
            start_line_len: 0,
        }
    }

    /// Forgets the current head, keeping the buffer's capacity.
    pub(crate) fn reset(&mut self) {
        self.buf.clear();
        self.check = StartLineCheck::new(self.check.kind);
        self.in_start_line = true;
        self.at_line_start = false;
        self.cr_at_line_start = false;
        self.skimming = false;
        self.skim_line = SkimLine::Deciding;
        self.skim_prefix.clear();
        self.skim_last_kept = false;
        self.skim_lines = 0;
        self.start_line_len = 0;
    }

    /// Whether the head outgrew the limit and was skimmed (only some header lines kept).
    pub(crate) fn skimmed(&self) -> bool {
        self.skimming
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

    /// Takes head bytes from `input`. A head may hold `max` bytes (its start line at least
    /// [`MIN_START_LINE_BYTES`]); past that, once its start line is complete, it is skimmed:
    /// header lines other than [`SKIM_KEPT`] ones are dropped, and it is too large only when the
    /// kept ones pass `2 * max` bytes (or `max` past a longer start line) or the lines pass
    /// `max_lines`.
    pub(crate) fn feed(
        &mut self,
        input: &[u8],
        ts: Timestamp,
        max: usize,
        max_lines: usize,
    ) -> HeadFeed {
        if self.skimming {
            return self.skim(input, 0, max, max_lines);
        }
        let mut start = 0;
        if self.buf.is_empty() && self.in_start_line {
            // RFC 9112 §2.2: empty lines before a start line are ignored.
            start = input
                .iter()
                .position(|&b| b != b'\r' && b != b'\n')
                .unwrap_or(input.len());
        }
        // A start line may take what the servers allow one (Apache's `LimitRequestLine`) even
        // when the head limit is lower; the headers then get what is left, or are skimmed.
        let line_limit = if self.in_start_line {
            max.max(MIN_START_LINE_BYTES)
        } else {
            max
        };
        let room = line_limit.saturating_sub(self.buf.len());
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
                    self.start_line_len = self.buf.len().saturating_add(i.saturating_sub(start));
                }
                Verdict::Implausible => {
                    return HeadFeed::Implausible {
                        consumed: i,
                        at_line_start: b == b'\n',
                    };
                }
            }
        }
        let used = self.buf.len().saturating_add(i.saturating_sub(start));
        let end = end.min(i.saturating_add(max.saturating_sub(used)));
        let window = window.get(..end).unwrap_or_default();
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
        } else if !self.in_start_line {
            self.start_skimming();
            self.skim(input, i, max, max_lines)
        } else {
            // At least one byte, so that a zero limit cannot stall the caller.
            HeadFeed::TooLarge {
                consumed: i.max(1),
                at_line_start: self.at_line_start,
            }
        }
    }
}

/// Fills `head` from the start line at the front of `bytes` alone (method and target; every
/// header field cleared), for a request whose headers could not be read. False when the start
/// line is not complete.
pub(crate) fn fill_from_start_line(bytes: &[u8], head: &mut RequestHead) -> bool {
    let line = bytes
        .get(..memchr(b'\n', bytes).unwrap_or(bytes.len()))
        .unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ').filter(|p| !p.is_empty());
    let (Some(method), Some(target), Some(_version)) = (parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    replace_text(&mut head.method, method);
    replace_text(&mut head.target, target);
    head.content_type = None;
    head.content_length = None;
    head.chunked = false;
    head.expect_continue = false;
    head.host = None;
    head.forwarded_for = None;
    head.forwarded = None;
    true
}

impl HeadReader {
    /// Heap this reader holds (for the stage's state budget).
    pub(crate) fn held_bytes(&self) -> usize {
        self.buf.capacity() + self.skim_prefix.capacity()
    }

    /// The head just reached the limit: the line it is in decides whether it is kept.
    fn start_skimming(&mut self) {
        self.skimming = true;
        self.skim_line = SkimLine::Deciding;
        self.skim_prefix.clear();
        let line_start = memrchr(b'\n', &self.buf).map_or(0, |p| p + 1);
        let partial = self.buf.get(line_start..).unwrap_or_default();
        self.skim_prefix
            .extend_from_slice(partial.get(..SKIM_PREFIX).unwrap_or(partial));
        match self.decide_skimmed_line(false) {
            Some(decided) => {
                if !self.continues_line() {
                    self.skim_lines += 1;
                }
                if decided == SkimLine::Drop {
                    self.buf.truncate(line_start);
                }
                self.skim_line = decided;
                self.skim_prefix.clear();
            }
            // Too little of the line to tell: its bytes wait in `skim_prefix`.
            None => self.buf.truncate(line_start),
        }
    }

    /// Skims `input[from..]`: see [`HeadReader::feed`].
    fn skim(&mut self, input: &[u8], from: usize, max: usize, max_lines: usize) -> HeadFeed {
        // Twice the limit, or the limit past a start line that alone took more.
        let hard_cap = max
            .saturating_mul(2)
            .max(self.start_line_len.saturating_add(max));
        let mut i = from;
        while let Some(rest) = input.get(i..).filter(|r| !r.is_empty()) {
            match self.skim_line {
                SkimLine::Deciding => {
                    let want = SKIM_PREFIX.saturating_sub(self.skim_prefix.len()).max(1);
                    let piece = rest.get(..want.min(rest.len())).unwrap_or_default();
                    let piece = match memchr(b'\n', piece) {
                        Some(p) => piece.get(..=p).unwrap_or(piece),
                        None => piece,
                    };
                    self.skim_prefix.extend_from_slice(piece);
                    i += piece.len();
                    let line_ended = self.skim_prefix.last() == Some(&b'\n');
                    if line_ended && matches!(self.skim_prefix.as_slice(), b"\n" | b"\r\n") {
                        self.buf.extend_from_slice(b"\r\n");
                        return HeadFeed::Complete { consumed: i };
                    }
                    if let Some(decided) = self.decide_skimmed_line(line_ended) {
                        if !self.continues_line() {
                            self.skim_lines += 1;
                        }
                        if self.skim_lines > max_lines {
                            return HeadFeed::TooLarge {
                                consumed: i,
                                at_line_start: line_ended,
                            };
                        }
                        if decided == SkimLine::Keep {
                            self.buf.extend_from_slice(&self.skim_prefix);
                        }
                        self.skim_line = if line_ended {
                            SkimLine::Deciding
                        } else {
                            decided
                        };
                        self.skim_prefix.clear();
                    }
                }
                SkimLine::Keep | SkimLine::Drop => {
                    let mut len = memchr(b'\n', rest).map_or(rest.len(), |p| p + 1);
                    if self.skim_line == SkimLine::Keep {
                        // Never more than one byte past the cap, however long the line.
                        len = len.min(hard_cap.saturating_sub(self.buf.len()) + 1);
                    }
                    let line = rest.get(..len).unwrap_or_default();
                    if self.skim_line == SkimLine::Keep {
                        self.buf.extend_from_slice(line);
                    }
                    i += len;
                    if line.last() == Some(&b'\n') {
                        self.skim_line = SkimLine::Deciding;
                    }
                }
            }
            if self.buf.len() > hard_cap {
                return HeadFeed::TooLarge {
                    consumed: i.max(1),
                    at_line_start: self.skim_line == SkimLine::Deciding
                        && self.skim_prefix.is_empty(),
                };
            }
        }
        HeadFeed::NeedMore
    }

    /// Whether the line in `skim_prefix` is a folded continuation of the previous header.
    fn continues_line(&self) -> bool {
        matches!(self.skim_prefix.first(), Some(b' ' | b'\t'))
    }

    /// Decides from `skim_prefix` whether its line is kept, once that can be known (its colon,
    /// its end, or [`SKIM_PREFIX`] bytes seen); records the decision for folded lines.
    fn decide_skimmed_line(&mut self, line_ended: bool) -> Option<SkimLine> {
        let prefix = self.skim_prefix.as_slice();
        if self.continues_line() {
            return Some(if self.skim_last_kept {
                SkimLine::Keep
            } else {
                SkimLine::Drop
            });
        }
        let keep = match memchr(b':', prefix) {
            Some(colon) => {
                let name = prefix.get(..colon).unwrap_or_default().trim_ascii_end();
                SKIM_KEPT.iter().any(|k| name.eq_ignore_ascii_case(k))
            }
            None if line_ended || prefix.len() >= SKIM_PREFIX => false,
            None => return None,
        };
        self.skim_last_kept = keep;
        Some(if keep { SkimLine::Keep } else { SkimLine::Drop })
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
    /// `Content-Type: text/html`: a page, not an API answer.
    pub(crate) html: bool,
    /// The server says it reads no further request on this connection (`Connection: close`,
    /// or an HTTP/1.0 answer without `keep-alive`).
    pub(crate) closes: bool,
}

/// Bodies claiming more than this are treated as hostile framing, not as data to skip.
pub(crate) const MAX_PLAUSIBLE_BODY_BYTES: u64 = 1 << 40;

/// httparse header storage, reused for every head so that parsing does not allocate.
#[derive(Debug, Default)]
pub(crate) struct HeaderSlots {
    slots: Vec<httparse::Header<'static>>,
    /// A request head rewritten by [`relax_request_head`]; never longer than the head.
    relaxed: Vec<u8>,
    /// The last request head parsed needed leniency a strict parser would refuse.
    last_lenient: bool,
    /// The last request head parsed asked to switch to HTTP/2 (`Upgrade: h2c`).
    last_h2c: bool,
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
    ///
    /// As lenient as the web servers, so that no spelling they serve escapes: several spaces
    /// between the request line's parts (nginx), header lines folded onto the next line
    /// (obs-fold, which Apache joins with a space) and blanks before a header's colon (Apache's
    /// `HttpProtocolOptions Unsafe` drops them) are rewritten first; header lines that are
    /// still invalid are skipped, as nginx's `ignore_invalid_headers` does.
    pub(crate) fn parse_request(
        &mut self,
        bytes: &[u8],
        max_headers: usize,
        head: &mut RequestHead,
    ) -> Result<RequestFraming, HeadError> {
        let mut relaxed = std::mem::take(&mut self.relaxed);
        let rewritten = relax_request_head(bytes, &mut relaxed);
        let bytes = if rewritten { relaxed.as_slice() } else { bytes };
        let request_line = bytes
            .get(..memchr(b'\n', bytes).unwrap_or(bytes.len()))
            .unwrap_or_default();
        self.last_lenient = rewritten || memmem::find(request_line, b"  ").is_some();
        self.last_h2c = false;
        let mut slots = self.lend(max_headers);
        let mut request = httparse::Request::new(&mut slots);
        let parsed = httparse::ParserConfig::default()
            .allow_multiple_spaces_in_request_line_delimiters(true)
            .ignore_invalid_headers_in_requests(true)
            .parse_request(&mut request, bytes);
        let result = match parsed {
            Ok(httparse::Status::Complete(_)) => {
                // Lines other than the request line, the headers and the blank line were
                // invalid header lines, skipped.
                let lines = memchr::memchr_iter(b'\n', bytes).count();
                self.last_lenient |= lines > request.headers.len().saturating_add(2);
                self.last_h2c = request.headers.iter().any(|h| {
                    h.name.eq_ignore_ascii_case("upgrade")
                        && h.value
                            .split(|&b| b == b',')
                            .any(|t| trim(t).eq_ignore_ascii_case(b"h2c"))
                });
                fill_request_head(&request, head)
            }
            Ok(httparse::Status::Partial) => Err(HeadError::Malformed),
            Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooManyHeaders),
            Err(_) => Err(HeadError::Malformed),
        };
        self.give_back(slots);
        relaxed.clear();
        self.relaxed = relaxed;
        result
    }

    /// Whether the last request head parsed asked to switch to HTTP/2 (`Upgrade: h2c`).
    pub(crate) fn last_request_asked_h2c(&self) -> bool {
        self.last_h2c
    }

    /// Whether the last request head parsed was read only through leniency (several spaces in
    /// its request line, a folded header, a blank before a colon, an invalid header line).
    pub(crate) fn last_request_was_lenient(&self) -> bool {
        self.last_lenient
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

/// Rewrites a request head's header block into `out` when it needs it: each obs-fold (a line
/// end followed by blanks) becomes one space, and blanks between a header name and its colon
/// are dropped. Returns false (and leaves `out` alone) when there is nothing to rewrite, the
/// usual case. `out` never grows past the head's length.
fn relax_request_head(head: &[u8], out: &mut Vec<u8>) -> bool {
    let Some(first_line_end) = memchr(b'\n', head) else {
        return false;
    };
    let fields = head.get(first_line_end + 1..).unwrap_or_default();
    let folded = |f: &[u8]| memmem::find(f, b"\n ").is_some() || memmem::find(f, b"\n\t").is_some();
    let blank_before_colon =
        |f: &[u8]| memmem::find(f, b" :").is_some() || memmem::find(f, b"\t:").is_some();
    let line = head.get(..first_line_end).unwrap_or_default();
    let request_line = line.strip_suffix(b"\r").unwrap_or(line);
    // nginx reads blanks after the protocol version as the line's end.
    let trailing_blanks = matches!(request_line.last(), Some(b' ' | b'\t'));
    if !folded(fields) && !blank_before_colon(fields) && !trailing_blanks {
        return false;
    }
    out.clear();
    out.extend_from_slice(request_line.trim_ascii_end());
    // The line's own ending, so that `out` stays no longer than the head.
    out.extend_from_slice(
        head.get(request_line.len()..=first_line_end)
            .unwrap_or(b"\n"),
    );
    let mut lines = fields.split_inclusive(|&b| b == b'\n').peekable();
    while let Some(line) = lines.next() {
        let text = line.strip_suffix(b"\n").unwrap_or(line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if text.is_empty() {
            // The blank line that ends the head.
            out.extend_from_slice(line);
            continue;
        }
        let mut logical = Vec::new();
        logical.extend_from_slice(text);
        while let Some(next) = lines
            .peek()
            .filter(|n| matches!(n.first(), Some(b' ' | b'\t')))
        {
            let next = next.strip_suffix(b"\n").unwrap_or(next);
            let next = next.strip_suffix(b"\r").unwrap_or(next);
            trim_blanks_end(&mut logical);
            logical.push(b' ');
            logical.extend_from_slice(next.trim_ascii_start());
            lines.next();
        }
        match memchr(b':', &logical) {
            Some(colon) => {
                let (name, value) = logical.split_at(colon);
                out.extend_from_slice(name.trim_ascii_end());
                out.extend_from_slice(value);
            }
            None => out.extend_from_slice(&logical),
        }
        out.push(b'\n');
    }
    true
}

fn trim_blanks_end(bytes: &mut Vec<u8>) {
    while matches!(bytes.last(), Some(b' ' | b'\t')) {
        bytes.pop();
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
    let (mut content_type, mut host) = (false, false);
    head.forwarded_for = None;
    head.forwarded = None;
    let mut transfer = TransferCoding::Absent;
    for header in request.headers.iter() {
        let name = header.name;
        let value = trim(header.value);
        if name.eq_ignore_ascii_case("content-length") {
            head.content_length = Some(merge_content_length(head.content_length, value)?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            transfer = merge_transfer_coding(transfer, value);
        } else if name.eq_ignore_ascii_case("content-type") {
            // Apache joins repeated headers with ", " before PHP reads them: PHP then takes
            // the media type of the first and looks for the boundary in the whole.
            let slot = head.content_type.get_or_insert_default();
            if content_type {
                slot.push_str(", ");
                slot.push_str(&String::from_utf8_lossy(value));
            } else {
                replace_text(slot, value);
            }
            content_type = true;
        } else if name.eq_ignore_ascii_case("host") {
            host = true;
            replace_text(head.host.get_or_insert_default(), value);
        } else if name.eq_ignore_ascii_case("expect") {
            head.expect_continue |= value.eq_ignore_ascii_case(b"100-continue");
        } else if name.eq_ignore_ascii_case("x-forwarded-for") {
            append_forwarded(&mut head.forwarded_for, value);
        } else if name.eq_ignore_ascii_case("forwarded") {
            append_forwarded(&mut head.forwarded, value);
        }
    }
    for (seen, slot) in [
        (content_type, &mut head.content_type),
        (host, &mut head.host),
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
        html: false,
        closes: false,
    };
    let mut keep_alive = false;
    for header in response.headers.iter() {
        let name = header.name;
        let value = trim(header.value);
        if name.eq_ignore_ascii_case("connection") {
            for token in value.split(|&b| b == b',').map(trim) {
                info.closes |= token.eq_ignore_ascii_case(b"close");
                keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case("content-type") {
            let media = value
                .split(|&b| b == b';')
                .next()
                .map(trim)
                .unwrap_or_default();
            info.html = media.eq_ignore_ascii_case(b"text/html");
        } else if name.eq_ignore_ascii_case("content-length") {
            info.content_length = Some(merge_content_length(info.content_length, value)?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            info.transfer = merge_transfer_coding(info.transfer, value);
        }
    }
    info.closes |= response.version == Some(0) && !keep_alive;
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
/// Leading zeros are read past, however many, as Apache's `apr_strtoff` does.
fn merge_content_length(seen: Option<u64>, value: &[u8]) -> Result<u64, HeadError> {
    let mut merged = seen;
    for item in value.split(|&b| b == b',').map(trim) {
        if item.is_empty() || !item.iter().all(u8::is_ascii_digit) {
            return Err(HeadError::BadContentLength);
        }
        let zeros = item.iter().take_while(|&&b| b == b'0').count();
        let item = item
            .get(zeros.min(item.len().saturating_sub(1))..)
            .unwrap_or_default();
        if item.len() > 19 {
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
        reader.feed(bytes, Timestamp(1), max, 64)
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
            let first = reader.feed(a, Timestamp(1), 1024, 64);
            if split > 0 {
                assert_eq!(first, HeadFeed::NeedMore, "split {split}");
            }
            assert_eq!(
                reader.feed(b, Timestamp(2), 1024, 64),
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
    fn oversize_start_line_stops_at_the_limit() {
        let mut reader = HeadReader::new(MessageKind::Request);
        let mut msg = b"GET /".to_vec();
        msg.extend(std::iter::repeat_n(b'a', MIN_START_LINE_BYTES));
        msg.extend_from_slice(b" HTTP/1.1\r\n\r\n");
        assert_eq!(
            feed_all(&mut reader, &msg, 32),
            HeadFeed::TooLarge {
                consumed: MIN_START_LINE_BYTES,
                at_line_start: false
            }
        );
    }

    #[test]
    fn a_start_line_apache_allows_is_read_under_a_lower_head_limit() {
        let mut msg = format!("POST /redcap/api/?{} HTTP/1.1\r\n", "q".repeat(8000)).into_bytes();
        msg.extend_from_slice(b"X-Pad: ppp\r\nContent-Length: 7\r\n\r\n");
        for size in [1, 100, msg.len()] {
            let mut reader = HeadReader::new(MessageKind::Request);
            let fed: Vec<HeadFeed> = msg
                .chunks(size)
                .map(|c| reader.feed(c, Timestamp(1), 64, 64))
                .collect();
            assert!(
                matches!(fed.last(), Some(HeadFeed::Complete { .. })),
                "{size}: {:?}",
                fed.last()
            );
            let mut head = RequestHead::default();
            let framing = HeaderSlots::default()
                .parse_request(reader.bytes(), 64, &mut head)
                .unwrap();
            assert_eq!(framing, RequestFraming::Length(7));
            assert_eq!(head.target.len(), "/redcap/api/?".len() + 8000);
        }
    }

    /// A head of `pad` bytes of padding headers around the lines that matter.
    fn padded_head(pad: usize) -> Vec<u8> {
        let mut msg = b"POST /redcap/api/ HTTP/1.1\r\nCookie: ".to_vec();
        msg.extend(std::iter::repeat_n(b'c', pad));
        msg.extend_from_slice(b"\r\nContent-Type: application/x-www-form-urlencoded\r\nX-Pad: ");
        msg.extend(std::iter::repeat_n(b'p', pad));
        msg.extend_from_slice(
            b"\r\n\t folded padding\r\nContent-Length:\r\n 00042\r\nHost: h\r\n\r\nBODY",
        );
        msg
    }

    #[test]
    fn a_long_head_is_skimmed_keeping_the_lines_that_matter_at_every_split() {
        let msg = padded_head(300);
        let head_len = msg.len() - 4;
        for split in 0..head_len {
            let mut reader = HeadReader::new(MessageKind::Request);
            let (a, b) = msg.split_at(split);
            let first = reader.feed(a, Timestamp(1), 64, 64);
            let second = reader.feed(b, Timestamp(2), 64, 64);
            assert_eq!(first, HeadFeed::NeedMore, "split {split}");
            assert_eq!(
                second,
                HeadFeed::Complete {
                    consumed: b.len() - 4
                },
                "split {split}"
            );
            assert!(reader.skimmed());
            assert!(reader.bytes().len() <= 128, "split {split}");
            let (framing, head) = {
                let mut head = RequestHead::default();
                let framing = HeaderSlots::default()
                    .parse_request(reader.bytes(), 64, &mut head)
                    .unwrap();
                (framing, head)
            };
            assert_eq!(framing, RequestFraming::Length(42), "split {split}");
            assert_eq!(
                head.content_type.as_deref(),
                Some("application/x-www-form-urlencoded"),
                "split {split}"
            );
            assert_eq!(head.host.as_deref(), Some("h"));
        }
        // Byte by byte, too.
        let mut reader = HeadReader::new(MessageKind::Request);
        let fed: Vec<HeadFeed> = msg[..head_len]
            .iter()
            .map(|b| reader.feed(std::slice::from_ref(b), Timestamp(1), 64, 64))
            .collect();
        assert_eq!(fed.last(), Some(&HeadFeed::Complete { consumed: 1 }));
        assert!(
            fed[..fed.len() - 1]
                .iter()
                .all(|f| *f == HeadFeed::NeedMore)
        );
    }

    #[test]
    fn a_skimmed_head_is_too_large_past_twice_the_limit_or_too_many_lines() {
        let mut msg = b"POST /a HTTP/1.1\r\nX-Pad: ".to_vec();
        msg.extend(std::iter::repeat_n(b'p', 100));
        msg.extend_from_slice(b"\r\nX-Forwarded-For: ");
        msg.extend(std::iter::repeat_n(b'1', 200));
        msg.extend_from_slice(b"\r\n\r\n");
        let mut reader = HeadReader::new(MessageKind::Request);
        assert!(matches!(
            feed_all(&mut reader, &msg, 64),
            HeadFeed::TooLarge { .. }
        ));
        let mut msg = b"POST /a HTTP/1.1\r\n".to_vec();
        for i in 0..10 {
            msg.extend_from_slice(format!("X-{i}: {}\r\n", "v".repeat(20)).as_bytes());
        }
        msg.extend_from_slice(b"\r\n");
        let mut reader = HeadReader::new(MessageKind::Request);
        assert!(matches!(
            reader.feed(&msg, Timestamp(1), 64, 5),
            HeadFeed::TooLarge { .. }
        ));
        let mut reader = HeadReader::new(MessageKind::Request);
        assert!(matches!(
            reader.feed(&msg, Timestamp(1), 64, 10),
            HeadFeed::Complete { .. }
        ));
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

    fn parse(bytes: &[u8]) -> Result<(RequestFraming, RequestHead), HeadError> {
        let mut head = RequestHead::default();
        let framing = HeaderSlots::default().parse_request(bytes, 64, &mut head)?;
        Ok((framing, head))
    }

    #[test]
    fn heads_read_only_through_leniency_are_told_apart() {
        let lenient = |bytes: &[u8]| {
            let mut slots = HeaderSlots::default();
            let mut head = RequestHead::default();
            slots.parse_request(bytes, 64, &mut head).unwrap();
            slots.last_request_was_lenient()
        };
        assert!(!lenient(b"POST /a HTTP/1.1\r\nA: b\r\nC: d\r\n\r\n"));
        assert!(!lenient(b"POST /a HTTP/1.1\nA: b\n\n"));
        assert!(lenient(b"POST  /a HTTP/1.1\r\nA: b\r\n\r\n"));
        assert!(lenient(b"POST /a HTTP/1.1\r\nA: b\r\n c\r\n\r\n"));
        assert!(lenient(b"POST /a HTTP/1.1\r\nA : b\r\n\r\n"));
        assert!(lenient(b"POST /a HTTP/1.1\r\nno colon\r\nA: b\r\n\r\n"));
    }

    fn start_line_is_plausible(line: &[u8]) -> bool {
        let mut check = StartLineCheck::new(MessageKind::Request);
        line.iter().all(|&b| check.step(b) != Verdict::Implausible)
    }

    #[test]
    fn several_spaces_in_the_request_line_are_accepted() {
        let line = b"POST   /redcap/api/  HTTP/1.1\r\n";
        assert!(start_line_is_plausible(line));
        let mut bytes = line.to_vec();
        bytes.extend_from_slice(b"Content-Length: 3\r\n\r\n");
        let (framing, head) = parse(&bytes).unwrap();
        assert_eq!(
            (head.method.as_str(), head.target.as_str()),
            ("POST", "/redcap/api/")
        );
        assert_eq!(framing, RequestFraming::Length(3));
        assert!(!start_line_is_plausible(b"POST /a HTTP/1.1 x"));
        // Blanks after the version: nginx runs the request (Apache answers 400).
        let trailing = b"POST /api/ HTTP/1.1 \t\r\nContent-Length: 0\r\n\r\n";
        assert!(start_line_is_plausible(b"POST /api/ HTTP/1.1 \t\r\n"));
        assert_eq!(parse(trailing).unwrap().1.target, "/api/");
        assert!(!start_line_is_plausible(b"POST /a H TTP/1.1"));
        let glued = b"token=XPOST  /redcap/api/   HTTP/1.1\r\n";
        assert_eq!(
            find_message_start(glued, false, MessageKind::Request),
            Some(7)
        );
    }

    #[test]
    fn folded_headers_and_blanks_before_a_colon_are_read_as_apache_reads_them() {
        let (framing, head) = parse(
            b"POST /api/ HTTP/1.1\r\nContent-Type: multipart/form-data;\r\n\t boundary=xyz\r\n\
              Content-Length : 12\r\nHost: a\r\n\r\n",
        )
        .unwrap();
        assert_eq!(
            head.content_type.as_deref(),
            Some("multipart/form-data; boundary=xyz")
        );
        assert_eq!(framing, RequestFraming::Length(12));
        assert_eq!(head.host.as_deref(), Some("a"));
        let mut out = Vec::new();
        assert!(!relax_request_head(
            b"POST / HTTP/1.1\r\nA: b\r\n\r\n",
            &mut out
        ));
        let bare_lf = b"POST / HTTP/1.1\nA\t: b\n  c\nD: e\n\n";
        assert!(relax_request_head(bare_lf, &mut out));
        assert_eq!(out, b"POST / HTTP/1.1\nA: b c\nD: e\n\n");
        assert!(out.len() <= bare_lf.len());
        // Blanks after the version end the request line, as nginx reads it.
        assert!(relax_request_head(
            b"POST /api/ HTTP/1.1 \t\r\nHost: x\r\n\r\n",
            &mut out
        ));
        assert_eq!(out, b"POST /api/ HTTP/1.1\r\nHost: x\n\r\n");
    }

    #[test]
    fn invalid_header_lines_are_skipped_not_fatal() {
        let (framing, head) = parse(
            b"POST /api/ HTTP/1.1\r\nBad{Name}: x\r\nno colon here\r\n\
              Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 5\r\n\r\n",
        )
        .unwrap();
        assert_eq!(framing, RequestFraming::Length(5));
        assert_eq!(
            head.content_type.as_deref(),
            Some("application/x-www-form-urlencoded")
        );
    }

    #[test]
    fn repeated_content_types_are_joined_as_apache_joins_them() {
        let (_, head) = parse(
            b"POST /api/ HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\n\
              Content-Type: application/json\r\n\r\n",
        )
        .unwrap();
        assert_eq!(
            head.content_type.as_deref(),
            Some("application/x-www-form-urlencoded, application/json")
        );
    }

    #[test]
    fn content_length_with_leading_zeros_is_its_number() {
        assert_eq!(merge_content_length(None, b"0012"), Ok(12));
        assert_eq!(merge_content_length(None, b"000"), Ok(0));
        let padded = format!("{}12", "0".repeat(40));
        assert_eq!(merge_content_length(None, padded.as_bytes()), Ok(12));
        assert_eq!(
            merge_content_length(None, b"+12"),
            Err(HeadError::BadContentLength)
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
