//! A private MariaDB server for tests: `mariadb-install-db` into a temporary data directory,
//! then `mariadbd` on its own socket and a free loopback port, as root with `--user=root`.
//! Stopped (and its files removed) on drop. Needs Debian's `mariadb-server` (`cargo xtask setup`).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub struct MariaDb {
    dir: tempfile::TempDir,
    child: Option<Child>,
    port: u16,
    /// `--ssl-*` options when the server offers TLS.
    tls: Vec<String>,
}

impl MariaDb {
    /// Initialises a data directory and starts the server; returns once it answers.
    pub fn start() -> Result<MariaDb> {
        MariaDb::start_with(None)
    }

    /// The same, offering TLS with `pki`'s server certificate.
    pub fn start_tls(pki: &crate::web::TestPki) -> Result<MariaDb> {
        MariaDb::start_with(Some(pki))
    }

    fn start_with(pki: Option<&crate::web::TestPki>) -> Result<MariaDb> {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("data");
        let out = Command::new("mariadb-install-db")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .args([
                "--user=root",
                "--skip-test-db",
                "--auth-root-authentication-method=socket",
            ])
            .output()
            .context("mariadb-install-db (Debian's mariadb-server; run `cargo xtask setup`)")?;
        if !out.status.success() {
            bail!(
                "mariadb-install-db failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let tls = pki.map_or_else(Vec::new, |pki| {
            vec![
                format!("--ssl-ca={}", pki.ca_cert.display()),
                format!("--ssl-cert={}", pki.server_cert.display()),
                format!("--ssl-key={}", pki.server_key.display()),
            ]
        });
        let mut db = MariaDb {
            dir,
            child: None,
            port,
            tls,
        };
        db.launch()?;
        Ok(db)
    }

    fn launch(&mut self) -> Result<()> {
        let d = self.dir.path();
        let child = Command::new("mariadbd")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", d.join("data").display()))
            .arg(format!("--socket={}", self.socket().display()))
            .arg(format!("--pid-file={}", d.join("mariadb.pid").display()))
            .arg(format!("--log-error={}", d.join("error.log").display()))
            .arg(format!("--port={}", self.port))
            .args([
                "--bind-address=127.0.0.1",
                "--user=root",
                "--skip-name-resolve",
            ])
            .args(["--skip-log-bin", "--innodb-buffer-pool-size=16M"])
            .args(&self.tls)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("mariadbd")?;
        self.child = Some(child);
        let end = Instant::now() + Duration::from_secs(60);
        while Instant::now() < end {
            if self.sql("SELECT 1").is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!("mariadbd did not answer: {}", self.error_log())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("mariadb.sock")
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    /// Runs SQL as root over the socket.
    pub fn sql(&self, sql: &str) -> Result<String> {
        let out = Command::new("mariadb")
            .arg("--no-defaults")
            .arg(format!("--socket={}", self.socket().display()))
            .args(["-u", "root", "--batch", "--skip-column-names", "-e", sql])
            .output()
            .context("the mariadb client")?;
        if !out.status.success() {
            bail!("{sql}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Stops the server (SIGTERM, then waits).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let end = Instant::now() + Duration::from_secs(30);
            while Instant::now() < end {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The subset of REDCap's schema the token directory reads, with REDCap's table and column
/// names (and its case-insensitive collation on the token columns).
pub const REDCAP_SCHEMA: &str = "
CREATE DATABASE redcap;
USE redcap;
CREATE TABLE redcap_projects (
  project_id INT NOT NULL PRIMARY KEY,
  app_title TEXT,
  project_pi_firstname VARCHAR(255),
  project_pi_lastname VARCHAR(255),
  project_pi_email VARCHAR(255),
  log_event_table VARCHAR(64) NOT NULL DEFAULT 'redcap_log_event'
) COLLATE utf8mb4_unicode_ci;
CREATE TABLE redcap_user_information (
  ui_id INT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  username VARCHAR(191) UNIQUE,
  user_email VARCHAR(255),
  user_firstname VARCHAR(255),
  user_lastname VARCHAR(255),
  user_suspended_time DATETIME NULL,
  api_token VARCHAR(64) NULL UNIQUE
) COLLATE utf8mb4_unicode_ci;
CREATE TABLE redcap_user_rights (
  project_id INT NOT NULL,
  username VARCHAR(191) NOT NULL,
  expiration DATE NULL,
  api_token VARCHAR(32) NULL UNIQUE,
  PRIMARY KEY (project_id, username)
) COLLATE utf8mb4_unicode_ci;
CREATE TABLE redcap_log_event (
  log_event_id INT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  project_id INT NOT NULL DEFAULT 0,
  ts BIGINT,
  user VARCHAR(191),
  page VARCHAR(191),
  description MEDIUMTEXT
) COLLATE utf8mb4_unicode_ci;
CREATE TABLE redcap_log_event2 LIKE redcap_log_event;
";
