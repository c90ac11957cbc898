//! The REDCap External Module (`redcap-module/`) closing the loop: its PHP unit tests under
//! php-cli; the fingerprint it computes in PHP against the daemon's; and end to end, Apache +
//! mod_php serving a REDCap-like `api/index.php` that calls the module's
//! `redcap_module_api_before` hook the way REDCap's `API/index.php` does, in front of the live
//! daemon (libpcap on the server's veth) publishing its suspension list. A token the policy
//! suspends, and one an admin suspends by hand, are refused with the module's 403 message; a lift
//! lets calls through again; a stopped daemon (SIGTERM: no list; `kill -9`: a stale one) gives
//! the configured fail-open or fail-closed answer, written to the module's log. Needs root for
//! the end-to-end part; REDCAP_MONITOR_SKIP_ROOT_TESTS=1 skips it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use monitor_tests::daemon::{
    LiveDaemon, admin_json, fingerprints, monitor_bin, without_api_listener,
};
use monitor_tests::netns::NamespacePair;
use monitor_tests::sim::wait_until;
use monitor_tests::unit::{Capabilities, make_module_directory, run_as_the_unit, service_user};
use monitor_tests::web::{Apache, TestPki};
use serde_json::Value;

/// Suspended by the policy (too many calls).
const ABUSER: &str = "AB12CD34EF56AB12CD34EF56AB12CD34";
/// Exempt from the rules; suspended and lifted by hand.
const HAND: &str = "0C0C0C0C1D1D1D1D2E2E2E2E3F3F3F3F";
/// Exempt from the rules, never suspended.
const GOOD: &str = "77777777888888889999999900000000";
const SUBNET: u8 = 121;
/// How soon a change of the suspensions must reach the web server (the issue's figure).
const PROPAGATION: Duration = Duration::from_secs(2);
const WAIT: Duration = Duration::from_secs(30);

fn module_source() -> PathBuf {
    monitor_tests::workspace_root().join("redcap-module")
}

#[test]
fn the_module_s_php_unit_tests_pass_under_php_cli() {
    let out = Command::new("php")
        .arg(module_source().join("tests/module_test.php"))
        .output()
        .expect("php (php-cli, installed by `cargo xtask setup`)");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("all passed"),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_module_fingerprints_a_token_exactly_as_the_daemon_does() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("site.key");
    // Upper, lower and mixed case, both lengths REDCap uses, a short and the longest token.
    let tokens = [
        ABUSER,
        "ab12cd34ef56ab12cd34ef56ab12cd34",
        "AbCdEf0123456789aBcDeF0123456789",
        "0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF",
        "x",
        &"Z9".repeat(64),
    ];
    let daemon = fingerprints(&key, &tokens).unwrap();
    let script = format!(
        "require '{}';\n\
         $key = file_get_contents($argv[1], false, null, 0, 32);\n\
         foreach (array_slice($argv, 2) as $t) {{\n\
           echo \\RedcapMonitor\\ApiPolicyModule\\SuspensionList::fingerprint($key, \
             \\RedcapMonitor\\ApiPolicyModule\\SuspensionList::normalise($t)), \"\\n\";\n\
         }}\n",
        module_source()
            .join("redcap_monitor_v1.0.0/SuspensionList.php")
            .display()
    );
    let out = Command::new("php")
        .arg("-r")
        .arg(&script)
        .arg(&key)
        .args(tokens)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let php: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(php, daemon);
    assert_eq!(daemon[0], daemon[1], "case does not matter");
}

