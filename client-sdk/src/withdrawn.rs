//! The provider's own list of withdrawn trajectories: `withdrawn-trajectories.txt` in the keys directory
//! (beside `trajectory.key`, mode 0600). `kwm withdraw --trajectory` adds the trajectory's pseudonym (the
//! HMAC under the provider's own trajectory key, what the service stores; never the trajectory number,
//! so the file adds no identifying data), and `kwm upload` leaves those trajectories out of later
//! uploads, unless `--include-withdrawn`. Nothing of it is kept at the custodian.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use kwm_schemas::Pseudonym;

/// File name of the list inside the keys directory.
pub const WITHDRAWN_FILE: &str = "withdrawn-trajectories.txt";

const HEADER: &str = "# Trajectories this provider withdrew (pseudonyms under trajectory.key), one per line.\n\
# kwm upload leaves them out; pass --include-withdrawn to send them again. Delete a line to undo.\n";

/// Why the list could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum WithdrawnError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path}:{line}: not a trajectory pseudonym (64 hex digits); correct or delete the line"
    )]
    BadLine { path: PathBuf, line: usize },
}

/// The withdrawn trajectories of one provider, as the file holds them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WithdrawnList {
    trajectories: HashSet<Pseudonym>,
}

impl WithdrawnList {
    /// The path of the list in a keys directory.
    pub fn path_in(keys_dir: &Path) -> PathBuf {
        keys_dir.join(WITHDRAWN_FILE)
    }

    /// Reads the list of a keys directory; no file is an empty list. Lines starting with `#` and
    /// empty lines are ignored; any other line must be a pseudonym.
    pub fn load(keys_dir: &Path) -> Result<Self, WithdrawnError> {
        let path = Self::path_in(keys_dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => return Err(WithdrawnError::Io { path, source }),
        };
        let mut trajectories = HashSet::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let p = parse_hex32(line).ok_or_else(|| WithdrawnError::BadLine {
                path: path.clone(),
                line: i + 1,
            })?;
            trajectories.insert(p);
        }
        Ok(Self { trajectories })
    }

    /// Adds a trajectory to the list of a keys directory (creating the file, mode 0600); one already
    /// listed is not added twice. Returns whether it was new.
    pub fn add(keys_dir: &Path, trajectory: &Pseudonym) -> Result<bool, WithdrawnError> {
        if Self::load(keys_dir)?.contains(trajectory) {
            return Ok(false);
        }
        let path = Self::path_in(keys_dir);
        let io = |source| WithdrawnError::Io {
            path: path.clone(),
            source,
        };
        let mut options = std::fs::OpenOptions::new();
        options.append(true).create(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&path).map_err(io)?;
        let empty = file.metadata().map_err(io)?.len() == 0;
        let mut text = String::new();
        if empty {
            text.push_str(HEADER);
        }
        text.push_str(&hex::encode(trajectory.as_bytes()));
        text.push('\n');
        file.write_all(text.as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(true)
    }

    pub fn contains(&self, trajectory: &Pseudonym) -> bool {
        self.trajectories.contains(trajectory)
    }

    pub fn len(&self) -> usize {
        self.trajectories.len()
    }

    pub fn is_empty(&self) -> bool {
        self.trajectories.is_empty()
    }

    /// The listed trajectories.
    pub fn into_set(self) -> HashSet<Pseudonym> {
        self.trajectories
    }
}

fn parse_hex32(text: &str) -> Option<Pseudonym> {
    let bytes = hex::decode(text).ok()?;
    let arr: [u8; 32] = bytes.try_into().ok()?;
    Some(Pseudonym(arr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_once_reads_back_and_names_a_bad_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(WithdrawnList::load(dir.path()).expect("no file").is_empty());
        let a = Pseudonym([1; 32]);
        assert!(WithdrawnList::add(dir.path(), &a).expect("added"));
        assert!(!WithdrawnList::add(dir.path(), &a).expect("known"));
        assert!(WithdrawnList::add(dir.path(), &Pseudonym([2; 32])).expect("added"));
        let list = WithdrawnList::load(dir.path()).expect("read");
        assert_eq!(list.len(), 2);
        assert!(list.contains(&a));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(WithdrawnList::path_in(dir.path()))
                .expect("file")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let path = WithdrawnList::path_in(dir.path());
        let mut text = std::fs::read_to_string(&path).expect("text");
        text.push_str("T-17\n");
        std::fs::write(&path, text).expect("write");
        let e = WithdrawnList::load(dir.path()).expect_err("bad line");
        assert!(e.to_string().contains(":5:"), "{e}");
    }
}
