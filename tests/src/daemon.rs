//! The daemon as a black box: find the `redcap-monitor` binary, run `analyze` and
//! `fingerprint`, and parse the calls/violations JSONL into structs that mirror the contract
//! (unknown fields are accepted: the daemon may add some).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

/// One line of `analyze --calls` (the README's "Call records").
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct CallRecord {
    pub ts_start: f64,
    pub ts_end: f64,
    pub ttfb_s: Option<f64>,
    pub client: String,
    pub server: String,
    pub method: String,
    pub path: String,
    /// "1.0", "1.1" or "2".
    pub http_version: String,
    pub token_fp: Option<String>,
    pub token_masked: Option<String>,
    pub token_problem: Option<String>,
    pub content: Option<String>,
    pub action: Option<String>,
    pub format: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub return_format: Option<String>,
    pub data_bytes: Option<u64>,
    pub records: u64,
    pub fields: u64,
    pub report_id: Option<String>,
    pub filter_logic: bool,
    pub date_range_begin: Option<String>,
    pub date_range_end: Option<String>,
    pub return_metadata_only: Option<bool>,
    pub export_files: Option<bool>,
    pub all_records: Option<bool>,
    pub status: Option<u16>,
    pub request_bytes: u64,
    pub response_bytes: Option<u64>,
    pub response_wire_bytes: Option<u64>,
    pub heavy: Option<String>,
    pub complete: bool,
    #[serde(default)]
    pub body_problem: Option<String>,
    pub transport: String,
}

impl CallRecord {
    /// The client's TCP port (from `client`, "ip:port" or "[v6]:port").
    pub fn client_port(&self) -> Option<u16> {
        self.client.rsplit(':').next()?.parse().ok()
    }
}

/// One line of `analyze --violations` (the README's "Violation records"): a token's, or, with
/// `token_fp` null and `client` set, a client probing with refused tokens.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ViolationRecord {
    pub ts: f64,
    pub token_fp: Option<String>,
    #[serde(default)]
    pub client: Option<String>,
    pub rule: String,
    pub limit: u64,
    pub window_s: u64,
    pub count: u64,
}

/// Everything one `analyze` run produced, for tests that also inspect the raw text.
#[derive(Debug, Clone)]
pub struct Analysis {
    pub calls: Vec<CallRecord>,
    pub violations: Vec<ViolationRecord>,
    pub stdout: String,
    pub stderr: String,
    pub calls_text: String,
    pub violations_text: String,
}

/// The JSON objects of a JSONL text (calls, violations, decisions); panics on a bad line.
pub fn jsonl(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSONL {l}: {e}")))
        .collect()
}

/// `$REDCAP_MONITOR_BIN`, else `<workspace>/target/debug/redcap-monitor`.
pub fn monitor_bin() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("REDCAP_MONITOR_BIN") {
        let bin = PathBuf::from(bin);
        if !bin.is_file() {
            bail!("REDCAP_MONITOR_BIN={} is not a file", bin.display());
        }
        return Ok(bin);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::workspace_root().join("target"));
    let bin = target.join("debug").join("redcap-monitor");
    if !bin.is_file() {
        bail!(
            "{} is missing: build it with `cargo build -p monitor-daemon` (or `cargo xtask test`), \
             or point REDCAP_MONITOR_BIN at a redcap-monitor binary",
            bin.display()
        );
    }
    Ok(bin)
}

/// `redcap-monitor analyze CAPTURE --key KEY --calls .. --violations ..` with the default policy.
pub fn analyze(capture: &Path, key: &Path) -> Result<(Vec<CallRecord>, Vec<ViolationRecord>)> {
    let a = analyze_full(capture, key, None)?;
    Ok((a.calls, a.violations))
}

