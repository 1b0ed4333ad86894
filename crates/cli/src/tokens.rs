//! `fleet-health token`: make, list and remove bearer tokens in a server's
//! tokens file. The file holds only each secret's SHA-256; `create` prints
//! the secret once, on stdout alone (so that `TOKEN=$(fleet-health token
//! create ...)` captures it), and what it did on stderr. The server reloads
//! the file within a second; a removed token stops working at once, and the
//! streams open with it end.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use fleet_health_auth::tokens::{add_to_file, new_token, remove_from_file};
use fleet_health_auth::{AgentPattern, Role, TokenFile};

/// What `token` was asked to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenTask {
    /// Make a token.
    Create {
        /// The tokens file.
        file: PathBuf,
        /// Its name.
        name: String,
        /// Its role.
        role: Role,
        /// A relay's patterns.
        agents: Vec<AgentPattern>,
        /// How long it lasts; `None`: until removed.
        expires_in: Option<Duration>,
        /// Replace a token of the same name.
        replace: bool,
    },
    /// List the tokens (never their secrets).
    List {
        /// The tokens file.
        file: PathBuf,
    },
    /// Remove a token.
    Revoke {
        /// The tokens file.
        file: PathBuf,
        /// Its name.
        name: String,
    },
}

/// What to print: on stdout, and on stderr.
pub struct Said {
    /// For stdout.
    pub out: String,
    /// For stderr.
    pub note: String,
}

/// Carries out `task`.
pub fn run(task: &TokenTask) -> Result<Said, String> {
    match task {
        TokenTask::Create {
            file,
            name,
            role,
            agents,
            expires_in,
            replace,
        } => {
            let now = SystemTime::now();
            let expires = expires_in.map(|d| now + d);
            let (secret, entry) =
                new_token(name, *role, agents.clone(), expires, now).map_err(|e| e.to_string())?;
            let text = read(file)?;
            let text = add_to_file(&text, &entry, *replace).map_err(|e| match e {
                fleet_health_auth::TokenError::DuplicateName(n) => format!(
                    "{} already has a token named {n:?}; pass --replace to replace it, or pick another name",
                    file.display()
                ),
                other => format!("{}: {other}", file.display()),
            })?;
            write(file, &text)?;
            let until = expires.map_or("until removed".to_string(), |t| {
                format!("until {}", humantime::format_rfc3339_seconds(t))
            });
            Ok(Said {
                out: format!("{secret}\n"),
                note: format!(
                    "token {name:?} ({role}) added to {}, valid {until}; this is the only time its secret is shown\n",
                    file.display()
                ),
            })
        }
        TokenTask::List { file } => {
            let parsed =
                TokenFile::parse(&read(file)?).map_err(|e| format!("{}: {e}", file.display()))?;
            let mut out = String::from("NAME\tROLE\tAGENTS\tCREATED\tEXPIRES\n");
            for e in parsed.entries() {
                let agents: Vec<&str> = e.agents.iter().map(|p| p.as_str()).collect();
                out.push_str(&format!(
                    "{}\t{}\t{}\t{}\t{}\n",
                    e.name,
                    e.role,
                    if agents.is_empty() {
                        "-".into()
                    } else {
                        agents.join(",")
                    },
                    humantime::format_rfc3339_seconds(e.created),
                    e.expires
                        .map_or("-".into(), |t| humantime::format_rfc3339_seconds(t)
                            .to_string()),
                ));
            }
            Ok(Said {
                out,
                note: String::new(),
            })
        }
        TokenTask::Revoke { file, name } => {
            let (text, removed) = remove_from_file(&read(file)?, name)
                .map_err(|e| format!("{}: {e}", file.display()))?;
            if !removed {
                return Err(format!("{} has no token named {name:?}", file.display()));
            }
            write(file, &text)?;
            Ok(Said {
                out: String::new(),
                note: format!(
                    "token {name:?} removed from {}; a server reading it refuses the token within a second\n",
                    file.display()
                ),
            })
        }
    }
}

fn read(file: &Path) -> Result<String, String> {
    match std::fs::read_to_string(file) {
        Ok(t) => Ok(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(format!("{}: {e}", file.display())),
    }
}

/// Replaces the file in one step (a server reading it never sees half of
/// it), readable by its owner only.
fn write(file: &Path, text: &str) -> Result<(), String> {
    let tmp = file.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options
        .open(&tmp)
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::io::Write::write_all(&mut f, text.as_bytes())
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, file).map_err(|e| format!("{}: {e}", file.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_list_revoke() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("tokens.toml");
        let said = run(&TokenTask::Create {
            file: file.clone(),
            name: "ci".into(),
            role: Role::Reader,
            agents: vec![],
            expires_in: Some(Duration::from_secs(3600)),
            replace: false,
        })
        .expect("creates");
        let secret = said.out.trim();
        assert!(secret.starts_with("fht_"));
        let text = std::fs::read_to_string(&file).expect("written");
        assert!(!text.contains(&secret[4..]), "only the hash is written");
        let parsed = TokenFile::parse(&text).expect("parses");
        assert!(matches!(
            parsed.verify(secret, SystemTime::now()),
            fleet_health_auth::TokenMatch::Valid(_)
        ));
        let again = run(&TokenTask::Create {
            file: file.clone(),
            name: "ci".into(),
            role: Role::Reader,
            agents: vec![],
            expires_in: None,
            replace: false,
        });
        assert!(again.err().expect("refused").contains("--replace"));
        let list = run(&TokenTask::List { file: file.clone() })
            .expect("lists")
            .out;
        assert!(list.contains("ci\treader\t-\t"), "{list}");
        run(&TokenTask::Revoke {
            file: file.clone(),
            name: "ci".into(),
        })
        .expect("revokes");
        assert!(
            TokenFile::parse(&std::fs::read_to_string(&file).unwrap())
                .unwrap()
                .entries()
                .is_empty()
        );
        assert!(
            run(&TokenTask::Revoke {
                file,
                name: "ci".into()
            })
            .is_err()
        );
    }
}
