//! Request shapes that Apache + mod_php and nginx + php-fpm serve as REDCap API calls but that
//! common clients never send, against what the server itself ran. A PHP oracle standing in for
//! REDCap's `api/index.php` logs every run (`monitor_tests::php`); each shape is sent byte for
//! byte and segment for segment by a raw client (`monitor_tests::rawhttp`), alone in its own
//! time window. In every capture mode — the TC probe (`ebpf`), libpcap (`pcap`), the OpenSSL
//! uprobes over HTTPS (`tls`) and `analyze` of a tcpdump capture of the plain-HTTP round
//! (`offline`) — each API call the oracle logged in a shape's window must be reported exactly
//! once with the same token, `content`, `action`, `format` and status, and nothing else may be
//! reported there. The server decides what counts, never this file.
//!
//! The test prints a shape × mode table and fails listing every mismatch.
//! `ADVERSARIAL_MODE=ebpf,pcap,tls,offline` and `ADVERSARIAL_SHAPE=name,prefix*` narrow a run;
//! `ADVERSARIAL_KEEP=1` keeps its directory (oracle log, access logs, call records, capture).
//! Apache and nginx disagree on some shapes (bare LF, obs-fold, spaces in the request line, a
//! `#` in the target, Transfer-Encoding with Content-Length, `OPTIONS *`, HTTP/1.0 keep-alive):
//! the request alone cannot tell which server ran them, only what the server did.
//! Also: libpcap on loopback, whose frames exceed 65,535 bytes, must not cut them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use monitor_tests::capture::Tcpdump;
use monitor_tests::daemon::{LiveDaemon, analyze_full, fingerprints, without_api_listener};
use monitor_tests::netns::NamespacePair;
use monitor_tests::php::{OracleEntry, OracleSite, PhpFpm, SiteToken, nginx_fastcgi_conf};
use monitor_tests::rawhttp::{Outcome, Step, Transport, exchange, send};
use monitor_tests::web::{Apache, Nginx, TestPki};
use serde_json::Value;

const TOKEN_A: &str = "A1B2C3D4E5F60718293A4B5C6D7E8F90";
const TOKEN_B: &str = "0C1D2E3F4A5B6C7D8E9F0A1B2C3D4E5F";
/// Well-formed, but the site refuses it (403), like a revoked token.
const TOKEN_R: &str = "FEDCBA98765432100123456789ABCDEF";

/// Quiet time between two shapes; a shape's window reaches a third of it either side.
const GAP: Duration = Duration::from_millis(90);
const SLACK_S: f64 = 0.03;
/// Between the writes of a split request.
const SPLIT_PAUSE: Duration = Duration::from_millis(15);

fn site_tokens() -> Vec<SiteToken> {
    vec![
        SiteToken {
            label: "A",
            token: TOKEN_A.into(),
            allowed: true,
        },
        SiteToken {
            label: "B",
            token: TOKEN_B.into(),
            allowed: true,
        },
        SiteToken {
            label: "R",
            token: TOKEN_R.into(),
            allowed: false,
        },
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    Ebpf,
    Pcap,
    Offline,
    Tls,
}

impl Mode {
    const ALL: [Mode; 4] = [Mode::Ebpf, Mode::Pcap, Mode::Offline, Mode::Tls];

    fn name(self) -> &'static str {
        match self {
            Mode::Ebpf => "ebpf",
            Mode::Pcap => "pcap",
            Mode::Offline => "offline",
            Mode::Tls => "tls",
        }
    }

    /// `ADVERSARIAL_MODE` (comma-separated), else all.
    fn selected() -> Vec<Mode> {
        let Ok(list) = std::env::var("ADVERSARIAL_MODE") else {
            return Mode::ALL.to_vec();
        };
        let wanted: Vec<&str> = list.split(',').map(str::trim).collect();
        for w in &wanted {
            assert!(
                Mode::ALL.iter().any(|m| m.name() == *w),
                "ADVERSARIAL_MODE: unknown mode {w:?} (ebpf, pcap, tls, offline)"
            );
        }
        Mode::ALL
            .into_iter()
            .filter(|m| wanted.contains(&m.name()))
            .collect()
    }
}

/// `ADVERSARIAL_SHAPE`: comma-separated names, a trailing `*` for a prefix; else every shape.
fn shape_selected(name: &str) -> bool {
    let Ok(list) = std::env::var("ADVERSARIAL_SHAPE") else {
        return true;
    };
    list.split(',')
        .map(str::trim)
        .any(|w| match w.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => name == w,
        })
}

/// One request shape: what the client writes, and how many final responses to wait for.
struct Shape {
    name: &'static str,
    steps: Vec<Step>,
    responses: usize,
}

fn one(name: &'static str, request: String) -> Shape {
    Shape {
        name,
        steps: vec![send(request)],
        responses: 1,
    }
}

/// `request` written in pieces, cut before each of `cuts` (byte offsets).
fn split(name: &'static str, request: String, cuts: &[usize]) -> Shape {
    let bytes = request.into_bytes();
    let mut steps = Vec::new();
    let mut at = 0;
    for &cut in cuts.iter().chain([bytes.len()].iter()) {
        if !steps.is_empty() {
            steps.push(Step::Pause(SPLIT_PAUSE));
        }
        steps.push(Step::Send(bytes[at..cut].to_vec()));
        at = cut;
    }
    Shape {
        name,
        steps,
        responses: 1,
    }
}

fn offset(haystack: &str, needle: &str) -> usize {
    haystack
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in the request"))
}