/// `analyze` with an optional `--config`, keeping stdout/stderr and the output files' text.
pub fn analyze_full(capture: &Path, key: &Path, config: Option<&Path>) -> Result<Analysis> {
    let dir = tempfile::tempdir()?;
    let calls_path = dir.path().join("calls.jsonl");
    let violations_path = dir.path().join("violations.jsonl");
    let mut cmd = Command::new(monitor_bin()?);
    cmd.arg("analyze")
        .arg(capture)
        .arg("--key")
        .arg(key)
        .arg("--calls")
        .arg(&calls_path)
        .arg("--violations")
        .arg(&violations_path);
    if let Some(config) = config {
        cmd.arg("--config").arg(config);
    }
    let out = cmd.output().context("running redcap-monitor analyze")?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        bail!(
            "redcap-monitor analyze {} exited with {}: {stderr}",
            capture.display(),
            out.status
        );
    }
    let read = |path: &Path, flag: &str| {
        std::fs::read_to_string(path).with_context(|| {
            format!("redcap-monitor analyze exited 0 but wrote no {flag} file (is `analyze` implemented?)")
        })
    };
    let calls_text = read(&calls_path, "--calls")?;
    let violations_text = read(&violations_path, "--violations")?;
    Ok(Analysis {
        calls: parse_jsonl(&calls_text).context("calls output")?,
        violations: parse_jsonl(&violations_text).context("violations output")?,
        stdout,
        stderr,
        calls_text,
        violations_text,
    })
}

fn parse_jsonl<T: for<'de> Deserialize<'de>>(text: &str) -> Result<Vec<T>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).with_context(|| format!("bad JSONL line: {l}")))
        .collect()
}

/// The fingerprint `analyze` reports for `token` under `key`.
pub fn fingerprint(key: &Path, token: &str) -> Result<String> {
    let mut fps = fingerprints(key, &[token])?;
    fps.pop().context("fingerprint printed nothing")
}

/// Fingerprints of several tokens in one run, in order.
pub fn fingerprints(key: &Path, tokens: &[&str]) -> Result<Vec<String>> {
    let mut child = Command::new(monitor_bin()?)
        .arg("fingerprint")
        .arg("--key")
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running redcap-monitor fingerprint")?;
    {
        let mut stdin = child.stdin.take().context("fingerprint stdin")?;
        for token in tokens {
            writeln!(stdin, "{token}")?;
        }
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "redcap-monitor fingerprint exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let fps: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    if fps.len() != tokens.len() {
        bail!(
            "fingerprint printed {} lines for {} tokens",
            fps.len(),
            tokens.len()
        );
    }
    Ok(fps)
}

