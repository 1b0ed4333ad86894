//! Named contexts, like kubeconfig's: a server and the credentials for it,
//! kept in one file so that nobody repeats four flags.
//!
//! The file is `$FLEET_HEALTH_CONFIG`, else `$XDG_CONFIG_HOME/fleet-health/config.toml`,
//! else `~/.config/fleet-health/config.toml`:
//!
//! ```toml
//! current-context = "prod"
//!
//! [contexts.prod]
//! server = "https://fleet.example.com:50051"
//! ca = "/etc/fleet-health/ca.pem"       # paths relative to this file's folder are allowed
//! cert = "alice.pem"
//! key = "alice.key"
//! # token-file = "reader.token"          # or a token in a file (never the token itself here)
//! ```
//!
//! Each setting is taken from, in order: its flag, its environment variable,
//! the context (`--context NAME`, `FLEET_HEALTH_CONTEXT`, else the file's
//! `current-context`), the default.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The contexts file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ContextsFile {
    /// The context used when none is named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_context: Option<String>,
    /// The contexts, by name.
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

/// One context: a server and the credentials for it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Context {
    /// The server's URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// The trust bundle for the server's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// The client certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// Its key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// A file holding a bearer token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

/// Where the contexts file is.
pub fn default_path() -> Option<PathBuf> {
    let non_empty = |v: &str| {
        std::env::var_os(v)
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
    };
    if let Some(p) = non_empty("FLEET_HEALTH_CONFIG") {
        return Some(p);
    }
    if let Some(xdg) = non_empty("XDG_CONFIG_HOME") {
        return Some(xdg.join("fleet-health/config.toml"));
    }
    non_empty("HOME").map(|h| h.join(".config/fleet-health/config.toml"))
}

impl ContextsFile {
    /// Reads the file at `path`; a missing file holds no contexts.
    pub fn read(path: &Path) -> Result<ContextsFile, String> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(ContextsFile::default());
            }
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let mut file: ContextsFile =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        // Relative paths are relative to the file's folder.
        let base = path.parent().unwrap_or(Path::new("."));
        for ctx in file.contexts.values_mut() {
            for p in [
                &mut ctx.ca,
                &mut ctx.cert,
                &mut ctx.key,
                &mut ctx.token_file,
            ]
            .into_iter()
            .flatten()
            {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
        }
        Ok(file)
    }

    /// Writes the file at `path` (its folder made if needed).
    pub fn write(&self, path: &Path) -> Result<(), String> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let text = toml::to_string_pretty(self).map_err(|e| e.to_string())?;
        std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The context named `name`, or the current one when `name` is `None`.
    pub fn pick(&self, name: Option<&str>) -> Result<Option<(&str, &Context)>, String> {
        let Some(name) = name.or(self.current_context.as_deref()) else {
            return Ok(None);
        };
        match self.contexts.get_key_value(name) {
            Some((k, c)) => Ok(Some((k.as_str(), c))),
            None => Err(format!(
                "no context named {name:?} (known: {}); add one with `fleet-health context set {name} --server URL ...`",
                self.names()
            )),
        }
    }

    fn names(&self) -> String {
        if self.contexts.is_empty() {
            "none".into()
        } else {
            self.contexts.keys().cloned().collect::<Vec<_>>().join(", ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contexts_read_with_paths_relative_to_the_file() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("config.toml");
        std::fs::write(
            &path,
            "current-context = \"prod\"\n[contexts.prod]\nserver = \"https://f:1\"\nca = \"ca.pem\"\ncert = \"/abs/c.pem\"\n",
        )
        .expect("writes");
        let file = ContextsFile::read(&path).expect("reads");
        let (name, ctx) = file.pick(None).expect("ok").expect("a current context");
        assert_eq!(name, "prod");
        assert_eq!(ctx.server.as_deref(), Some("https://f:1"));
        assert_eq!(ctx.ca.as_deref(), Some(dir.path().join("ca.pem").as_path()));
        assert_eq!(ctx.cert.as_deref(), Some(Path::new("/abs/c.pem")));
        let err = file.pick(Some("staging")).unwrap_err();
        assert!(err.contains("known: prod"), "{err}");
        assert_eq!(
            ContextsFile::read(&dir.path().join("none.toml")).expect("missing is empty"),
            ContextsFile::default()
        );
        std::fs::write(&path, "[contexts.x]\nsever = \"typo\"\n").expect("writes");
        assert!(ContextsFile::read(&path).unwrap_err().contains("sever"));
    }

    #[test]
    fn written_contexts_read_back() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("sub/config.toml");
        let mut file = ContextsFile::default();
        file.contexts.insert(
            "lab".into(),
            Context {
                server: Some("https://lab:50051".into()),
                ca: Some("/etc/ca.pem".into()),
                ..Context::default()
            },
        );
        file.current_context = Some("lab".into());
        file.write(&path).expect("writes");
        assert_eq!(ContextsFile::read(&path).expect("reads"), file);
    }
}
