//! The directory's database source: REDCap's own MySQL/MariaDB tables, read with a read-only
//! user on a fresh connection per refresh (nothing is held open between reads).
//!
//! Project tokens come from `redcap_user_rights` (joined with `redcap_projects` and
//! `redcap_user_information`), super tokens from `redcap_user_information`, and REDCap's last
//! API use from each project's `redcap_log_event*` table. Each token cell is fingerprinted and
//! zeroed as its row is read; no query text or error here contains one.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use mysql::prelude::Queryable;
use mysql::{Conn, OptsBuilder, Row, SslOpts, Value};
use zeroize::Zeroize;

use super::{DirectoryConfig, DirectoryError, EntryToken, Owner, build_map, read_password};
use crate::shared::token::{FingerprintMap, RawToken, SiteKey};

/// project_id, user, MAX(ts) of one log table.
type LastUseRow = (Option<u64>, Option<String>, Option<u64>);

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A read that takes longer than this is given up (and tried again after `directory.retry`).
const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// Project tokens, one row per user and project. `expiration` is a date: the rights end when
/// the database's today reaches it, as REDCap checks it.
const PROJECT_TOKENS: &str = "SELECT ur.api_token, ur.username, ui.user_firstname, \
    ui.user_lastname, ui.user_email, ur.project_id, p.app_title, p.project_pi_firstname, \
    p.project_pi_lastname, p.project_pi_email, ui.user_suspended_time IS NOT NULL, \
    (ur.expiration IS NOT NULL AND ur.expiration <= CURDATE()), p.log_event_table \
    FROM redcap_user_rights ur \
    JOIN redcap_projects p ON p.project_id = ur.project_id \
    LEFT JOIN redcap_user_information ui ON ui.username = ur.username \
    WHERE ur.api_token IS NOT NULL AND ur.api_token <> ''";

const SUPER_TOKENS: &str = "SELECT api_token, username, user_firstname, user_lastname, \
    user_email, user_suspended_time IS NOT NULL FROM redcap_user_information \
    WHERE api_token IS NOT NULL AND api_token <> ''";

pub(super) fn read(
    config: &DirectoryConfig,
    key: &SiteKey,
) -> Result<FingerprintMap<Arc<Owner>>, DirectoryError> {
    let mut conn = connect(config)?;
    let classify = |e: mysql::Error| classify(config, e);
    let mut entries = Vec::new();
    let mut log_tables = BTreeSet::new();
    let rows = conn.query_iter(PROJECT_TOKENS).map_err(classify)?;
    for row in rows {
        let mut row = row.map_err(classify)?;
        let Some(token) = take_token(&mut row, 0) else {
            continue;
        };
        let owner = Owner {
            username: text(&mut row, 1).unwrap_or_default(),
            first_name: text(&mut row, 2),
            last_name: text(&mut row, 3),
            email: text(&mut row, 4),
            project_id: number(&mut row, 5),
            project_title: text(&mut row, 6),
            pi_first_name: text(&mut row, 7),
            pi_last_name: text(&mut row, 8),
            pi_email: text(&mut row, 9),
            super_token: false,
            user_suspended: number(&mut row, 10) == Some(1),
            rights_expired: number(&mut row, 11) == Some(1),
            last_api_use: None,
        };
        log_tables.insert(text(&mut row, 12).unwrap_or_else(|| "redcap_log_event".into()));
        entries.push((EntryToken::Raw(token), owner));
    }
    let rows = conn.query_iter(SUPER_TOKENS).map_err(classify)?;
    for row in rows {
        let mut row = row.map_err(classify)?;
        let Some(token) = take_token(&mut row, 0) else {
            continue;
        };
        let owner = Owner {
            username: text(&mut row, 1).unwrap_or_default(),
            first_name: text(&mut row, 2),
            last_name: text(&mut row, 3),
            email: text(&mut row, 4),
            super_token: true,
            user_suspended: number(&mut row, 5) == Some(1),
            ..Owner::default()
        };
        entries.push((EntryToken::Raw(token), owner));
    }
    if config.last_api_use {
        let last = last_api_use(&mut conn, &log_tables);
        for (_, owner) in entries.iter_mut() {
            if let Some(project) = owner.project_id {
                owner.last_api_use = last.get(&(project, owner.username.clone())).cloned();
            }
        }
    }
    Ok(build_map(key, entries))
}

/// REDCap's last API call per (project, user), as its Control Center computes it: the latest
/// `ts` of log rows on the API page. A table that cannot be read only leaves the field empty.
fn last_api_use(conn: &mut Conn, tables: &BTreeSet<String>) -> HashMap<(u64, String), String> {
    let mut last = HashMap::new();
    for table in tables {
        // The name comes from the database, and goes into SQL: only REDCap's own names pass.
        let suffix = table.strip_prefix("redcap_log_event").unwrap_or("x");
        if !suffix.bytes().all(|b| b.is_ascii_digit()) {
            tracing::warn!(
                table,
                "token directory: not a REDCap log table name, skipped"
            );
            continue;
        }
        let sql = format!(
            "SELECT project_id, user, MAX(ts) FROM {table} \
             WHERE page IN ('api/index.php', 'API/index.php') GROUP BY project_id, user"
        );
        let rows: Result<Vec<LastUseRow>, _> = conn.query(sql);
        match rows {
            Ok(rows) => {
                for (project, user, ts) in rows {
                    if let (Some(project), Some(user), Some(ts)) = (project, user, ts) {
                        last.insert((project, user), log_time(ts));
                    }
                }
            }
            Err(error) => {
                tracing::warn!(table, %error, "token directory: REDCap's last API use not read \
                    from this table (GRANT SELECT on it, or set `directory.last_api_use = false`)");
            }
        }
    }
    last
}

