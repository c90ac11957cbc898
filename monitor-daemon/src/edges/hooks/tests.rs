//! Hooks run for real: a shell script in a temporary directory records its argv, environment and
//! stdin; an http hook posts to the loopback receiver.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::*;
use crate::commands::config::Config;
use crate::shared::settings::Duration as ConfigDuration;
use crate::shared::token::{MaskedToken, TokenFingerprint};
use test_support::Receiver;

const RAW: &[u8] = b"0123456789ABCDEF0123456789ABCDEF";

fn raw_token() -> RawToken {
    RawToken::parse(b"0123456789abcdef0123456789ABCDEF").unwrap_or_else(|_| panic!("test token"))
}

fn event(action: HookAction) -> HookEvent {
    HookEvent {
        action,
        at: Timestamp(1_700_000_000 * 1_000_000_000),
        token: TokenRef {
            fingerprint: TokenFingerprint([0x3f, 0x9a, 0x1c, 0x2b, 0x7d, 0x10, 0x00, 0x01]),
            masked: Some(MaskedToken("012…EF".into())),
        },
        until: (action == HookAction::Suspend).then_some(Timestamp(1_700_003_600 * 1_000_000_000)),
        reason: "api_calls while degraded".into(),
        evidence: serde_json::json!({"share": 0.7}),
    }
}

/// A script that records what it was given in `dir`, prints to both streams and exits with 3.
fn recording_script(dir: &Path, extra: &str) -> PathBuf {
    let script = dir.join("hook.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             printf '%s\\n' \"$@\" > '{d}/argv'\n\
             env > '{d}/env'\n\
             cat > '{d}/stdin'\n\
             echo \"done for $1\"\n\
             cat '{d}/stdin'\n\
             echo 'a warning' >&2\n\
             {extra}\n\
             exit 3\n",
            d = dir.display()
        ),
    )
    .unwrap();
    script
}

/// Runs the script through /bin/sh, so that no freshly written file is exec'd (ETXTBSY races
/// with other tests' forks).
fn exec_hook(name: &str, script: &Path, pass_raw_token: bool, timeout: Span) -> HookConfig {
    HookConfig {
        name: name.into(),
        kind: HookKind::Exec,
        program: Some(PathBuf::from("/bin/sh")),
        args: vec![
            script.display().to_string(),
            "{fingerprint}".into(),
            "--masked={masked}".into(),
            "{action}".into(),
            "until={until}".into(),
        ],
        url: None,
        timeout: ConfigDuration(timeout),
        pass_raw_token,
    }
}

fn hooks(suspend: Vec<HookConfig>, lift: Vec<HookConfig>) -> Hooks {
    Hooks::new(
        &HooksConfig {
            suspend,
            lift,
            token_stale: Vec::new(),
        },
        "web2".into(),
    )
}

fn contains_raw(haystack: &[u8]) -> bool {
    haystack
        .windows(RAW.len())
        .any(|w| w.eq_ignore_ascii_case(RAW))
}

#[test]
fn exec_hook_gets_the_event_on_stdin_and_the_fingerprint_in_argv() {
    let dir = tempfile::tempdir().unwrap();
    let script = recording_script(dir.path(), "");
    let hooks = hooks(
        vec![exec_hook("block", &script, false, Span::from_secs(10))],
        vec![],
    );
    let outcomes = hooks.run(&event(HookAction::Suspend), None);
    assert_eq!(outcomes.len(), 1);
    let outcome = &outcomes[0];
    assert_eq!(outcome.hook, "block");
    assert_eq!(
        outcome.result,
        HookResult::Exited {
            code: Some(3),
            signal: None,
            success: false
        }
    );
    assert!(
        outcome.stdout.starts_with("done for 3f9a1c2b7d100001\n"),
        "{}",
        outcome.stdout
    );
    assert_eq!(outcome.stderr, "a warning\n");
    assert!(!outcome.output_truncated);

    let argv = std::fs::read_to_string(dir.path().join("argv")).unwrap();
    assert_eq!(
        argv,
        "3f9a1c2b7d100001\n--masked=012…EF\nsuspend\nuntil=2023-11-14T23:13:20Z\n"
    );
    let stdin: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("stdin")).unwrap()).unwrap();
    assert_eq!(stdin["action"], "suspend");
    assert_eq!(stdin["token_fp"], "3f9a1c2b7d100001");
    assert_eq!(stdin["token_masked"], "012…EF");
    assert_eq!(stdin["until"], "2023-11-14T23:13:20Z");
    assert_eq!(stdin["evidence"]["share"], 0.7);
    assert_eq!(stdin["host"], "web2");
    assert!(stdin.get("raw_token").is_none());
    // The daemon's environment is not passed on.
    let env = std::fs::read_to_string(dir.path().join("env")).unwrap();
    assert!(env.contains("PATH=/usr/local/sbin"), "{env}");
    assert!(!env.contains("CARGO"), "{env}");
}

