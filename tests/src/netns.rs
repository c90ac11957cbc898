//! Network namespaces for tests that need a real link: a pair joined by a veth, deleted on drop
//! (also when the test panics), and commands run inside one with `ip netns exec`.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, bail};

/// `program`, run inside `netns` when given (`ip netns exec` execs it: the pid is the program's).
pub fn command_in(netns: Option<&str>, program: &str) -> Command {
    match netns {
        Some(ns) => {
            let mut command = Command::new("ip");
            command.args(["netns", "exec", ns, program]);
            command
        }
        None => Command::new(program),
    }
}

/// A server and a client namespace joined by a veth pair, with addresses `10.<subnet>.0.1` and
/// `fd00:<subnet>::1` (server), `10.<subnet>.0.2` and `fd00:<subnet>::2` (client).
pub struct NamespacePair {
    pub server_ns: String,
    pub client_ns: String,
    /// The server side of the veth, inside `server_ns`.
    pub server_if: String,
    pub server_ip: String,
    pub client_ip: String,
    pub server_ip6: String,
    pub client_ip6: String,
}

impl NamespacePair {
    pub fn create(subnet: u8) -> Result<NamespacePair> {
        // Unique per process and call, short enough for 15-byte interface names.
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let tag = format!(
            "{:x}{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let pair = NamespacePair {
            server_ns: format!("rcm-ls-{tag}"),
            client_ns: format!("rcm-lc-{tag}"),
            server_if: format!("rls{tag}"),
            server_ip: format!("10.{subnet}.0.1"),
            client_ip: format!("10.{subnet}.0.2"),
            server_ip6: format!("fd00:{subnet}::1"),
            client_ip6: format!("fd00:{subnet}::2"),
        };
        let client_if = format!("rlc{tag}");
        run(&["netns", "add", &pair.server_ns])?;
        run(&["netns", "add", &pair.client_ns])?;
        run(&[
            "link",
            "add",
            &pair.server_if,
            "type",
            "veth",
            "peer",
            "name",
            &client_if,
        ])?;
        run(&["link", "set", &pair.server_if, "netns", &pair.server_ns])?;
        run(&["link", "set", &client_if, "netns", &pair.client_ns])?;
        for (ns, ifname, ip, ip6) in [
            (
                &pair.server_ns,
                &pair.server_if,
                &pair.server_ip,
                &pair.server_ip6,
            ),
            (
                &pair.client_ns,
                &client_if,
                &pair.client_ip,
                &pair.client_ip6,
            ),
        ] {
            run(&["-n", ns, "addr", "add", &format!("{ip}/24"), "dev", ifname])?;
            // nodad: usable at once, without waiting for duplicate address detection.
            let ip6 = format!("{ip6}/64");
            run(&["-n", ns, "addr", "add", &ip6, "dev", ifname, "nodad"])?;
            run(&["-n", ns, "link", "set", ifname, "up"])?;
            run(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(pair)
    }

    /// `program`, run inside namespace `ns`.
    pub fn exec(&self, ns: &str, program: &str) -> Command {
        command_in(Some(ns), program)
    }
}

impl Drop for NamespacePair {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the veth, and with it the pair.
        for ns in [&self.server_ns, &self.client_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn run(args: &[&str]) -> Result<()> {
    let status = Command::new("ip")
        .args(args)
        .status()
        .context("running ip (iproute2)")?;
    if !status.success() {
        bail!("ip {args:?} failed: {status}");
    }
    Ok(())
}

/// A TCP listener bound to `addr` inside network namespace `ns` (`None`: this one). The socket
/// keeps its namespace, so any thread can accept on it.
pub fn listen_in(ns: Option<&str>, addr: &str) -> Result<std::net::TcpListener> {
    let Some(ns) = ns else {
        return Ok(std::net::TcpListener::bind(addr)?);
    };
    let path = format!("/var/run/netns/{ns}");
    let addr = addr.to_owned();
    std::thread::spawn(move || -> Result<std::net::TcpListener> {
        use std::os::fd::AsRawFd;
        let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        // SAFETY: a valid namespace fd; setns moves only this short-lived thread.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns {path}: {}", std::io::Error::last_os_error());
        }
        Ok(std::net::TcpListener::bind(&addr)?)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the thread binding in {ns} panicked"))?
}
