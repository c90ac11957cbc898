//! Turning decoded form fields into [`RequestFields`] the way PHP fills `$_POST`.
//!
//! Owns field-name handling (PHP's `name[index]` arrays, `.`/space to `_`), which fields are kept,
//! counted or ignored, the value limits, and "last value wins". The body scanners
//! ([`super::urlencoded`], [`super::multipart`]) feed it names and decoded value bytes; it never
//! sees framing, and it holds at most one small value at a time.

use zeroize::{Zeroize, Zeroizing};

use super::{BodyProblem, RequestFields, parse_bool};
use crate::shared::token::{MAX_TOKEN_BYTES, RawToken, TokenProblem};

/// Longest value kept for a scalar field (`content`, `format`, `report_id`, ...).
pub(crate) const MAX_KEPT_VALUE: usize = 256;
/// Longest field name considered; longer names cannot be a field REDCap reads.
pub(crate) const MAX_FIELD_NAME: usize = 256;

/// A field name as it arrives, kept as PHP's `php_register_variable_ex` will read it: leading
/// spaces are dropped and the name ends at a NUL (it is a C string) as the bytes come, so that a
/// long run of either cannot push a name PHP shortens past [`MAX_FIELD_NAME`].
#[derive(Default)]
pub(crate) struct FieldName {
    bytes: Vec<u8>,
    too_long: bool,
    /// A NUL was seen: the rest of the name is not PHP's.
    cut: bool,
    /// Any byte was pushed (PHP counts a field even when its name ends up empty).
    started: bool,
}

impl FieldName {
    pub(crate) fn with_capacity(capacity: usize) -> FieldName {
        FieldName {
            bytes: Vec::with_capacity(capacity),
            ..FieldName::default()
        }
    }

    /// The next decoded bytes of the name.
    pub(crate) fn push(&mut self, mut chunk: &[u8]) {
        self.started |= !chunk.is_empty();
        if self.cut || self.too_long {
            return;
        }
        if self.bytes.is_empty() {
            let start = chunk.iter().position(|&b| b != b' ').unwrap_or(chunk.len());
            chunk = chunk.get(start..).unwrap_or_default();
        }
        if let Some(nul) = memchr::memchr(0, chunk) {
            self.cut = true;
            chunk = chunk.get(..nul).unwrap_or_default();
        }
        if self.bytes.len().saturating_add(chunk.len()) > MAX_FIELD_NAME {
            self.too_long = true;
        } else {
            self.bytes.extend_from_slice(chunk);
        }
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub(crate) fn too_long(&self) -> bool {
        self.too_long
    }

    pub(crate) fn started(&self) -> bool {
        self.started
    }

    /// Forgets the name, keeping the buffer.
    pub(crate) fn clear(&mut self) {
        self.bytes.clear();
        self.too_long = false;
        self.cut = false;
        self.started = false;
    }

    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.bytes.capacity()
    }
}

/// The scalar fields whose values are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kept {
    Content,
    Action,
    Format,
    Type,
    ReturnFormat,
    ReportId,
    DateRangeBegin,
    DateRangeEnd,
    ReturnMetadataOnly,
    ExportFiles,
    AllRecords,
}

/// The list fields whose entries are counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Listed {
    Records,
    Fields,
}

/// What happens to the value of the field being read, decided from its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// No field is open (before the first one, or after a gap dropped it).
    Closed,
    Ignore,
    Token,
    Keep(Kept),
    /// `data`, or an uploaded `file`: only its size is learned.
    Payload,
    /// `records=a,b,c`: the comma-separated items are counted.
    ListString(Listed),
    FilterLogic,
}

/// An element count as PHP's `$_POST[name]` would hold it after every assignment so far.
#[derive(Clone, Copy, Debug, Default)]
struct ListCount {
    /// True once `name[...]` made the value an array; a plain `name=` replaces the array.
    is_array: bool,
    count: u32,
}

/// How PHP applies `max_input_vars` to a body (it counts every field but uploads).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum VarLimit {
    /// Urlencoded (`add_post_vars`): the field past the limit is still registered, then PHP
    /// stops reading the body.
    StopAfterOneMore(u64),
    /// Multipart (rfc1867): fields past the limit are dropped, later parts still read.
    DropPast(u64),
}

