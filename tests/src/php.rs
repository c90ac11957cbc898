//! A REDCap-like API site whose PHP script is the oracle of what the web server ran: served by
//! Apache + mod_php ([`Apache::start_serving`](crate::web::Apache::start_serving)) or nginx +
//! php-fpm ([`PhpFpm`], [`nginx_fastcgi_conf`]). `/api/index.php` (also reached as `/api/` and
//! with a PATH_INFO) appends one JSON line per run to a log: the method, the URI, the script
//! name, PATH_INFO and what PHP parsed (`$_POST` token as the test's label for it, `content`,
//! `action`, `format`) and the status it answered; `/form.php`, a non-API page, logs the same
//! with `script = "form"`. The log never holds a raw token.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::netns::command_in;

/// A token the site knows: `label` is what the log says for it, `allowed` whether the API
/// answers it (else 403, like REDCap for an unknown or revoked token).
#[derive(Debug, Clone)]
pub struct SiteToken {
    pub label: &'static str,
    pub token: String,
    pub allowed: bool,
}

/// One line of the oracle log: one run of a PHP script.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct OracleEntry {
    /// `microtime(true)` when the script ran.
    pub t: f64,
    /// `api` (`/api/index.php`) or `form` (the non-API page).
    pub script: String,
    pub method: String,
    pub uri: String,
    pub script_name: String,
    pub path_info: Option<String>,
    /// The label of `$_POST['token']`; `none` when absent or empty; else `unknown:<sha256/12>`
    /// for a token REDCap's syntax check passes (`^[A-Za-z0-9]+$`) but the site does not know,
    /// `malformed:<sha256/12>` for anything else (an array as `token[]=` makes).
    pub token: String,
    pub content: Option<String>,
    pub action: Option<String>,
    pub format: Option<String>,
    /// Keys of `$_FILES` (a `token` part with a filename lands there, not in `$_POST`).
    pub files: Vec<String>,
    pub status: u16,
}

impl OracleEntry {
    /// What REDCap would count as an API call: the API script run for a `POST`.
    pub fn is_api_call(&self) -> bool {
        self.script == "api" && self.method == "POST"
    }
}

/// The site's files: a docroot with `api/index.php` and `form.php`, and the oracle log.
pub struct OracleSite {
    pub docroot: PathBuf,
    pub log: PathBuf,
}

impl OracleSite {
    /// Writes the site under `dir/site` (readable by the web server's www-data children; the
    /// log is writable by them).
    pub fn create(dir: &Path, tokens: &[SiteToken]) -> Result<OracleSite> {
        use std::os::unix::fs::PermissionsExt;
        let root = dir.join("site");
        let docroot = root.join("www");
        let api = docroot.join("api");
        std::fs::create_dir_all(&api)?;
        let log = root.join("oracle.jsonl");
        std::fs::write(&log, "")?;
        let known: String = tokens
            .iter()
            .map(|t| {
                format!(
                    "    '{}' => ['{}', {}],\n",
                    t.token.to_ascii_uppercase(),
                    t.label,
                    t.allowed
                )
            })
            .collect();
        let common = ORACLE_PHP
            .replace("@KNOWN@", &known)
            .replace("@LOG@", &log.to_string_lossy());
        std::fs::write(root.join("oracle.php"), common)?;
        let include = |script: &str| {
            format!(
                "<?php\n$ORACLE_SCRIPT = '{script}';\nrequire '{}';\n",
                root.join("oracle.php").display()
            )
        };
        std::fs::write(api.join("index.php"), include("api"))?;
        std::fs::write(docroot.join("form.php"), include("form"))?;
        std::fs::write(docroot.join("index.html"), "<html>not the API</html>\n")?;
        for path in [dir, &root, &docroot, &api] {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
        }
        for file in [
            root.join("oracle.php"),
            api.join("index.php"),
            docroot.join("form.php"),
            docroot.join("index.html"),
        ] {
            std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o644))?;
        }
        std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o666))?;
        Ok(OracleSite { docroot, log })
    }

    /// Every script run logged so far, in log order.
    pub fn entries(&self) -> Result<Vec<OracleEntry>> {
        let text = std::fs::read_to_string(&self.log)?;
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).with_context(|| format!("oracle log line {l}")))
            .collect()
    }

    /// Apache configuration that maps `/api/` to `index.php` (mod_dir) and keeps an access log
    /// (`apache-access.log` in `dir`: request line and status).
    pub fn apache_conf(dir: &Path) -> String {
        format!(
            "LoadModule dir_module {m}/mod_dir.so\nDirectoryIndex index.php index.html\n\
             LogFormat \"%h %{{remote}}p \\\"%r\\\" %>s\" adversarial\n\
             CustomLog {d}/apache-access.log adversarial\n",
            m = crate::web::APACHE_MODULES,
            d = dir.display()
        )
    }
}

/// nginx `server {}` configuration serving `docroot` with PHP through php-fpm on `socket`, as
/// Debian's `snippets/fastcgi-php.conf` does (PATH_INFO split, `index index.php`).
pub fn nginx_fastcgi_conf(docroot: &Path, socket: &Path, dir: &Path) -> String {
    format!(
        "    root {root};\n    index index.php index.html;\n\
         access_log {d}/nginx-adversarial.log;\n\
         location ~ [^/]\\.php(/|$) {{\n\
               fastcgi_split_path_info ^(.+?\\.php)(/.*)$;\n\
               if (!-f $document_root$fastcgi_script_name) {{ return 404; }}\n\
               set $path_info $fastcgi_path_info;\n\
               include /etc/nginx/fastcgi_params;\n\
               fastcgi_param SCRIPT_FILENAME $document_root$fastcgi_script_name;\n\
               fastcgi_param PATH_INFO $path_info;\n\
               fastcgi_param HTTP_PROXY \"\";\n\
               fastcgi_index index.php;\n\
               fastcgi_pass unix:{sock};\n    }}\n",
        root = docroot.display(),
        sock = socket.display(),
        d = dir.display()
    )
}

