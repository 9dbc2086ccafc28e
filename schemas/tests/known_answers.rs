//! Known-answer tests for the primitives under the sealed batch and the pseudonyms (DESIGN sections 4
//! and 6), against published vectors:
//!
//! * RFC 9180 (HPKE) for exactly the suite of batch protocol version 1: base mode, DHKEM(X25519,
//!   HKDF-SHA256), HKDF-SHA256, AES-256-GCM. The entry is checked in as
//!   `vectors/rfc9180_x25519_hkdfsha256_aes256gcm_base.json`, taken unchanged from the CFRG's
//!   `test-vectors.json` (commit 5f503c5); `vectors/README.md` records where it came from.
//! * RFC 8032 section 7.1 (Ed25519): TEST 1, TEST 2, TEST 3, TEST 1024 and TEST SHA(abc).
//! * RFC 4231 section 4 (HMAC-SHA-256): test cases 1 to 7.
//!
//! Every expected value is copied from those documents; none is computed with the code under test.
//! The one re-encoding: X25519 private keys are compared in the clamped form that RFC 9180 section
//! 7.1.2 prescribes for SerializePrivateKey, applied to the listed skRm and skEm.

use std::convert::Infallible;

use hpke::rand_core::{TryCryptoRng, TryRng};
use hpke::{Deserializable, Kem as KemTrait, OpModeR, OpModeS, Serializable};
use kwm_schemas::envelope::{Aead, HpkePublicKey, HpkeSecretKey, Kdf, Kem};
use ring::hmac;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde::Deserialize;

/// Decodes hex copied from a vector; a typo in a constant fails loudly here.
fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap_or_else(|e| panic!("test vector is not valid hex ({e}): {s}"))
}

// ---------------------------------------------------------------------------------------------------
// RFC 9180: HPKE, base mode, DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 / AES-256-GCM
// ---------------------------------------------------------------------------------------------------

/// The one entry of the CFRG `test-vectors.json` for our suite (mode 0, kem_id 0x0020, kdf_id 0x0001,
/// aead_id 0x0002). Compiled in, so the test needs neither network nor a working directory.
const RFC9180_VECTOR: &str = include_str!("vectors/rfc9180_x25519_hkdfsha256_aes256gcm_base.json");

/// Bytes given as hex in the vector file.
#[derive(Deserialize)]
#[serde(try_from = "String")]
struct Hex(Vec<u8>);

impl TryFrom<String> for Hex {
    type Error = hex::FromHexError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        hex::decode(s).map(Hex)
    }
}

/// The fields of a vector entry these tests use (the key schedule intermediates are not exposed by
/// the `hpke` crate and are left out).
#[derive(Deserialize)]
struct HpkeVector {
    mode: u8,
    kem_id: u16,
    kdf_id: u16,
    aead_id: u16,
    info: Hex,
    #[serde(rename = "ikmR")]
    ikm_r: Hex,
    #[serde(rename = "ikmE")]
    ikm_e: Hex,
    #[serde(rename = "skRm")]
    sk_rm: Hex,
    #[serde(rename = "skEm")]
    sk_em: Hex,
    #[serde(rename = "pkRm")]
    pk_rm: Hex,
    #[serde(rename = "pkEm")]
    pk_em: Hex,
    enc: Hex,
    base_nonce: Hex,
    encryptions: Vec<HpkeEncryption>,
    exports: Vec<HpkeExport>,
}

#[derive(Deserialize)]
struct HpkeEncryption {
    aad: Hex,
    ct: Hex,
    nonce: Hex,
    pt: Hex,
}

#[derive(Deserialize)]
struct HpkeExport {
    exporter_context: Hex,
    #[serde(rename = "L")]
    length: usize,
    exported_value: Hex,
}

fn rfc9180_vector() -> HpkeVector {
    serde_json::from_str(RFC9180_VECTOR).expect("the checked-in RFC 9180 vector parses")
}

/// skR as the `hpke` crate's key type, obtained through the envelope's own `HpkeSecretKey::derive`.
fn receiver_private_key(v: &HpkeVector) -> <Kem as KemTrait>::PrivateKey {
    let sk = HpkeSecretKey::derive(&v.ikm_r.0);
    <Kem as KemTrait>::PrivateKey::from_bytes(&sk.to_bytes()).expect("an X25519 key is 32 bytes")
}

