//! Real clients against a REDCap API: PyCap through `python/pycap_client.py`, and curl run the
//! way scripts and R's redcapAPI use it (keep-alive with `--next`, gzip, big urlencoded bodies
//! with `Expect: 100-continue`, multipart with the token last, lower-case tokens, non-API pages).

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

/// Which call set `pycap_client.py` runs (see its doc string).
#[derive(Debug, Clone, Copy)]
pub enum PycapSet {
    /// Every method the e2e test needs, plus one call with a wrong token.
    Full,
    /// Three requests: a compliant client.
    Light,
    /// `n` export_version calls in a row.
    Burst(usize),
    /// Two unfiltered record exports and a report.
    Heavy,
}

/// What PyCap did, as the client saw it.
#[derive(Debug, Clone, Deserialize)]
pub struct PycapManifest {
    pub calls: Vec<PycapCall>,
    pub requests: Vec<PycapRequest>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PycapCall {
    pub call: String,
    pub ok: bool,
}

/// One HTTP request PyCap sent and the status it got.
#[derive(Debug, Clone, Deserialize)]
pub struct PycapRequest {
    pub content: Option<String>,
    pub action: Option<String>,
    pub format: Option<String>,
    pub status: u16,
    pub request_bytes: u64,
    pub response_bytes: u64,
}

/// Runs PyCap against `url` (must end in `/api/`, as PyCap insists).
pub fn run_pycap(url: &str, token: &str, set: PycapSet) -> Result<PycapManifest> {
    run_pycap_in(None, url, token, set)
}

/// [`run_pycap`] inside network namespace `netns` (`ip netns exec`), when given.
pub fn run_pycap_in(
    netns: Option<&str>,
    url: &str,
    token: &str,
    set: PycapSet,
) -> Result<PycapManifest> {
    let script = crate::python_dir().join("pycap_client.py");
    let mut cmd = crate::netns::command_in(netns, "python3");
    cmd.arg(&script).arg(url).arg(token);
    match set {
        PycapSet::Full => cmd.args(["--set", "full"]),
        PycapSet::Light => cmd.args(["--set", "light"]),
        PycapSet::Heavy => cmd.args(["--set", "heavy"]),
        PycapSet::Burst(n) => cmd.args(["--set", "burst", "--burst", &n.to_string()]),
    };
    let out = cmd
        .output()
        .context("running pycap_client.py (is PyCap installed? `cargo xtask setup`)")?;
    if !out.status.success() {
        bail!(
            "pycap_client.py failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).context("pycap_client.py manifest")
}

/// A urlencoded body of at least `min_bytes`, PyCap-style (`fields[i]=...`), token first.
pub fn big_urlencoded_body(token: &str, min_bytes: usize) -> String {
    let mut body = format!("token={token}&content=record&format=json&type=flat");
    let mut i = 0;
    while body.len() < min_bytes {
        body.push_str(&format!("&fields%5B{i}%5D=field_{i}"));
        i += 1;
    }
    body
}

/// The curl set: one keep-alive invocation with several API and non-API requests, then
/// separate invocations for multipart (token last) and a lower-case token. `dir` holds the
/// big request body file. Returns the number of API requests made (for cross-checks).
#[rustfmt::skip]
pub fn run_curl_set(base: &str, token: &str, dir: &Path) -> Result<usize> {
    run_curl_set_in(None, base, token, dir)
}

/// [`run_curl_set`] inside network namespace `netns`, when given.
#[rustfmt::skip]
pub fn run_curl_set_in(netns: Option<&str>, base: &str, token: &str, dir: &Path) -> Result<usize> {
    let curl = |args: &[&str]| curl_in(netns, args);
    let api = format!("{base}/redcap/api/");
    let big = dir.join("big-body.txt");
    std::fs::write(&big, big_urlencoded_body(token, 80 * 1024))?;
    let big_arg = format!("@{}", big.display());
    let tok = format!("token={token}");
    let lower = format!("token={}", token.to_lowercase());
    let sink = "/dev/null";

    let login = format!("{base}/redcap/index.php");
    // One TCP connection: curl reuses it across `--next` for the same host.
    curl(&[
        "-sS", "-o", sink, "--compressed", &api, "-d", &tok, "-d", "content=version",
        "--next", "-o", sink, "--compressed", &api, "-d", &tok, "-d", "content=record",
        "-d", "format=json", "-d", "records[0]=1", "-d", "records[1]=2",
        "--next", "-o", sink, "--compressed", "-H", "Expect: 100-continue", &api,
        "--data-binary", &big_arg,
        "--next", "-o", sink, base,
        "--next", "-o", sink, "-d", "username=alice&password=x", &login,
        "--next", "-o", sink, "--compressed", &api, "-d", "token=0000000000000000000000000000DEAD",
        "-d", "content=record", "-d", "format=csv",
    ])?;

    // redcapAPI style: multipart, token last, no gzip, the versioned API path.
    let versioned = format!("{base}/redcap/redcap_v15.7.6/API/index.php");
    let tok_form = format!("token={token}");
    curl(&[
        "-sS", "-o", sink, &versioned, "-F", "content=record", "-F", "format=json",
        "-F", "records[1]=3", "-F", "returnFormat=json", "-F", &tok_form,
    ])?;
    // A lower-case token (REDCap accepts it) on the short path, gzip.
    curl(&[
        "-sS", "-o", sink, "--compressed", &format!("{base}/api/"), "-d", &lower,
        "-d", "content=metadata", "-d", "format=json",
    ])?;
    // A non-API GET on its own connection.
    curl(&["-sS", "-o", sink, &format!("{base}/redcap/")])?;
    Ok(6)
}

/// Runs curl (inside `netns` when given) and fails on a non-zero exit.
pub fn curl_in(netns: Option<&str>, args: &[&str]) -> Result<()> {
    let out = crate::netns::command_in(netns, "curl")
        .args(args)
        .output()
        .context("running curl")?;
    if !out.status.success() {
        bail!(
            "curl failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// One API call with curl from this namespace: `content=version` with `token`, the answer
/// thrown away (the daemon under test sees the call; the test reads what it made of it).
pub fn api_call(url: &str, token: &str) {
    api_call_in(None, url, token, &[]);
}

/// [`api_call`] from namespace `ns`, with `extra` curl arguments (headers, a source address).
pub fn api_call_in(ns: Option<&str>, url: &str, token: &str, extra: &[&str]) {
    let body = format!("token={token}&content=version&format=json");
    let mut args = vec!["-sS", "-o", "/dev/null", "--max-time", "5"];
    args.extend_from_slice(extra);
    args.extend(["-d", &body, url]);
    curl_in(ns, &args).unwrap();
}
