//! Bearer tokens from a file, each with a name and a [`Role`].
//!
//! The file has one token per line, `TOKEN,NAME,ROLE` (the format of Kubernetes' static token file, with the role in
//! the third column); `#` starts a comment, blank lines are skipped. Tokens are at least 16 characters; names are
//! unique (they are what logs show). The file is read again when it changes (its modification time is looked at,
//! at most once a second, when a request needs it). A file that no longer parses keeps the tokens in force and is
//! logged naming the file and line; a file that was removed or holds no token any more revokes every token (each
//! request is refused until tokens come back), so deleting a token's line, or the file, is how a token is revoked.
//! Tokens are compared in constant time; no message, log line or error ever holds one (messages name lines and
//! columns, never field values).

use crate::Role;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Why a tokens file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    /// The file cannot be read.
    #[error("cannot read the API tokens file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line is malformed.
    #[error("API tokens file {path}, line {line}: {reason}")]
    Line {
        /// The file.
        path: PathBuf,
        /// The line number (from 1).
        line: usize,
        /// What is wrong (never the token).
        reason: String,
    },
    /// The file has no token.
    #[error("API tokens file {path} has no token")]
    Empty {
        /// The file.
        path: PathBuf,
    },
}

#[derive(Clone)]
struct Token {
    secret: Vec<u8>,
    name: String,
    role: Role,
}

/// Parses a tokens file's text (see the module docs).
fn parse(path: &Path, text: &str) -> Result<Vec<Token>, TokensError> {
    let err = |line: usize, reason: String| TokensError::Line {
        path: path.to_owned(),
        line,
        reason,
    };
    let mut tokens: Vec<Token> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let [secret, name, role] = fields.as_slice() else {
            return Err(err(
                i + 1,
                format!("expected TOKEN,NAME,ROLE, found {} field(s)", fields.len()),
            ));
        };
        // No message quotes a field: in a file written in the wrong column order, any field may be a token.
        if secret.len() < 16 {
            return Err(err(
                i + 1,
                "the token (first field) is shorter than 16 characters".into(),
            ));
        }
        if name.is_empty() {
            return Err(err(i + 1, "the name (second field) is empty".into()));
        }
        let role = Role::parse(role)
            .ok_or_else(|| err(i + 1, "the role (third field) is not reader, operator or admin".into()))?;
        if tokens.iter().any(|t| t.name == *name) {
            return Err(err(
                i + 1,
                format!(
                    "the name (second field) is the same as on line {}",
                    first_line(text, name)
                ),
            ));
        }
        tokens.push(Token {
            secret: secret.as_bytes().to_vec(),
            name: (*name).to_owned(),
            role,
        });
    }
    if tokens.is_empty() {
        return Err(TokensError::Empty { path: path.to_owned() });
    }
    Ok(tokens)
}

/// The number of the first line whose second field is `name`.
fn first_line(text: &str, name: &str) -> usize {
    text.lines()
        .position(|l| l.split('#').next().unwrap_or_default().split(',').nth(1).map(str::trim) == Some(name))
        .map_or(0, |i| i + 1)
}

/// The tokens in force, re-read from their file when it changes.
pub struct Tokens {
    path: PathBuf,
    state: Mutex<State>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

struct State {
    tokens: Arc<Vec<Token>>,
    modified: Option<SystemTime>,
    checked: Instant,
}

/// How often the file's modification time is looked at.
const RECHECK: Duration = Duration::from_secs(1);

impl Tokens {
    /// Reads the tokens file; an unreadable or invalid file is an error (the process should not start).
    pub fn load(path: &Path) -> Result<Arc<Tokens>, TokensError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokensError::Read {
            path: path.to_owned(),
            source,
        })?;
        let tokens = parse(path, &text)?;
        tracing::info!(file = %path.display(), tokens = tokens.len(), "API requires a bearer token");
        Ok(Arc::new(Tokens {
            path: path.to_owned(),
            state: Mutex::new(State {
                tokens: Arc::new(tokens),
                modified: modified(path),
                checked: Instant::now(),
            }),
        }))
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The tokens in force, after re-reading the file if it changed.
    fn current(&self) -> Arc<Vec<Token>> {
        let mut st = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if st.checked.elapsed() >= RECHECK {
            st.checked = Instant::now();
            let now = modified(&self.path);
            if now != st.modified {
                st.modified = now;
                let reread = std::fs::read_to_string(&self.path)
                    .map_err(|source| TokensError::Read {
                        path: self.path.clone(),
                        source,
                    })
                    .and_then(|text| parse(&self.path, &text));
                match reread {
                    Ok(tokens) => {
                        tracing::info!(file = %self.path.display(), tokens = tokens.len(), "API tokens reloaded");
                        st.tokens = Arc::new(tokens);
                    }
                    // Removed or emptied: every token is revoked.
                    Err(e @ (TokensError::Empty { .. } | TokensError::Read { .. })) => {
                        tracing::warn!("{e}: every API token is revoked; requests are refused until tokens come back");
                        st.tokens = Arc::new(Vec::new());
                    }
                    Err(e) => tracing::warn!("{e}; the tokens in force stay"),
                }
            }
        }
        st.tokens.clone()
    }

