//! Telemetry against the real thing: `redcap-monitor run` (eBPF probe) watches the REDCap
//! simulator in a network namespace while PyCap and curl call it; a real Prometheus (Debian's
//! `prometheus`, its own data dir, in the same namespace) scrapes the daemon and loads the
//! shipped alert rules; every query of the shipped Grafana dashboard must return data; the
//! exposition passes `promtool check metrics`; the admin API and the `status` and `top`
//! commands answer with what the daemon saw. Needs root; REDCAP_MONITOR_SKIP_ROOT_TESTS=1
//! skips it. The rules' own checks (`promtool check rules`, `promtool test rules`) and the
//! dashboard's structure need no root.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use monitor_tests::clients::{PycapSet, run_curl_set_in, run_pycap_in};
use monitor_tests::daemon::{LiveDaemon, fingerprints, monitor_bin};
use monitor_tests::netns::{NamespacePair, command_in};
use monitor_tests::sim::{SimOptions, Simulator};
use monitor_tests::workspace_root;
use serde_json::Value;

const TOKEN: &str = "5E1F0C2A9B7D4E3F8A6C1B0D2E4F6A8C";
const OTHER: &str = "00FF11EE22DD33CC44BB55AA66997788";
const PORT: u16 = 8080;
const SUBNET: u8 = 208;
const API: &str = "127.0.0.1:9864";
const PROMETHEUS: &str = "127.0.0.1:9090";
const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef";

fn rules_file() -> PathBuf {
    workspace_root().join("config/prometheus/redcap-monitor.rules.yml")
}

fn dashboard() -> Value {
    let path = workspace_root().join("config/grafana/dashboards/redcap-monitor.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// Every panel query: (panel title, expression).
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["type"] != "row")
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap().to_owned();
            p["targets"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |t| (title.clone(), t["expr"].as_str().unwrap().to_owned()))
        })
        .collect()
}

/// What Grafana would send for the dashboard's variables: all jobs and hosts, a 1-minute
/// rate interval (the scrape interval here is 1 s).
fn as_grafana_sends(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$job", ".*")
        .replace("$host", ".*")
}

/// The metric names an expression uses (identifiers that start with the daemon's prefix).
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(start) = rest.find("redcap_monitor_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

#[test]
fn the_alert_rules_pass_promtool_and_fire_when_they_should() {
    let check = Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(rules_file())
        .output()
        .expect("promtool (Debian package prometheus, installed by `cargo xtask setup`)");
    assert!(check.status.success(), "{}", text(&check));
    assert!(
        text(&check).contains("SUCCESS: 9 rules found"),
        "{}",
        text(&check)
    );
    let test = Command::new("promtool")
        .args(["test", "rules", "redcap-monitor.rules.test.yml"])
        .current_dir(workspace_root().join("config/prometheus"))
        .output()
        .unwrap();
    assert!(test.status.success(), "{}", text(&test));
}

#[test]
fn the_dashboard_is_well_formed_for_file_provisioning() {
    let d = dashboard();
    assert_eq!(d["uid"], "redcap-monitor");
    assert!(d["id"].is_null(), "provisioned dashboards have no id");
    assert!(d["schemaVersion"].as_u64().unwrap() >= 37);
    let panels = d["panels"].as_array().unwrap();
    let mut ids: Vec<u64> = panels.iter().map(|p| p["id"].as_u64().unwrap()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), panels.len(), "panel ids are unique");
    for p in panels {
        let grid = &p["gridPos"];
        let (x, w) = (grid["x"].as_u64().unwrap(), grid["w"].as_u64().unwrap());
        assert!(x + w <= 24, "{}: within the 24-column grid", p["title"]);
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{expr}");
            for f in ["rate(", "increase("] {
                if expr.contains(f) {
                    assert!(expr.contains("[$__rate_interval]"), "{expr}");
                }
            }
            assert!(expr.contains("instance=~\"$host\""), "{expr}");
        }
    }
    let titles: Vec<&str> = panels.iter().filter_map(|p| p["title"].as_str()).collect();
    for wanted in [
        "API calls by content",
        "Server time percentiles",
        "Server degraded",
        "Top tokens by share of server time",
        "Violations by rule",
        "Suspensions",
        "Captured events or packets lost",
        "Tokens unused over 180 days",
        "Attestations overdue or missing",
        "Top 10 tokens' share of calls (30 days)",
    ] {
        assert!(titles.contains(&wanted), "{wanted} panel");
    }
    for file in ["datasources", "dashboards"] {
        let path = workspace_root().join(format!(
            "config/grafana/provisioning/{file}/redcap-monitor.yaml"
        ));
        let yaml = std::fs::read_to_string(&path).unwrap();
        assert!(yaml.contains("apiVersion: 1"), "{}", path.display());
    }
}

