use std::io::Write;
use std::path::Path;

use super::*;
use crate::edges::output::{CallRecord, Transport, write_line};
use crate::stages::policy::{HeavyReason, Verdict};
use crate::stages::redcap::sample::{at, call};

fn verdict(c: ApiCall) -> Verdict {
    Verdict {
        call: c,
        heavy: Some(HeavyReason::ResponseSize),
        violations: Vec::new(),
        client_violation: None,
        decision: None,
        while_suspended: false,
    }
}

fn record_line(c: ApiCall) -> Vec<u8> {
    let v = verdict(c);
    let mut out = Vec::new();
    write_line(&mut out, &CallRecord::of(&v, Transport::Tcp)).unwrap();
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

fn read(files: &[PathBuf]) -> (Vec<ApiCall>, RecordStats) {
    let mut calls = Vec::new();
    let stats = read_calls(files, Needed::default(), |c| calls.push(c)).unwrap();
    (calls, stats)
}

#[test]
fn a_written_record_reads_back_as_the_call_the_policy_judged() {
    let mut c = call(3, 1_767_600_000);
    c.ts_start = Timestamp(1_767_600_000_123_456_000);
    c.params.content = Some("record".into());
    c.params.records = 2;
    c.params.filter_logic = true;
    c.params.type_ = Some("flat".into());
    c.response_bytes = Some(700_000);
    c.status = Some(200);
    c.complete = false;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("calls.jsonl");
    std::fs::write(&path, record_line(c.clone())).unwrap();
    let (calls, stats) = read(std::slice::from_ref(&path));
    assert_eq!((stats.lines, stats.calls, stats.malformed_lines), (1, 1, 0));
    let got = &calls[0];
    assert_eq!(got.ts_start, c.ts_start);
    assert_eq!(got.ttfb, c.ttfb);
    assert_eq!((got.client, got.server), (c.client, c.server));
    assert_eq!(got.token, c.token);
    assert_eq!(got.params, c.params);
    assert_eq!(
        (
            got.status,
            got.response_bytes,
            got.response_wire_bytes,
            got.complete
        ),
        (
            c.status,
            c.response_bytes,
            c.response_wire_bytes,
            c.complete
        )
    );
}

#[test]
fn rotations_are_found_oldest_first_and_gzip_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("calls.jsonl"), record_line(call(1, 400))).unwrap();
    std::fs::write(d.join("calls.jsonl.1"), record_line(call(1, 300))).unwrap();
    std::fs::write(d.join("calls.jsonl.2.gz"), gzip(&record_line(call(1, 200)))).unwrap();
    std::fs::write(
        d.join("calls.jsonl.10.gz"),
        gzip(&record_line(call(1, 100))),
    )
    .unwrap();
    // Not call records: other outputs and unrelated names.
    std::fs::write(d.join("violations.jsonl"), b"{}\n").unwrap();
    std::fs::write(d.join("calls.jsonl.bak"), b"{}\n").unwrap();
    std::fs::write(d.join("calls.jsonl.0"), b"{}\n").unwrap();

    let by_dir = record_files(d).unwrap();
    let names: Vec<String> = by_dir
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "calls.jsonl.10.gz",
            "calls.jsonl.2.gz",
            "calls.jsonl.1",
            "calls.jsonl"
        ]
    );
    assert_eq!(record_files(&d.join("calls.jsonl")).unwrap(), by_dir);
    let (calls, stats) = read(&by_dir);
    let times: Vec<Timestamp> = calls.iter().map(|c| c.ts_start).collect();
    assert_eq!(times, [at(100), at(200), at(300), at(400)]);
    assert_eq!(stats.malformed_lines, 0);
}

#[test]
fn malformed_and_overlong_lines_are_counted_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("calls.jsonl");
    let mut bytes = record_line(call(1, 100));
    bytes.extend_from_slice(b"not json\n");
    bytes.extend_from_slice(b"{\"ts_start\": 1}\n");
    bytes.extend_from_slice(b"\n");
    let mut long = record_line(call(1, 150));
    long.pop();
    long.extend(std::iter::repeat_n(b' ', MAX_LINE_BYTES));
    long.push(b'\n');
    bytes.extend_from_slice(&long);
    let mut bad_fp = String::from_utf8(record_line(call(1, 160))).unwrap();
    let fp = call(1, 0).token.unwrap().fingerprint.to_string();
    bad_fp = bad_fp.replace(&fp, "<script>");
    bytes.extend_from_slice(bad_fp.as_bytes());
    bytes.extend_from_slice(&record_line(call(2, 200)));
    // A last line cut short (the daemon was writing it).
    let cut = record_line(call(2, 300));
    bytes.extend_from_slice(&cut[..cut.len() / 2]);
    std::fs::write(&path, bytes).unwrap();

    let (calls, stats) = read(&[path]);
    assert_eq!(calls.len(), 2);
    assert_eq!(stats.lines, 7);
    assert_eq!(stats.malformed_lines, 5);
    assert_eq!(stats.malformed_examples.len(), 5);
    assert!(
        stats.malformed_examples[0].ends_with(":2: not a call record (bad JSON)"),
        "{:?}",
        stats.malformed_examples
    );
    assert!(
        stats.malformed_examples[2].contains("longer than"),
        "{:?}",
        stats.malformed_examples
    );
    assert!(stats.malformed_examples[3].contains("token_fp is not a fingerprint"));
    assert!(
        stats
            .malformed_examples
            .iter()
            .all(|e| !e.contains("<script>")),
        "input is not echoed"
    );
}