#[test]
fn lift_runs_the_lift_hooks_only() {
    let dir = tempfile::tempdir().unwrap();
    let script = recording_script(dir.path(), "");
    let hooks = hooks(
        vec![],
        vec![exec_hook("unblock", &script, false, Span::from_secs(10))],
    );
    assert!(hooks.run(&event(HookAction::Suspend), None).is_empty());
    let outcomes = hooks.run(&event(HookAction::Lift), None);
    assert_eq!(outcomes[0].hook, "unblock");
    let argv = std::fs::read_to_string(dir.path().join("argv")).unwrap();
    assert_eq!(argv, "3f9a1c2b7d100001\n--masked=012…EF\nlift\nuntil=\n");
}

#[test]
fn hook_running_past_its_timeout_is_killed_with_its_children() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("slow.sh");
    // The sleep is a child of the shell: killing only the shell would leave it holding stdout.
    std::fs::write(&script, "#!/bin/sh\necho started\nsleep 30\necho never\n").unwrap();
    let hooks = hooks(
        vec![exec_hook("slow", &script, false, Span::from_millis(300))],
        vec![],
    );
    let started = Instant::now();
    let outcomes = hooks.run(&event(HookAction::Suspend), None);
    let took = started.elapsed();
    assert_eq!(outcomes[0].result, HookResult::TimedOut);
    assert_eq!(outcomes[0].stdout, "started\n");
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[test]
fn a_missing_program_is_recorded_as_failed_to_start() {
    let mut hook = exec_hook("gone", Path::new("/x"), false, Span::from_secs(1));
    hook.program = Some(PathBuf::from("/nonexistent/redcap-hook"));
    let outcomes = hooks(vec![hook], vec![]).run(&event(HookAction::Suspend), None);
    assert!(
        matches!(&outcomes[0].result, HookResult::FailedToStart { error } if error.contains("/nonexistent/redcap-hook")),
        "{:?}",
        outcomes[0].result
    );
}

#[test]
fn pass_raw_token_puts_the_token_on_stdin_only() {
    let dir = tempfile::tempdir().unwrap();
    let script = recording_script(dir.path(), "");
    let hooks = hooks(
        vec![exec_hook("with-token", &script, true, Span::from_secs(10))],
        vec![],
    );
    let raw = raw_token();
    let outcomes = hooks.run(&event(HookAction::Suspend), Some(&raw));
    let stdin: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("stdin")).unwrap()).unwrap();
    assert_eq!(stdin["raw_token"].as_str().unwrap().as_bytes(), RAW);
    assert_eq!(stdin["token_fp"], "3f9a1c2b7d100001");
    for file in ["argv", "env"] {
        let bytes = std::fs::read(dir.path().join(file)).unwrap();
        assert!(!contains_raw(&bytes), "the raw token is in {file}");
    }
    // The script echoes its stdin; the recorded outcome shows a placeholder instead.
    let outcome = &outcomes[0];
    assert!(
        outcome.stdout.contains("\"raw_token\":\"[token]\""),
        "{}",
        outcome.stdout
    );
    assert!(!contains_raw(outcome.stdout.as_bytes()));
    assert!(!contains_raw(
        serde_json::to_string(outcome).unwrap().as_bytes()
    ));
}

