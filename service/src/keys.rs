//! The service's own keys, as files under `<data dir>/keys/`: the HPKE keys batches are sealed to (with
//! their lifecycle pending -> active -> retired) and the service pseudonymisation key of the second stage.
//! Secret files are created with mode 0600 and never printed.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use anyhow::Context;
use base64::Engine;
use kwm_schemas::api::{KeyState, PublicKeyInfo};
use kwm_schemas::envelope::{Base64Bytes, HpkeSecretKey, KeyId};
use kwm_schemas::Pseudonym;
use ring::hmac;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use zeroize::Zeroizing;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

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

fn read_b64_secret(path: &Path) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    let text = Zeroizing::new(
        fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
    );
    let bytes = B64
        .decode(text.trim())
        .with_context(|| format!("{} is not base64", path.display()))?;
    Ok(Zeroizing::new(bytes))
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
    pub fn load_or_create(keys_dir: &Path) -> anyhow::Result<(Self, bool)> {
        let path = keys_dir.join(Self::FILE);
        if path.exists() {
            let b = read_b64_secret(&path)?;
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
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b[..])
            .map_err(|_| anyhow::anyhow!("the OS random generator failed"))?;
        write_secret_file(&path, B64.encode(&b[..]).as_bytes())?;
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
}

impl Keyring {
    /// Loads the keyring, creating a first active key if there is none. Returns whether it created one.
    pub fn load_or_create(keys_dir: &Path) -> anyhow::Result<(Self, bool)> {
        let dir = keys_dir.join("hpke");
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let ring = Self {
            dir,
            keys: RwLock::new(Vec::new()),
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
            let secret = HpkeSecretKey::from_bytes(&read_b64_secret(&path)?)
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
        write_secret_file(&key_path, B64.encode(&secret.to_bytes()[..]).as_bytes())?;
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
        let (_, created_pk) = PseudonymKey::load_or_create(dir.path()).expect("pseudonym key");
        assert!(created_pk);
        let (ring, created) = Keyring::load_or_create(dir.path()).expect("keyring");
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
        let (ring2, created) = Keyring::load_or_create(dir.path()).expect("keyring");
        assert!(!created);
        assert_eq!(ring2.active_key_id(), Some(id));
    }

    #[test]
    fn rotation_retires_the_old_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ring, _) = Keyring::load_or_create(dir.path()).expect("keyring");
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

    #[test]
    fn missing_pseudonym_key_with_existing_hpke_keys_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        Keyring::load_or_create(dir.path()).expect("keyring");
        let err = PseudonymKey::load_or_create(dir.path()).expect_err("must refuse");
        assert!(err.to_string().contains("restore it from backup"), "{err}");
    }
}
