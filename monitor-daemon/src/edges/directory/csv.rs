//! The directory's CSV source, for sites that cannot grant database access: a header row, then
//! one token per row, named by its raw token (`token`) or its fingerprint (`token_fp`, as the
//! daemon shows it) and the owner's fields under the names [`Owner`] uses.
//!
//! The file's text and every raw token cell are zeroed once read; errors name the line and
//! the column, never a cell's value.

use std::path::Path;
use std::sync::Arc;

use zeroize::{Zeroize, Zeroizing};

use super::{DirectoryError, EntryToken, Owner, build_map};
use crate::shared::token::{FingerprintMap, RawToken, SiteKey, TokenFingerprint};

/// Larger files are refused: a directory of a million tokens is far under this.
const MAX_FILE_BYTES: u64 = 256 << 20;

const COLUMNS: &[&str] = &[
    "token",
    "token_fp",
    "username",
    "first_name",
    "last_name",
    "email",
    "project_id",
    "project_title",
    "pi_first_name",
    "pi_last_name",
    "pi_email",
    "super_token",
    "user_suspended",
    "rights_expired",
    "last_api_use",
];

pub(super) fn read_file(
    path: &Path,
    key: &SiteKey,
) -> Result<FingerprintMap<Arc<Owner>>, DirectoryError> {
    let error = |message: String| DirectoryError::Csv {
        path: path.to_owned(),
        message,
    };
    let len = std::fs::metadata(path)
        .map_err(|e| error(format!("{e}; check the path")))?
        .len();
    if len > MAX_FILE_BYTES {
        return Err(error(format!(
            "is {len} bytes, more than the {MAX_FILE_BYTES} a directory file may be"
        )));
    }
    let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| error(e.to_string()))?);
    let text = std::str::from_utf8(&bytes).map_err(|_| error("is not UTF-8 text".into()))?;
    parse(text, key).map_err(error)
}

/// Parses the whole text; the message names the line (1 = the header) and column at fault.
pub(super) fn parse(text: &str, key: &SiteKey) -> Result<FingerprintMap<Arc<Owner>>, String> {
    let mut records = Records::new(text);
    let header = match records.next() {
        Some(Ok(header)) => header,
        Some(Err(message)) => return Err(format!("line 1: {message}")),
        None => return Err("is empty: the first row must name the columns".into()),
    };
    let mut columns = Vec::with_capacity(header.len());
    for name in &header {
        let name = name.trim().to_ascii_lowercase();
        let Some(known) = COLUMNS.iter().position(|c| *c == name) else {
            return Err(format!(
                "line 1: unknown column `{name}`; the columns are {}",
                COLUMNS.join(", ")
            ));
        };
        if columns.contains(&known) {
            return Err(format!("line 1: column `{name}` appears twice"));
        }
        columns.push(known);
    }
    let has = |name: &str| columns.iter().any(|&c| COLUMNS[c] == name);
    if has("token") == has("token_fp") {
        return Err(
            "line 1: name the token by exactly one column, `token` (raw) or \
             `token_fp` (fingerprint)"
                .into(),
        );
    }
    if !has("username") {
        return Err("line 1: the `username` column is missing".into());
    }
    let mut entries = Vec::new();
    let mut line = 1;
    for record in records {
        line += 1;
        let mut cells = record.map_err(|message| format!("line {line}: {message}"))?;
        if cells.len() == 1 && cells[0].trim().is_empty() {
            continue;
        }
        if cells.len() != columns.len() {
            for cell in &mut cells {
                cell.zeroize();
            }
            return Err(format!(
                "line {line}: {} cells, but the header names {} columns",
                cells.len(),
                columns.len()
            ));
        }
        let mut token = None;
        let mut owner = Owner::default();
        let mut problem = None;
        for (&column, cell) in columns.iter().zip(cells.iter_mut()) {
            let name = COLUMNS[column];
            let value = cell.trim();
            let result: Result<(), String> = match name {
                "token" => RawToken::parse(value.as_bytes())
                    .map(|raw| token = Some(EntryToken::Raw(raw)))
                    .map_err(|_| "`token` is not a REDCap API token (letters and digits)".into()),
                "token_fp" => value
                    .parse::<TokenFingerprint>()
                    .map(|fp| token = Some(EntryToken::Fingerprint(fp)))
                    .map_err(|e| format!("`token_fp`: {e}")),
                _ => set_field(&mut owner, name, value),
            };
            if name == "token" {
                cell.zeroize();
            }
            if let Err(message) = result {
                problem.get_or_insert(message);
            }
        }
        for cell in &mut cells {
            cell.zeroize();
        }
        if let Some(message) = problem {
            return Err(format!("line {line}: {message}"));
        }
        if let Some(token) = token {
            entries.push((token, owner));
        }
    }
    Ok(build_map(key, entries))
}

