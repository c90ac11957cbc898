//! Several REDCap web hosts behind one (imagined) load balancer, sharing one Redis: a LAN
//! namespace holding a bridge and `redis-server`, one namespace per host (a veth into the bridge,
//! the REDCap simulator behind nginx on port 80, a webhook receiver on the host's loopback, and
//! `redcap-monitor run` configured from the shipped `config/redcap-monitor.toml` and run the way
//! the unit runs it: as the service user with the unit's capabilities, in a mount namespace with
//! `/proc` hiding other users' processes, its files owned as the package and the unit set them
//! up, see [`crate::unit`]), and a client namespace from which the test's clients pick a host per
//! call, as a balancer would. tcpdump can record each host's veth (the offline oracle). Everything is
//! torn down on drop, namespaces last.

use std::os::unix::fs::{PermissionsExt, chown};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, bail};

use crate::capture::Tcpdump;
use crate::daemon::{LiveDaemon, monitor_bin};
use crate::redis::{RedisOptions, RedisServer};
use crate::sim::{SimOptions, SimRecord, Simulator};
use crate::unit::{
    Capabilities, check_confined, make_module_directory, run_as_the_unit, service_user,
    write_config_secret,
};
use crate::web::{Nginx, TestPki};
use test_support::Receiver;

/// The admin API's bearer token every host's daemon takes (a test secret).
pub const ADMIN_TOKEN: &str = "cluster-admin-token-0123456789abcdef";
/// The Redis default user's password (the test's own, for `redis-cli`).
pub const REDIS_PASSWORD: &str = "cluster-redis-password-5f1e";
/// The daemons' ACL user and its password (read from `shared.password_file`).
pub const REDIS_USER: &str = "redcap-monitor";
pub const REDIS_USER_PASSWORD: &str = "cluster-monitor-password-9c2d";
/// The ACL the README recommends: keys and channels under the prefix only, no dangerous command.
pub const REDIS_USER_RULES: &str = "on ~redcap-monitor:* &redcap-monitor:* -@all +@connection \
                                    +@read +@write +@stream +@pubsub +@scripting +time -@dangerous";
/// Where each daemon's admin API listens, inside its host's namespace.
pub const API_PORT: u16 = 9864;

/// How the cluster is built.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Number of web hosts (named web1, web2, ...).
    pub hosts: usize,
    /// 10.SUBNET.0.0/24 is the LAN.
    pub subnet: u8,
    /// Tokens every host's simulator accepts.
    pub tokens: Vec<String>,
    /// Whether the daemons get a `[shared]` section (else each counts alone, as before).
    pub shared: bool,
    /// `[shared]` settings besides url, host, password_file (e.g. `peer_timeout = "2s"`).
    pub shared_extra: String,
    /// `[enforcement] mode` (the shipped file says `when_degraded`).
    pub enforcement_mode: String,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            hosts: 3,
            subnet: 140,
            tokens: Vec::new(),
            shared: true,
            shared_extra: String::new(),
            enforcement_mode: "on_violation".into(),
        }
    }
}

/// One web host: its namespace, address, simulator, nginx and daemon.
pub struct Host {
    /// The cluster's name for it (`shared.host`).
    pub name: String,
    pub ns: String,
    pub ip: String,
    /// Its end of the veth into the LAN: what the daemon and tcpdump read.
    pub iface: String,
    /// The host's files: `etc/` (configuration and secrets, as in `/etc/redcap-monitor`),
    /// `lib/` (site key, state), `log/` (records), `run/` (stats, External Module).
    pub dir: PathBuf,
    pub config: PathBuf,
    pub daemon: Option<LiveDaemon>,
    /// Webhooks the host's daemon sent.
    pub alerts: Receiver,
    capture: Option<Tcpdump>,
    nginx: Option<Nginx>,
    pub sim: Simulator,
}

impl Host {
    /// `http://IP/api/`: the host's REDCap API, through nginx.
    pub fn api_url(&self) -> String {
        format!("http://{}/api/", self.ip)
    }

