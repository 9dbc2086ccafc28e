//! The sealed batch (DESIGN section 6): HPKE base mode with DHKEM(X25519, HKDF-SHA256), HKDF-SHA256 and
//! AES-256-GCM to the service's public key, with the canonical header as associated data, signed by the
//! provider with Ed25519. The SDK seals with this module and the service opens with it, so both sides agree
//! on every byte by construction.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use base64::Engine;
use hpke::{Deserializable, Kem as KemTrait, OpModeR, OpModeS, Serializable};
use ring::digest::{Context, SHA256};
use ring::signature::{Ed25519KeyPair, UnparsedPublicKey, ED25519};
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::OffsetDateTime;
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::codes::{AgbCode, ParseError};

/// Version of the batch protocol: header layout, HPKE suite and `info`.
pub const PROTOCOL_VERSION: u16 = 1;

/// HPKE `info`: binds every key schedule to this protocol and version.
pub const HPKE_INFO: &[u8] = b"kwaliteitsmonitor batch v1";

/// The HPKE suite of protocol version 1.
pub type Kem = hpke::kem::X25519HkdfSha256;
pub type Kdf = hpke::kdf::HkdfSha256;
pub type Aead = hpke::aead::AesGcm256;

/// Identifies one HPKE key of the service: the first 8 bytes of SHA-256 of its public key, in hex.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(String);

impl KeyId {
    pub fn of_public_key(public_key: &[u8]) -> Self {
        let d = ring::digest::digest(&SHA256, public_key);
        Self(hex::encode(&d.as_ref()[..8]))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for KeyId {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        if s.len() == 16
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(Self(s.to_string()))
        } else {
            Err(ParseError("a key id is 16 lower-case hex digits".into()))
        }
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for KeyId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for KeyId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for KeyId {
    fn schema_name() -> Cow<'static, str> {
        "KeyId".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string", "pattern": "^[0-9a-f]{16}$", "description": "id of a service HPKE key" })
    }
}

/// Bytes carried as standard base64 in JSON.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Base64Bytes(pub Vec<u8>);

impl fmt::Debug for Base64Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Base64Bytes({} bytes)", self.0.len())
    }
}

impl Serialize for Base64Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Base64Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <Cow<'de, str>>::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s.as_bytes())
            .map(Base64Bytes)
            .map_err(|_| serde::de::Error::custom("not valid base64"))
    }
}

impl JsonSchema for Base64Bytes {
    fn schema_name() -> Cow<'static, str> {
        "Base64Bytes".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string", "contentEncoding": "base64" })
    }
}

/// The cleartext header of a sealed batch. Its canonical form is the HPKE associated data and part of
/// what the provider signs, so none of it can be changed in transit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchHeader {
    /// Batch protocol version; this service speaks [`PROTOCOL_VERSION`].
    #[schemars(schema_with = "version_schema")]
    pub version: u16,
    pub provider: AgbCode,
    /// Unique per provider; a retry sends the same id.
    pub batch_id: Uuid,
    /// The service HPKE key the batch is sealed to.
    pub key_id: KeyId,
    pub record_count: u32,
    /// RFC 3339; in UTC between the years 2000 and 2999.
    #[serde(with = "created_at")]
    #[schemars(schema_with = "created_at::schema")]
    pub created_at: OffsetDateTime,
    /// The check value of the regional key the client pseudonyms were made with: hex of
    /// HMAC-SHA256(regional key, "kwm regional key check value v1"). It names the key without revealing
    /// it; the service refuses a batch whose check value is not the region's (`wrong-regional-key`).
    #[schemars(schema_with = "regional_key_check_schema")]
    pub regional_key_check: String,
}

fn regional_key_check_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "pattern": "^[0-9a-f]{64}$",
        "description": "hex of HMAC-SHA256(regional key, \"kwm regional key check value v1\")"
    })
}