/// Sets one of the owner's fields from its cell (already trimmed).
fn set_field(owner: &mut Owner, name: &str, value: &str) -> Result<(), String> {
    let text = (!value.is_empty()).then(|| value.to_owned());
    let slot = match name {
        "username" if value.is_empty() => return Err("`username` is empty".into()),
        "username" => {
            owner.username = value.to_owned();
            return Ok(());
        }
        "project_id" if value.is_empty() => return Ok(()),
        "project_id" => {
            let id = value
                .parse()
                .map_err(|_| "`project_id` is not a whole number".to_string())?;
            owner.project_id = Some(id);
            return Ok(());
        }
        "super_token" => {
            owner.super_token = flag(value, name)?;
            return Ok(());
        }
        "user_suspended" => {
            owner.user_suspended = flag(value, name)?;
            return Ok(());
        }
        "rights_expired" => {
            owner.rights_expired = flag(value, name)?;
            return Ok(());
        }
        "first_name" => &mut owner.first_name,
        "last_name" => &mut owner.last_name,
        "email" => &mut owner.email,
        "project_title" => &mut owner.project_title,
        "pi_first_name" => &mut owner.pi_first_name,
        "pi_last_name" => &mut owner.pi_last_name,
        "pi_email" => &mut owner.pi_email,
        "last_api_use" => &mut owner.last_api_use,
        _ => return Ok(()),
    };
    *slot = text;
    Ok(())
}

fn flag(value: &str, name: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "" | "0" | "false" | "no" => Ok(false),
        "1" | "true" | "yes" => Ok(true),
        _ => Err(format!("`{name}` must be 1/0, true/false or yes/no")),
    }
}

/// RFC 4180 records: `,` separated, `"` quoted (`""` inside quotes), CRLF or LF line ends.
struct Records<'a> {
    rest: &'a str,
}

impl<'a> Records<'a> {
    fn new(text: &'a str) -> Records<'a> {
        Records {
            rest: text.strip_prefix('\u{feff}').unwrap_or(text),
        }
    }
}

impl Iterator for Records<'_> {
    type Item = Result<Vec<String>, String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let mut cells = Vec::new();
        let mut cell = String::new();
        let mut chars = self.rest.char_indices().peekable();
        let mut quoted = false;
        let mut at_cell_start = true;
        while let Some((i, c)) = chars.next() {
            if quoted {
                match c {
                    '"' if chars.peek().is_some_and(|&(_, n)| n == '"') => {
                        chars.next();
                        cell.push('"');
                    }
                    '"' => quoted = false,
                    _ => cell.push(c),
                }
                continue;
            }
            match c {
                '"' if at_cell_start => {
                    quoted = true;
                    at_cell_start = false;
                }
                ',' => {
                    cells.push(std::mem::take(&mut cell));
                    at_cell_start = true;
                }
                '\n' => {
                    cells.push(std::mem::take(&mut cell));
                    self.rest = &self.rest[i + 1..];
                    return Some(Ok(cells));
                }
                '\r' if chars.peek().is_some_and(|&(_, n)| n == '\n') => {}
                _ => {
                    cell.push(c);
                    at_cell_start = false;
                }
            }
        }
        self.rest = "";
        if quoted {
            cell.zeroize();
            return Some(Err("a quoted cell is not closed".into()));
        }
        cells.push(cell);
        Some(Ok(cells))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789ABCDEF0123456789ABCDEF";