/// Debian's php-fpm (`php-fpm8.x`, installed by `cargo xtask setup`), foreground, one static
/// pool of www-data workers on a Unix socket in the test's directory; stopped on drop.
pub struct PhpFpm {
    child: Option<Child>,
    pub socket: PathBuf,
    dir: PathBuf,
}

impl PhpFpm {
    pub fn start(ns: &str, dir: &Path) -> Result<PhpFpm> {
        let binary = std::fs::read_dir("/usr/sbin")?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("php-fpm"))
            })
            .context("no /usr/sbin/php-fpm* (install php-fpm: `cargo xtask setup`)")?;
        let socket = dir.join("fpm.sock");
        let conf = dir.join("php-fpm.conf");
        let d = dir.display();
        std::fs::write(
            &conf,
            format!(
                "[global]\npid = {d}/fpm.pid\nerror_log = {d}/fpm-error.log\ndaemonize = no\n\
                 [adversarial]\nuser = www-data\ngroup = www-data\nlisten = {sock}\n\
                 listen.mode = 0666\npm = static\npm.max_children = 2\nclear_env = no\n\
                 catch_workers_output = yes\n",
                sock = socket.display()
            ),
        )?;
        let child = command_in(Some(ns), &binary.to_string_lossy())
            .arg("--nodaemonize")
            .arg("--fpm-config")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting php-fpm")?;
        let fpm = PhpFpm {
            child: Some(child),
            socket,
            dir: dir.to_owned(),
        };
        if !crate::sim::wait_until(Duration::from_secs(10), || fpm.socket.exists()) {
            bail!(
                "php-fpm did not open {} within 10 s: {}",
                fpm.socket.display(),
                std::fs::read_to_string(fpm.dir.join("fpm-error.log")).unwrap_or_default()
            );
        }
        Ok(fpm)
    }
}

impl Drop for PhpFpm {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGQUIT: graceful stop, the master takes its workers with it.
            let _ = Command::new("kill")
                .args(["-QUIT", &child.id().to_string()])
                .status();
            let stopped = crate::sim::wait_until(Duration::from_secs(5), || {
                child.try_wait().ok().flatten().is_some()
            });
            if !stopped {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// The oracle: shared by `api/index.php` and `form.php` (which set `$ORACLE_SCRIPT`). Answers
/// like REDCap: 501 for a method other than POST, 403 for a missing or refused token, else a
/// small JSON body (`content=record` with `rows=N`: N JSON rows, for large responses).
const ORACLE_PHP: &str = r#"<?php
$known = [
@KNOWN@];
$method = $_SERVER['REQUEST_METHOD'] ?? '';
$str = function ($v) { return $v === null ? null : (is_string($v) ? $v : json_encode($v)); };
$token = $method === 'POST' ? ($_POST['token'] ?? null) : null;
$allowed = false;
if ($token === null || $token === '') {
    $label = 'none';
} elseif (is_string($token) && isset($known[strtoupper($token)])) {
    [$label, $allowed] = $known[strtoupper($token)];
} elseif (is_string($token) && preg_match('/^[A-Za-z0-9]+$/', $token)) {
    // REDCap's own syntax check (RestUtility::processRequest); the database says unknown.
    $label = 'unknown:' . substr(hash('sha256', $token), 0, 12);
} else {
    $label = 'malformed:' . substr(hash('sha256', $str($token)), 0, 12);
}
if ($ORACLE_SCRIPT !== 'api') {
    $status = 200;
} elseif ($method !== 'POST') {
    $status = 501;
} elseif (!$allowed) {
    $status = 403;
} else {
    $status = 200;
}
$line = json_encode([
    't' => microtime(true),
    'script' => $ORACLE_SCRIPT,
    'method' => $method,
    'uri' => $_SERVER['REQUEST_URI'] ?? '',
    'script_name' => $_SERVER['SCRIPT_NAME'] ?? '',
    'path_info' => (isset($_SERVER['PATH_INFO']) && $_SERVER['PATH_INFO'] !== '') ? $_SERVER['PATH_INFO'] : null,
    'token' => $label,
    'content' => $str($_POST['content'] ?? null),
    'action' => $str($_POST['action'] ?? null),
    'format' => $str($_POST['format'] ?? null),
    'files' => array_keys($_FILES),
    'status' => $status,
]) . "\n";
file_put_contents('@LOG@', $line, FILE_APPEND | LOCK_EX);
http_response_code($status);
header('Content-Type: application/json; charset=utf-8');
if ($status === 501) {
    echo '{"error":"The requested method is not implemented."}';
} elseif ($status === 403) {
    echo '{"error":"You do not have permissions to use the API"}';
} elseif (($_POST['content'] ?? '') === 'record' && isset($_POST['rows'])) {
    $rows = [];
    $n = intval($_POST['rows']);
    for ($i = 1; $i <= $n; $i++) {
        $rows[] = ['record_id' => (string)$i, 'field_1' => str_repeat(chr(97 + $i % 26), 40)];
    }
    echo json_encode($rows);
} else {
    echo '{"ok":true}';
}
"#;