/// The request shapes. `host` is the Host header's value and `origin` the absolute-form prefix
/// (`http://host` or `https://host`).
fn shapes(host: &str, origin: &str) -> Vec<Shape> {
    let h = host;
    let urlenc = "application/x-www-form-urlencoded";
    let post_with = |method_line: &str, headers: &str, ctype: &str, body: &str| -> String {
        format!(
            "{method_line}\r\nHost: {h}\r\nUser-Agent: adversarial/1\r\nAccept: */*\r\n\
             {headers}Content-Type: {ctype}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let post =
        |target: &str, body: &str| post_with(&format!("POST {target} HTTP/1.1"), "", urlenc, body);
    let form = |token: &str, content: &str| format!("token={token}&content={content}&format=json");
    let body_a = form(TOKEN_A, "record");
    let api = |body: &str| post("/api/", body);
    let get_page =
        format!("GET /form.php HTTP/1.1\r\nHost: {h}\r\nUser-Agent: adversarial/1\r\n\r\n");
    let form_post = post("/form.php", &form(TOKEN_B, "record"));
    let multipart = |boundary: &str, parts: &[(&str, Option<&str>, &str)]| -> String {
        let mut body = String::new();
        for (name, filename, value) in parts {
            let file = filename
                .map(|f| format!("; filename=\"{f}\"\r\nContent-Type: text/plain"))
                .unwrap_or_default();
            let _ = write!(
                body,
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"{file}\r\n\r\n{value}\r\n"
            );
        }
        let _ = write!(body, "--{boundary}--\r\n");
        body
    };
    let mp_parts: [(&str, Option<&str>, &str); 4] = [
        ("content", None, "metadata"),
        ("format", None, "json"),
        ("action", None, "export"),
        ("token", None, TOKEN_A),
    ];
    let mp = |ctype: &str, boundary: &str| {
        post_with(
            "POST /api/ HTTP/1.1",
            "",
            ctype,
            &multipart(boundary, &mp_parts),
        )
    };
    let chunked = |chunks: &[&str]| {
        let mut body = String::new();
        for c in chunks {
            let _ = write!(body, "{:x}\r\n{c}\r\n", c.len());
        }
        body.push_str("0\r\n\r\n");
        format!(
            "POST /api/ HTTP/1.1\r\nHost: {h}\r\nContent-Type: {urlenc}\r\n\
             Transfer-Encoding: chunked\r\n\r\n{body}"
        )
    };

    let mut v = vec![
        // Controls: what curl and PyCap send.
        one("control_api_dir", api(&body_a)),
        one("control_api_index_php", post("/api/index.php", &body_a)),
        one("control_refused_token", api(&form(TOKEN_R, "record"))),
        one(
            "control_get_api",
            format!("GET /api/?token={TOKEN_A}&content=record HTTP/1.1\r\nHost: {h}\r\n\r\n"),
        ),
        one(
            "control_put_api",
            post_with("PUT /api/ HTTP/1.1", "", urlenc, &body_a),
        ),
        one("control_non_api_post", form_post.clone()),
        // The target.
        one("path_pct_dir", post("/ap%69/", &body_a)),
        one("path_pct_file", post("/api/%69ndex.php", &body_a)),
        one("path_pct_dot", post("/api/index%2ephp", &body_a)),
        one("path_pct_slash", post("/api%2Findex.php", &body_a)),
        one("path_dot_parent", post("/x/../api/", &body_a)),
        one("path_dot_current", post("/./api/", &body_a)),
        one("path_dot_pct", post("/x/%2e%2e/api/", &body_a)),
        one("path_double_slash", post("//api/", &body_a)),
        one("path_inner_double_slash", post("/api//index.php", &body_a)),
        one("path_trailing_double_slash", post("/api//", &body_a)),
        one(
            "path_long_dots",
            post(&format!("/{}api/", "a/../".repeat(600)), &body_a),
        ),
        one(
            "path_long_query",
            post(&format!("/api/?pad={}", "x".repeat(3000)), &body_a),
        ),
        one("path_query", post("/api/?x=1", &body_a)),
        one("path_info", post("/api/index.php/x", &body_a)),
        one("path_info_slash", post("/api/index.php/", &body_a)),
        one(
            "path_absolute_form",
            post(&format!("{origin}/api/"), &body_a),
        ),
        one("path_upper_case", post("/API/", &body_a)),
        one("path_no_trailing_slash", post("/api", &body_a)),
        one("path_semicolon", post("/api/;x=1", &body_a)),
        // The request line and head.
        one(
            "line_lowercase_post",
            post_with("post /api/ HTTP/1.1", "", urlenc, &body_a),
        ),
        one(
            "line_tabs",
            post_with("POST\t/api/\tHTTP/1.1", "", urlenc, &body_a),
        ),
        one(
            "line_double_space",
            post_with("POST  /api/ HTTP/1.1", "", urlenc, &body_a),
        ),
        one("line_leading_crlf", format!("\r\n\r\n{}", api(&body_a))),
        Shape {
            name: "line_leading_crlf_own_segment",
            steps: vec![send("\r\n"), Step::Pause(SPLIT_PAUSE), send(api(&body_a))],
            responses: 1,
        },
        one(
            "http10_no_keepalive",
            post_with("POST /api/ HTTP/1.0", "", urlenc, &body_a),
        ),
        one(
            "head_header_case",
            format!(
                "POST /api/ HTTP/1.1\r\nHOST: {h}\r\nCONTENT-TYPE: APPLICATION/X-WWW-FORM-URLENCODED\r\n\
                 content-length: {}\r\n\r\n{body_a}",
                body_a.len()
            ),
        ),
        one(
            "head_charset",
            post_with(
                "POST /api/ HTTP/1.1",
                "",
                &format!("{urlenc}; charset=UTF-8"),
                &body_a,
            ),
        ),
        one(
            "head_big_cookie",
            post_with(
                "POST /api/ HTTP/1.1",
                &format!("Cookie: c={}\r\n", "z".repeat(6000)),
                urlenc,
                &body_a,
            ),
        ),
        one(
            "head_connection_close",
            post_with(
                "POST /api/ HTTP/1.1",
                "Connection: close\r\n",
                urlenc,
                &body_a,
            ),
        ),
    ];
    // Segment boundaries at awkward points.
    let req = api(&body_a);
    v.push(split("split_in_method", req.clone(), &[2]));
    v.push(split("split_in_path", req.clone(), &[7]));
    v.push(split(
        "split_in_header_name",
        req.clone(),
        &[offset(&req, "Content-Le") + 10],
    ));
    let head_end = offset(&req, "\r\n\r\n");
    v.push(split(
        "split_between_cr_lf",
        req.clone(),
        &[head_end + 1, head_end + 3],
    ));
    v.push(split(
        "split_body_own_segment",
        req.clone(),
        &[head_end + 4],
    ));
    v.push(split(
        "split_in_token",
        req.clone(),
        &[offset(&req, TOKEN_A) + 9],
    ));
    v.push(split(
        "split_tiny_segments",
        req.clone(),
        &(1..24).collect::<Vec<_>>(),
    ));
    // Several requests on one connection.
    v.push(Shape {
        name: "pipelined_after_get_same_segment",
        steps: vec![send(format!("{get_page}{}", api(&body_a)))],
        responses: 2,
    });
    v.push(Shape {
        name: "pipelined_after_get_next_segment",
        steps: vec![
            send(&get_page),
            Step::Pause(SPLIT_PAUSE),
            send(api(&body_a)),
        ],
        responses: 2,
    });
    v.push(Shape {
        name: "keepalive_after_get",
        steps: vec![send(&get_page), Step::AwaitResponses(1), send(api(&body_a))],
        responses: 1,
    });
    v.push(Shape {
        name: "pipelined_after_post_same_segment",
        steps: vec![send(format!("{form_post}{}", api(&body_a)))],
        responses: 2,
    });
    v.push(Shape {
        name: "pipelined_after_post_next_segment",
        steps: vec![
            send(&form_post),
            Step::Pause(SPLIT_PAUSE),
            send(api(&body_a)),
        ],
        responses: 2,
    });
    v.push(Shape {
        name: "keepalive_after_post",
        steps: vec![
            send(&form_post),
            Step::AwaitResponses(1),
            send(api(&body_a)),
        ],
        responses: 1,
    });
    v.push(Shape {
        name: "pipelined_two_api_calls",
        steps: vec![send(format!(
            "{}{}",
            api(&body_a),
            api(&form(TOKEN_B, "metadata"))
        ))],
        responses: 2,
    });
    // Bodies.
    v.push(one(
        "body_chunked",
        chunked(&[
            &format!("token={}", &TOKEN_A[..10]),
            &format!("{}&content=record&format=json", &TOKEN_A[10..]),
        ]),
    ));
    let ch = chunked(&[&body_a]);
    v.push(split(
        "body_chunked_split_size_line",
        ch.clone(),
        &[offset(&ch, "\r\n\r\n") + 5],
    ));
    let expect_head = |body: &str| {
        format!(
            "POST /api/ HTTP/1.1\r\nHost: {h}\r\nContent-Type: {urlenc}\r\nContent-Length: {}\r\n\
             Expect: 100-continue\r\n\r\n",
            body.len()
        )
    };
    v.push(Shape {
        name: "body_expect_100_continue",
        steps: vec![
            send(expect_head(&body_a)),
            Step::AwaitContinue,
            send(&body_a),
        ],
        responses: 1,
    });
    v.push(one(
        "body_expect_without_waiting",
        format!("{}{body_a}", expect_head(&body_a)),
    ));
    v.push(one(
        "body_urlencoded_plus_pct",
        api(&format!(
            "%74oken={}&content=rec%6Frd&action=ex+port%21&format=js%6En",
            TOKEN_A
                .bytes()
                .map(|b| format!("%{b:02X}"))
                .collect::<String>()
        )),
    ));
    v.push(one(
        "body_token_lowercase",
        api(&form(&TOKEN_A.to_ascii_lowercase(), "record")),
    ));
    v.push(one(
        "body_duplicate_token",
        api(&format!("token={TOKEN_A}&content=record&token={TOKEN_B}")),
    ));
    v.push(one(
        "body_token_array",
        api(&format!("token[]={TOKEN_A}&content=record")),
    ));
    v.push(one(
        "body_leading_ampersands",
        api(&format!("&&token={TOKEN_A}&&content=record&")),
    ));
    v.push(one(
        "body_semicolon_separator",
        api(&format!("content=record;token={TOKEN_A}")),
    ));
    v.push(one(
        "body_token_in_query_only",
        post(
            &format!("/api/?token={TOKEN_A}"),
            "content=record&format=json",
        ),
    ));
    v.push(one(
        "body_json",
        post_with(
            "POST /api/ HTTP/1.1",
            "",
            "application/json",
            &format!("{{\"token\":\"{TOKEN_A}\",\"content\":\"record\"}}"),
        ),
    ));
    v.push(one(
        "body_large_token_last",
        api(&format!(
            "content=record&action=import&format=json&data={}&token={TOKEN_A}",
            "d".repeat(200_000)
        )),
    ));
    v.push(one(
        "multipart_token_last",
        mp(
            "multipart/form-data; boundary=------------------------d74496d66958873e",
            "------------------------d74496d66958873e",
        ),
    ));
    v.push(one(
        "multipart_quoted_boundary",
        mp("multipart/form-data; boundary=\"b:o=u n?d\"", "b:o=u n?d"),
    ));
    v.push(one(
        "multipart_odd_case",
        mp("Multipart/Form-Data; BOUNDARY=XyZzY", "XyZzY"),
    ));
    v.push(one(
        "multipart_boundary_not_first",
        mp("multipart/form-data; charset=utf-8; boundary=bnd1", "bnd1"),
    ));
    let pre = format!("This is the preamble.\r\n{}", multipart("pre1", &mp_parts));
    v.push(one(
        "multipart_preamble",
        post_with(
            "POST /api/ HTTP/1.1",
            "",
            "multipart/form-data; boundary=pre1",
            &pre,
        ),
    ));
    v.push(one(
        "multipart_duplicate_token",
        post_with(
            "POST /api/ HTTP/1.1",
            "",
            "multipart/form-data; boundary=dup",
            &multipart(
                "dup",
                &[
                    ("token", None, TOKEN_A),
                    ("content", None, "record"),
                    ("token", None, TOKEN_B),
                ],
            ),
        ),
    ));
    v.push(one(
        "multipart_token_with_filename",
        post_with(
            "POST /api/ HTTP/1.1",
            "",
            "multipart/form-data; boundary=fn",
            &multipart(
                "fn",
                &[
                    ("content", None, "record"),
                    ("token", Some("token.txt"), TOKEN_A),
                ],
            ),
        ),
    ));
    let lf = multipart("lf", &mp_parts).replace("\r\n", "\n");
    v.push(one(
        "multipart_bare_lf",
        post_with(
            "POST /api/ HTTP/1.1",
            "",
            "multipart/form-data; boundary=lf",
            &lf,
        ),
    ));
    let hc = multipart("hc", &mp_parts).replace(
        "Content-Disposition: form-data; name=",
        "content-disposition: FORM-DATA; NAME=",
    );
    v.push(one(
        "multipart_part_header_case",
        post_with(
            "POST /api/ HTTP/1.1",
            "",
            "multipart/form-data; boundary=hc",
            &hc,
        ),
    ));
    let m = mp("multipart/form-data; boundary=split", "split");
    v.push(split(
        "multipart_split_in_boundary",
        m.clone(),
        &[offset(&m, "--split") + 4, m.rfind("--split").unwrap() + 5],
    ));
    // More targets the server may or may not map to the script.
    v.push(one("path_pct_double_encoded", post("/ap%2569/", &body_a)));
    v.push(one("path_pct_upper_case", post("/%41PI/", &body_a)));
    v.push(one("path_backslash", post("/api\\index.php", &body_a)));
    v.push(one("path_above_root", post("/../api/", &body_a)));
    v.push(one("path_fragment", post("/api/#frag", &body_a)));
    v.push(one(
        "path_index_php_query",
        post("/api/index.php?content=x", &body_a),
    ));
    v.push(one(
        "path_absolute_form_other_host",
        post("http://redcap.invalid/api/", &body_a),
    ));
    v.push(one(
        "path_absolute_form_upper_scheme",
        post(&format!("{}/api/", origin.to_ascii_uppercase()), &body_a),
    ));
    // More heads.
    v.push(one(
        "head_bare_lf",
        api(&body_a)
            .replacen("\r\n", "\n", 6)
            .replace("\n\r\n", "\n\n"),
    ));
    v.push(one(
        "head_obs_fold",
        post_with(
            "POST /api/ HTTP/1.1",
            "X-Folded: a\r\n  b\r\n",
            urlenc,
            &body_a,
        ),
    ));
    v.push(one(
        "line_trailing_space",
        post_with("POST /api/ HTTP/1.1 ", "", urlenc, &body_a),
    ));
    v.push(one(
        "head_content_length_leading_zeros",
        format!(
            "POST /api/ HTTP/1.1\r\nHost: {h}\r\nContent-Type: {urlenc}\r\nContent-Length: 000{}\r\n\r\n{body_a}",
            body_a.len()
        ),
    ));
    v.push(one(
        "head_no_content_type",
        format!(
            "POST /api/ HTTP/1.1\r\nHost: {h}\r\nContent-Length: {}\r\n\r\n{body_a}",
            body_a.len()
        ),
    ));
    v.push(one(
        "body_chunked_and_content_length",
        chunked(&[&body_a]).replace(
            "Transfer-Encoding: chunked\r\n",
            "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        ),
    ));
    v.push(one(
        "body_chunked_odd_case_te",
        chunked(&[&body_a]).replace("Transfer-Encoding: chunked", "transfer-encoding: Chunked"),
    ));
    // The body ends where Content-Length says: PHP reads token A; what follows is a next
    // "request" the server refuses.
    let short = format!("token={TOKEN_A}&content=record");
    v.push(Shape {
        name: "body_bytes_beyond_content_length",
        steps: vec![send(format!(
            "POST /api/ HTTP/1.1\r\nHost: {h}\r\nContent-Type: {urlenc}\r\nContent-Length: {}\r\n\r\n{short}&token={TOKEN_B}\r\n\r\n",
            short.len()
        ))],
        responses: 2,
    });
    let cut = format!("content=record&token={TOKEN_A}");
    v.push(Shape {
        name: "body_content_length_cuts_token",
        steps: vec![send(format!(
            "POST /api/ HTTP/1.1\r\nHost: {h}\r\nContent-Type: {urlenc}\r\nContent-Length: {}\r\n\r\n{cut}\r\n\r\n",
            cut.len() - 16
        ))],
        responses: 2,
    });
    v.push(one(
        "multipart_token_part_content_type",
        post_with(
            "POST /api/ HTTP/1.1",
            "",
            "multipart/form-data; boundary=ct",
            &multipart("ct", &mp_parts).replace(
                "name=\"token\"\r\n",
                "name=\"token\"\r\nContent-Type: text/plain; charset=utf-8\r\n",
            ),
        ),
    ));
    v.push(one(
        "multipart_no_closing_boundary",
        post_with(
            "POST /api/ HTTP/1.1",
            "",
            "multipart/form-data; boundary=nc",
            multipart("nc", &mp_parts).trim_end_matches("--nc--\r\n"),
        ),
    ));
    // More connections carrying several requests.
    v.push(Shape {
        name: "pipelined_after_get_with_body",
        steps: vec![send(format!(
            "GET /form.php HTTP/1.1\r\nHost: {h}\r\nContent-Length: 5\r\n\r\nhello{}",
            api(&body_a)
        ))],
        responses: 2,
    });
    v.push(Shape {
        name: "pipelined_after_options_star",
        steps: vec![send(format!(
            "OPTIONS * HTTP/1.1\r\nHost: {h}\r\n\r\n{}",
            api(&body_a)
        ))],
        responses: 2,
    });
    let second = api(&form(TOKEN_B, "metadata"));
    v.push(Shape {
        name: "pipelined_second_api_split",
        steps: vec![
            send(format!("{}{}", api(&body_a), &second[..3])),
            Step::Pause(SPLIT_PAUSE),
            send(&second[3..]),
        ],
        responses: 2,
    });
    v.push(Shape {
        name: "keepalive_http10",
        steps: vec![
            send(post_with(
                "POST /api/ HTTP/1.0",
                "Connection: keep-alive\r\n",
                urlenc,
                &body_a,
            )),
            Step::AwaitResponses(1),
            send(post_with(
                "POST /api/ HTTP/1.0",
                "Connection: keep-alive\r\n",
                urlenc,
                &form(TOKEN_B, "metadata"),
            )),
        ],
        responses: 1,
    });
    v.push(Shape {
        name: "keepalive_after_404_post",
        steps: vec![
            send(post("/nothing-here/", &body_a)),
            Step::AwaitResponses(1),
            send(api(&body_a)),
        ],
        responses: 1,
    });
    // Paths again: what normalisation resolves and what it must not invent.
    v.push(one("path_dot_inside", post("/api/./index.php", &body_a)));
    v.push(one("path_pct_dot_segment", post("/%2e/api/", &body_a)));
    v.push(one(
        "path_up_from_script",
        post("/api/index.php/../index.php", &body_a),
    ));
    v.push(one("path_upper_case_file", post("/api/INDEX.PHP", &body_a)));
    // Heads the servers should refuse.
    v.push(one(
        "head_no_host",
        format!(
            "POST /api/ HTTP/1.1\r\nContent-Type: {urlenc}\r\nContent-Length: {}\r\n\r\n{body_a}",
            body_a.len()
        ),
    ));
    v.push(one(
        "head_duplicate_content_length",
        post_with(
            "POST /api/ HTTP/1.1",
            &format!("Content-Length: {}\r\n", body_a.len()),
            urlenc,
            &body_a,
        ),
    ));
    // Bodies PHP reads differently from a naive parser.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, body_a.as_bytes()).unwrap();
    let gz = gz.finish().unwrap();
    let mut gzip_request = format!(
        "POST /api/ HTTP/1.1\r\nHost: {h}\r\nContent-Type: {urlenc}\r\nContent-Encoding: gzip\r\n\
         Content-Length: {}\r\n\r\n",
        gz.len()
    )
    .into_bytes();
    gzip_request.extend_from_slice(&gz);
    v.push(Shape {
        name: "body_content_encoding_gzip",
        steps: vec![Step::Send(gzip_request)],
        responses: 1,
    });
    v.push(one(
        "body_token_name_case",
        api(&format!("Token={TOKEN_A}&content=record&format=json")),
    ));
    // PHP's default max_input_vars is 1000 (Debian's php.ini too): later fields are dropped
    // with a warning. REDCap's installation check recommends 100,000, so a site may differ.
    let many: String = (0..1000).map(|i| format!("f{i}=x&")).collect();
    v.push(one(
        "body_token_past_php_max_input_vars",
        api(&format!("{many}content=record&token={TOKEN_A}")),
    ));
    let quoted = |q: &str| {
        multipart("nq", &mp_parts).replace("name=\"token\"", &format!("name={q}token{q}"))
    };
    for (name, q) in [
        ("multipart_unquoted_name", ""),
        ("multipart_single_quoted_name", "'"),
    ] {
        v.push(one(
            name,
            post_with(
                "POST /api/ HTTP/1.1",
                "",
                "multipart/form-data; boundary=nq",
                &quoted(q),
            ),
        ));
    }
    v.push(one(
        "multipart_token_empty_filename",
        post_with(
            "POST /api/ HTTP/1.1",
            "",
            "multipart/form-data; boundary=ef",
            &multipart("ef", &mp_parts).replace("name=\"token\"", "name=\"token\"; filename=\"\""),
        ),
    ));
    // The kernel's copy decision on connections whose first request is not the API call.
    v.push(Shape {
        name: "keepalive_after_large_post",
        steps: vec![
            send(post(
                "/form.php",
                &format!("data={}&content=x", "p".repeat(300_000)),
            )),
            Step::AwaitResponses(1),
            send(api(&body_a)),
        ],
        responses: 1,
    });
    v.push(Shape {
        name: "pipelined_after_five_gets",
        steps: vec![send(format!("{}{}", get_page.repeat(5), api(&body_a)))],
        responses: 6,
    });
    v.retain(|s| shape_selected(s.name));
    v
}

/// A shape as sent: its time window and what the server answered.
struct Sent {
    name: &'static str,
    begin: f64,
    end: f64,
    outcome: Result<Outcome, String>,
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn send_round(transport: &Transport, shapes: &[Shape]) -> Vec<Sent> {
    let mut sent = Vec::new();
    for shape in shapes {
        std::thread::sleep(GAP);
        let begin = now();
        let outcome = exchange(
            transport,
            &shape.steps,
            shape.responses,
            Duration::from_secs(3),
        )
        .map_err(|e| format!("{e:#}"));
        let end = now();
        sent.push(Sent {
            name: shape.name,
            begin,
            end,
            outcome,
        });
    }
    std::thread::sleep(GAP);
    sent
}

/// The fields compared between the oracle and a call record.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Call {
    token: String,
    content: Option<String>,
    action: Option<String>,
    format: Option<String>,
    status: Option<u16>,
}

impl Call {
    fn from_oracle(e: &OracleEntry) -> Call {
        // The daemon cannot know the site's tokens: an unknown one has a fingerprint. Absent,
        // empty and malformed (`token[]=`, a cut value) are all "no usable token" (REDCap
        // refuses each alike; which `token_problem` the daemon names is not compared).
        let token = match e.token.split(':').next().unwrap_or_default() {
            "malformed" => "none".to_string(),
            label => label.to_string(),
        };
        Call {
            token,
            content: e.content.clone(),
            action: e.action.clone(),
            format: e.format.clone(),
            status: Some(e.status),
        }
    }

    fn from_record(r: &Value, labels: &BTreeMap<String, &'static str>) -> Call {
        let token = match r["token_fp"].as_str() {
            Some(fp) => labels.get(fp).map_or("unknown", |l| l).to_string(),
            None => "none".to_string(),
        };
        let text = |k: &str| r[k].as_str().map(str::to_string);
        Call {
            token,
            content: text("content"),
            action: text("action"),
            format: text("format"),
            status: r["status"].as_u64().map(|s| s as u16),
        }
    }

    fn differences(&self, other: &Call) -> Vec<String> {
        let mut d = Vec::new();
        let mut check = |name: &str, a: String, b: String| {
            if a != b {
                d.push(format!("{name}: server {a} / daemon {b}"));
            }
        };
        check("token", self.token.clone(), other.token.clone());
        check(
            "content",
            format!("{:?}", self.content),
            format!("{:?}", other.content),
        );
        check(
            "action",
            format!("{:?}", self.action),
            format!("{:?}", other.action),
        );
        check(
            "format",
            format!("{:?}", self.format),
            format!("{:?}", other.format),
        );
        check(
            "status",
            format!("{:?}", self.status),
            format!("{:?}", other.status),
        );
        d
    }
}

/// One table cell: how the daemon's records of one shape compare with the oracle's.
#[derive(Default)]
struct Cell {
    matched: usize,
    missed: Vec<Call>,
    extra: Vec<(Call, Value)>,
    differs: Vec<(Call, Call)>,
}

impl Cell {
    fn ok(&self) -> bool {
        self.missed.is_empty() && self.extra.is_empty() && self.differs.is_empty()
    }

    fn label(&self) -> String {
        if self.ok() {
            return if self.matched == 0 {
                "-".into()
            } else {
                format!("ok {}", self.matched)
            };
        }
        let mut parts = Vec::new();
        if !self.missed.is_empty() {
            parts.push(format!("MISSED {}", self.missed.len()));
        }
        if !self.extra.is_empty() {
            parts.push(format!("EXTRA {}", self.extra.len()));
        }
        if !self.differs.is_empty() {
            let fields: Vec<String> = self
                .differs
                .iter()
                .flat_map(|(a, b)| a.differences(b))
                .map(|d| d.split(':').next().unwrap_or("").to_string())
                .collect();
            parts.push(format!("DIFFERS {}", fields.join("/")));
        }
        parts.join("+")
    }
}

fn compare(expected: &[Call], records: &[(Call, Value)]) -> Cell {
    let mut cell = Cell::default();
    let mut left: Vec<(Call, Value)> = records.to_vec();
    let mut unmatched = Vec::new();
    for call in expected {
        match left.iter().position(|(c, _)| c == call) {
            Some(i) => {
                left.remove(i);
                cell.matched += 1;
            }
            None => unmatched.push(call.clone()),
        }
    }
    for call in unmatched {
        if left.is_empty() {
            cell.missed.push(call);
        } else {
            let (got, _) = left.remove(0);
            cell.differs.push((call, got));
        }
    }
    cell.extra = left;
    cell
}

/// The records whose request started in the window of `sent`.
fn in_window<'a, T>(items: &'a [T], at: impl Fn(&T) -> f64, sent: &Sent) -> Vec<&'a T> {
    items
        .iter()
        .filter(|i| {
            let t = at(i);
            t >= sent.begin - SLACK_S && t <= sent.end + SLACK_S
        })
        .collect()
}

fn outcome_text(sent: &Sent) -> String {
    match &sent.outcome {
        Ok(o) => {
            let codes: Vec<String> = o.statuses.iter().map(u16::to_string).collect();
            if codes.is_empty() {
                "no answer".into()
            } else {
                codes.join(",")
            }
        }
        Err(e) => format!("client error: {e}"),
    }
}

enum Server {
    Apache(Apache),
    // php-fpm is held only to be stopped (after nginx) when the server is dropped.
    Nginx(Nginx, #[allow(dead_code)] PhpFpm),
}

impl Server {
    fn process_name(&self) -> &str {
        match self {
            Server::Apache(a) => a.name(),
            Server::Nginx(n, _) => n.name(),
        }
    }
}

/// What the daemon must know of the PHP it watches, as an admin configures it: the test servers
/// run PHP with its default `max_input_vars` (1000), which REDCap sites usually raise.
const REDCAP_CONFIG: &str = "[redcap]\nmax_input_vars = 1000\n";

fn daemon_config(
    mode: Mode,
    dir: &Path,
    pair: &NamespacePair,
    server: &Server,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let calls = dir.join(format!("calls-{}.jsonl", mode.name()));
    let capture = match mode {
        Mode::Ebpf | Mode::Pcap => format!(
            "[capture]\nmode = \"{}\"\ninterfaces = [\"{}\"]\nports = [80]\n",
            mode.name(),
            pair.server_if
        ),
        Mode::Tls => format!(
            "[capture]\nmode = \"tls\"\n[capture.tls]\nprocesses = [\"{}\"]\n\
             rescan_interval = \"1s\"\n",
            server.process_name()
        ),
        Mode::Offline => unreachable!("offline runs `analyze`"),
    };
    let config = dir.join(format!("{}.toml", mode.name()));
    std::fs::write(
        &config,
        format!(
            "{capture}{REDCAP_CONFIG}[output]\ncalls = \"{}\"\nstats = \"{}\"\n\
             stats_interval = \"1s\"\n[store]\npath = \"{}\"\n{}",
            calls.display(),
            dir.join(format!("stats-{}.json", mode.name())).display(),
            dir.join(format!("state-{}.redb", mode.name())).display(),
            without_api_listener()
        ),
    )
    .unwrap();
    (config, calls)
}

fn write_site_key(path: &Path) {
    monitor_tests::write_secret(path, b"adversarial-suite-site-key-32-bytes-long!!");
}

fn jsonl(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSONL {l}: {e}")))
        .collect()
}

/// Sends every shape over plain HTTP (port 80) and HTTPS (443) to `server`, with a daemon per
/// live mode and tcpdump for `offline`, then compares; panics with every mismatch.
fn run_suite(
    label: &str,
    subnet: u8,
    start: impl FnOnce(&NamespacePair, &Path, &TestPki, &OracleSite) -> Server,
) {
    if !monitor_tests::require_root(label) {
        return;
    }
    let modes = Mode::selected();
    let mut dir = tempfile::tempdir().unwrap();
    if std::env::var_os("ADVERSARIAL_KEEP").is_some() {
        // The oracle log, the servers' access logs, the daemons' calls and the capture.
        eprintln!("{label}: keeping {}", dir.path().display());
        dir.disable_cleanup(true);
    }
    let pair = NamespacePair::create(subnet).unwrap();
    let pki = TestPki::create(dir.path(), &pair.server_ip).unwrap();
    let site = OracleSite::create(dir.path(), &site_tokens()).unwrap();
    let server = start(&pair, dir.path(), &pki, &site);
    let key = dir.path().join("site.key");
    write_site_key(&key);
    let fps = fingerprints(&key, &[TOKEN_A, TOKEN_B, TOKEN_R]).unwrap();
    let labels: BTreeMap<String, &'static str> = fps.into_iter().zip(["A", "B", "R"]).collect();

    let ns = Some(pair.server_ns.as_str());
    let mut daemons = Vec::new();
    for &mode in modes.iter().filter(|m| **m != Mode::Offline) {
        let (config, calls) = daemon_config(mode, dir.path(), &pair, &server);
        let daemon = LiveDaemon::start(ns, &config, &key)
            .unwrap_or_else(|e| panic!("{label}: starting the {} daemon: {e:#}", mode.name()));
        daemons.push((mode, daemon, calls));
    }
    let pcap = dir.path().join("offline.pcap");
    let mut tcpdump = modes
        .contains(&Mode::Offline)
        .then(|| Tcpdump::start_in(ns, &pair.server_if, "tcp port 80", &pcap).unwrap());

    // The raw client is plain std sockets: a thread of ours enters the client namespace.
    let server_ip = pair.server_ip.clone();
    let host_shapes = shapes(&server_ip, &format!("http://{server_ip}"));
    let tls_shapes = shapes(&server_ip, &format!("https://{server_ip}"));
    let plain_wanted = modes.iter().any(|m| *m != Mode::Tls);
    let tls_wanted = modes.contains(&Mode::Tls);
    let ca = pki.ca_cert.clone();
    let client_ns = pair.client_ns.clone();
    let (plain_round, tls_round) = std::thread::spawn(move || {
        enter_netns(&client_ns);
        let plain = plain_wanted.then(|| {
            let addr: SocketAddr = format!("{server_ip}:80").parse().unwrap();
            send_round(&Transport::Plain(addr), &host_shapes)
        });
        let tls = tls_wanted.then(|| {
            let addr: SocketAddr = format!("{server_ip}:443").parse().unwrap();
            send_round(&Transport::tls(addr, &ca).unwrap(), &tls_shapes)
        });
        (plain, tls)
    })
    .join()
    .unwrap();

    std::thread::sleep(Duration::from_millis(300));
    if let Some(t) = tcpdump.as_mut() {
        t.stop().unwrap();
    }
    let mut records: BTreeMap<Mode, Vec<Value>> = BTreeMap::new();
    let mut logs = String::new();
    for (mode, mut daemon, calls) in daemons {
        let (status, log) = daemon.stop().unwrap();
        assert!(
            status.success(),
            "{label}: the {} daemon exited {status}:\n{log}",
            mode.name()
        );
        if let Some(line) = log.lines().rev().find(|l| l.contains("final counters")) {
            let _ = writeln!(logs, "{}: {line}", mode.name());
        }
        records.insert(
            mode,
            jsonl(&std::fs::read_to_string(&calls).unwrap_or_default()),
        );
    }
    if tcpdump.is_some() {
        let config = dir.path().join("offline.toml");
        std::fs::write(&config, REDCAP_CONFIG).unwrap();
        let offline = analyze_full(&pcap, &key, Some(&config)).unwrap();
        records.insert(Mode::Offline, jsonl(&offline.calls_text));
    }
    let oracle = site.entries().unwrap();

    // The table: one row per shape, the server's answer and one cell per mode.
    let mut failures = Vec::new();
    let mut table = String::new();
    let _ = write!(table, "{:<36} {:<24}", "shape", "server ran (http | https)");
    for m in &modes {
        let _ = write!(table, " {:<22}", m.name());
    }
    table.push('\n');
    let names: Vec<&'static str> = plain_round
        .as_ref()
        .or(tls_round.as_ref())
        .map(|r| r.iter().map(|s| s.name).collect())
        .unwrap_or_default();
    let mut assigned: BTreeMap<Mode, usize> = BTreeMap::new();
    let mut summary: BTreeMap<Mode, (usize, usize)> = BTreeMap::new();
    for (i, name) in names.iter().enumerate() {
        let server_ran = |round: &Option<Vec<Sent>>| -> String {
            let Some(sent) = round.as_ref().map(|r| &r[i]) else {
                return "·".into();
            };
            let ran = in_window(&oracle, |e| e.t, sent);
            let api = ran.iter().filter(|e| e.is_api_call()).count();
            format!("api {api} [{}]", outcome_text(sent))
        };
        let _ = write!(
            table,
            "{:<36} {:<24}",
            name,
            format!("{} | {}", server_ran(&plain_round), server_ran(&tls_round))
        );
        for &mode in &modes {
            let round = if mode == Mode::Tls {
                &tls_round
            } else {
                &plain_round
            };
            let sent = &round.as_ref().unwrap()[i];
            let expected: Vec<Call> = in_window(&oracle, |e| e.t, sent)
                .into_iter()
                .filter(|e| e.is_api_call())
                .map(Call::from_oracle)
                .collect();
            let got: Vec<(Call, Value)> = in_window(
                &records[&mode],
                |r| r["ts_start"].as_f64().unwrap_or(0.0),
                sent,
            )
            .into_iter()
            .map(|r| (Call::from_record(r, &labels), r.clone()))
            .collect();
            *assigned.entry(mode).or_default() += got.len();
            let cell = compare(&expected, &got);
            let s = summary.entry(mode).or_default();
            s.1 += 1;
            if cell.ok() {
                s.0 += 1;
            }
            let _ = write!(table, " {:<22}", cell.label());
            let m = mode.name();
            for c in &cell.missed {
                failures.push(format!(
                    "{m:<7} {name}: MISSED {c:?} (server answered {})",
                    outcome_text(sent)
                ));
            }
            for (c, r) in &cell.extra {
                failures.push(format!(
                    "{m:<7} {name}: EXTRA {c:?} path={} (the server ran no such API call; answered {})",
                    r["path"], outcome_text(sent)
                ));
            }
            for (want, got) in &cell.differs {
                failures.push(format!(
                    "{m:<7} {name}: DIFFERS {}",
                    want.differences(got).join("; ")
                ));
            }
        }
        table.push('\n');
    }
    for &mode in &modes {
        let all = records.get(&mode).map_or(0, Vec::len);
        let outside = all - assigned.get(&mode).copied().unwrap_or(0);
        if outside > 0 {
            failures.push(format!(
                "{:<7} {outside} call record(s) outside every shape's window",
                mode.name()
            ));
        }
    }
    let _ = writeln!(table, "{label}: shapes passing per mode:");
    for (mode, (ok, n)) in &summary {
        let _ = writeln!(table, "  {:<8} {ok}/{n}", mode.name());
    }
    eprintln!(
        "\n{label}: shape x mode (ok N: N calls matched; -: the server ran no API call and none was reported)\n{table}{logs}"
    );
    assert!(
        oracle.iter().any(|e| e.is_api_call()),
        "{label}: the oracle logged no API call at all: the server setup is broken"
    );
    drop(server);
    assert!(
        failures.is_empty(),
        "{label}: {} mismatch(es) between what the server ran and what the daemon reported:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Moves the calling thread into network namespace `ns` (`/run/netns/NS`).
fn enter_netns(ns: &str) {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
    // SAFETY: setns on a namespace file descriptor we own affects only this thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
}

#[test]
fn shapes_apache_mod_php_runs_as_api_calls_are_reported_once_in_every_mode() {
    run_suite("adversarial/apache", 81, |pair, dir, pki, site| {
        let conf = OracleSite::apache_conf(dir);
        Server::Apache(
            Apache::start_serving(&pair.server_ns, dir, pki, &site.docroot, &conf).unwrap(),
        )
    });
}

#[test]
fn shapes_nginx_php_fpm_runs_as_api_calls_are_reported_once_in_every_mode() {
    run_suite("adversarial/nginx", 82, |pair, dir, pki, site| {
        let fpm = PhpFpm::start(&pair.server_ns, dir).unwrap();
        let conf = nginx_fastcgi_conf(&site.docroot, &fpm.socket, dir);
        let nginx = Nginx::start_serving(&pair.server_ns, dir, pki, 1, "", &conf).unwrap();
        Server::Nginx(nginx, fpm)
    });
}

/// libpcap on loopback, whose MTU (65,536) lets one frame carry more than 65,535 bytes: a large
/// request and response through Apache must be read whole (no cut frame, no reassembly gap),
/// and the call reported once, complete, with the size PHP received.
#[test]
fn pcap_on_loopback_keeps_frames_longer_than_65535_bytes_whole() {
    const LABEL: &str = "adversarial/pcap-loopback";
    if !monitor_tests::require_root(LABEL) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pair = NamespacePair::create(83).unwrap();
    let pki = TestPki::create(dir.path(), &pair.server_ip).unwrap();
    let site = OracleSite::create(dir.path(), &site_tokens()).unwrap();
    let conf = OracleSite::apache_conf(dir.path());
    let _apache =
        Apache::start_serving(&pair.server_ns, dir.path(), &pki, &site.docroot, &conf).unwrap();
    let key = dir.path().join("site.key");
    write_site_key(&key);
    let ns = Some(pair.server_ns.as_str());
    let calls = dir.path().join("calls.jsonl");
    let stats = dir.path().join("stats.json");
    let config = dir.path().join("lo.toml");
    std::fs::write(
        &config,
        format!(
            "[capture]\nmode = \"pcap\"\ninterfaces = [\"lo\"]\nports = [80]\n\
             [output]\ncalls = \"{}\"\nstats = \"{}\"\nstats_interval = \"1s\"\n\
             [store]\npath = \"{}\"\n{}",
            calls.display(),
            stats.display(),
            dir.path().join("state.redb").display(),
            without_api_listener()
        ),
    )
    .unwrap();
    let mut daemon = LiveDaemon::start(ns, &config, &key).unwrap();
    // tcpdump (snaplen 262,144) shows the frames really were longer than 65,535 bytes.
    let pcap = dir.path().join("lo.pcap");
    let mut tcpdump = Tcpdump::start_in(ns, "lo", "tcp port 80", &pcap).unwrap();

    let data = "d".repeat(1_000_000);
    let body = dir.path().join("body.txt");
    std::fs::write(
        &body,
        format!("content=record&format=json&rows=30000&data={data}&token={TOKEN_A}"),
    )
    .unwrap();
    let out = dir.path().join("response.json");
    #[rustfmt::skip]
    monitor_tests::clients::curl_in(ns, &[
        "-sS", "-o", &out.to_string_lossy(), "http://127.0.0.1/api/",
        "-H", "Content-Type: application/x-www-form-urlencoded",
        "--data-binary", &format!("@{}", body.display()),
    ])
    .unwrap();
    let response_len = std::fs::metadata(&out).unwrap().len();

    tcpdump.stop().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let (status, log) = daemon.stop().unwrap();
    assert!(
        status.success(),
        "{LABEL}: the daemon exited {status}:\n{log}"
    );
    let longest = longest_frame(&pcap);
    eprintln!("{LABEL}: longest frame on lo {longest} bytes, response {response_len} bytes");
    assert!(
        longest > 65_535,
        "{LABEL}: no frame on lo was longer than 65,535 bytes ({longest}): the test proves nothing"
    );

    let oracle: Vec<OracleEntry> = site.entries().unwrap();
    assert_eq!(
        oracle.iter().filter(|e| e.is_api_call()).count(),
        1,
        "{oracle:?}"
    );
    let records = jsonl(&std::fs::read_to_string(&calls).unwrap_or_default());
    let stats: Value = serde_json::from_str(&std::fs::read_to_string(&stats).unwrap())
        .unwrap_or_else(|e| panic!("{LABEL}: stats file: {e}\n{log}"));
    let problems = &stats["problems"];
    let decode = stats["pipeline"]["decode"].to_string();
    eprintln!("{LABEL}: problems {problems}, decode {decode}");
    for problem in [
        "decode.truncated_frames",
        "reassembly.gaps",
        "pcap.truncated",
    ] {
        assert!(
            problems[problem].as_u64().unwrap_or(0) == 0,
            "{LABEL}: {problem} = {}: frames longer than 65,535 bytes were cut\n{problems}",
            problems[problem]
        );
    }
    assert_eq!(
        records.len(),
        1,
        "{LABEL}: calls reported: {records:?}\n{log}"
    );
    let call = &records[0];
    assert_eq!(call["complete"], true, "{LABEL}: {call}");
    assert_eq!(call["data_bytes"], 1_000_000, "{LABEL}: {call}");
    assert_eq!(call["response_bytes"], response_len, "{LABEL}: {call}");
}

/// The largest original frame length in a pcap file.
fn longest_frame(pcap: &Path) -> u32 {
    let file = std::fs::File::open(pcap).unwrap();
    let mut reader = pcap_file::pcap::PcapReader::new(file).unwrap();
    let mut longest = 0;
    while let Some(packet) = reader.next_packet() {
        longest = longest.max(packet.unwrap().orig_len);
    }
    longest
}
