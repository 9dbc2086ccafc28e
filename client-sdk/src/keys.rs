//! The provider's key material on disk: the Ed25519 signing key pair and the trajectory key (`kwm keygen`),
//! and the region's pseudonymisation key (`kwm keygen --regional`). Secret files are written with mode 0600
//! and loading warns when they are readable by others. Each text key file states its kind on its first
//! line (`kind: regional-key`), so that a key passed where another is expected is refused by name; files
//! of older versions without that line are still read, with a warning.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};
use zeroize::Zeroizing;

use crate::secret::SecretKey32;

/// File name of the provider's Ed25519 private key (PKCS#8 DER) inside the keys directory.
pub const SIGNING_KEY_FILE: &str = "signing.key";
/// File name of the provider's Ed25519 public key (base64 of the raw 32 bytes, one line): the file the
/// custodian registers with `kwm-service admin provider add --signing-key`.
pub const SIGNING_PUB_FILE: &str = "signing.pub";
/// File name of the provider's trajectory pseudonymisation key (base64 of 32 bytes).
pub const TRAJECTORY_KEY_FILE: &str = "trajectory.key";

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The label of the regional key's check value: HMAC-SHA256(regional key, this label). It names the key
/// without revealing it, so the service can tell a batch pseudonymised under another regional key.
pub const REGIONAL_KEY_CHECK_LABEL: &[u8] = b"kwm regional key check value v1";

/// What a key file holds, as its first line states (`kind: LABEL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// The region's pseudonymisation key: one per region, the same file at every provider.
    Regional,
    /// A provider's own trajectory key (`trajectory.key`).
    Trajectory,
    /// A provider's public signing key (`signing.pub`).
    SigningPublic,
    /// A provider's private signing key (`signing.key`, PKCS#8 DER: binary, so without a kind line).
    Signing,
}

impl KeyKind {
    const ALL: [KeyKind; 4] = [
        KeyKind::Regional,
        KeyKind::Trajectory,
        KeyKind::SigningPublic,
        KeyKind::Signing,
    ];

    /// The label on the file's first line.
    pub const fn label(self) -> &'static str {
        match self {
            KeyKind::Regional => "regional-key",
            KeyKind::Trajectory => "trajectory-key",
            KeyKind::SigningPublic => "signing-public-key",
            KeyKind::Signing => "signing-key",
        }
    }

    /// What the kind is, for messages.
    pub const fn describe(self) -> &'static str {
        match self {
            KeyKind::Regional => {
                "the region's pseudonymisation key (`kwm keygen --regional`, made once by the region \
                 and the same file at every provider)"
            }
            KeyKind::Trajectory => "a provider's own trajectory key (trajectory.key of `kwm keygen`)",
            KeyKind::SigningPublic => "a provider's public signing key (signing.pub of `kwm keygen`)",
            KeyKind::Signing => "a provider's private signing key (signing.key of `kwm keygen`)",
        }
    }

    /// What to pass where this kind is expected.
    pub const fn instead(self) -> &'static str {
        match self {
            KeyKind::Regional => {
                "pass the region's key file with --regional-key (or regional_key in kwm.toml); \
                 if you do not have it, get it from the regional team: never make one yourself"
            }
            KeyKind::Trajectory | KeyKind::Signing | KeyKind::SigningPublic => {
                "pass the directory that `kwm keygen --out DIR` wrote (signing.key, signing.pub, \
                 trajectory.key) with --keys"
            }
        }
    }

    fn from_label(label: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.label() == label)
    }

    fn line(self) -> String {
        format!("kind: {}\n", self.label())
    }
}

/// Why key material could not be written or read. Never contains key bytes.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path} already exists; pass --force to overwrite it (the old key is lost for good)")]
    Exists { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Format { path: PathBuf, reason: String },
    #[error(
        "{path} is a {} ({}), but a {} is needed here ({}); {}",
        found.label(), found.describe(), expected.label(), expected.describe(), expected.instead()
    )]
    WrongKind {
        path: PathBuf,
        found: KeyKind,
        expected: KeyKind,
    },
    #[error("the system random number generator failed")]
    Rng,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            KeyError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "not found (create keys with `kwm keygen`)",
                ),
            }
        } else {
            KeyError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    }
}

