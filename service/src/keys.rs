//! The service's own keys: the second-stage pseudonymisation key and the HPKE keys batches are sealed
//! to (lifecycle pending -> active -> retired). They live in the database, each sealed with AES-256-GCM
//! under the master key (`KWM_MASTER_KEY`, or `<data dir>/master.key`), so every instance on one
//! database holds the same keys and a rotation reaches all of them at their next reload (timer or
//! SIGHUP). Beside them the database keeps keyed check values (never a key): an instance whose master
//! key or pseudonymisation key is not the database's refuses to start instead of splitting every
//! client into two pseudonyms. Key files of earlier versions (`<data dir>/keys/`) are imported on
//! first start, so existing deployments keep their pseudonyms.
//! A part of the service: it knows the store and the clock, no use case and no HTTP.

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

use crate::clock::SharedClock;
use crate::store::{KeyCheck, RecordFn, ServiceKeyKind, Store, StoredServiceKey};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The environment variable that holds the master key: 32 bytes as 64 hex digits or base64.
pub const MASTER_KEY_VAR: &str = "KWM_MASTER_KEY";

/// The master key's file in the data dir, used when `KWM_MASTER_KEY` is not set.
pub const MASTER_KEY_FILE: &str = "master.key";

/// First line of a key file of earlier versions encrypted under the master key.
const ENCRYPTED_HEADER: &str = "kwm-enc-v1";

/// Names the format of a sealed key in the database: AES-256-GCM under the master key, a random
/// 96-bit nonce first, and this label with the key's kind and id as associated data (a sealed key
/// copied onto another row does not open).
const SEALED_FORMAT: &str = "kwm-service-key-v1";

const MASTER_CHECK_LABEL: &[u8] = b"kwm-service master key check v1";
const PSEUDONYM_CHECK_LABEL: &[u8] = b"kwm-service pseudonymisation key check v1";

/// The id of the pseudonymisation key's row.
const PSEUDONYM_ID: &str = "pseudonym";

/// How long a retired HPKE key stays in the database (listed as retired at `GET /v1/keys`, so that a
/// batch sealed to it is told so) before maintenance deletes it.
pub const RETIRED_KEY_RETENTION: time::Duration = time::Duration::days(30);

fn random<const N: usize>() -> anyhow::Result<Zeroizing<[u8; N]>> {
    let mut b = Zeroizing::new([0u8; N]);
    SystemRandom::new()
        .fill(&mut b[..])
        .map_err(|_| anyhow::anyhow!("the OS random generator failed"))?;
    Ok(b)
}

fn check_value(key: &[u8], label: &[u8]) -> [u8; 32] {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), label);
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

/// The key that seals the service's keys in the database. It is never stored there, so a copy of
/// the database alone opens nothing.
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

    /// A new random master key.
    pub fn generate() -> anyhow::Result<Self> {
        Ok(Self(random::<32>()?))
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

    /// The master key of `<data dir>/master.key`, if that file exists.
    pub fn from_file(data_dir: &Path) -> anyhow::Result<Option<Self>> {
        let path = data_dir.join(MASTER_KEY_FILE);
        match fs::read_to_string(&path) {
            Ok(text) => {
                let text = Zeroizing::new(text);
                Self::parse(&text)
                    .map(Some)
                    .with_context(|| format!("{} is not valid", path.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Writes this key to `<data dir>/master.key` (mode 0600; an existing file is never replaced).
    fn write_file(&self, data_dir: &Path) -> anyhow::Result<PathBuf> {
        let path = data_dir.join(MASTER_KEY_FILE);
        let text = Zeroizing::new(format!("{}\n", B64.encode(&self.0[..])));
        write_secret_file(&path, text.as_bytes())?;
        Ok(path)
    }

    /// The keyed check value the database keeps of its master key.
    pub fn check_value(&self) -> [u8; 32] {
        check_value(&self.0[..], MASTER_CHECK_LABEL)
    }

    fn key(&self) -> anyhow::Result<aead::LessSafeKey> {
        let unbound = aead::UnboundKey::new(&aead::AES_256_GCM, &self.0[..])
            .map_err(|_| anyhow::anyhow!("the master key is not a valid AES-256 key"))?;
        Ok(aead::LessSafeKey::new(unbound))
    }

    /// Nonce, ciphertext and tag of `secret` under `aad`.
    fn seal_with(&self, aad: Vec<u8>, secret: &[u8]) -> anyhow::Result<Vec<u8>> {
        let nonce = random::<{ aead::NONCE_LEN }>()?;
        let mut sealed =
            Vec::with_capacity(nonce.len() + secret.len() + aead::AES_256_GCM.tag_len());
        sealed.extend_from_slice(&nonce[..]);
        sealed.extend_from_slice(secret);
        let tag = self
            .key()?
            .seal_in_place_separate_tag(
                aead::Nonce::assume_unique_for_key(*nonce),
                aead::Aad::from(aad),
                &mut sealed[aead::NONCE_LEN..],
            )
            .map_err(|_| anyhow::anyhow!("sealing a key failed"))?;
        sealed.extend_from_slice(tag.as_ref());
        Ok(sealed)
    }

    /// The secret of [`MasterKey::seal_with`]'s output; `None` if it does not open under `aad`.
    fn open_with(&self, aad: Vec<u8>, sealed: &[u8]) -> anyhow::Result<Option<Zeroizing<Vec<u8>>>> {
        if sealed.len() < aead::NONCE_LEN + aead::AES_256_GCM.tag_len() {
            return Ok(None);
        }
        let mut buf = Zeroizing::new(sealed.to_vec());
        let mut nonce = [0u8; aead::NONCE_LEN];
        nonce.copy_from_slice(&buf[..aead::NONCE_LEN]);
        let key = self.key()?;
        Ok(key
            .open_in_place(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(aad),
                &mut buf[aead::NONCE_LEN..],
            )
            .ok()
            .map(|plain| Zeroizing::new(plain.to_vec())))
    }

    fn row_aad(kind: ServiceKeyKind, id: &str) -> Vec<u8> {
        format!("{SEALED_FORMAT}\n{}\n{id}", kind.as_str()).into_bytes()
    }

    /// A key sealed for its row in the database.
    fn seal_key(&self, kind: ServiceKeyKind, id: &str, secret: &[u8]) -> anyhow::Result<Vec<u8>> {
        self.seal_with(Self::row_aad(kind, id), secret)
    }

    /// The secret of a stored key.
    fn open_key(&self, key: &StoredServiceKey) -> anyhow::Result<Zeroizing<Vec<u8>>> {
        self.open_with(Self::row_aad(key.kind, &key.id), &key.sealed)?
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "service key {} in the database does not open with the master key: it was \
                     altered, or copied from another row",
                    key.id
                )
            })
    }

    /// The associated data of a key file of earlier versions: the format and the file name.
    fn file_aad(file_name: &str) -> Vec<u8> {
        format!("{ENCRYPTED_HEADER}\n{file_name}").into_bytes()
    }

    /// The contents of an encrypted key file of earlier versions (tests make such files to import).
    #[cfg(test)]
    fn encrypt_file(&self, file_name: &str, secret: &[u8]) -> anyhow::Result<String> {
        let sealed = self.seal_with(Self::file_aad(file_name), secret)?;
        Ok(format!("{ENCRYPTED_HEADER}\n{}\n", B64.encode(sealed)))
    }

    /// The secret of an encrypted key file's body (the text after the header line).
    fn decrypt_file(&self, file_name: &str, body: &str) -> anyhow::Result<Zeroizing<Vec<u8>>> {
        let sealed = Zeroizing::new(
            B64.decode(body.trim())
                .map_err(|_| anyhow::anyhow!("the encrypted body is not base64"))?,
        );
        self.open_with(Self::file_aad(file_name), &sealed)?
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "it does not open with {MASTER_KEY_VAR}: the master key is not the one it was \
                     written with, or the file was altered or renamed"
                )
            })
    }
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
pub struct PseudonymKey {
    key: hmac::Key,
    check: [u8; 32],
}