/// `redcap-monitor run` as a child process (inside a network namespace when given); stopped
/// with SIGTERM by [`LiveDaemon::stop`], killed on drop.
pub struct LiveDaemon {
    child: Option<std::process::Child>,
    stderr: Option<std::thread::JoinHandle<String>>,
    /// Everything logged so far, while the daemon runs.
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl LiveDaemon {
    /// Starts `run --config CONFIG --key KEY` and returns once it says which capture it uses.
    pub fn start(netns: Option<&str>, config: &Path, key: &Path) -> Result<LiveDaemon> {
        LiveDaemon::start_with_env(netns, config, key, &[])
    }

    /// [`start`](Self::start) with extra environment variables (e.g. `NOTIFY_SOCKET`).
    pub fn start_with_env(
        netns: Option<&str>,
        config: &Path,
        key: &Path,
        env: &[(&str, &str)],
    ) -> Result<LiveDaemon> {
        let mut command = daemon_command(netns, &[])?;
        command
            .arg("run")
            .arg("--config")
            .arg(config)
            .arg("--key")
            .arg(key)
            .envs(env.iter().copied());
        let daemon = LiveDaemon::spawn(command)?;
        let mounts =
            std::fs::read_to_string(format!("/proc/{}/mountinfo", daemon.pid().unwrap_or(0)))
                .unwrap_or_default();
        if !mounts
            .lines()
            .any(|l| l.split_whitespace().nth(4) == Some(MODULE_RUN_DIR) && l.contains(" - tmpfs "))
        {
            bail!("the test daemon writes to the host's {MODULE_RUN_DIR}:\n{mounts}");
        }
        Ok(daemon)
    }

    /// Runs `command`, which must exec `redcap-monitor run …` in the end (so that its pid is the
    /// daemon's: e.g. through `ip netns exec`, `unshare`, `setpriv`), and returns once the
    /// daemon says which capture it uses.
    pub fn spawn(mut command: Command) -> Result<LiveDaemon> {
        use std::io::{BufRead, BufReader};
        command
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().context("starting redcap-monitor run")?;
        let stderr = child.stderr.take().context("daemon stderr")?;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let shared = log.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("capturing with") {
                    let _ = ready_tx.send(());
                }
                let mut text = shared.lock().unwrap_or_else(|e| e.into_inner());
                text.push_str(&line);
                text.push('\n');
            }
            shared.lock().unwrap_or_else(|e| e.into_inner()).clone()
        });
        let mut daemon = LiveDaemon {
            child: Some(child),
            stderr: Some(reader),
            log,
        };
        if ready_rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .is_err()
        {
            let (status, text) = daemon.stop()?;
            bail!("redcap-monitor run did not start capturing ({status}): {text}");
        }
        Ok(daemon)
    }

    /// SIGKILL (`kill -9`: no cleanup, no flush), then waits; returns everything it logged.
    pub fn kill_9(&mut self) -> Result<String> {
        let mut child = self.child.take().context("daemon already stopped")?;
        child.kill().context("killing redcap-monitor run")?;
        child.wait().context("waiting for redcap-monitor run")?;
        Ok(self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default())
    }

    /// The daemon's process id (`ip netns exec` execs it, so this is the daemon's own).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Sends `signal` (e.g. "HUP") with kill(1).
    pub fn signal(&self, signal: &str) -> Result<()> {
        let pid = self.pid().context("daemon already stopped")?;
        let status = Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -{signal} {pid} failed: {status}");
        }
        Ok(())
    }

    /// Everything the daemon logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits until the log holds `needle` at least `times` times; fails with the log after
    /// `timeout`.
    pub fn wait_for_log(
        &self,
        needle: &str,
        times: usize,
        timeout: std::time::Duration,
    ) -> Result<String> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let log = self.log();
            if log.matches(needle).count() >= times {
                return Ok(log);
            }
            if std::time::Instant::now() > deadline {
                bail!(
                    "the daemon did not log {needle:?} {times} time(s) within {timeout:?}:\n{log}"
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// SIGTERM, then waits; returns the exit status and everything it logged.
    pub fn stop(&mut self) -> Result<(std::process::ExitStatus, String)> {
        let mut child = self.child.take().context("daemon already stopped")?;
        let status = crate::sim::terminate(&mut child, std::time::Duration::from_secs(60));
        let text = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        match status {
            Ok(status) => Ok((status, text)),
            Err(hung) => bail!("redcap-monitor run did not stop on SIGTERM: {hung}\n{text}"),
        }
    }
}

impl Drop for LiveDaemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Configuration text that turns off the daemon's metrics and admin listener (`[api]`, which binds
/// a fixed default port), so that tests running daemons side by side do not compete for it; empty
/// for a daemon without that listener. Asked of the daemon itself (`check-config`), once.
pub fn without_api_listener() -> &'static str {
    static TEXT: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
    const OFF: &str = "[api]\nenabled = false\n";
    TEXT.get_or_init(|| {
        let Ok(dir) = tempfile::tempdir() else {
            return "";
        };
        let probe = dir.path().join("api.toml");
        let known = std::fs::write(&probe, OFF).is_ok()
            && monitor_bin().is_ok_and(|bin| {
                Command::new(bin)
                    .arg("check-config")
                    .arg(&probe)
                    .output()
                    .is_ok_and(|out| out.status.success())
            });
        if known { OFF } else { "" }
    })
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// Fails naming the place when any of `written` (what, bytes) holds one of `tokens` whole,
/// lower-cased, or its first 20 characters.
pub fn assert_no_raw_token(written: &[(String, Vec<u8>)], tokens: &[&str]) {
    for (what, bytes) in written {
        for token in tokens {
            for form in [
                token.to_string(),
                token.to_lowercase(),
                token[..20].to_string(),
            ] {
                assert!(
                    !bytes.windows(form.len()).any(|w| w == form.as_bytes()),
                    "{what} holds (part of) a raw token"
                );
            }
        }
    }
}

/// `redcap-monitor CMD --store STORE --json ...`: its JSON lines (the command must succeed;
/// its output is in the panic message otherwise).
pub fn admin_json(store: &Path, args: &[&str]) -> Vec<serde_json::Value> {
    let out = Command::new(monitor_bin().unwrap())
        .args(args)
        .arg("--store")
        .arg(store)
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The non-empty lines of a file the daemon writes (none while it does not exist yet).
pub fn file_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(String::from)
        .collect()
}

/// The daemon's stats file `DIR/stats.json` (`null` while it is missing or half written).
pub fn stats_json(dir: &Path) -> serde_json::Value {
    std::fs::read_to_string(dir.join("stats.json"))
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// The External Module's default directory's parent, which every test daemon without its own
/// `[redcap_module] dir` would write to: the host's.
const MODULE_RUN_DIR: &str = "/run/redcap-monitor";

/// `[ip netns exec NS] unshare --mount … [BEFORE…] redcap-monitor`, to which the caller adds the
/// command's arguments: the daemon in a private mount namespace where `/run/redcap-monitor` is
/// an empty tmpfs of its own, so that a test daemon without its own `[redcap_module] dir`
/// publishes its list there and not in the host's directory (which a REDCap on the same host
/// would read). Every step execs the next: the child's pid is the daemon's. `before` runs
/// between (e.g. `setpriv ARGS`).
pub fn daemon_command(netns: Option<&str>, before: &[&str]) -> Result<Command> {
    let mut command = crate::netns::command_in(netns, "unshare");
    command
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "mkdir -p {MODULE_RUN_DIR} && mount -t tmpfs -o mode=0755 tmpfs {MODULE_RUN_DIR} \
             && exec \"$@\""
        ))
        .arg("private-run")
        .args(before)
        .arg(monitor_bin()?);
    Ok(command)
}

