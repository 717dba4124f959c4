//! Password file in the format `mosquitto_passwd` writes, so users can reuse
//! their files: one `username:hash` per line, where the hash is either
//! `$7$<iterations>$<base64 salt>$<base64 hash>` (PBKDF2-HMAC-SHA512, Mosquitto 2.0's
//! default) or `$6$<base64 salt>$<base64 hash>` (SHA-512 of password + salt, older
//! Mosquitto). Comparisons run in constant time.

use std::collections::HashMap;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;

/// Upper bound on PBKDF2 iterations we accept from a file, so a hostile file
/// cannot make every CONNECT burn seconds of CPU.
const MAX_ITERATIONS: u32 = 10_000_000;

/// Errors reading a password file.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The file could not be read.
    #[error("cannot read password file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The IO error.
        source: std::io::Error,
    },
    /// A line is not `user:$7$..` or `user:$6$..`.
    #[error("password file {path}, line {line}: {reason}")]
    Format {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong (never the hash itself).
        reason: String,
    },
}

/// One user's stored hash.
#[derive(Clone)]
enum Hash {
    /// PBKDF2-HMAC-SHA512.
    Pbkdf2 {
        iterations: u32,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
    /// SHA-512(password ‖ salt).
    Sha512 { salt: Vec<u8>, hash: Vec<u8> },
}

/// Parsed password file: username → hash.
#[derive(Clone, Default)]
pub struct PasswordFile {
    users: HashMap<String, Hash>,
}

impl std::fmt::Debug for PasswordFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PasswordFile({} users)", self.users.len())
    }
}

impl PasswordFile {
    /// Reads and parses a password file.
    pub fn load(path: &Path) -> Result<Self, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|(line, reason)| AuthError::Format {
            path: path.display().to_string(),
            line,
            reason,
        })
    }

    /// Parses the file's text; on error returns (line number, reason).
    pub fn parse(text: &str) -> Result<Self, (usize, String)> {
        let mut users = HashMap::new();
        for (idx, raw) in text.lines().enumerate() {
            let line = raw.trim_end_matches('\r');
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((user, hash)) = line.split_once(':') else {
                return Err((idx + 1, "expected `username:hash`".into()));
            };
            let hash = parse_hash(hash).map_err(|r| (idx + 1, r))?;
            users.insert(user.to_string(), hash);
        }
        Ok(PasswordFile { users })
    }

    /// Number of users in the file.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether the file has no users.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Checks a username and password. The digest comparison is constant
    /// time; an unknown user is refused without hashing (user names are not
    /// secret in MQTT: they travel next to the password).
    pub fn verify(&self, username: &str, password: &[u8]) -> bool {
        match self.users.get(username) {
            None => false,
            Some(Hash::Pbkdf2 {
                iterations,
                salt,
                hash,
            }) => {
                let mut out = vec![0u8; hash.len()];
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, *iterations, &mut out);
                out.ct_eq(hash).into()
            }
            Some(Hash::Sha512 { salt, hash }) => {
                let mut d = Sha512::new();
                d.update(password);
                d.update(salt);
                let out = d.finalize();
                out.as_slice().ct_eq(hash).into()
            }
        }
    }
}

fn b64(field: &str, what: &str) -> Result<Vec<u8>, String> {
    STANDARD
        .decode(field)
        .map_err(|_| format!("{what} is not valid base64"))
}

fn parse_hash(s: &str) -> Result<Hash, String> {
    let parts: Vec<&str> = s.split('$').collect();
    match parts.as_slice() {
        ["", "7", iterations, salt, hash] => {
            let iterations: u32 = iterations
                .parse()
                .map_err(|_| "iteration count is not a number".to_string())?;
            if iterations == 0 || iterations > MAX_ITERATIONS {
                return Err(format!("iteration count must be 1..={MAX_ITERATIONS}"));
            }
            let hash = b64(hash, "hash")?;
            if hash.is_empty() || hash.len() > 64 {
                return Err("hash must be 1..=64 bytes".into());
            }
            Ok(Hash::Pbkdf2 {
                iterations,
                salt: b64(salt, "salt")?,
                hash,
            })
        }
        ["", "6", salt, hash] => {
            let hash = b64(hash, "hash")?;
            if hash.len() != 64 {
                return Err("SHA-512 hash must be 64 bytes".into());
            }
            Ok(Hash::Sha512 {
                salt: b64(salt, "salt")?,
                hash,
            })
        }
        _ => Err("unsupported hash (expected `$7$` PBKDF2-SHA512 or `$6$` SHA-512)".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pbkdf2_line(user: &str, pw: &str, iters: u32, salt: &[u8]) -> String {
        let mut out = [0u8; 64];
        pbkdf2::pbkdf2_hmac::<Sha512>(pw.as_bytes(), salt, iters, &mut out);
        format!(
            "{user}:$7${iters}${}${}",
            STANDARD.encode(salt),
            STANDARD.encode(out)
        )
    }

    #[test]
    fn pbkdf2_and_sha512_entries_verify() {
        let mut d = Sha512::new();
        d.update(b"pw6");
        d.update(b"salty");
        let h6 = d.finalize();
        let text = format!(
            "# comment\n{}\nold:$6${}${}\n",
            pbkdf2_line("alice", "secret", 101, b"0123456789ab"),
            STANDARD.encode(b"salty"),
            STANDARD.encode(h6)
        );
        let f = PasswordFile::parse(&text).unwrap();
        assert_eq!(f.len(), 2);
        assert!(f.verify("alice", b"secret"));
        assert!(!f.verify("alice", b"secreT"));
        assert!(f.verify("old", b"pw6"));
        assert!(!f.verify("old", b"pw7"));
        assert!(!f.verify("bob", b"secret"));
    }

    #[test]
    fn bad_lines_are_reported_with_line_number() {
        assert_eq!(PasswordFile::parse("a:b\n").unwrap_err().0, 1);
        assert_eq!(PasswordFile::parse("\nnocolon").unwrap_err().0, 2);
        assert!(PasswordFile::parse("a:$7$0$AA==$AA==").is_err());
        assert!(PasswordFile::parse("a:$7$10$!!$AA==").is_err());
        assert!(PasswordFile::parse("a:$6$AA==$AA==").is_err());
    }
}