/// The provider's keys: the Ed25519 key pair that signs batches and the HMAC key of trajectory
/// pseudonyms. `Debug` shows only the public key.
pub struct ProviderKeys {
    signing: Ed25519KeyPair,
    pkcs8: Zeroizing<Vec<u8>>,
    trajectory: SecretKey32,
    warnings: Vec<String>,
}

impl fmt::Debug for ProviderKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderKeys")
            .field("signing_public_key", &self.signing_public_key_base64())
            .field("trajectory", &self.trajectory)
            .finish_non_exhaustive()
    }
}

impl ProviderKeys {
    /// A fresh signing key pair and trajectory key from the system CSPRNG.
    pub fn generate() -> Result<Self, KeyError> {
        let pkcs8 =
            Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| KeyError::Rng)?;
        let pkcs8 = Zeroizing::new(pkcs8.as_ref().to_vec());
        let signing = Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(|_| KeyError::Rng)?;
        let trajectory = SecretKey32::generate().map_err(|_| KeyError::Rng)?;
        Ok(Self {
            signing,
            pkcs8,
            trajectory,
            warnings: Vec::new(),
        })
    }

    /// Keys from their parts: a PKCS#8 Ed25519 private key (DER) and the 32-byte trajectory key.
    pub fn from_parts(pkcs8_der: &[u8], trajectory: SecretKey32) -> Result<Self, KeyError> {
        let signing = parse_pkcs8(pkcs8_der).map_err(|reason| KeyError::Format {
            path: PathBuf::from("<signing key>"),
            reason,
        })?;
        Ok(Self {
            signing,
            pkcs8: Zeroizing::new(pkcs8_der.to_vec()),
            trajectory,
            warnings: Vec::new(),
        })
    }

    /// The key pair that signs batches.
    pub fn signer(&self) -> &Ed25519KeyPair {
        &self.signing
    }

    /// The raw 32-byte Ed25519 public key.
    pub fn signing_public_key(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.signing.public_key().as_ref());
        out
    }

    /// The public key as written to `signing.pub` (without the newline).
    pub fn signing_public_key_base64(&self) -> String {
        B64.encode(self.signing.public_key().as_ref())
    }

    /// The HMAC key of trajectory pseudonyms.
    pub fn trajectory_key(&self) -> &SecretKey32 {
        &self.trajectory
    }

    /// Warnings from [`ProviderKeys::load`], e.g. files readable by others.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Writes `signing.key` (0600), `signing.pub` and `trajectory.key` (0600) into `dir`, creating it
    /// (0700) if needed. Refuses to overwrite any existing file unless `force`; checks all three first
    /// so that it never leaves a half-replaced set.
    pub fn write_to(&self, dir: &Path, force: bool) -> Result<Vec<PathBuf>, KeyError> {
        create_private_dir(dir)?;
        let paths = [
            dir.join(SIGNING_KEY_FILE),
            dir.join(SIGNING_PUB_FILE),
            dir.join(TRAJECTORY_KEY_FILE),
        ];
        if !force {
            if let Some(p) = paths.iter().find(|p| p.exists()) {
                return Err(KeyError::Exists { path: p.clone() });
            }
        }
        write_file(&paths[0], &self.pkcs8, true, force)?;
        let public = format!(
            "{}{}\n",
            KeyKind::SigningPublic.line(),
            self.signing_public_key_base64()
        );
        write_file(&paths[1], public.as_bytes(), false, force)?;
        let traj = Zeroizing::new(format!(
            "{}{}\n",
            KeyKind::Trajectory.line(),
            B64.encode(self.trajectory.expose())
        ));
        write_file(&paths[2], traj.as_bytes(), true, force)?;
        Ok(paths.to_vec())
    }

    /// Loads the keys written by [`ProviderKeys::write_to`]. A `signing.pub` next to the key must belong
    /// to it. Secret files readable by group or others give a warning (see [`ProviderKeys::warnings`]).
    pub fn load(dir: &Path) -> Result<Self, KeyError> {
        // A key file given where the directory is expected is named for what it is.
        if let Ok(text) = fs::read_to_string(dir) {
            split_kind(dir, &text, KeyKind::Trajectory)?;
        }
        if !dir.is_dir() {
            return Err(KeyError::Io {
                path: dir.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "not a directory (create the keys with `kwm keygen --out DIR`)",
                ),
            });
        }
        let mut warnings = Vec::new();
        let key_path = dir.join(SIGNING_KEY_FILE);
        let der = read_secret_file(&key_path, &mut warnings)?;
        let der = pem_or_der(&der).map_err(|reason| KeyError::Format {
            path: key_path.clone(),
            reason,
        })?;
        let signing = parse_pkcs8(&der).map_err(|reason| KeyError::Format {
            path: key_path.clone(),
            reason,
        })?;
        let pub_path = dir.join(SIGNING_PUB_FILE);
        if pub_path.exists() {
            let text = fs::read_to_string(&pub_path).map_err(io_err(&pub_path))?;
            let (_, body) = split_kind(&pub_path, &text, KeyKind::SigningPublic)?;
            let ok = B64
                .decode(body.trim())
                .map(|b| b == signing.public_key().as_ref())
                .unwrap_or(false);
            if !ok {
                return Err(KeyError::Format {
                    path: pub_path,
                    reason: format!(
                        "does not belong to {SIGNING_KEY_FILE} in the same directory; \
                         keep the pair together (or delete {SIGNING_PUB_FILE} to regenerate it from the key)"
                    ),
                });
            }
        }
        let traj_path = dir.join(TRAJECTORY_KEY_FILE);
        let trajectory = read_key32(&traj_path, KeyKind::Trajectory, &mut warnings)?;
        Ok(Self {
            signing,
            pkcs8: der,
            trajectory,
            warnings,
        })
    }
}

