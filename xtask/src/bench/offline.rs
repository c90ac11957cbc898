//! The offline bench: how fast `redcap-monitor analyze` gets through a capture of at least
//! 100 MB, against the floor (a bare sequential read of the same file) and against tshark
//! extracting the same fields. The capture is generated once by `synth-capture` and reused.

use std::{
    fs::{self, File},
    io::Read,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use super::{best_of, json_number, json_string, output_path, run_silently, write_report};
use crate::{
    Failure, Result,
    compile::{self, Profile},
    process,
};

const CAPTURE: &str = "bench-data/api.pcap";
/// Beside the capture: `calls=N` as synth-capture reported it; absent means "regenerate".
const CALLS_SIDECAR: &str = "bench-data/api.pcap.calls";
const KEY: &str = "bench-data/site.key";
const MIN_BYTES: u64 = 100_000_000;
const RUNS: u32 = 3;
const CHUNK: usize = 1 << 20;

/// analyze must stay within this factor of the floor...
const GOAL_ANALYZE_OVER_FLOOR: f64 = 2.0;
/// ...and be at least this many times faster than tshark.
const GOAL_TSHARK_OVER_ANALYZE: f64 = 30.0;

/// The fields analyze extracts, as tshark names them; each list holds the preferred name first,
/// then the nearest equivalents in older tsharks (4.0 has no `http.file_data.len`).
const TSHARK_FIELDS: &[&[&str]] = &[
    &["frame.time_epoch"],
    &["tcp.stream"],
    &["http.request.method"],
    &["http.request.uri"],
    &["urlencoded-form.key"],
    &["urlencoded-form.value"],
    &["http.response.code"],
    &["http.content_length_header"],
    &["http.file_data.len", "http.content_length"],
];

pub(super) fn run() -> Result<()> {
    let root = process::workspace_root();
    let capture = root.join(CAPTURE);
    let calls = ensure_capture(&capture, &root.join(CALLS_SIDECAR))?;
    let bytes = read_sequentially(&capture)?; // also warms the page cache

    println!("offline: timing, best of {RUNS}, page cache warm");
    let floor = best_of(RUNS, || read_sequentially(&capture).map(drop))?;
    let daemon = compile::daemon_binary(Profile::Release);
    let no_records = Path::new("/dev/null");
    let analyze = best_of(RUNS, || {
        run_silently(&mut analyze_command(&daemon, &capture, no_records))
    })?;
    let fields = tshark_fields()?;
    let tshark = best_of(RUNS, || {
        run_silently(&mut tshark_command(&capture, &fields))
    })?;
    let found = calls_found_by_analyze(&daemon, &capture)?;

    let rows = [
        Row::new("floor (sequential read)", floor, bytes, calls),
        Row::new("redcap-monitor analyze", analyze, bytes, calls),
        Row::new("tshark (same fields)", tshark, bytes, calls),
    ];
    let analyze_over_floor = analyze.as_secs_f64() / floor.as_secs_f64();
    let tshark_over_analyze = tshark.as_secs_f64() / analyze.as_secs_f64();

    println!(
        "offline: {CAPTURE}: {:.1} MB, {calls} API calls generated, {found} found by analyze{}",
        bytes as f64 / 1e6,
        if found == calls {
            ""
        } else {
            " (MISMATCH: the timing may not measure the whole job)"
        }
    );
    println!(
        "  {:<26} {:>9} {:>9} {:>11}",
        "", "wall s", "MB/s", "calls/s"
    );
    for row in &rows {
        println!(
            "  {:<26} {:>9.3} {:>9.1} {:>11.0}",
            row.name, row.wall_s, row.mb_per_s, row.calls_per_s
        );
    }
    println!(
        "  analyze / floor  {analyze_over_floor:>6.2}x  goal: at most {GOAL_ANALYZE_OVER_FLOOR}x  {}",
        verdict(analyze_over_floor <= GOAL_ANALYZE_OVER_FLOOR)
    );
    println!(
        "  tshark / analyze {tshark_over_analyze:>6.1}x  goal: at least {GOAL_TSHARK_OVER_ANALYZE}x  {}",
        verdict(tshark_over_analyze >= GOAL_TSHARK_OVER_ANALYZE)
    );
    if fields.len() < TSHARK_FIELDS.len() || fields.iter().any(|f| f == "http.content_length") {
        println!("  tshark fields used: {}", fields.join(" "));
    }

    let report = output_path("offline.json")?;
    write_report(
        &report,
        &report_json(
            bytes,
            calls,
            found,
            &rows,
            &fields,
            analyze_over_floor,
            tshark_over_analyze,
        ),
    )?;
    println!("  written to {}", process::shown(&report));
    Ok(())
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

/// Generates the capture unless it and its call count are already there; returns the count.
fn ensure_capture(capture: &Path, sidecar: &Path) -> Result<u64> {
    let size = fs::metadata(capture).map(|meta| meta.len()).unwrap_or(0);
    if size >= MIN_BYTES
        && let Some(calls) = fs::read_to_string(sidecar)
            .ok()
            .and_then(|s| parse_calls(&s))
    {
        println!(
            "offline: reusing {CAPTURE} ({:.1} MB, {calls} calls)",
            size as f64 / 1e6
        );
        return Ok(calls);
    }
    println!("offline: generating {CAPTURE} (at least {MIN_BYTES} bytes; once, then reused)");
    if let Some(dir) = capture.parent() {
        fs::create_dir_all(dir)
            .map_err(|err| Failure::new(format!("cannot create {}: {err}", dir.display())))?;
    }
    // The sidecar marks a finished capture: remove it first so an interrupted run regenerates.
    let _ = fs::remove_file(sidecar);
    let mut synth = process::cargo();
    synth
        .args([
            "run",
            "--release",
            "-p",
            "monitor-tests",
            "--bin",
            "synth-capture",
            "--",
        ])
        .arg("--out")
        .arg(capture)
        .args(["--min-bytes", &MIN_BYTES.to_string()])
        .stderr(Stdio::inherit());
    let output = process::output(&mut synth)?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    print!("{stdout}");
    if !output.status.success() {
        return Err(Failure::new(format!(
            "`{}` failed ({})",
            process::describe(&synth),
            output.status
        )));
    }
    let calls = parse_calls(&stdout).ok_or_else(|| {
        Failure::new("synth-capture did not print `calls=N` on stdout; cannot report calls/s")
    })?;
    let size = fs::metadata(capture).map(|meta| meta.len()).unwrap_or(0);
    if size < MIN_BYTES {
        return Err(Failure::new(format!(
            "synth-capture wrote {size} bytes to {CAPTURE}, less than the {MIN_BYTES} asked for"
        )));
    }
    fs::write(sidecar, format!("calls={calls}\n"))
        .map_err(|err| Failure::new(format!("cannot write {}: {err}", sidecar.display())))?;
    Ok(calls)
}

/// The last `calls=N` line in synth-capture's stdout.
fn parse_calls(stdout: &str) -> Option<u64> {
    stdout
        .lines()
        .rev()
        .find_map(|line| line.trim().strip_prefix("calls="))
        .and_then(|n| n.trim().parse().ok())
}

/// The floor: read the whole file in 1 MiB chunks into one buffer and discard it.
fn read_sequentially(path: &Path) -> Result<u64> {
    let fail = |err: std::io::Error| Failure::new(format!("cannot read {}: {err}", path.display()));
    let mut file = File::open(path).map_err(fail)?;
    let mut buffer = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        match file.read(&mut buffer).map_err(fail)? {
            0 => return Ok(total),
            n => total += n as u64,
        }
    }
}

/// `analyze` writing its call records to `calls` and its violations nowhere.
fn analyze_command(daemon: &Path, capture: &Path, calls: &Path) -> Command {
    let root = process::workspace_root();
    let mut command = Command::new(daemon);
    command
        .current_dir(root)
        .arg("analyze")
        .arg(capture)
        .arg("--key")
        .arg(root.join(KEY))
        .arg("--calls")
        .arg(calls)
        .args(["--violations", "/dev/null"]);
    command
}

/// One untimed run that writes the call records, to check that the timed runs did the whole job
/// (a fast analyze that misses calls proves nothing).
fn calls_found_by_analyze(daemon: &Path, capture: &Path) -> Result<u64> {
    let records = output_path("offline-calls.jsonl")?;
    run_silently(&mut analyze_command(daemon, capture, &records))?;
    let bytes = fs::read(&records).unwrap_or_default();
    Ok(bytes.iter().filter(|&&byte| byte == b'\n').count() as u64)
}

fn tshark_command(capture: &Path, fields: &[String]) -> Command {
    let mut command = Command::new("tshark");
    command
        .arg("-r")
        .arg(capture)
        .arg("-n")
        .args(["-o", "tcp.desegment_tcp_streams:TRUE"])
        .args(["-o", "http.desegment_body:TRUE"])
        .args(["-o", "http.decompress_body:TRUE"])
        .args(["-Y", r#"http.request.method == "POST" || http.response"#])
        .args(["-T", "fields"]);
    for field in fields {
        command.args(["-e", field]);
    }
    command
}

/// For each wanted field, the first name this tshark knows (`tshark -G fields`); duplicates
/// and fields it has no equivalent for are left out.
fn tshark_fields() -> Result<Vec<String>> {
    let output = process::output(Command::new("tshark").args(["-G", "fields"]))?;
    if !output.status.success() {
        return Err(Failure::new(format!(
            "`tshark -G fields` failed ({})",
            output.status
        )));
    }
    let listing = String::from_utf8_lossy(&output.stdout);
    let known: std::collections::HashSet<&str> = listing
        .lines()
        .filter_map(|line| {
            let mut columns = line.split('\t');
            (columns.next() == Some("F")).then_some(())?;
            columns.nth(1)
        })
        .collect();
    Ok(choose_fields(&known))
}

fn choose_fields(known: &std::collections::HashSet<&str>) -> Vec<String> {
    let mut chosen: Vec<String> = Vec::new();
    for candidates in TSHARK_FIELDS {
        match candidates.iter().find(|name| known.contains(*name)) {
            Some(name) if !chosen.iter().any(|c| c == name) => chosen.push((*name).to_owned()),
            Some(_) => {}
            None => println!(
                "offline: tshark has none of {}; leaving it out",
                candidates.join(", ")
            ),
        }
    }
    chosen
}

/// One line of the table.
struct Row {
    name: &'static str,
    wall_s: f64,
    mb_per_s: f64,
    calls_per_s: f64,
}

impl Row {
    fn new(name: &'static str, wall: Duration, bytes: u64, calls: u64) -> Self {
        let wall_s = wall.as_secs_f64();
        Row {
            name,
            wall_s,
            mb_per_s: bytes as f64 / 1e6 / wall_s,
            calls_per_s: calls as f64 / wall_s,
        }
    }

    fn json(&self) -> String {
        format!(
            "{{\"wall_s\": {}, \"mb_per_s\": {}, \"calls_per_s\": {}}}",
            json_number(self.wall_s),
            json_number(self.mb_per_s),
            json_number(self.calls_per_s)
        )
    }
}

fn report_json(
    bytes: u64,
    calls: u64,
    found: u64,
    rows: &[Row; 3],
    fields: &[String],
    analyze_over_floor: f64,
    tshark_over_analyze: f64,
) -> String {
    let [floor, analyze, tshark] = rows;
    let fields: Vec<String> = fields.iter().map(|f| json_string(f)).collect();
    format!(
        "{{\n  \"bench\": \"offline\",\n  \"capture\": {capture},\n  \"bytes\": {bytes},\n  \
         \"calls\": {calls},\n  \"calls_found_by_analyze\": {found},\n  \"runs\": {RUNS},\n  \"floor\": {floor},\n  \
         \"analyze\": {analyze},\n  \"tshark\": {tshark},\n  \"tshark_fields\": [{fields}],\n  \
         \"analyze_over_floor\": {aof},\n  \"tshark_over_analyze\": {toa},\n  \
         \"goal_analyze_over_floor_max\": {GOAL_ANALYZE_OVER_FLOOR:?},\n  \
         \"goal_tshark_over_analyze_min\": {GOAL_TSHARK_OVER_ANALYZE:?}\n}}\n",
        capture = json_string(CAPTURE),
        floor = floor.json(),
        analyze = analyze.json(),
        tshark = tshark.json(),
        fields = fields.join(", "),
        aof = json_number(analyze_over_floor),
        toa = json_number(tshark_over_analyze),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_calls_takes_the_last_calls_line() {
        assert_eq!(parse_calls("progress\ncalls=12\ncalls=345\n"), Some(345));
        assert_eq!(parse_calls("no count here\n"), None);
        assert_eq!(parse_calls("calls=lots\n"), None);
    }

    #[test]
    fn choose_fields_falls_back_to_the_nearest_equivalent_once() {
        let known: std::collections::HashSet<&str> = [
            "frame.time_epoch",
            "tcp.stream",
            "http.request.method",
            "http.request.uri",
            "urlencoded-form.key",
            "urlencoded-form.value",
            "http.response.code",
            "http.content_length_header",
            "http.content_length",
        ]
        .into_iter()
        .collect();
        let chosen = choose_fields(&known);
        assert_eq!(chosen.len(), 9);
        assert_eq!(
            chosen.last().map(String::as_str),
            Some("http.content_length")
        );
    }

    #[test]
    fn report_json_is_one_object_with_every_measure() {
        let second = Duration::from_secs(1);
        let rows = [
            Row::new("floor", second, 2_000_000, 10),
            Row::new("analyze", second * 2, 2_000_000, 10),
            Row::new("tshark", second * 60, 2_000_000, 10),
        ];
        let json = report_json(
            2_000_000,
            10,
            10,
            &rows,
            &["tcp.stream".to_owned()],
            2.0,
            30.0,
        );
        assert!(json.starts_with('{') && json.trim_end().ends_with('}'));
        assert!(json.contains("\"analyze\": {\"wall_s\": 2, \"mb_per_s\": 1, \"calls_per_s\": 5}"));
        assert!(json.contains("\"tshark_fields\": [\"tcp.stream\"]"));
        assert!(json.contains("\"goal_tshark_over_analyze_min\": 30.0"));
    }
}