/// Collects the fields of one request body.
pub(crate) struct FieldCollector {
    fields: RequestFields,
    var_limit: VarLimit,
    /// Fields begun so far (uploads not counted), as PHP counts them against the limit.
    vars: u64,
    /// PHP stopped reading the body: nothing more is assigned.
    stopped: bool,
    records: ListCount,
    field_list: ListCount,
    role: Role,
    /// The open field's kept value (token included, hence zeroed on drop and after use).
    value: Zeroizing<Vec<u8>>,
    value_too_long: bool,
    /// Decoded bytes of the open field (for `data` and `file`).
    value_len: u64,
    /// Comma-separated items completed so far in the open list string, and whether the current
    /// item has any byte.
    items: u32,
    item_started: bool,
    /// How many times a `token` field was assigned so far (a later one replaces the earlier).
    token_assignments: u32,
}

impl FieldCollector {
    /// The token as read so far, and a count that changes whenever it is assigned anew.
    pub(crate) fn token_so_far(&self) -> (u32, Option<&Result<RawToken, TokenProblem>>) {
        (self.token_assignments, self.fields.token.as_ref())
    }

    /// Heap the open field's value holds (the kept parameters are counted by the caller).
    pub(crate) fn held_bytes(&self) -> usize {
        self.value.capacity()
    }

    pub(crate) fn new(var_limit: VarLimit) -> FieldCollector {
        FieldCollector {
            fields: RequestFields::default(),
            var_limit,
            vars: 0,
            stopped: false,
            records: ListCount::default(),
            field_list: ListCount::default(),
            role: Role::Closed,
            // Never grows past this, so a token is never left behind in a freed buffer.
            value: Zeroizing::new(Vec::with_capacity(MAX_KEPT_VALUE.max(MAX_TOKEN_BYTES))),
            value_too_long: false,
            value_len: 0,
            items: 0,
            item_started: false,
            token_assignments: 0,
        }
    }

    /// Opens a field. `name` is the decoded name as sent; `uploaded` is true for a multipart part
    /// with a `filename` (PHP puts those in `$_FILES`, not `$_POST`).
    pub(crate) fn begin(&mut self, name: &[u8], uploaded: bool) {
        self.close();
        if !uploaded {
            self.vars = self.vars.saturating_add(1);
        }
        let past_limit = match self.var_limit {
            VarLimit::StopAfterOneMore(max) => {
                self.stopped |= self.vars > max.saturating_add(1);
                self.stopped
            }
            VarLimit::DropPast(max) => !uploaded && self.vars > max,
        };
        if past_limit {
            self.problem(BodyProblem::InputVarsExceeded);
            self.role = Role::Ignore;
            return;
        }
        self.role = match php_name(name) {
            None => Role::Ignore,
            Some(name) => self.role_for(name.base(), name.is_array, uploaded),
        };
    }

    /// Whether the open field's value bytes matter (else the scanner may skip them unread).
    pub(crate) fn wants_value(&self) -> bool {
        !matches!(self.role, Role::Closed | Role::Ignore)
    }

    /// The next decoded bytes of the open field's value.
    pub(crate) fn value(&mut self, bytes: &[u8]) {
        match self.role {
            Role::Closed | Role::Ignore => {}
            Role::Payload => self.value_len = self.value_len.saturating_add(bytes.len() as u64),
            Role::Token | Role::Keep(_) => {
                let limit = if self.role == Role::Token {
                    MAX_TOKEN_BYTES
                } else {
                    MAX_KEPT_VALUE
                };
                if self.value.len().saturating_add(bytes.len()) > limit {
                    self.value_too_long = true;
                } else if !self.value_too_long {
                    self.value.extend_from_slice(bytes);
                }
            }
            Role::FilterLogic => self.item_started |= !bytes.is_empty(),
            Role::ListString(_) => {
                let mut item_start = 0;
                for comma in memchr::memchr_iter(b',', bytes) {
                    self.item_started |= comma > item_start;
                    self.items = self.items.saturating_add(u32::from(self.item_started));
                    self.item_started = false;
                    item_start = comma + 1;
                }
                self.item_started |= bytes.len() > item_start;
            }
        }
    }

