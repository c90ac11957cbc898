//! Streaming `multipart/form-data` scanner.
//!
//! Reads a body as PHP's rfc1867 parser does, across arbitrary chunk boundaries: a part starts
//! after a line that is exactly `--boundary` (no padding; `--boundary--` is not one, so PHP reads
//! on through an "epilogue" and so do we), its content ends at the next `\n--boundary` (an
//! optional `\r` before it dropped), and the parser then skips lines up to the next exact
//! delimiter line. Each part's head is read for its `Content-Disposition` name and `filename`;
//! a part naming neither stops PHP (and us) for good. Content streams to the [`FieldCollector`].
//! Memory is one small window (a few KiB, or twice the delimiter) and one bounded part head,
//! whatever the size of the parts.

use memchr::memmem::Finder;
use zeroize::Zeroizing;

use super::BodyProblem;
use super::form::{FieldCollector, FieldName};

/// Bytes of body held at once (at least; a long boundary needs more). Part content passes
/// through in pieces of about this size.
const WINDOW: usize = 4096;
/// Longest boundary accepted. RFC 2046 allows 70, PHP any length: this is above what a request
/// head (`http.max_head_bytes`) can carry, so no boundary the server reads is refused.
const MAX_BOUNDARY: usize = 64 * 1024;
/// PHP's default `max_file_uploads`, part of its default limit on multipart parts.
const PHP_MAX_FILE_UPLOADS: u64 = 20;
/// Bytes of one part-head line kept: enough for any header name. PHP reads part heads of any
/// size; lines are only looked at (for a colon) past this.
const MAX_PART_LINE: usize = 4096;
/// Longest `Content-Disposition` header (with its continuation lines) read; a longer one is
/// reported as malformed multipart and its part skipped.
const MAX_DISPOSITION: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Part content (or the preamble, or a skipped part or line: then no field is open), up to
    /// the next `\n--boundary`.
    Content,
    /// The rest of the line after `\n--boundary`: a part starts only when it is empty (or a
    /// lone `\r`); `--` marks the closing delimiter.
    DelimiterLine { len: usize, dashes: u8, cr: bool },
    /// Header lines of a part, up to an empty line.
    Head,
    /// The start of a part without a disposition, which PHP skips by lines: a delimiter line
    /// right here (with no line end before it) counts.
    SkipFromLineStart,
    /// PHP gave up on the body (a part whose disposition names neither a field nor a file):
    /// nothing more is read.
    Abandoned,
}

/// The head of the part being read.
#[derive(Default)]
struct PartHead {
    /// The physical line being read, up to [`MAX_PART_LINE`] bytes.
    line: Vec<u8>,
    /// Bytes of the physical line so far (kept or not).
    line_len: usize,
    /// The physical line so far has a colon.
    line_has_colon: bool,
    /// The `Content-Disposition` header being read (with its continuation lines), without line
    /// ends; empty while another header is being read (those are not kept).
    header: Vec<u8>,
    /// The header being read is the part's first `Content-Disposition`.
    header_is_disposition: bool,
    /// That header was longer than [`MAX_DISPOSITION`]: it cannot be read as PHP reads it.
    disposition_too_long: bool,
    name: FieldName,
    has_name: bool,
    name_too_long: bool,
    uploaded: bool,
    /// A `Content-Disposition` header was read.
    disposition: bool,
}

pub(crate) struct MultipartScanner {
    /// `\n--` + boundary.
    delimiter: Finder<'static>,
    delimiter_len: usize,
    /// Unread body bytes; may hold a token, so it is zeroed when dropped.
    window: Zeroizing<Vec<u8>>,
    state: State,
    head: PartHead,
    seen_bytes: bool,
    /// Bytes the window may hold: [`WINDOW`], or more for a long delimiter.
    window_cap: usize,
    /// The last delimiter line seen was the closing one (`--boundary--`) and no part has
    /// started since: the body may end here without being malformed.
    closed: bool,
    /// Parts with a `Content-Disposition` so far, which PHP limits.
    parts: u64,
}

