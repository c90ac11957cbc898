//! Tests of the redcap stage, driven by request bodies as clients send them.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};

use super::*;
use crate::shared::model::ConnectionId;
use crate::stages::http::{ContentCoding, ResponseSummary};

const TOKEN: &str = "0123456789ABCDEF0123456789ABCDEF";
const URLENCODED: &str = "application/x-www-form-urlencoded";
const BOUNDARY: &str = "d7a1c6e0f2b34f0e9a5b";

fn key() -> SiteKey {
    SiteKey::from_bytes([42; 32])
}

fn fingerprint(token: &str) -> String {
    key()
        .fingerprint(&RawToken::parse(token.as_bytes()).ok().unwrap())
        .to_string()
}

/// Everything the fields say, in one comparable line (the token as its fingerprint).
fn describe(f: RequestFields) -> String {
    let mut s = String::new();
    let token = match &f.token {
        None => "none".to_string(),
        Some(Err(p)) => format!("{p:?}"),
        Some(Ok(raw)) => key().fingerprint(raw).to_string(),
    };
    write!(
        s,
        "token={token} content={:?} action={:?} format={:?} type={:?} returnFormat={:?} \
         data={:?} records={} fields={} report={:?} filter={} begin={:?} end={:?} \
         metaOnly={:?} files={:?} all={:?} problem={:?}",
        f.params.content,
        f.params.action,
        f.params.format,
        f.params.type_,
        f.params.return_format,
        f.params.data_bytes,
        f.params.records,
        f.params.fields,
        f.params.report_id,
        f.params.filter_logic,
        f.params.date_range_begin,
        f.params.date_range_end,
        f.params.return_metadata_only,
        f.params.export_files,
        f.params.all_records,
        f.problem
    )
    .unwrap();
    s
}

fn read_chunks(content_type: Option<&str>, chunks: &[&[u8]]) -> RequestFields {
    let mut body = FormBody::for_content_type(content_type);
    for chunk in chunks {
        body.feed(chunk);
    }
    body.finish()
}

fn urlencoded(body: &str) -> RequestFields {
    read_chunks(Some(URLENCODED), &[body.as_bytes()])
}

fn multipart_type() -> String {
    format!("multipart/form-data; boundary={BOUNDARY}")
}

