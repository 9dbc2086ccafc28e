//! The service's own keys, as files under `<data dir>/keys/`: the HPKE keys batches are sealed to (with
//! their lifecycle pending -> active -> retired) and the service pseudonymisation key of the second stage.
//! Secret files are created with mode 0600 and never printed. With a master key (`KWM_MASTER_KEY`) they
//! are also encrypted at rest with AES-256-GCM, bound to their file name.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::Context;
use base64::Engine;
use kwm_schemas::api::{KeyState, PublicKeyInfo};
use kwm_schemas::envelope::{Base64Bytes, HpkeSecretKey, KeyId};
use kwm_schemas::Pseudonym;
use ring::aead;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use zeroize::Zeroizing;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The environment variable that holds the master key: 32 bytes as 64 hex digits or base64.
pub const MASTER_KEY_VAR: &str = "KWM_MASTER_KEY";

/// First line of an encrypted key file. The version names the whole format: AES-256-GCM under the
/// master key, a random 96-bit nonce, and the header line and the file name as associated data.
const ENCRYPTED_HEADER: &str = "kwm-enc-v1";

/// The key that encrypts the service's key files at rest. It lives outside the data dir (in the
/// environment, from the operator's secret store), so a copy of the data dir alone opens nothing.
pub struct MasterKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl MasterKey {
    /// Parses 32 bytes written as 64 hex digits or as base64 (standard or URL-safe, padded or not).
    /// Errors never quote the text.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
        let t = text.trim();
        let decoded = if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(t).ok()
        } else {
            [B64, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
                .iter()
                .find_map(|e| e.decode(t).ok())
        };
        let bytes = Zeroizing::new(decoded.ok_or_else(|| {
            anyhow::anyhow!("the master key is neither 64 hex digits nor base64")
        })?);
        let mut key = Zeroizing::new([0u8; 32]);
        anyhow::ensure!(
            bytes.len() == key.len(),
            "the master key must be 32 bytes, not {} (make one with `openssl rand -base64 32`)",
            bytes.len()
        );
        key.copy_from_slice(&bytes);
        Ok(Self(key))
    }

    /// The master key from `KWM_MASTER_KEY`, if that is set and not empty.
    pub fn from_env() -> anyhow::Result<Option<Self>> {
        match std::env::var(MASTER_KEY_VAR) {
            Ok(text) => {
                let text = Zeroizing::new(text);
                if text.trim().is_empty() {
                    return Ok(None);
                }
                Self::parse(&text)
                    .map(Some)
                    .with_context(|| format!("{MASTER_KEY_VAR} is not valid"))
            }
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => {
                anyhow::bail!("{MASTER_KEY_VAR} is not valid: it is not text")
            }
        }
    }

    fn key(&self) -> anyhow::Result<aead::LessSafeKey> {
        let unbound = aead::UnboundKey::new(&aead::AES_256_GCM, &self.0[..])
            .map_err(|_| anyhow::anyhow!("the master key is not a valid AES-256 key"))?;
        Ok(aead::LessSafeKey::new(unbound))
    }

    /// The associated data: the format and the file name, so that a file renamed or copied over
    /// another key file does not open.
    fn aad(file_name: &str) -> aead::Aad<Vec<u8>> {
        aead::Aad::from(format!("{ENCRYPTED_HEADER}\n{file_name}").into_bytes())
    }

    /// The contents of an encrypted key file named `file_name` holding `secret`.
    fn encrypt(&self, file_name: &str, secret: &[u8]) -> anyhow::Result<Zeroizing<String>> {
        let mut nonce = [0u8; aead::NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| anyhow::anyhow!("the OS random generator failed"))?;
        let mut sealed = Zeroizing::new(Vec::with_capacity(
            nonce.len() + secret.len() + aead::AES_256_GCM.tag_len(),
        ));
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(secret);
        let tag = self
            .key()?
            .seal_in_place_separate_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                Self::aad(file_name),
                &mut sealed[aead::NONCE_LEN..],
            )
            .map_err(|_| anyhow::anyhow!("encrypting a key file failed"))?;
        sealed.extend_from_slice(tag.as_ref());
        Ok(Zeroizing::new(format!(
            "{ENCRYPTED_HEADER}\n{}\n",
            B64.encode(&sealed[..])
        )))
    }

    /// The secret of an encrypted key file's body (the text after the header line).
    fn decrypt(&self, file_name: &str, body: &str) -> anyhow::Result<Zeroizing<Vec<u8>>> {
        let mut sealed = Zeroizing::new(
            B64.decode(body.trim())
                .map_err(|_| anyhow::anyhow!("the encrypted body is not base64"))?,
        );
        anyhow::ensure!(
            sealed.len() >= aead::NONCE_LEN + aead::AES_256_GCM.tag_len(),
            "the encrypted body is too short"
        );
        let mut nonce = [0u8; aead::NONCE_LEN];
        nonce.copy_from_slice(&sealed[..aead::NONCE_LEN]);
        let plain = self
            .key()?
            .open_in_place(
                aead::Nonce::assume_unique_for_key(nonce),
                Self::aad(file_name),
                &mut sealed[aead::NONCE_LEN..],
            )
            .map_err(|_| {
                anyhow::anyhow!(
                    "it does not open with {MASTER_KEY_VAR}: the master key is not the one it was \
                     written with, or the file was altered or renamed"
                )
            })?;
        Ok(Zeroizing::new(plain.to_vec()))
    }
}