impl MultipartScanner {
    /// Heap this scanner holds (for the HTTP stage's state budget).
    pub(crate) fn held_bytes(&self) -> usize {
        std::mem::size_of::<MultipartScanner>()
            + self.window.capacity()
            + self.head.line.capacity()
            + self.head.header.capacity()
    }

    /// A scanner for the boundary named in `content_type`, or `None` when it names none usable.
    pub(crate) fn for_content_type(content_type: &str) -> Option<MultipartScanner> {
        let boundary = boundary(content_type.as_bytes())?;
        let mut delimiter = Vec::with_capacity(boundary.len() + 3);
        delimiter.extend_from_slice(b"\n--");
        delimiter.extend_from_slice(boundary);
        let mut window = Zeroizing::new(Vec::new());
        // The body starts with `--boundary`: a virtual line end makes the first delimiter look
        // like every other one.
        window.push(b'\n');
        Some(MultipartScanner {
            delimiter_len: delimiter.len(),
            window_cap: WINDOW.max(delimiter.len().saturating_mul(2)),
            delimiter: Finder::new(&delimiter).into_owned(),
            window,
            state: State::Content,
            head: PartHead::default(),
            seen_bytes: false,
            closed: false,
            parts: 0,
        })
    }

    pub(crate) fn feed(&mut self, mut input: &[u8], out: &mut FieldCollector) {
        self.seen_bytes |= !input.is_empty();
        while !input.is_empty() && self.state != State::Abandoned {
            if self.window.capacity() < self.window_cap {
                let more = self.window_cap - self.window.len();
                self.window.reserve_exact(more);
            }
            // `drain` leaves at most a delimiter's length, so there is always room.
            let room = self.window_cap.saturating_sub(self.window.len()).max(1);
            let (piece, rest) = input.split_at(room.min(input.len()));
            self.window.extend_from_slice(piece);
            input = rest;
            self.drain(out);
        }
    }

    /// `len` bytes were lost. Content of an upload keeps counting; any other field being read is
    /// dropped and reading resumes at the next delimiter.
    pub(crate) fn gap(&mut self, len: u64, out: &mut FieldCollector) {
        self.seen_bytes = true;
        match self.state {
            State::Abandoned => {}
            State::Content | State::SkipFromLineStart => {
                self.state = State::Content;
                // What was held back is content (or a delimiter that can no longer complete).
                if out.wants_value() {
                    out.value(&self.window);
                }
                self.window.clear();
                out.value_lost(len);
            }
            State::DelimiterLine { .. } | State::Head => {
                out.problem(BodyProblem::Gap);
                self.window.clear();
                self.skip_part(out);
            }
        }
    }

    pub(crate) fn finish(&mut self, out: &mut FieldCollector) {
        match self.state {
            State::Content | State::SkipFromLineStart => {
                if out.wants_value() {
                    out.value(self.unterminated_value());
                }
                if self.seen_bytes && !self.closed {
                    // A part without its closing delimiter (or no delimiter at all): PHP may
                    // see something other than we did.
                    out.problem(BodyProblem::MalformedMultipart);
                }
            }
            State::DelimiterLine { dashes, .. } => {
                if dashes < 2 {
                    out.problem(BodyProblem::MalformedMultipart);
                }
            }
            State::Head => out.problem(BodyProblem::MalformedMultipart),
            State::Abandoned => {}
        }
        self.window.clear();
        out.close();
    }

    #[cfg(test)]
    pub(crate) fn buffered_bytes(&self) -> usize {
        self.window.capacity()
            + self.head.line.capacity()
            + self.head.header.capacity()
            + self.head.name.capacity()
    }

