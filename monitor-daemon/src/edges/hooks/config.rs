//! `[hooks]`: the programs and URLs told about suspensions, lifts and stale tokens, with their
//! checks.

use std::path::PathBuf;

use serde::Deserialize;

use crate::shared::model::Span;
use crate::shared::settings::{Duration, Problem, WebhookUrl};

/// Programs and URLs told about suspensions and lifts.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct HooksConfig {
    /// Run, in order, when a token is suspended.
    pub(crate) suspend: Vec<HookConfig>,
    /// Run, in order, when a suspension is lifted (by expiry or by hand).
    pub(crate) lift: Vec<HookConfig>,
    /// Run, in order, for each token unused for longer than `lifecycle.stale_after`, by
    /// `redcap-monitor report lifecycle --revoke --execute` (never by the daemon itself).
    pub(crate) token_stale: Vec<HookConfig>,
}

impl HooksConfig {
    /// Whether some suspend hook gets the raw token (`pass_raw_token`, exec hooks only): only
    /// then do calls keep their raw token until a decision is acted on.
    pub(crate) fn suspend_wants_raw_token(&self) -> bool {
        self.suspend
            .iter()
            .any(|h| h.pass_raw_token && h.kind == HookKind::Exec)
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HookConfig {
    /// Names the hook in outcome records.
    pub(crate) name: String,
    pub(crate) kind: HookKind,
    /// `exec`: the program to run (an absolute path; no shell is involved).
    #[serde(default)]
    pub(crate) program: Option<PathBuf>,
    /// `exec`: its arguments, with placeholders `{fingerprint}`, `{masked}`, `{action}`,
    /// `{until}`, `{reason}`.
    #[serde(default)]
    pub(crate) args: Vec<String>,
    /// `http`: where the event is POSTed as JSON.
    #[serde(default)]
    pub(crate) url: Option<WebhookUrl>,
    /// After this the program is killed (with its process group) or the request abandoned.
    #[serde(default = "HookConfig::default_timeout")]
    pub(crate) timeout: Duration,
    /// `exec` only: add the raw token to the JSON on stdin (never argv or the environment).
    #[serde(default)]
    pub(crate) pass_raw_token: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum HookKind {
    Exec,
    Http,
}

impl HookConfig {
    fn default_timeout() -> Duration {
        Duration(Span::from_secs(30))
    }
}

impl HooksConfig {
    /// What is wrong with `[hooks]`, each problem keyed by its full path.
    pub(crate) fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        for (list, hooks) in [
            ("suspend", &self.suspend),
            ("lift", &self.lift),
            ("token_stale", &self.token_stale),
        ] {
            let mut names = std::collections::HashSet::new();
            for (i, hook) in hooks.iter().enumerate() {
                let key = |field: &str| format!("hooks.{list}[{i}].{field}");
                if hook.name.is_empty() || !names.insert(hook.name.as_str()) {
                    problems.push(Problem::new(
                        key("name"),
                        format!("must be a non-empty name unique among hooks.{list}"),
                    ));
                }
                if list == "token_stale" && hook.pass_raw_token {
                    problems.push(Problem::new(
                        key("pass_raw_token"),
                        "a stale token's raw token is never known (it was not used): remove it"
                            .into(),
                    ));
                }
                if hook.timeout.span().0 == 0 {
                    problems.push(Problem::new(
                        key("timeout"),
                        "must be longer than zero, e.g. `30s`".into(),
                    ));
                }
                match hook.kind {
                    HookKind::Exec => {
                        match &hook.program {
                            Some(p) if p.is_absolute() => {}
                            _ => {
                                problems.push(Problem::new(
                                    key("program"),
                                    "an exec hook needs the absolute path of a program".into(),
                                ));
                            }
                        }
                        if hook.url.is_some() {
                            problems.push(Problem::new(
                                key("url"),
                                "applies only to http hooks".into(),
                            ));
                        }
                        for (j, arg) in hook.args.iter().enumerate() {
                            if let Err(message) = super::check_template(arg) {
                                problems.push(Problem::new(key(&format!("args[{j}]")), message));
                            }
                        }
                    }
                    HookKind::Http => {
                        match &hook.url {
                            None => problems.push(Problem::new(
                                key("url"),
                                "an http hook needs a url to POST to".into(),
                            )),
                            Some(url) => {
                                if let Err(message) = url.check() {
                                    problems.push(Problem::new(key("url"), message));
                                }
                            }
                        }
                        if hook.program.is_some() || !hook.args.is_empty() {
                            problems.push(Problem::new(
                                key("program"),
                                "program and args apply only to exec hooks".into(),
                            ));
                        }
                        if hook.pass_raw_token {
                            problems.push(Problem::new(
                                key("pass_raw_token"),
                                "applies only to exec hooks: the raw token is only ever written \
                                 to a program's stdin"
                                    .into(),
                            ));
                        }
                    }
                }
            }
        }
        problems
    }
}