fn file_name_of(path: &Path) -> anyhow::Result<&str> {
    path.file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow::anyhow!("{} has no file name", path.display()))
}

/// Writes a new key file holding `secret`: encrypted when there is a master key, base64 otherwise;
/// mode 0600 either way.
fn write_key_file(path: &Path, secret: &[u8], master: Option<&MasterKey>) -> anyhow::Result<()> {
    let contents = match master {
        Some(m) => m.encrypt(file_name_of(path)?, secret)?,
        None => Zeroizing::new(B64.encode(secret)),
    };
    write_secret_file(path, contents.as_bytes())
}

/// Reads a key file written by [`write_key_file`]. A plaintext file read while there is a master key is
/// encrypted in place; an encrypted file without the master key is an error that says what to do.
fn read_key_file(path: &Path, master: Option<&MasterKey>) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    let text = Zeroizing::new(
        fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
    );
    let name = file_name_of(path)?;
    if let Some(body) = text.strip_prefix(ENCRYPTED_HEADER) {
        let body = body.strip_prefix('\n').ok_or_else(|| {
            anyhow::anyhow!("{} is not a {ENCRYPTED_HEADER} file", path.display())
        })?;
        let Some(master) = master else {
            anyhow::bail!(
                "{} is encrypted ({ENCRYPTED_HEADER}) but {MASTER_KEY_VAR} is not set: start the \
                 service with the master key the key files were written with (README, 'Key files at rest')",
                path.display()
            );
        };
        return master
            .decrypt(name, body)
            .with_context(|| format!("{} cannot be decrypted", path.display()));
    }
    if text.starts_with("kwm-enc-") {
        anyhow::bail!(
            "{} is encrypted in a format this version does not know; use a newer kwm-service",
            path.display()
        );
    }
    let secret = Zeroizing::new(
        B64.decode(text.trim())
            .with_context(|| format!("{} is not base64", path.display()))?,
    );
    if let Some(master) = master {
        replace_secret_file(path, master.encrypt(name, &secret)?.as_bytes())?;
        tracing::info!(file = %path.display(), "encrypted a plaintext key file in place with the master key");
    }
    Ok(secret)
}

