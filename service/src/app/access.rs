//! Access: bearer tokens (only their SHA-256 is stored; issued here), and what an authenticated
//! [`Caller`] may do by role and scope. `http::auth` extracts the caller from a request. Tokens are
//! never logged.

use base64::Engine;
use kwm_schemas::{AgbCode, MunicipalityCode, Role};
use ring::rand::SecureRandom;
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::app::error::ApiError;
use crate::store::{NewToken, Store};

/// Prefix of every token, so that a leaked one is recognisable by secret scanners.
pub const TOKEN_PREFIX: &str = "kwm_";

/// SHA-256 of a presented token: the only form in which tokens are stored or looked up.
pub fn token_hash(token: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref());
    out
}

/// A fresh token: the prefix and 32 bytes from the OS CSPRNG, base64url.
pub fn generate_token() -> anyhow::Result<Zeroizing<String>> {
    let mut b = Zeroizing::new([0u8; 32]);
    ring::rand::SystemRandom::new()
        .fill(&mut b[..])
        .map_err(|_| anyhow::anyhow!("the OS random generator failed"))?;
    Ok(Zeroizing::new(format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&b[..])
    )))
}

/// Checks that a scope fits its role: AGB for a provider, CBS code for a municipality, a project name for
/// a researcher, nothing for region and admin. Returns the normalised scope.
pub fn normalise_scope(role: Role, scope: Option<&str>) -> anyhow::Result<Option<String>> {
    match (role, scope) {
        (Role::Provider, Some(s)) => Ok(Some(s.parse::<AgbCode>()?.to_string())),
        (Role::Municipality, Some(s)) => Ok(Some(s.parse::<MunicipalityCode>()?.to_string())),
        (Role::Researcher, Some(s)) => {
            let ok = !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            anyhow::ensure!(ok, "a project is 1..64 letters, digits, - or _");
            Ok(Some(s.to_string()))
        }
        (Role::Region | Role::Admin, None) => Ok(None),
        (Role::Region | Role::Admin, Some(_)) => {
            anyhow::bail!("role {role} takes no scope")
        }
        (_, None) => anyhow::bail!("role {role} needs --scope"),
    }
}

/// Issues a token for a role and scope, storing only its hash, without an audit entry (tests and
/// benchmarks; the operator's commands use `audit_trail::issue_token`). The caller shows it once.
pub async fn issue_token(
    store: &dyn Store,
    role: Role,
    scope: Option<&str>,
    label: &str,
) -> anyhow::Result<(i64, Zeroizing<String>)> {
    issue_token_recorded(store, role, scope, label, None).await
}

/// [`issue_token`], with the entry `record` makes from the token's id appended in the same
/// transaction.
pub async fn issue_token_recorded(
    store: &dyn Store,
    role: Role,
    scope: Option<&str>,
    label: &str,
    record: Option<&crate::store::RecordFn<i64>>,
) -> anyhow::Result<(i64, Zeroizing<String>)> {
    let scope = normalise_scope(role, scope)?;
    let token = generate_token()?;
    let id = store
        .put_token_recorded(
            &NewToken {
                token_hash: token_hash(&token),
                role,
                scope,
                label: label.to_string(),
                created_at: OffsetDateTime::now_utc(),
            },
            record,
        )
        .await?;
    Ok((id, token))
}

/// An authenticated caller. Extracting it fails with `unauthenticated` for a missing, unknown or revoked
/// token.
#[derive(Debug, Clone)]
pub struct Caller {
    pub token_id: i64,
    pub role: Role,
    pub scope: Option<String>,
}

impl Caller {
    /// The provider this caller acts for, or `forbidden`.
    pub fn provider(&self) -> Result<AgbCode, ApiError> {
        match (self.role, &self.scope) {
            (Role::Provider, Some(s)) => s
                .parse()
                .map_err(|_| ApiError::forbidden("this token has no valid provider scope")),
            _ => Err(ApiError::forbidden(format!(
                "this endpoint is for providers; the token's role is {}",
                self.role
            ))),
        }
    }

    /// Whether this caller may read releases of `scope`: a municipality its own CBS code and the region
    /// as a whole (its benchmark), the region team every municipality and the region. Nobody reads the
    /// per-provider table whole (a provider reads its own rows through its scores).
    pub fn may_read_release_scope(&self, scope: &str) -> Result<(), ApiError> {
        if scope == "providers" {
            return Err(ApiError::forbidden(
                "the per-provider table is read by each provider for its own rows only",
            ));
        }
        match self.role {
            Role::Region => Ok(()),
            Role::Municipality if self.scope.as_deref() == Some(scope) || scope == "region" => {
                Ok(())
            }
            Role::Municipality => Err(ApiError::forbidden(format!(
                "this token may read releases of {} and of the region only",
                self.scope.as_deref().unwrap_or("its own municipality")
            ))),
            other => Err(ApiError::forbidden(format!(
                "releases are for municipality and region tokens; the token's role is {other}"
            ))),
        }
    }

    pub fn require(&self, roles: &[Role]) -> Result<(), ApiError> {
        if roles.contains(&self.role) {
            Ok(())
        } else {
            let allowed: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
            Err(ApiError::forbidden(format!(
                "this endpoint is for {}; the token's role is {}",
                allowed.join(", "),
                self.role
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_prefixed() {
        let a = generate_token().expect("token");
        let b = generate_token().expect("token");
        assert!(a.starts_with(TOKEN_PREFIX));
        assert_ne!(*a, *b);
        assert_ne!(token_hash(&a), token_hash(&b));
    }

    #[test]
    fn release_scopes_follow_the_role() {
        let caller = |role, scope: Option<&str>| Caller {
            token_id: 1,
            role,
            scope: scope.map(str::to_string),
        };
        let gm = caller(Role::Municipality, Some("GM0748"));
        assert!(gm.may_read_release_scope("GM0748").is_ok());
        assert!(gm.may_read_release_scope("GM0777").is_err());
        // The region's table is a municipality's benchmark; the per-provider table is nobody's.
        assert!(gm.may_read_release_scope("region").is_ok());
        assert!(gm.may_read_release_scope("providers").is_err());
        let region = caller(Role::Region, None);
        assert!(region.may_read_release_scope("providers").is_err());
        assert!(region.may_read_release_scope("region").is_ok());
        assert!(region.may_read_release_scope("GM0777").is_ok());
        for role in [Role::Provider, Role::Researcher, Role::Admin] {
            assert!(caller(role, Some("GM0748"))
                .may_read_release_scope("GM0748")
                .is_err());
        }
    }

    #[test]
    fn scopes_must_fit_roles() {
        assert_eq!(
            normalise_scope(Role::Municipality, Some("0748")).expect("ok"),
            Some("GM0748".into())
        );
        assert!(normalise_scope(Role::Municipality, None).is_err());
        assert!(normalise_scope(Role::Provider, Some("GM0748")).is_err());
        assert!(normalise_scope(Role::Admin, Some("x")).is_err());
        assert_eq!(normalise_scope(Role::Region, None).expect("ok"), None);
        assert!(normalise_scope(Role::Researcher, Some("bad project!")).is_err());
    }
}
