//! Several web hosts, one policy (issue 14): three hosts, each its own network namespace with
//! nginx in front of the REDCap simulator and `redcap-monitor run` configured from the shipped
//! file and run as the unit runs it (the service user, the unit's capabilities, `/proc` hiding
//! other users' processes: `src/unit.rs`), sharing one real `redis-server` (`src/cluster.rs`,
//! `src/redis.rs`). A client namespace
//! spreads one token's calls (and a few other tokens', and a prober's refused ones) over the hosts
//! the way a load balancer would, so that no host alone sees a violation.
//!
//! The oracles: each host's simulator log (what it really served), and ONE `redcap-monitor
//! analyze` over the hosts' tcpdump captures merged with `mergecap` (what a single host seeing all
//! the traffic would decide). Without `[shared]` the hosts count alone and the spread token goes
//! unnoticed (the problem); with it, the union of the hosts' violations and decisions equals the
//! single analysis. Then the faults: Redis stopped mid-run and started again, a daemon killed with
//! `kill -9` and restarted, and a manual suspension through one host's admin API refused on every
//! host (each host's External Module list read with the module's own PHP). Needs root;
//! REDCAP_MONITOR_SKIP_ROOT_TESTS=1 skips it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use monitor_tests::clients::{PycapSet, curl_in, run_pycap_in};
use monitor_tests::cluster::{Cluster, ClusterOptions};
use monitor_tests::daemon::{file_lines, fingerprints, jsonl, monitor_bin};
use monitor_tests::sim::wait_until;
use serde_json::Value;

/// Spread over the three hosts: over the limit (3 a minute) only in the cluster.
const SPREAD: &str = "5B1D9F3A7C2E4B6D8F0A1C3E5B7D9F2A";
/// A PyCap user within the limits.
const PYCAP: &str = "00FF11EE22DD33CC44BB55AA66997788";
/// Two heavy exports on two hosts: over `heavy_calls` (1 per 5 minutes) only in the cluster.
const HEAVY: &str = "7A1B2C3D4E5F60718293A4B5C6D7E8F9";
const WAIT: Duration = Duration::from_secs(30);
/// Kernel (TC hook) and tcpdump stamp the same packet at slightly different moments.
const CLOCK_SLACK_S: f64 = 0.005;

fn tokens() -> Vec<String> {
    [SPREAD, PYCAP, HEAVY].map(String::from).to_vec()
}

fn records(path: &Path) -> Vec<Value> {
    jsonl(&file_lines(path).join("\n"))
}

/// Every host's records of one kind, together.
fn union(
    cluster: &Cluster,
    path: impl Fn(&monitor_tests::cluster::Host) -> std::path::PathBuf,
) -> Vec<Value> {
    cluster
        .hosts
        .iter()
        .flat_map(|h| records(&path(h)))
        .collect()
}

/// A violation without its time: (token_fp or client, rule, count).
fn violation_key(v: &Value) -> (String, String, u64) {
    let who = v["token_fp"]
        .as_str()
        .map(String::from)
        .or_else(|| v["client"].as_str().map(|c| format!("client {c}")))
        .unwrap_or_default();
    (
        who,
        v["rule"].as_str().unwrap().to_owned(),
        v["count"].as_u64().unwrap(),
    )
}

fn sorted_by_time(mut v: Vec<Value>, field: &str) -> Vec<Value> {
    v.sort_by(|a, b| a[field].as_f64().partial_cmp(&b[field].as_f64()).unwrap());
    v
}