    /// `len` bytes of the open field's value were lost. A payload keeps its size (as a lower
    /// bound); any other value is unknown, so the field is dropped as if never sent.
    pub(crate) fn value_lost(&mut self, len: u64) {
        self.problem(BodyProblem::Gap);
        if self.role == Role::Payload {
            self.value_len = self.value_len.saturating_add(len);
        } else {
            self.drop_open_field();
        }
    }

    /// Drops the open field without assigning it.
    pub(crate) fn drop_open_field(&mut self) {
        self.reset_value();
        self.role = Role::Closed;
    }

    /// Ends the open field, assigning its value as PHP would.
    pub(crate) fn close(&mut self) {
        let role = std::mem::replace(&mut self.role, Role::Closed);
        match role {
            Role::Closed | Role::Ignore => {}
            Role::Payload => self.fields.params.data_bytes = Some(self.value_len),
            Role::Token => {
                self.token_assignments = self.token_assignments.wrapping_add(1);
                self.fields.token = Some(if self.value_too_long {
                    Err(TokenProblem::Malformed)
                } else {
                    RawToken::parse(&self.value)
                });
            }
            Role::Keep(kept) => {
                if self.value_too_long {
                    self.problem(BodyProblem::FieldTooLong);
                    // PHP holds the long value; we cannot, so say "unknown" rather than keep an
                    // earlier value that PHP overwrote.
                    self.assign(kept, None);
                } else {
                    let text = String::from_utf8_lossy(&self.value).into_owned();
                    self.assign(kept, Some(text));
                }
            }
            Role::FilterLogic => self.fields.params.filter_logic = self.item_started,
            Role::ListString(listed) => {
                let items = self.items.saturating_add(u32::from(self.item_started));
                *self.list_mut(listed) = ListCount {
                    is_array: false,
                    count: items,
                };
            }
        }
        self.reset_value();
    }

    pub(crate) fn problem(&mut self, problem: BodyProblem) {
        let current = self.fields.problem.map_or(0, severity);
        if severity(problem) > current {
            self.fields.problem = Some(problem);
        }
    }

    pub(crate) fn finish(mut self) -> RequestFields {
        self.close();
        self.fields.params.records = self.records.count;
        self.fields.params.fields = self.field_list.count;
        std::mem::take(&mut self.fields)
    }

    /// The `max_input_vars` PHP reads this body with.
    pub(crate) fn max_input_vars(&self) -> u64 {
        match self.var_limit {
            VarLimit::StopAfterOneMore(max) | VarLimit::DropPast(max) => max,
        }
    }

    #[cfg(test)]
    pub(crate) fn buffered_bytes(&self) -> usize {
        self.value.capacity()
    }

    fn role_for(&mut self, base: &[u8], is_array: bool, uploaded: bool) -> Role {
        if uploaded {
            return if base == b"file" {
                Role::Payload
            } else {
                Role::Ignore
            };
        }
        let role = match base {
            b"token" => Role::Token,
            b"content" => Role::Keep(Kept::Content),
            b"action" => Role::Keep(Kept::Action),
            b"format" => Role::Keep(Kept::Format),
            b"type" => Role::Keep(Kept::Type),
            b"returnFormat" => Role::Keep(Kept::ReturnFormat),
            b"report_id" => Role::Keep(Kept::ReportId),
            b"dateRangeBegin" => Role::Keep(Kept::DateRangeBegin),
            b"dateRangeEnd" => Role::Keep(Kept::DateRangeEnd),
            b"returnMetadataOnly" => Role::Keep(Kept::ReturnMetadataOnly),
            b"exportFiles" => Role::Keep(Kept::ExportFiles),
            b"allRecords" => Role::Keep(Kept::AllRecords),
            b"data" => Role::Payload,
            b"filterLogic" => Role::FilterLogic,
            b"records" => Role::ListString(Listed::Records),
            b"fields" => Role::ListString(Listed::Fields),
            _ => Role::Ignore,
        };
        if !is_array {
            return role;
        }
        // `name[...]=`: PHP makes `$_POST[name]` an array (replacing a string), which a scalar
        // field cannot use: REDCap rejects an array token, and an array `content` is no content.
        match role {
            Role::ListString(listed) => {
                let list = self.list_mut(listed);
                *list = ListCount {
                    is_array: true,
                    count: if list.is_array {
                        list.count.saturating_add(1)
                    } else {
                        1
                    },
                };
                Role::Ignore
            }
            Role::Token => {
                self.token_assignments = self.token_assignments.wrapping_add(1);
                self.fields.token = Some(Err(TokenProblem::Malformed));
                Role::Ignore
            }
            Role::Keep(kept) => {
                self.assign(kept, None);
                Role::Ignore
            }
            Role::FilterLogic => {
                self.fields.params.filter_logic = true;
                Role::Ignore
            }
            Role::Payload | Role::Ignore | Role::Closed => role,
        }
    }