/// REDCap's log `ts` (YYYYMMDDhhmmss, server-local) as `YYYY-MM-DD hh:mm:ss`.
fn log_time(ts: u64) -> String {
    let s = format!("{ts:014}");
    format!(
        "{}-{}-{} {}:{}:{}",
        &s[0..4],
        &s[4..6],
        &s[6..8],
        &s[8..10],
        &s[10..12],
        &s[12..14]
    )
}

fn connect(config: &DirectoryConfig) -> Result<Conn, DirectoryError> {
    let password = match &config.password_file {
        Some(path) => Some(read_password(path)?),
        None => None,
    };
    let mut opts = OptsBuilder::new()
        .user(Some(config.user.clone()))
        .pass(password.as_ref().map(|p| p.as_str().to_owned()))
        .db_name(Some(config.database.clone()))
        .tcp_connect_timeout(Some(CONNECT_TIMEOUT))
        .read_timeout(Some(READ_TIMEOUT))
        .write_timeout(Some(READ_TIMEOUT))
        // A socket the server names for itself would bypass the address configured.
        .prefer_socket(false);
    opts = match &config.socket {
        Some(socket) => opts.socket(Some(socket.display().to_string())),
        None => opts
            .ip_or_hostname(Some(config.host.clone()))
            .tcp_port(config.port),
    };
    if config.tls {
        let mut ssl = SslOpts::default();
        if let Some(ca) = &config.tls_ca_file {
            ssl = ssl.with_root_cert_path(Some(ca.clone()));
        }
        opts = opts.ssl_opts(Some(ssl));
    }
    Conn::new(opts).map_err(|e| classify(config, e))
}

fn address(config: &DirectoryConfig) -> String {
    match &config.socket {
        Some(socket) => format!("socket {}", socket.display()),
        None => format!("{}:{}", config.host, config.port),
    }
}

/// Turns the client's error into one that says what to fix. Server error codes: 1044/1045
/// access denied at login, 1049 unknown database, 1146 missing table, 1054 missing column,
/// 1142/1143 SELECT not granted.
fn classify(config: &DirectoryConfig, error: mysql::Error) -> DirectoryError {
    match error {
        mysql::Error::MySqlError(e) => match e.code {
            1044 | 1045 | 1698 => DirectoryError::Login {
                user: config.user.clone(),
                message: e.message,
            },
            1049 | 1146 | 1054 => DirectoryError::MissingTable {
                database: config.database.clone(),
                message: e.message,
            },
            1142 | 1143 => DirectoryError::Denied {
                user: config.user.clone(),
                message: e.message,
            },
            _ => DirectoryError::Query(format!("{} (error {})", e.message, e.code)),
        },
        mysql::Error::IoError(e) => DirectoryError::Unreachable {
            address: address(config),
            message: e.to_string(),
        },
        mysql::Error::TlsError(e) => DirectoryError::Unreachable {
            address: address(config),
            message: format!("TLS: {e} (`directory.tls`, `directory.tls_ca_file`)"),
        },
        mysql::Error::DriverError(e) => DirectoryError::Unreachable {
            address: address(config),
            message: e.to_string(),
        },
        other => DirectoryError::Query(other.to_string()),
    }
}

/// The token cell as a [`RawToken`]; the cell's bytes are zeroed either way.
fn take_token(row: &mut Row, index: usize) -> Option<RawToken> {
    match row.take::<Value, _>(index) {
        Some(Value::Bytes(mut bytes)) => {
            let token = RawToken::parse(&bytes).ok();
            bytes.zeroize();
            token
        }
        _ => None,
    }
}

fn text(row: &mut Row, index: usize) -> Option<String> {
    match row.take::<Value, _>(index) {
        Some(Value::Bytes(bytes)) => {
            let text = String::from_utf8_lossy(&bytes).trim().to_owned();
            (!text.is_empty()).then_some(text)
        }
        _ => None,
    }
}

fn number(row: &mut Row, index: usize) -> Option<u64> {
    match row.take::<Value, _>(index) {
        Some(Value::Int(n)) => u64::try_from(n).ok(),
        Some(Value::UInt(n)) => Some(n),
        Some(Value::Bytes(bytes)) => std::str::from_utf8(&bytes).ok()?.trim().parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_times_read_as_dates() {
        assert_eq!(log_time(20261201093005), "2026-12-01 09:30:05");
    }
}
