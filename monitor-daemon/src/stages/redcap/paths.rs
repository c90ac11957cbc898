//! Which request paths are REDCap API endpoints.
//!
//! Owns the path patterns (`**` any characters, `*` any characters but `/`, the rest literal and
//! case-sensitive) and the resolution a web server applies to a request target before choosing a
//! script (absolute-form `http://host` dropped, query and fragment cut, `%XX` decoding, `//`
//! merging, `.`/`..` segments, and `PATH_INFO` after a `.php` segment), so that an encoded or
//! padded path is no way around the matcher. Where Apache and nginx differ the matcher takes the
//! union (`%2F` is a `/`: nginx decodes it, Apache answers 404). Matching is a small bit-parallel
//! automaton: no backtracking, and no allocation unless the path needs normalising.

use std::borrow::Cow;

/// The patterns used when none are configured: the `api/` stub under any install directory and
/// the versioned `redcap_vX.Y.Z/API/` script.
pub const DEFAULT_API_PATHS: [&str; 4] = [
    "**/api/",
    "**/api/index.php",
    "**/redcap_v*/API/index.php",
    "**/redcap_v*/API/",
];

/// Most pattern elements (literal bytes and wildcards) one pattern may have; the automaton's
/// states fit in a `u128`.
const MAX_PATTERN_ELEMENTS: usize = 127;

/// Most `.php/` segments of one path tried as the script before its `PATH_INFO`: bounds the
/// work a hostile path can cause (Apache runs the first existing script, nginx's usual
/// `fastcgi_split_path_info` the last; a real path has one).
const MAX_SCRIPT_CANDIDATES: usize = 8;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApiPathError {
    #[error(
        "is empty: no request would count as an API call; name at least one pattern, such as \"**/api/\""
    )]
    NoPatterns,
    #[error(
        "the API path pattern {pattern:?} must start with '/' or '*' (paths always start with '/')"
    )]
    NotAbsolute { pattern: String },
    #[error("the API path pattern {pattern:?} is longer than {max} characters")]
    TooLong { pattern: String, max: usize },
}

/// Whether a request path is a REDCap API endpoint. Read from the configuration as a list of
/// patterns and checked there, once: a value of this type always holds valid patterns.
#[derive(Clone, Debug)]
pub struct ApiPaths {
    patterns: Vec<PathPattern>,
    /// The patterns as written, to compare configurations.
    spelled: Vec<String>,
}

impl PartialEq for ApiPaths {
    fn eq(&self, other: &ApiPaths) -> bool {
        self.spelled == other.spelled
    }
}

impl<'de> serde::Deserialize<'de> for ApiPaths {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let spelled = Vec::<String>::deserialize(deserializer)?;
        ApiPaths::new(&spelled).map_err(serde::de::Error::custom)
    }
}

impl ApiPaths {
    pub(crate) fn new(spelled: &[String]) -> Result<ApiPaths, ApiPathError> {
        if spelled.is_empty() {
            return Err(ApiPathError::NoPatterns);
        }
        let patterns = spelled
            .iter()
            .map(|p| PathPattern::parse(p))
            .collect::<Result<_, _>>()?;
        Ok(ApiPaths {
            patterns,
            spelled: spelled.to_vec(),
        })
    }

    /// Whether the request target (origin-form `/a/b?q` or absolute-form `http://host/a/b`)
    /// runs an API endpoint: its resolved path matches a pattern, or the part of it up to a
    /// `.php` segment does (the rest is `PATH_INFO`, as in `/api/index.php/x`, which Apache's
    /// `AcceptPathInfo` default and nginx's `fastcgi_split_path_info` both run as the script).
    pub(crate) fn matches(&self, target: &str) -> bool {
        let path = normalise(target_path(target.as_bytes()));
        if self.patterns.iter().any(|p| p.matches(&path)) {
            return true;
        }
        memchr::memmem::find_iter(&path, b".php/")
            .take(MAX_SCRIPT_CANDIDATES)
            .filter_map(|at| path.get(..at + 4))
            .any(|script| self.patterns.iter().any(|p| p.matches(script)))
    }
}

