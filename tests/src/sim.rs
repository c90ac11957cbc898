//! Handle on the REDCap API simulator (`python/redcap_sim.py`): start it on a free loopback
//! port, read its request log (the ground truth of what went over the wire), kill it on drop.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

/// How the simulator is started.
#[derive(Debug, Clone, Default)]
pub struct SimOptions {
    /// Tokens the simulator accepts (matched case-insensitively, as REDCap does).
    pub tokens: Vec<String>,
    /// Project size in records per token (others get the simulator's default, 40).
    pub project_sizes: Vec<(String, usize)>,
    /// Bytes of a file export (default 30000).
    pub file_size: Option<usize>,
    /// Where the JSONL request log goes; required to call `log()`.
    pub log: Option<PathBuf>,
    /// Network namespace to run in (`ip netns exec`); default the test's own.
    pub netns: Option<String>,
    /// Address to listen on (default 127.0.0.1).
    pub bind: Option<String>,
    /// Port to listen on (default: a free one).
    pub port: Option<u16>,
}

/// One request the simulator answered (one line of its `--log`).
#[derive(Debug, Clone, Deserialize)]
pub struct SimRecord {
    pub method: String,
    pub path: String,
    pub client_port: u16,
    pub user_agent: Option<String>,
    /// The request asked `Expect: 100-continue` (the simulator answered 100 first).
    pub expect_continue: bool,
    /// True for a POST to an API path: the requests the monitor must report.
    pub api: bool,
    /// The raw token as received (a test secret, never a real one).
    pub token: Option<String>,
    pub content: Option<String>,
    pub action: Option<String>,
    pub format: Option<String>,
    #[serde(rename = "returnFormat")]
    pub return_format: Option<String>,
    pub status: u16,
    pub body_bytes: u64,
    pub wire_bytes: u64,
    pub gzip: bool,
    pub chunked: bool,
    pub request_body_bytes: u64,
}

/// A running simulator; killed when dropped.
pub struct Simulator {
    child: Child,
    port: u16,
    log: Option<PathBuf>,
}

impl Simulator {
    pub fn start(opts: &SimOptions) -> Result<Simulator> {
        let script = crate::python_dir().join("redcap_sim.py");
        let mut cmd = crate::netns::command_in(opts.netns.as_deref(), "python3");
        let port = opts.port.unwrap_or(0).to_string();
        cmd.arg(&script)
            .args(["--port", &port, "--tokens", &opts.tokens.join(",")]);
        if let Some(bind) = &opts.bind {
            cmd.arg("--bind").arg(bind);
        }
        for (token, n) in &opts.project_sizes {
            cmd.arg("--project-size").arg(format!("{token}={n}"));
        }
        if let Some(size) = opts.file_size {
            cmd.arg("--file-size").arg(size.to_string());
        }
        if let Some(log) = &opts.log {
            cmd.arg("--log").arg(log);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting python3 {}", script.display()))?;
        let stdout = child.stdout.take().context("simulator stdout")?;
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .context("reading the simulator's first line")?;
        let port = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|p| p.parse().ok());
        let Some(port) = port else {
            let _ = child.kill();
            bail!("simulator did not start (first line {line:?})");
        };
        Ok(Simulator {
            child,
            port,
            log: opts.log.clone(),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Every request answered so far, in answer order.
    pub fn log(&self) -> Result<Vec<SimRecord>> {
        let path = self
            .log
            .as_deref()
            .context("simulator started without a log")?;
        read_log(path)
    }

    /// The API requests answered, once their number has stopped changing for 300 ms (the
    /// clients are done and the log is written).
    pub fn settled_api(&self) -> Result<Vec<SimRecord>> {
        let api = || -> Result<Vec<SimRecord>> {
            Ok(self.log()?.into_iter().filter(|r| r.api).collect())
        };
        let mut last = api()?;
        loop {
            std::thread::sleep(Duration::from_millis(300));
            let now = api()?;
            if now.len() == last.len() {
                return Ok(now);
            }
            last = now;
        }
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads a simulator JSONL log.
pub fn read_log(path: &Path) -> Result<Vec<SimRecord>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).with_context(|| format!("simulator log line {l}")))
        .collect()
}

/// Waits until `done` holds or `timeout` passes; true when it held.
pub fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    done()
}

/// Sends SIGTERM to `child` and reaps it. A child still running `within` after is killed
/// (SIGKILL) and reaped, and the result says so: a test must not hang on a process that
/// ignores its signal (CI once waited 90 minutes on a tracer that blocked SIGTERM).
pub fn terminate(
    child: &mut Child,
    within: Duration,
) -> std::result::Result<std::process::ExitStatus, String> {
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let mut status = None;
    wait_until(within, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    match status {
        Some(status) => Ok(status),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            Err(format!(
                "pid {} was still running {within:?} after SIGTERM and was killed",
                child.id()
            ))
        }
    }
}