/// The REDCap-like API script: known tokens (else 403 as REDCap answers), then the module's hook
/// as REDCap's `API/index.php` calls it (`ExternalModules::callHook('redcap_module_api_before',
/// [$project_id, $_POST])`; a string returned is sent as a 403), then a small JSON answer. The
/// module's settings persist in `settings.json` and its log in `module-log.jsonl`.
fn write_site(dir: &Path, module_list: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let site = dir.join("site");
    let docroot = site.join("www");
    let api = docroot.join("api");
    // The module is installed as REDCap keeps modules: modules/<prefix>_v<version>/.
    let modules = site.join("modules/redcap_monitor_v1.0.0");
    for d in [&api, &modules] {
        std::fs::create_dir_all(d).unwrap();
    }
    let source = module_source().join("redcap_monitor_v1.0.0");
    for entry in std::fs::read_dir(&source).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), modules.join(entry.file_name())).unwrap();
    }
    std::fs::copy(
        module_source().join("tests/AbstractExternalModule.php"),
        site.join("AbstractExternalModule.php"),
    )
    .unwrap();
    let settings = site.join("settings.json");
    let log = site.join("module-log.jsonl");
    std::fs::write(&log, "").unwrap();
    write_settings(&settings, module_list, "open", 10);
    let known: String = [ABUSER, HAND, GOOD]
        .iter()
        .map(|t| format!("'{t}' => 15, "))
        .collect();
    std::fs::write(
        api.join("index.php"),
        format!(
            r#"<?php
$GLOBALS['STANDIN_SETTINGS_FILE'] = '{settings}';
$GLOBALS['STANDIN_LOG_FILE'] = '{log}';
require '{site}/AbstractExternalModule.php';
require '{modules}/ApiPolicyModule.php';
header('Content-Type: application/json; charset=utf-8');
$projects = [{known}];
$token = $_POST['token'] ?? '';
if (!is_string($token) || !preg_match('/^[A-Za-z0-9]+$/', $token) || !isset($projects[strtoupper($token)])) {{
    http_response_code(403);
    echo json_encode(['error' => 'You do not have permissions to use the API']);
    exit;
}}
$module = new \RedcapMonitor\ApiPolicyModule\ApiPolicyModule();
$refused = $module->redcap_module_api_before($projects[strtoupper($token)], $_POST);
if (is_string($refused) && $refused !== '') {{
    http_response_code(403);
    echo json_encode(['error' => $refused]);
    exit;
}}
echo '{{"ok":true}}';
"#,
            settings = settings.display(),
            log = log.display(),
            site = site.display(),
            modules = modules.display(),
        ),
    )
    .unwrap();
    let mut paths = vec![dir.to_owned(), site.clone(), docroot.clone(), api.clone()];
    paths.push(site.join("modules"));
    paths.push(modules.clone());
    for d in paths {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    for f in [&settings, &log] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o666)).unwrap();
    }
    (docroot, settings, log)
}

fn write_settings(path: &Path, list_dir: &Path, when_unavailable: &str, stale_after: u32) {
    std::fs::write(
        path,
        serde_json::json!({
            "list-dir": list_dir,
            "contact": "redcap-help@example.org",
            "when-unavailable": when_unavailable,
            "stale-after": stale_after.to_string(),
        })
        .to_string(),
    )
    .unwrap();
}

/// One API call from the client's namespace: the status and the body.
fn call(pair: &NamespacePair, token: &str) -> (u16, String) {
    let out = pair
        .exec(&pair.client_ns, "curl")
        .args(["-sS", "--max-time", "5", "-w", "\n%{http_code}", "-d"])
        .arg(format!("token={token}&content=version&format=json"))
        .arg(format!("http://{}/api/", pair.server_ip))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, status) = text.rsplit_once('\n').unwrap();
    (status.trim().parse().unwrap(), body.to_owned())
}

/// Calls until `accept` takes the answer or `within` passes; the last answer.
fn call_until(
    pair: &NamespacePair,
    token: &str,
    within: Duration,
    accept: impl Fn(u16, &str) -> bool,
) -> (u16, String) {
    let mut last = (0, String::new());
    wait_until(within, || {
        last = call(pair, token);
        accept(last.0, &last.1)
    });
    last
}

fn refused_as_suspended(status: u16, body: &str) -> bool {
    status == 403 && body.contains("suspended by the API policy")
}