/// A multipart body as `requests` / libcurl build one. `file` parts are `(name, filename, bytes)`.
fn multipart_body(fields: &[(&str, &str)], files: &[(&str, &str, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    for (name, filename, bytes) in files {
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"; \
                 filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

fn multipart(body: &[u8]) -> RequestFields {
    read_chunks(Some(&multipart_type()), &[body])
}

fn token_of(f: &RequestFields) -> Option<Result<String, TokenProblem>> {
    f.token.as_ref().map(|t| {
        t.as_ref()
            .map(|raw| key().fingerprint(raw).to_string())
            .map_err(|p| *p)
    })
}

const PYCAP_BODY: &str = "token=0123456789ABCDEF0123456789ABCDEF&content=record&format=json&type=flat\
&fields%5B0%5D=record_id&fields%5B1%5D=age&records%5B0%5D=1&records%5B1%5D=2&rawOrLabel=raw";

#[test]
fn pycap_record_export_is_read() {
    let f = urlencoded(PYCAP_BODY);
    assert_eq!(token_of(&f), Some(Ok(fingerprint(TOKEN))));
    assert_eq!(f.params.content.as_deref(), Some("record"));
    assert_eq!(f.params.format.as_deref(), Some("json"));
    assert_eq!(f.params.type_.as_deref(), Some("flat"));
    assert_eq!((f.params.records, f.params.fields), (2, 2));
    assert_eq!(f.params.data_bytes, None);
    assert_eq!(f.problem, None);
}

#[test]
fn redcapapi_multipart_with_token_last_is_read() {
    let body = multipart_body(
        &[
            ("content", "record"),
            ("format", "csv"),
            ("returnFormat", "csv"),
            ("records[1]", "1"),
            ("records[2]", "2"),
            ("records[3]", "3"),
            ("fields[1]", "record_id"),
            ("token", TOKEN),
        ],
        &[],
    );
    let f = multipart(&body);
    assert_eq!(token_of(&f), Some(Ok(fingerprint(TOKEN))));
    assert_eq!(f.params.content.as_deref(), Some("record"));
    assert_eq!(f.params.return_format.as_deref(), Some("csv"));
    assert_eq!((f.params.records, f.params.fields), (3, 1));
    assert_eq!(f.problem, None);
}

#[test]
fn repeated_token_last_value_wins() {
    let other = "FEDCBA9876543210FEDCBA9876543210";
    let f = urlencoded(&format!("token={other}&content=record&token={TOKEN}"));
    assert_eq!(token_of(&f), Some(Ok(fingerprint(TOKEN))));
    let f = multipart(&multipart_body(&[("token", TOKEN), ("token", other)], &[]));
    assert_eq!(token_of(&f), Some(Ok(fingerprint(other))));
    // A bad token after a good one is what REDCap checks.
    let f = urlencoded(&format!("token={TOKEN}&token=bad-token"));
    assert_eq!(token_of(&f), Some(Err(TokenProblem::Malformed)));
}

#[test]
fn lower_case_token_is_the_same_caller() {
    let f = urlencoded(&format!("content=version&token={}", TOKEN.to_lowercase()));
    assert_eq!(token_of(&f), Some(Ok(fingerprint(TOKEN))));
}

#[test]
fn repeated_scalar_field_last_value_wins() {
    let f = urlencoded("content=record&format=xml&content=metadata&format=json");
    assert_eq!(f.params.content.as_deref(), Some("metadata"));
    assert_eq!(f.params.format.as_deref(), Some("json"));
}

#[test]
fn every_array_encoding_is_counted_as_php_sees_it() {
    let cases = [
        ("records[0]=a&records[1]=b", 2),
        ("records%5B0%5D=a&records%5B1%5D=b&records%5B2%5D=c", 3),
        ("records%5b0%5d=a", 1),
        ("records[]=a&records[]=b", 2),
        ("records[1]=a&records[2]=b", 2),
        ("records=a,b,c", 3),
        ("records=a%2Cb%2Cc%2C", 3),
        ("records=a,,b,", 2),
        ("records=", 0),
        ("records=a&records=b", 1),
        ("records[]=a&records[]=b&records=c,d,e", 3),
        ("records=c,d,e&records[]=a", 1),
    ];
    for (body, want) in cases {
        assert_eq!(urlencoded(body).params.records, want, "{body}");
    }
    let f = urlencoded("fields=record_id,age&records[]=1");
    assert_eq!((f.params.records, f.params.fields), (1, 2));
}

#[test]
fn pycap_body_with_five_thousand_fields_is_counted() {
    let mut body = format!("token={TOKEN}&content=record&format=json&type=flat");
    for i in 0..5000 {
        write!(body, "&fields%5B{i}%5D=field_number_{i}").unwrap();
    }
    body.push_str("&records%5B0%5D=1&rawOrLabel=raw");
    assert!(body.len() > 140_000);
    let mut reader = FormBody::for_content_type(Some(URLENCODED));
    for chunk in body.as_bytes().chunks(1448) {
        reader.feed(chunk);
    }
    assert!(reader.buffered_bytes() <= 1024);
    let f = reader.finish();
    assert_eq!((f.params.fields, f.params.records), (5000, 1));
    assert_eq!(token_of(&f), Some(Ok(fingerprint(TOKEN))));
}

#[test]
fn urlencoded_data_is_measured_decoded_not_kept() {
    let f = urlencoded(&format!(
        "token={TOKEN}&content=record&data=%5B%7B%22record_id%22%3A%221%22%7D%5D&format=json"
    ));
    assert_eq!(
        f.params.data_bytes,
        Some(r#"[{"record_id":"1"}]"#.len() as u64)
    );
    assert_eq!(f.params.format.as_deref(), Some("json"));
    assert_eq!(urlencoded("data=").params.data_bytes, Some(0));
    assert_eq!(urlencoded("data").params.data_bytes, Some(0));
}

#[test]
fn multipart_file_import_is_measured_in_bounded_memory() {
    // File content that looks like delimiters but is not one.
    let mut file = Vec::with_capacity(1 << 20);
    let decoy = format!("\r\n--{}", &BOUNDARY[..10]);
    while file.len() < (1 << 20) {
        file.extend_from_slice(b"0123456789abcdef\r\n--");
        file.extend_from_slice(decoy.as_bytes());
    }
    file.truncate(1 << 20);
    let body = multipart_body(
        &[
            ("token", TOKEN),
            ("content", "file"),
            ("action", "import"),
            ("field", "upload"),
            ("record", "1"),
        ],
        &[("file", "scan.pdf", &file)],
    );
    let mut reader = FormBody::for_content_type(Some(&multipart_type()));
    let mut most_held = 0;
    for chunk in body.chunks(1448) {
        reader.feed(chunk);
        most_held = most_held.max(reader.buffered_bytes());
    }
    assert!(most_held <= 8192, "held {most_held} bytes");
    let f = reader.finish();
    assert_eq!(f.params.data_bytes, Some(1 << 20));
    assert_eq!(f.params.content.as_deref(), Some("file"));
    assert_eq!(f.params.action.as_deref(), Some("import"));
    assert_eq!(token_of(&f), Some(Ok(fingerprint(TOKEN))));
    assert_eq!(f.problem, None);
}

#[test]
fn multipart_uploads_other_than_file_are_not_post_fields() {
    // PHP puts parts with a filename in $_FILES: a "token" upload is not a token, and only an
    // upload named `file` is an import payload.
    let body = multipart_body(
        &[("content", "record")],
        &[
            ("token", "t.txt", TOKEN.as_bytes()),
            ("data", "d.csv", b"x,y"),
        ],
    );
    let f = multipart(&body);
    assert_eq!(token_of(&f), None);
    assert_eq!(f.params.data_bytes, None);
    let body = multipart_body(&[("data", "record_id\n1\n")], &[]);
    assert_eq!(multipart(&body).params.data_bytes, Some(12));
}

#[test]
fn multipart_head_variants_are_understood() {
    let body = format!(
        "preamble\r\n--{BOUNDARY}\r\ncontent-disposition: form-data;\r\n\tname=token\r\n\r\n{TOKEN}\r\n\
         --{BOUNDARY}\nContent-Type: text/plain\nContent-Disposition: form-data; NAME='con\\'tent'\n\ncontent-value\n\
         --{BOUNDARY}\r\nContent-Disposition: form-data; name=\"format\"\r\n\r\njson\r\n--{BOUNDARY}--\r\nepilogue"
    );
    let f = read_chunks(
        Some(&format!("Multipart/Form-Data; boundary=\"{BOUNDARY}\"")),
        &[body.as_bytes()],
    );
    assert_eq!(token_of(&f), Some(Ok(fingerprint(TOKEN))));
    assert_eq!(f.params.format.as_deref(), Some("json"));
    assert_eq!(f.params.content, None, "the part was named con'tent");
    assert_eq!(f.problem, None);
}

#[test]
fn every_split_gives_the_same_fields() {
    let small_urlencoded = format!(
        "token={}&content=record&data=a%2Bb+c&records[]=1&fields=x%2Cy&filterLogic=%5Bage%5D%3E1\
         &returnMetadataOnly=TRUE&bad=%zz&format=json%",
        TOKEN.to_lowercase()
    );
    let small_multipart = multipart_body(
        &[
            ("content", "record"),
            ("records[0]", "1"),
            ("exportFiles", "1"),
            ("token", TOKEN),
        ],
        &[("file", "a.txt", b"ab\r\n-cd")],
    );
    let cases = [
        (URLENCODED.to_string(), small_urlencoded.into_bytes()),
        (multipart_type(), small_multipart),
    ];
    for (content_type, body) in &cases {
        let whole = describe(read_chunks(Some(content_type), &[body]));
        assert!(whole.contains(&fingerprint(TOKEN)), "{whole}");
        assert!(whole.contains("problem=None"), "{whole}");
        let bytewise: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(describe(read_chunks(Some(content_type), &bytewise)), whole);
        for i in 0..=body.len() {
            let (a, b) = body.split_at(i);
            assert_eq!(
                describe(read_chunks(Some(content_type), &[a, b])),
                whole,
                "split at {i}"
            );
            for j in (i..=body.len()).step_by(7) {
                let (b, c) = b.split_at(j - i);
                assert_eq!(
                    describe(read_chunks(Some(content_type), &[a, b, c])),
                    whole,
                    "split at {i} and {j}"
                );
            }
        }
    }
}

#[test]
fn split_case_fields_have_the_expected_values() {
    let f = urlencoded(
        "data=a%2Bb+c&fields=x%2Cy&filterLogic=%5Bage%5D%3E1&returnMetadataOnly=TRUE&format=json%",
    );
    assert_eq!(f.params.data_bytes, Some(5));
    assert_eq!(f.params.fields, 2);
    assert!(f.params.filter_logic);
    assert_eq!(f.params.return_metadata_only, Some(true));
    assert_eq!(f.params.format.as_deref(), Some("json%"));
}

#[test]
fn urlencoded_gap_drops_only_the_field_it_hit() {
    let mut body = FormBody::for_content_type(Some(URLENCODED));
    body.feed(format!("token={TOKEN}&content=rec").as_bytes());
    body.gap(3);
    body.feed(b"ord&format=json");
    let f = body.finish();
    assert_eq!(token_of(&f), Some(Ok(fingerprint(TOKEN))));
    assert_eq!(f.params.content, None);
    assert_eq!(f.params.format.as_deref(), Some("json"));
    assert_eq!(f.problem, Some(BodyProblem::Gap));
}

#[test]
fn urlencoded_gap_in_a_name_resyncs_at_the_next_field() {
    let mut body = FormBody::for_content_type(Some(URLENCODED));
    body.feed(b"content=record&tok");
    body.gap(10);
    body.feed(format!("en=X&token={TOKEN}").as_bytes());
    let f = body.finish();
    assert_eq!(token_of(&f), Some(Ok(fingerprint(TOKEN))));
    assert_eq!(f.params.content.as_deref(), Some("record"));
}

#[test]
fn gap_inside_data_still_counts_as_an_import() {
    let mut body = FormBody::for_content_type(Some(URLENCODED));
    body.feed(b"content=record&data=abc");
    body.gap(1000);
    body.feed(b"def&format=csv");
    let f = body.finish();
    assert_eq!(f.params.data_bytes, Some(1006));
    assert_eq!(f.params.format.as_deref(), Some("csv"));
    assert_eq!(f.problem, Some(BodyProblem::Gap));

    let file = vec![b'x'; 5000];
    let whole = multipart_body(&[("content", "file")], &[("file", "f.bin", &file)]);
    let start = whole.len() - 2000;
    let mut body = FormBody::for_content_type(Some(&multipart_type()));
    body.feed(&whole[..start - 1000]);
    body.gap(1000);
    body.feed(&whole[start..]);
    let f = body.finish();
    assert_eq!(f.params.data_bytes, Some(5000));
    assert_eq!(f.problem, Some(BodyProblem::Gap));
}

#[test]
fn multipart_gap_resyncs_at_the_next_part() {
    let whole = multipart_body(
        &[("content", "record"), ("format", "json"), ("token", TOKEN)],
        &[],
    );
    let text = String::from_utf8(whole.clone()).unwrap();
    let in_format_head = text.find("name=\"format\"").unwrap();
    let mut body = FormBody::for_content_type(Some(&multipart_type()));
    body.feed(&whole[..in_format_head]);
    body.gap(5);
    body.feed(&whole[in_format_head + 5..]);
    let f = body.finish();
    assert_eq!(f.params.content.as_deref(), Some("record"));
    assert_eq!(f.params.format, None);
    assert_eq!(token_of(&f), Some(Ok(fingerprint(TOKEN))));
    assert_eq!(f.problem, Some(BodyProblem::Gap));
}

#[test]
fn overlong_values_are_dropped_and_counted() {
    let long = "x".repeat(300);
    let f = urlencoded(&format!(
        "content=record&content={long}&format=json&token={TOKEN}"
    ));
    assert_eq!(f.params.content, None);
    assert_eq!(f.params.format.as_deref(), Some("json"));
    assert_eq!(token_of(&f), Some(Ok(fingerprint(TOKEN))));
    assert_eq!(f.problem, Some(BodyProblem::FieldTooLong));
    // Long filter logic and data are fine: they are never kept.
    let f = urlencoded(&format!("filterLogic={long}&data={long}"));
    assert_eq!(f.problem, None);
    assert!(f.params.filter_logic);
    // A long token is malformed, not stored.
    let f = multipart(&multipart_body(&[("token", &"A".repeat(200))], &[]));
    assert_eq!(token_of(&f), Some(Err(TokenProblem::Malformed)));
    // A long name cannot be ours.
    let f = urlencoded(&format!("{}=1&format=csv", "n".repeat(300)));
    assert_eq!(f.problem, Some(BodyProblem::FieldTooLong));
    assert_eq!(f.params.format.as_deref(), Some("csv"));
}

#[test]
fn json_body_has_no_fields() {
    let f = read_chunks(
        Some("application/json"),
        &[format!(r#"{{"token":"{TOKEN}","content":"record"}}"#).as_bytes()],
    );
    assert_eq!(token_of(&f), None);
    assert_eq!(f.params.content, None);
    assert_eq!(f.problem, Some(BodyProblem::UnsupportedContentType));
    let f = read_chunks(None, &[format!("token={TOKEN}").as_bytes()]);
    assert_eq!(token_of(&f), None);
    assert_eq!(f.problem, Some(BodyProblem::UnsupportedContentType));
}

#[test]
fn content_type_parameters_and_case_do_not_matter() {
    for ct in [
        "application/x-www-form-urlencoded; charset=UTF-8",
        "Application/X-WWW-Form-Urlencoded",
        " application/x-www-form-urlencoded ",
    ] {
        let f = read_chunks(Some(ct), &[format!("token={TOKEN}").as_bytes()]);
        assert_eq!(token_of(&f), Some(Ok(fingerprint(TOKEN))), "{ct}");
    }
}

#[test]
fn multipart_without_boundary_is_malformed() {
    let f = read_chunks(Some("multipart/form-data"), &[b"--x\r\n"]);
    assert_eq!(f.problem, Some(BodyProblem::MalformedMultipart));
    let body = multipart_body(&[("token", TOKEN)], &[]);
    let cut = &body[..body.len() - 20];
    let f = multipart(cut);
    assert_eq!(f.problem, Some(BodyProblem::MalformedMultipart));
    let f = multipart(b"no delimiter at all");
    assert_eq!(f.problem, Some(BodyProblem::MalformedMultipart));
    assert_eq!(multipart(b"").problem, None);
}

#[test]
fn missing_and_malformed_tokens_are_told_apart() {
    assert_eq!(token_of(&urlencoded("content=record")), None);
    for body in [
        "token=",
        "token",
        "token=abc-def",
        "token=abc%20def",
        "token[]=ABC",
        "token[0]=ABC",
    ] {
        assert_eq!(
            token_of(&urlencoded(body)),
            Some(Err(TokenProblem::Malformed)),
            "{body}"
        );
    }
    // PHP reads ` token` and `token%00x` as `token`.
    assert_eq!(
        token_of(&urlencoded(&format!("+token={TOKEN}"))),
        Some(Ok(fingerprint(TOKEN)))
    );
    assert_eq!(
        token_of(&urlencoded(&format!("token%00x={TOKEN}"))),
        Some(Ok(fingerprint(TOKEN)))
    );
}

#[test]
fn heavy_call_parameters_are_kept() {
    let f = urlencoded(
        "content=project_xml&returnMetadataOnly=false&exportFiles=True&allRecords=1\
         &report_id=42&dateRangeBegin=2024-01-01+00%3A00%3A00&dateRangeEnd=x&filterLogic=",
    );
    assert_eq!(f.params.return_metadata_only, Some(false));
    assert_eq!(f.params.export_files, Some(true));
    assert_eq!(f.params.all_records, Some(true));
    assert_eq!(f.params.report_id.as_deref(), Some("42"));
    assert_eq!(
        f.params.date_range_begin.as_deref(),
        Some("2024-01-01 00:00:00")
    );
    assert_eq!(f.params.date_range_end.as_deref(), Some("x"));
    assert!(!f.params.filter_logic, "empty filter logic filters nothing");
    assert!(urlencoded("filterLogic=%5Bage%5D").params.filter_logic);
}

#[test]
fn redcap_booleans_are_one_or_true() {
    assert!(parse_bool("1"));
    assert!(parse_bool("true"));
    assert!(parse_bool("TRUE"));
    assert!(!parse_bool("yes"));
    assert!(!parse_bool("0"));
    assert!(!parse_bool(""));
    assert!(!parse_bool(" true"));
}

fn head(method: &str, target: &str) -> RequestHead {
    RequestHead {
        method: method.to_string(),
        target: target.to_string(),
        content_type: Some(URLENCODED.to_string()),
        ..RequestHead::default()
    }
}

#[test]
fn selector_takes_posts_to_api_paths_only() {
    let mut selector = ApiRequestSelector::new(ApiPaths::default());
    assert!(selector.select(&head("POST", "/redcap/api/")).is_some());
    assert!(selector.select(&head("POST", "/redcap/api/?x=1")).is_some());
    assert!(selector.select(&head("GET", "/redcap/api/")).is_none());
    assert!(selector.select(&head("post", "/redcap/api/")).is_none());
    assert!(
        selector
            .select(&head("POST", "/redcap/index.php"))
            .is_none()
    );
    assert_eq!(
        selector.stats(),
        &SelectorStats {
            requests: 5,
            selected: 2,
            other_method_on_api_path: 2
        }
    );
}

fn endpoint(last: u8, port: u16) -> Endpoint {
    Endpoint {
        ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)),
        port,
    }
}

fn exchange(body: &str, response: Option<ResponseSummary>) -> HttpExchange<FormBody> {
    let mut selector = ApiRequestSelector::new(ApiPaths::default());
    let request = head("POST", "/redcap/api/?trace=1");
    let mut form = selector.select(&request).unwrap();
    form.feed(body.as_bytes());
    HttpExchange {
        conn: ConnectionId(7),
        client: endpoint(1, 50000),
        server: endpoint(2, 443),
        request,
        body: form,
        request_body_bytes: body.len() as u64,
        ts_request_start: Timestamp::from_nanos(1_000),
        ts_request_end: Timestamp::from_nanos(2_000),
        response,
        incomplete: None,
    }
}

fn response(decoding: BodyDecoding) -> ResponseSummary {
    ResponseSummary {
        status: 200,
        ts_first_byte: Timestamp::from_nanos(5_000),
        ts_last_byte: Timestamp::from_nanos(9_000),
        wire_body_bytes: 100,
        decoded_body_bytes: 700,
        coding: ContentCoding::Gzip,
        decoding,
        html: false,
    }
}

#[test]
fn api_call_is_built_from_an_exchange() {
    let call = ApiCall::from_exchange(
        exchange(PYCAP_BODY, Some(response(BodyDecoding::Decoded))),
        &key(),
        KeepRawToken::Never,
    );
    assert!(!call.raw_token.is_held(), "not kept unless asked for");
    let identity = call.token.clone().unwrap();
    assert_eq!(identity.fingerprint.to_string(), fingerprint(TOKEN));
    assert_eq!(identity.masked.0, "012…EF");
    assert_eq!(call.ts_start, Timestamp::from_nanos(1_000));
    assert_eq!(call.ts_end, Timestamp::from_nanos(9_000));
    assert_eq!(call.ttfb, Some(Span(3_000)));
    assert_eq!(call.client, endpoint(1, 50000));
    assert_eq!(call.server, endpoint(2, 443));
    assert_eq!(call.method, "POST");
    assert_eq!(call.path, "/redcap/api/");
    assert_eq!(call.params.content.as_deref(), Some("record"));
    assert_eq!((call.params.records, call.params.fields), (2, 2));
    assert_eq!(call.status, Some(200));
    assert_eq!(call.request_bytes, PYCAP_BODY.len() as u64);
    assert_eq!(call.response_bytes, Some(700));
    assert_eq!(call.response_wire_bytes, Some(100));
    assert_eq!(call.body_problem, None);
    assert!(call.complete);
    // No raw token anywhere in what can be printed.
    assert!(!format!("{call:?}").contains(TOKEN));
}

/// Where keeping the raw token makes no difference to what is tested.
const KEEP: KeepRawToken = KeepRawToken::Never;

#[test]
fn a_kept_raw_token_is_held_on_the_call_and_never_printed() {
    let call = ApiCall::from_exchange(
        exchange(PYCAP_BODY, Some(response(BodyDecoding::Decoded))),
        &key(),
        KeepRawToken::ForSuspendHooks,
    );
    assert!(call.raw_token.is_held());
    assert_eq!(
        call.token.as_ref().unwrap().fingerprint.to_string(),
        fingerprint(TOKEN)
    );
    let printed = format!("{call:?} {call:#?}");
    assert!(printed.contains("raw_token: <redacted>"), "{printed}");
    assert!(!printed.contains(TOKEN) && !printed.contains(&TOKEN.to_lowercase()));
    assert!(!call.clone().raw_token.is_held(), "a copy never holds it");
    let mut call = call;
    let raw = call.raw_token.take().unwrap();
    assert_eq!(raw.expose_for_hook(), TOKEN.to_uppercase().as_bytes());
}

#[test]
fn api_call_sizes_follow_decoding() {
    let sized = |d| {
        ApiCall::from_exchange(exchange("token=ABC", Some(response(d))), &key(), KEEP)
            .response_bytes
    };
    assert_eq!(sized(BodyDecoding::Capped), Some(700));
    assert_eq!(sized(BodyDecoding::Failed), None);
    assert_eq!(sized(BodyDecoding::Unsupported), None);
    let call = ApiCall::from_exchange(
        exchange("token=ABC", Some(response(BodyDecoding::Unsupported))),
        &key(),
        KEEP,
    );
    assert_eq!(call.response_wire_bytes, Some(100));
}

#[test]
fn api_call_without_response_ends_with_its_request() {
    let mut ex = exchange("content=version", None);
    ex.incomplete = Some(crate::stages::http::Incomplete::NoResponse);
    let call = ApiCall::from_exchange(ex, &key(), KEEP);
    assert_eq!(call.ts_end, Timestamp::from_nanos(2_000));
    assert_eq!(call.ttfb, None);
    assert_eq!(call.status, None);
    assert_eq!(call.response_bytes, None);
    assert_eq!(call.token, Err(TokenProblem::Missing));
    assert!(!call.complete);
}

#[test]
fn api_call_completeness_follows_body_problems() {
    let complete = |body: &str| {
        let mut ex = exchange(body, Some(response(BodyDecoding::Identity)));
        if body.ends_with("gap") {
            ex.body.gap(4);
        }
        let call = ApiCall::from_exchange(ex, &key(), KEEP);
        let mut stats = RedcapStats::default();
        stats.count(&call);
        (call.complete, stats)
    };
    let (ok, stats) = complete(&format!("content={}", "x".repeat(400)));
    assert!(ok, "a value over its limit leaves the call complete");
    assert_eq!((stats.field_too_long, stats.token_missing), (1, 1));
    let (ok, stats) = complete("token=ABC&content=gap");
    assert!(!ok);
    assert_eq!((stats.body_gap, stats.incomplete), (1, 1));
}

#[test]
fn api_call_with_an_unreadable_head_is_counted_with_an_unreadable_token() {
    let mut ex = exchange("", Some(response(BodyDecoding::Identity)));
    ex.body = FormBody::for_content_type(None);
    ex.incomplete = Some(crate::stages::http::Incomplete::UnreadableHead);
    let call = ApiCall::from_exchange(ex, &key(), KEEP);
    assert_eq!(call.token, Err(TokenProblem::Unreadable));
    assert_eq!(
        call.body_problem, None,
        "no body was read, so none is blamed"
    );
    assert!(!call.complete);
    let mut stats = RedcapStats::default();
    stats.count(&call);
    assert_eq!((stats.token_unreadable, stats.token_missing), (1, 0));
    assert_eq!((stats.unsupported_content_type, stats.incomplete), (0, 1));
}

/// Fields PHP's rfc1867 parser reads from `body` (boundary [`BOUNDARY`]), as a token and a format.
fn php_multipart(body: &str) -> (Option<Result<String, TokenProblem>>, Option<String>) {
    let f = multipart(body.as_bytes());
    (token_of(&f), f.params.format)
}

fn part(head: &str, value: &str) -> String {
    format!("--{BOUNDARY}\r\n{head}\r\n\r\n{value}\r\n")
}

const END: &str = "--d7a1c6e0f2b34f0e9a5b--\r\n";

#[test]
fn only_an_exact_delimiter_line_starts_a_part_as_in_php() {
    let token = part("Content-Disposition: form-data; name=\"token\"", TOKEN);
    let ok = Some(Ok(fingerprint(TOKEN)));
    assert_eq!(php_multipart(&format!("{token}{END}")).0, ok);
    // Transport padding after the boundary: PHP's `find_boundary` compares whole lines.
    let padded = token.replacen(BOUNDARY, &format!("{BOUNDARY} "), 1);
    assert_eq!(php_multipart(&format!("{padded}{END}")).0, None);
    // A line that merely starts with the delimiter ends the value before it, and the lines
    // after it are skipped up to the next exact delimiter line.
    let body = format!(
        "{token}--{BOUNDARY}x\r\nContent-Disposition: form-data; name=\"token\"\r\n\r\nAAAA\r\n{END}"
    );
    assert_eq!(php_multipart(&body).0, ok);
}

#[test]
fn a_part_after_the_closing_delimiter_is_still_read_as_php_reads_it() {
    let body = format!(
        "{}{END}{}{END}",
        part("Content-Disposition: form-data; name=\"format\"", "csv"),
        part("Content-Disposition: form-data; name=\"token\"", TOKEN)
    );
    let f = multipart(body.as_bytes());
    assert_eq!(token_of(&f), Some(Ok(fingerprint(TOKEN))));
    assert_eq!(f.problem, None);
    // An epilogue without a delimiter line is not malformed.
    let body = format!(
        "{}{END}trailing text\r\n",
        part("Content-Disposition: form-data; name=token", TOKEN)
    );
    assert_eq!(multipart(body.as_bytes()).problem, None);
}

#[test]
fn part_heads_are_read_as_php_reads_them() {
    let ok = Some(Ok(fingerprint(TOKEN)));
    let read = |head: &str| php_multipart(&format!("{}{END}", part(head, TOKEN))).0;
    // No `form-data` first word: PHP reads every `key=value` word.
    assert_eq!(read("Content-Disposition: name=token"), ok);
    // A line without a colon continues the header before it.
    assert_eq!(
        read("Content-Disposition: form-data;\r\nname=\"token\""),
        ok
    );
    assert_eq!(read("CONTENT-DISPOSITION:form-data;name=token"), ok);
    // The header name is compared as written: a blank before the colon makes it another one.
    assert_eq!(read("Content-Disposition : form-data; name=token"), None);
    // The key too: `name =` is not `name`.
    assert_eq!(read("Content-Disposition: form-data; name =token"), None);
    // An empty filename still makes the part an upload, not a `$_POST` field.
    assert_eq!(
        read("Content-Disposition: form-data; name=token; filename=\"\""),
        None
    );
    // The last `name` of a disposition wins.
    assert_eq!(
        read("Content-Disposition: form-data; name=format; name=token"),
        ok
    );
    // A `Content-Disposition` naming neither a field nor a file makes PHP stop reading.
    let body = format!(
        "{}{}{END}",
        part("Content-Disposition: form-data", "x"),
        part("Content-Disposition: form-data; name=token", TOKEN)
    );
    let f = multipart(body.as_bytes());
    assert_eq!(token_of(&f), None);
    assert_eq!(f.problem, Some(BodyProblem::MalformedMultipart));
    // A part with no disposition at all is skipped, and reading goes on.
    let body = format!(
        "{}{}{END}",
        part("Content-Type: text/plain", "x"),
        part("Content-Disposition: form-data; name=token", TOKEN)
    );
    assert_eq!(php_multipart(&body).0, ok);
    // PHP skips it line by line from its first byte: a delimiter line there starts a part,
    // with no line end before it (a field's content would need one).
    let body = format!(
        "--{BOUNDARY}\r\nContent-Type: text/plain\r\n\r\n{}{END}",
        part("Content-Disposition: form-data; name=token", TOKEN)
    );
    assert_eq!(php_multipart(&body).0, ok);
    for size in 1..12 {
        let chunks: Vec<&[u8]> = body.as_bytes().chunks(size).collect();
        let f = read_chunks(Some(&multipart_type()), &chunks);
        assert_eq!(token_of(&f), ok, "chunks of {size}");
    }
    let body = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=content\r\n\r\n{}{END}",
        part("Content-Disposition: form-data; name=token", TOKEN)
    );
    assert_eq!(
        php_multipart(&body).0,
        None,
        "a field's value runs to `\\n--boundary`"
    );
}

#[test]
fn empty_and_long_boundaries_work_as_in_php() {
    let body =
        format!("--\r\nContent-Disposition: form-data; name=token\r\n\r\n{TOKEN}\r\n----\r\n");
    let f = read_chunks(Some("multipart/form-data; boundary="), &[body.as_bytes()]);
    assert_eq!(token_of(&f), Some(Ok(fingerprint(TOKEN))));
    let long = "b".repeat(9000);
    let body = format!(
        "--{long}\r\nContent-Disposition: form-data; name=token\r\n\r\n{TOKEN}\r\n--{long}--\r\n"
    );
    let content_type = format!("multipart/form-data; boundary={long}");
    for size in [1, 7, 4096, body.len()] {
        let chunks: Vec<&[u8]> = body.as_bytes().chunks(size).collect();
        let f = read_chunks(Some(&content_type), &chunks);
        assert_eq!(
            token_of(&f),
            Some(Ok(fingerprint(TOKEN))),
            "chunks of {size}"
        );
        assert_eq!(f.problem, None);
    }
}

#[test]
fn max_input_vars_counts_fields_as_php_does() {
    let read = |content_type: &str, max: u64, body: &[u8]| {
        let mut form = FormBody::new(Some(content_type), max);
        form.feed(body);
        form.finish()
    };
    // Urlencoded: an empty piece counts; the field one past the limit is the last assigned.
    let f = read(
        URLENCODED,
        2,
        format!("a=1&&token={TOKEN}&token=0000").as_bytes(),
    );
    assert_eq!(token_of(&f), Some(Ok(fingerprint(TOKEN))));
    assert_eq!(f.problem, Some(BodyProblem::InputVarsExceeded));
    let f = read(
        URLENCODED,
        3,
        format!("a=1&&token={TOKEN}&token=0000").as_bytes(),
    );
    assert_eq!(token_of(&f), Some(Ok(fingerprint("0000"))));
    assert_eq!(f.problem, None);
    // Multipart: a part without a disposition and an upload are not counted; fields past the
    // limit are dropped.
    let mut body = format!("--{BOUNDARY}\r\nContent-Type: text/plain\r\n\r\nx\r\n").into_bytes();
    body.extend(multipart_body(
        &[("content", "record"), ("token", TOKEN), ("token", "0000")],
        &[("file", "f.csv", b"1,2")],
    ));
    let f = read(&multipart_type(), 2, &body);
    assert_eq!(token_of(&f), Some(Ok(fingerprint(TOKEN))));
    assert_eq!(
        f.params.data_bytes,
        Some(3),
        "the upload after the limit is read"
    );
    assert_eq!(f.problem, Some(BodyProblem::InputVarsExceeded));
    // Past max_input_vars + 20 parts with a disposition, PHP stops reading.
    let uploads: Vec<(&str, &str, &[u8])> = vec![("u", "u.txt", b"u"); 21];
    let mut body = multipart_body(&[], &uploads);
    body.truncate(body.len() - format!("--{BOUNDARY}--\r\n").len());
    body.extend(multipart_body(&[("token", TOKEN)], &[]));
    let f = read(&multipart_type(), 1, &body);
    assert_eq!(token_of(&f), None);
    assert_eq!(f.problem, Some(BodyProblem::InputVarsExceeded));
    assert_eq!(
        token_of(&read(&multipart_type(), 2, &body)),
        Some(Ok(fingerprint(TOKEN)))
    );
}

#[test]
fn hostile_multipart_bodies_never_panic_and_stay_bounded() {
    let mut x = 7u32;
    let mut next = move || {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        x >> 8
    };
    let delimiter = format!("--{BOUNDARY}");
    let alphabet: Vec<Vec<u8>> = [
        delimiter.as_str(),
        "--",
        "\r\n",
        "\n",
        "\r",
        " ",
        "Content-Disposition: form-data; name=token",
        "Content-Disposition: name=\"to\\\"ken\"; filename=",
        "Content-Disposition: form-data",
        "content-type: text/plain",
        "\tname=token",
        TOKEN,
        "x",
        "'",
        "\"",
        ";",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    for round in 0..300 {
        let mut body = Vec::new();
        for _ in 0..(next() % 200) {
            body.extend_from_slice(&alphabet[next() as usize % alphabet.len()]);
        }
        let max_vars = u64::from(next() % 4);
        let mut reader = FormBody::new(Some(&multipart_type()), max_vars);
        let mut most_held = 0;
        let mut rest = body.as_slice();
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at((next() as usize % 9 + 1).min(rest.len()));
            if next() % 50 == 0 {
                reader.gap(u64::from(next() % 20));
            }
            reader.feed(chunk);
            most_held = most_held.max(reader.buffered_bytes());
            rest = tail;
        }
        assert!(
            most_held <= 16 * 1024,
            "round {round}: held {most_held} bytes"
        );
        let _ = reader.finish();
    }
}

#[test]
fn part_heads_of_any_size_are_read_in_bounded_memory_as_php_reads_them() {
    let pad = format!("X-Pad: {}", "p".repeat(10_000));
    let many: String = (0..2000).map(|i| format!("X-{i}: v\r\n")).collect();
    let folded_pad = format!("X-Folded: a\r\n {}", "q".repeat(10_000));
    for head in [
        format!("{pad}\r\nContent-Disposition: form-data; name=token"),
        format!("Content-Disposition: form-data; name=token\r\n{pad}"),
        format!("{many}Content-Disposition: form-data; name=token"),
        format!("{folded_pad}\r\nContent-Disposition: form-data; name=token"),
    ] {
        let body = format!("--{BOUNDARY}\r\n{head}\r\n\r\n{TOKEN}\r\n--{BOUNDARY}--\r\n");
        for size in [1448, 7] {
            let mut reader = FormBody::for_content_type(Some(&multipart_type()));
            let mut most_held = 0;
            for chunk in body.as_bytes().chunks(size) {
                reader.feed(chunk);
                most_held = most_held.max(reader.buffered_bytes());
            }
            assert!(most_held <= 16 * 1024, "held {most_held} bytes");
            let f = reader.finish();
            assert_eq!(
                token_of(&f),
                Some(Ok(fingerprint(TOKEN))),
                "{}",
                &head[..20]
            );
            assert_eq!(f.problem, None);
        }
    }
    // A disposition longer than we read is said to be malformed, and its part skipped.
    let long = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; x=\"{}\"; name=token\r\n\r\n{TOKEN}\r\n--{BOUNDARY}--\r\n",
        "x".repeat(5000)
    );
    let f = multipart(long.as_bytes());
    assert_eq!(token_of(&f), None);
    assert_eq!(f.problem, Some(BodyProblem::MalformedMultipart));
}

#[test]
fn names_php_shortens_are_read_however_long_they_are_sent() {
    let ok = Some(Ok(fingerprint(TOKEN)));
    let spaces = "+".repeat(1000);
    let junk = "x".repeat(1000);
    assert_eq!(token_of(&urlencoded(&format!("{spaces}token={TOKEN}"))), ok);
    assert_eq!(
        token_of(&urlencoded(&format!("token%00{junk}={TOKEN}"))),
        ok
    );
    assert_eq!(
        token_of(&urlencoded(&format!("%20%20token%00{junk}={TOKEN}"))),
        ok
    );
    // Not shortened by PHP: still too long to be a field REDCap reads.
    let f = urlencoded(&format!("token{junk}={TOKEN}"));
    assert_eq!(
        (token_of(&f), f.problem),
        (None, Some(BodyProblem::FieldTooLong))
    );
    let head = format!(
        "Content-Disposition: form-data; name=\"{}token\"",
        " ".repeat(1000)
    );
    let body = format!("--{BOUNDARY}\r\n{head}\r\n\r\n{TOKEN}\r\n--{BOUNDARY}--\r\n");
    assert_eq!(token_of(&multipart(body.as_bytes())), ok);
}

#[test]
fn a_last_part_without_its_closing_delimiter_keeps_its_value_as_in_php() {
    // PHP's read stops where a delimiter might begin and drops the `\r` before it.
    let body = part("Content-Disposition: form-data; name=\"token\"", TOKEN);
    let f = multipart(body.as_bytes());
    assert_eq!(token_of(&f), Some(Ok(fingerprint(TOKEN))));
    // Cut inside a delimiter's start, too.
    let cut = format!("{body}--{}", &BOUNDARY[..4]);
    let value = format!("{TOKEN}\r\n--{}", &BOUNDARY[..4]);
    let f = multipart(
        part("Content-Disposition: form-data; name=\"token\"", &value)
            .trim_end_matches("\r\n")
            .as_bytes(),
    );
    assert_eq!(token_of(&f), Some(Ok(fingerprint(TOKEN))), "{cut}");
}

/// Found by the `multipart` fuzz target: read a byte at a time, a third dash after the closing
/// delimiter's two (`--boundary---`) was counted as a dash of the delimiter, so the body was
/// taken for one without its closing delimiter (malformed) while read whole it was not.
#[test]
fn dashes_after_the_closing_delimiter_do_not_depend_on_the_chunking() {
    let content_type = multipart_type();
    let body = multipart_body(&[("content", "metadata")], &[]);
    let body = String::from_utf8(body).unwrap().replace(
        &format!("--{BOUNDARY}--\r\n"),
        &format!("--{BOUNDARY}---\n"),
    );
    let whole = describe(read_chunks(Some(&content_type), &[body.as_bytes()]));
    assert!(whole.contains("problem=None"), "{whole}");
    let bytewise: Vec<&[u8]> = body.as_bytes().chunks(1).collect();
    assert_eq!(describe(read_chunks(Some(&content_type), &bytewise)), whole);
}