/// The one protocol version this build speaks: any other is refused (`unsupported-version`).
fn version_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "integer",
        "const": PROTOCOL_VERSION,
        "description": "batch protocol version; this service speaks version 1 only"
    })
}

/// `created_at` on the wire: RFC 3339, refused unless its UTC time lies in 2000..=2999, so that
/// no offset can carry it out of the range the canonical encoding (in UTC) can write.
mod created_at {
    use serde::{Deserializer, Serializer};
    use time::OffsetDateTime;

    pub fn serialize<S: Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
        time::serde::rfc3339::serialize(t, s)
    }

    /// RFC 3339 (the `date-time` of JSON Schema) with a year 2000..2999; a time just after New Year
    /// with a positive offset can still fall outside in UTC, which the service refuses.
    pub fn schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "format": "date-time",
            "pattern": "^2[0-9]{3}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])[Tt]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]+)?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$",
            "description": "RFC 3339 time of sealing; in UTC between the years 2000 and 2999"
        })
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<OffsetDateTime, D::Error> {
        let t: OffsetDateTime = time::serde::rfc3339::deserialize(d)?;
        match t.checked_to_offset(time::UtcOffset::UTC) {
            Some(utc) if (2000..=2999).contains(&utc.year()) => Ok(t),
            _ => Err(serde::de::Error::custom(
                "created_at must be an RFC 3339 time between the years 2000 and 2999 (UTC)",
            )),
        }
    }
}

impl BatchHeader {
    /// The canonical bytes: one `name:value` line per field in a fixed order. No field can contain a
    /// newline, so the encoding is unambiguous.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let created = self
            .created_at
            .checked_to_offset(time::UtcOffset::UTC)
            .unwrap_or(self.created_at)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        format!(
            "kwm-batch-header\nversion:{}\nprovider:{}\nbatch_id:{}\nkey_id:{}\nrecord_count:{}\ncreated_at:{}\nregional_key_check:{}\n",
            self.version,
            self.provider,
            self.batch_id.hyphenated(),
            self.key_id,
            self.record_count,
            created,
            // The last line: nothing follows it, so even a value with a newline cannot be confused
            // with another header (and the service refuses anything but 64 hex digits).
            self.regional_key_check
        )
        .into_bytes()
    }
}

/// A batch as it travels: header in the clear, records sealed, the whole signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SealedBatch {
    pub header: BatchHeader,
    /// HPKE encapsulated key (32 bytes for X25519).
    pub encapsulated_key: Base64Bytes,
    /// AES-256-GCM ciphertext of the JSON [`crate::record::BatchPayload`].
    pub ciphertext: Base64Bytes,
    /// Ed25519 signature by the provider over [`signed_digest`].
    pub signature: Base64Bytes,
}

/// Why a batch could not be sealed or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("the signature does not match the provider's registered key")]
    BadSignature,
    #[error("the batch could not be decrypted")]
    DecryptFailed,
    #[error("not a valid key: {0}")]
    BadKey(&'static str),
    #[error("sealing failed")]
    SealFailed,
}

/// SHA-256 over the length-prefixed header, encapsulated key and ciphertext: what the provider signs.
/// Length prefixes make the concatenation unambiguous.
pub fn signed_digest(header: &BatchHeader, encapsulated_key: &[u8], ciphertext: &[u8]) -> [u8; 32] {
    let mut ctx = Context::new(&SHA256);
    ctx.update(b"kwm-batch-signature-v1");
    for part in [&header.canonical_bytes()[..], encapsulated_key, ciphertext] {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The service's HPKE private key. Zeroed on drop by the hpke crate; `Debug` shows only its id.
pub struct HpkeSecretKey(<Kem as KemTrait>::PrivateKey);

/// The service's HPKE public key, as published at `GET /v1/keys`.
#[derive(Clone)]
pub struct HpkePublicKey(<Kem as KemTrait>::PublicKey);

impl fmt::Debug for HpkeSecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "HpkeSecretKey(<redacted>, id {})",
            self.public_key().key_id()
        )
    }
}