    /// What PHP keeps of the window when the body ends inside a part: its read stops where a
    /// delimiter might begin (the longest tail that is a start of `\n--boundary`) and drops one
    /// `\r` before it, so a last part without its closing delimiter keeps its value.
    fn unterminated_value(&self) -> &[u8] {
        let needle = self.delimiter.needle();
        let window: &[u8] = &self.window;
        let held = (1..=needle.len().min(window.len()))
            .rev()
            .find(|&k| needle.get(..k).is_some_and(|start| window.ends_with(start)))
            .unwrap_or(0);
        let value = window.get(..window.len() - held).unwrap_or_default();
        if held > 0 {
            value.strip_suffix(b"\r").unwrap_or(value)
        } else {
            value
        }
    }

    /// Reads as much of the window as can be decided on; keeps only what might begin a
    /// delimiter.
    fn drain(&mut self, out: &mut FieldCollector) {
        let mut window = std::mem::replace(&mut self.window, Zeroizing::new(Vec::new()));
        let mut pos = 0;
        while let Some(avail) = window.get(pos..).filter(|a| !a.is_empty()) {
            // `None`: wait for more bytes.
            let used = match self.state {
                State::Content => Some(self.read_content(avail, out)).filter(|&n| n > 0),
                State::DelimiterLine { len, dashes, cr } => {
                    Some(self.read_delimiter_line(avail, len, dashes, cr))
                }
                State::Head => Some(self.read_head(avail, out)),
                State::SkipFromLineStart => self.skip_from_line_start(avail),
                State::Abandoned => Some(avail.len()),
            };
            let Some(used) = used else {
                break;
            };
            pos += used;
        }
        let consumed = pos.min(window.len());
        window.drain(..consumed);
        self.window = window;
    }

    /// Returns how many bytes of `avail` were consumed (0: wait for more).
    fn read_content(&mut self, avail: &[u8], out: &mut FieldCollector) -> usize {
        match self.delimiter.find(avail) {
            Some(at) => {
                let content = avail.get(..at).unwrap_or_default();
                let content = content.strip_suffix(b"\r").unwrap_or(content);
                if out.wants_value() {
                    out.value(content);
                }
                out.close();
                self.state = State::DelimiterLine {
                    len: 0,
                    dashes: 0,
                    cr: false,
                };
                at + self.delimiter_len
            }
            None => {
                // Keep back what could be `\r` + the start of a delimiter.
                let safe = avail.len().saturating_sub(self.delimiter_len);
                if out.wants_value() {
                    out.value(avail.get(..safe).unwrap_or_default());
                }
                safe
            }
        }
    }

    /// Reads the rest of a line that began with `--boundary`, as PHP's `find_boundary`
    /// compares it: only an otherwise empty line starts a part; after any other, lines are
    /// skipped up to the next one that does.
    fn read_delimiter_line(&mut self, avail: &[u8], len: usize, dashes: u8, cr: bool) -> usize {
        let end = memchr::memchr(b'\n', avail);
        let piece = end.map_or(avail, |at| avail.get(..at).unwrap_or_default());
        let mut dashes = dashes;
        // Only the line's first two bytes can make it the closing delimiter, however the line
        // arrives in pieces.
        for (i, &b) in piece.iter().enumerate().take(2usize.saturating_sub(len)) {
            if len + i == usize::from(dashes) && b == b'-' {
                dashes += 1;
            }
        }
        let cr = piece.last().map_or(cr, |&b| b == b'\r');
        let len = len.saturating_add(piece.len());
        let Some(at) = end else {
            self.state = State::DelimiterLine { len, dashes, cr };
            return avail.len();
        };
        if len == 0 || (len == 1 && cr) {
            self.closed = false;
            self.head = PartHead::default_with(std::mem::take(&mut self.head));
            self.state = State::Head;
        } else {
            self.closed |= dashes == 2;
            // Not a delimiter line: PHP skips lines; the `\n` just read may precede one.
            self.state = State::Content;
            return at;
        }
        at + 1
    }