/// Replaces a secret file atomically: a 0600 temporary file beside it, then a rename, so that a reader
/// (another replica on the same data dir) sees the old or the new contents, never a part.
fn replace_secret_file(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let mut suffix = [0u8; 8];
    SystemRandom::new()
        .fill(&mut suffix)
        .map_err(|_| anyhow::anyhow!("the OS random generator failed"))?;
    // Not ending in `.key`, so a keyring reading the directory meanwhile skips it.
    let tmp = path.with_file_name(format!(
        ".{}.{}.tmp",
        file_name_of(path)?,
        hex::encode(suffix)
    ));
    write_secret_file(&tmp, contents)?;
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("replacing {}", path.display()));
    }
    if let Some(dir) = path.parent() {
        // Best effort: make the rename itself durable.
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Writes a secret file that only the owner can read, refusing to replace an existing one.
pub fn write_secret_file(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(contents)?;
    f.sync_all()?;
    Ok(())
}

/// HMAC-SHA256 key of the second pseudonymisation stage: stored client pseudonym =
/// HMAC(service key, stage-1 pseudonym). A leaked regional key therefore does not open the stored data.
pub struct PseudonymKey(hmac::Key);

impl std::fmt::Debug for PseudonymKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PseudonymKey(<redacted>)")
    }
}

impl PseudonymKey {
    pub const FILE: &'static str = "pseudonym.key";

    pub fn from_bytes(b: &[u8]) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, b))
    }

    /// Loads the key, creating it on first start. Refuses to invent a new key when HPKE keys already
    /// exist: that would silently split every client into two pseudonyms.
    pub fn load_or_create(
        keys_dir: &Path,
        master: Option<&MasterKey>,
    ) -> anyhow::Result<(Self, bool)> {
        let path = keys_dir.join(Self::FILE);
        if path.exists() {
            let b = read_key_file(&path, master)?;
            anyhow::ensure!(b.len() == 32, "{} must hold 32 bytes", path.display());
            return Ok((Self::from_bytes(&b), false));
        }
        let hpke_dir = keys_dir.join("hpke");
        if hpke_dir.exists() && fs::read_dir(&hpke_dir)?.next().is_some() {
            anyhow::bail!(
                "{} is missing but HPKE keys exist: restore it from backup. A new pseudonymisation key \
                 would make every stored client unrecognisable (see README, 'Rotating keys').",
                path.display()
            );
        }
        let mut b = Zeroizing::new([0u8; 32]);
        SystemRandom::new()
            .fill(&mut b[..])
            .map_err(|_| anyhow::anyhow!("the OS random generator failed"))?;
        write_key_file(&path, &b[..], master)?;
        Ok((Self::from_bytes(&b[..]), true))
    }

    /// A 32-byte key for another purpose, derived from this one with a label, so that no further secret
    /// file is needed (e.g. the keyed order in which the release engine drops surplus trajectories).
    pub fn derive(&self, label: &[u8]) -> [u8; 32] {
        let tag = hmac::sign(&self.0, label);
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// The stored (stage-2) pseudonym of a stage-1 client pseudonym.
    pub fn pseudonymise(&self, stage1: &Pseudonym) -> Pseudonym {
        let tag = hmac::sign(&self.0, stage1.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        Pseudonym(out)
    }
}

/// Dates of one HPKE key, stored next to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyMeta {
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    activates_at: OffsetDateTime,
    #[serde(default, with = "time::serde::rfc3339::option")]
    retires_at: Option<OffsetDateTime>,
}

#[derive(Debug)]
struct KeyEntry {
    id: KeyId,
    secret: HpkeSecretKey,
    meta: KeyMeta,
}

impl KeyEntry {
    fn state_at(&self, now: OffsetDateTime) -> KeyState {
        match self.meta.retires_at {
            Some(r) if r <= now => KeyState::Retired,
            _ if self.meta.activates_at <= now => KeyState::Active,
            _ => KeyState::Pending,
        }
    }
}

/// What a batch's key id resolves to.
#[derive(Debug)]
pub enum KeyLookup<'a> {
    Usable(&'a HpkeSecretKey),
    Retired,
    Pending,
    Unknown,
}

/// The HPKE keys of the service, read from `<keys dir>/hpke/`.
#[derive(Debug)]
pub struct Keyring {
    dir: PathBuf,
    keys: RwLock<Vec<KeyEntry>>,
    /// Encrypts the key files at rest when set.
    master: Option<Arc<MasterKey>>,
}

