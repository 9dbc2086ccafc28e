//! `kwm.toml`: the settings of `kwm upload` and `kwm batches`, so that the service URL, the key paths and
//! (better still, through `KWM_TOKEN`) the token need not be typed every time. Flags override the file.

use std::fmt;
use std::path::{Path, PathBuf};

use kwm_schemas::AgbCode;
use serde::Deserialize;

use crate::secret::Token;

/// The default settings file, read when it exists in the working directory.
pub const DEFAULT_CONFIG_FILE: &str = "kwm.toml";

/// The settings a `kwm.toml` may hold. Unknown keys are refused (a typo would otherwise be ignored).
/// Relative paths are taken relative to the file's directory.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Base URL of the service, e.g. `https://kwm.example`.
    pub service: Option<String>,
    /// The bearer token. Prefer the `KWM_TOKEN` environment variable; a file holding it should be
    /// readable by its owner only.
    pub token: Option<String>,
    /// Directory with `signing.key`, `signing.pub`, `trajectory.key`.
    pub keys: Option<PathBuf>,
    /// The region's pseudonymisation key file.
    pub regional_key: Option<PathBuf>,
    /// A region file other than the built-in WBW one.
    pub region: Option<PathBuf>,
    pub batch_size: Option<u32>,
    /// The provider's AGB code: checked against the token, and lets a dry run show batch ids.
    pub agb: Option<AgbCode>,
    /// Export columns that may be present and are never read.
    #[serde(default)]
    pub ignore_columns: Vec<String>,
    pub skip_invalid: Option<bool>,
}

impl fmt::Debug for FileConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileConfig")
            .field("service", &self.service)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("keys", &self.keys)
            .field("regional_key", &self.regional_key)
            .field("region", &self.region)
            .field("batch_size", &self.batch_size)
            .field("agb", &self.agb)
            .field("ignore_columns", &self.ignore_columns)
            .field("skip_invalid", &self.skip_invalid)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
}

/// A loaded settings file and what is worth a warning about it.
#[derive(Debug, Default)]
pub struct LoadedConfig {
    pub path: Option<PathBuf>,
    pub config: FileConfig,
    pub warnings: Vec<String>,
}

impl LoadedConfig {
    /// Reads `explicit` (which must exist), or else `./kwm.toml` when it exists, or else nothing.
    pub fn discover(explicit: Option<&Path>) -> Result<Self, ConfigError> {
        match explicit {
            Some(p) => Self::load(p),
            None => {
                let p = Path::new(DEFAULT_CONFIG_FILE);
                if p.is_file() {
                    Self::load(p)
                } else {
                    Ok(Self::default())
                }
            }
        }
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config: FileConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.message().to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new(""));
        for p in [
            &mut config.keys,
            &mut config.regional_key,
            &mut config.region,
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        let mut warnings = Vec::new();
        if config.token.is_some() {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                if let Ok(meta) = std::fs::metadata(path) {
                    let mode = meta.permissions().mode() & 0o777;
                    if mode & 0o077 != 0 {
                        warnings.push(format!(
                            "{} holds a token and is readable by other users (mode {mode:04o}); run: chmod 600 {} \
                             (or use the KWM_TOKEN environment variable instead)",
                            path.display(),
                            path.display()
                        ));
                    }
                }
            }
        }
        Ok(Self {
            path: Some(path.to_path_buf()),
            config,
            warnings,
        })
    }

    /// The token of the file, if any.
    pub fn token(&self) -> Option<Token> {
        self.config.token.as_deref().map(Token::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_follow_the_file_and_unknown_keys_fail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kwm.toml");
        std::fs::write(
            &path,
            "service = \"http://127.0.0.1:8080\"\nkeys = \"keys\"\nregional_key = \"/abs/regional.key\"\nbatch_size = 500\nagb = \"12345678\"\nignore_columns = [\"notes\"]\n",
        )
        .expect("write");
        let loaded = LoadedConfig::load(&path).expect("loads");
        assert_eq!(loaded.config.keys, Some(dir.path().join("keys")));
        assert_eq!(
            loaded.config.regional_key,
            Some(PathBuf::from("/abs/regional.key"))
        );
        assert_eq!(loaded.config.batch_size, Some(500));
        assert_eq!(loaded.config.ignore_columns, ["notes"]);

        std::fs::write(&path, "servce = \"x\"\n").expect("write");
        let err = LoadedConfig::load(&path).expect_err("typo");
        assert!(err.to_string().contains("servce"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn a_readable_token_file_warns_and_debug_hides_the_token() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kwm.toml");
        std::fs::write(&path, "token = \"kwm_secret\"\n").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let loaded = LoadedConfig::load(&path).expect("loads");
        assert_eq!(loaded.warnings.len(), 1);
        assert!(!format!("{loaded:?}").contains("kwm_secret"));
        assert_eq!(loaded.token().expect("token").expose(), "kwm_secret");
    }
}