#[test]
fn without_pass_raw_token_the_token_appears_nowhere() {
    let dir = tempfile::tempdir().unwrap();
    let script = recording_script(dir.path(), "");
    let hooks = hooks(
        vec![exec_hook("plain", &script, false, Span::from_secs(10))],
        vec![],
    );
    let raw = raw_token();
    let outcomes = hooks.run(&event(HookAction::Suspend), Some(&raw));
    for file in ["argv", "env", "stdin"] {
        let bytes = std::fs::read(dir.path().join(file)).unwrap();
        assert!(!contains_raw(&bytes), "the raw token is in {file}");
    }
    assert!(!contains_raw(
        serde_json::to_string(&outcomes).unwrap().as_bytes()
    ));
}

#[test]
fn output_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("loud.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\nhead -c 1000000 /dev/zero | tr '\\0' x\n",
    )
    .unwrap();
    let outcomes = hooks(
        vec![exec_hook("loud", &script, false, Span::from_secs(10))],
        vec![],
    )
    .run(&event(HookAction::Suspend), None);
    assert!(matches!(
        outcomes[0].result,
        HookResult::Exited { success: true, .. }
    ));
    assert_eq!(outcomes[0].stdout.len(), MAX_OUTPUT_BYTES);
    assert!(outcomes[0].output_truncated);
}

#[test]
fn a_token_straddling_the_output_cut_is_scrubbed_whole() {
    // The hook prints its raw token so that it starts 16 bytes before the 16 KiB cut and ends
    // 16 bytes after it, then more output: cut first and scrubbed after, the token's first half
    // would reach the audit log.
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("straddle.sh");
    let before = MAX_OUTPUT_BYTES - RAW.len() / 2;
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             token=$(sed -n 's/.*\"raw_token\":\"\\([^\"]*\\)\".*/\\1/p')\n\
             head -c {before} /dev/zero | tr '\\0' x\n\
             printf '%s' \"$token\"\n\
             head -c 1000 /dev/zero | tr '\\0' y\n\
             head -c {before} /dev/zero | tr '\\0' x >&2\n\
             printf '%s' \"$token\" >&2\n"
        ),
    )
    .unwrap();
    let raw = raw_token();
    let outcomes = hooks(
        vec![exec_hook("straddle", &script, true, Span::from_secs(10))],
        vec![],
    )
    .run(&event(HookAction::Suspend), Some(&raw));
    let outcome = &outcomes[0];
    assert!(matches!(
        outcome.result,
        HookResult::Exited { success: true, .. }
    ));
    assert!(outcome.output_truncated);
    let half = &RAW[..RAW.len() / 2];
    for (stream, text) in [("stdout", &outcome.stdout), ("stderr", &outcome.stderr)] {
        assert!(
            text.len() <= MAX_OUTPUT_BYTES,
            "{stream}: {} bytes",
            text.len()
        );
        assert!(
            text.starts_with(&"x".repeat(before)),
            "{stream}: the output before the token is kept"
        );
        assert_eq!(&text[before..], "[token]", "{stream}");
        assert!(
            !text
                .as_bytes()
                .windows(half.len())
                .any(|w| w.eq_ignore_ascii_case(half)),
            "{stream}: half of the token survived the cut"
        );
    }
    assert!(!contains_raw(
        serde_json::to_string(outcome).unwrap().as_bytes()
    ));
}

#[test]
fn http_hook_posts_the_event_without_the_raw_token() {
    let receiver = Receiver::start();
    let hook = HookConfig {
        name: "api".into(),
        kind: HookKind::Http,
        program: None,
        args: vec![],
        url: Some(WebhookUrl(receiver.url("/suspend"))),
        timeout: ConfigDuration(Span::from_secs(5)),
        // Refused by validation; even if set, an http hook never sends the token.
        pass_raw_token: true,
    };
    let raw = raw_token();
    let outcomes = hooks(vec![hook], vec![]).run(&event(HookAction::Suspend), Some(&raw));
    assert_eq!(
        outcomes[0].result,
        HookResult::Http {
            status: 200,
            success: true
        }
    );
    let got = receiver.wait_for(1, Duration::from_secs(5));
    assert_eq!(got[0].path, "/suspend");
    assert_eq!(got[0].header("content-type"), Some("application/json"));
    let body = got[0].json();
    assert_eq!(body["action"], "suspend");
    assert_eq!(body["token_fp"], "3f9a1c2b7d100001");
    assert!(!contains_raw(&got[0].body));
}