/// The traffic: SPREAD six calls round robin (two a host; one multipart as R's redcapAPI sends
/// them), PYCAP three calls with PyCap on web2, HEAVY an unfiltered record export on web1 and one
/// on web3, and a prober's four made-up tokens spread 2/1/1 (refused: over the refused-calls
/// limit only in the cluster). Sequential, so the order of the calls is the order they started.
fn spread_traffic(cluster: &Cluster) {
    let c = Some(cluster.client_ns.as_str());
    for n in 0..6 {
        let host = &cluster.hosts[n % 3];
        if n == 4 {
            let tok = format!("token={SPREAD}");
            #[rustfmt::skip]
            curl_in(c, &["-sS", "-o", "/dev/null", &host.api_url(), "-F", "content=record",
                "-F", "format=json", "-F", "records[0]=1", "-F", &tok]).unwrap();
        } else {
            cluster.call(n % 3, SPREAD);
        }
    }
    run_pycap_in(c, &cluster.hosts[1].api_url(), PYCAP, PycapSet::Light).unwrap();
    for i in [0, 2] {
        let tok = format!("token={HEAVY}");
        #[rustfmt::skip]
        curl_in(c, &["-sS", "-o", "/dev/null", "--compressed", &cluster.hosts[i].api_url(),
            "-d", &tok, "-d", "content=record", "-d", "format=json"]).unwrap();
    }
    for (n, i) in [0, 1, 2, 0].into_iter().enumerate() {
        let made_up = format!("{:032X}", 0xDEAD_0000u64 + n as u64);
        assert_eq!(cluster.call_status(i, &made_up, &[]), 403);
    }
}

/// Waits until every host has recorded every call its simulator served; returns them per host.
fn settled_calls(cluster: &Cluster) -> Vec<Vec<Value>> {
    cluster
        .hosts
        .iter()
        .map(|h| {
            let served = h.served().len();
            assert!(
                wait_until(WAIT, || records(&h.calls_path()).len() >= served),
                "{} recorded {} of the {served} calls it served:\n{}",
                h.name,
                records(&h.calls_path()).len(),
                h.daemon().log()
            );
            records(&h.calls_path())
        })
        .collect()
}