impl std::fmt::Debug for PseudonymKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PseudonymKey(<redacted>)")
    }
}

impl PseudonymKey {
    /// The key file of earlier versions, in `<data dir>/keys/`.
    pub const FILE: &'static str = "pseudonym.key";

    pub fn from_bytes(b: &[u8]) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, b),
            check: check_value(b, PSEUDONYM_CHECK_LABEL),
        }
    }

    /// The keyed check value the database keeps of its pseudonymisation key (not the key, and no
    /// pseudonym: an HMAC of a fixed label).
    pub fn check_value(&self) -> [u8; 32] {
        self.check
    }

    /// A 32-byte key for another purpose, derived from this one with a label, so that no further secret
    /// is needed (e.g. the keyed order in which the release engine drops surplus trajectories).
    pub fn derive(&self, label: &[u8]) -> [u8; 32] {
        let tag = hmac::sign(&self.key, label);
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// The stored (stage-2) pseudonym of a stage-1 client pseudonym.
    pub fn pseudonymise(&self, stage1: &Pseudonym) -> Pseudonym {
        let tag = hmac::sign(&self.key, stage1.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        Pseudonym(out)
    }
}

/// Dates of one HPKE key in the key files of earlier versions.
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

/// Reads a key file of earlier versions: base64, or encrypted under the master key.
fn read_key_file(path: &Path, master: Option<&MasterKey>) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    let text = Zeroizing::new(
        fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
    );
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow::anyhow!("{} has no file name", path.display()))?;
    if let Some(body) = text.strip_prefix(ENCRYPTED_HEADER) {
        let body = body.strip_prefix('\n').ok_or_else(|| {
            anyhow::anyhow!("{} is not a {ENCRYPTED_HEADER} file", path.display())
        })?;
        let Some(master) = master else {
            anyhow::bail!(
                "{} is encrypted ({ENCRYPTED_HEADER}) but {MASTER_KEY_VAR} is not set: start the \
                 service with the master key the key files were written with",
                path.display()
            );
        };
        return master
            .decrypt_file(name, body)
            .with_context(|| format!("{} cannot be decrypted", path.display()));
    }
    if text.starts_with("kwm-enc-") {
        anyhow::bail!(
            "{} is encrypted in a format this version does not know; use a newer kwm-service",
            path.display()
        );
    }
    Ok(Zeroizing::new(B64.decode(text.trim()).with_context(
        || format!("{} is not base64", path.display()),
    )?))
}

/// The key files of an earlier version in `<data dir>/keys/`, to be imported into the database.
struct FileKeys {
    pseudonym: Zeroizing<Vec<u8>>,
    hpke: Vec<(HpkeSecretKey, KeyMeta)>,
}