#[test]
fn http_hook_failure_is_recorded() {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let hook = HookConfig {
        name: "down".into(),
        kind: HookKind::Http,
        program: None,
        args: vec![],
        url: Some(WebhookUrl(format!("http://{addr}/"))),
        timeout: ConfigDuration(Span::from_secs(2)),
        pass_raw_token: false,
    };
    let outcomes = hooks(vec![hook], vec![]).run(&event(HookAction::Suspend), None);
    assert!(
        matches!(outcomes[0].result, HookResult::HttpFailed { .. }),
        "{:?}",
        outcomes[0].result
    );
}

#[test]
fn templates_accept_known_placeholders_and_literal_braces() {
    assert!(check_template("--fp={fingerprint}").is_ok());
    assert!(check_template("{{literal}} {action}").is_ok());
    assert!(
        check_template("{token}")
            .unwrap_err()
            .contains("unknown placeholder `{token}`")
    );
    assert!(check_template("{fingerprint").is_err());
    assert!(check_template("x}").is_err());
    let e = event(HookAction::Suspend);
    assert_eq!(
        expand("{{x}} {action}:{reason}", &e),
        "{x} suspend:api_calls while degraded"
    );
}

fn parse(text: &str) -> Result<Config, crate::commands::config::ConfigError> {
    Config::parse(text, Path::new("test.toml"))
}

#[test]
fn hooks_are_read_from_config() {
    let config = parse(
        "[[hooks.suspend]]\nname = \"block\"\nkind = \"exec\"\nprogram = \"/usr/local/sbin/block\"\n\
         args = [\"{fingerprint}\", \"{until}\"]\ntimeout = \"5s\"\npass_raw_token = true\n\
         [[hooks.lift]]\nname = \"notify\"\nkind = \"http\"\nurl = \"https://x.org/lift\"\n",
    )
    .unwrap();
    assert_eq!(config.hooks.suspend[0].timeout.span(), Span::from_secs(5));
    assert!(config.hooks.suspend[0].pass_raw_token);
    assert_eq!(config.hooks.lift[0].timeout.span(), Span::from_secs(30));
    assert!(!config.hooks.lift[0].pass_raw_token);
}

#[test]
fn invalid_hooks_name_their_key_path() {
    let cases = [
        (
            "[[hooks.suspend]]\nname = \"h\"\nkind = \"http\"\nurl = \"https://x.org/\"\npass_raw_token = true\n",
            "hooks.suspend[0].pass_raw_token",
        ),
        (
            "[[hooks.lift]]\nname = \"h\"\nkind = \"exec\"\nprogram = \"relative\"\n",
            "hooks.lift[0].program",
        ),
        (
            "[[hooks.suspend]]\nname = \"h\"\nkind = \"exec\"\nprogram = \"/bin/true\"\nargs = [\"ok\", \"{token}\"]\n",
            "hooks.suspend[0].args[1]",
        ),
        (
            "[[hooks.suspend]]\nname = \"h\"\nkind = \"http\"\n",
            "hooks.suspend[0].url",
        ),
        (
            "[[hooks.suspend]]\nname = \"h\"\nkind = \"exec\"\nprogram = \"/bin/true\"\ntimeout = \"0s\"\n",
            "hooks.suspend[0].timeout",
        ),
    ];
    for (text, key) in cases {
        let err = parse(text).unwrap_err().to_string();
        assert!(err.contains(key), "{key}: {err}");
    }
}

#[test]
fn a_token_stale_hook_is_checked_like_the_others_and_may_not_ask_for_the_raw_token() {
    let script = Path::new("/usr/local/bin/revoke");
    let config = HooksConfig {
        token_stale: vec![
            exec_hook("revoke", script, true, Span::from_secs(10)),
            exec_hook("revoke", script, false, Span::from_secs(10)),
        ],
        ..HooksConfig::default()
    };
    let keys: Vec<String> = config.problems().into_iter().map(|p| p.key).collect();
    assert_eq!(
        keys,
        [
            "hooks.token_stale[0].pass_raw_token",
            "hooks.token_stale[1].name"
        ]
    );
}