    pub fn calls_path(&self) -> PathBuf {
        self.dir.join("log/calls.jsonl")
    }
    pub fn violations_path(&self) -> PathBuf {
        self.dir.join("log/violations.jsonl")
    }
    pub fn decisions_path(&self) -> PathBuf {
        self.dir.join("log/decisions.jsonl")
    }
    pub fn stats_path(&self) -> PathBuf {
        self.dir.join("run/stats.json")
    }
    pub fn store_path(&self) -> PathBuf {
        self.dir.join("lib/state.redb")
    }
    /// The External Module's directory (`redcap_module.dir`).
    pub fn module_dir(&self) -> PathBuf {
        self.dir.join("run/redcap-module")
    }
    pub fn pcap_path(&self) -> PathBuf {
        self.dir.join("capture.pcap")
    }

    /// The API calls the host's simulator answered (what this host served), settled.
    pub fn served(&self) -> Vec<SimRecord> {
        self.sim.settled_api().unwrap()
    }

    /// Starts (or restarts) the host's daemon as the unit runs it: `run --config`, the site key
    /// from the configuration, writing only to `lib/`, `log/` and `run/`.
    pub fn start_daemon(&mut self) -> Result<()> {
        if self.daemon.is_some() {
            bail!("{}'s daemon is already running", self.name);
        }
        let dirs: Vec<PathBuf> = ["lib", "log", "run"]
            .iter()
            .map(|d| self.dir.join(d))
            .collect();
        let writable: Vec<(&Path, &Path)> =
            dirs.iter().map(|d| (d.as_path(), d.as_path())).collect();
        // As the unit's ExecStartPre=+ line does before each start (the daemon stopping
        // removes the directory).
        make_module_directory(&self.module_dir());
        let command = run_as_the_unit(
            Some(&self.ns),
            &writable,
            &Capabilities::of_unit(&[]),
            &monitor_bin()?,
            &["run".into(), "--config".into(), self.config.clone().into()],
        );
        let daemon = LiveDaemon::spawn(command)?;
        // Its pid is the daemon's: the confinement took if it runs as the service user.
        if let Err(why) = check_confined(daemon.pid().unwrap_or(0)) {
            bail!(
                "{}'s daemon is not confined as the unit confines it: {why}",
                self.name
            );
        }
        self.daemon = Some(daemon);
        Ok(())
    }

    pub fn daemon(&self) -> &LiveDaemon {
        self.daemon.as_ref().expect("the host's daemon is running")
    }

    /// Starts tcpdump on the host's veth (port 80).
    pub fn start_capture(&mut self) -> Result<()> {
        self.capture = Some(Tcpdump::start_in(
            Some(&self.ns),
            &self.iface,
            "tcp port 80",
            &self.pcap_path(),
        )?);
        Ok(())
    }

    pub fn stop_capture(&mut self) -> Result<String> {
        let mut capture = self.capture.take().context("no capture running")?;
        capture.stop()
    }

    /// An admin API request from the host's own loopback: `curl METHOD PATH [-d BODY]` with the
    /// bearer token; the HTTP status and the body.
    pub fn admin_api(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let url = format!("http://127.0.0.1:{API_PORT}{path}");
        let auth = format!("Authorization: Bearer {ADMIN_TOKEN}");
        let mut cmd = crate::netns::command_in(Some(&self.ns), "curl");
        cmd.args([
            "-sS",
            "--max-time",
            "10",
            "-w",
            "\n%{http_code}",
            "-X",
            method,
        ])
        .args(["-H", &auth, "-H", "Content-Type: application/json"]);
        if let Some(body) = body {
            cmd.args(["-d", body]);
        }
        let out = cmd.arg(&url).output().expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (status.trim().parse().unwrap_or(0), body.to_owned())
    }

