//! A real `redis-server` (Debian's package) for the shared-state tests and bench: started by the
//! test on its own address, port and directory (inside a network namespace when given, so that
//! daemons in other namespaces reach it over a veth), stopped and started again on the same
//! port and data directory to play an outage, killed on drop. Spoken to with `redis-cli`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// How a Redis server is started.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// Network namespace to run in (`ip netns exec`); `None`: the test's own.
    pub netns: Option<String>,
    /// Address to listen on.
    pub bind: String,
    pub port: u16,
    /// Data directory (the RDB snapshot written on a clean stop, the log).
    pub dir: PathBuf,
    /// `requirepass`: the default user's password (the test's own, for `redis-cli`).
    pub password: Option<String>,
    /// ACL users (name, password, rules as `ACL SETUSER` takes them), set at every start.
    pub users: Vec<(String, String, String)>,
}

/// A running `redis-server`; SIGTERM (which saves the snapshot) on [`RedisServer::stop`], killed
/// on drop.
pub struct RedisServer {
    opts: RedisOptions,
    child: Option<Child>,
}

impl RedisServer {
    pub fn start(opts: RedisOptions) -> Result<RedisServer> {
        let mut server = RedisServer { opts, child: None };
        server.start_again()?;
        Ok(server)
    }

    /// Starts the server (again) on the same address, port and data directory; returns once it
    /// answers PING.
    pub fn start_again(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("redis-server is already running");
        }
        let o = &self.opts;
        std::fs::create_dir_all(&o.dir)?;
        let mut cmd = crate::netns::command_in(o.netns.as_deref(), "redis-server");
        cmd.args(["--bind", &o.bind, "--port", &o.port.to_string()])
            .arg("--dir")
            .arg(&o.dir)
            .args(["--logfile", "redis.log", "--daemonize", "no"])
            // Snapshot on a clean stop (and every 60 s with a write): a restarted server comes
            // back with what it held, as a production one with persistence does.
            .args(["--save", "60", "1", "--appendonly", "no"])
            .args(["--protected-mode", "no", "--io-threads", "1"]);
        if let Some(password) = &o.password {
            cmd.args(["--requirepass", password]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting redis-server (installed by `cargo xtask setup`)")?;
        self.child = Some(child);
        let up = crate::sim::wait_until(Duration::from_secs(10), || {
            self.cli(&["PING"]).is_ok_and(|r| r.trim() == "PONG")
        });
        if !up {
            let log = std::fs::read_to_string(self.opts.dir.join("redis.log")).unwrap_or_default();
            self.kill();
            bail!("redis-server did not answer PING within 10 s:\n{log}");
        }
        for (name, password, rules) in self.opts.users.clone() {
            let mut args = vec!["ACL", "SETUSER", &name, "reset"];
            let password = format!(">{password}");
            args.push(&password);
            args.extend(rules.split_whitespace());
            let said = self.cli(&args)?;
            if said.trim() != "OK" {
                bail!("ACL SETUSER {name}: {said}");
            }
        }
        Ok(())
    }

    /// `redis://BIND:PORT/0` (no password in it: the daemons read theirs from a file).
    pub fn url(&self) -> String {
        format!("redis://{}:{}/0", self.opts.bind, self.opts.port)
    }

    pub fn port(&self) -> u16 {
        self.opts.port
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGTERM (Redis saves its snapshot and exits), then waits.
    pub fn stop(&mut self) -> Result<()> {
        let mut child = self.child.take().context("redis-server is not running")?;
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()?;
        child.wait().context("waiting for redis-server")?;
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `redis-cli -h BIND -p PORT ARGS...` (in the server's namespace) as the default user: its
    /// stdout.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        self.cli_as(None, self.opts.password.as_deref(), args)
    }

    /// [`cli`](Self::cli) as ACL user `user` (`None`: the default user) with `password`; an
    /// error answer (`NOPERM …`) comes back as text, not as an `Err`.
    pub fn cli_as(
        &self,
        user: Option<&str>,
        password: Option<&str>,
        args: &[&str],
    ) -> Result<String> {
        let o = &self.opts;
        let mut cmd = crate::netns::command_in(o.netns.as_deref(), "redis-cli");
        cmd.args([
            "-h",
            &o.bind,
            "-p",
            &o.port.to_string(),
            "--no-auth-warning",
        ]);
        if let Some(user) = user {
            cmd.args(["--user", user]);
        }
        if let Some(password) = password {
            cmd.args(["--pass", password]);
        }
        let out = cmd.args(args).output().context("running redis-cli")?;
        if !out.status.success() {
            bail!(
                "redis-cli {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `INFO memory`'s `used_memory` (bytes).
    pub fn used_memory(&self) -> Result<u64> {
        let info = self.cli(&["INFO", "memory"])?;
        info.lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .context("no used_memory in INFO memory")
    }

    /// Every key (`--scan`), sorted.
    pub fn keys(&self) -> Result<Vec<String>> {
        let mut keys: Vec<String> = self
            .cli(&["--scan"])?
            .lines()
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        keys.sort();
        Ok(keys)
    }

    /// Everything Redis holds, as `DEBUG`-free text: each key's type and value (streams with
    /// their entries, hashes with their fields). For scanning what the daemons wrote.
    pub fn dump_text(&self) -> Result<String> {
        let mut text = String::new();
        for key in self.keys()? {
            let kind = self.cli(&["TYPE", &key])?;
            let value = match kind.trim() {
                "stream" => self.cli(&["XRANGE", &key, "-", "+"])?,
                "hash" => self.cli(&["HGETALL", &key])?,
                "string" => self.cli(&["GET", &key])?,
                "set" => self.cli(&["SMEMBERS", &key])?,
                "zset" => self.cli(&["ZRANGE", &key, "0", "-1", "WITHSCORES"])?,
                "list" => self.cli(&["LRANGE", &key, "0", "-1"])?,
                other => format!("({other})"),
            };
            text.push_str(&format!("{key} {kind}{value}\n"));
        }
        Ok(text)
    }

    pub fn dir(&self) -> &Path {
        &self.opts.dir
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