/// Each host's records are exactly the calls its own simulator served, in order (token and
/// content: the simulator sees nginx's upstream connection, not the client's port), and each
/// names the host itself as its server (never a peer's call): every call of the cluster is in
/// exactly one host's records.
fn assert_each_host_recorded_what_it_served(cluster: &Cluster, calls: &[Vec<Value>]) {
    let fp_of: BTreeMap<String, String> = {
        let mut all: Vec<String> = tokens();
        all.extend((0..4).map(|n| format!("{:032X}", 0xDEAD_0000u64 + n)));
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        let fps = fingerprints(&cluster.key, &refs).unwrap();
        all.into_iter().zip(fps).collect()
    };
    let mut every_port = BTreeSet::new();
    for (host, recorded) in cluster.hosts.iter().zip(calls) {
        let served: Vec<(String, String)> = host
            .served()
            .iter()
            .map(|r| {
                let token = r.token.clone().unwrap().to_uppercase();
                (fp_of[&token].clone(), r.content.clone().unwrap_or_default())
            })
            .collect();
        let seen: Vec<(String, String)> = sorted_by_time(recorded.clone(), "ts_start")
            .iter()
            .map(|c| {
                (
                    c["token_fp"].as_str().unwrap().to_owned(),
                    c["content"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect();
        assert_eq!(seen, served, "{}: recorded vs served", host.name);
        for c in recorded {
            // A peer's call in this host's records would name the peer as its server.
            let server = c["server"].as_str().unwrap();
            assert_eq!(server, format!("{}:80", host.ip), "{}: {c}", host.name);
            let connection = (
                c["client"].to_string(),
                server.to_owned(),
                c["ts_start"].to_string(),
            );
            assert!(every_port.insert(connection), "recorded twice: {c}");
        }
    }
}

/// `analyze` over the merged captures with the policy and enforcement mode the hosts run.
fn analyze_merged(cluster: &Cluster, merged: &Path) -> (Vec<Value>, Vec<Value>, Vec<Value>) {
    let dir = &cluster.dir;
    let config = dir.join("analyze.toml");
    std::fs::write(&config, "[enforcement]\nmode = \"on_violation\"\n").unwrap();
    let out = Command::new(monitor_bin().unwrap())
        .arg("analyze")
        .arg(merged)
        .arg("--config")
        .arg(&config)
        .arg("--key")
        .arg(&cluster.key)
        .arg("--calls")
        .arg(dir.join("merged-calls.jsonl"))
        .arg("--violations")
        .arg(dir.join("merged-violations.jsonl"))
        .arg("--decisions")
        .arg(dir.join("merged-decisions.jsonl"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "analyze: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        records(&dir.join("merged-calls.jsonl")),
        records(&dir.join("merged-violations.jsonl")),
        records(&dir.join("merged-decisions.jsonl")),
    )
}

fn decision_keys(decisions: &[Value]) -> Vec<(String, String)> {
    let mut keys: Vec<(String, String)> = decisions
        .iter()
        .map(|d| {
            (
                d["token_fp"].as_str().unwrap_or("").to_owned(),
                d["action"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    keys.sort();
    keys
}

fn stop_daemons(cluster: &mut Cluster) {
    // A moment for the last records (flushed every tick).
    std::thread::sleep(Duration::from_millis(1500));
    for host in &mut cluster.hosts {
        let (status, log) = host.daemon.take().unwrap().stop().unwrap();
        assert!(status.success(), "{} exited {status}:\n{log}", host.name);
    }
}

#[test]
fn without_shared_state_each_host_counts_alone_and_the_spread_token_goes_unnoticed() {
    if !monitor_tests::require_root("cluster") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::create(
        dir.path(),
        &ClusterOptions {
            subnet: 141,
            tokens: tokens(),
            shared: false,
            ..ClusterOptions::default()
        },
    )
    .unwrap();
    cluster.start_daemons().unwrap();
    cluster.start_captures().unwrap();
    spread_traffic(&cluster);
    let calls = settled_calls(&cluster);
    stop_daemons(&mut cluster);
    let merged = cluster.merged_capture().unwrap();
    assert_each_host_recorded_what_it_served(&cluster, &calls);

    let (merged_calls, merged_violations, _) = analyze_merged(&cluster, &merged);
    assert_eq!(
        merged_calls.len(),
        calls.iter().map(Vec::len).sum::<usize>(),
        "the merged capture holds every call once"
    );
    // One host seeing everything finds the spread token, the heavy exports and the prober...
    let rules: BTreeSet<(String, String)> = merged_violations
        .iter()
        .map(|v| {
            let (who, rule, _) = violation_key(v);
            (who, rule)
        })
        .collect();
    let fps = fingerprints(&cluster.key, &[SPREAD, HEAVY]).unwrap();
    for expected in [
        (fps[0].clone(), "api_calls".to_owned()),
        (fps[1].clone(), "heavy_calls".to_owned()),
        (
            format!("client {}", cluster.client_ip),
            "refused_calls".to_owned(),
        ),
    ] {
        assert!(rules.contains(&expected), "{expected:?} in {rules:?}");
    }
    // ...that hosts counting alone never see.
    let alone = union(&cluster, |h| h.violations_path());
    assert!(alone.is_empty(), "{alone:?}");
}

#[test]
fn the_readme_s_acl_user_reaches_its_prefix_and_nothing_else() {
    use monitor_tests::cluster::{REDIS_USER, REDIS_USER_PASSWORD, REDIS_USER_RULES};
    use monitor_tests::redis::{RedisOptions, RedisServer};
    // The rules the README gives are the harness's, word for word.
    let readme =
        std::fs::read_to_string(monitor_tests::workspace_root().join("README.md")).unwrap();
    let rules: Vec<&str> = REDIS_USER_RULES.split_whitespace().skip(1).collect();
    assert!(
        readme.contains(&format!(
            "user {REDIS_USER} on #<sha256 of the password> {}",
            rules.join(" ")
        )),
        "README's ACL line differs from {REDIS_USER_RULES}"
    );
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let redis = RedisServer::start(RedisOptions {
        netns: None,
        bind: "127.0.0.1".into(),
        port,
        dir: dir.path().join("redis"),
        password: Some("admin-password-for-the-test".into()),
        users: vec![(
            REDIS_USER.into(),
            REDIS_USER_PASSWORD.into(),
            REDIS_USER_RULES.into(),
        )],
    })
    .unwrap();
    let as_user = |args: &[&str]| {
        redis
            .cli_as(Some(REDIS_USER), Some(REDIS_USER_PASSWORD), args)
            .unwrap()
            .trim()
            .to_owned()
    };
    assert_eq!(as_user(&["PING"]), "PONG");
    // Under the prefix: streams, hashes, keys with expiry, scripts, publishing.
    assert!(as_user(&["XADD", "redcap-monitor:calls", "*", "b", "x"]).contains('-'));
    assert_eq!(as_user(&["XLEN", "redcap-monitor:calls"]), "1");
    assert_eq!(
        as_user(&["HSET", "redcap-monitor:suspensions", "fp", "{}"]),
        "1"
    );
    assert_eq!(
        as_user(&["SET", "redcap-monitor:host:web1", "1", "PX", "5000"]),
        "OK"
    );
    assert_eq!(
        as_user(&[
            "EVAL",
            "return redis.call('XLEN', KEYS[1])",
            "1",
            "redcap-monitor:calls"
        ]),
        "1"
    );
    assert_eq!(
        as_user(&["PUBLISH", "redcap-monitor:suspensions", "x"]),
        "0"
    );
    // Elsewhere, or dangerous: refused.
    for args in [
        &["SET", "other:key", "1"][..],
        &["GET", "other:key"],
        &["PUBLISH", "other", "x"],
        &[
            "EVAL",
            "return redis.call('SET', KEYS[1], 1)",
            "1",
            "other:key",
        ],
        &["FLUSHALL"],
        &["KEYS", "*"],
        &["CONFIG", "GET", "*"],
    ] {
        let said = as_user(args);
        assert!(
            said.contains("NOPERM") || said.contains("No permissions"),
            "{args:?}: {said}"
        );
    }
    assert_eq!(redis.cli(&["EXISTS", "other:key"]).unwrap().trim(), "0");
}

/// A cluster of three sharing Redis, with the daemons started (peer timeout 2 s).
fn shared_cluster(dir: &Path, subnet: u8) -> Cluster {
    let mut cluster = Cluster::create(
        dir,
        &ClusterOptions {
            subnet,
            tokens: tokens(),
            shared: true,
            shared_extra: "peer_timeout = \"2s\"\n".into(),
            ..ClusterOptions::default()
        },
    )
    .unwrap();
    cluster.start_daemons().unwrap();
    // Every host hears the other two before the traffic starts.
    for host in &cluster.hosts {
        assert!(
            wait_until(WAIT, || metric(host, "redcap_monitor_shared_peers")
                == Some(2.0)),
            "{} does not see its two peers:\n{}\n{}",
            host.name,
            host.metrics()
                .lines()
                .filter(|l| l.contains("shared"))
                .collect::<Vec<_>>()
                .join("\n"),
            host.daemon().log()
        );
    }
    cluster
}

/// The `redcap_monitor_shared_*` metrics the shipped Grafana dashboard queries.
fn dashboard_shared_metrics() -> BTreeSet<String> {
    let path =
        monitor_tests::workspace_root().join("config/grafana/dashboards/redcap-monitor.json");
    let text = std::fs::read_to_string(path).unwrap();
    let mut names = BTreeSet::new();
    let mut rest = text.as_str();
    while let Some(start) = rest.find("redcap_monitor_shared_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    assert!(names.len() >= 6, "{names:?}");
    names
}

/// The value of an unlabelled metric (or the sum over its series).
fn metric(host: &monitor_tests::cluster::Host, name: &str) -> Option<f64> {
    let text = host.metrics();
    let values: Vec<f64> = text
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// A shared cluster (on `subnet`) through the spread traffic, captured on every host and stopped:
/// checks what every host recorded against its simulator and the cluster's violations against
/// `analyze` of the merged captures; returns the cluster and that analysis' decisions.
fn spread_over_a_shared_cluster(dir: &Path, subnet: u8) -> (Cluster, Vec<Value>) {
    let mut cluster = shared_cluster(dir, subnet);
    // Every metric of the dashboard's cluster row is exposed by every host.
    for host in &cluster.hosts {
        let exposition = host.metrics();
        for name in dashboard_shared_metrics() {
            let family = name.strip_suffix("_total").unwrap_or(&name);
            assert!(
                exposition.contains(&format!("# TYPE {family} ")),
                "{}: the dashboard's {name} is not exposed",
                host.name
            );
        }
    }
    cluster.start_captures().unwrap();
    spread_traffic(&cluster);
    let calls = settled_calls(&cluster);
    // The decisions follow the calls within the hold of the slowest peer's watermark.
    let expected_violations = 3 + 1 + 1;
    assert!(
        wait_until(WAIT, || union(&cluster, |h| h.violations_path()).len()
            >= expected_violations),
        "{:?}",
        union(&cluster, |h| h.violations_path())
    );
    stop_daemons(&mut cluster);
    let merged = cluster.merged_capture().unwrap();
    assert_each_host_recorded_what_it_served(&cluster, &calls);
    let (merged_calls, merged_violations, merged_decisions) = analyze_merged(&cluster, &merged);
    assert_eq!(
        merged_calls.len(),
        calls.iter().map(Vec::len).sum::<usize>()
    );

    // Violations: the same (who, rule, count), at the same moments.
    let live = sorted_by_time(union(&cluster, |h| h.violations_path()), "ts");
    let offline = sorted_by_time(merged_violations, "ts");
    let keys = |v: &[Value]| v.iter().map(violation_key).collect::<Vec<_>>();
    assert_eq!(keys(&live), keys(&offline), "cluster vs one analysis");
    for (l, o) in live.iter().zip(&offline) {
        let (l, o) = (l["ts"].as_f64().unwrap(), o["ts"].as_f64().unwrap());
        assert!((l - o).abs() < CLOCK_SLACK_S, "{l} vs {o}");
    }
    // Each violation is recorded by the host that served the offending call: SPREAD's 4th, 5th
    // and 6th calls went to web1, web2, web3; HEAVY's second to web3; the 4th refused call to web1.
    let fps = fingerprints(&cluster.key, &[SPREAD, HEAVY]).unwrap();
    let prober = format!("client {}", cluster.client_ip);
    let expected: [(usize, &str, &str, u64); 5] = [
        (0, &fps[0], "api_calls", 4),
        (1, &fps[0], "api_calls", 5),
        (2, &fps[0], "api_calls", 6),
        (2, &fps[1], "heavy_calls", 2),
        (0, &prober, "refused_calls", 4),
    ];
    for (i, host) in cluster.hosts.iter().enumerate() {
        let mut mine: Vec<(String, String, u64)> = records(&host.violations_path())
            .iter()
            .map(violation_key)
            .collect();
        let mut want: Vec<(String, String, u64)> = expected
            .iter()
            .filter(|e| e.0 == i)
            .map(|e| (e.1.to_owned(), e.2.to_owned(), e.3))
            .collect();
        mine.sort();
        want.sort();
        assert_eq!(mine, want, "{}'s violations", host.name);
    }
    (cluster, merged_decisions)
}

#[test]
fn the_cluster_s_violations_are_those_of_one_host_seeing_all_the_traffic() {
    if !monitor_tests::require_root("cluster") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (cluster, _) = spread_over_a_shared_cluster(dir.path(), 142);
    // Redis holds fingerprints, never a raw token.
    let held = cluster.redis.dump_text().unwrap();
    assert!(held.contains("redcap-monitor:"), "{held}");
    for token in tokens() {
        assert!(
            !held.to_uppercase().contains(&token),
            "a raw token in Redis"
        );
    }
}

/// Escalation is the cluster's too: SPREAD's first offence (on web1) is warned, its second (on
/// web2) suspends, as one host seeing everything decides; the suspension is in force on every
/// host and alerted once.
#[test]
fn the_cluster_decides_and_suspends_once_as_one_host_seeing_all_the_traffic() {
    if !monitor_tests::require_root("cluster") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (cluster, merged_decisions) = spread_over_a_shared_cluster(dir.path(), 145);
    // Decisions: each made once in the cluster, the same as the single analysis'.
    let decisions = union(&cluster, |h| h.decisions_path());
    assert_eq!(decision_keys(&decisions), decision_keys(&merged_decisions));
    let spread_fp = fingerprints(&cluster.key, &[SPREAD]).unwrap().remove(0);
    assert!(
        decisions
            .iter()
            .any(|d| d["token_fp"] == spread_fp.as_str() && d["action"] == "suspend"),
        "{decisions:?}"
    );
    // The suspension is in force on every host (decided on one, applied by all)...
    for host in &cluster.hosts {
        let suspended = monitor_tests::daemon::admin_json(&host.store_path(), &["suspensions"]);
        assert!(
            suspended
                .iter()
                .any(|s| s["token_fp"] == spread_fp.as_str()),
            "{}: {suspended:?}",
            host.name
        );
    }
    // ...and alerted once: only the deciding host sends `suspended`.
    let suspended_alerts: usize = cluster
        .hosts
        .iter()
        .map(|h| {
            h.alert_events()
                .iter()
                .filter(|e| e["event"] == "suspended" && e["token_fp"] == spread_fp.as_str())
                .count()
        })
        .sum();
    assert_eq!(suspended_alerts, 1);
}

/// `n` calls of `token` on host `i`.
fn calls_on(cluster: &Cluster, i: usize, token: &str, n: usize) {
    for _ in 0..n {
        cluster.call(i, token);
    }
}

#[test]
fn redis_down_then_back_and_a_daemon_killed_lose_and_duplicate_nothing() {
    if !monitor_tests::require_root("cluster") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = shared_cluster(dir.path(), 143);
    let fps = fingerprints(&cluster.key, &[SPREAD, PYCAP]).unwrap();

    // Redis stops: every host says so (metric, one alert) and goes on alone.
    cluster.redis.stop().unwrap();
    for host in &cluster.hosts {
        assert!(
            wait_until(WAIT, || metric(host, "redcap_monitor_shared_state_up")
                == Some(0.0)),
            "{}: {}",
            host.name,
            host.metrics()
        );
    }
    // Two calls on web1 and one on web2 of PYCAP while Redis is away: no host alone is over.
    calls_on(&cluster, 0, PYCAP, 2);
    calls_on(&cluster, 1, PYCAP, 1);
    assert!(wait_until(WAIT, || records(&cluster.hosts[0].calls_path())
        .len()
        == 2));
    assert!(wait_until(WAIT, || records(&cluster.hosts[1].calls_path())
        .len()
        == 1));
    for host in &cluster.hosts {
        assert!(
            wait_until(WAIT, || host
                .alert_events()
                .iter()
                .any(|e| e["event"] == "shared_state_lost")),
            "{}: no shared_state_lost alert",
            host.name
        );
        assert!(
            wait_until(WAIT, || metric(
                host,
                "redcap_monitor_shared_buffered_calls"
            )
            .is_some()),
            "{}",
            host.name
        );
    }
    assert!(
        wait_until(WAIT, || metric(
            &cluster.hosts[0],
            "redcap_monitor_shared_buffered_calls"
        ) >= Some(2.0)),
        "{}",
        cluster.hosts[0].metrics()
    );

    // Redis is back: the buffered calls are published, once; the restored alert follows.
    cluster.redis.start_again().unwrap();
    for host in &cluster.hosts {
        assert!(
            wait_until(WAIT, || metric(host, "redcap_monitor_shared_state_up")
                == Some(1.0)),
            "{}",
            host.name
        );
        assert!(
            wait_until(WAIT, || host
                .alert_events()
                .iter()
                .any(|e| e["event"] == "shared_state_restored")),
            "{}: no shared_state_restored alert",
            host.name
        );
        let lost = host
            .alert_events()
            .iter()
            .filter(|e| e["event"] == "shared_state_lost")
            .count();
        assert_eq!(lost, 1, "{}: one alert per outage", host.name);
    }
    // web3 received web1's two and web2's one.
    assert!(
        wait_until(WAIT, || metric(
            &cluster.hosts[2],
            "redcap_monitor_shared_calls_received_total"
        ) == Some(3.0)),
        "{}",
        cluster.hosts[2].metrics()
    );
    // The fourth PYCAP call, on web3, is over the cluster's limit: the buffered three counted.
    cluster.call(2, PYCAP);
    assert!(
        wait_until(WAIT, || records(&cluster.hosts[2].violations_path())
            .iter()
            .any(|v| v["token_fp"] == fps[1].as_str()
                && v["rule"] == "api_calls"
                && v["count"] == 4)),
        "web3 did not count the calls buffered during the outage: {:?}\n{}",
        records(&cluster.hosts[2].violations_path()),
        cluster.hosts[2].daemon().log()
    );

    // kill -9 web2: the others drop it after the peer timeout, and say so.
    cluster.hosts[1].daemon.as_mut().unwrap().kill_9().unwrap();
    cluster.hosts[1].daemon = None;
    for i in [0, 2] {
        let host = &cluster.hosts[i];
        assert!(
            wait_until(WAIT, || metric(host, "redcap_monitor_shared_peers")
                == Some(1.0)),
            "{}",
            host.name
        );
        assert!(
            wait_until(WAIT, || host
                .alert_events()
                .iter()
                .any(|e| e["event"] == "shared_peer_lost")),
            "{}: no shared_peer_lost alert",
            host.name
        );
    }
    // Meanwhile SPREAD calls web1 and web3 (two in all), then web2 comes back: it rebuilds its
    // windows from the stream, so its first SPREAD call is the third (no violation) and the
    // second the fourth (a violation decided on web2).
    cluster.call(0, SPREAD);
    cluster.call(2, SPREAD);
    cluster.hosts[1].start_daemon().unwrap();
    assert!(
        wait_until(WAIT, || metric(
            &cluster.hosts[1],
            "redcap_monitor_shared_peers"
        ) == Some(2.0)),
        "{}",
        cluster.hosts[1].metrics()
    );
    let web2_violations_before = records(&cluster.hosts[1].violations_path()).len();
    cluster.call(1, SPREAD);
    cluster.call(1, SPREAD);
    assert!(
        wait_until(WAIT, || records(&cluster.hosts[1].violations_path())
            .iter()
            .any(|v| v["token_fp"] == fps[0].as_str() && v["count"] == 4)),
        "web2 did not rebuild its windows: {:?}\n{}",
        records(&cluster.hosts[1].violations_path()),
        cluster.hosts[1].daemon().log()
    );
    // Nothing decided before the crash is decided again (PYCAP's violation was web3's).
    let web2 = records(&cluster.hosts[1].violations_path());
    assert_eq!(web2.len(), web2_violations_before + 1, "{web2:?}");
    assert!(
        web2.iter().all(|v| v["token_fp"] != fps[1].as_str()),
        "{web2:?}"
    );

    // Every call is in the stream once: the entries' calls add up to the calls served.
    let served: usize = cluster.hosts.iter().map(|h| h.served().len()).sum();
    let published: f64 = cluster
        .hosts
        .iter()
        .filter_map(|h| metric(h, "redcap_monitor_shared_calls_published_total"))
        .sum();
    assert_eq!(
        stream_calls(&cluster),
        served as u64,
        "calls in the stream vs calls served"
    );
    // web2's first instance published its one call before the crash; the new one its two.
    assert!(published <= served as f64);
}

/// The calls in the shared stream (the one key of type stream): entries of kind `k = c`, not
/// the heartbeats (`h`) and suspension notes (`s`) beside them.
fn stream_calls(cluster: &Cluster) -> u64 {
    let keys = cluster.redis.keys().unwrap();
    let streams: Vec<&String> = keys
        .iter()
        .filter(|k| cluster.redis.cli(&["TYPE", k]).unwrap().trim() == "stream")
        .collect();
    assert_eq!(streams.len(), 1, "{keys:?}");
    // redis-cli prints each element on its own line: id, field, value, field, value...; each
    // entry says how many calls it carries (`n`).
    let text = cluster
        .redis
        .cli(&["XRANGE", streams[0], "-", "+"])
        .unwrap();
    let lines: Vec<&str> = text.lines().collect();
    lines
        .windows(2)
        .filter(|w| w[0] == "n")
        .filter_map(|w| w[1].parse::<u64>().ok())
        .sum()
}

/// What REDCap's External Module decides for `token` on `host`: `SuspensionList::lookup` on the
/// host's list, run by php-cli (the module's own code).
fn module_state(host: &monitor_tests::cluster::Host, token: &str) -> String {
    let script = format!(
        "require '{}';\n\
         $r = \\RedcapMonitor\\ApiPolicyModule\\SuspensionList::lookup($argv[1], $argv[2], time(), 10);\n\
         echo $r['state'];\n",
        monitor_tests::workspace_root()
            .join("redcap-module/redcap_monitor_v1.0.0/SuspensionList.php")
            .display()
    );
    let out = Command::new("php")
        .arg("-r")
        .arg(&script)
        .arg(host.module_dir())
        .arg(token)
        .output()
        .expect("php (php-cli, `cargo xtask setup`)");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn a_manual_suspension_on_one_host_is_refused_by_every_host_s_module() {
    if !monitor_tests::require_root("cluster") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cluster = shared_cluster(dir.path(), 144);
    let fp = fingerprints(&cluster.key, &[PYCAP]).unwrap().remove(0);
    for host in &cluster.hosts {
        assert!(
            wait_until(WAIT, || module_state(host, PYCAP) == "clear"),
            "{}",
            host.name
        );
        // `status` and `top` (asking the host's daemon) show the cluster: Redis up, both peers.
        for args in [&["status"][..], &["top", "--once"]] {
            let mut text = String::new();
            let shown = wait_until(WAIT, || {
                let out = monitor_tests::netns::command_in(
                    Some(&host.ns),
                    &monitor_bin().unwrap().to_string_lossy(),
                )
                .args(args)
                .arg("--config")
                .arg(&host.config)
                .output()
                .unwrap();
                text = String::from_utf8_lossy(&out.stdout).into_owned();
                let line = text
                    .lines()
                    .find(|l| l.starts_with("cluster:"))
                    .unwrap_or("");
                line.starts_with(&format!("cluster: host {}, Redis up", host.name))
                    && cluster
                        .hosts
                        .iter()
                        .filter(|h| h.name != host.name)
                        .all(|h| line.contains(&format!("{} (live", h.name)))
            });
            assert!(shown, "{} {args:?}:\n{text}", host.name);
        }
    }
    let body =
        format!("{{\"token_fp\":\"{fp}\",\"for\":\"1h\",\"reason\":\"asked by the data office\"}}");
    let (status, answer) = cluster.hosts[0].admin_api("POST", "/api/v1/suspend", Some(&body));
    assert_eq!(status, 200, "{answer}");
    for host in &cluster.hosts {
        assert!(
            wait_until(WAIT, || module_state(host, PYCAP) == "suspended"),
            "{}'s module does not refuse the token: {}; admin API: {:?}; Redis: {}\n{}",
            host.name,
            module_state(host, PYCAP),
            host.admin_api("GET", "/api/v1/suspensions", None),
            cluster
                .redis
                .dump_text()
                .unwrap_or_default()
                .lines()
                .filter(|l| !l.contains("\"k\""))
                .take(40)
                .collect::<Vec<_>>()
                .join("\n"),
            host.daemon()
                .log()
                .lines()
                .filter(|l| l.contains("uspen") || l.contains("shared"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        // The admin API's view is refreshed every second.
        let mut list = String::new();
        assert!(
            wait_until(WAIT, || {
                list = host.admin_api("GET", "/api/v1/suspensions", None).1;
                list.contains(&fp)
            }),
            "{}: {list}",
            host.name
        );
    }
    // Alerted once, by the host that took the request.
    assert!(wait_until(WAIT, || cluster.hosts[0]
        .alert_events()
        .iter()
        .any(|e| e["event"] == "suspended")));
    std::thread::sleep(Duration::from_secs(2));
    for host in &cluster.hosts[1..] {
        assert!(
            !host
                .alert_events()
                .iter()
                .any(|e| e["event"] == "suspended"),
            "{} alerted a suspension it did not make",
            host.name
        );
    }
    // Lifted on another host: every module lets the token through again.
    let body = format!("{{\"token_fp\":\"{fp}\",\"reason\":\"sorted out\"}}");
    let (status, answer) = cluster.hosts[2].admin_api("POST", "/api/v1/lift", Some(&body));
    assert_eq!(status, 200, "{answer}");
    for host in &cluster.hosts {
        assert!(
            wait_until(WAIT, || module_state(host, PYCAP) == "clear"),
            "{}: {}",
            host.name,
            module_state(host, PYCAP)
        );
    }
}
