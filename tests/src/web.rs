//! Real web servers for the HTTPS tests, in a namespace, plain HTTP on port 80 and HTTPS on 443
//! with a certificate from a test CA: nginx (Debian's) proxying to the REDCap simulator, and
//! Apache 2 with mod_ssl and mod_php serving a REDCap-like PHP script; both with HTTP/2 too
//! (nginx `http2`, Apache mod_http2 proxying to the simulator).
//!
//! uprobes are system-wide and other tests on the machine run nginx too, so each server runs
//! from a copy of its binary with a unique name ([`Nginx::name`], [`Apache::name`]): the daemon
//! is told to watch only that process name, and foreign processes cannot add to or take from
//! what it sees.

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

/// Without `http2`, curl and PyCap speak HTTP/1.1 over TLS too (what the HTTPS-equals-HTTP tests
/// compare).
const HTTP1_LISTEN: &str = "listen 80;\n    listen 443 ssl;";

/// What a test's nginx serves: its `listen` lines, and what goes inside `http {}` and the
/// `server {}`.
struct NginxConf {
    listen: &'static str,
    http_conf: String,
    server_conf: String,
}

impl NginxConf {
    /// Proxying everything to the simulator on `127.0.0.1:upstream_port`.
    fn proxy(upstream_port: u16) -> NginxConf {
        NginxConf {
            listen: HTTP1_LISTEN,
            http_conf: format!(
                "upstream redcap {{ server 127.0.0.1:{upstream_port}; keepalive 8; }}\n"
            ),
            server_conf: "location / {\n      proxy_pass http://redcap;\n      \
                          proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n      \
                          proxy_buffering on;\n    }\n"
                .to_owned(),
        }
    }
}

/// nginx under a unique process name: port 80 (HTTP) and 443 (HTTPS) proxy to the simulator.
pub struct Nginx {
    name: String,
    dir: PathBuf,
    ns: String,
    /// The master's pid as it started, for a drop after the pid file's directory is gone.
    started_master: Option<u32>,
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
        let name = format!("rcmtls{}", std::process::id() % 1_000_000_000);
        Self::start_named(ns, dir, upstream_port, pki, worker_processes, &name)
    }

    /// [`Nginx::start`] with HTTP/2: `listen 443 ssl http2` (curl and httpx pick h2 through
    /// ALPN) and `listen 8080 http2` (h2c with prior knowledge only); 80 stays HTTP/1.1.
    pub fn start_http2(
        ns: &str,
        dir: &Path,
        upstream_port: u16,
        pki: &TestPki,
        worker_processes: u32,
    ) -> Result<Nginx> {
        let name = format!("rcmh2{}", std::process::id() % 1_000_000_000);
        let conf = NginxConf {
            listen: "listen 80;\n    listen 443 ssl http2;\n    listen 8080 http2;",
            ..NginxConf::proxy(upstream_port)
        };
        Self::start_with(ns, dir, pki, worker_processes, &name, &conf)
    }

    /// [`start`](Self::start) from a binary copy called `name` (1 to 15 bytes: the process
    /// name), e.g. one that starts with a default `capture.tls.processes` name.
    pub fn start_named(
        ns: &str,
        dir: &Path,
        upstream_port: u16,
        pki: &TestPki,
        worker_processes: u32,
        name: &str,
    ) -> Result<Nginx> {
        let conf = NginxConf::proxy(upstream_port);
        Self::start_with(ns, dir, pki, worker_processes, name, &conf)
    }

    /// Starts nginx like [`Nginx::start`] with the caller's `http_conf` (inside `http {}`) and
    /// `server_conf` (inside the `server {}` listening on 80 and 443 with the test certificate).
    pub fn start_serving(
        ns: &str,
        dir: &Path,
        pki: &TestPki,
        worker_processes: u32,
        http_conf: &str,
        server_conf: &str,
    ) -> Result<Nginx> {
        let name = format!("rcmtls{}", std::process::id() % 1_000_000_000);
        let conf = NginxConf {
            listen: HTTP1_LISTEN,
            http_conf: http_conf.to_owned(),
            server_conf: server_conf.to_owned(),
        };
        Self::start_with(ns, dir, pki, worker_processes, &name, &conf)
    }

    fn start_with(
        ns: &str,
        dir: &Path,
        pki: &TestPki,
        worker_processes: u32,
        name: &str,
        site: &NginxConf,
    ) -> Result<Nginx> {
        // At most 15 bytes: the kernel's process name field.
        let name = name.to_owned();
        let binary = dir.join(&name);
        std::fs::copy("/usr/sbin/nginx", &binary)
            .context("copying /usr/sbin/nginx (installed by `cargo xtask setup`)")?;
        let d = dir.display();
        let conf = dir.join("nginx.conf");
        let NginxConf {
            listen,
            http_conf,
            server_conf,
        } = site;
        // Workers run as root: the temp paths live in our 0700 temp dir.
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
                 {http_conf}\
                 server {{\n    {listen}\n\
                 ssl_certificate {cert};\n    ssl_certificate_key {key};\n\
                 {server_conf}  }}\n}}\n",
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
        let mut nginx = Nginx {
            name,
            dir: dir.to_owned(),
            ns: ns.to_owned(),
            started_master: None,
        };
        nginx.started_master = nginx.master_pid().ok();
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
        children_of(self.master_pid()?)
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
        // SIGTERM is nginx's fast shutdown: the master takes its workers down with it. (After
        // a reload the pid file names the same master.)
        if let Some(master) = self.master_pid().ok().or(self.started_master) {
            let _ = Command::new("kill")
                .args(["-TERM", &master.to_string()])
                .status();
            let _ = crate::sim::wait_until(Duration::from_secs(5), || {
                !Path::new(&format!("/proc/{master}")).exists()
            });
        }
    }
}