fn encapsulated_key(v: &HpkeVector) -> <Kem as KemTrait>::EncappedKey {
    <Kem as KemTrait>::EncappedKey::from_bytes(&v.enc.0).expect("enc is 32 bytes")
}

#[test]
fn rfc9180_vector_is_the_batch_suite_in_sequence_order() {
    let v = rfc9180_vector();
    assert_eq!(v.mode, 0, "base mode");
    assert_eq!(v.kem_id, 0x0020, "DHKEM(X25519, HKDF-SHA256)");
    assert_eq!(v.kdf_id, 0x0001, "HKDF-SHA256");
    assert_eq!(v.aead_id, 0x0002, "AES-256-GCM");
    // The type aliases the envelope seals and opens with are that suite.
    assert_eq!(<Kem as KemTrait>::KEM_ID, v.kem_id);
    assert_eq!(<Kdf as hpke::kdf::Kdf>::KDF_ID, v.kdf_id);
    assert_eq!(<Aead as hpke::aead::Aead>::AEAD_ID, v.aead_id);

    // The tests below open and seal the encryptions one after another on a single context, which is
    // only right if entry i is sequence number i: its nonce must be base_nonce XOR I2OSP(i, Nn).
    assert!(!v.encryptions.is_empty());
    for (seq, e) in v.encryptions.iter().enumerate() {
        let mut nonce = v.base_nonce.0.clone();
        for (n, s) in nonce
            .iter_mut()
            .rev()
            .zip((seq as u64).to_be_bytes().iter().rev())
        {
            *n ^= s;
        }
        assert_eq!(
            e.nonce.0, nonce,
            "encryption {seq} is not sequence number {seq}"
        );
    }
}

/// What SerializePrivateKey must give for an X25519 private key: RFC 9180 section 7.1.2 says it
/// "MUST clamp its output", clamping being `decodeScalar25519` of RFC 7748 section 5. The vectors list
/// skRm and skEm unclamped (as DeriveKeyPair returns them), so the serialised form is their clamp.
/// This only re-encodes a listed value by the RFC's rule; it does not use the code under test.
fn serialized_x25519_private_key(sk: &[u8]) -> Vec<u8> {
    let mut k = sk.to_vec();
    assert_eq!(k.len(), 32, "an X25519 private key is 32 bytes");
    k[0] &= 248;
    k[31] &= 127;
    k[31] |= 64;
    k
}

#[test]
fn rfc9180_derive_key_pair() {
    let v = rfc9180_vector();

    // DeriveKeyPair(ikmR) = (skRm, pkRm), through the envelope's key type.
    let sk_r = HpkeSecretKey::derive(&v.ikm_r.0);
    assert_eq!(
        hex::encode(sk_r.public_key().to_bytes()),
        hex::encode(&v.pk_rm.0),
        "pkRm"
    );
    assert_eq!(
        hex::encode(&sk_r.to_bytes()[..]),
        hex::encode(serialized_x25519_private_key(&v.sk_rm.0)),
        "SerializePrivateKey(skRm)"
    );

    // DeriveKeyPair(ikmE) = (skEm, pkEm); pkEm is also the vector's enc.
    let sk_e = HpkeSecretKey::derive(&v.ikm_e.0);
    assert_eq!(
        hex::encode(sk_e.public_key().to_bytes()),
        hex::encode(&v.pk_em.0),
        "pkEm"
    );
    assert_eq!(
        hex::encode(&sk_e.to_bytes()[..]),
        hex::encode(serialized_x25519_private_key(&v.sk_em.0)),
        "SerializePrivateKey(skEm)"
    );
    assert_eq!(v.pk_em.0, v.enc.0);

    // DeserializePrivateKey clamps its input, so both the listed skRm and its serialised form load
    // as the same key, with public key pkRm.
    for sk in [v.sk_rm.0.clone(), serialized_x25519_private_key(&v.sk_rm.0)] {
        let loaded = HpkeSecretKey::from_bytes(&sk).expect("skRm loads");
        assert_eq!(loaded.public_key().to_bytes(), v.pk_rm.0);
        assert_eq!(
            &loaded.to_bytes()[..],
            &serialized_x25519_private_key(&v.sk_rm.0)[..]
        );
    }
    let pk = HpkePublicKey::from_bytes(&v.pk_rm.0).expect("pkRm loads");
    assert_eq!(pk.to_bytes(), v.pk_rm.0);
    assert_eq!(pk.key_id(), sk_r.public_key().key_id());
}