impl fmt::Debug for HpkePublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HpkePublicKey({})", self.key_id())
    }
}

impl HpkeSecretKey {
    /// A fresh key pair from the OS CSPRNG.
    pub fn generate() -> Self {
        let (sk, _) = Kem::gen_keypair();
        Self(sk)
    }
    /// The deterministic key pair of RFC 9180 `DeriveKeyPair` (test vectors only).
    pub fn derive(ikm: &[u8]) -> Self {
        let (sk, _) = Kem::derive_keypair(ikm);
        Self(sk)
    }
    pub fn from_bytes(b: &[u8]) -> Result<Self, EnvelopeError> {
        <Kem as KemTrait>::PrivateKey::from_bytes(b)
            .map(Self)
            .map_err(|_| EnvelopeError::BadKey("an HPKE private key is 32 bytes"))
    }
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.0.to_bytes().to_vec())
    }
    pub fn public_key(&self) -> HpkePublicKey {
        HpkePublicKey(Kem::sk_to_pk(&self.0))
    }
}

impl HpkePublicKey {
    pub fn from_bytes(b: &[u8]) -> Result<Self, EnvelopeError> {
        <Kem as KemTrait>::PublicKey::from_bytes(b)
            .map(Self)
            .map_err(|_| EnvelopeError::BadKey("an HPKE public key is 32 bytes"))
    }
    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.to_bytes().to_vec()
    }
    pub fn key_id(&self) -> KeyId {
        KeyId::of_public_key(&self.to_bytes())
    }
}

/// Seals `plaintext` to `recipient` with the header as associated data and signs the result.
/// The header's `key_id` must be the recipient's.
pub fn seal(
    header: BatchHeader,
    plaintext: &[u8],
    recipient: &HpkePublicKey,
    signer: &Ed25519KeyPair,
) -> Result<SealedBatch, EnvelopeError> {
    if header.key_id != recipient.key_id() {
        return Err(EnvelopeError::BadKey(
            "the header names another key than the recipient",
        ));
    }
    let aad = header.canonical_bytes();
    let (enc, ciphertext) = hpke::single_shot_seal::<Aead, Kdf, Kem>(
        &OpModeS::Base,
        &recipient.0,
        HPKE_INFO,
        plaintext,
        &aad,
    )
    .map_err(|_| EnvelopeError::SealFailed)?;
    let enc = enc.to_bytes().to_vec();
    let digest = signed_digest(&header, &enc, &ciphertext);
    let signature = signer.sign(&digest).as_ref().to_vec();
    Ok(SealedBatch {
        header,
        encapsulated_key: Base64Bytes(enc),
        ciphertext: Base64Bytes(ciphertext),
        signature: Base64Bytes(signature),
    })
}

/// Checks the provider's Ed25519 signature (raw 32-byte public key).
pub fn verify_signature(
    batch: &SealedBatch,
    provider_public_key: &[u8],
) -> Result<(), EnvelopeError> {
    let digest = signed_digest(
        &batch.header,
        &batch.encapsulated_key.0,
        &batch.ciphertext.0,
    );
    UnparsedPublicKey::new(&ED25519, provider_public_key)
        .verify(&digest, &batch.signature.0)
        .map_err(|_| EnvelopeError::BadSignature)
}

/// Opens a batch with the service key it names. Any change to header, key or ciphertext fails here.
pub fn open(batch: &SealedBatch, key: &HpkeSecretKey) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
    let enc = <Kem as KemTrait>::EncappedKey::from_bytes(&batch.encapsulated_key.0)
        .map_err(|_| EnvelopeError::DecryptFailed)?;
    let aad = batch.header.canonical_bytes();
    hpke::single_shot_open::<Aead, Kdf, Kem>(
        &OpModeR::Base,
        &key.0,
        &enc,
        HPKE_INFO,
        &batch.ciphertext.0,
        &aad,
    )
    .map(Zeroizing::new)
    .map_err(|_| EnvelopeError::DecryptFailed)
}

