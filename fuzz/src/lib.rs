//! What the fuzz targets share: fixed keys (so that the seeds in `corpus/` open and verify, and the
//! fuzzer can reach the code behind the signature and the decryption) and the region the CSV parser
//! checks rows against. Nothing here is secret: these keys exist only for fuzzing.

use kwm_schemas::envelope::{HpkePublicKey, HpkeSecretKey};
use kwm_schemas::RegionConfig;
use kwm_sdk::prepare::PrepareContext;
use kwm_sdk::{Pseudonymiser, SecretKey32};
use ring::signature::{Ed25519KeyPair, KeyPair};

/// The service's HPKE key of the fuzz targets (RFC 9180 `DeriveKeyPair` of a fixed seed).
pub fn service_key() -> HpkeSecretKey {
    HpkeSecretKey::derive(b"kwm fuzz service key, not secret")
}

pub fn service_public_key() -> HpkePublicKey {
    service_key().public_key()
}

/// The provider's Ed25519 signing key of the fuzz targets.
pub fn provider_signer() -> Ed25519KeyPair {
    Ed25519KeyPair::from_seed_unchecked(&[7u8; 32]).expect("a 32-byte seed is a key")
}

pub fn provider_public_key() -> Vec<u8> {
    provider_signer().public_key().as_ref().to_vec()
}

/// The SDK's context for turning rows into records: the built-in region, fixed pseudonymisation keys.
pub fn prepare_context() -> PrepareContext {
    let pseudonymiser = Pseudonymiser::from_secrets(
        &SecretKey32::from_bytes(&mut [1u8; 32]),
        &SecretKey32::from_bytes(&mut [2u8; 32]),
    );
    PrepareContext::new(RegionConfig::wbw(), pseudonymiser)
}
