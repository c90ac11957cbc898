//! A tcpdump capture for the length of a test: started with `-U --immediate-mode -s 0`, ready
//! only once tcpdump says it is listening, stopped with SIGINT so the pcap file is complete.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// A running tcpdump; interrupted (and reaped) on `stop()` or drop.
pub struct Tcpdump {
    child: Option<Child>,
    stderr: Option<JoinHandle<String>>,
    out: PathBuf,
}

impl Tcpdump {
    /// Starts `tcpdump -i IFACE -w OUT FILTER` and returns once it is capturing.
    pub fn start(iface: &str, bpf_filter: &str, out: &Path) -> Result<Tcpdump> {
        Tcpdump::start_in(None, iface, bpf_filter, out)
    }

    /// [`Tcpdump::start`] inside network namespace `netns`, when given.
    pub fn start_in(
        netns: Option<&str>,
        iface: &str,
        bpf_filter: &str,
        out: &Path,
    ) -> Result<Tcpdump> {
        let mut child = crate::netns::command_in(netns, "tcpdump")
            // -Z root: distributions that drop to a `tcpdump` user could not write into the
            // test's private tempdir.
            .args([
                "-Z",
                "root",
                "-i",
                iface,
                "-s",
                "0",
                // 64 MiB of capture buffer (the default is 2 MiB): a loopback frame is up to
                // 64 KiB, and on a busy 2-core machine tcpdump may not run for a while; a packet
                // the kernel drops makes the file a wrong oracle.
                "-B",
                "65536",
                "-U",
                "--immediate-mode",
                "-n",
                "-w",
            ])
            .arg(out)
            .arg(bpf_filter)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting tcpdump (is it installed? `cargo xtask setup`)")?;
        let stderr = child.stderr.take().context("tcpdump stderr")?;
        let (ready_tx, ready_rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("listening on") {
                    let _ = ready_tx.send(());
                }
                text.push_str(&line);
                text.push('\n');
            }
            text
        });
        let mut capture = Tcpdump {
            child: Some(child),
            stderr: Some(reader),
            out: out.to_path_buf(),
        };
        if ready_rx.recv_timeout(Duration::from_secs(10)).is_err() {
            let text = capture.stop().unwrap_or_default();
            bail!("tcpdump did not start listening on {iface}: {text}");
        }
        // "listening on" is printed after the filter is installed; a short grace period covers
        // the ring buffer's setup on slow machines.
        std::thread::sleep(Duration::from_millis(200));
        Ok(capture)
    }

    pub fn path(&self) -> &Path {
        &self.out
    }

    /// Interrupts tcpdump, waits for it to flush and exit; returns its stderr (packet counts).
    pub fn stop(&mut self) -> Result<String> {
        let Some(mut child) = self.child.take() else {
            return Ok(String::new());
        };
        // Let the last FIN/ACKs of the test's connections pass, and let tcpdump write out what
        // the kernel already handed it (with -U the file grows per packet): SIGINT discards the
        // packets still waiting in its capture ring, and a busy CI machine may not have let it
        // run yet. Stable for 300 ms, or 5 s at most.
        let size = |path: &Path| std::fs::metadata(path).map_or(0, |m| m.len());
        let (mut last, mut stable) = (size(&self.out), 0);
        for _ in 0..50 {
            std::thread::sleep(Duration::from_millis(100));
            let now = size(&self.out);
            stable = if now == last { stable + 1 } else { 0 };
            last = now;
            if stable == 3 {
                break;
            }
        }
        let status = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .context("sending SIGINT to tcpdump")?;
        if !status.success() {
            let _ = child.kill();
        }
        child.wait().context("waiting for tcpdump")?;
        let text = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        // A capture with holes would make the daemon look wrong: say so instead.
        if let Some(line) = text.lines().find(|l| l.contains("dropped by kernel"))
            && !line.trim_start().starts_with("0 ")
        {
            bail!(
                "tcpdump lost packets ({line}); the capture {} is incomplete",
                self.out.display()
            );
        }
        Ok(text)
    }
}

impl Drop for Tcpdump {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Runs `tshark -r PCAP -Y FILTER -T fields -e FIELD...` (decoding `http_port` as HTTP when
/// given) and returns one line per matching packet. A cross-check independent of the daemon.
pub fn tshark_fields(
    pcap: &Path,
    http_port: Option<u16>,
    filter: &str,
    fields: &[&str],
) -> Result<Vec<String>> {
    let mut cmd = Command::new("tshark");
    cmd.arg("-r")
        .arg(pcap)
        .args(["-o", "tcp.reassemble_out_of_order:TRUE"]);
    if let Some(port) = http_port {
        cmd.args(["-d", &format!("tcp.port=={port},http")]);
    }
    cmd.args(["-Y", filter, "-T", "fields"]);
    for field in fields {
        cmd.args(["-e", field]);
    }
    let out = cmd
        .output()
        .context("running tshark (is it installed? `cargo xtask setup`)")?;
    if !out.status.success() {
        bail!(
            "tshark failed on {}: {}",
            pcap.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect())
}