/// A child process killed (and waited for) on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// curl inside the namespace; returns (HTTP status, body).
fn curl(ns: &str, args: &[&str]) -> (u16, String) {
    let out = command_in(Some(ns), "curl")
        .args(["-sS", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .unwrap();
    let all = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = all.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// `redcap-monitor ARGS` inside the namespace: must succeed; returns stdout and stderr.
fn monitor_says(ns: &str, args: &[&str]) -> String {
    let out = command_in(Some(ns), monitor_bin().unwrap().to_str().unwrap())
        .args(args)
        .output()
        .unwrap();
    let said = text(&out);
    assert!(out.status.success(), "redcap-monitor {args:?}: {said}");
    said
}

fn query(ns: &str, expr: &str) -> Value {
    let url = format!("http://{PROMETHEUS}/api/v1/query");
    let (status, body) = curl(
        ns,
        &["--get", "--data-urlencode", &format!("query={expr}"), &url],
    );
    assert_eq!(status, 200, "{expr}: {body}");
    serde_json::from_str(&body).unwrap()
}

fn first_value(answer: &Value) -> Option<f64> {
    answer["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
}

/// OpenMetrics as the text format 0.0.4 that `promtool check metrics` reads: counters' and
/// infos' families named like their samples, no `# UNIT` or `# EOF` lines.
fn as_text_format(openmetrics: &str) -> String {
    let mut renamed = std::collections::HashMap::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            match kind {
                "counter" => renamed.insert(name.to_owned(), (format!("{name}_total"), "counter")),
                "info" => renamed.insert(name.to_owned(), (format!("{name}_info"), "gauge")),
                _ => None,
            };
        }
    }
    let mut out = String::new();
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let rewritten = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            let (new_name, kind) = renamed.get(name)?;
            let tail = if *prefix == "# TYPE " { kind } else { tail };
            Some(format!("{prefix}{new_name} {tail}"))
        });
        out.push_str(rewritten.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

#[test]
fn prometheus_scrapes_a_live_daemon_and_every_dashboard_query_returns_data() {
    if !monitor_tests::require_root("telemetry end to end") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pair = NamespacePair::create(SUBNET).unwrap();
    let ns = pair.server_ns.as_str();
    let _sim = Simulator::start(&SimOptions {
        tokens: vec![TOKEN.into(), OTHER.into()],
        netns: Some(pair.server_ns.clone()),
        bind: Some("0.0.0.0".into()),
        port: Some(PORT),
        ..SimOptions::default()
    })
    .unwrap();
    let key = dir.path().join("site.key");
    let token_file = dir.path().join("api.token");
    monitor_tests::write_secret(&token_file, format!("{ADMIN_TOKEN}\n"));
    let stats = dir.path().join("stats.json");
    let config = dir.path().join("live.toml");
    std::fs::write(
        &config,
        format!(
            "[capture]\nmode = \"ebpf\"\ninterfaces = [\"{}\"]\nports = [{PORT}]\n\
             [output]\nstats = \"{}\"\nstats_interval = \"1s\"\n\
             [api]\nlisten = \"{API}\"\ntoken_file = \"{}\"\ntop_tokens = 5\n\
             [enforcement]\nmode = \"on_violation\"\n[store]\npath = \"{}\"\n",
            pair.server_if,
            stats.display(),
            token_file.display(),
            dir.path().join("state.redb").display()
        ),
    )
    .unwrap();
    let mut daemon = LiveDaemon::start(Some(ns), &config, &key).unwrap();

    let prometheus_config = dir.path().join("prometheus.yml");
    std::fs::write(
        &prometheus_config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: redcap-monitor\n    static_configs:\n      - targets: ['{API}']\n",
            rules_file().display()
        ),
    )
    .unwrap();
    let _prometheus = Killed(
        command_in(Some(ns), "prometheus")
            .arg(format!("--config.file={}", prometheus_config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={PROMETHEUS}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian package, installed by `cargo xtask setup`)"),
    );

    // Prometheus scrapes the daemon before any traffic, so that rates see the calls arrive.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut scraped = false;
    while !scraped && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        let (code, body) = curl(ns, &[&format!("http://{PROMETHEUS}/api/v1/query?query=up")]);
        scraped = code == 200 && body.contains("\"redcap-monitor\"") && body.contains("\"1\"]");
    }
    assert!(scraped, "Prometheus did not scrape the daemon within 60 s");

    // Real traffic: a full PyCap session, a burst that breaks the rate rule, curl's set.
    let client = Some(pair.client_ns.as_str());
    let base = format!("http://{}:{PORT}", pair.server_ip);
    run_pycap_in(client, &format!("{base}/api/"), TOKEN, PycapSet::Full).unwrap();
    run_pycap_in(client, &format!("{base}/api/"), OTHER, PycapSet::Burst(6)).unwrap();
    run_curl_set_in(client, &base, TOKEN, dir.path()).unwrap();

    // Prometheus has the calls once a scrape after the daemon's refresh saw them.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut calls = 0.0;
    while Instant::now() < deadline {
        calls = first_value(&query(ns, "sum(redcap_monitor_api_calls_total)")).unwrap_or(0.0);
        if calls >= 10.0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(calls >= 10.0, "Prometheus saw {calls} calls");
    // A few more scrapes, so that every rate() has two samples after the traffic.
    std::thread::sleep(Duration::from_secs(3));

    let d = dashboard();
    let mut empty = Vec::new();
    // The cluster row's metrics exist only with `[shared]`: tests/cluster.rs checks them on
    // the hosts of a cluster.
    for (title, expr) in dashboard_queries(&d)
        .into_iter()
        .filter(|(_, expr)| !expr.contains("redcap_monitor_shared_"))
    {
        let answer = query(ns, &as_grafana_sends(&expr));
        assert_eq!(answer["status"], "success", "{title}: {expr}: {answer}");
        if answer["data"]["result"]
            .as_array()
            .is_none_or(Vec::is_empty)
        {
            empty.push(format!("{title}: {expr}"));
        }
    }
    assert!(
        empty.is_empty(),
        "queries without data:\n{}",
        empty.join("\n")
    );
    let rate = first_value(&query(ns, "sum(rate(redcap_monitor_api_calls_total[1m]))")).unwrap();
    assert!(rate > 0.0, "API call rate {rate}");
    let violations = first_value(&query(
        ns,
        "sum(redcap_monitor_policy_violations_total{rule=\"api_calls\"})",
    ))
    .unwrap();
    assert!(
        violations >= 3.0,
        "the burst of 6 broke the 3-a-minute rule: {violations}"
    );
    let up = first_value(&query(ns, "up{job=\"redcap-monitor\"}")).unwrap();
    assert_eq!(up, 1.0);
    let (fp_token, fp_other) = {
        let fps = fingerprints(&key, &[TOKEN, OTHER]).unwrap();
        (fps[0].clone(), fps[1].clone())
    };
    let top = query(ns, "redcap_monitor_top_token_load_ratio");
    let shown: Vec<&str> = top["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["metric"]["token_fp"].as_str())
        .collect();
    assert!(
        shown.contains(&fp_token.as_str()) && shown.contains(&fp_other.as_str()),
        "{shown:?}"
    );

    // The shipped rules load and evaluate.
    let (_, rules) = curl(ns, &[&format!("http://{PROMETHEUS}/api/v1/rules")]);
    let rules: Value = serde_json::from_str(&rules).unwrap();
    let loaded: Vec<&Value> = rules["data"]["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .collect();
    assert_eq!(loaded.len(), 9, "{rules}");
    for rule in loaded {
        assert_eq!(rule["health"], "ok", "{rule}");
    }

    // The exposition: exact Content-Type, names that promtool accepts, every dashboard metric.
    let (status, head) = curl(
        ns,
        &[
            "-o",
            "/dev/null",
            "-D",
            "-",
            &format!("http://{API}/metrics"),
        ],
    );
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase().contains(
            "content-type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\n"
        ),
        "{head}"
    );
    let (_, exposition) = curl(ns, &[&format!("http://{API}/metrics")]);
    assert!(
        !exposition.contains(TOKEN) && !exposition.contains(OTHER),
        "no raw token"
    );
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        promtool.stdin.as_mut().unwrap(),
        as_text_format(&exposition).as_bytes(),
    )
    .unwrap();
    drop(promtool.stdin.take());
    let lint = promtool.wait_with_output().unwrap();
    assert!(
        lint.status.success(),
        "promtool check metrics:\n{}",
        text(&lint)
    );
    for (title, expr) in dashboard_queries(&d)
        .into_iter()
        .filter(|(_, expr)| !expr.contains("redcap_monitor_shared_"))
    {
        for name in metric_names(&expr) {
            let family = name
                .strip_suffix("_total")
                .or_else(|| name.strip_suffix("_bucket"))
                .or_else(|| name.strip_suffix("_info"))
                .unwrap_or(&name);
            assert!(
                exposition.contains(&format!("# TYPE {family} ")),
                "{title}: {name} is not a metric the daemon exposes"
            );
        }
    }

    // The burst's second violation suspended OTHER (mode on_violation: a warning, then a
    // suspension); PyCap's full session breaks the rate rule too.
    let auto = first_value(&query(
        ns,
        "redcap_monitor_suspensions_total{origin=\"auto\"}",
    ))
    .unwrap();
    let active = first_value(&query(ns, "redcap_monitor_suspensions_active")).unwrap();
    assert!(auto >= 1.0, "{auto}");
    assert_eq!(active, auto, "every suspension is still in force");

    // The admin API: the bearer token is required, and the answers hold what the daemon saw.
    let status_url = format!("http://{API}/api/v1/status");
    assert_eq!(curl(ns, &[&status_url]).0, 401);
    assert_eq!(
        curl(
            ns,
            &[
                "-H",
                "Authorization: Bearer wrong-token-0123456789",
                &status_url
            ]
        )
        .0,
        401
    );
    let auth = format!("Authorization: Bearer {ADMIN_TOKEN}");
    let (code, listed) = curl(
        ns,
        &["-H", &auth, &format!("http://{API}/api/v1/suspensions")],
    );
    assert_eq!(code, 200, "{listed}");
    let listed: Value = serde_json::from_str(&listed).unwrap();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len() as f64, active, "{listed:?}");
    assert!(
        listed
            .iter()
            .any(|s| s["token_fp"] == fp_other.as_str() && s["source"] == "auto"),
        "{listed:?}"
    );
    let suspended = listed.len();
    let (code, violations) = curl(
        ns,
        &["-H", &auth, &format!("http://{API}/api/v1/violations")],
    );
    assert_eq!(code, 200, "{violations}");
    let violations: Value = serde_json::from_str(&violations).unwrap();
    assert!(
        violations
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["token_fp"] == fp_other.as_str() && v["rule"] == "api_calls"),
        "{violations}"
    );
    let (code, body) = curl(
        ns,
        &[
            "-H",
            &auth,
            "-H",
            "Content-Type: application/json",
            "--data",
            &format!("{{\"token_fp\":\"{fp_other}\",\"for\":\"1h\",\"reason\":\"e2e\"}}"),
            &format!("http://{API}/api/v1/suspend"),
        ],
    );
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"token_masked\":\"00F…88\""), "{body}");
    let config_arg = config.to_str().unwrap();
    // The suspension shows in the next refresh (1 s).
    std::thread::sleep(Duration::from_millis(1500));
    let said = monitor_says(ns, &["status", "--config", config_arg]);
    assert!(said.contains(&format!("daemon at http://{API}")), "{said}");
    assert!(said.contains("losses: none"), "{said}");
    assert!(
        said.contains(&format!("suspended tokens: {suspended}")),
        "{said}"
    );
    let said = monitor_says(ns, &["top", "--once", "--config", config_arg]);
    let line = said
        .lines()
        .find(|l| l.starts_with(&fp_token))
        .unwrap_or_else(|| panic!("top lists the token's fingerprint:\n{said}"));
    assert!(line.contains("5E1…8C"), "masked token: {line}");
    assert!(
        !said.contains(TOKEN) && !said.contains(OTHER),
        "no raw token"
    );
    assert!(said.contains(&format!("suspended {suspended}")), "{said}");
    let (code, body) = curl(
        ns,
        &[
            "-H",
            &auth,
            "--data",
            &format!("{{\"token_fp\":\"{fp_other}\"}}"),
            &format!("http://{API}/api/v1/lift"),
        ],
    );
    assert_eq!(code, 200, "{body}");
    std::thread::sleep(Duration::from_millis(2500));
    let manual = first_value(&query(
        ns,
        "redcap_monitor_suspensions_total{origin=\"manual\"}",
    ));
    assert_eq!(manual, Some(1.0));

    // With the daemon gone, `status` says so and reads the stats file.
    let (exit, log) = daemon.stop().unwrap();
    assert!(exit.success(), "{log}");
    assert!(!log.contains(TOKEN), "no raw token in the log");
    let said = monitor_says(ns, &["status", "--config", config_arg]);
    assert!(said.contains("cannot ask the daemon"), "{said}");
    assert!(
        said.contains(&format!(
            "reading its stats file {} instead",
            stats.display()
        )),
        "{said}"
    );
    assert!(said.contains("losses: none"), "{said}");
}