fn parse_pkcs8(der: &[u8]) -> Result<Ed25519KeyPair, String> {
    // `maybe_unchecked` also takes PKCS#8 v1 keys (as OpenSSL writes them), not only ring's v2.
    Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
        .map_err(|e| format!("not an Ed25519 private key in PKCS#8 form ({e})"))
}

/// Accepts DER as `kwm keygen` writes it, and PEM (`-----BEGIN PRIVATE KEY-----`) as OpenSSL does.
fn pem_or_der(bytes: &[u8]) -> Result<Zeroizing<Vec<u8>>, String> {
    let Some(text) = std::str::from_utf8(bytes)
        .ok()
        .filter(|t| t.trim_start().starts_with("-----BEGIN"))
    else {
        return Ok(Zeroizing::new(bytes.to_vec()));
    };
    let body: Zeroizing<String> = Zeroizing::new(
        text.lines()
            .filter(|l| !l.starts_with("-----"))
            .map(str::trim)
            .collect(),
    );
    B64.decode(body.as_bytes())
        .map(Zeroizing::new)
        .map_err(|_| "a PEM file whose body is not base64".to_string())
}

/// The region's pseudonymisation key: the HMAC key of client pseudonyms, shared by the region's providers
/// and never by the custodian.
#[derive(Debug, Clone)]
pub struct RegionalKey {
    key: SecretKey32,
    warnings: Vec<String>,
}

impl RegionalKey {
    pub fn generate() -> Result<Self, KeyError> {
        Ok(Self {
            key: SecretKey32::generate().map_err(|_| KeyError::Rng)?,
            warnings: Vec::new(),
        })
    }

    pub fn from_secret(key: SecretKey32) -> Self {
        Self {
            key,
            warnings: Vec::new(),
        }
    }

