//! Suspension hooks: tell other systems that a token was suspended or lifted.
//!
//! An `exec` hook runs a program (no shell) with an argument template and the event as JSON on
//! stdin, in its own process group that is killed at the timeout; an `http` hook POSTs the same
//! JSON. The raw token leaves only through an exec hook's stdin, and only when that hook says
//! `pass_raw_token = true`: never argv, the environment, an http body or a recorded outcome.
//! Running a hook blocks for up to its timeout; call from a thread that may wait.

mod config;

use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use zeroize::Zeroizing;

use crate::edges::alerts::TokenRef;
use crate::edges::alerts::time::rfc3339;
use crate::shared::model::{Span, Timestamp};
use crate::shared::settings::WebhookUrl;
use crate::shared::token::RawToken;
pub(crate) use config::{HookConfig, HookKind, HooksConfig};

/// Placeholders an exec hook's arguments may use.
pub(crate) const PLACEHOLDERS: [&str; 5] = ["fingerprint", "masked", "action", "until", "reason"];

/// Output recorded per stream; the rest is read and dropped so the program never blocks on a pipe.
const MAX_OUTPUT_BYTES: usize = 16 * 1024;
/// Read past the cut so that a token straddling it is still whole when it is scrubbed: the
/// scrub runs on the output as read, the cut after it.
const SCRUB_MARGIN: usize = crate::shared::token::MAX_TOKEN_BYTES;
/// After the program ends (or is killed), how long its output pipes may take to close.
const OUTPUT_GRACE: Duration = Duration::from_secs(1);
/// The whole environment an exec hook gets: the daemon's own is not passed on.
const HOOK_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum HookAction {
    Suspend,
    Lift,
    /// A token unused for longer than `lifecycle.stale_after`, to be revoked
    /// (`report lifecycle --revoke --execute`).
    TokenStale,
}

impl HookAction {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            HookAction::Suspend => "suspend",
            HookAction::Lift => "lift",
            HookAction::TokenStale => "token_stale",
        }
    }
}

/// What the hooks are told.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct HookEvent {
    pub(crate) action: HookAction,
    pub(crate) at: Timestamp,
    pub(crate) token: TokenRef,
    /// When the suspension ends; `None` for a lift or an open-ended suspension.
    pub(crate) until: Option<Timestamp>,
    pub(crate) reason: String,
    /// The decision's evidence (calls, windows, percentiles, shares).
    pub(crate) evidence: serde_json::Value,
}

/// What one hook did, for the audit log. Output is bounded and never holds the raw token.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub(crate) struct HookOutcome {
    pub(crate) hook: String,
    pub(crate) action: HookAction,
    pub(crate) duration_ms: u64,
    #[serde(flatten)]
    pub(crate) result: HookResult,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
    /// Output past the limit was dropped.
    pub(crate) output_truncated: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub(crate) enum HookResult {
    Exited {
        code: Option<i32>,
        signal: Option<i32>,
        success: bool,
    },
    /// Still running at the timeout: its process group was killed.
    TimedOut,
    FailedToStart {
        error: String,
    },
    Http {
        status: u16,
        success: bool,
    },
    HttpFailed {
        error: String,
    },
}

enum Target {
    Exec { program: PathBuf, args: Vec<String> },
    Http { url: WebhookUrl, agent: ureq::Agent },
}

struct Hook {
    name: String,
    target: Target,
    timeout: Span,
    pass_raw_token: bool,
}

/// The configured hooks, ready to run.
pub(crate) struct Hooks {
    suspend: Vec<Hook>,
    lift: Vec<Hook>,
    token_stale: Vec<Hook>,
    host: String,
}

impl Hooks {
    /// `config` has been checked ([`HooksConfig::problems`] found nothing).
    pub(crate) fn new(config: &HooksConfig, host: String) -> Hooks {
        let build = |hooks: &[HookConfig]| hooks.iter().filter_map(Hook::new).collect();
        Hooks {
            suspend: build(&config.suspend),
            lift: build(&config.lift),
            token_stale: build(&config.token_stale),
            host,
        }
    }

