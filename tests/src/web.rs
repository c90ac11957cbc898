//! A real web server for the HTTPS tests: nginx (Debian's) in a namespace, plain HTTP on port 80
//! and HTTPS on 443 with a certificate from a test CA, both proxying to the REDCap simulator.
//!
//! uprobes are system-wide and other tests on the machine run nginx too, so nginx runs from a
//! copy of its binary with a unique name ([`Nginx::name`]): the daemon is told to watch only
//! that process name, and foreign nginx processes cannot add to or take from what it sees.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::netns::command_in;

/// A test CA and a server certificate it signed (for `server_ip` and `localhost`).
pub struct TestPki {
    /// The CA certificate: what clients must trust (`REQUESTS_CA_BUNDLE`, `CURL_CA_BUNDLE`).
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

impl TestPki {
    /// Creates the CA and the server certificate in `dir` with the `openssl` CLI.
    pub fn create(dir: &Path, server_ip: &str) -> Result<TestPki> {
        let pki = TestPki {
            ca_cert: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server-key.pem"),
        };
        let ca_key = dir.join("ca-key.pem");
        let csr = dir.join("server.csr");
        let ext = dir.join("server.ext");
        std::fs::write(
            &ext,
            format!(
                "subjectAltName=IP:{server_ip},DNS:localhost\nbasicConstraints=CA:FALSE\n\
                 keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
            ),
        )?;
        let p = |path: &Path| path.to_string_lossy().into_owned();
        #[rustfmt::skip]
        let steps: [Vec<String>; 3] = [
            ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
             "/CN=redcap-monitor test CA", "-keyout", &p(&ca_key), "-out", &p(&pki.ca_cert)]
                .map(String::from).to_vec(),
            ["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=redcap test server",
             "-keyout", &p(&pki.server_key), "-out", &p(&csr)]
                .map(String::from).to_vec(),
            ["x509", "-req", "-in", &p(&csr), "-CA", &p(&pki.ca_cert), "-CAkey", &p(&ca_key),
             "-CAcreateserial", "-days", "2", "-extfile", &p(&ext), "-out", &p(&pki.server_cert)]
                .map(String::from).to_vec(),
        ];
        for args in steps {
            let out = Command::new("openssl")
                .args(&args)
                .output()
                .context("running openssl (installed by `cargo xtask setup`)")?;
            if !out.status.success() {
                bail!(
                    "openssl {} failed: {}",
                    args[0],
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        Ok(pki)
    }
}

/// nginx under a unique process name: port 80 (HTTP) and 443 (HTTPS) proxy to the simulator.
pub struct Nginx {
    name: String,
    dir: PathBuf,
    ns: String,
}

impl Nginx {
    /// Starts nginx (daemonised, `worker_processes` workers) in namespace `ns`, its files in
    /// `dir`, proxying to `127.0.0.1:upstream_port`.
    pub fn start(
        ns: &str,
        dir: &Path,
        upstream_port: u16,
        pki: &TestPki,
        worker_processes: u32,
    ) -> Result<Nginx> {
        // At most 15 bytes: the kernel's process name field.
        let name = format!("rcmtls{}", std::process::id() % 1_000_000_000);
        let binary = dir.join(&name);
        std::fs::copy("/usr/sbin/nginx", &binary)
            .context("copying /usr/sbin/nginx (installed by `cargo xtask setup`)")?;
        let d = dir.display();
        let conf = dir.join("nginx.conf");
        // Workers run as root: the temp paths live in our 0700 temp dir. No http2: the
        // monitor parses HTTP/1.1 (curl would pick h2 through ALPN otherwise).
        std::fs::write(
            &conf,
            format!(
                "user root;\nworker_processes {worker_processes};\nerror_log {d}/nginx-error.log;\n\
                 pid {d}/nginx.pid;\n\
                 events {{ worker_connections 256; }}\n\
                 http {{\n  access_log {d}/nginx-access.log;\n\
                 client_body_temp_path {d}/nginx-body;\n  proxy_temp_path {d}/nginx-proxy;\n\
                 fastcgi_temp_path {d}/nginx-fastcgi;\n  uwsgi_temp_path {d}/nginx-uwsgi;\n\
                 scgi_temp_path {d}/nginx-scgi;\n  client_max_body_size 16m;\n\
                 upstream redcap {{ server 127.0.0.1:{upstream_port}; keepalive 8; }}\n\
                 server {{\n    listen 80;\n    listen 443 ssl;\n\
                 ssl_certificate {cert};\n    ssl_certificate_key {key};\n\
                 location / {{\n      proxy_pass http://redcap;\n      proxy_http_version 1.1;\n\
                 proxy_set_header Connection \"\";\n      proxy_buffering on;\n    }}\n  }}\n}}\n",
                cert = pki.server_cert.display(),
                key = pki.server_key.display(),
            ),
        )?;
        let out = command_in(Some(ns), &binary.to_string_lossy())
            .arg("-p")
            .arg(dir)
            .arg("-e")
            .arg(dir.join("nginx-error.log"))
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .output()
            .context("starting nginx")?;
        if !out.status.success() {
            bail!(
                "nginx did not start: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let nginx = Nginx {
            name,
            dir: dir.to_owned(),
            ns: ns.to_owned(),
        };
        if !crate::sim::wait_until(Duration::from_secs(10), || {
            nginx
                .workers()
                .is_ok_and(|w| w.len() == worker_processes as usize)
        }) {
            bail!("nginx workers did not start within 10 s");
        }
        Ok(nginx)
    }

    /// The process name (the binary copy's file name): what `capture.tls.processes` lists.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn master_pid(&self) -> Result<u32> {
        let text = std::fs::read_to_string(self.dir.join("nginx.pid"))?;
        text.trim().parse().context("nginx.pid")
    }

    /// The worker processes' pids (children of the master), sorted.
    pub fn workers(&self) -> Result<Vec<u32>> {
        let master = self.master_pid()?;
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc")?.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            // `pid (comm) state ppid ...`; the name cannot contain ')' here (ours is known).
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_ascii_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if ppid == Some(master) {
                pids.push(pid);
            }
        }
        pids.sort_unstable();
        Ok(pids)
    }

    /// `nginx -s reload` (SIGHUP): new workers replace the old ones. Waits until every old
    /// worker is gone and as many new ones run.
    pub fn reload(&self) -> Result<Vec<u32>> {
        let before = self.workers()?;
        let master = self.master_pid()?;
        let status = Command::new("kill")
            .args(["-HUP", &master.to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -HUP {master} failed");
        }
        let mut after = Vec::new();
        let replaced = crate::sim::wait_until(Duration::from_secs(15), || {
            after = self.workers().unwrap_or_default();
            after.len() == before.len() && after.iter().all(|p| !before.contains(p))
        });
        if !replaced {
            bail!("nginx reload did not replace workers {before:?} (now {after:?})");
        }
        Ok(after)
    }

    pub fn namespace(&self) -> &str {
        &self.ns
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM is nginx's fast shutdown: the master takes its workers down with it.
        if let Ok(master) = self.master_pid() {
            let _ = Command::new("kill")
                .args(["-TERM", &master.to_string()])
                .status();
            let _ = crate::sim::wait_until(Duration::from_secs(5), || {
                !Path::new(&format!("/proc/{master}")).exists()
            });
        }
    }
}