    /// The name and role of a presented token, or `None` when it is not one of the file's.
    pub fn identify(&self, given: &str) -> Option<(String, Role)> {
        // Compare against every token, in constant time per token, so timing says nothing about which one is close.
        let mut found = None;
        for t in self.current().iter() {
            if constant_time_eq(&t.secret, given.as_bytes()) {
                found = Some((t.name.clone(), t.role));
            }
        }
        found
    }
}

/// The token of an `Authorization` header value (`Bearer TOKEN`), or why the value is not one.
pub fn bearer(value: &str) -> Result<&str, &'static str> {
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or("the authorization header is not `Bearer TOKEN`")
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_format_and_its_errors() {
        let p = Path::new("tokens.csv");
        let ok = parse(
            p,
            "# comment\n\nreader-token-0123456789,ro,reader\n  op-token-0123456789abc , ci , operator # trailing\n",
        )
        .expect("valid");
        assert_eq!(ok.len(), 2);
        assert_eq!((ok[1].name.as_str(), ok[1].role), ("ci", Role::Operator));
        let e = |text: &str| parse(p, text).map(drop).expect_err("invalid").to_string();
        assert!(e("short,name,reader").contains("line 1") && e("short,name,reader").contains("shorter than 16"));
        assert!(e("0123456789abcdef0,a,root").contains("not reader, operator or admin"));
        assert!(e("0123456789abcdef0,a").contains("TOKEN,NAME,ROLE"));
        assert!(e("0123456789abcdef0,a,admin\n0123456789abcdef1,a,admin").contains("the same as on line 1"));
        assert!(e("# nothing\n").contains("no token"));
        // No error message repeats a field, whatever column a token was written in.
        for bad in [
            "0123456789abcdef0,a,root",
            "ci,0123456789abcdef0,admin",
            "x0123456789abcdef0,admin,0123456789abcdef0",
            "0123456789abcdef1,0123456789abcdef0,admin\n0123456789abcdef2,0123456789abcdef0,admin",
        ] {
            assert!(!e(bad).contains("0123456789abcdef0"), "{}", e(bad));
        }
    }

    #[test]
    fn identifies_reloads_and_keeps_the_old_tokens_on_a_broken_file() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("tokens");
        std::fs::write(&path, "first-token-0123456789,ops,operator\n").expect("write");
        let t = Tokens::load(&path).expect("load");
        assert_eq!(
            t.identify("first-token-0123456789"),
            Some(("ops".into(), Role::Operator))
        );
        assert_eq!(t.identify("first-token-012345678"), None);
        assert_eq!(t.identify(""), None);
        std::thread::sleep(RECHECK + Duration::from_millis(50));
        std::fs::write(&path, "second-token-0123456789,root,admin\n").expect("rewrite");
        std::thread::sleep(RECHECK);
        assert_eq!(
            t.identify("second-token-0123456789"),
            Some(("root".into(), Role::Admin))
        );
        assert_eq!(t.identify("first-token-0123456789"), None, "the old token is gone");
        std::thread::sleep(RECHECK + Duration::from_millis(50));
        std::fs::write(&path, "garbage\n").expect("break");
        std::thread::sleep(RECHECK);
        assert_eq!(
            t.identify("second-token-0123456789"),
            Some(("root".into(), Role::Admin)),
            "a broken file keeps the tokens in force"
        );
        // Deleting the last line revokes the token; so does deleting the file.
        std::thread::sleep(RECHECK + Duration::from_millis(50));
        std::fs::write(&path, "# second-token revoked\n").expect("empty");
        std::thread::sleep(RECHECK);
        assert_eq!(t.identify("second-token-0123456789"), None, "an emptied file revokes");
        std::fs::write(&path, "third-token-0123456789,ops,operator\n").expect("again");
        std::thread::sleep(RECHECK + Duration::from_millis(50));
        assert_eq!(
            t.identify("third-token-0123456789"),
            Some(("ops".into(), Role::Operator))
        );
        std::fs::remove_file(&path).expect("remove");
        std::thread::sleep(RECHECK + Duration::from_millis(50));
        assert_eq!(t.identify("third-token-0123456789"), None, "a removed file revokes");
    }

    #[test]
    fn bearer_values_and_constant_time_comparison() {
        assert_eq!(bearer("Bearer abc "), Ok("abc"));
        assert_eq!(bearer("bearer abc"), Ok("abc"));
        assert!(bearer("Basic abc").is_err() && bearer("Bearer  ").is_err());
        assert!(
            constant_time_eq(b"abc", b"abc") && !constant_time_eq(b"abc", b"abd") && !constant_time_eq(b"a", b"ab")
        );
    }
}
