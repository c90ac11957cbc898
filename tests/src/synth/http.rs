//! HTTP/1.1 messages as REDCap clients and a PHP server put them on the wire: urlencoded and
//! multipart API requests, `Expect: 100-continue`, and responses that are plain, chunked, or
//! gzip + chunked. Each response reports its decoded and wire body sizes for assertions.

use std::io::Write;

use flate2::Compression;
use flate2::write::GzEncoder;

/// `application/x-www-form-urlencoded` encoding of `pairs`, as requests/PyCap send it.
pub fn urlencode(pairs: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        encode_component(k, &mut out);
        out.push('=');
        encode_component(v, &mut out);
    }
    out
}

fn encode_component(s: &str, out: &mut String) {
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
}

/// A POST with `body` and the given extra headers (Content-Length added).
pub fn post(
    path: &str,
    content_type: &str,
    body: &[u8],
    extra_headers: &[(&str, &str)],
) -> Vec<u8> {
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: redcap.example.org\r\nUser-Agent: python-requests/2.32.3\r\n\
         Accept-Encoding: gzip, deflate\r\nAccept: */*\r\nConnection: keep-alive\r\n\
         Content-Type: {content_type}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in extra_headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

/// A urlencoded API POST (PyCap style).
pub fn post_form(path: &str, pairs: &[(&str, &str)]) -> Vec<u8> {
    post(
        path,
        "application/x-www-form-urlencoded",
        urlencode(pairs).as_bytes(),
        &[],
    )
}

/// Headers only of a POST that asks `Expect: 100-continue`; the body goes after the 100.
pub fn post_head_expecting_continue(path: &str, content_type: &str, body_len: usize) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: redcap.example.org\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\
         Content-Type: {content_type}\r\nContent-Length: {body_len}\r\nExpect: 100-continue\r\n\r\n"
    )
    .into_bytes()
}

/// The interim response a server sends to `Expect: 100-continue`.
pub const CONTINUE_100: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// A multipart body of text parts (in order) and an optional file part named `file`.
/// Returns (Content-Type header value, body).
pub fn multipart(
    boundary: &str,
    parts: &[(&str, &str)],
    file: Option<(&str, &[u8])>,
) -> (String, Vec<u8>) {
    let mut body = Vec::new();
    for (name, value) in parts {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    if let Some((filename, data)) = file {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n\
                 Content-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// A GET for a web page (not the API).
pub fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: redcap.example.org\r\nUser-Agent: Mozilla/5.0\r\nAccept: text/html\r\n\r\n")
        .into_bytes()
}

/// How a response body travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyEncoding {
    /// `Content-Length`, identity.
    Plain,
    /// `Transfer-Encoding: chunked`, identity, chunks of this size.
    Chunked(usize),
    /// gzip (level 1-9) then chunked in chunks of this size, as PHP's ob_gzhandler under Apache.
    GzipChunked { level: u32, chunk: usize },
}

/// A serialised response and its body sizes.
#[derive(Debug, Clone)]
pub struct Response {
    pub bytes: Vec<u8>,
    /// Decoded body length (`response_bytes` in the calls output).
    pub body_bytes: u64,
    /// Body length as sent, after de-chunking (`response_wire_bytes`).
    pub wire_bytes: u64,
}

pub fn gzip(data: &[u8], level: u32) -> Vec<u8> {
    let mut enc = GzEncoder::new(
        Vec::with_capacity(data.len() / 3 + 64),
        Compression::new(level),
    );
    // Writing into a Vec cannot fail.
    let _ = enc.write_all(data);
    enc.finish().unwrap_or_default()
}

/// A response with `status`, `content_type` and `body` sent with `encoding`.
pub fn response(status: u16, content_type: &str, body: &[u8], encoding: BodyEncoding) -> Response {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        500 => "Internal Server Error",
        _ => "Status",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nDate: Mon, 05 Jan 2026 10:00:00 GMT\r\nServer: Apache\r\n\
         X-Content-Type-Options: nosniff\r\nContent-Type: {content_type}\r\n"
    )
    .into_bytes();
    let wire: std::borrow::Cow<[u8]> = match encoding {
        BodyEncoding::GzipChunked { level, .. } => gzip(body, level).into(),
        _ => body.into(),
    };
    match encoding {
        BodyEncoding::Plain => {
            out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", wire.len()).as_bytes());
            out.extend_from_slice(&wire);
        }
        BodyEncoding::Chunked(chunk) | BodyEncoding::GzipChunked { chunk, .. } => {
            if matches!(encoding, BodyEncoding::GzipChunked { .. }) {
                out.extend_from_slice(b"Content-Encoding: gzip\r\nVary: Accept-Encoding\r\n");
            }
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
            for piece in wire.chunks(chunk.max(1)) {
                out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
                out.extend_from_slice(piece);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n\r\n");
        }
    }
    Response {
        bytes: out,
        body_bytes: body.len() as u64,
        wire_bytes: wire.len() as u64,
    }
}

/// REDCap's JSON error body for a bad token.
pub const FORBIDDEN_JSON: &str = r#"{"error":"You do not have permissions to use the API"}"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urlencode_escapes_brackets_like_requests() {
        assert_eq!(urlencode(&[("fields[0]", "a b")]), "fields%5B0%5D=a+b");
    }

    #[test]
    fn gzip_chunked_response_reports_both_sizes() {
        let body = vec![b'x'; 10_000];
        let r = response(
            200,
            "application/json",
            &body,
            BodyEncoding::GzipChunked {
                level: 6,
                chunk: 100,
            },
        );
        assert_eq!(r.body_bytes, 10_000);
        assert!(r.wire_bytes < 200, "{}", r.wire_bytes);
        assert!(r.bytes.ends_with(b"0\r\n\r\n"));
    }
}