    /// `None`: too few bytes yet to tell whether a delimiter line starts here.
    fn skip_from_line_start(&mut self, avail: &[u8]) -> Option<usize> {
        let dashes_boundary = self.delimiter.needle().get(1..).unwrap_or_default();
        let n = dashes_boundary.len().min(avail.len());
        if avail.get(..n) != dashes_boundary.get(..n) {
            self.state = State::Content;
            return Some(0);
        }
        if n < dashes_boundary.len() {
            return None;
        }
        self.state = State::DelimiterLine {
            len: 0,
            dashes: 0,
            cr: false,
        };
        Some(n)
    }

    /// Reads part-head lines of any length and number, as PHP does, keeping only the
    /// `Content-Disposition` header (bounded) and a bounded start of each line.
    fn read_head(&mut self, avail: &[u8], out: &mut FieldCollector) -> usize {
        let end = memchr::memchr(b'\n', avail);
        let piece = end.map_or(avail, |at| avail.get(..at).unwrap_or_default());
        let used = end.map_or(avail.len(), |at| at + 1);
        self.head.line_has_colon |= memchr::memchr(b':', piece).is_some();
        let room = MAX_PART_LINE.saturating_sub(self.head.line.len());
        self.head
            .line
            .extend_from_slice(piece.get(..room.min(piece.len())).unwrap_or_default());
        self.head.line_len = self.head.line_len.saturating_add(piece.len());
        if end.is_none() {
            return used;
        }
        let mut line = std::mem::take(&mut self.head.line);
        let whole = self.head.line_len == line.len();
        if whole && line.last() == Some(&b'\r') {
            line.pop();
        }
        if whole && line.is_empty() {
            self.end_header();
            self.begin_part(out);
        } else if line.first().is_some_and(|&b| is_c_space(b)) || !self.head.line_has_colon {
            // PHP appends a line that starts with a blank, or has no colon, to the header
            // before it (and drops it when there is none).
            if self.head.header_is_disposition {
                self.keep_disposition_line(&line, whole);
            }
        } else {
            self.end_header();
            let colon = memchr::memchr(b':', &line);
            // PHP compares the name as written (no blanks trimmed), in any case; the first
            // `Content-Disposition` header is the one it reads.
            let name = colon.and_then(|c| line.get(..c)).unwrap_or_default();
            if name.eq_ignore_ascii_case(b"content-disposition") && !self.head.disposition {
                self.head.header_is_disposition = true;
                self.keep_disposition_line(&line, whole);
            }
        }
        line.clear();
        self.head.line = line;
        self.head.line_len = 0;
        self.head.line_has_colon = false;
        used
    }

    fn keep_disposition_line(&mut self, line: &[u8], whole: bool) {
        if !whole || self.head.header.len().saturating_add(line.len()) > MAX_DISPOSITION {
            self.head.disposition_too_long = true;
        } else {
            self.head.header.extend_from_slice(line);
        }
    }

    fn begin_part(&mut self, out: &mut FieldCollector) {
        self.state = State::Content;
        if self.head.disposition_too_long {
            out.problem(BodyProblem::MalformedMultipart);
            out.drop_open_field();
            return;
        }
        if !self.head.disposition {
            // PHP skips a part without a disposition line by line (no field, not counted).
            out.drop_open_field();
            self.state = State::SkipFromLineStart;
            return;
        }
        self.parts = self.parts.saturating_add(1);
        if self.parts > out.max_input_vars().saturating_add(PHP_MAX_FILE_UPLOADS) {
            // PHP's `max_multipart_body_parts` (by default `max_input_vars` +
            // `max_file_uploads`): it reads no further.
            out.problem(BodyProblem::InputVarsExceeded);
            out.drop_open_field();
            self.state = State::Abandoned;
            return;
        }
        if !self.head.has_name && !self.head.uploaded {
            // PHP: "File Upload Mime headers garbled", and it reads no further.
            out.problem(BodyProblem::MalformedMultipart);
            out.drop_open_field();
            self.state = State::Abandoned;
            return;
        }
        if self.head.name_too_long {
            out.problem(BodyProblem::FieldTooLong);
        }
        if self.head.has_name && !self.head.name_too_long {
            out.begin(self.head.name.as_bytes(), self.head.uploaded);
        } else {
            out.begin(b"", self.head.uploaded);
        }
    }