/// The REDCap-like API script for Apache: answers `content=version`, `record` (JSON rows, as
/// many as `rows` asks, through PHP's `ob_gzhandler` like REDCap), `file` imports (multipart) and
/// anything else with a small JSON object; a token that is not 32 hex digits gets a 403.
const API_PHP: &str = r#"<?php
$token = $_POST['token'] ?? '';
if (!preg_match('/^[0-9A-Fa-f]{32}$/', $token)) {
    http_response_code(403);
    header('Content-Type: application/json');
    echo '{"error":"You do not have permissions to use the API"}';
    exit;
}
$content = $_POST['content'] ?? '';
if ($content === 'version') {
    header('Content-Type: text/html; charset=utf-8');
    echo '15.7.6';
    exit;
}
if ($content === 'record') {
    ob_start('ob_gzhandler');
    header('Content-Type: application/json; charset=utf-8');
    $rows = [];
    $n = intval($_POST['rows'] ?? '10');
    for ($i = 1; $i <= $n; $i++) {
        $rows[] = ['record_id' => (string)$i, 'field_1' => str_repeat(chr(97 + $i % 26), 40),
                   'field_2' => (string)($i * 7919 % 10007)];
    }
    echo json_encode($rows);
    exit;
}
if ($content === 'file' && isset($_FILES['file'])) {
    header('Content-Type: application/json');
    echo '{"count":' . $_FILES['file']['size'] . '}';
    exit;
}
header('Content-Type: application/json');
echo '{"ok":true}';
"#;

/// Where Debian's Apache keeps its modules.
pub const APACHE_MODULES: &str = "/usr/lib/apache2/modules";

/// Apache 2 (Debian's) under a unique process name: prefork + mod_ssl + mod_php, where port 80
/// (HTTP) and 443 (HTTPS) serve `/redcap/api/index.php`, a PHP script ([`Apache::start`]); or
/// mpm_event + mod_ssl + mod_http2 proxying to the simulator ([`Apache::start_http2_proxy`]).
pub struct Apache {
    name: String,
    dir: PathBuf,
    binary: PathBuf,
    conf: PathBuf,
    /// The master's pid as it started, for a drop after the pid file's directory is gone.
    started_master: Option<u32>,
}