    /// `GET /metrics` from the host's loopback.
    pub fn metrics(&self) -> String {
        let out = crate::netns::command_in(Some(&self.ns), "curl")
            .args(["-sS", "--max-time", "10"])
            .arg(format!("http://127.0.0.1:{API_PORT}/metrics"))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The webhook events (`event` of each generic envelope) the host's daemon sent, in order.
    pub fn alert_events(&self) -> Vec<serde_json::Value> {
        self.alerts
            .requests()
            .iter()
            .filter_map(|r| serde_json::from_slice(&r.body).ok())
            .collect()
    }
}

/// The cluster: Redis in the LAN namespace, the hosts, the client namespace.
pub struct Cluster {
    pub hosts: Vec<Host>,
    pub redis: RedisServer,
    /// Where the clients run.
    pub client_ns: String,
    pub client_ip: String,
    /// The one site key every host uses (fingerprints must match across the cluster): the
    /// test's copy; each host has its own in `lib/site.key`, owned by the service user.
    pub key: PathBuf,
    pub dir: PathBuf,
    // Last: the namespaces go once everything in them has stopped.
    _namespaces: Namespaces,
}

impl Cluster {
    /// Builds the LAN, Redis, and `opts.hosts` hosts with their simulators and nginx; the
    /// daemons are not started (see [`Cluster::start_daemons`]).
    pub fn create(dir: &Path, opts: &ClusterOptions) -> Result<Cluster> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let tag = format!(
            "{:x}{}",
            std::process::id() % 0x10_0000,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let s = opts.subnet;
        let lan_ns = format!("rcm-lan-{tag}");
        let client_ns = format!("rcm-cli-{tag}");
        let mut namespaces = Namespaces(vec![lan_ns.clone()]);
        ip(&["netns", "add", &lan_ns])?;
        ip(&["-n", &lan_ns, "link", "add", "br0", "type", "bridge"])?;
        ip(&[
            "-n",
            &lan_ns,
            "addr",
            "add",
            &format!("10.{s}.0.1/24"),
            "dev",
            "br0",
        ])?;
        ip(&["-n", &lan_ns, "link", "set", "br0", "up"])?;
        ip(&["-n", &lan_ns, "link", "set", "lo", "up"])?;
        // Joins namespace `ns` to the bridge with address `addr`; returns its interface's name.
        let mut join = |ns: &str, n: usize, addr: &str| -> Result<String> {
            namespaces.0.push(ns.to_owned());
            let inner = format!("rcv{tag}{n}");
            let outer = format!("rcb{tag}{n}");
            ip(&["netns", "add", ns])?;
            ip(&[
                "link", "add", &inner, "type", "veth", "peer", "name", &outer,
            ])?;
            ip(&["link", "set", &inner, "netns", ns])?;
            ip(&["link", "set", &outer, "netns", &lan_ns])?;
            ip(&["-n", &lan_ns, "link", "set", &outer, "master", "br0"])?;
            ip(&["-n", &lan_ns, "link", "set", &outer, "up"])?;
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                &inner,
            ])?;
            ip(&["-n", ns, "link", "set", &inner, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            Ok(inner)
        };
        let client_ip = format!("10.{s}.0.2");
        join(&client_ns, 0, &client_ip)?;
        let mut host_ifaces = Vec::new();
        for i in 1..=opts.hosts {
            let ns = format!("rcm-web{i}-{tag}");
            let addr = format!("10.{s}.0.{}", 10 + i);
            host_ifaces.push((ns.clone(), addr.clone(), join(&ns, i, &addr)?));
        }

        let redis = RedisServer::start(RedisOptions {
            netns: Some(lan_ns.clone()),
            bind: format!("10.{s}.0.1"),
            port: 6379,
            dir: dir.join("redis"),
            password: Some(REDIS_PASSWORD.into()),
            users: vec![(
                REDIS_USER.into(),
                REDIS_USER_PASSWORD.into(),
                REDIS_USER_RULES.into(),
            )],
        })?;
        let key = dir.join("site.key");
        // One key for the cluster, made once (`fingerprint` creates it 0600).
        crate::daemon::fingerprint(&key, "0000000000000000000000000000000A")?;
        // The service user reaches its files through the test's directory, as through /etc and
        // /var.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
        let user = service_user();
        let pki = TestPki::create(dir, &format!("10.{s}.0.11"))?;

        let mut hosts = Vec::new();
        for (i, (ns, addr, iface)) in host_ifaces.into_iter().enumerate() {
            let name = format!("web{}", i + 1);
            let hdir = dir.join(&name);
            for sub in ["", "etc", "nginx"] {
                std::fs::create_dir_all(hdir.join(sub))?;
            }
            // StateDirectory=, LogsDirectory=, RuntimeDirectory= with the unit's modes.
            for (sub, mode) in [("lib", 0o700), ("log", 0o750), ("run", 0o755)] {
                let path = hdir.join(sub);
                std::fs::create_dir_all(&path)?;
                chown(&path, Some(user.uid), Some(user.gid))?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
            }
            // The site key copied to every host, as the README's checklist says: the service
            // user's, 0600.
            let host_key = hdir.join("lib/site.key");
            std::fs::copy(&key, &host_key)?;
            chown(&host_key, Some(user.uid), Some(user.gid))?;
            std::fs::set_permissions(&host_key, std::fs::Permissions::from_mode(0o600))?;
            let password_file = hdir.join("etc/redis-password");
            write_config_secret(&password_file, &format!("{REDIS_USER_PASSWORD}\n"), &user)?;
            let sim = Simulator::start(&SimOptions {
                tokens: opts.tokens.clone(),
                log: Some(hdir.join("sim.jsonl")),
                netns: Some(ns.clone()),
                ..SimOptions::default()
            })?;
            let upstream = format!(
                "upstream redcap {{ server 127.0.0.1:{}; keepalive 8; }}\n",
                sim.port()
            );
            let site = "location / {\n      proxy_pass http://redcap;\n      \
                        proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n    }\n";
            let nginx = Nginx::start_serving(&ns, &hdir.join("nginx"), &pki, 1, &upstream, site)?;
            let (listener, alerts) = {
                let listener = crate::netns::listen_in(Some(&ns), "127.0.0.1:0")?;
                let port = listener.local_addr()?.port();
                (port, Receiver::serve(listener)?)
            };
            let config = write_host_config(
                &hdir,
                &name,
                &iface,
                opts,
                &redis.url(),
                &password_file,
                listener,
            )?;
            hosts.push(Host {
                name,
                ns,
                ip: addr,
                iface,
                dir: hdir,
                config,
                daemon: None,
                alerts,
                capture: None,
                nginx: Some(nginx),
                sim,
            });
        }
        Ok(Cluster {
            hosts,
            redis,
            client_ns,
            client_ip,
            key,
            dir: dir.to_owned(),
            _namespaces: namespaces,
        })
    }