    /// Interprets the complete header held in `head.header`, then clears it.
    fn end_header(&mut self) {
        if !std::mem::take(&mut self.head.header_is_disposition) {
            return;
        }
        self.head.disposition = true;
        let header = std::mem::take(&mut self.head.header);
        if !self.head.disposition_too_long {
            let colon = memchr::memchr(b':', &header).map_or(header.len(), |c| c + 1);
            self.read_disposition(header.get(colon..).unwrap_or_default());
        }
        self.head.header = header;
        self.head.header.clear();
    }

    fn read_disposition(&mut self, value: &[u8]) {
        // Every `;`-separated word with an `=` is a parameter, the first too: PHP does not check
        // for `form-data`, nor require it.
        for param in split_unquoted(value, b';') {
            let start = param
                .iter()
                .position(|&b| !is_c_space(b))
                .unwrap_or(param.len());
            let param = param.get(start..).unwrap_or_default();
            let Some(eq) = memchr::memchr(b'=', param) else {
                continue;
            };
            let (key, rest) = param.split_at(eq);
            let rest = rest.get(1..).unwrap_or_default();
            if key.eq_ignore_ascii_case(b"name") {
                let name = &mut self.head.name;
                name.clear();
                param_value(rest, &mut |b| name.push(&[b]));
                self.head.name_too_long = name.too_long();
                self.head.has_name = true;
            } else if key.eq_ignore_ascii_case(b"filename") {
                self.head.uploaded = true;
            }
        }
    }

    /// Abandons the part being read and looks for the next delimiter.
    fn skip_part(&mut self, out: &mut FieldCollector) {
        out.drop_open_field();
        self.head = PartHead::default_with(std::mem::take(&mut self.head));
        self.state = State::Content;
    }
}

impl PartHead {
    /// A fresh head that reuses the buffers of `old`.
    fn default_with(mut old: PartHead) -> PartHead {
        old.line.clear();
        old.header.clear();
        old.name.clear();
        PartHead {
            line: old.line,
            header: old.header,
            name: old.name,
            ..PartHead::default()
        }
    }
}

/// The boundary in a `multipart/form-data` content type, found as PHP finds it: after the first
/// `boundary` (or, when there is none in lower case, the first in any case) and the `=` that
/// follows, either quoted or up to `,` or `;`. It may be empty, as for PHP.
fn boundary(content_type: &[u8]) -> Option<&[u8]> {
    let at = memchr::memmem::find(content_type, b"boundary").or_else(|| {
        content_type
            .windows(8)
            .position(|w| w.eq_ignore_ascii_case(b"boundary"))
    })?;
    let rest = content_type.get(at + 8..)?;
    let rest = rest.get(memchr::memchr(b'=', rest)? + 1..)?;
    let boundary = match rest.strip_prefix(b"\"") {
        Some(quoted) => quoted.get(..memchr::memchr(b'"', quoted)?)?,
        None => rest.get(..memchr::memchr2(b',', b';', rest).unwrap_or(rest.len()))?,
    };
    (boundary.len() <= MAX_BOUNDARY).then_some(boundary)
}