impl Apache {
    /// Starts Apache in namespace `ns` with its files in `dir` (the document root is a 0755
    /// subdirectory: the children run as www-data).
    pub fn start(ns: &str, dir: &Path, pki: &TestPki) -> Result<Apache> {
        Apache::start_with_env(ns, dir, pki, "", &[])
    }

    /// [`start`](Self::start) from a binary copy called `name` (1 to 15 bytes: the process
    /// name), e.g. one that starts with a default `capture.tls.processes` name.
    pub fn start_named(ns: &str, dir: &Path, pki: &TestPki, name: &str) -> Result<Apache> {
        Apache::start_as(ns, dir, pki, name, "", &[])
    }

    /// [`start`](Self::start) with `extra_conf` appended to the server configuration (as
    /// [`Apache::start_serving`] takes it) and environment variables for the server (the benches
    /// set `LD_LIBRARY_PATH` to give it a private copy of libssl: uprobes other programs put on
    /// the system's libssl then cannot trap in it).
    pub fn start_with_env(
        ns: &str,
        dir: &Path,
        pki: &TestPki,
        extra_conf: &str,
        env: &[(&str, &Path)],
    ) -> Result<Apache> {
        let name = format!("rcmap{}", std::process::id() % 1_000_000_000);
        Apache::start_as(ns, dir, pki, &name, extra_conf, env)
    }

    fn start_as(
        ns: &str,
        dir: &Path,
        pki: &TestPki,
        name: &str,
        extra_conf: &str,
        env: &[(&str, &Path)],
    ) -> Result<Apache> {
        use std::os::unix::fs::PermissionsExt;
        let docroot = dir.join("www");
        let api = docroot.join("redcap/api");
        std::fs::create_dir_all(&api)?;
        std::fs::write(api.join("index.php"), API_PHP)?;
        for path in [dir, &docroot, &docroot.join("redcap"), &api] {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
        }
        std::fs::set_permissions(
            api.join("index.php"),
            std::fs::Permissions::from_mode(0o644),
        )?;
        Apache::start_with(ns, dir, pki, &docroot, extra_conf, name, env)
    }

    /// Starts Apache like [`Apache::start`], serving the caller's `docroot` (readable by
    /// www-data), with `extra_conf` appended to the server configuration (e.g. `LoadModule
    /// dir_module ...` and `DirectoryIndex index.php`; [`APACHE_MODULES`] is the modules dir).
    pub fn start_serving(
        ns: &str,
        dir: &Path,
        pki: &TestPki,
        docroot: &Path,
        extra_conf: &str,
    ) -> Result<Apache> {
        let name = format!("rcmap{}", std::process::id() % 1_000_000_000);
        Apache::start_with(ns, dir, pki, docroot, extra_conf, &name, &[])
    }