    /// Starts every host's daemon, one after the other.
    pub fn start_daemons(&mut self) -> Result<()> {
        for host in &mut self.hosts {
            host.start_daemon()?;
        }
        Ok(())
    }

    /// Starts tcpdump on every host.
    pub fn start_captures(&mut self) -> Result<()> {
        for host in &mut self.hosts {
            host.start_capture()?;
        }
        Ok(())
    }

    /// Stops every capture and merges them (`mergecap -F pcap`, by time) into `merged.pcap`.
    pub fn merged_capture(&mut self) -> Result<PathBuf> {
        let mut files = Vec::new();
        for host in &mut self.hosts {
            host.stop_capture()?;
            files.push(host.pcap_path());
        }
        let merged = self.dir.join("merged.pcap");
        let out = Command::new("mergecap")
            .args(["-F", "pcap", "-w"])
            .arg(&merged)
            .args(&files)
            .output()
            .context("running mergecap (wireshark-common, with tshark: `cargo xtask setup`)")?;
        if !out.status.success() {
            bail!("mergecap: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(merged)
    }

    /// One API call (curl, `content=version`) from the client namespace to host `i`.
    pub fn call(&self, i: usize, token: &str) {
        crate::clients::api_call_in(Some(&self.client_ns), &self.hosts[i].api_url(), token, &[]);
    }

    /// The same call, its HTTP status.
    pub fn call_status(&self, i: usize, token: &str, extra: &[&str]) -> u16 {
        let body = format!("token={token}&content=version&format=json");
        let out = crate::netns::command_in(Some(&self.client_ns), "curl")
            .args([
                "-sS",
                "-o",
                "/dev/null",
                "--max-time",
                "5",
                "-w",
                "%{http_code}",
            ])
            .args(extra)
            .args(["-d", &body])
            .arg(self.hosts[i].api_url())
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    }

    pub fn host(&self, name: &str) -> &Host {
        self.hosts.iter().find(|h| h.name == name).unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for host in &mut self.hosts {
            host.daemon.take();
            host.capture.take();
            host.nginx.take();
        }
    }
}

/// Network namespaces deleted on drop (their veths and bridge with them).
struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!("ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// The shipped configuration with this host's paths (everything under `dir` instead of
/// /var/lib, /var/log and /run), its interface, records and stats on, the admin API with a
/// token, HTTPS capture off (the hosts serve plain HTTP on port 80), a generic webhook sink on the
/// host's loopback, and `[shared]` when asked.
#[allow(clippy::too_many_arguments)]
fn write_host_config(
    dir: &Path,
    name: &str,
    iface: &str,
    opts: &ClusterOptions,
    redis_url: &str,
    password_file: &Path,
    alerts_port: u16,
) -> Result<PathBuf> {
    let shipped =
        std::fs::read_to_string(crate::workspace_root().join("config/redcap-monitor.toml"))?;
    let d = dir.display();
    let interfaces = format!("interfaces = [\"{iface}\"]");
    let mode = format!("mode = \"{}\"", opts.enforcement_mode);
    let user = service_user();
    let token_file = dir.join("etc/api.token");
    write_config_secret(&token_file, &format!("{ADMIN_TOKEN}\n"), &user)?;
    let token_line = format!("token_file = \"{}\"", token_file.display());
    let mut text = shipped;
    for (from, to) in [
        ("interfaces = []", interfaces.as_str()),
        ("enabled = \"auto\"", "enabled = false"),
        ("mode = \"when_degraded\"", mode.as_str()),
        ("# calls = \"/var/log", "calls = \"/var/log"),
        ("# violations = \"/var/log", "violations = \"/var/log"),
        ("# decisions = \"/var/log", "decisions = \"/var/log"),
        ("# stats = \"/run", "stats = \"/run"),
        ("stats_interval = \"60s\"", "stats_interval = \"1s\""),
        (
            "# token_file = \"/etc/redcap-monitor/api.token\"",
            token_line.as_str(),
        ),
    ] {
        if text.matches(from).count() != 1 {
            bail!("{from:?} is not in the shipped configuration exactly once");
        }
        text = text.replace(from, to);
    }
    text = text
        .replace("/var/lib/redcap-monitor", &format!("{d}/lib"))
        .replace("/var/log/redcap-monitor", &format!("{d}/log"))
        .replace("/run/redcap-monitor", &format!("{d}/run"));
    let secret = dir.join("etc/siem.whsec");
    write_config_secret(
        &secret,
        "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n",
        &user,
    )?;
    text.push_str(&format!(
        "\n[[alerts.sinks]]\nname = \"siem\"\nkind = \"generic\"\n\
         url = \"http://127.0.0.1:{alerts_port}/alerts\"\nsecret_file = \"{}\"\n",
        secret.display()
    ));
    // The alerts are tried again quickly in a test.
    text = text
        .replacen("backoff_base = \"1s\"", "backoff_base = \"100ms\"", 1)
        .replacen("backoff_cap = \"10m\"", "backoff_cap = \"500ms\"", 1);
    if opts.shared {
        text.push_str(&format!(
            "\n[shared]\nurl = \"{redis_url}\"\nhost = \"{name}\"\nusername = \"{REDIS_USER}\"\n\
             password_file = \"{}\"\n{}\n",
            password_file.display(),
            opts.shared_extra
        ));
    }
    // As the package installs /etc/redcap-monitor/config.toml: root's, read by the service.
    let path = dir.join("etc/config.toml");
    write_config_secret(&path, &text, &user)?;
    Ok(path)
}