impl FileKeys {
    /// `None` when the directory holds no key files.
    fn read(keys_dir: &Path, master: Option<&MasterKey>) -> anyhow::Result<Option<Self>> {
        let pseudonym_path = keys_dir.join(PseudonymKey::FILE);
        let hpke_dir = keys_dir.join("hpke");
        let mut hpke = Vec::new();
        if hpke_dir.is_dir() {
            for item in fs::read_dir(&hpke_dir)? {
                let path = item?.path();
                if path.extension().and_then(|e| e.to_str()) != Some("key") {
                    continue;
                }
                let secret = HpkeSecretKey::from_bytes(&read_key_file(&path, master)?)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                let meta_path = path.with_extension("toml");
                let meta: KeyMeta = toml::from_str(
                    &fs::read_to_string(&meta_path)
                        .with_context(|| format!("reading {}", meta_path.display()))?,
                )
                .with_context(|| format!("parsing {}", meta_path.display()))?;
                hpke.push((secret, meta));
            }
        }
        if !pseudonym_path.exists() {
            if hpke.is_empty() {
                return Ok(None);
            }
            anyhow::bail!(
                "{} is missing but HPKE keys exist in {}: restore it from backup. A new \
                 pseudonymisation key would make every stored client unrecognisable.",
                pseudonym_path.display(),
                hpke_dir.display()
            );
        }
        let pseudonym = read_key_file(&pseudonym_path, master)?;
        anyhow::ensure!(
            pseudonym.len() == 32,
            "{} must hold 32 bytes",
            pseudonym_path.display()
        );
        Ok(Some(Self { pseudonym, hpke }))
    }
}

/// What opening the keys found or did, for the start-up message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeysReport {
    /// Where the master key came from: `KWM_MASTER_KEY` or the path of `master.key`.
    pub master_key_from: String,
    /// Set when the master key file was created now (back it up).
    pub created_master_key_file: Option<PathBuf>,
    /// Set when this start initialised the database's key set.
    pub initialised: Option<Initialised>,
    /// When the database's key set was initialised.
    pub initialised_at: OffsetDateTime,
}

/// How a key set was initialised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Initialised {
    /// New keys.
    Created,
    /// The key files of an earlier version, from this directory.
    Imported(PathBuf),
}

/// Whether a database without keys may get new ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenNew {
    /// Create them (`admin init`; `serve` and `demo` on SQLite).
    Create,
    /// Refuse, saying to run `kwm-service admin init`.
    Refuse,
}

/// The service's keys, opened.
#[derive(Debug)]
pub struct ServiceKeys {
    pub pseudonym_key: PseudonymKey,
    pub keyring: Keyring,
    pub report: KeysReport,
}

/// Opens the keys of the database `store` (shown as `database` in messages), with the master key of
/// `KWM_MASTER_KEY` (`env_master`, see [`MasterKey::from_env`]) or else `<data dir>/master.key`. A database without keys gets the key files of
/// `<data dir>/keys/` if there are any, else new keys when `when_new` allows it. Refuses, saying what
/// to do: a master key that is not the database's; key files in the data dir that are not the
/// database's keys; new keys for a database that already holds data.
pub async fn open(
    store: Arc<dyn Store>,
    data_dir: &Path,
    database: &str,
    when_new: WhenNew,
    env_master: Option<MasterKey>,
    clock: SharedClock,
) -> anyhow::Result<ServiceKeys> {
    let keys_dir = data_dir.join("keys");
    let files = FileKeys::read(&keys_dir, env_master.as_ref())?;
    if let Some(check) = store.get_key_check().await? {
        let master = env_master.map(|m| (m, MASTER_KEY_VAR.to_string()));
        return load(store, data_dir, database, master, files, check, None, clock).await;
    }
    let now = clock.now();
    let (pseudonym, hpke, how) = match files {
        Some(f) => {
            let hpke = f
                .hpke
                .into_iter()
                .map(|(secret, m)| (secret, m.created_at, m.activates_at, m.retires_at))
                .collect::<Vec<_>>();
            (
                Zeroizing::new(f.pseudonym.to_vec()),
                hpke,
                Initialised::Imported(keys_dir.clone()),
            )
        }
        None => {
            if when_new == WhenNew::Refuse {
                anyhow::bail!(
                    "database {database} was never initialised: it holds no service keys. If it is \
                     the service's database, run `kwm-service admin init` once with the same \
                     --data-dir and --database-url (README, 'Keys, replicas and the master key'); \
                     if not, pass the service's --data-dir or --database-url"
                );
            }
            let holds_data = store.count_trajectories(None).await? > 0
                || !store.list_providers().await?.is_empty();
            if holds_data {
                anyhow::bail!(
                    "database {database} holds providers or data but no service keys: new keys \
                     would split every stored client into two pseudonyms. Start once with the data \
                     dir whose keys/ holds this deployment's key files (pseudonym.key and hpke/), so \
                     that they are imported"
                );
            }
            let pseudonym = Zeroizing::new(random::<32>()?.to_vec());
            (
                pseudonym,
                vec![(HpkeSecretKey::generate(), now, now, None)],
                Initialised::Created,
            )
        }
    };
    let file_path = data_dir.join(MASTER_KEY_FILE);
    let (master, from, created_file) = match env_master {
        Some(m) => (m, MASTER_KEY_VAR.to_string(), None),
        None => match MasterKey::from_file(data_dir)? {
            Some(m) => (m, file_path.display().to_string(), None),
            None => {
                let m = MasterKey::generate()?;
                let path = m.write_file(data_dir)?;
                (m, path.display().to_string(), Some(path))
            }
        },
    };
    let pseudonym_key = PseudonymKey::from_bytes(&pseudonym);
    let mut rows = vec![StoredServiceKey {
        id: PSEUDONYM_ID.into(),
        kind: ServiceKeyKind::Pseudonym,
        sealed: master.seal_key(ServiceKeyKind::Pseudonym, PSEUDONYM_ID, &pseudonym)?,
        public_key: None,
        created_at: now,
        activates_at: now,
        retires_at: None,
    }];
    if !hpke.iter().any(|(_, _, a, r)| {
        *a <= now && r.is_none_or(|r| r > now) // an active key among the imported ones
    }) {
        rows.push(hpke_row(
            &master,
            &HpkeSecretKey::generate(),
            now,
            now,
            None,
        )?);
    }
    for (secret, created_at, activates_at, retires_at) in &hpke {
        rows.push(hpke_row(
            &master,
            secret,
            *created_at,
            *activates_at,
            *retires_at,
        )?);
    }
    let check = KeyCheck {
        master_check: master.check_value(),
        pseudonym_check: pseudonym_key.check_value(),
        created_at: now,
    };
    let stored = store.put_key_set(&check, &rows).await?;
    if !stored {
        // Another instance initialised the database first: its keys are the keys.
        let check = store.get_key_check().await?.ok_or_else(|| {
            anyhow::anyhow!("database {database} lost its key set while it was initialised")
        })?;
        // The master key file made here goes only when it opens nothing: an instance on the same
        // data dir may have read it and sealed the winning key set under it (removing it then would
        // leave the database's keys without their master key at the next start).
        if let Some(path) = &created_file {
            if check.master_check != master.check_value() {
                let _ = fs::remove_file(path);
            }
        }
        let files = FileKeys::read(&keys_dir, Some(&master))?;
        return load(
            store,
            data_dir,
            database,
            Some((master, from)),
            files,
            check,
            None,
            clock,
        )
        .await;
    }
    match &how {
        Initialised::Created => tracing::info!("initialised the service keys in the database"),
        Initialised::Imported(dir) => tracing::info!(
            dir = %dir.display(),
            "imported the key files into the database; keep them as a backup or remove them"
        ),
    }
    let check = store
        .get_key_check()
        .await?
        .ok_or_else(|| anyhow::anyhow!("database {database} lost its key set"))?;
    let mut keys = load(
        store,
        data_dir,
        database,
        Some((master, from)),
        None,
        check,
        created_file,
        clock,
    )
    .await?;
    keys.report.initialised = Some(how);
    Ok(keys)
}