    fn start_with(
        ns: &str,
        dir: &Path,
        pki: &TestPki,
        docroot: &Path,
        extra_conf: &str,
        name: &str,
        env: &[(&str, &Path)],
    ) -> Result<Apache> {
        use std::os::unix::fs::PermissionsExt;
        let modules = Path::new(APACHE_MODULES);
        let php = std::fs::read_dir(modules)
            .context("/usr/lib/apache2/modules (install apache2: `cargo xtask setup`)")?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("libphp") && n.ends_with(".so"))
            })
            .context("no libphp*.so (install libapache2-mod-php: `cargo xtask setup`)")?;
        let name = name.to_owned();
        let binary = dir.join(&name);
        std::fs::copy("/usr/sbin/apache2", &binary).context("copying /usr/sbin/apache2")?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
        let d = dir.display();
        let m = modules.display();
        let conf = dir.join("apache.conf");
        std::fs::write(
            &conf,
            format!(
                "ServerRoot {d}\nServerName localhost\nPidFile {d}/apache.pid\n\
                 ErrorLog {d}/apache-error.log\nLogLevel warn\nMutex file:{d}\n\
                 User www-data\nGroup www-data\n\
                 LoadModule mpm_prefork_module {m}/mod_mpm_prefork.so\n\
                 LoadModule authz_core_module {m}/mod_authz_core.so\n\
                 LoadModule mime_module {m}/mod_mime.so\nTypesConfig /etc/mime.types\n\
                 LoadModule socache_shmcb_module {m}/mod_socache_shmcb.so\n\
                 LoadModule ssl_module {m}/mod_ssl.so\n\
                 LoadModule php_module {php}\n\
                 StartServers 2\nMinSpareServers 2\nMaxSpareServers 4\nMaxRequestWorkers 16\n\
                 KeepAlive On\nListen 80\nListen 443\n\
                 SSLSessionCache shmcb:{d}/ssl_scache(512000)\n\
                 DocumentRoot {docroot}\n\
                 <Directory {docroot}>\n  Require all granted\n</Directory>\n\
                 <FilesMatch \"\\.php$\">\n  SetHandler application/x-httpd-php\n</FilesMatch>\n\
                 <VirtualHost *:443>\n  SSLEngine on\n  SSLCertificateFile {cert}\n\
                 SSLCertificateKeyFile {key}\n</VirtualHost>\n{extra_conf}\n",
                php = php.display(),
                docroot = docroot.display(),
                cert = pki.server_cert.display(),
                key = pki.server_key.display(),
            ),
        )?;
        Apache::launch(ns, name, dir, binary, conf, 2, env)
    }

    /// Apache with HTTP/2: mpm_event (mod_http2 does not run under prefork), mod_ssl and
    /// mod_http2 (`Protocols h2 http/1.1`) on `port`, proxying everything to the simulator at
    /// `127.0.0.1:upstream_port` with mod_proxy_http. Its files live in `dir/apache-h2`.
    pub fn start_http2_proxy(
        ns: &str,
        dir: &Path,
        port: u16,
        upstream_port: u16,
        pki: &TestPki,
    ) -> Result<Apache> {
        use std::os::unix::fs::PermissionsExt;
        let modules = Path::new("/usr/lib/apache2/modules");
        let name = format!("rcmah{}", std::process::id() % 1_000_000_000);
        let dir = dir.join("apache-h2");
        std::fs::create_dir_all(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
        let binary = dir.join(&name);
        std::fs::copy("/usr/sbin/apache2", &binary)
            .context("copying /usr/sbin/apache2 (installed by `cargo xtask setup`)")?;
        let d = dir.display();
        let m = modules.display();
        let conf = dir.join("apache.conf");
        std::fs::write(
            &conf,
            format!(
                "ServerRoot {d}\nServerName localhost\nPidFile {d}/apache.pid\n\
                 ErrorLog {d}/apache-error.log\nLogLevel warn\nMutex file:{d}\n\
                 User www-data\nGroup www-data\n\
                 LoadModule mpm_event_module {m}/mod_mpm_event.so\n\
                 LoadModule authz_core_module {m}/mod_authz_core.so\n\
                 LoadModule socache_shmcb_module {m}/mod_socache_shmcb.so\n\
                 LoadModule ssl_module {m}/mod_ssl.so\n\
                 LoadModule http2_module {m}/mod_http2.so\n\
                 LoadModule proxy_module {m}/mod_proxy.so\n\
                 LoadModule proxy_http_module {m}/mod_proxy_http.so\n\
                 StartServers 1\nServerLimit 2\nThreadsPerChild 16\nMaxRequestWorkers 32\n\
                 KeepAlive On\nListen {port}\nProtocols h2 http/1.1\n\
                 SSLSessionCache shmcb:{d}/ssl_scache(512000)\n\
                 <VirtualHost *:{port}>\n  SSLEngine on\n  SSLCertificateFile {cert}\n\
                 SSLCertificateKeyFile {key}\n  Protocols h2 http/1.1\n\
                 ProxyPass / http://127.0.0.1:{upstream_port}/\n</VirtualHost>\n",
                cert = pki.server_cert.display(),
                key = pki.server_key.display(),
            ),
        )?;
        Apache::launch(ns, name, &dir, binary, conf, 1, &[])
    }

    /// Starts the configured binary with `env` and waits for `min_children` children.
    fn launch(
        ns: &str,
        name: String,
        dir: &Path,
        binary: PathBuf,
        conf: PathBuf,
        min_children: usize,
        env: &[(&str, &Path)],
    ) -> Result<Apache> {
        let out = command_in(Some(ns), &binary.to_string_lossy())
            .envs(env.iter().copied())
            .arg("-f")
            .arg(&conf)
            .arg("-k")
            .arg("start")
            .stdin(Stdio::null())
            .output()
            .context("starting apache2")?;
        if !out.status.success() {
            bail!(
                "apache2 did not start ({}): {}{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(dir.join("apache-error.log")).unwrap_or_default()
            );
        }
        let mut apache = Apache {
            name,
            dir: dir.to_owned(),
            binary,
            conf,
            started_master: None,
        };
        if !crate::sim::wait_until(Duration::from_secs(10), || {
            apache.children().is_ok_and(|c| c.len() >= min_children)
        }) {
            bail!(
                "apache2 children did not start within 10 s: {}",
                std::fs::read_to_string(dir.join("apache-error.log")).unwrap_or_default()
            );
        }
        apache.started_master = apache.master_pid().ok();
        Ok(apache)
    }

    /// The process name: what `capture.tls.processes` lists.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The document root of an Apache from [`Apache::start`] or [`Apache::start_with_env`]
    /// (not [`Apache::start_serving`], whose caller chose it): `redcap/api/index.php` is the API
    /// script; other files put here are served as they are (`.php` through mod_php).
    pub fn docroot(&self) -> PathBuf {
        self.dir.join("www")
    }

    fn master_pid(&self) -> Result<u32> {
        let text = std::fs::read_to_string(self.dir.join("apache.pid"))?;
        text.trim().parse().context("apache.pid")
    }

    /// The children's pids, sorted.
    pub fn children(&self) -> Result<Vec<u32>> {
        children_of(self.master_pid()?)
    }

    /// A graceful restart (SIGUSR1): the master replaces every child with a new one.
    pub fn graceful(&self) -> Result<Vec<u32>> {
        let before = self.children()?;
        let master = self.master_pid()?;
        let status = Command::new("kill")
            .args(["-USR1", &master.to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -USR1 {master} failed");
        }
        let mut after = Vec::new();
        let replaced = crate::sim::wait_until(Duration::from_secs(15), || {
            after = self.children().unwrap_or_default();
            !after.is_empty() && after.iter().all(|p| !before.contains(p))
        });
        if !replaced {
            bail!("apache2 graceful restart did not replace {before:?} (now {after:?})");
        }
        Ok(after)
    }
}

impl Drop for Apache {
    fn drop(&mut self) {
        if let Ok(master) = self.master_pid() {
            let _ = Command::new(&self.binary)
                .arg("-f")
                .arg(&self.conf)
                .args(["-k", "stop"])
                .status();
            let _ = crate::sim::wait_until(Duration::from_secs(5), || {
                !Path::new(&format!("/proc/{master}")).exists()
            });
        } else if let Some(master) = self.started_master {
            // The directory with its configuration is gone already: stop it by its pid (SIGTERM
            // is Apache's immediate stop; the children go with the parent).
            let _ = Command::new("kill")
                .args(["-TERM", &master.to_string()])
                .status();
            let _ = crate::sim::wait_until(Duration::from_secs(5), || {
                !Path::new(&format!("/proc/{master}")).exists()
            });
        }
    }
}

/// The pids whose parent is `parent`, sorted.
fn children_of(parent: u32) -> Result<Vec<u32>> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        // `pid (comm) state ppid ...`
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_ascii_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    Ok(pids)
}