#[test]
fn rfc9180_receiver_opens_every_encryption_in_sequence_and_exports() {
    let v = rfc9180_vector();
    let sk = receiver_private_key(&v);
    let mut ctx = hpke::setup_receiver::<Aead, Kdf, Kem>(
        &OpModeR::Base,
        &sk,
        &encapsulated_key(&v),
        &v.info.0,
    )
    .expect("setup_receiver with the vector's enc and info");
    for (seq, e) in v.encryptions.iter().enumerate() {
        let pt = ctx
            .open(&e.ct.0, &e.aad.0)
            .unwrap_or_else(|err| panic!("sequence number {seq} does not open: {err:?}"));
        assert_eq!(
            hex::encode(pt),
            hex::encode(&e.pt.0),
            "sequence number {seq}"
        );
    }
    assert!(!v.exports.is_empty());
    for x in &v.exports {
        let mut out = vec![0u8; x.length];
        ctx.export(&x.exporter_context.0, &mut out)
            .expect("export of L <= 255 bytes");
        assert_eq!(
            hex::encode(out),
            hex::encode(&x.exported_value.0),
            "export with context {:?}",
            hex::encode(&x.exporter_context.0)
        );
    }
}

#[test]
fn rfc9180_single_shot_open_of_the_first_encryption() {
    // `envelope::open` is a single-shot open (setup_receiver + one open at sequence number 0); with the
    // vector's info and aad it must give the vector's first plaintext.
    let v = rfc9180_vector();
    let sk = receiver_private_key(&v);
    let enc = encapsulated_key(&v);
    let first = &v.encryptions[0];
    let pt = hpke::single_shot_open::<Aead, Kdf, Kem>(
        &OpModeR::Base,
        &sk,
        &enc,
        &v.info.0,
        &first.ct.0,
        &first.aad.0,
    )
    .expect("sequence number 0 opens single-shot");
    assert_eq!(pt, first.pt.0);

    // And nothing else opens: a flipped ciphertext bit, another aad, another info, another key, or a
    // later ciphertext at sequence number 0.
    let open = |info: &[u8], ct: &[u8], aad: &[u8], key: &<Kem as KemTrait>::PrivateKey| {
        hpke::single_shot_open::<Aead, Kdf, Kem>(&OpModeR::Base, key, &enc, info, ct, aad)
    };
    let mut ct = first.ct.0.clone();
    ct[0] ^= 0x01;
    assert!(open(&v.info.0, &ct, &first.aad.0, &sk).is_err());
    let mut ct = first.ct.0.clone();
    let last = ct.len() - 1;
    ct[last] ^= 0x80;
    assert!(open(&v.info.0, &ct, &first.aad.0, &sk).is_err(), "tag bit");
    assert!(open(&v.info.0, &first.ct.0, b"Count-1", &sk).is_err());
    assert!(open(b"another info", &first.ct.0, &first.aad.0, &sk).is_err());
    let other = <Kem as KemTrait>::PrivateKey::from_bytes(&v.sk_em.0).expect("skEm loads");
    assert!(open(&v.info.0, &first.ct.0, &first.aad.0, &other).is_err());
    let second = &v.encryptions[1];
    assert!(open(&v.info.0, &second.ct.0, &second.aad.0, &sk).is_err());
}

/// A "random" source that hands out ikmE once. hpke 0.15 encapsulates by generating the ephemeral
/// key pair as DeriveKeyPair(random(Nsk)) (`Kem::gen_keypair_with_rng`), so feeding it exactly ikmE
/// makes the sender deterministic and lets the vector's enc and ciphertexts be checked too. It
/// panics on any other request, so a change in how the crate draws randomness shows up as a clear
/// failure here rather than as a silent mismatch.
struct IkmE {
    ikm: Vec<u8>,
    used: bool,
}