    fn key() -> SiteKey {
        SiteKey::from_bytes([3; 32])
    }

    fn fp(token: &str) -> TokenFingerprint {
        key().fingerprint(&RawToken::parse(token.as_bytes()).ok().unwrap())
    }

    #[test]
    fn raw_token_rows_map_the_fingerprint_to_every_field() {
        let text = format!(
            "token,username,first_name,last_name,email,project_id,project_title,pi_first_name,\
             pi_last_name,pi_email,super_token,user_suspended,rights_expired,last_api_use\r\n\
             {},jdoe,Jane,Doe,jane@example.org,12,\"Trial, \"\"X\"\"\",Ada,Lovelace,\
             ada@example.org,0,yes,false,2026-12-01 10:00:00\r\n",
            TOKEN.to_lowercase()
        );
        let map = parse(&text, &key()).unwrap();
        let owner = map.get(&fp(TOKEN)).unwrap();
        assert_eq!(owner.username, "jdoe");
        assert_eq!(owner.person(), "Jane Doe (jdoe)");
        assert_eq!(owner.email.as_deref(), Some("jane@example.org"));
        assert_eq!(owner.project_id, Some(12));
        assert_eq!(owner.project_title.as_deref(), Some("Trial, \"X\""));
        assert_eq!(
            owner.pi().as_deref(),
            Some("Ada Lovelace <ada@example.org>")
        );
        assert!(owner.user_suspended);
        assert!(!owner.rights_expired && !owner.super_token);
        assert_eq!(owner.last_api_use.as_deref(), Some("2026-12-01 10:00:00"));
    }

    #[test]
    fn fingerprint_rows_need_no_raw_token() {
        let fp = fp(TOKEN);
        let text = format!("token_fp,username,super_token\n{fp},svc,1\n\n");
        let map = parse(&text, &key()).unwrap();
        assert!(map.get(&fp).unwrap().super_token);
        assert_eq!(map.len(), 1);
    }

    #[test]
    fn errors_name_line_and_column_but_never_a_token() {
        let cases = [
            ("user,token\n", "unknown column `user`"),
            ("token,token_fp,username\n", "exactly one column"),
            ("token\n", "`username` column is missing"),
            ("token,username\nNOT-A-TOKEN!,x\n", "line 2: `token` is not"),
            ("token,username\nABCDEF,\n", "line 2: `username` is empty"),
            ("token,username\nABCDEF,a,b\n", "line 2: 3 cells"),
            ("token_fp,username\nzz,a\n", "line 2: `token_fp`"),
            (
                "token,username,project_id\nABCDEF,a,x\n",
                "not a whole number",
            ),
            ("token,username\n\"ABCDEF,a\n", "not closed"),
            ("", "is empty"),
        ];
        for (text, expected) in cases {
            let message = parse(text, &key()).err().unwrap();
            assert!(message.contains(expected), "{text:?}: {message}");
            assert!(!message.contains("ABCDEF"), "{message}");
        }
    }

    #[test]
    fn a_file_source_reads_and_names_the_file_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.csv");
        std::fs::write(&path, format!("token,username\n{TOKEN},jdoe\n")).unwrap();
        assert_eq!(read_file(&path, &key()).unwrap().len(), 1);
        let missing = read_file(&dir.path().join("nope.csv"), &key())
            .err()
            .unwrap();
        assert!(missing.to_string().contains("nope.csv"), "{missing}");
        assert!(
            missing.to_string().contains("directory.csv_file"),
            "{missing}"
        );
    }
}