/// `setpriv ARGS redcap-monitor run --config CONFIG --key KEY` (util-linux): the daemon with
/// changed credentials or capability sets, execed by setpriv so that its pid is the daemon's;
/// start it with [`LiveDaemon::spawn`], or run it to its end.
pub fn setpriv_run(setpriv_args: &[&str], config: &Path, key: &Path) -> Result<Command> {
    let mut before = vec!["setpriv"];
    before.extend_from_slice(setpriv_args);
    let mut command = daemon_command(None, &before)?;
    command
        .args(["run", "--config"])
        .arg(config)
        .arg("--key")
        .arg(key)
        .env("NO_COLOR", "1");
    Ok(command)
}

/// Writes `DIR/tls.toml` for a daemon reading `interface` with the TC probe (ports 80 and 443)
/// and the TLS uprobes of `process`, with calls in `DIR/calls.jsonl`, stats each second in
/// `DIR/stats.json` and its store in `DIR/state.redb`; returns the configuration's path.
pub fn tls_capture_config(dir: &Path, interface: &str, process: &str) -> PathBuf {
    let config = dir.join("tls.toml");
    // 443 is a TC port too: the classifier sees only ciphertext there and must not add calls.
    std::fs::write(
        &config,
        format!(
            "[capture]\nmode = \"ebpf\"\ninterfaces = [\"{interface}\"]\nports = [80, 443]\n\
             [capture.tls]\nenabled = true\nprocesses = [\"{process}\"]\nrescan_interval = \"1s\"\n\
             [output]\ncalls = \"{}\"\nstats = \"{}\"\nstats_interval = \"1s\"\n\
             [store]\npath = \"{}\"\n",
            dir.join("calls.jsonl").display(),
            dir.join("stats.json").display(),
            dir.join("state.redb").display()
        ),
    )
    .expect("writing the daemon's configuration");
    config
}