impl Keyring {
    /// Loads the keyring, creating a first active key if there is none. Returns whether it created one.
    pub fn load_or_create(
        keys_dir: &Path,
        master: Option<Arc<MasterKey>>,
    ) -> anyhow::Result<(Self, bool)> {
        let dir = keys_dir.join("hpke");
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let ring = Self {
            dir,
            keys: RwLock::new(Vec::new()),
            master,
        };
        ring.reload()?;
        let created = if ring.is_empty() {
            let now = OffsetDateTime::now_utc();
            ring.add_key(now, None)?;
            ring.reload()?;
            true
        } else {
            false
        };
        Ok((ring, created))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn is_empty(&self) -> bool {
        self.keys.read().map(|k| k.is_empty()).unwrap_or(true)
    }

    /// Re-reads the key files, so that a rotation by `kwm-service admin keys rotate` is seen without a
    /// restart.
    pub fn reload(&self) -> anyhow::Result<()> {
        let mut entries = Vec::new();
        for item in fs::read_dir(&self.dir)? {
            let path = item?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("key") {
                continue;
            }
            let secret = HpkeSecretKey::from_bytes(&read_key_file(&path, self.master.as_deref())?)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            let id = secret.public_key().key_id();
            let meta_path = path.with_extension("toml");
            let meta: KeyMeta = toml::from_str(
                &fs::read_to_string(&meta_path)
                    .with_context(|| format!("reading {}", meta_path.display()))?,
            )
            .with_context(|| format!("parsing {}", meta_path.display()))?;
            entries.push(KeyEntry { id, secret, meta });
        }
        entries.sort_by_key(|e| e.meta.activates_at);
        *self
            .keys
            .write()
            .map_err(|_| anyhow::anyhow!("keyring lock poisoned"))? = entries;
        Ok(())
    }

    /// Writes a new key that becomes active at `activates_at`.
    fn add_key(
        &self,
        activates_at: OffsetDateTime,
        retires_at: Option<OffsetDateTime>,
    ) -> anyhow::Result<KeyId> {
        let secret = HpkeSecretKey::generate();
        let id = secret.public_key().key_id();
        let now = OffsetDateTime::now_utc();
        let meta = KeyMeta {
            created_at: now,
            activates_at,
            retires_at,
        };
        let key_path = self.dir.join(format!("{id}.key"));
        // Metadata first: a key file without metadata would fail the next load.
        fs::write(key_path.with_extension("toml"), toml::to_string(&meta)?)?;
        write_key_file(&key_path, &secret.to_bytes()[..], self.master.as_deref())?;
        Ok(id)
    }

    /// Rotation: a new key, pending until `now + activate_after`; the current active key(s) retire at
    /// `now + activate_after + retire_after`, so batches sealed just before the switch still open.
    pub fn rotate(
        &self,
        activate_after: time::Duration,
        retire_after: time::Duration,
    ) -> anyhow::Result<KeyId> {
        let now = OffsetDateTime::now_utc();
        let switch = now + activate_after;
        let retire = switch + retire_after;
        {
            let keys = self
                .keys
                .read()
                .map_err(|_| anyhow::anyhow!("keyring lock poisoned"))?;
            for k in keys.iter() {
                if k.state_at(now) != KeyState::Retired && k.meta.retires_at.is_none() {
                    let meta = KeyMeta {
                        retires_at: Some(retire),
                        ..k.meta.clone()
                    };
                    fs::write(
                        self.dir.join(format!("{}.toml", k.id)),
                        toml::to_string(&meta)?,
                    )?;
                }
            }
        }
        let id = self.add_key(switch, None)?;
        self.reload()?;
        Ok(id)
    }

    /// The key new batches should be sealed to: the most recently activated, unretired key.
    pub fn active_key_id(&self) -> Option<KeyId> {
        let now = OffsetDateTime::now_utc();
        let keys = self.keys.read().ok()?;
        keys.iter()
            .rev()
            .find(|k| k.state_at(now) == KeyState::Active)
            .map(|k| k.id.clone())
    }

    /// Resolves a batch's key id; re-reads the directory once if the id is unknown.
    pub fn with_key<R>(&self, id: &KeyId, f: impl FnOnce(KeyLookup<'_>) -> R) -> R {
        let known = self
            .keys
            .read()
            .map(|k| k.iter().any(|e| &e.id == id))
            .unwrap_or(false);
        if !known {
            if let Err(e) = self.reload() {
                tracing::warn!(error = %e, "could not re-read the keyring");
            }
        }
        let now = OffsetDateTime::now_utc();
        let Ok(keys) = self.keys.read() else {
            return f(KeyLookup::Unknown);
        };
        match keys.iter().find(|e| &e.id == id) {
            None => f(KeyLookup::Unknown),
            Some(e) => match e.state_at(now) {
                KeyState::Active => f(KeyLookup::Usable(&e.secret)),
                KeyState::Retired => f(KeyLookup::Retired),
                KeyState::Pending => f(KeyLookup::Pending),
            },
        }
    }

    /// The public half of every key with its state, as `GET /v1/keys` publishes it.
    pub fn public_infos(&self) -> Vec<PublicKeyInfo> {
        let now = OffsetDateTime::now_utc();
        let Ok(keys) = self.keys.read() else {
            return Vec::new();
        };
        keys.iter()
            .map(|k| {
                let state = k.state_at(now);
                PublicKeyInfo {
                    key_id: k.id.clone(),
                    state,
                    public_key: Base64Bytes(k.secret.public_key().to_bytes()),
                    created_at: k.meta.created_at,
                    activated_at: (state != KeyState::Pending).then_some(k.meta.activates_at),
                    retired_at: k.meta.retires_at.filter(|_| state == KeyState::Retired),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_start_creates_keys_with_private_modes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_, created_pk) =
            PseudonymKey::load_or_create(dir.path(), None).expect("pseudonym key");
        assert!(created_pk);
        let (ring, created) = Keyring::load_or_create(dir.path(), None).expect("keyring");
        assert!(created);
        let id = ring.active_key_id().expect("an active key");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for p in [
                dir.path().join("pseudonym.key"),
                ring.dir().join(format!("{id}.key")),
            ] {
                let mode = fs::metadata(&p).expect("exists").permissions().mode();
                assert_eq!(mode & 0o777, 0o600, "{}", p.display());
            }
        }
        // A second start loads the same keys.
        let (ring2, created) = Keyring::load_or_create(dir.path(), None).expect("keyring");
        assert!(!created);
        assert_eq!(ring2.active_key_id(), Some(id));
    }

    #[test]
    fn rotation_retires_the_old_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ring, _) = Keyring::load_or_create(dir.path(), None).expect("keyring");
        let old = ring.active_key_id().expect("active");
        let new = ring
            .rotate(time::Duration::ZERO, time::Duration::ZERO)
            .expect("rotate");
        assert_eq!(ring.active_key_id(), Some(new.clone()));
        assert!(ring.with_key(&old, |k| matches!(k, KeyLookup::Retired)));
        assert!(ring.with_key(&new, |k| matches!(k, KeyLookup::Usable(_))));
        let pending = ring
            .rotate(time::Duration::hours(1), time::Duration::hours(1))
            .expect("rotate");
        assert!(ring.with_key(&pending, |k| matches!(k, KeyLookup::Pending)));
        assert_eq!(ring.active_key_id(), Some(new));
    }

    fn master(byte: u8) -> MasterKey {
        MasterKey::parse(&hex::encode([byte; 32])).expect("master key")
    }

    fn stage1() -> Pseudonym {
        Pseudonym([7u8; 32])
    }

    #[test]
    fn master_keys_parse_from_hex_or_base64_and_never_show() {
        let raw = [0xa5u8; 32];
        let from_hex = MasterKey::parse(&hex::encode(raw)).expect("hex");
        let from_b64 = MasterKey::parse(&format!("  {}\n", B64.encode(raw))).expect("base64");
        assert_eq!(*from_hex.0, raw);
        assert_eq!(*from_b64.0, raw);
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        assert_eq!(*MasterKey::parse(&url).expect("base64url").0, raw);
        for bad in [
            "",
            "not a key",
            &hex::encode([1u8; 16]),
            &B64.encode([1u8; 33]),
        ] {
            let err = MasterKey::parse(bad).expect_err("refused");
            assert!(bad.is_empty() || !format!("{err:#}").contains(bad));
        }
        assert_eq!(format!("{from_hex:?}"), "MasterKey(<redacted>)");
    }

    #[test]
    fn encrypted_key_files_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = Arc::new(master(1));
        let (pk, created) = PseudonymKey::load_or_create(dir.path(), Some(&m)).expect("create");
        assert!(created);
        let (ring, _) = Keyring::load_or_create(dir.path(), Some(m.clone())).expect("keyring");
        let id = ring.active_key_id().expect("active");
        let rotated = ring
            .rotate(time::Duration::ZERO, time::Duration::hours(1))
            .expect("rotate");
        for p in [
            dir.path().join(PseudonymKey::FILE),
            ring.dir().join(format!("{id}.key")),
            ring.dir().join(format!("{rotated}.key")),
        ] {
            let text = fs::read_to_string(&p).expect("read");
            assert!(text.starts_with("kwm-enc-v1\n"), "{}", p.display());
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = fs::metadata(&p).expect("exists").permissions().mode();
                assert_eq!(mode & 0o777, 0o600, "{}", p.display());
            }
        }
        // A restart with the same master key reads the same keys.
        let (pk2, created) = PseudonymKey::load_or_create(dir.path(), Some(&m)).expect("load");
        assert!(!created);
        assert_eq!(pk2.pseudonymise(&stage1()), pk.pseudonymise(&stage1()));
        let (ring2, created) = Keyring::load_or_create(dir.path(), Some(m)).expect("keyring");
        assert!(!created);
        assert_eq!(ring2.public_infos(), ring.public_infos());
        assert!(ring2.with_key(&rotated, |k| matches!(k, KeyLookup::Usable(_))));
    }

    #[test]
    fn encrypted_key_files_need_the_right_master_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = Arc::new(master(1));
        PseudonymKey::load_or_create(dir.path(), Some(&m)).expect("create");
        Keyring::load_or_create(dir.path(), Some(m)).expect("keyring");

        let err = PseudonymKey::load_or_create(dir.path(), None).expect_err("no master key");
        assert!(
            format!("{err:#}").contains("KWM_MASTER_KEY is not set"),
            "{err:#}"
        );
        let err = Keyring::load_or_create(dir.path(), None).expect_err("no master key");
        assert!(
            format!("{err:#}").contains("KWM_MASTER_KEY is not set"),
            "{err:#}"
        );

        let wrong = Arc::new(master(2));
        let err = PseudonymKey::load_or_create(dir.path(), Some(&wrong)).expect_err("wrong key");
        assert!(format!("{err:#}").contains("does not open"), "{err:#}");
        let err = Keyring::load_or_create(dir.path(), Some(wrong)).expect_err("wrong key");
        assert!(format!("{err:#}").contains("does not open"), "{err:#}");
    }

    #[test]
    fn a_tampered_key_file_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = master(3);
        PseudonymKey::load_or_create(dir.path(), Some(&m)).expect("create");
        let path = dir.path().join(PseudonymKey::FILE);
        let text = fs::read_to_string(&path).expect("read");
        let body = text.strip_prefix("kwm-enc-v1\n").expect("header").trim();
        let mut sealed = B64.decode(body).expect("base64");
        // One bit in the ciphertext, then one in the nonce.
        for at in [aead::NONCE_LEN + 3, 0] {
            let mut bad = sealed.clone();
            bad[at] ^= 1;
            fs::write(&path, format!("kwm-enc-v1\n{}\n", B64.encode(&bad))).expect("write");
            let err = PseudonymKey::load_or_create(dir.path(), Some(&m)).expect_err("tampered");
            assert!(format!("{err:#}").contains("does not open"), "{err:#}");
        }
        sealed.truncate(10);
        fs::write(&path, format!("kwm-enc-v1\n{}\n", B64.encode(&sealed))).expect("write");
        assert!(PseudonymKey::load_or_create(dir.path(), Some(&m)).is_err());
        fs::write(&path, "kwm-enc-v9\nAAAA\n").expect("write");
        let err = PseudonymKey::load_or_create(dir.path(), Some(&m)).expect_err("unknown format");
        assert!(format!("{err:#}").contains("newer"), "{err:#}");
    }

    #[test]
    fn a_key_file_copied_under_another_name_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = Arc::new(master(4));
        PseudonymKey::load_or_create(dir.path(), Some(&m)).expect("create");
        let (ring, _) = Keyring::load_or_create(dir.path(), Some(m.clone())).expect("keyring");
        let id = ring.active_key_id().expect("active");
        // An HPKE secret key put in place of the pseudonymisation key (both are 32 bytes).
        fs::copy(
            ring.dir().join(format!("{id}.key")),
            dir.path().join(PseudonymKey::FILE),
        )
        .expect("copy");
        let err = PseudonymKey::load_or_create(dir.path(), Some(&m)).expect_err("swapped");
        assert!(format!("{err:#}").contains("renamed"), "{err:#}");
        // The same below the encryption: the associated data is the name.
        let sealed = m.encrypt("a.key", b"secret").expect("encrypt");
        let body = sealed.strip_prefix("kwm-enc-v1\n").expect("header");
        assert_eq!(&m.decrypt("a.key", body).expect("opens")[..], b"secret");
        assert!(m.decrypt("b.key", body).is_err());
        // Two encryptions of the same secret differ (random nonces).
        assert_ne!(*sealed, *m.encrypt("a.key", b"secret").expect("encrypt"));
    }

    #[test]
    fn plaintext_key_files_are_encrypted_in_place_when_a_master_key_appears() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (pk, _) = PseudonymKey::load_or_create(dir.path(), None).expect("plaintext");
        let (ring, _) = Keyring::load_or_create(dir.path(), None).expect("keyring");
        let id = ring.active_key_id().expect("active");
        let files = [
            dir.path().join(PseudonymKey::FILE),
            ring.dir().join(format!("{id}.key")),
        ];
        for p in &files {
            assert!(!fs::read_to_string(p).expect("read").starts_with("kwm-enc"));
        }
        let m = Arc::new(master(5));
        let (pk2, created) = PseudonymKey::load_or_create(dir.path(), Some(&m)).expect("load");
        assert!(!created);
        assert_eq!(pk2.pseudonymise(&stage1()), pk.pseudonymise(&stage1()));
        let (ring2, _) = Keyring::load_or_create(dir.path(), Some(m.clone())).expect("keyring");
        assert_eq!(ring2.active_key_id(), Some(id));
        for p in &files {
            assert!(fs::read_to_string(p)
                .expect("read")
                .starts_with("kwm-enc-v1\n"));
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = fs::metadata(p).expect("exists").permissions().mode();
                assert_eq!(mode & 0o777, 0o600, "{}", p.display());
            }
        }
        // No temporary file is left behind, and the plaintext is gone.
        let names: Vec<_> = fs::read_dir(ring.dir())
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert!(
            names.iter().all(|n| !n.to_string_lossy().contains(".tmp")),
            "{names:?}"
        );
        assert!(PseudonymKey::load_or_create(dir.path(), None).is_err());
    }

    #[test]
    fn missing_pseudonym_key_with_existing_hpke_keys_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        Keyring::load_or_create(dir.path(), None).expect("keyring");
        let err = PseudonymKey::load_or_create(dir.path(), None).expect_err("must refuse");
        assert!(err.to_string().contains("restore it from backup"), "{err}");
    }
}
