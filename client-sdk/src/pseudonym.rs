//! Stage-1 pseudonymisation on the provider's machine (DESIGN section 4): the client pseudonym is
//! HMAC-SHA256 under the regional key of the normalised nine-digit BSN, the trajectory pseudonym is
//! HMAC-SHA256 under the provider's own key of the trimmed trajectory id.

use std::fmt;

use kwm_schemas::{Bsn, Pseudonym};
use ring::hmac;

use crate::keys::{ProviderKeys, RegionalKey};
use crate::secret::SecretKey32;

/// Holds both HMAC keys, ready to use (ring precomputes the padded key states once).
pub struct Pseudonymiser {
    regional: hmac::Key,
    trajectory: hmac::Key,
}

impl fmt::Debug for Pseudonymiser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pseudonymiser(<keys redacted>)")
    }
}

impl Pseudonymiser {
    pub fn new(regional: &RegionalKey, provider: &ProviderKeys) -> Self {
        Self::from_secrets(regional.secret(), provider.trajectory_key())
    }

    pub fn from_secrets(regional: &SecretKey32, trajectory: &SecretKey32) -> Self {
        Self {
            regional: hmac::Key::new(hmac::HMAC_SHA256, regional.expose()),
            trajectory: hmac::Key::new(hmac::HMAC_SHA256, trajectory.expose()),
        }
    }

    /// HMAC-SHA256(regional key, the nine ASCII digits of the BSN). An eight-digit BSN has already
    /// been given its leading zero by [`Bsn::parse`], so both spellings give the same pseudonym.
    pub fn client(&self, bsn: &Bsn) -> Pseudonym {
        to_pseudonym(hmac::sign(&self.regional, bsn.normalised()))
    }

    /// HMAC-SHA256(trajectory key, trajectory id without surrounding white space).
    pub fn trajectory(&self, trajectory_id: &str) -> Pseudonym {
        to_pseudonym(hmac::sign(
            &self.trajectory,
            trajectory_id.trim().as_bytes(),
        ))
    }
}

/// The trajectory pseudonym with the provider's trajectory key alone, exactly as [`Pseudonymiser::trajectory`]
/// computes it during an upload: what `kwm withdraw --trajectory` sends.
pub fn trajectory_pseudonym(trajectory_key: &SecretKey32, trajectory_id: &str) -> Pseudonym {
    let key = hmac::Key::new(hmac::HMAC_SHA256, trajectory_key.expose());
    to_pseudonym(hmac::sign(&key, trajectory_id.trim().as_bytes()))
}

fn to_pseudonym(tag: hmac::Tag) -> Pseudonym {
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    Pseudonym(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed() -> Pseudonymiser {
        Pseudonymiser::from_secrets(
            &SecretKey32::from_bytes(&mut [1u8; 32]),
            &SecretKey32::from_bytes(&mut [2u8; 32]),
        )
    }

    #[test]
    fn deterministic_and_keyed() {
        let p = fixed();
        let bsn = Bsn::parse("111222333").expect("valid");
        assert_eq!(p.client(&bsn), p.client(&bsn));
        assert_eq!(p.trajectory("T-1"), p.trajectory("  T-1 "));
        assert_ne!(p.trajectory("T-1"), p.trajectory("T-2"));

        // The known answer: HMAC-SHA256 over exactly the nine digits.
        let expected = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &[1u8; 32]), b"111222333");
        assert_eq!(p.client(&bsn).as_bytes()[..], *expected.as_ref());

        let other = Pseudonymiser::from_secrets(
            &SecretKey32::from_bytes(&mut [3u8; 32]),
            &SecretKey32::from_bytes(&mut [2u8; 32]),
        );
        assert_ne!(other.client(&bsn), p.client(&bsn));
        assert_eq!(other.trajectory("T-1"), p.trajectory("T-1"));
    }

    #[test]
    fn the_trajectory_key_alone_gives_the_upload_pseudonym() {
        let p = fixed();
        let key = SecretKey32::from_bytes(&mut [2u8; 32]);
        for id in ["T-1", "  T-1 ", "2025/000123"] {
            assert_eq!(trajectory_pseudonym(&key, id), p.trajectory(id));
        }
    }

    #[test]
    fn eight_and_nine_digit_spellings_match() {
        let p = fixed();
        let a = Bsn::parse("012345672").expect("valid");
        let b = Bsn::parse("12345672").expect("valid");
        assert_eq!(p.client(&a), p.client(&b));
    }

    #[test]
    fn the_same_child_gets_the_same_pseudonym_at_every_provider() {
        let regional = SecretKey32::from_bytes(&mut [9u8; 32]);
        let a = Pseudonymiser::from_secrets(&regional, &SecretKey32::from_bytes(&mut [1u8; 32]));
        let b = Pseudonymiser::from_secrets(&regional, &SecretKey32::from_bytes(&mut [2u8; 32]));
        let bsn = Bsn::parse("123456782").expect("valid");
        assert_eq!(a.client(&bsn), b.client(&bsn));
        assert_ne!(a.trajectory("1"), b.trajectory("1"));
    }
}
