//! Streaming `application/x-www-form-urlencoded` scanner.
//!
//! Splits `name=value&...` across arbitrary chunk boundaries, percent-decodes names and the
//! values the [`FieldCollector`] wants, and skips the rest with `memchr`. Holds only the current
//! name (bounded); never allocates per byte or per field.

use super::BodyProblem;
use super::form::{FieldCollector, FieldName};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Reading a name, up to `=` or `&`.
    Name,
    /// Reading a value the collector wants, up to `&`.
    Value,
    /// Skipping to the next `&` (a value nobody wants, or after a gap).
    Skip,
}

pub(crate) struct UrlencodedScanner {
    state: State,
    /// The decoded name so far; cleared (capacity kept) for each field.
    name: FieldName,
    escape: Escape,
}

impl UrlencodedScanner {
    pub(crate) fn new() -> UrlencodedScanner {
        UrlencodedScanner {
            state: State::Name,
            name: FieldName::with_capacity(64),
            escape: Escape::None,
        }
    }

    pub(crate) fn feed(&mut self, mut input: &[u8], out: &mut FieldCollector) {
        while !input.is_empty() {
            input = match self.state {
                State::Name => self.read_name(input, out),
                State::Value => self.read_value(input, out),
                State::Skip => match memchr::memchr(b'&', input) {
                    Some(at) => {
                        out.close();
                        self.state = State::Name;
                        input.get(at + 1..).unwrap_or_default()
                    }
                    None => &[],
                },
            };
        }
    }

    /// `len` bytes were lost: the field they fell in is dropped (a `data` value keeps counting),
    /// and reading resumes at the next `&`, which in this encoding always separates fields.
    pub(crate) fn gap(&mut self, len: u64, out: &mut FieldCollector) {
        self.escape = Escape::None;
        match self.state {
            State::Value => {
                out.value_lost(len);
                if !out.wants_value() {
                    self.state = State::Skip;
                }
            }
            State::Name | State::Skip => {
                out.problem(BodyProblem::Gap);
                out.drop_open_field();
                self.clear_name();
                self.state = State::Skip;
            }
        }
    }

    /// The body ended: the last field ends too (`a=b` has no trailing `&`).
    pub(crate) fn finish(&mut self, out: &mut FieldCollector) {
        match self.state {
            State::Name => {
                if self.name.started() || self.escape != Escape::None {
                    self.end_name(out);
                }
            }
            State::Value => self.flush_value(out),
            State::Skip => {}
        }
        out.close();
    }

    fn read_name<'a>(&mut self, input: &'a [u8], out: &mut FieldCollector) -> &'a [u8] {
        let end = memchr::memchr2(b'=', b'&', input);
        let raw = end.map_or(input, |at| input.get(..at).unwrap_or_default());
        self.push_name(raw);
        let Some(at) = end else {
            return &[];
        };
        let rest = input.get(at + 1..).unwrap_or_default();
        self.end_name(out);
        if input.get(at) == Some(&b'&') {
            // `name&`: PHP registers the name with an empty value.
            out.close();
            self.state = State::Name;
        } else if out.wants_value() {
            self.state = State::Value;
        } else {
            self.state = State::Skip;
        }
        rest
    }

    fn read_value<'a>(&mut self, input: &'a [u8], out: &mut FieldCollector) -> &'a [u8] {
        let end = memchr::memchr(b'&', input);
        let raw = end.map_or(input, |at| input.get(..at).unwrap_or_default());
        self.escape.decode(raw, &mut |bytes| out.value(bytes));
        let Some(at) = end else {
            return &[];
        };
        self.flush_value(out);
        out.close();
        self.state = State::Name;
        input.get(at + 1..).unwrap_or_default()
    }

    fn flush_value(&mut self, out: &mut FieldCollector) {
        self.escape.flush(&mut |bytes| out.value(bytes));
    }

    fn push_name(&mut self, raw: &[u8]) {
        let name = &mut self.name;
        self.escape.decode(raw, &mut |bytes| name.push(bytes));
    }

    /// Opens the field named so far.
    fn end_name(&mut self, out: &mut FieldCollector) {
        let name = &mut self.name;
        self.escape.flush(&mut |bytes| name.push(bytes));
        let too_long = self.name.too_long();
        if too_long {
            out.problem(BodyProblem::FieldTooLong);
        }
        // Too long to be a field REDCap reads: opening it as nameless makes it ignored.
        out.begin(if too_long { b"" } else { self.name.as_bytes() }, false);
        self.clear_name();
    }

    #[cfg(test)]
    pub(crate) fn buffered_bytes(&self) -> usize {
        self.name.capacity()
    }

    fn clear_name(&mut self) {
        self.name.clear();
        self.escape = Escape::None;
    }
}

/// Streaming `%XX` / `+` decoder state, for names and values. Invalid escapes stay
/// literal, as in PHP's `php_url_decode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Escape {
    #[default]
    None,
    /// Saw `%`.
    Percent,
    /// Saw `%` and one hex digit.
    PercentHex(u8),
}

impl Escape {
    /// Decodes `raw` (which holds no separator) and passes the bytes to `emit`, in runs.
    pub(crate) fn decode(&mut self, mut raw: &[u8], emit: &mut impl FnMut(&[u8])) {
        while !raw.is_empty() {
            if *self != Escape::None {
                let Some((&b, rest)) = raw.split_first() else {
                    return;
                };
                match (*self, hex_value(b)) {
                    (Escape::Percent, Some(_)) => {
                        *self = Escape::PercentHex(b);
                        raw = rest;
                    }
                    (Escape::PercentHex(h), Some(low)) => {
                        emit(&[hex_value(h).unwrap_or(0) << 4 | low]);
                        *self = Escape::None;
                        raw = rest;
                    }
                    // Not an escape: what was held is literal, and `b` is read afresh.
                    _ => self.flush(emit),
                }
                continue;
            }
            let Some(at) = memchr::memchr2(b'%', b'+', raw) else {
                emit(raw);
                return;
            };
            let (run, rest) = raw.split_at(at);
            if !run.is_empty() {
                emit(run);
            }
            match rest.split_first() {
                Some((b'+', rest)) => {
                    emit(b" ");
                    raw = rest;
                }
                Some((_, rest)) => {
                    *self = Escape::Percent;
                    raw = rest;
                }
                None => return,
            }
        }
    }

    /// Ends the text: a held partial escape is literal.
    pub(crate) fn flush(&mut self, emit: &mut impl FnMut(&[u8])) {
        match std::mem::take(self) {
            Escape::None => {}
            Escape::Percent => emit(b"%"),
            Escape::PercentHex(h) => emit(&[b'%', h]),
        }
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_in_pieces(raw: &[u8], at: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut esc = Escape::None;
        let (a, b) = raw.split_at(at);
        esc.decode(a, &mut |s| out.extend_from_slice(s));
        esc.decode(b, &mut |s| out.extend_from_slice(s));
        esc.flush(&mut |s| out.extend_from_slice(s));
        out
    }

    #[test]
    fn percent_decoding_matches_php_at_every_split() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"fields%5B0%5D", b"fields[0]"),
            (b"a+b%2Cc", b"a b,c"),
            (b"100%", b"100%"),
            (b"%4", b"%4"),
            (b"%zz%41", b"%zzA"),
            (b"%%41", b"%A"),
            (b"%4%41", b"%4A"),
            (b"%e2%80%a6", "…".as_bytes()),
        ];
        for (raw, want) in cases {
            for at in 0..=raw.len() {
                assert_eq!(decode_in_pieces(raw, at), *want, "{raw:?} split at {at}");
            }
        }
    }
}