    fn assign(&mut self, kept: Kept, text: Option<String>) {
        let f = &mut self.fields.params;
        let flag = |t: &Option<String>| t.as_deref().map(parse_bool);
        match kept {
            Kept::Content => f.content = text,
            Kept::Action => f.action = text,
            Kept::Format => f.format = text,
            Kept::Type => f.type_ = text,
            Kept::ReturnFormat => f.return_format = text,
            Kept::ReportId => f.report_id = text,
            Kept::DateRangeBegin => f.date_range_begin = text,
            Kept::DateRangeEnd => f.date_range_end = text,
            Kept::ReturnMetadataOnly => f.return_metadata_only = flag(&text),
            Kept::ExportFiles => f.export_files = flag(&text),
            Kept::AllRecords => f.all_records = flag(&text),
        }
    }

    fn list_mut(&mut self, listed: Listed) -> &mut ListCount {
        match listed {
            Listed::Records => &mut self.records,
            Listed::Fields => &mut self.field_list,
        }
    }

    fn reset_value(&mut self) {
        if !self.value.is_empty() {
            // Zeroes the whole allocation: the value may have been a token.
            self.value.zeroize();
        }
        self.value_too_long = false;
        self.value_len = 0;
        self.items = 0;
        self.item_started = false;
    }
}

/// How much a problem says about the body; a worse one replaces a milder one.
fn severity(problem: BodyProblem) -> u8 {
    match problem {
        BodyProblem::FieldTooLong | BodyProblem::InputVarsExceeded => 1,
        BodyProblem::UnsupportedContentType => 2,
        BodyProblem::MalformedMultipart => 3,
        BodyProblem::Gap => 4,
    }
}

/// Longest (normalised) name of a field we read: `returnMetadataOnly` and a margin.
const MAX_KNOWN_NAME: usize = 32;

/// A field name as PHP registers it, when it could be one of ours.
#[derive(Debug, PartialEq, Eq)]
struct PhpName {
    base: [u8; MAX_KNOWN_NAME],
    len: usize,
    is_array: bool,
}

impl PhpName {
    fn base(&self) -> &[u8] {
        self.base.get(..self.len).unwrap_or_default()
    }
}