fn suspended_fps(store: &Path) -> Vec<String> {
    let out = Command::new(monitor_bin().unwrap())
        .args(["suspensions", "--json", "--store"])
        .arg(store)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["token_fp"].as_str().map(String::from))
        .collect()
}

fn module_log(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn a_suspended_token_is_refused_by_redcap_s_api_until_lifted_and_a_stopped_daemon_fails_as_configured()
 {
    if !monitor_tests::require_root("redcap_module") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("site.key");
    let fps = fingerprints(&key, &[ABUSER, HAND, GOOD]).unwrap();
    let (abuser, hand, good) = (fps[0].clone(), fps[1].clone(), fps[2].clone());
    let list_dir = dir.path().join("module-list");
    let (docroot, settings, module_log_path) = write_site(dir.path(), &list_dir);
    let pair = NamespacePair::create(SUBNET).unwrap();
    let pki = TestPki::create(dir.path(), &pair.server_ip).unwrap();
    let conf = format!(
        "LoadModule dir_module {}/mod_dir.so\nDirectoryIndex index.php\n",
        monitor_tests::web::APACHE_MODULES
    );
    let _apache =
        Apache::start_serving(&pair.server_ns, dir.path(), &pki, &docroot, &conf).unwrap();
    let store = dir.path().join("state/state.redb");
    let config = dir.path().join("module.toml");
    let stats = dir.path().join("stats.json");
    std::fs::write(
        &config,
        format!(
            "[capture]\nmode = \"pcap\"\ninterfaces = [\"{}\"]\nports = [80]\n\
             [output]\nstats = \"{}\"\n[store]\npath = \"{}\"\n\
             [enforcement]\nmode = \"on_violation\"\n\
             [[policy.rules]]\nname = \"api_calls\"\ncalls = \"all\"\nlimit = 3\nwindow = \"60s\"\n\
             [[policy.overrides]]\ntoken_fp = \"{hand}\"\nexempt = true\n\
             [[policy.overrides]]\ntoken_fp = \"{good}\"\nexempt = true\n\
             [redcap_module]\ndir = \"{}\"\ngroup = \"www-data\"\nheartbeat = \"1s\"\n{}",
            pair.server_if,
            stats.display(),
            store.display(),
            list_dir.display(),
            without_api_listener()
        ),
    )
    .unwrap();
    let list = list_dir.join("suspended.txt");
    let mut daemon = LiveDaemon::start(Some(&pair.server_ns), &config, &key).unwrap();
    assert!(
        wait_until(WAIT, || list.exists()),
        "no list: {}",
        daemon.log()
    );
    // The web server's group reads the list and the key; nobody else does.
    assert_handed_to_the_web_server(&list_dir);
    assert_eq!(call(&pair, GOOD), (200, "{\"ok\":true}".into()));

    // The policy suspends the abuser (3 calls a minute, a warning first); REDCap then refuses
    // its calls with the module's message.
    for _ in 0..6 {
        call(&pair, ABUSER);
    }
    assert!(
        wait_until(WAIT, || suspended_fps(&store).contains(&abuser)),
        "the daemon did not suspend the abuser: {}",
        daemon.log()
    );
    let (status, body) = call_until(&pair, ABUSER, PROPAGATION, refused_as_suspended);
    assert!(refused_as_suspended(status, &body), "{status} {body}");
    assert!(body.contains("until 20"), "until when: {body}");
    assert!(body.contains("api_calls"), "why (the rule): {body}");
    assert!(
        body.contains("redcap-help@example.org"),
        "whom to contact: {body}"
    );
    assert_eq!(call(&pair, GOOD).0, 200, "others pass");

    // By hand: suspended, refused within the propagation time; lifted, accepted again.
    admin(
        &store,
        &[
            "suspend",
            &hand,
            "--for",
            "1h",
            "--reason",
            "asked by the data office",
        ],
    );
    let (status, body) = call_until(&pair, HAND, PROPAGATION, refused_as_suspended);
    assert!(refused_as_suspended(status, &body), "{status} {body}");
    assert!(body.contains("asked by the data office"), "{body}");
    admin(&store, &["lift", &hand, "--reason", "sorted out"]);
    let (status, body) = call_until(&pair, HAND, PROPAGATION, |s, _| s == 200);
    assert_eq!(status, 200, "{body}");
    assert!(
        module_log(&module_log_path).is_empty(),
        "nothing to log while the list is kept"
    );

    // SIGTERM: the daemon removes its list. Fail open (the default): the suspended abuser gets
    // through unchecked, and the module's log says why, once.
    let (status, log) = daemon.stop().unwrap();
    assert!(status.success(), "{log}");
    assert!(!list.exists(), "the list goes with the daemon");
    assert!(
        !list_dir.join("fingerprint.key").exists(),
        "and so does the key copy"
    );
    // Written at start, on the policy's suspension, the manual one and the lift.
    let counted: Value = serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    assert!(
        counted["redcap_module"]["writes"].as_u64() >= Some(4),
        "{counted}"
    );
    assert_eq!(counted["redcap_module"]["errors"], 0, "{counted}");
    assert_eq!(call(&pair, ABUSER).0, 200, "fail open");
    assert_eq!(call(&pair, ABUSER).0, 200, "fail open");
    let logged = module_log(&module_log_path);
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert_eq!(logged[0]["parameters"]["list_state"], "missing");
    assert!(logged[0]["message"].as_str().unwrap().contains("fail open"));
    // Fail closed: every token is refused, saying the policy cannot be checked.
    write_settings(&settings, &list_dir, "closed", 3);
    let (status, body) = call(&pair, GOOD);
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("cannot be checked") && body.contains("missing"),
        "{body}"
    );

    // Back up: the store kept the suspension, the list says so again and GOOD passes.
    let mut daemon = LiveDaemon::start(Some(&pair.server_ns), &config, &key).unwrap();
    let (status, body) = call_until(&pair, GOOD, WAIT, |s, _| s == 200);
    assert_eq!(status, 200, "{body}: {}", daemon.log());
    let (status, body) = call(&pair, ABUSER);
    assert!(
        refused_as_suspended(status, &body),
        "kept across a restart: {status} {body}"
    );

    // kill -9: the list stays but is no longer refreshed; past `stale-after` (3 s here), fail
    // closed refuses, fail open lets through.
    daemon.kill_9().unwrap();
    assert!(list.exists());
    let (status, body) = call_until(&pair, GOOD, WAIT, |s, _| s == 403);
    assert!(status == 403 && body.contains("stale"), "{status} {body}");
    write_settings(&settings, &list_dir, "open", 3);
    assert_eq!(call(&pair, ABUSER).0, 200, "fail open on a stale list");

    // Nothing the module wrote holds a raw token.
    for path in [&module_log_path, &settings, &list] {
        let text = std::fs::read_to_string(path).unwrap().to_uppercase();
        for token in [ABUSER, HAND, GOOD] {
            assert!(
                !text.contains(token),
                "{} holds a raw token",
                path.display()
            );
        }
    }
}