fn hpke_row(
    master: &MasterKey,
    secret: &HpkeSecretKey,
    created_at: OffsetDateTime,
    activates_at: OffsetDateTime,
    retires_at: Option<OffsetDateTime>,
) -> anyhow::Result<StoredServiceKey> {
    let public = secret.public_key();
    let id = public.key_id().to_string();
    Ok(StoredServiceKey {
        sealed: master.seal_key(ServiceKeyKind::Hpke, &id, &secret.to_bytes())?,
        id,
        kind: ServiceKeyKind::Hpke,
        public_key: Some(public.to_bytes()),
        created_at,
        activates_at,
        retires_at,
    })
}

/// Opens the keys of an initialised database and checks them against its check values and against
/// any key files at hand.
#[allow(clippy::too_many_arguments)] // one caller, `open`, with what it found
async fn load(
    store: Arc<dyn Store>,
    data_dir: &Path,
    database: &str,
    master: Option<(MasterKey, String)>,
    files: Option<FileKeys>,
    check: KeyCheck,
    created_master_key_file: Option<PathBuf>,
    clock: SharedClock,
) -> anyhow::Result<ServiceKeys> {
    let file_path = data_dir.join(MASTER_KEY_FILE);
    let (master, master_key_from) = match master {
        Some(m) => m,
        None => match MasterKey::from_file(data_dir)? {
            Some(m) => (m, file_path.display().to_string()),
            None => anyhow::bail!(
                "the service keys in database {database} are sealed under a master key, and none is \
                 at hand: set {MASTER_KEY_VAR} to this deployment's master key, or put its \
                 {MASTER_KEY_FILE} into {} (README, 'Keys, replicas and the master key'). A new \
                 master key would not open them.",
                data_dir.display()
            ),
        },
    };
    if master.check_value() != check.master_check {
        anyhow::bail!(
            "the master key from {master_key_from} is not the one the service keys in database \
             {database} were sealed with (its check value differs): start with this deployment's \
             master key ({MASTER_KEY_VAR} or {MASTER_KEY_FILE} in the data dir), or pass the \
             database this master key belongs to"
        );
    }
    let rows = store.list_service_keys().await?;
    let row = rows
        .iter()
        .find(|k| k.kind == ServiceKeyKind::Pseudonym)
        .ok_or_else(|| {
            anyhow::anyhow!("database {database} has key check values but no pseudonymisation key")
        })?;
    let pseudonym_key = PseudonymKey::from_bytes(&master.open_key(row)?);
    if pseudonym_key.check_value() != check.pseudonym_check {
        anyhow::bail!(
            "the pseudonymisation key in database {database} does not match its check value: the \
             key table was altered; restore it from backup"
        );
    }
    if let Some(f) = files {
        if PseudonymKey::from_bytes(&f.pseudonym).check_value() != check.pseudonym_check {
            anyhow::bail!(
                "{} is not the pseudonymisation key of database {database} (its check value \
                 differs): this data dir belongs to another deployment, and serving with it would \
                 give every client a second pseudonym. Use the data dir of this database's \
                 deployment, or pass the database these key files belong to; if the files are \
                 stale, move {} away (the database holds its own keys)",
                data_dir.join("keys").join(PseudonymKey::FILE).display(),
                data_dir.join("keys").display()
            );
        }
    }
    let keyring = Keyring {
        store,
        master: Arc::new(master),
        keys: RwLock::new(Vec::new()),
        clock,
    };
    keyring.reload().await?;
    Ok(ServiceKeys {
        pseudonym_key,
        keyring,
        report: KeysReport {
            master_key_from,
            created_master_key_file,
            initialised: None,
            initialised_at: check.created_at,
        },
    })
}