    pub fn secret(&self) -> &SecretKey32 {
        &self.key
    }

    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The key's check value: hex of HMAC-SHA256(key, [`REGIONAL_KEY_CHECK_LABEL`]). It tells two
    /// regional keys apart without revealing either.
    pub fn check_value(&self) -> String {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, self.key.expose());
        hex::encode(ring::hmac::sign(&key, REGIONAL_KEY_CHECK_LABEL).as_ref())
    }

    /// Writes the kind line and the key as one line of base64, mode 0600. Refuses to overwrite unless `force`.
    pub fn write_to(&self, path: &Path, force: bool) -> Result<(), KeyError> {
        if !force && path.exists() {
            return Err(KeyError::Exists {
                path: path.to_path_buf(),
            });
        }
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            if !parent.exists() {
                create_private_dir(parent)?;
            }
        }
        let text = Zeroizing::new(format!(
            "{}{}\n",
            KeyKind::Regional.line(),
            B64.encode(self.key.expose())
        ));
        write_file(path, text.as_bytes(), true, force)
    }

    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let mut warnings = Vec::new();
        let key = read_key32(path, KeyKind::Regional, &mut warnings)?;
        Ok(Self { key, warnings })
    }
}

fn create_private_dir(dir: &Path) -> Result<(), KeyError> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(io_err(dir))
}

/// Writes a file; secret files get mode 0600 from the moment they exist. With `force` an existing file is
/// removed first, so that its old (possibly wider) mode does not carry over.
fn write_file(path: &Path, bytes: &[u8], secret: bool, force: bool) -> Result<(), KeyError> {
    if force && path.exists() {
        fs::remove_file(path).map_err(io_err(path))?;
    }
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if secret { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut f = opts.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            KeyError::Exists {
                path: path.to_path_buf(),
            }
        } else {
            io_err(path)(e)
        }
    })?;
    f.write_all(bytes).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

/// Reads a secret file and warns when group or others can read it.
fn read_secret_file(
    path: &Path,
    warnings: &mut Vec<String>,
) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let meta = fs::metadata(path).map_err(io_err(path))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            warnings.push(format!(
                "{} is readable by other users (mode {mode:04o}); run: chmod 600 {}",
                path.display(),
                path.display()
            ));
        }
    }
    #[cfg(not(unix))]
    let _ = (&meta, &warnings);
    fs::read(path).map(Zeroizing::new).map_err(io_err(path))
}

/// Splits off the `kind:` line of a key file and checks it names `expected`. Returns whether the line was
/// there (files of older versions lack it) and the rest of the text.
fn split_kind<'t>(
    path: &Path,
    text: &'t str,
    expected: KeyKind,
) -> Result<(bool, &'t str), KeyError> {
    let trimmed = text.trim_start();
    let Some(rest) = trimmed.strip_prefix("kind:") else {
        return Ok((false, text));
    };
    let (label, body) = rest.split_once('\n').unwrap_or((rest, ""));
    let label = label.trim();
    match KeyKind::from_label(label) {
        Some(k) if k == expected => Ok((true, body)),
        Some(found) => Err(KeyError::WrongKind {
            path: path.to_path_buf(),
            found,
            expected,
        }),
        None => Err(KeyError::Format {
            path: path.to_path_buf(),
            reason: format!(
                "the first line names an unknown kind of key {label:?}; a {} is needed here ({}); {}",
                expected.label(),
                expected.describe(),
                expected.instead()
            ),
        }),
    }
}

