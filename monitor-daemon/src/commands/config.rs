//! The daemon's configuration file: TOML in, each component's section out.
//!
//! Every section is defined, defaulted and checked by the component it configures (Vector's
//! way: `CaptureConfig` in `edges::capture`, `PolicyConfig` in `stages::policy`, ...); this
//! module only assembles them, reads each on its own so that one wrong section does not hide
//! the others, and says which changes need a restart. [`Config::load`] parses and validates
//! once; stages never see TOML. Errors name the key path and what was expected, so that an admin
//! can fix the file.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::edges::actions::ActionsConfig;
use crate::edges::actions::publish::RedcapModuleConfig;
use crate::edges::alerts::AlertsConfig;
use crate::edges::api::ApiConfig;
use crate::edges::capture::CaptureConfig;
use crate::edges::directory::DirectoryConfig;
use crate::edges::hooks::HooksConfig;
use crate::edges::output::OutputConfig;
use crate::edges::shared_state::SharedConfig;
use crate::edges::store::StoreConfig;
use crate::shared::settings::Problem;
use crate::shared::token::SiteConfig;
use crate::stages::health::HealthConfig;
use crate::stages::http::HttpConfig;
use crate::stages::lifecycle::LifecycleConfig;
use crate::stages::pipeline::PipelineConfig;
use crate::stages::policy::PolicyConfig;
use crate::stages::policy::enforce::EnforcementConfig;
use crate::stages::reassembly::ReassemblyConfig;
use crate::stages::redcap::{KeepRawToken, RedcapConfig};

/// The whole file: one field per section, in the order the README documents them.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub site: SiteConfig,
    pub(crate) capture: CaptureConfig,
    pub(crate) reassembly: ReassemblyConfig,
    pub(crate) http: HttpConfig,
    pub(crate) redcap: RedcapConfig,
    pub(crate) policy: PolicyConfig,
    pub(crate) health: HealthConfig,
    pub enforcement: EnforcementConfig,
    pub output: OutputConfig,
    pub store: StoreConfig,
    pub(crate) alerts: AlertsConfig,
    pub(crate) hooks: HooksConfig,
    pub api: ApiConfig,
    pub(crate) redcap_module: RedcapModuleConfig,
    pub(crate) directory: DirectoryConfig,
    pub(crate) lifecycle: LifecycleConfig,
    /// Absent: this host alone (no Redis).
    pub(crate) shared: Option<SharedConfig>,
}