#[derive(Debug)]
struct KeyEntry {
    id: KeyId,
    public_key: Vec<u8>,
    /// Opened while the key is not retired; dropped (zeroed) once it is.
    secret: Option<HpkeSecretKey>,
    created_at: OffsetDateTime,
    activates_at: OffsetDateTime,
    retires_at: Option<OffsetDateTime>,
}

impl KeyEntry {
    fn state_at(&self, now: OffsetDateTime) -> KeyState {
        match self.retires_at {
            Some(r) if r <= now => KeyState::Retired,
            _ if self.activates_at <= now => KeyState::Active,
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

/// The HPKE keys of the service, as last read from the database. Requests read the copy in memory;
/// [`Keyring::reload`] (on a timer and on SIGHUP) brings it up to date.
#[derive(Debug)]
pub struct Keyring {
    store: Arc<dyn Store>,
    master: Arc<MasterKey>,
    keys: RwLock<Vec<KeyEntry>>,
    /// When keys activate and retire.
    clock: SharedClock,
}

impl Keyring {
    /// Reads the keys from the database again: opens the keys that are not retired (keeping the
    /// ones opened before), lists retired keys without their secrets. Returns whether the set or a
    /// date changed. On an error the keys in memory stay as they were.
    pub async fn reload(&self) -> anyhow::Result<bool> {
        let rows = self
            .store
            .list_service_keys()
            .await
            .context("reading the service keys")?;
        let now = self.clock.now();
        let mut entries = Vec::new();
        for row in rows.iter().filter(|r| r.kind == ServiceKeyKind::Hpke) {
            let id: KeyId = row
                .id
                .parse()
                .map_err(|_| anyhow::anyhow!("the database holds an invalid HPKE key id"))?;
            let public_key = row
                .public_key
                .clone()
                .ok_or_else(|| anyhow::anyhow!("HPKE key {id} has no public key"))?;
            let mut entry = KeyEntry {
                id,
                public_key,
                secret: None,
                created_at: row.created_at,
                activates_at: row.activates_at,
                retires_at: row.retires_at,
            };
            if entry.state_at(now) != KeyState::Retired {
                let secret = HpkeSecretKey::from_bytes(&self.master.open_key(row)?)
                    .map_err(|e| anyhow::anyhow!("HPKE key {}: {e}", row.id))?;
                anyhow::ensure!(
                    secret.public_key().to_bytes() == entry.public_key
                        && secret.public_key().key_id() == entry.id,
                    "HPKE key {} does not match its public key",
                    row.id
                );
                entry.secret = Some(secret);
            }
            entries.push(entry);
        }
        entries.sort_by_key(|e| e.activates_at);
        let mut keys = self
            .keys
            .write()
            .map_err(|_| anyhow::anyhow!("keyring lock poisoned"))?;
        let shape = |v: &[KeyEntry]| -> Vec<_> {
            v.iter()
                .map(|e| (e.id.clone(), e.activates_at, e.retires_at))
                .collect()
        };
        let changed = shape(&keys) != shape(&entries);
        *keys = entries;
        Ok(changed)
    }

    /// Rotation: a new key, pending until `now + activate_after`; every key without a retirement date
    /// retires at `now + activate_after + retire_after`, so batches sealed just before the switch
    /// still open. Written to the database in one transaction; other instances see it at their next
    /// reload.
    pub async fn rotate(
        &self,
        activate_after: time::Duration,
        retire_after: time::Duration,
        record: Option<&RecordFn<KeyId>>,
    ) -> anyhow::Result<KeyId> {
        let now = self.clock.now();
        let switch = now + activate_after;
        let retire = switch + retire_after;
        let secret = HpkeSecretKey::generate();
        let id = secret.public_key().key_id();
        let row = hpke_row(&self.master, &secret, now, switch, None)?;
        let entry = record.map(|r| r(&id));
        self.store
            .put_rotated_key_recorded(&row, retire, entry.as_ref())
            .await?;
        self.reload().await?;
        Ok(id)
    }

    /// The key new batches should be sealed to: the most recently activated, unretired key.
    pub fn active_key_id(&self) -> Option<KeyId> {
        let now = self.clock.now();
        let keys = self.keys.read().ok()?;
        keys.iter()
            .rev()
            .find(|k| k.state_at(now) == KeyState::Active)
            .map(|k| k.id.clone())
    }

    /// Resolves a batch's key id against the keys in memory (no database read on the request path:
    /// a key added elsewhere is known after the next reload).
    pub fn with_key<R>(&self, id: &KeyId, f: impl FnOnce(KeyLookup<'_>) -> R) -> R {
        let now = self.clock.now();
        let Ok(keys) = self.keys.read() else {
            return f(KeyLookup::Unknown);
        };
        match keys.iter().find(|e| &e.id == id) {
            None => f(KeyLookup::Unknown),
            Some(e) => match (e.state_at(now), &e.secret) {
                (KeyState::Active, Some(secret)) => f(KeyLookup::Usable(secret)),
                (KeyState::Active, None) | (KeyState::Retired, _) => f(KeyLookup::Retired),
                (KeyState::Pending, _) => f(KeyLookup::Pending),
            },
        }
    }

    /// The public half of every key with its state, as `GET /v1/keys` publishes it.
    pub fn public_infos(&self) -> Vec<PublicKeyInfo> {
        let now = self.clock.now();
        let Ok(keys) = self.keys.read() else {
            return Vec::new();
        };
        keys.iter()
            .map(|k| {
                let state = k.state_at(now);
                PublicKeyInfo {
                    key_id: k.id.clone(),
                    state,
                    public_key: Base64Bytes(k.public_key.clone()),
                    created_at: k.created_at,
                    activated_at: (state != KeyState::Pending).then_some(k.activates_at),
                    retired_at: k.retires_at.filter(|_| state == KeyState::Retired),
                }
            })
            .collect()
    }

    /// How many keys hold an opened secret (the retired ones do not).
    pub fn opened_secrets(&self) -> usize {
        self.keys
            .read()
            .map(|k| k.iter().filter(|e| e.secret.is_some()).count())
            .unwrap_or(0)
    }
}

/// Reloads the keyring every `every` (none: never on a timer) and on every SIGHUP, until dropped.
pub async fn keep_keys_fresh(
    keyring: Arc<Keyring>,
    every: Option<std::time::Duration>,
    mut hangup: Option<tokio::signal::unix::Signal>,
) {
    let mut tick = every.map(|e| {
        let mut t = tokio::time::interval_at(tokio::time::Instant::now() + e, e);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    loop {
        let why = tokio::select! {
            _ = async { tick.as_mut().expect("checked").tick().await }, if tick.is_some() => "timer",
            s = async { hangup.as_mut().expect("checked").recv().await }, if hangup.is_some() => {
                if s.is_none() {
                    hangup = None;
                    continue;
                }
                "SIGHUP"
            }
            else => return,
        };
        match keyring.reload().await {
            Ok(true) => tracing::info!(trigger = why, "reloaded the service keys: they changed"),
            Ok(false) => tracing::debug!(trigger = why, "reloaded the service keys"),
            Err(e) => {
                tracing::warn!(trigger = why, error = %format!("{e:#}"), "could not reload the service keys; serving the keys loaded before")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn sealed_keys_open_only_under_their_master_key_kind_and_id() {
        let m = master(1);
        let sealed = m
            .seal_key(ServiceKeyKind::Hpke, "0011223344556677", b"secret")
            .expect("sealed");
        let row = |kind, id: &str, sealed: Vec<u8>| StoredServiceKey {
            id: id.into(),
            kind,
            sealed,
            public_key: None,
            created_at: OffsetDateTime::UNIX_EPOCH,
            activates_at: OffsetDateTime::UNIX_EPOCH,
            retires_at: None,
        };
        let good = row(ServiceKeyKind::Hpke, "0011223344556677", sealed.clone());
        assert_eq!(&m.open_key(&good).expect("opens")[..], b"secret");
        assert!(master(2).open_key(&good).is_err(), "another master key");
        assert!(m
            .open_key(&row(
                ServiceKeyKind::Hpke,
                "7766554433221100",
                sealed.clone()
            ))
            .is_err());
        assert!(m
            .open_key(&row(ServiceKeyKind::Pseudonym, "pseudonym", sealed.clone()))
            .is_err());
        for at in [0, aead::NONCE_LEN + 2, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[at] ^= 1;
            let err = m
                .open_key(&row(ServiceKeyKind::Hpke, "0011223344556677", bad))
                .expect_err("tampered");
            assert!(format!("{err:#}").contains("does not open"), "{err:#}");
        }
        assert!(m
            .open_key(&row(ServiceKeyKind::Hpke, "0011223344556677", vec![1, 2]))
            .is_err());
        // Random nonces: two seals of one secret differ.
        assert_ne!(
            sealed,
            m.seal_key(ServiceKeyKind::Hpke, "0011223344556677", b"secret")
                .expect("sealed")
        );
    }

    #[test]
    fn check_values_name_the_key_without_showing_it() {
        let m = master(3);
        assert_eq!(m.check_value(), master(3).check_value());
        assert_ne!(m.check_value(), master(4).check_value());
        assert_ne!(&m.check_value()[..], &[3u8; 32][..]);
        let p = PseudonymKey::from_bytes(&[9u8; 32]);
        assert_eq!(
            p.check_value(),
            PseudonymKey::from_bytes(&[9u8; 32]).check_value()
        );
        assert_ne!(
            p.check_value(),
            PseudonymKey::from_bytes(&[8u8; 32]).check_value()
        );
        // Not a pseudonym of any input the key is used for, nor its derived order key.
        assert_ne!(p.check_value(), p.pseudonymise(&stage1()).0);
        assert_ne!(p.check_value(), p.derive(b"order"));
        assert_ne!(p.check_value(), m.check_value());
    }

    async fn sqlite_store(dir: &Path) -> Arc<dyn Store> {
        crate::store::connect(&format!("sqlite://{}", dir.join("kwm.sqlite3").display()))
            .await
            .expect("store")
    }

    #[tokio::test]
    async fn first_start_creates_keys_in_the_database_and_a_private_master_key_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = sqlite_store(dir.path()).await;
        let keys = open(
            store.clone(),
            dir.path(),
            "test",
            WhenNew::Create,
            None,
            crate::clock::system(),
        )
        .await
        .expect("created");
        assert_eq!(keys.report.initialised, Some(Initialised::Created));
        let file = dir.path().join(MASTER_KEY_FILE);
        assert_eq!(keys.report.created_master_key_file, Some(file.clone()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&file).expect("exists").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let id = keys.keyring.active_key_id().expect("an active key");
        // No key file in the data dir; the database holds sealed keys and check values only.
        assert!(!dir.path().join("keys").exists());
        let rows = store.list_service_keys().await.expect("rows");
        assert_eq!(rows.len(), 2);
        let master = MasterKey::from_file(dir.path())
            .expect("read")
            .expect("file");
        for r in &rows {
            assert!(master.open_key(r).is_ok());
        }
        // A second start loads the same keys.
        let again = open(
            store.clone(),
            dir.path(),
            "test",
            WhenNew::Refuse,
            None,
            crate::clock::system(),
        )
        .await
        .expect("loaded");
        assert_eq!(again.report.initialised, None);
        assert_eq!(again.report.created_master_key_file, None);
        assert_eq!(again.keyring.active_key_id(), Some(id));
        assert_eq!(
            again.pseudonym_key.pseudonymise(&stage1()),
            keys.pseudonym_key.pseudonymise(&stage1())
        );
    }

    /// Instances starting at once on one new data dir (a demo run twice, a service and an admin
    /// command): whichever stores the key set, every one that starts holds the same keys, and the
    /// master key file they were sealed under is still there for the next start.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn instances_starting_at_once_on_one_data_dir_keep_one_key_set_and_its_master_key() {
        for _ in 0..12 {
            let dir = tempfile::tempdir().expect("tempdir");
            let stores = [
                sqlite_store(dir.path()).await,
                sqlite_store(dir.path()).await,
                sqlite_store(dir.path()).await,
            ];
            let starts = stores.iter().map(|s| {
                let (s, d) = (s.clone(), dir.path().to_path_buf());
                tokio::spawn(async move {
                    open(s, &d, "test", WhenNew::Create, None, crate::clock::system()).await
                })
            });
            let opened: Vec<ServiceKeys> = futures::future::join_all(starts)
                .await
                .into_iter()
                .filter_map(|r| r.expect("joined").ok())
                .collect();
            assert!(!opened.is_empty(), "at least one instance starts");
            let later = open(
                stores[0].clone(),
                dir.path(),
                "test",
                WhenNew::Refuse,
                None,
                crate::clock::system(),
            )
            .await
            .expect("the next start opens the keys with the master key file");
            for k in &opened {
                assert_eq!(
                    k.pseudonym_key.pseudonymise(&stage1()),
                    later.pseudonym_key.pseudonymise(&stage1())
                );
            }
        }
    }

    #[tokio::test]
    async fn an_uninitialised_database_is_refused_unless_creation_is_allowed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = sqlite_store(dir.path()).await;
        let err = open(
            store.clone(),
            dir.path(),
            "test",
            WhenNew::Refuse,
            None,
            crate::clock::system(),
        )
        .await
        .expect_err("refused");
        assert!(format!("{err:#}").contains("admin init"), "{err:#}");
        assert!(store.get_key_check().await.expect("read").is_none());
        assert!(!dir.path().join(MASTER_KEY_FILE).exists());
    }

    #[tokio::test]
    async fn another_master_key_or_none_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = sqlite_store(dir.path()).await;
        open(
            store.clone(),
            dir.path(),
            "test",
            WhenNew::Create,
            None,
            crate::clock::system(),
        )
        .await
        .expect("created");
        let other = tempfile::tempdir().expect("tempdir");
        let err = open(
            store.clone(),
            other.path(),
            "test",
            WhenNew::Create,
            None,
            crate::clock::system(),
        )
        .await
        .expect_err("no master key at hand");
        assert!(format!("{err:#}").contains("none is at hand"), "{err:#}");
        assert!(!other.path().join(MASTER_KEY_FILE).exists());
        master(5).write_file(other.path()).expect("written");
        let err = open(
            store.clone(),
            other.path(),
            "test",
            WhenNew::Create,
            None,
            crate::clock::system(),
        )
        .await
        .expect_err("wrong master key");
        assert!(
            format!("{err:#}").contains("is not the one the service keys"),
            "{err:#}"
        );
        // The right master key under another data dir opens the same keys.
        fs::remove_file(other.path().join(MASTER_KEY_FILE)).expect("removed");
        fs::copy(
            dir.path().join(MASTER_KEY_FILE),
            other.path().join(MASTER_KEY_FILE),
        )
        .expect("copied");
        open(
            store,
            other.path(),
            "test",
            WhenNew::Refuse,
            None,
            crate::clock::system(),
        )
        .await
        .expect("opens");
    }

    /// Key files as an earlier version wrote them: `keys/pseudonym.key`, `keys/hpke/ID.key` and
    /// `ID.toml`, base64 or encrypted under a master key.
    fn write_key_files(dir: &Path, pseudonym: &[u8], master: Option<&MasterKey>) -> KeyId {
        let keys = dir.join("keys");
        let write = |path: &Path, secret: &[u8]| {
            let name = path.file_name().and_then(|n| n.to_str()).expect("name");
            let text = match master {
                Some(m) => m.encrypt_file(name, secret).expect("encrypted"),
                None => B64.encode(secret),
            };
            write_secret_file(path, text.as_bytes()).expect("written");
        };
        write(&keys.join(PseudonymKey::FILE), pseudonym);
        let secret = HpkeSecretKey::generate();
        let id = secret.public_key().key_id();
        let now = OffsetDateTime::now_utc();
        let meta = KeyMeta {
            created_at: now - time::Duration::days(3),
            activates_at: now - time::Duration::days(2),
            retires_at: None,
        };
        fs::create_dir_all(keys.join("hpke")).expect("dir");
        fs::write(
            keys.join("hpke").join(format!("{id}.toml")),
            toml::to_string(&meta).expect("toml"),
        )
        .expect("written");
        write(
            &keys.join("hpke").join(format!("{id}.key")),
            &secret.to_bytes(),
        );
        id
    }

    #[tokio::test]
    async fn key_files_of_an_earlier_version_are_imported_and_keep_the_pseudonyms() {
        for encrypted in [false, true] {
            let dir = tempfile::tempdir().expect("tempdir");
            let file_master = master(6);
            let id = write_key_files(dir.path(), &[42u8; 32], encrypted.then_some(&file_master));
            let store = sqlite_store(dir.path()).await;
            // Encrypted files need the master key they were written with: the environment's.
            let env_master = encrypted.then(|| master(6));
            let keys = open(
                store.clone(),
                dir.path(),
                "test",
                WhenNew::Refuse,
                env_master,
                crate::clock::system(),
            )
            .await
            .expect("imported even where new keys are refused");
            assert_eq!(
                keys.report.master_key_from,
                if encrypted {
                    MASTER_KEY_VAR.to_string()
                } else {
                    dir.path().join(MASTER_KEY_FILE).display().to_string()
                }
            );
            assert_eq!(
                keys.report.initialised,
                Some(Initialised::Imported(dir.path().join("keys")))
            );
            assert_eq!(
                keys.pseudonym_key.pseudonymise(&stage1()),
                PseudonymKey::from_bytes(&[42u8; 32]).pseudonymise(&stage1()),
                "the stored pseudonyms stay the same"
            );
            assert_eq!(keys.keyring.active_key_id(), Some(id.clone()));
            assert!(keys
                .keyring
                .with_key(&id, |k| matches!(k, KeyLookup::Usable(_))));
        }
    }

    #[tokio::test]
    async fn key_files_that_are_not_the_databases_keys_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = sqlite_store(dir.path()).await;
        open(
            store.clone(),
            dir.path(),
            "test",
            WhenNew::Create,
            None,
            crate::clock::system(),
        )
        .await
        .expect("created");
        write_key_files(dir.path(), &[1u8; 32], None);
        let err = open(
            store,
            dir.path(),
            "test",
            WhenNew::Refuse,
            None,
            crate::clock::system(),
        )
        .await
        .expect_err("another deployment's key files");
        let text = format!("{err:#}");
        assert!(
            text.contains("is not the pseudonymisation key of database test")
                && text.contains("another deployment"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn new_keys_for_a_database_that_holds_data_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = sqlite_store(dir.path()).await;
        store
            .put_provider(&crate::store::Provider {
                agb: "12345678".parse().expect("agb"),
                name: "p".into(),
                signing_public_key: vec![1; 32],
                created_at: OffsetDateTime::now_utc(),
            })
            .await
            .expect("registered");
        let err = open(
            store.clone(),
            dir.path(),
            "test",
            WhenNew::Create,
            None,
            crate::clock::system(),
        )
        .await
        .expect_err("refused");
        assert!(format!("{err:#}").contains("key files"), "{err:#}");
        assert!(store.get_key_check().await.expect("read").is_none());
    }

    #[tokio::test]
    async fn rotation_is_seen_by_another_keyring_after_its_reload_and_retired_secrets_are_dropped()
    {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = sqlite_store(dir.path()).await;
        let a = open(
            store.clone(),
            dir.path(),
            "test",
            WhenNew::Create,
            None,
            crate::clock::system(),
        )
        .await
        .expect("a");
        let b = open(
            sqlite_store(dir.path()).await,
            dir.path(),
            "test",
            WhenNew::Refuse,
            None,
            crate::clock::system(),
        )
        .await
        .expect("b");
        let old = a.keyring.active_key_id().expect("active");
        let new = a
            .keyring
            .rotate(time::Duration::ZERO, time::Duration::ZERO, None)
            .await
            .expect("rotated");
        assert_eq!(a.keyring.active_key_id(), Some(new.clone()));
        assert!(a
            .keyring
            .with_key(&old, |k| matches!(k, KeyLookup::Retired)));
        assert_eq!(
            a.keyring.opened_secrets(),
            1,
            "the retired secret is dropped"
        );
        // B serves its loaded keys until it reloads; no request reads the database.
        assert!(b
            .keyring
            .with_key(&new, |k| matches!(k, KeyLookup::Unknown)));
        assert!(b.keyring.reload().await.expect("reloaded"));
        assert_eq!(b.keyring.active_key_id(), Some(new.clone()));
        assert!(b
            .keyring
            .with_key(&new, |k| matches!(k, KeyLookup::Usable(_))));
        assert!(!b.keyring.reload().await.expect("reloaded"), "no change");
        let pending = a
            .keyring
            .rotate(time::Duration::hours(1), time::Duration::hours(1), None)
            .await
            .expect("rotate");
        assert!(a
            .keyring
            .with_key(&pending, |k| matches!(k, KeyLookup::Pending)));
        assert_eq!(a.keyring.active_key_id(), Some(new));
        // Retired long enough ago: deleted, and gone from the next reload.
        let gone = store
            .delete_retired_keys(OffsetDateTime::now_utc() + time::Duration::seconds(1))
            .await
            .expect("deleted");
        assert_eq!(gone, 1);
        a.keyring.reload().await.expect("reloaded");
        assert!(a
            .keyring
            .with_key(&old, |k| matches!(k, KeyLookup::Unknown)));
        assert_eq!(a.keyring.public_infos().len(), 2);
    }

    #[tokio::test]
    async fn the_reload_timer_brings_a_rotation_made_elsewhere() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = open(
            sqlite_store(dir.path()).await,
            dir.path(),
            "test",
            WhenNew::Create,
            None,
            crate::clock::system(),
        )
        .await
        .expect("a");
        let b = open(
            sqlite_store(dir.path()).await,
            dir.path(),
            "test",
            WhenNew::Refuse,
            None,
            crate::clock::system(),
        )
        .await
        .expect("b");
        let b_ring = Arc::new(b.keyring);
        let timer = tokio::spawn(keep_keys_fresh(
            b_ring.clone(),
            Some(std::time::Duration::from_millis(20)),
            None,
        ));
        let new = a
            .keyring
            .rotate(time::Duration::ZERO, time::Duration::hours(1), None)
            .await
            .expect("rotated");
        // Bounded only so that a broken timer fails instead of hanging.
        tokio::time::timeout(std::time::Duration::from_secs(60), async {
            while b_ring.active_key_id() != Some(new.clone()) {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the timer reloaded the keys");
        timer.abort();
    }
}
