//! Wrappers for secrets held by the SDK (32-byte keys, bearer tokens): `Debug` never shows them and their
//! memory is zeroed on drop.

use std::fmt;

use zeroize::{Zeroize, Zeroizing};

/// 32 secret bytes: an HMAC key. Redacted in `Debug`, zeroed on drop.
#[derive(Clone)]
pub struct SecretKey32(Zeroizing<[u8; 32]>);

impl SecretKey32 {
    /// 32 fresh bytes from the operating system's CSPRNG.
    pub fn generate() -> Result<Self, ring::error::Unspecified> {
        use ring::rand::SecureRandom;
        let mut bytes = Zeroizing::new([0u8; 32]);
        ring::rand::SystemRandom::new().fill(bytes.as_mut())?;
        Ok(Self(bytes))
    }

    /// Takes the bytes over; the caller's copy is zeroed.
    pub fn from_bytes(bytes: &mut [u8; 32]) -> Self {
        let key = Self(Zeroizing::new(*bytes));
        bytes.zeroize();
        key
    }

    /// The key bytes. Keep the borrow short.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for SecretKey32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey32(<redacted>)")
    }
}

/// A bearer token. Redacted in `Debug` and `Display`, zeroed on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(Zeroizing<String>);

impl Token {
    pub fn new(token: impl Into<String>) -> Self {
        Self(Zeroizing::new(token.into().trim().to_string()))
    }

    /// The token text, for the `Authorization` header only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl From<String> for Token {
    fn from(s: String) -> Self {
        Self::new(s)
    }
}

impl From<&str> for Token {
    fn from(s: &str) -> Self {
        Self::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let mut raw = [7u8; 32];
        let k = SecretKey32::from_bytes(&mut raw);
        assert_eq!(raw, [0u8; 32], "the source copy is zeroed");
        assert_eq!(format!("{k:?}"), "SecretKey32(<redacted>)");
        let t = Token::new("kwm_secret_token");
        assert!(!format!("{t:?}").contains("secret"));
    }

    #[test]
    fn generated_keys_differ() {
        let a = SecretKey32::generate().expect("rng");
        let b = SecretKey32::generate().expect("rng");
        assert_ne!(a.expose(), b.expose());
    }
}