impl Default for ApiPaths {
    fn default() -> Self {
        let patterns = DEFAULT_API_PATHS.map(String::from);
        ApiPaths::new(&patterns).expect("the default API path patterns are valid")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Element {
    Byte(u8),
    /// `*`: any run of bytes without `/`.
    Segment,
    /// `**`: any run of bytes.
    Any,
}

/// One compiled pattern: an automaton whose state `i` means "the first `i` elements matched".
#[derive(Clone, Debug)]
struct PathPattern {
    elements: Vec<Element>,
    /// For each state, the states reachable from it without reading a byte (wildcards may
    /// match nothing).
    closure: Vec<u128>,
    /// The literal end of the pattern (`/api/`), which every match must end with: most paths
    /// are turned away by this alone.
    literal_suffix: Vec<u8>,
}

impl PathPattern {
    fn parse(pattern: &str) -> Result<PathPattern, ApiPathError> {
        let bytes = pattern.as_bytes();
        if !matches!(bytes.first(), Some(b'/' | b'*')) {
            return Err(ApiPathError::NotAbsolute {
                pattern: pattern.to_string(),
            });
        }
        let mut elements = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while let Some(&b) = bytes.get(i) {
            if b == b'*' {
                let run = bytes
                    .get(i..)
                    .map_or(0, |r| r.iter().take_while(|&&c| c == b'*').count());
                elements.push(if run >= 2 {
                    Element::Any
                } else {
                    Element::Segment
                });
                i += run;
            } else {
                elements.push(Element::Byte(b));
                i += 1;
            }
        }
        if elements.len() > MAX_PATTERN_ELEMENTS {
            return Err(ApiPathError::TooLong {
                pattern: pattern.to_string(),
                max: MAX_PATTERN_ELEMENTS,
            });
        }
        let mut closure = vec![0u128; elements.len() + 1];
        for state in (0..=elements.len()).rev() {
            let mut reach = 1u128 << state;
            if let Some(Element::Segment | Element::Any) = elements.get(state) {
                reach |= closure.get(state + 1).copied().unwrap_or(0);
            }
            if let Some(slot) = closure.get_mut(state) {
                *slot = reach;
            }
        }
        let mut literal_suffix: Vec<u8> = elements
            .iter()
            .rev()
            .map_while(|e| match e {
                Element::Byte(b) => Some(*b),
                Element::Segment | Element::Any => None,
            })
            .collect();
        literal_suffix.reverse();
        Ok(PathPattern {
            elements,
            closure,
            literal_suffix,
        })
    }

    fn matches(&self, path: &[u8]) -> bool {
        if !path.ends_with(&self.literal_suffix) {
            return false;
        }
        let mut states = self.closure.first().copied().unwrap_or(0);
        for &b in path {
            let mut next = 0u128;
            let mut live = states;
            while live != 0 {
                let state = live.trailing_zeros() as usize;
                live &= live - 1;
                let target = match self.elements.get(state) {
                    Some(Element::Byte(want)) if *want == b => state + 1,
                    Some(Element::Segment) if b != b'/' => state,
                    Some(Element::Any) => state,
                    _ => continue,
                };
                next |= self.closure.get(target).copied().unwrap_or(0);
            }
            if next == 0 {
                return false;
            }
            states = next;
        }
        states & (1u128 << self.elements.len()) != 0
    }
}

/// The path part of a request target: an absolute-form target's scheme and authority dropped,
/// and everything from the first `?` (query) or `#` (fragment; Apache and nginx both cut it)
/// dropped. Escapes are not decoded yet, so `%3F` stays part of the path, as for the server.
fn target_path(target: &[u8]) -> &[u8] {
    let path = match scheme_end(target) {
        Some(after_scheme) => {
            let authority = target.get(after_scheme..).unwrap_or_default();
            let path_start =
                memchr::memchr3(b'/', b'?', b'#', authority).unwrap_or(authority.len());
            authority.get(path_start..).unwrap_or_default()
        }
        None => target,
    };
    let end = memchr::memchr2(b'?', b'#', path).unwrap_or(path.len());
    path.get(..end).unwrap_or_default()
}

/// Where the authority starts in an absolute-form target (`scheme://`), if it is one.
fn scheme_end(target: &[u8]) -> Option<usize> {
    let colon = memchr::memchr(b':', target)?;
    let scheme = target.get(..colon)?;
    let valid = scheme.first()?.is_ascii_alphabetic()
        && scheme
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    (valid && target.get(colon..colon + 3) == Some(b"://")).then_some(colon + 3)
}

/// The path as the web server resolves it: `%XX` decoded once, repeated `/` merged, `.` and
/// `..` segments removed. Borrowed when nothing needs doing, which is the common case.
fn normalise(path: &[u8]) -> Cow<'_, [u8]> {
    let needs_work = memchr::memchr(b'%', path).is_some()
        || memchr::memmem::find(path, b"//").is_some()
        || memchr::memmem::find(path, b"/.").is_some();
    if !needs_work {
        return Cow::Borrowed(path);
    }
    let mut decoded = Vec::with_capacity(path.len());
    let mut i = 0;
    while let Some(&b) = path.get(i) {
        let escaped = match (b, path.get(i + 1), path.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) => hex_pair(h, l),
            _ => None,
        };
        match escaped {
            Some(byte) => {
                decoded.push(byte);
                i += 3;
            }
            None => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    Cow::Owned(remove_dot_segments(&decoded))
}

fn hex_pair(high: u8, low: u8) -> Option<u8> {
    let digit = |c: u8| (c as char).to_digit(16);
    Some((digit(high)? * 16 + digit(low)?) as u8)
}

/// Rebuilds the path from its segments, dropping empty and `.` segments and letting `..` remove
/// the one before (never above the root). A trailing `/`, `/.` or `/..` keeps the path a
/// directory, as it is for the server.
fn remove_dot_segments(path: &[u8]) -> Vec<u8> {
    let mut out: Vec<u8> = Vec::with_capacity(path.len());
    let mut ends_in_directory = false;
    for segment in path.split(|&b| b == b'/') {
        ends_in_directory = true;
        match segment {
            b"" | b"." => {}
            b".." => {
                let parent = out.iter().rposition(|&b| b == b'/').unwrap_or(0);
                out.truncate(parent);
            }
            _ => {
                out.push(b'/');
                out.extend_from_slice(segment);
                ends_in_directory = false;
            }
        }
    }
    if ends_in_directory || out.is_empty() {
        out.push(b'/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(path: &str) -> bool {
        ApiPaths::default().matches(path)
    }

    #[test]
    fn default_patterns_match_redcap_api_endpoints() {
        for path in [
            "/api/",
            "/redcap/api/",
            "/redcap/api/index.php",
            "/api/index.php",
            "/a/b/c/api/",
            "/redcap/redcap_v15.7.6/API/index.php",
            "/redcap/redcap_v15.7.6/API/",
            "/redcap_v15.7.6/API/",
            // Absolute-form request target, which Apache accepts.
            "http://redcap.example.org/redcap/api/",
        ] {
            assert!(matches(path), "{path} should match");
        }
    }

    #[test]
    fn default_patterns_reject_other_paths() {
        for path in [
            "/api",
            "/api/foo",
            "/apiary/",
            "/redcap/index.php",
            "/API/",
            "/redcap/API/index.php",
            "/redcap/redcap_v15/x/API/",
            "/redcap/myapi/",
            "",
            "/",
        ] {
            assert!(!matches(path), "{path} should not match");
        }
    }

    #[test]
    fn query_string_is_ignored() {
        assert!(matches("/redcap/api/?content=record"));
        assert!(!matches("/redcap/index.php?x=/api/"));
    }

    #[test]
    fn fragment_is_cut_as_the_server_cuts_it() {
        assert!(matches("/redcap/api/#x"));
        assert!(matches("/redcap/api/#/../x"));
        assert!(!matches("/redcap/index.php#/api/"));
        // Encoded, `?` and `#` are part of the path: not the API.
        assert!(!matches("/redcap/api/%3Fx"));
        assert!(!matches("/redcap/api/%23x"));
    }

    #[test]
    fn absolute_form_targets_are_matched_on_their_path() {
        let anchored = ApiPaths::new(&["/redcap/api/".to_string()]).unwrap();
        for target in [
            "http://redcap.example.org/redcap/api/",
            "HTTP://redcap.example.org:8080/redcap/api/?x=1",
            "https://user@redcap.example.org/redcap//./api/",
        ] {
            assert!(anchored.matches(target), "{target} should match");
        }
        assert!(!anchored.matches("http://redcap.example.org"));
        assert!(!anchored.matches("http://redcap.example.org?/redcap/api/"));
        assert!(!anchored.matches("/x/http://h/redcap/api/"));
    }

    #[test]
    fn path_info_after_a_php_script_runs_that_script() {
        for path in [
            "/redcap/api/index.php/",
            "/redcap/api/index.php/anything",
            "/redcap/api/index.php/a/b.php/c?x",
            "/redcap/api//index.php//x",
            "/redcap/api/index.php%2Fx",
            "/redcap/redcap_v15.7.6/API/index.php/x",
        ] {
            assert!(matches(path), "{path} should match");
        }
        // The whole path is tried too, for an install directory whose name ends in `.php`
        // (then Apache walks on through it): so `/redcap/index.php/api/`, which runs
        // `index.php`, counts as well; a superset, never a way around.
        assert!(matches("/redcap.php/api/"));
        assert!(matches("/redcap/index.php/api/"));
        for path in [
            "/redcap/api/index.phpx/y",
            "/redcap/api/other.php/x",
            "/redcap/api/index.php.bak",
        ] {
            assert!(!matches(path), "{path} should not match");
        }
    }

    #[test]
    fn many_php_segments_are_tried_a_bounded_number_of_times() {
        let mut path = "/x.php/".repeat(MAX_SCRIPT_CANDIDATES);
        path.push_str("api/index.php/y");
        assert!(!matches(&path), "past the candidate limit");
        assert!(matches(&path.replacen("/x.php/", "/", 1)));
    }

    #[test]
    fn very_long_paths_are_matched_to_the_end() {
        let long = format!("/{}/api/", "a".repeat(100_000));
        assert!(matches(&long));
        assert!(!matches(&format!("{long}x")));
    }

    #[test]
    fn percent_encoded_and_padded_paths_are_normalised() {
        for path in [
            "/redcap/%61pi/",
            "/redcap/%61%70%69/",
            "/redcap/api%2F",
            "/redcap//api/",
            "/redcap/api//",
            "/redcap/./api/",
            "/redcap/x/../api/",
            "/redcap/api/.",
            "/redcap/api/x/..",
            "/../api/",
            "/redcap/redcap_v15.7.6/%41PI/index.php",
        ] {
            assert!(matches(path), "{path} should match");
        }
        assert!(!matches("/redcap/%2561pi/"), "decoding happens once");
        assert!(!matches("/redcap/api/.."));
    }

    #[test]
    fn single_star_stays_within_a_segment() {
        let paths = ApiPaths::new(&["/x/*/api/".to_string()]).unwrap();
        assert!(paths.matches("/x/redcap/api/"));
        assert!(!paths.matches("/x/a/b/api/"));
        let paths = ApiPaths::new(&["/x/**/api/".to_string()]).unwrap();
        assert!(paths.matches("/x/a/b/api/"));
        assert!(paths.matches("/x/a/api/"));
    }

    #[test]
    fn many_wildcards_do_not_backtrack() {
        let pattern = format!("/{}x", "**a".repeat(30));
        let paths = ApiPaths::new(&[pattern]).unwrap();
        let path = format!("/{}", "a".repeat(10_000));
        assert!(!paths.matches(&path));
        assert!(paths.matches(&format!("{path}x")));
    }

    #[test]
    fn bad_patterns_are_refused() {
        assert_eq!(ApiPaths::new(&[]).err(), Some(ApiPathError::NoPatterns));
        assert!(matches!(
            ApiPaths::new(&["api/".to_string()]),
            Err(ApiPathError::NotAbsolute { .. })
        ));
        assert!(matches!(
            ApiPaths::new(&[format!("/{}", "a".repeat(200))]),
            Err(ApiPathError::TooLong { .. })
        ));
    }
}