impl TryRng for IkmE {
    type Error = Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        panic!("the HPKE sender asked for a u32 instead of Nsk bytes");
    }
    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        panic!("the HPKE sender asked for a u64 instead of Nsk bytes");
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        assert!(!self.used, "the HPKE sender asked for randomness twice");
        assert_eq!(
            dst.len(),
            self.ikm.len(),
            "the HPKE sender asked for other than Nsk bytes"
        );
        dst.copy_from_slice(&self.ikm);
        self.used = true;
        Ok(())
    }
}

impl TryCryptoRng for IkmE {}

#[test]
fn rfc9180_sender_from_ikm_e_reproduces_enc_ciphertexts_and_exports() {
    let v = rfc9180_vector();
    let pk_r = <Kem as KemTrait>::PublicKey::from_bytes(&v.pk_rm.0).expect("pkRm loads");
    let mut rng = IkmE {
        ikm: v.ikm_e.0.clone(),
        used: false,
    };
    let (enc, mut ctx) =
        hpke::setup_sender_with_rng::<Aead, Kdf, Kem>(&OpModeS::Base, &pk_r, &v.info.0, &mut rng)
            .expect("setup_sender");
    assert!(rng.used, "the sender drew its ephemeral key from ikmE");
    assert_eq!(hex::encode(enc.to_bytes()), hex::encode(&v.enc.0), "enc");
    for (seq, e) in v.encryptions.iter().enumerate() {
        let ct = ctx
            .seal(&e.pt.0, &e.aad.0)
            .unwrap_or_else(|err| panic!("sequence number {seq} does not seal: {err:?}"));
        assert_eq!(
            hex::encode(ct),
            hex::encode(&e.ct.0),
            "sequence number {seq}"
        );
    }
    for x in &v.exports {
        let mut out = vec![0u8; x.length];
        ctx.export(&x.exporter_context.0, &mut out)
            .expect("export of L <= 255 bytes");
        assert_eq!(hex::encode(out), hex::encode(&x.exported_value.0));
    }
}

// ---------------------------------------------------------------------------------------------------
// RFC 8032 section 7.1: Ed25519
// ---------------------------------------------------------------------------------------------------

struct Ed25519Vector {
    name: &'static str,
    secret_key: &'static str,
    public_key: &'static str,
    message: &'static str,
    signature: &'static str,
}