    /// Runs the hooks for `event.action`, in order, each to its end or timeout. `raw` is the
    /// token, if the caller still has it; only hooks with `pass_raw_token` see it.
    pub(crate) fn run(&self, event: &HookEvent, raw: Option<&RawToken>) -> Vec<HookOutcome> {
        let hooks = match event.action {
            HookAction::Suspend => &self.suspend,
            HookAction::Lift => &self.lift,
            HookAction::TokenStale => &self.token_stale,
        };
        let json = event_json(event, &self.host);
        hooks
            .iter()
            .map(|hook| {
                let started = Instant::now();
                let raw = raw.filter(|_| hook.pass_raw_token);
                let (result, output) = match &hook.target {
                    Target::Exec { program, args } => {
                        let stdin = stdin_body(&json, raw);
                        let args: Vec<String> = args.iter().map(|a| expand(a, event)).collect();
                        run_exec(program, &args, &stdin, hook.timeout)
                    }
                    Target::Http { url, agent } => (post(agent, url, &json), Output::default()),
                };
                let outcome = HookOutcome {
                    hook: hook.name.clone(),
                    action: event.action,
                    duration_ms: started.elapsed().as_millis().min(u128::from(u64::MAX)) as u64,
                    result,
                    stdout: scrubbed(&output.stdout, raw, MAX_OUTPUT_BYTES),
                    stderr: scrubbed(&output.stderr, raw, MAX_OUTPUT_BYTES),
                    output_truncated: output.truncated,
                };
                tracing::info!(hook = %outcome.hook, action = event.action.as_str(),
                    token_fp = %event.token.fingerprint, result = ?outcome.result, "hook ran");
                outcome
            })
            .collect()
    }
}

impl Hook {
    fn new(config: &HookConfig) -> Option<Hook> {
        let target = match config.kind {
            HookKind::Exec => Target::Exec {
                program: config.program.clone()?,
                args: config.args.clone(),
            },
            HookKind::Http => Target::Http {
                url: config.url.clone()?,
                agent: crate::edges::alerts::http_agent(config.timeout.span()),
            },
        };
        Some(Hook {
            name: config.name.clone(),
            target,
            timeout: config.timeout.span(),
            pass_raw_token: config.pass_raw_token && config.kind == HookKind::Exec,
        })
    }
}