/// A configuration that cannot be used, with every problem found in it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Not TOML at all; the message carries the line and column.
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{path}: `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
    /// Keys or values that are wrong, each with its key path (never empty).
    #[error("{path}: {}", list_problems(problems))]
    Problems {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

fn list_problems(problems: &[Problem]) -> String {
    match problems {
        [one] => one.to_string(),
        many => {
            let mut text = format!("{} problems:", many.len());
            for problem in many {
                text.push_str("\n  ");
                text.push_str(&problem.to_string());
            }
            text
        }
    }
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates configuration text; `origin` names it in errors. Reports every
    /// problem it can find, sections in alphabetical order: each top-level section is read on
    /// its own (a wrong key or type stops only its section), then, once all could be read, every
    /// value is checked.
    pub fn parse(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        let table: toml::Table = toml::from_str(text).map_err(|err| ConfigError::Syntax {
            path: origin.to_owned(),
            message: err.to_string(),
        })?;
        let mut problems = Vec::new();
        for (name, value) in &table {
            // A table holding only this section, read as a whole configuration: the other
            // sections stand at their defaults, and an unknown section is an unknown field.
            let alone = toml::Table::from_iter([(name.clone(), value.clone())]);
            if let Err(problem) = read::<Config>(toml::Value::Table(alone)) {
                problems.push(problem);
            }
        }
        let config = if problems.is_empty() {
            read::<Config>(toml::Value::Table(table)).map_err(|problem| vec![problem])
        } else {
            Err(problems)
        }
        .and_then(|config| match config.problems() {
            found if found.is_empty() => Ok(config),
            found => Err(found),
        });
        config.map_err(|problems| ConfigError::Problems {
            path: origin.to_owned(),
            problems,
        })
    }

    /// The stages' sections, for building or reconfiguring the pipeline.
    pub fn pipeline(&self) -> PipelineConfig<'_> {
        PipelineConfig {
            reassembly: &self.reassembly,
            http: &self.http,
            redcap: &self.redcap,
            policy: &self.policy,
            health: &self.health,
            enforcement: &self.enforcement,
            server_ports: &self.capture.ports,
            // Calls keep their raw token only when a suspend hook is configured to get it.
            keep_raw: if self.hooks.suspend_wants_raw_token() {
                KeepRawToken::ForSuspendHooks
            } else {
                KeepRawToken::Never
            },
        }
    }

    /// The action edge's sections: the store, the alerts and the hooks.
    pub fn actions(&self) -> ActionsConfig<'_> {
        ActionsConfig {
            store: &self.store,
            alerts: &self.alerts,
            hooks: &self.hooks,
        }
    }

    /// The keys that differ between `self` (running) and `new` and cannot change while `run`
    /// runs: they shape the capture, the stages' buffers, the fingerprints or the store. Empty
    /// when everything that changed can be applied live.
    pub fn restart_needed(&self, new: &Config) -> Vec<&'static str> {
        let (a, b) = (&self.capture, &new.capture);
        [
            ("capture.mode", a.mode != b.mode),
            ("capture.interfaces", a.interfaces != b.interfaces),
            ("capture.ports", a.ports != b.ports),
            ("capture.ring_bytes", a.ring_bytes != b.ring_bytes),
            ("capture.tc_attach", a.tc_attach != b.tc_attach),
            ("site", self.site != new.site),
            ("reassembly", self.reassembly != new.reassembly),
            ("http", self.http != new.http),
            ("redcap", self.redcap != new.redcap),
            ("store", self.store != new.store),
            ("api", self.api != new.api),
            ("redcap_module", self.redcap_module != new.redcap_module),
            ("directory", self.directory != new.directory),
            ("capture.tls", a.tls != b.tls),
            ("shared", self.shared != new.shared),
        ]
        .into_iter()
        .filter_map(|(key, changed)| changed.then_some(key))
        .collect()
    }

    /// Every problem with the values (the types are already right), section by section in
    /// alphabetical order, as the reading reports them. Each section checks itself; rules that
    /// span sections would be checked here.
    fn problems(&self) -> Vec<Problem> {
        [
            self.alerts.problems(),
            self.api.problems(),
            self.capture.problems(),
            self.directory.problems(),
            self.enforcement.problems(),
            self.health.problems(),
            self.hooks.problems(),
            self.http.problems(),
            self.lifecycle.problems(),
            self.output.problems(),
            self.policy.problems(),
            self.reassembly.problems(),
            self.redcap.problems(),
            self.redcap_module.problems(),
            self.shared
                .as_ref()
                .map(SharedConfig::problems)
                .unwrap_or_default(),
            self.store.problems(),
        ]
        .concat()
    }
}

/// Reads `value` as a `T`; an error carries its full key path (`policy.rules[1].limit`).
fn read<T: serde::de::DeserializeOwned>(value: toml::Value) -> Result<T, Problem> {
    serde_path_to_error::deserialize::<_, T>(value).map_err(|err| {
        let key = err.path().to_string();
        // toml appends "in `key`" lines; the key path already says where.
        let message = err.into_inner().to_string();
        let message = message.lines().next().unwrap_or_default().to_owned();
        Problem::new(key, message)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edges::capture::kernel::AttachMethod;
    use crate::edges::capture::{CaptureMode, TlsCapturePlan, TlsSwitch};
    use crate::shared::model::Span;
    use crate::shared::settings::Duration;
    use crate::stages::policy::CallClass;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn empty_file_gives_the_institution_policy() {
        let config = parse("").unwrap();
        let rules: Vec<_> = config
            .policy
            .rules
            .iter()
            .map(|r| {
                (
                    r.name.as_str(),
                    r.calls,
                    r.limit,
                    r.window.span().as_secs_f64(),
                )
            })
            .collect();
        assert_eq!(
            rules,
            [
                ("api_calls", CallClass::All, 3, 60.0),
                ("heavy_calls", CallClass::Heavy, 1, 300.0)
            ]
        );
        assert_eq!(config.policy.heavy.response_bytes, 500_000);
    }

    #[test]
    fn shipped_example_parses_and_states_the_defaults() {
        let example = parse(include_str!("../../../config/redcap-monitor.toml")).unwrap();
        let defaults = Config::default();
        assert_eq!(format!("{example:?}"), format!("{defaults:?}"));
    }

    #[test]
    fn max_input_vars_is_read_and_must_be_positive() {
        let config = parse("[redcap]\nmax_input_vars = 1000\n").unwrap();
        assert_eq!(config.redcap.max_input_vars, 1000);
        let err = parse("[redcap]\nmax_input_vars = 0\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("redcap.max_input_vars"), "{err}");
    }

    #[test]
    fn durations_take_units() {
        assert_eq!(Duration::parse("5m").unwrap().span(), Span::from_secs(300));
        assert_eq!(
            Duration::parse("250ms").unwrap().span(),
            Span::from_millis(250)
        );
        assert!(Duration::parse("5").unwrap_err().contains("no unit"));
        assert!(
            Duration::parse("5 weeks")
                .unwrap_err()
                .contains("unknown unit")
        );
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let err = parse("[policy]\nreorder_windw = \"1m\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("reorder_windw"), "{err}");
    }

    #[test]
    fn invalid_values_name_their_key_path() {
        let err = parse("[[policy.rules]]\nname = \"a\"\nlimit = 1\nwindow = \"0s\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("policy.rules[0].window"), "{err}");
        let err = parse("[reassembly]\nmax_connections = 0\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("reassembly.max_connections"), "{err}");
    }

    fn problems(text: &str) -> Vec<Problem> {
        match parse(text) {
            Err(ConfigError::Problems { problems, .. }) => problems,
            other => panic!("expected problems, got {other:?}"),
        }
    }

    #[test]
    fn every_wrong_section_is_reported_with_the_full_key_path() {
        let found = problems(
            "[capture]\nmode = \"xdp\"\n\
             [[policy.rules]]\nname = \"a\"\nlimit = 1\nwindow = \"1m\"\n\
             [[policy.rules]]\nname = \"b\"\nlimit = \"ten\"\nwindow = \"1m\"\n\
             [output]\ncall = \"-\"\n\
             [polcy]\nx = 1\n\
             [health]\nwindow = \"5\"\n",
        );
        let keys: Vec<&str> = found.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "capture.mode",
                "health.window",
                "output.call",
                "polcy",
                "policy.rules[1].limit"
            ],
            "{found:#?}"
        );
        let text = |key: &str| &found.iter().find(|p| p.key == key).unwrap().message;
        assert_eq!(
            text("capture.mode"),
            "unknown variant `xdp`, expected one of `auto`, `ebpf`, `pcap`, `tls`"
        );
        assert!(text("health.window").contains("no unit"), "{found:#?}");
        assert!(text("output.call").contains("`calls`"), "{found:#?}");
        assert!(
            text("policy.rules[1].limit").contains("\"ten\", expected u32"),
            "{found:#?}"
        );
        assert!(
            text("polcy").starts_with("unknown field `polcy`, expected one of `site`"),
            "{found:#?}"
        );
    }

    #[test]
    fn every_bad_value_is_reported_not_just_the_first() {
        let found = problems(
            "[capture]\nring_bytes = 5000\n\
             [[policy.rules]]\nname = \"a\"\nlimit = 1\nwindow = \"0s\"\n\
             [health]\nbaseline_weight = 2.0\n\
             [[hooks.suspend]]\nname = \"h\"\nkind = \"exec\"\nprogram = \"relative\"\n",
        );
        let keys: Vec<&str> = found.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "capture.ring_bytes",
                "health.baseline_weight",
                "hooks.suspend[0].program",
                "policy.rules[0].window",
            ],
            "{found:#?}"
        );
        let shown = parse("[capture]\nring_bytes = 5000\n[health]\nbaseline_weight = 2.0\n")
            .unwrap_err()
            .to_string();
        assert!(
            shown.starts_with("test.toml: 2 problems:\n  `capture.ring_bytes`: "),
            "{shown}"
        );
    }

    #[test]
    fn rules_can_be_replaced() {
        let config = parse(
            "[[policy.rules]]\nname = \"bulk\"\nlimit = 30\nwindow = \"1m\"\n\
             [[policy.rules]]\nname = \"heavy\"\ncalls = \"heavy\"\nlimit = 2\nwindow = \"10m\"\n",
        )
        .unwrap();
        assert_eq!(config.policy.rules.len(), 2);
        assert_eq!(config.policy.rules[1].calls, CallClass::Heavy);
    }

    #[test]
    fn overrides_name_tokens_by_fingerprint_and_rules_by_name() {
        let config = parse(
            "[[policy.overrides]]\ntoken_fp = \"0123456789abcdef\"\nnote = \"bulk job\"\n\
             limits = { api_calls = 30 }\n\
             [[policy.overrides]]\ntoken_fp = \"fedcba9876543210\"\nexempt = true\n",
        )
        .unwrap();
        assert_eq!(config.policy.overrides.len(), 2);
        assert_eq!(config.policy.overrides[0].limits["api_calls"], 30);
        assert!(config.policy.overrides[1].exempt);
    }

    #[test]
    fn a_raw_token_given_as_a_fingerprint_is_refused_without_being_repeated() {
        let raw = "0123456789ABCDEF0123456789ABCDEF";
        let err = parse(&format!(
            "[[policy.overrides]]\ntoken_fp = \"{raw}\"\nexempt = true\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("policy.overrides[0].token_fp"), "{err}");
        assert!(err.contains("16 hex digits"), "{err}");
        assert!(!err.contains(&raw[..12]), "the value is not echoed: {err}");
    }

    #[test]
    fn a_rule_limit_a_window_cannot_count_is_refused() {
        let err = parse("[[policy.rules]]\nname = \"a\"\nlimit = 70000\nwindow = \"1m\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("policy.rules[0].limit") && err.contains("must be below 65536"),
            "{err}"
        );
        parse("[[policy.rules]]\nname = \"a\"\nlimit = 65535\nwindow = \"1m\"\n").unwrap();
    }

    #[test]
    fn bad_overrides_name_their_key_path() {
        let fp = "token_fp = \"0123456789abcdef\"\n";
        for (text, key, says) in [
            (
                "limits = { api_calls = 9 }\nexempt = true\n",
                "limits",
                "exempt",
            ),
            ("", "limits", "is empty"),
            (
                "limits = { api_cals = 9 }\n",
                "limits",
                "api_calls, heavy_calls",
            ),
            (
                "limits = { api_calls = 65536 }\n",
                "limits",
                "must be below 65536",
            ),
        ] {
            let err = parse(&format!("[[policy.overrides]]\n{fp}{text}"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("policy.overrides[0].{key}")) && err.contains(says),
                "{err}"
            );
        }
        let err = parse(&format!(
            "[[policy.overrides]]\n{fp}exempt = true\n[[policy.overrides]]\n{fp}exempt = true\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("policy.overrides[1].token_fp"), "{err}");
        let err = parse("[policy]\nmax_tokens = 0\n").unwrap_err().to_string();
        assert!(err.contains("policy.max_tokens"), "{err}");
    }

    #[test]
    fn the_canary_is_off_by_default_and_checked_when_on() {
        assert!(parse("").unwrap().health.canary.url.is_none());
        let on = parse("[health.canary]\nurl = \"https://redcap.example.org/redcap/\"\n").unwrap();
        assert_eq!(on.health.canary.interval.span(), Span::from_secs(30));
        let err = parse("[health.canary]\nurl = \"redcap.example.org\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("health.canary.url"), "{err}");
        let err = parse("[health.canary]\ninterval = \"5s\"\ntimeout = \"10s\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("health.canary.timeout"), "{err}");
    }

    #[test]
    fn live_capture_keys_parse_and_the_old_port_key_still_works() {
        let config = parse(
            "[capture]\nmode = \"pcap\"\ninterfaces = [\"eth0\"]\nports = [8080]\n\
             [output]\ncalls = \"-\"\nviolations = \"/tmp/v.jsonl\"\nstats_interval = \"5s\"\n",
        )
        .unwrap();
        assert_eq!(config.capture.mode, CaptureMode::Pcap);
        assert_eq!(config.capture.interfaces, ["eth0"]);
        assert_eq!(config.capture.ports, [8080]);
        assert_eq!(config.output.calls.as_deref(), Some(Path::new("-")));
        let old = parse("[capture]\nserver_ports = [81]\n").unwrap();
        assert_eq!(old.capture.ports, [81]);
        assert_eq!(old.capture.mode, CaptureMode::Auto);
        assert_eq!(old.capture.tc_attach, AttachMethod::Auto);
        let netlink = parse("[capture]\ntc_attach = \"netlink\"\n").unwrap();
        assert_eq!(netlink.capture.tc_attach, AttachMethod::Netlink);
        let tcx = parse("[capture]\ntc_attach = \"tcx\"\n").unwrap();
        assert_eq!(tcx.capture.tc_attach, AttachMethod::Tcx);
        // HTTPS is captured by default when it can be; `true`/`false` keep their meaning.
        assert_eq!(old.capture.tls.enabled, TlsSwitch::Auto);
        assert_eq!(old.capture.tls_plan(), TlsCapturePlan::IfPossible);
        for (text, plan) in [
            ("mode = \"ebpf\"\n", TlsCapturePlan::IfPossible),
            ("mode = \"pcap\"\n", TlsCapturePlan::Off),
            (
                "[capture.tls]\nenabled = \"auto\"\n",
                TlsCapturePlan::IfPossible,
            ),
            ("[capture.tls]\nenabled = false\n", TlsCapturePlan::Off),
            ("[capture.tls]\nenabled = true\n", TlsCapturePlan::Required),
            (
                "mode = \"tls\"\n[capture.tls]\nenabled = false\n",
                TlsCapturePlan::Required,
            ),
        ] {
            let config = parse(&format!("[capture]\n{text}")).unwrap();
            assert_eq!(config.capture.tls_plan(), plan, "{text}");
        }
        let tls =
            parse("[capture]\nmode = \"tls\"\n[capture.tls]\nprocesses = [\"nginx\"]\n").unwrap();
        assert_eq!(tls.capture.mode, CaptureMode::Tls);
        assert!(tls.capture.tls_on());
        let both = parse(
            "[capture]\nmode = \"ebpf\"\n[capture.tls]\nenabled = true\n\
             libraries = [\"/usr/lib/libssl.so.3\"]\nrescan_interval = \"1s\"\n",
        )
        .unwrap();
        assert!(both.capture.tls_on());
        assert_eq!(both.capture.tls.processes.len(), 4);
        assert_eq!(both.capture.tls.rescan_interval.span(), Span::from_secs(1));
    }

    #[test]
    fn bad_live_capture_values_name_their_key_path() {
        let err = parse("[capture]\nmode = \"xdp\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("mode") && err.contains("xdp"), "{err}");
        let err = parse("[capture]\ntc_attach = \"xdp\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tc_attach") && err.contains("netlink"),
            "{err}"
        );
        let err = parse("[capture]\nring_bytes = 5000\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("capture.ring_bytes"), "{err}");
        let err = parse("[capture]\nports = [80, 0]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("capture.ports"), "{err}");
        let err = parse("[output]\ncall = \"-\"\n").unwrap_err().to_string();
        assert!(err.contains("call"), "{err}");
    }

    #[test]
    fn bad_tls_capture_values_name_their_key_path() {
        for (text, key, hint) in [
            (
                "[capture.tls]\nprocesses = [\"a-name-longer-than-15\"]\n",
                "capture.tls.processes",
                "15 bytes",
            ),
            (
                "[capture]\nmode = \"tls\"\n[capture.tls]\nprocesses = []\n",
                "capture.tls.processes",
                "nginx",
            ),
            (
                "[capture]\nmode = \"pcap\"\n[capture.tls]\nenabled = true\n",
                "capture.tls.enabled",
                "\"ebpf\"",
            ),
            (
                "[capture.tls]\nrescan_interval = \"0s\"\n",
                "capture.tls.rescan_interval",
                "5s",
            ),
            ("[capture.tls]\nprocess = [\"x\"]\n", "process", ""),
            (
                "[capture.tls]\nenabled = \"yes\"\n",
                "enabled",
                "\"auto\", true or false",
            ),
            (
                "[capture.tls]\nprocesses = []\n",
                "capture.tls.processes",
                "enabled = false",
            ),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(key) && err.contains(hint), "{text}: {err}");
        }
    }
}