/// The list and the key copy in `list_dir` are 0640 and the web server's group's, and the web
/// server's user reads them.
fn assert_handed_to_the_web_server(list_dir: &Path) {
    for path in [
        list_dir.join("suspended.txt"),
        list_dir.join("fingerprint.key"),
    ] {
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(
            (
                meta.permissions().mode() & 0o777,
                std::os::unix::fs::MetadataExt::gid(&meta)
            ),
            (0o640, group_id("www-data")),
            "{}",
            path.display()
        );
        let read = Command::new("setpriv")
            .args([
                "--reuid=www-data",
                "--regid=www-data",
                "--init-groups",
                "cat",
            ])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            read.status.success(),
            "the web server cannot read {}",
            path.display()
        );
    }
}

fn group_id(name: &str) -> u32 {
    let out = Command::new("getent")
        .args(["group", name])
        .output()
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .split(':')
        .nth(2)
        .and_then(|gid| gid.parse().ok())
        .unwrap_or_else(|| panic!("no group {name}"))
}

/// The first JSON line of an admin command (`null` when it printed none).
fn admin(store: &Path, args: &[&str]) -> Value {
    admin_json(store, args)
        .into_iter()
        .next()
        .unwrap_or(Value::Null)
}

/// The daemon as the unit runs it (the service user, no supplementary group, only the
/// capability libpcap needs) hands the module its files through the directory the unit's
/// `ExecStartPre=+` line makes: the web server's group reads the list and the key copy, while
/// the daemon is not in that group. A directory not made so is refused with what to run.
#[test]
fn the_daemon_hands_the_module_its_files_without_being_in_the_web_server_s_group() {
    if !monitor_tests::require_root(module_path!()) {
        return;
    }
    let user = service_user();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::os::unix::fs::chown(&state, Some(user.uid), Some(user.gid)).unwrap();
    let list_dir = dir.path().join("redcap-module");
    make_module_directory(&list_dir);
    let pair = NamespacePair::create(122).unwrap();
    let config = state.join("module.toml");
    std::fs::write(
        &config,
        format!(
            "[capture]\nmode = \"pcap\"\ninterfaces = [\"{}\"]\nports = [80]\n\
             [site]\nkey_file = \"{}\"\n[store]\npath = \"{}\"\n\
             [redcap_module]\ndir = \"{}\"\ngroup = \"www-data\"\nheartbeat = \"1s\"\n{}",
            pair.server_if,
            state.join("site.key").display(),
            state.join("state.redb").display(),
            list_dir.display(),
            without_api_listener()
        ),
    )
    .unwrap();
    let as_the_unit = |netns: Option<&str>, command: &[&str]| {
        let mut args: Vec<std::ffi::OsString> = command.iter().map(Into::into).collect();
        args.push(config.clone().into());
        run_as_the_unit(
            netns,
            &[(dir.path(), dir.path())],
            &Capabilities::of_unit(&["libpcap.conf"]).only(&["net_raw".to_owned()]),
            &monitor_bin().unwrap(),
            &args,
        )
    };
    let mut daemon =
        LiveDaemon::spawn(as_the_unit(Some(&pair.server_ns), &["run", "--config"])).unwrap();
    let list = list_dir.join("suspended.txt");
    assert!(
        wait_until(WAIT, || list.exists()),
        "no list: {}",
        daemon.log()
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.pid().unwrap()))
        .unwrap_or_default();
    let line = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.split_whitespace().collect::<Vec<_>>())
    };
    assert_eq!(line("Uid:").unwrap()[0], user.uid.to_string(), "{status}");
    assert_eq!(line("Groups:"), Some(vec![]), "{status}");
    assert_handed_to_the_web_server(&list_dir);
    daemon.stop().unwrap();

    // Made by hand without the group: the daemon cannot hand it over and says how to.
    std::fs::remove_dir_all(&list_dir).unwrap();
    std::fs::create_dir(&list_dir).unwrap();
    std::os::unix::fs::chown(&list_dir, Some(user.uid), Some(user.gid)).unwrap();
    let checked = as_the_unit(None, &["check-config"]).output().unwrap();
    let said = String::from_utf8_lossy(&checked.stdout).to_string()
        + &String::from_utf8_lossy(&checked.stderr);
    assert!(said.contains("install -d -o"), "check-config: {said}");
    let mut daemon =
        LiveDaemon::spawn(as_the_unit(Some(&pair.server_ns), &["run", "--config"])).unwrap();
    let log = daemon
        .wait_for_log("-m 2750", 1, WAIT)
        .unwrap_or_else(|e| panic!("no advice: {e}"));
    assert!(log.contains("ExecStartPre=+"), "{log}");
    assert!(!list.exists());
    daemon.stop().unwrap();
}