/// Parses a name like PHP's `php_register_variable_ex`: the name is a C string (cut at NUL),
/// leading spaces are skipped, `.` and space become `_`, and the name ends at the first `[` that
/// has a matching `]` (making an array); an unmatched `[` becomes `_` and the name goes on.
/// Returns `None` for empty names and names too long to be any field we read.
fn php_name(name: &[u8]) -> Option<PhpName> {
    let name = name.split(|&b| b == 0).next()?;
    let name = name.get(name.iter().position(|&b| b != b' ')?..)?;
    let (head, is_array, tail) = match memchr::memchr(b'[', name) {
        None => (name, false, &[][..]),
        Some(open) => {
            let (head, rest) = name.split_at(open);
            let closed = rest
                .get(1..)
                .is_some_and(|r| memchr::memchr(b']', r).is_some());
            if closed {
                (head, true, &[][..])
            } else {
                (head, false, rest)
            }
        }
    };
    let len = head.len().checked_add(tail.len())?;
    if head.is_empty() || len > MAX_KNOWN_NAME {
        return None;
    }
    let mut base = [0u8; MAX_KNOWN_NAME];
    let underscored = |b: &u8, also: u8| {
        if *b == b' ' || *b == b'.' || *b == also {
            b'_'
        } else {
            *b
        }
    };
    for (slot, b) in base.iter_mut().zip(
        head.iter()
            .map(|b| underscored(b, b'.'))
            .chain(tail.iter().map(|b| underscored(b, b'['))),
    ) {
        *slot = b;
    }
    Some(PhpName {
        base,
        len,
        is_array,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn php_names_follow_register_variable() {
        let n = |s: &[u8]| {
            php_name(s).map(|p| (String::from_utf8_lossy(p.base()).into_owned(), p.is_array))
        };
        let some = |s: &str, a| Some((s.to_string(), a));
        assert_eq!(n(b"records[0]"), some("records", true));
        assert_eq!(n(b"records[]"), some("records", true));
        assert_eq!(n(b"records[0]x"), some("records", true));
        assert_eq!(n(b"  token"), some("token", false));
        assert_eq!(n(b"token\0junk"), some("token", false));
        assert_eq!(n(b"report.id"), some("report_id", false));
        assert_eq!(n(b"report id"), some("report_id", false));
        assert_eq!(n(b"report[id"), some("report_id", false));
        assert_eq!(n(b"a[b.c"), some("a_b_c", false));
        assert_eq!(n(b"[0]"), None);
        assert_eq!(n(b""), None);
        assert_eq!(n(b"   "), None);
        assert_eq!(n(&[b'x'; 40]), None);
    }

    /// The fingerprint of the token PHP ends up with when fields `names` carry `T0`, `T1`, ...
    fn assigned_tokens(
        limit: VarLimit,
        names: &[&str],
    ) -> (
        Option<crate::shared::token::TokenFingerprint>,
        Option<BodyProblem>,
    ) {
        let key = crate::shared::token::SiteKey::from_bytes([1; 32]);
        let mut c = FieldCollector::new(limit);
        for (i, name) in names.iter().enumerate() {
            c.begin(name.as_bytes(), false);
            c.value(format!("T{i}").as_bytes());
        }
        let f = c.finish();
        let token = f
            .token
            .and_then(|t| t.ok())
            .map(|raw| key.fingerprint(&raw));
        (token, f.problem)
    }

    fn fp(token: &str) -> Option<crate::shared::token::TokenFingerprint> {
        let key = crate::shared::token::SiteKey::from_bytes([1; 32]);
        RawToken::parse(token.as_bytes())
            .ok()
            .map(|raw| key.fingerprint(&raw))
    }

    #[test]
    fn max_input_vars_is_applied_as_php_applies_it() {
        let names = ["token", "a", "token", "token"];
        // Urlencoded: the third field (one past a limit of 2) is still assigned, then PHP stops.
        assert_eq!(
            assigned_tokens(VarLimit::StopAfterOneMore(2), &names),
            (fp("T2"), Some(BodyProblem::InputVarsExceeded))
        );
        // Multipart: fields past the limit are dropped.
        assert_eq!(
            assigned_tokens(VarLimit::DropPast(2), &names),
            (fp("T0"), Some(BodyProblem::InputVarsExceeded))
        );
        assert_eq!(
            assigned_tokens(VarLimit::DropPast(4), &names),
            (fp("T3"), None)
        );
        // Uploads do not count.
        let mut c = FieldCollector::new(VarLimit::DropPast(1));
        c.begin(b"file", true);
        c.begin(b"token", false);
        c.value(b"ABC");
        assert!(c.finish().token.is_some_and(|t| t.is_ok()));
    }

    #[test]
    fn field_names_drop_leading_spaces_and_end_at_a_nul_as_they_come() {
        let mut name = FieldName::default();
        for _ in 0..1000 {
            name.push(b" ");
        }
        name.push(b"tok");
        name.push(b"en\0");
        name.push(&[b'x'; 1000]);
        assert_eq!((name.as_bytes(), name.too_long()), (&b"token"[..], false));
        name.clear();
        name.push(&[b'x'; MAX_FIELD_NAME + 1]);
        assert!(name.too_long());
        name.clear();
        assert!(!name.started());
        name.push(b"  ");
        assert!(name.started() && name.as_bytes().is_empty());
    }

    #[test]
    fn list_counts_follow_php_assignment_order() {
        let mut c = FieldCollector::new(VarLimit::DropPast(1000));
        c.begin(b"records", false);
        c.value(b"a,b,,c,");
        c.close();
        assert_eq!(c.records.count, 3);
        c.begin(b"records[]", false);
        c.close();
        assert_eq!(c.records.count, 1, "an array replaces the string");
        c.begin(b"records[7]", false);
        c.close();
        assert_eq!(c.records.count, 2);
    }
}