/// Copies the libssl that `linked_by` (a program or module) loads into `dir/lib` and returns
/// that directory, for `LD_LIBRARY_PATH`. uprobes sit on a library file, for every process that
/// maps it: a load generator on a private copy pays no trap for its own TLS calls (on a web
/// host the clients are other machines), and a server on a private copy is not trapped by
/// uprobes that others put on the system's libssl.
pub fn private_libssl(linked_by: &Path, dir: &Path) -> Result<PathBuf> {
    let ldd = Command::new("ldd")
        .arg(linked_by)
        .output()
        .with_context(|| format!("running ldd on {}", linked_by.display()))?;
    let listing = String::from_utf8_lossy(&ldd.stdout);
    let library = listing
        .lines()
        .find(|line| line.contains("libssl.so"))
        .and_then(|line| line.split("=>").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .with_context(|| format!("{} links no libssl:\n{listing}", linked_by.display()))?;
    let lib_dir = dir.join("lib");
    std::fs::create_dir_all(&lib_dir).context("creating the private library directory")?;
    let name = Path::new(library)
        .file_name()
        .context("libssl path without a file name")?;
    std::fs::copy(library, lib_dir.join(name)).with_context(|| format!("copying {library}"))?;
    Ok(lib_dir)
}

/// A Python HTTPS server on port 8443 that answers API POSTs itself, with the system's libssl
/// (Python's `_ssl` links it): a process the TLS uprobes see but must not read. Killed on drop.
pub struct PythonHttps(std::process::Child);

/// Who a [`PythonHttps`] pretends to be: it names itself `name` (`prctl(PR_SET_NAME)`) and runs
/// as `uid` once its certificate is loaded.
#[derive(Clone, Copy, Debug)]
pub struct Impostor<'a> {
    pub name: &'a str,
    pub uid: u32,
}