/// RFC 8032 section 7.1, "Test Vectors for Ed25519", copied as printed (lines joined).
const RFC8032_ED25519: &[Ed25519Vector] = &[
    Ed25519Vector {
        name: "TEST 1",
        secret_key: "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        public_key: "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        message: "",
        signature: concat!(
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155",
            "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
        ),
    },
    Ed25519Vector {
        name: "TEST 2",
        secret_key: "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        public_key: "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        message: "72",
        signature: concat!(
            "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da",
            "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"
        ),
    },
    Ed25519Vector {
        name: "TEST 3",
        secret_key: "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        public_key: "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        message: "af82",
        signature: concat!(
            "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac",
            "18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a"
        ),
    },
    Ed25519Vector {
        name: "TEST 1024",
        secret_key: "f5e5767cf153319517630f226876b86c8160cc583bc013744c6bf255f5cc0ee5",
        public_key: "278117fc144c72340f67d0f2316e8386ceffbf2b2428c9c51fef7c597f1d426e",
        // 1023 bytes.
        message: concat!(
            "08b8b2b733424243760fe426a4b54908632110a66c2f6591eabd3345e3e4eb98",
            "fa6e264bf09efe12ee50f8f54e9f77b1e355f6c50544e23fb1433ddf73be84d8",
            "79de7c0046dc4996d9e773f4bc9efe5738829adb26c81b37c93a1b270b20329d",
            "658675fc6ea534e0810a4432826bf58c941efb65d57a338bbd2e26640f89ffbc",
            "1a858efcb8550ee3a5e1998bd177e93a7363c344fe6b199ee5d02e82d522c4fe",
            "ba15452f80288a821a579116ec6dad2b3b310da903401aa62100ab5d1a36553e",
            "06203b33890cc9b832f79ef80560ccb9a39ce767967ed628c6ad573cb116dbef",
            "efd75499da96bd68a8a97b928a8bbc103b6621fcde2beca1231d206be6cd9ec7",
            "aff6f6c94fcd7204ed3455c68c83f4a41da4af2b74ef5c53f1d8ac70bdcb7ed1",
            "85ce81bd84359d44254d95629e9855a94a7c1958d1f8ada5d0532ed8a5aa3fb2",
            "d17ba70eb6248e594e1a2297acbbb39d502f1a8c6eb6f1ce22b3de1a1f40cc24",
            "554119a831a9aad6079cad88425de6bde1a9187ebb6092cf67bf2b13fd65f270",
            "88d78b7e883c8759d2c4f5c65adb7553878ad575f9fad878e80a0c9ba63bcbcc",
            "2732e69485bbc9c90bfbd62481d9089beccf80cfe2df16a2cf65bd92dd597b07",
            "07e0917af48bbb75fed413d238f5555a7a569d80c3414a8d0859dc65a46128ba",
            "b27af87a71314f318c782b23ebfe808b82b0ce26401d2e22f04d83d1255dc51a",
            "ddd3b75a2b1ae0784504df543af8969be3ea7082ff7fc9888c144da2af58429e",
            "c96031dbcad3dad9af0dcbaaaf268cb8fcffead94f3c7ca495e056a9b47acdb7",
            "51fb73e666c6c655ade8297297d07ad1ba5e43f1bca32301651339e22904cc8c",
            "42f58c30c04aafdb038dda0847dd988dcda6f3bfd15c4b4c4525004aa06eeff8",
            "ca61783aacec57fb3d1f92b0fe2fd1a85f6724517b65e614ad6808d6f6ee34df",
            "f7310fdc82aebfd904b01e1dc54b2927094b2db68d6f903b68401adebf5a7e08",
            "d78ff4ef5d63653a65040cf9bfd4aca7984a74d37145986780fc0b16ac451649",
            "de6188a7dbdf191f64b5fc5e2ab47b57f7f7276cd419c17a3ca8e1b939ae49e4",
            "88acba6b965610b5480109c8b17b80e1b7b750dfc7598d5d5011fd2dcc5600a3",
            "2ef5b52a1ecc820e308aa342721aac0943bf6686b64b2579376504ccc493d97e",
            "6aed3fb0f9cd71a43dd497f01f17c0e2cb3797aa2a2f256656168e6c496afc5f",
            "b93246f6b1116398a346f1a641f3b041e989f7914f90cc2c7fff357876e506b5",
            "0d334ba77c225bc307ba537152f3f1610e4eafe595f6d9d90d11faa933a15ef1",
            "369546868a7f3a45a96768d40fd9d03412c091c6315cf4fde7cb68606937380d",
            "b2eaaa707b4c4185c32eddcdd306705e4dc1ffc872eeee475a64dfac86aba41c",
            "0618983f8741c5ef68d3a101e8a3b8cac60c905c15fc910840b94c00a0b9d0"
        ),
        signature: concat!(
            "0aab4c900501b3e24d7cdf4663326a3a87df5e4843b2cbdb67cbf6e460fec350",
            "aa5371b1508f9f4528ecea23c436d94b5e8fcd4f681e30a6ac00a9704a188a03"
        ),
    },
    Ed25519Vector {
        name: "TEST SHA(abc)",
        secret_key: "833fe62409237b9d62ec77587520911e9a759cec1d19755b7da901b96dca3d42",
        public_key: "ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf",
        // 64 bytes: SHA-512("abc").
        message: concat!(
            "ddaf35a193617abacc417349ae204131",
            "12e6fa4e89a97ea20a9eeee64b55d39a",
            "2192992a274fc1a836ba3c23a3feebbd",
            "454d4423643ce80e2a9ac94fa54ca49f"
        ),
        signature: concat!(
            "dc2a4459e7369633a52b1bf277839a00",
            "201009a3efbf3ecb69bea2186c26b589",
            "09351fc9ac90b3ecfdfbc7c66431e030",
            "3dca179c138ac17ad9bef1177331a704"
        ),
    },
];