/// Checks an argument template: `{name}` must be a known placeholder, `{{` and `}}` are literal
/// braces.
pub(crate) fn check_template(template: &str) -> Result<(), String> {
    let mut rest = template;
    while let Some(open) = rest.find(['{', '}']) {
        let after = &rest[open + 1..];
        if rest[open..].starts_with("{{") || rest[open..].starts_with("}}") {
            rest = &after[1..];
            continue;
        }
        if rest[open..].starts_with('}') {
            return Err(format!(
                "`{template}` has a `}}` without `{{` (write `}}}}`)"
            ));
        }
        let close = after
            .find('}')
            .ok_or_else(|| format!("`{template}` has a `{{` without `}}`"))?;
        let name = &after[..close];
        if !PLACEHOLDERS.contains(&name) {
            return Err(format!(
                "unknown placeholder `{{{name}}}`; known: {}",
                PLACEHOLDERS
                    .iter()
                    .map(|p| format!("{{{p}}}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        rest = &after[close + 1..];
    }
    Ok(())
}

/// Fills a checked template. Unknown text is left as written (validation has refused it).
fn expand(template: &str, event: &HookEvent) -> String {
    let mut out = String::with_capacity(template.len() + 32);
    let mut rest = template;
    while let Some(open) = rest.find(['{', '}']) {
        out.push_str(&rest[..open]);
        let tail = &rest[open..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            out.push_str(&tail[..1]);
            rest = &tail[2..];
            continue;
        }
        let Some(close) = tail.find('}').filter(|_| tail.starts_with('{')) else {
            out.push_str(tail);
            return out;
        };
        match &tail[1..close] {
            "fingerprint" => out.push_str(&event.token.fingerprint.to_string()),
            "masked" => {
                if let Some(masked) = &event.token.masked {
                    out.push_str(&masked.0);
                }
            }
            "action" => out.push_str(event.action.as_str()),
            "until" => {
                if let Some(until) = event.until {
                    out.push_str(&rfc3339(until));
                }
            }
            "reason" => out.push_str(&event.reason),
            _ => out.push_str(&tail[..=close]),
        }
        rest = &tail[close + 1..];
    }
    out.push_str(rest);
    out
}

fn event_json(event: &HookEvent, host: &str) -> String {
    json!({
        "action": event.action,
        "occurred_at": rfc3339(event.at),
        "ts": event.at.as_secs_f64(),
        "host": host,
        "token_fp": event.token.fingerprint,
        "token_masked": event.token.masked,
        "until": event.until.map(rfc3339),
        "until_ts": event.until.map(|u| u.as_secs_f64()),
        "reason": event.reason,
        "evidence": event.evidence,
    })
    .to_string()
}

/// The event JSON with `"raw_token"` spliced in when one is passed. Built in a buffer that is
/// zeroed on drop; the token is `[A-Z0-9]`, so it needs no JSON escaping.
fn stdin_body(json: &str, raw: Option<&RawToken>) -> Zeroizing<Vec<u8>> {
    let mut body = Zeroizing::new(Vec::with_capacity(json.len() + 160));
    match (raw, json.strip_suffix('}')) {
        (Some(raw), Some(open)) => {
            body.extend_from_slice(open.as_bytes());
            body.extend_from_slice(b",\"raw_token\":\"");
            body.extend_from_slice(raw.expose_for_hook());
            body.extend_from_slice(b"\"}");
        }
        _ => body.extend_from_slice(json.as_bytes()),
    }
    body.push(b'\n');
    body
}

/// Bounded output of a program.
#[derive(Default)]
struct Output {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    truncated: bool,
}

fn run_exec(
    program: &PathBuf,
    args: &[String],
    stdin: &Zeroizing<Vec<u8>>,
    timeout: Span,
) -> (HookResult, Output) {
    let started = Instant::now();
    let mut command = Command::new(program);
    command
        .args(args)
        .env_clear()
        .env("PATH", HOOK_PATH)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so that the timeout kills what it started too.
        .process_group(0);
    // SAFETY: between fork and exec the closure makes only raw syscalls (prctl, capset), which
    // are async-signal-safe, and touches no memory shared with other threads.
    let spawned = unsafe { command.pre_exec(drop_capabilities) }.spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(err) => {
            return (
                HookResult::FailedToStart {
                    error: format!("{}: {err}", program.display()),
                },
                Output::default(),
            );
        }
    };
    let (done_tx, done_rx) = mpsc::channel::<()>();
    if let Some(mut pipe) = child.stdin.take() {
        let body = Zeroizing::new(stdin.to_vec());
        let done = done_tx.clone();
        // A program that does not read its stdin must not block us: write on a thread.
        std::thread::spawn(move || {
            let _ = pipe.write_all(&body);
            drop(pipe);
            drop(done);
        });
    }
    let stdout = capture(child.stdout.take(), done_tx.clone());
    let stderr = capture(child.stderr.take(), done_tx);

    let deadline = started + Duration::from_nanos(timeout.0);
    let result = loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                break HookResult::Exited {
                    code: status.code(),
                    signal: status.signal(),
                    success: status.success(),
                };
            }
            Ok(None) if Instant::now() >= deadline => {
                kill_group(child.id());
                let _ = child.wait();
                break HookResult::TimedOut;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(err) => {
                kill_group(child.id());
                let _ = child.wait();
                break HookResult::FailedToStart {
                    error: format!("cannot wait for {}: {err}", program.display()),
                };
            }
        }
    };
    // Every thread holds a sender; all gone means all pipes closed. Processes that escaped the
    // group may keep a pipe open: then we take what was read so far and move on.
    let grace_end = Instant::now() + OUTPUT_GRACE;
    while let Some(left) = grace_end.checked_duration_since(Instant::now()) {
        match done_rx.recv_timeout(left) {
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            _ => continue,
        }
    }
    let (stdout, out_cut) = stdout.take();
    let (stderr, err_cut) = stderr.take();
    let truncated =
        out_cut || err_cut || stdout.len() > MAX_OUTPUT_BYTES || stderr.len() > MAX_OUTPUT_BYTES;
    (
        result,
        Output {
            stdout,
            stderr,
            truncated,
        },
    )
}

fn kill_group(pid: u32) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) with a negative pid signals the process group we created for the
        // child (process_group(0) makes its pgid its pid); no memory is involved.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
}