/// C's `isspace`, which PHP uses on part heads.
fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// Splits at `stop` outside `"..."` / `'...'` quotes (a backslash escapes the quote character),
/// like PHP's `php_ap_getword`.
fn split_unquoted(text: &[u8], stop: u8) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let text = rest?;
        let mut i = 0;
        let mut quote = None;
        while let Some(&b) = text.get(i) {
            match quote {
                Some(q) if b == b'\\' && text.get(i + 1) == Some(&q) => i += 1,
                Some(q) if b == q => quote = None,
                Some(_) => {}
                None if b == stop => break,
                None if b == b'"' || b == b'\'' => quote = Some(b),
                None => {}
            }
            i += 1;
        }
        let (word, tail) = text.split_at(i.min(text.len()));
        rest = tail.get(1..);
        Some(word)
    })
}

/// Copies a parameter value into `out` as PHP's `php_ap_getword_conf` reads it: leading blanks
/// skipped, then a quoted string (with `\"` for a quote) or a word up to a blank. Returns false
/// when it is longer than `limit`.
fn param_value(text: &[u8], out: &mut impl FnMut(u8)) {
    let start = text
        .iter()
        .position(|&b| !is_c_space(b))
        .unwrap_or(text.len());
    let text = text.get(start..).unwrap_or_default();
    // PHP's `substring_conf`: up to the closing quote (quoted) or a blank (unquoted); a
    // backslash escapes a backslash, and in quotes the quote.
    let (quote, body) = match text.first() {
        Some(&q) if q == b'"' || q == b'\'' => (Some(q), text.get(1..).unwrap_or_default()),
        _ => {
            let end = text
                .iter()
                .position(|&b| is_c_space(b))
                .unwrap_or(text.len());
            (None, text.get(..end).unwrap_or_default())
        }
    };
    let mut bytes = body.iter().peekable();
    while let Some(&b) = bytes.next() {
        if Some(b) == quote {
            break;
        }
        let escaped = b == b'\\'
            && bytes
                .peek()
                .is_some_and(|&&n| n == b'\\' || Some(n) == quote);
        let b = if escaped {
            bytes.next().copied().unwrap_or(b)
        } else {
            b
        };
        out(b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundary_is_read_as_php_reads_it() {
        let b = |ct: &str| boundary(ct.as_bytes()).map(|b| String::from_utf8_lossy(b).into_owned());
        assert_eq!(b("multipart/form-data; boundary=abc"), Some("abc".into()));
        assert_eq!(
            b("multipart/form-data; boundary=abc; charset=x"),
            Some("abc".into())
        );
        assert_eq!(
            b("multipart/form-data; BOUNDARY=\"a;b c\""),
            Some("a;b c".into())
        );
        assert_eq!(b("multipart/form-data; boundary=\"abc"), None);
        assert_eq!(b("multipart/form-data"), None);
        assert_eq!(b("multipart/form-data; boundary="), Some("".into()));
        assert_eq!(
            b("multipart/form-data; BOUNDARY=upper; boundary=lower"),
            Some("lower".into()),
            "the lower-case spelling is looked for first"
        );
        assert_eq!(
            b("multipart/form-data; xboundary=in-another; boundary=b"),
            Some("in-another".into())
        );
        let long = "x".repeat(1000);
        assert_eq!(
            b(&format!("multipart/form-data; boundary={long}")),
            Some(long.clone())
        );
        assert_eq!(
            b(&format!(
                "multipart/form-data; boundary={}",
                "x".repeat(MAX_BOUNDARY + 1)
            )),
            None
        );
    }

    #[test]
    fn disposition_parameters_honour_quotes() {
        let words: Vec<&[u8]> =
            split_unquoted(br#"form-data; name="a;b"; filename='x\'y;z'"#, b';').collect();
        assert_eq!(words.len(), 3);
        let value = |text: &[u8]| {
            let mut out = Vec::new();
            param_value(text, &mut |b| out.push(b));
            out
        };
        assert_eq!(value(br#" "to\"ken" rest"#), b"to\"ken");
        assert_eq!(value(b"token more"), b"token");
        assert_eq!(value(br#"'a\\b\'c' d"#), br"a\b'c");
        assert_eq!(value(b"\x0b tok\\\\en\x0bx"), br"tok\en");
    }
}