#[test]
fn rfc8032_ed25519_sign_and_verify() {
    for t in RFC8032_ED25519 {
        let name = t.name;
        let seed = unhex(t.secret_key);
        let public = unhex(t.public_key);
        let message = unhex(t.message);
        let expected = unhex(t.signature);
        assert_eq!(seed.len(), 32, "{name}: secret key length");
        assert_eq!(public.len(), 32, "{name}: public key length");
        assert_eq!(expected.len(), 64, "{name}: signature length");

        // The public key follows from the secret key.
        let derived = Ed25519KeyPair::from_seed_unchecked(&seed).expect("a 32-byte seed");
        assert_eq!(
            hex::encode(derived.public_key().as_ref()),
            t.public_key,
            "{name}: public key of the secret key"
        );

        // Signing is deterministic: exactly the listed signature.
        let pair = Ed25519KeyPair::from_seed_and_public_key(&seed, &public)
            .unwrap_or_else(|e| panic!("{name}: key pair rejected: {e}"));
        assert_eq!(
            hex::encode(pair.sign(&message).as_ref()),
            t.signature,
            "{name}: signature"
        );

        // Verification accepts it ...
        let verifier = UnparsedPublicKey::new(&ED25519, &public);
        verifier
            .verify(&message, &expected)
            .unwrap_or_else(|_| panic!("{name}: the listed signature does not verify"));

        // ... and rejects any flipped bit in the signature (in R and in S), the message or the key.
        for (byte, bit) in [(0, 0), (17, 5), (31, 7), (32, 0), (50, 3), (63, 4)] {
            let mut bad = expected.clone();
            bad[byte] ^= 1 << bit;
            assert!(
                verifier.verify(&message, &bad).is_err(),
                "{name}: accepted a signature with byte {byte} bit {bit} flipped"
            );
        }
        let mut bad_message = message.clone();
        match bad_message.last_mut() {
            Some(b) => *b ^= 0x01,
            None => bad_message.push(0x00),
        }
        assert!(
            verifier.verify(&bad_message, &expected).is_err(),
            "{name}: accepted a changed message"
        );
        let mut bad_public = public.clone();
        bad_public[0] ^= 0x01;
        assert!(
            UnparsedPublicKey::new(&ED25519, &bad_public)
                .verify(&message, &expected)
                .is_err(),
            "{name}: accepted under another public key"
        );
        // A secret key with someone else's public key is not a key pair.
        assert!(Ed25519KeyPair::from_seed_and_public_key(&seed, &bad_public).is_err());
    }
}

// ---------------------------------------------------------------------------------------------------
// RFC 4231 section 4: HMAC-SHA-256
// ---------------------------------------------------------------------------------------------------

struct HmacCase {
    case: u8,
    key: &'static str,
    data: &'static str,
    /// The HMAC-SHA-256 value as listed; for test case 5 only the leftmost 128 bits are listed.
    hmac_sha256: &'static str,
}

/// 131 bytes of 0xaa: the key of test cases 6 and 7, as printed (eight lines of 16 bytes and 3 more).
const KEY_131_AA: &str = concat!(
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "aaaaaa"
);