/// Runs in the hook's process before it execs: clears its capabilities, so that a hook never
/// holds what the daemon holds to capture (CAP_NET_RAW, CAP_NET_ADMIN, CAP_BPF, CAP_PERFMON:
/// enough to read every token on the wire). The unit gives the daemon those as ambient
/// capabilities, which every program it runs would otherwise inherit; with the ambient,
/// inheritable, permitted and effective sets empty, a program without file capabilities gets
/// none. (A daemon run as root runs its hooks as root: root's programs regain every capability.)
fn drop_capabilities() -> std::io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    let cleared = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    // EINVAL: a kernel without ambient capabilities (before 4.3) has none to clear.
    if cleared != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
        return Err(std::io::Error::last_os_error());
    }
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let header = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let none = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: capset reads a valid header and two data words, as version 3 requires.
    let set = unsafe { libc::syscall(libc::SYS_capset, &header, none.as_ptr()) };
    if set != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Output read so far by a pipe reader thread.
struct Captured(Arc<Mutex<(Vec<u8>, bool)>>);

impl Captured {
    fn take(self) -> (Vec<u8>, bool) {
        let mut guard = self.0.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut *guard)
    }
}

fn capture(pipe: Option<impl Read + Send + 'static>, done: mpsc::Sender<()>) -> Captured {
    let shared = Arc::new(Mutex::new((Vec::new(), false)));
    if let Some(mut pipe) = pipe {
        let sink = shared.clone();
        std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            loop {
                match pipe.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let mut guard = sink.lock().unwrap_or_else(|e| e.into_inner());
                        let (kept, cut) = &mut *guard;
                        let room = (MAX_OUTPUT_BYTES + SCRUB_MARGIN).saturating_sub(kept.len());
                        kept.extend_from_slice(&chunk[..n.min(room)]);
                        *cut |= n > room;
                    }
                }
            }
            drop(done);
        });
    }
    Captured(shared)
}

/// The first `cut` bytes of output as text, with any copy of the raw token (in any case)
/// replaced, so that a hook that echoes its stdin cannot put the token in the audit log.
///
/// The scrub looks at the whole output as read (up to `SCRUB_MARGIN` past the cut), and the cut
/// falls where byte `cut` of that output was: a token that starts before the cut is replaced
/// whole, and no byte from past the cut (where a token may be only partly read) is kept.
fn scrubbed(output: &[u8], raw: Option<&RawToken>, cut: usize) -> String {
    let token = raw.map(RawToken::expose_for_hook).unwrap_or_default();
    let end = output.len().min(cut);
    let mut out = Zeroizing::new(Vec::with_capacity(end));
    let mut i = 0;
    while i < end {
        let matches = !token.is_empty()
            && output
                .get(i..i + token.len())
                .is_some_and(|w| w.eq_ignore_ascii_case(token));
        if matches {
            out.extend_from_slice(b"[token]");
            i += token.len();
        } else {
            out.push(output[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn post(agent: &ureq::Agent, url: &WebhookUrl, json: &str) -> HookResult {
    match agent
        .post(url.0.as_str())
        .header("content-type", "application/json")
        .send(json)
    {
        Ok(response) => {
            let status = response.status().as_u16();
            HookResult::Http {
                status,
                success: (200..300).contains(&status),
            }
        }
        Err(ureq::Error::Timeout(_)) => HookResult::HttpFailed {
            error: "timed out".into(),
        },
        Err(ureq::Error::Io(e)) => HookResult::HttpFailed {
            error: format!("i/o error: {}", e.kind()),
        },
        Err(ureq::Error::ConnectionFailed) => HookResult::HttpFailed {
            error: "connection failed".into(),
        },
        Err(_) => HookResult::HttpFailed {
            error: "request failed".into(),
        },
    }
}

#[cfg(test)]
mod tests;