impl PythonHttps {
    /// Listening on `ip:8443` in namespace `ns` with the test certificate; as `python3` and
    /// root when `impostor` is `None`.
    pub fn start(ns: &str, ip: &str, pki: &TestPki, impostor: Option<Impostor<'_>>) -> PythonHttps {
        const SERVER: &str = r#"
import ctypes, http.server, os, ssl, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = b'{"redcap_version": "15.7.6"}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.HTTPServer((sys.argv[1], 8443), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[2], sys.argv[3])
server.socket = ctx.wrap_socket(server.socket, server_side=True)
if sys.argv[4]:
    ctypes.CDLL(None).prctl(15, sys.argv[4].encode(), 0, 0, 0)  # PR_SET_NAME
    uid = int(sys.argv[5])
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
print("ready", os.getuid(), open("/proc/self/comm").read().strip(), flush=True)
server.serve_forever()
"#;
        use std::io::{BufRead, BufReader};
        let (name, uid) = impostor.map_or((String::new(), String::new()), |i| {
            (i.name.to_owned(), i.uid.to_string())
        });
        let mut child = command_in(Some(ns), "python3")
            .args(["-c", SERVER, ip])
            .arg(&pki.server_cert)
            .arg(&pki.server_key)
            .args([&name, &uid])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(
            line.starts_with("ready"),
            "python HTTPS server did not start: {line}"
        );
        if let Some(i) = impostor {
            assert_eq!(
                line.split_whitespace().skip(1).collect::<Vec<_>>(),
                [i.uid.to_string().as_str(), i.name],
                "the impostor did not take its name and user"
            );
        }
        PythonHttps(child)
    }
}

impl Drop for PythonHttps {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