/// RFC 4231 sections 4.2 to 4.8, HMAC-SHA-256 rows, copied as printed (lines joined).
const RFC4231_HMAC_SHA256: &[HmacCase] = &[
    HmacCase {
        case: 1,
        key: concat!("0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b", "0b0b0b0b"),
        // "Hi There"
        data: "4869205468657265",
        hmac_sha256: concat!(
            "b0344c61d8db38535ca8afceaf0bf12b",
            "881dc200c9833da726e9376c2e32cff7"
        ),
    },
    HmacCase {
        case: 2,
        // "Jefe"
        key: "4a656665",
        // "what do ya want for nothing?"
        data: concat!(
            "7768617420646f2079612077616e7420",
            "666f72206e6f7468696e673f"
        ),
        hmac_sha256: concat!(
            "5bdcc146bf60754e6a042426089575c7",
            "5a003f089d2739839dec58b964ec3843"
        ),
    },
    HmacCase {
        case: 3,
        key: concat!("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "aaaaaaaa"),
        data: concat!(
            "dddddddddddddddddddddddddddddddd",
            "dddddddddddddddddddddddddddddddd",
            "dddddddddddddddddddddddddddddddd",
            "dddd"
        ),
        hmac_sha256: concat!(
            "773ea91e36800e46854db8ebd09181a7",
            "2959098b3ef8c122d9635514ced565fe"
        ),
    },
    HmacCase {
        case: 4,
        key: concat!("0102030405060708090a0b0c0d0e0f10", "111213141516171819"),
        data: concat!(
            "cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd",
            "cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd",
            "cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd",
            "cdcd"
        ),
        hmac_sha256: concat!(
            "82558a389a443c0ea4cc819899f2083a",
            "85f0faa3e578f8077a2e3ff46729665b"
        ),
    },
    HmacCase {
        case: 5,
        key: concat!("0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c", "0c0c0c0c"),
        // "Test With Truncation"
        data: concat!("546573742057697468205472756e6361", "74696f6e"),
        // Truncated to 128 bits in the RFC.
        hmac_sha256: "a3b6167473100ee06e0c796c2955552b",
    },
    HmacCase {
        case: 6,
        key: KEY_131_AA,
        // "Test Using Larger Than Block-Size Key - Hash Key First"
        data: concat!(
            "54657374205573696e67204c61726765",
            "72205468616e20426c6f636b2d53697a",
            "65204b6579202d2048617368204b6579",
            "204669727374"
        ),
        hmac_sha256: concat!(
            "60e431591ee0b67f0d8a26aacbf5b77f",
            "8e0bc6213728c5140546040f0ee37f54"
        ),
    },
    HmacCase {
        case: 7,
        key: KEY_131_AA,
        // "This is a test using a larger than block-size key and a larger than block-size data.
        // The key needs to be hashed before being used by the HMAC algorithm."
        data: concat!(
            "54686973206973206120746573742075",
            "73696e672061206c6172676572207468",
            "616e20626c6f636b2d73697a65206b65",
            "7920616e642061206c61726765722074",
            "68616e20626c6f636b2d73697a652064",
            "6174612e20546865206b6579206e6565",
            "647320746f2062652068617368656420",
            "6265666f7265206265696e6720757365",
            "642062792074686520484d414320616c",
            "676f726974686d2e"
        ),
        hmac_sha256: concat!(
            "9b09ffa71b942fcb27635fbcd5b0e944",
            "bfdc63644f0713938a7f51535c3a35e2"
        ),
    },
];

#[test]
fn rfc4231_hmac_sha256() {
    // Key and data lengths as stated in the RFC, so a dropped or doubled hex pair shows up here.
    let lengths = [
        (1, 20, 8),
        (2, 4, 28),
        (3, 20, 50),
        (4, 25, 50),
        (5, 20, 20),
        (6, 131, 54),
        (7, 131, 152),
    ];
    assert_eq!(RFC4231_HMAC_SHA256.len(), lengths.len());
    for (t, (case, key_len, data_len)) in RFC4231_HMAC_SHA256.iter().zip(lengths) {
        assert_eq!(t.case, case);
        let key = unhex(t.key);
        let data = unhex(t.data);
        assert_eq!(key.len(), key_len, "test case {case}: key length");
        assert_eq!(data.len(), data_len, "test case {case}: data length");
        let expected = unhex(t.hmac_sha256);
        let full = expected.len() == 32;
        assert!(
            full || (case == 5 && expected.len() == 16),
            "test case {case}: listed length"
        );

        let key = hmac::Key::new(hmac::HMAC_SHA256, &key);
        let tag = hmac::sign(&key, &data);
        assert_eq!(tag.as_ref().len(), 32);
        assert_eq!(
            hex::encode(&tag.as_ref()[..expected.len()]),
            t.hmac_sha256,
            "test case {case}"
        );

        // ring's constant-time check takes the full tag only.
        if full {
            hmac::verify(&key, &data, &expected)
                .unwrap_or_else(|_| panic!("test case {case}: verify rejects the listed value"));
            let mut bad = expected.clone();
            bad[31] ^= 0x01;
            assert!(hmac::verify(&key, &data, &bad).is_err(), "test case {case}");
        }
    }
}