/// Reads a key file of `expected` kind holding 32 bytes in base64 (after its `kind:` line; surrounding
/// white space is ignored). A file of another kind is refused by name; one without a kind line (written
/// by an older `kwm`) is read with a warning, unless its file name says it is another kind.
fn read_key32(
    path: &Path,
    expected: KeyKind,
    warnings: &mut Vec<String>,
) -> Result<SecretKey32, KeyError> {
    let bytes = read_secret_file(path, warnings)?;
    let format_err = || {
        KeyError::Format {
        path: path.to_path_buf(),
        reason: format!(
            "must hold a `kind: {}` line and 32 bytes in base64 on one line, as `kwm keygen` writes it",
            expected.label()
        ),
    }
    };
    let wrong = |found: KeyKind| KeyError::WrongKind {
        path: path.to_path_buf(),
        found,
        expected,
    };
    let Ok(text) = std::str::from_utf8(&bytes) else {
        // Binary: PKCS#8 DER starts with a SEQUENCE tag.
        return Err(if bytes.first() == Some(&0x30) {
            wrong(KeyKind::Signing)
        } else {
            format_err()
        });
    };
    if text.contains("PRIVATE KEY") {
        return Err(wrong(KeyKind::Signing));
    }
    let (stated, body) = split_kind(path, text, expected)?;
    if !stated {
        // An older file: its name is the only hint of what it is.
        let named = match path.file_name().and_then(|n| n.to_str()) {
            Some(TRAJECTORY_KEY_FILE) => Some(KeyKind::Trajectory),
            Some(SIGNING_PUB_FILE) => Some(KeyKind::SigningPublic),
            Some(SIGNING_KEY_FILE) => Some(KeyKind::Signing),
            _ => None,
        };
        if let Some(found) = named.filter(|k| *k != expected) {
            return Err(wrong(found));
        }
        warnings.push(format!(
            "{} does not state its kind (written by an older kwm); it is read as a {}. Make sure it is \
             {}; `kwm keygen` now writes a first line `kind: {}`",
            path.display(),
            expected.label(),
            expected.describe(),
            expected.label()
        ));
    }
    let decoded = Zeroizing::new(B64.decode(body.trim()).map_err(|_| format_err())?);
    let mut arr: [u8; 32] = decoded.as_slice().try_into().map_err(|_| format_err())?;
    Ok(SecretKey32::from_bytes(&mut arr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    fn mode(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(p).expect("exists").permissions().mode() & 0o777
    }

    #[test]
    fn provider_keys_roundtrip_with_modes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("keys");
        let keys = ProviderKeys::generate().expect("keygen");
        keys.write_to(&out, false).expect("write");
        #[cfg(unix)]
        {
            assert_eq!(mode(&out.join(SIGNING_KEY_FILE)), 0o600);
            assert_eq!(mode(&out.join(TRAJECTORY_KEY_FILE)), 0o600);
            assert_eq!(mode(&out), 0o700);
        }
        let pub_text = fs::read_to_string(out.join(SIGNING_PUB_FILE)).expect("pub");
        let lines: Vec<&str> = pub_text.lines().collect();
        assert_eq!(lines, ["kind: signing-public-key", lines[1]]);
        assert_eq!(B64.decode(lines[1]).expect("b64").len(), 32);

        let loaded = ProviderKeys::load(&out).expect("load");
        assert!(loaded.warnings().is_empty(), "{:?}", loaded.warnings());
        assert_eq!(loaded.signing_public_key(), keys.signing_public_key());
        assert_eq!(
            loaded.trajectory_key().expose(),
            keys.trajectory_key().expose()
        );
        assert!(!format!("{loaded:?}").contains(&B64.encode(keys.trajectory_key().expose())));
    }

    #[test]
    fn refuses_to_overwrite_without_force() {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys = ProviderKeys::generate().expect("keygen");
        keys.write_to(dir.path(), false).expect("write");
        let other = ProviderKeys::generate().expect("keygen");
        let err = other.write_to(dir.path(), false).expect_err("must refuse");
        assert!(matches!(err, KeyError::Exists { .. }), "{err}");
        assert!(err.to_string().contains("--force"));
        // Nothing was replaced.
        let loaded = ProviderKeys::load(dir.path()).expect("load");
        assert_eq!(loaded.signing_public_key(), keys.signing_public_key());
        other.write_to(dir.path(), true).expect("force");
        let loaded = ProviderKeys::load(dir.path()).expect("load");
        assert_eq!(loaded.signing_public_key(), other.signing_public_key());
    }

    #[test]
    fn regional_key_roundtrip_and_refusal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("regional.key");
        let k = RegionalKey::generate().expect("keygen");
        k.write_to(&path, false).expect("write");
        #[cfg(unix)]
        assert_eq!(mode(&path), 0o600);
        assert!(matches!(
            RegionalKey::generate()
                .expect("keygen")
                .write_to(&path, false),
            Err(KeyError::Exists { .. })
        ));
        let loaded = RegionalKey::load(&path).expect("load");
        assert_eq!(loaded.secret().expose(), k.secret().expose());
    }

    #[cfg(unix)]
    #[test]
    fn loose_modes_warn() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("regional.key");
        RegionalKey::generate()
            .expect("keygen")
            .write_to(&path, false)
            .expect("write");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        let loaded = RegionalKey::load(&path).expect("load");
        assert_eq!(loaded.warnings().len(), 1);
        assert!(loaded.warnings()[0].contains("chmod 600"));
    }

    #[test]
    fn clear_errors_for_missing_and_malformed_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = ProviderKeys::load(&dir.path().join("nope")).expect_err("missing dir");
        assert!(err.to_string().contains("kwm keygen"), "{err}");
        let path = dir.path().join("regional.key");
        fs::write(&path, "not base64!\n").expect("write");
        let err = RegionalKey::load(&path).expect_err("malformed");
        assert!(err.to_string().contains("32 bytes in base64"), "{err}");
        fs::write(&path, format!("{}\n", B64.encode([1u8; 16]))).expect("write");
        assert!(RegionalKey::load(&path).is_err());
    }

    #[test]
    fn key_files_state_their_kind_and_the_wrong_kind_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys = ProviderKeys::generate().expect("keygen");
        keys.write_to(dir.path(), false).expect("write");
        let traj = dir.path().join(TRAJECTORY_KEY_FILE);
        let err = RegionalKey::load(&traj).expect_err("a trajectory key is not a regional key");
        assert!(
            matches!(
                err,
                KeyError::WrongKind {
                    found: KeyKind::Trajectory,
                    expected: KeyKind::Regional,
                    ..
                }
            ),
            "{err}"
        );
        let regional_path = dir.path().join("regional.key");
        let regional = RegionalKey::generate().expect("keygen");
        regional.write_to(&regional_path, false).expect("write");
        // A regional key copied over trajectory.key is refused too.
        fs::copy(&regional_path, &traj).expect("copy");
        let err =
            ProviderKeys::load(dir.path()).expect_err("a regional key is not a trajectory key");
        assert!(err.to_string().contains("is a regional-key"), "{err}");
        // An older file without the kind line still loads, with a warning.
        fs::write(
            &regional_path,
            format!("{}\n", B64.encode(regional.secret().expose())),
        )
        .expect("write");
        let loaded = RegionalKey::load(&regional_path).expect("old format");
        assert_eq!(loaded.secret().expose(), regional.secret().expose());
        assert!(
            loaded.warnings()[0].contains("older kwm"),
            "{:?}",
            loaded.warnings()
        );
    }

    #[test]
    fn the_check_value_tells_regional_keys_apart_without_the_key() {
        let a = RegionalKey::generate().expect("keygen");
        let b = RegionalKey::generate().expect("keygen");
        assert_eq!(a.check_value().len(), 64);
        assert_eq!(a.check_value(), a.clone().check_value());
        assert_ne!(a.check_value(), b.check_value());
        assert_ne!(a.check_value(), hex::encode(a.secret().expose()));
    }

    #[test]
    fn mismatched_public_key_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        ProviderKeys::generate()
            .expect("keygen")
            .write_to(dir.path(), false)
            .expect("write");
        let other = ProviderKeys::generate().expect("keygen");
        fs::write(
            dir.path().join(SIGNING_PUB_FILE),
            other.signing_public_key_base64(),
        )
        .expect("write");
        let err = ProviderKeys::load(dir.path()).expect_err("mismatch");
        assert!(err.to_string().contains("does not belong"), "{err}");
    }
}