/// SHA-256 of the plaintext payload: the content a batch id is bound to for idempotency. Sealing is
/// randomised, so two sealings of the same records differ in ciphertext but not in this digest.
pub fn content_digest(plaintext: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&SHA256, plaintext).as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::KeyPair;

    fn signer() -> Ed25519KeyPair {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("keygen");
        Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("parse")
    }

    fn header(key: &HpkePublicKey) -> BatchHeader {
        BatchHeader {
            version: PROTOCOL_VERSION,
            provider: "12345678".parse().expect("valid"),
            batch_id: Uuid::nil(),
            key_id: key.key_id(),
            record_count: 1,
            created_at: OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("valid"),
            regional_key_check: "ab".repeat(32),
        }
    }

    #[test]
    fn seal_open_roundtrip() {
        let sk = HpkeSecretKey::generate();
        let s = signer();
        let batch = seal(header(&sk.public_key()), b"records", &sk.public_key(), &s).expect("seal");
        verify_signature(&batch, s.public_key().as_ref()).expect("signature");
        assert_eq!(&open(&batch, &sk).expect("open")[..], b"records");
    }

    #[test]
    fn any_tampering_is_detected() {
        let sk = HpkeSecretKey::generate();
        let s = signer();
        let batch = seal(header(&sk.public_key()), b"records", &sk.public_key(), &s).expect("seal");
        let pk = s.public_key().as_ref().to_vec();

        let mut t = batch.clone();
        t.header.record_count = 2;
        assert_eq!(verify_signature(&t, &pk), Err(EnvelopeError::BadSignature));
        assert_eq!(open(&t, &sk).err(), Some(EnvelopeError::DecryptFailed));

        let mut t = batch.clone();
        t.ciphertext.0[0] ^= 1;
        assert_eq!(verify_signature(&t, &pk), Err(EnvelopeError::BadSignature));
        assert_eq!(open(&t, &sk).err(), Some(EnvelopeError::DecryptFailed));

        let mut t = batch.clone();
        t.signature.0[0] ^= 1;
        assert_eq!(verify_signature(&t, &pk), Err(EnvelopeError::BadSignature));

        let other = signer();
        assert_eq!(
            verify_signature(&batch, other.public_key().as_ref()),
            Err(EnvelopeError::BadSignature)
        );
        assert_eq!(
            open(&batch, &HpkeSecretKey::generate()).err(),
            Some(EnvelopeError::DecryptFailed)
        );
    }

    #[test]
    fn json_roundtrip() {
        let sk = HpkeSecretKey::generate();
        let batch =
            seal(header(&sk.public_key()), b"x", &sk.public_key(), &signer()).expect("seal");
        let json = serde_json::to_string(&batch).expect("json");
        let back: SealedBatch = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, batch);
        assert_eq!(
            back.header.canonical_bytes(),
            batch.header.canonical_bytes()
        );
    }

    #[test]
    fn a_created_at_out_of_range_is_refused_with_a_clear_error() {
        let header = |created_at: &str| {
            format!(
                r#"{{"version":1,"provider":"12345678","batch_id":"0190c3a1-0000-7000-8000-000000000000","key_id":"0123456789abcdef","record_count":1,"created_at":"{created_at}","regional_key_check":"{}"}}"#,
                "ab".repeat(32)
            )
        };
        for bad in [
            "9999-12-31T23:59:59-23:59",
            "1970-01-01T00:00:00Z",
            "3000-01-01T00:00:00Z",
        ] {
            let err = serde_json::from_str::<BatchHeader>(&header(bad)).expect_err(bad);
            assert!(err.to_string().contains("created_at"), "{bad}: {err}");
        }
        let ok: BatchHeader =
            serde_json::from_str(&header("2026-12-02T10:00:00+01:00")).expect("a valid time");
        assert!(!ok.canonical_bytes().is_empty());
    }
}