#[test]
fn a_damaged_rotation_keeps_what_came_before_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut gz = gzip(&[record_line(call(1, 100)), record_line(call(1, 110))].concat());
    gz.truncate(gz.len() - 12);
    std::fs::write(d.join("calls.jsonl.2.gz"), gz).unwrap();
    std::fs::write(d.join("calls.jsonl"), record_line(call(1, 400))).unwrap();
    let (calls, stats) = read(&record_files(d).unwrap());
    assert_eq!(calls.last().unwrap().ts_start, at(400));
    assert_eq!(stats.read_errors.len(), 1, "{stats:?}");
    assert!(stats.read_errors[0].contains("calls.jsonl.2.gz"));
}

#[test]
fn no_records_is_an_error_that_says_what_to_give() {
    let dir = tempfile::tempdir().unwrap();
    let err = record_files(dir.path()).unwrap_err().to_string();
    assert!(err.contains("output.calls"), "{err}");
    let err = record_files(&dir.path().join("missing.jsonl"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing.jsonl"), "{err}");
}

#[test]
fn a_tls_record_without_addresses_reads_back() {
    let line = String::from_utf8(record_line(call(1, 100))).unwrap();
    let c = call(1, 100);
    let line = line
        .replace(&format!("\"client\":\"{}\"", c.client), "\"client\":\"\"")
        .replace(&format!("\"server\":\"{}\"", c.server), "\"server\":\"\"")
        .replace("\"transport\":\"tcp\"", "\"transport\":\"tls\"");
    assert!(line.contains("\"server\":\"\""), "{line}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("calls.jsonl");
    std::fs::write(
        &path,
        format!("{line}{}", "{\"client\":\"not an address\"}\n"),
    )
    .unwrap();
    let (calls, stats) = read(std::slice::from_ref(&path));
    assert_eq!((calls.len(), stats.malformed_lines), (1, 1));
    assert!(calls[0].client.ip.is_unspecified());
    assert_eq!(calls[0].token, c.token);
}

#[test]
fn files_and_stretches_without_a_needed_call_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let old = d.join("calls.jsonl.2.gz");
    std::fs::write(&old, gzip(&record_line(call(1, 100)))).unwrap();
    let modified_at = |path: &Path, secs: u64| {
        let file = std::fs::File::options().write(true).open(path).unwrap();
        file.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
            .unwrap();
    };
    modified_at(&old, 150);
    let middle = d.join("calls.jsonl.1");
    std::fs::write(
        &middle,
        [record_line(call(1, 200)), record_line(call(1, 300))].concat(),
    )
    .unwrap();
    modified_at(&middle, 301);
    let live = d.join("calls.jsonl");
    std::fs::write(
        &live,
        [record_line(call(1, 400)), record_line(call(1, 500))].concat(),
    )
    .unwrap();
    let files = record_files(d).unwrap();

    let mut seen = Vec::new();
    let needed = Needed {
        since: Some(at(200)),
        before: Some(at(300)),
    };
    let stats = read_calls(&files, needed, |c| seen.push(c.ts_start)).unwrap();
    assert_eq!(seen, [at(200)]);
    assert_eq!(stats.skipped_files, [old.clone(), live.clone()]);
    assert_eq!(stats.stopped_at, Some(format!("{}:2", middle.display())));

    // A file modified after `since` is read, whatever its name says.
    modified_at(&old, 10_000);
    let mut seen = Vec::new();
    let stats = read_calls(
        &files,
        Needed {
            before: None,
            ..needed
        },
        |c| seen.push(c.ts_start),
    )
    .unwrap();
    assert_eq!(seen, [at(100), at(200), at(300), at(400), at(500)]);
    assert!(stats.skipped_files.is_empty() && stats.stopped_at.is_none());
}
