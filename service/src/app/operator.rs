//! The operator's commands on providers, tokens, keys and the region's key check. Each writes its
//! audit entry in its own transaction (a failed entry changes nothing) and says what it did; the CLI's
//! `admin` commands print it. Errors name what was wrong and what to do.

use anyhow::Context;
use kwm_schemas::envelope::KeyId;
use kwm_schemas::{AgbCode, MunicipalityCode, RegionConfig, Role};
use zeroize::Zeroizing;

use crate::app::audit_trail::{entry, issue_token};
use crate::app::rounds::Actor;
use crate::audit::AuditAction;
use crate::clock::Clock;
use crate::keys::Keyring;
use crate::store::{Provider, RegionalKeyCheck, Store, StoreError};

/// What the operator's commands need: the store, the region, who runs them, and the clock.
#[derive(Debug, Clone, Copy)]
pub struct Desk<'a> {
    pub store: &'a dyn Store,
    pub region: &'a RegionConfig,
    pub actor: &'a Actor,
    pub clock: &'a dyn Clock,
}

/// A token as issued: its id and the token itself, shown once.
pub type Issued = (i64, Zeroizing<String>);

/// Registers a provider with its signing public key and issues its first token.
pub async fn register_provider(
    desk: Desk<'_>,
    agb: AgbCode,
    name: &str,
    signing_public_key: Vec<u8>,
) -> anyhow::Result<Issued> {
    let provider = Provider {
        agb,
        name: name.to_string(),
        signing_public_key,
        created_at: desk.clock.now(),
    };
    let registered = entry(
        desk.actor,
        AuditAction::ProviderRegistered,
        format!("provider {agb}"),
        Some(agb),
        &serde_json::json!({
            "agb": agb.as_str(),
            "name": name,
            "signing_public_key": hex::encode(&provider.signing_public_key),
        }),
    );
    match desk
        .store
        .put_provider_recorded(&provider, Some(&registered))
        .await
    {
        Ok(()) => {}
        Err(StoreError::Conflict(why)) => anyhow::bail!("{why}; nothing was registered"),
        Err(e) => return Err(e.into()),
    }
    issue_token(
        desk.store,
        desk.actor,
        Role::Provider,
        Some(agb.as_str()),
        &format!("provider {name}"),
    )
    .await
}

/// What replacing a provider's signing key did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyChange {
    /// The provider had this key already.
    Unchanged,
    /// Replaced; batches signed with the old key are refused from now on. The provider's name.
    Replaced { name: String },
}

/// Replaces a provider's signing public key.
pub async fn replace_provider_key(
    desk: Desk<'_>,
    agb: AgbCode,
    signing_public_key: &[u8],
) -> anyhow::Result<KeyChange> {
    let Some(old) = desk.store.get_provider(agb).await? else {
        anyhow::bail!(
            "provider {agb} is not registered; `admin provider list` shows the registered ones"
        );
    };
    if old.signing_public_key == signing_public_key {
        return Ok(KeyChange::Unchanged);
    }
    let e = entry(
        desk.actor,
        AuditAction::ProviderKeyChanged,
        format!("provider {agb}"),
        Some(agb),
        &serde_json::json!({
            "agb": agb.as_str(),
            "old_signing_public_key": hex::encode(&old.signing_public_key),
            "signing_public_key": hex::encode(signing_public_key),
        }),
    );
    match desk
        .store
        .put_provider_key_recorded(agb, signing_public_key, Some(&e))
        .await
    {
        Ok(()) => Ok(KeyChange::Replaced { name: old.name }),
        Err(StoreError::Conflict(why)) => anyhow::bail!("{why}; the key was not changed"),
        Err(StoreError::NotFound) => anyhow::bail!("provider {agb} is not registered"),
        Err(e) => Err(e.into()),
    }
}

/// Issues a token for `role`, refusing a scope the service does not know: a municipality outside
/// the region, a provider that is not registered.
pub async fn issue_scoped_token(
    desk: Desk<'_>,
    role: Role,
    scope: Option<&str>,
    label: &str,
) -> anyhow::Result<Issued> {
    if let Some(raw) = scope {
        match role {
            Role::Municipality => {
                let code: MunicipalityCode = raw.parse().context("--scope")?;
                if desk.region.municipality(code).is_none() {
                    let codes: Vec<String> = desk
                        .region
                        .municipalities
                        .iter()
                        .map(|m| format!("{} {}", m.code, m.name))
                        .collect();
                    anyhow::bail!(
                        "--scope {code}: not a municipality of region {} ({}); its municipalities \
                         are: {}",
                        desk.region.code,
                        desk.region.name,
                        codes.join(", ")
                    );
                }
            }
            Role::Provider => {
                let agb: AgbCode = raw.parse().context("--scope")?;
                if desk.store.get_provider(agb).await?.is_none() {
                    anyhow::bail!(
                        "--scope {agb}: no provider with this AGB code is registered; register it \
                         first with `admin provider add --agb {agb} --name NAME --signing-key \
                         signing.pub` (which prints its token), or see `admin provider list`"
                    );
                }
            }
            _ => {}
        }
    }
    issue_token(desk.store, desk.actor, role, scope, label).await
}

/// What revoking a token did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revocation {
    AlreadyRevoked,
    /// Revoked: refused from the next request on. The token's role.
    Revoked(Role),
}

/// Revokes token `id`.
pub async fn revoke_token(desk: Desk<'_>, id: i64) -> anyhow::Result<Revocation> {
    let tokens = desk.store.list_tokens().await?;
    let Some(t) = tokens.iter().find(|t| t.id == id) else {
        anyhow::bail!("there is no token {id}; `admin token list` shows them");
    };
    if t.revoked_at.is_some() {
        return Ok(Revocation::AlreadyRevoked);
    }
    let provider = match t.role {
        Role::Provider => t.scope.as_deref().and_then(|s| s.parse().ok()),
        _ => None,
    };
    let e = entry(
        desk.actor,
        AuditAction::TokenRevoked,
        format!("token {id} ({})", t.role),
        provider,
        &serde_json::json!({ "id": id }),
    );
    desk.store
        .revoke_token_recorded(id, desk.clock.now(), Some(&e))
        .await?;
    Ok(Revocation::Revoked(t.role))
}

/// Adds a new HPKE key, active `activate_after` seconds from now; every current key retires
/// `retire_after` seconds after that.
pub async fn rotate_keys(
    keyring: &Keyring,
    actor: &Actor,
    activate_after: i64,
    retire_after: i64,
) -> anyhow::Result<KeyId> {
    anyhow::ensure!(
        activate_after >= 0 && retire_after >= 0,
        "durations must not be negative"
    );
    let actor = actor.clone();
    let record = move |id: &KeyId| {
        entry(
            &actor,
            AuditAction::KeyRotated,
            format!("key {id}"),
            None,
            &serde_json::json!({
                "key_id": id.to_string(),
                "activate_after": activate_after,
                "retire_after": retire_after,
            }),
        )
    };
    keyring
        .rotate(
            time::Duration::seconds(activate_after),
            time::Duration::seconds(retire_after),
            Some(&record),
        )
        .await
}

/// What registering the check value of the region's key did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckChange {
    /// This value was registered already.
    Unchanged,
    /// Registered (the value, normalised to lower-case hex).
    Registered(String),
}

/// Registers the check value of the region's key, as `kwm keygen --regional` printed it. Another
/// registered value is replaced only with `replace` (when the region changed its key).
pub async fn set_regional_key_check(
    desk: Desk<'_>,
    check_value: &str,
    replace: bool,
) -> anyhow::Result<CheckChange> {
    let text = check_value.trim().to_ascii_lowercase();
    let check = RegionalKeyCheck::from_hex(&text, desk.clock.now()).ok_or_else(|| {
        anyhow::anyhow!(
            "{check_value:?} is not a check value: it is 64 hex digits, as `kwm keygen --regional` \
             prints it (`check value: ...`); never pass the key itself"
        )
    })?;
    let old = desk.store.get_regional_key_check().await?;
    if old
        .as_ref()
        .is_some_and(|o| o.check_value == check.check_value)
    {
        return Ok(CheckChange::Unchanged);
    }
    let e = entry(
        desk.actor,
        AuditAction::RegionalKeyCheckSet,
        "region key-check".to_string(),
        None,
        &serde_json::json!({
            "old_check_value": old.as_ref().map(|o| hex::encode(o.check_value)),
            "check_value": text,
        }),
    );
    match desk
        .store
        .put_regional_key_check_recorded(&check, replace, Some(&e))
        .await
    {
        Ok(()) => Ok(CheckChange::Registered(text)),
        Err(StoreError::Conflict(_)) => anyhow::bail!(
            "another check value of the region's key is registered ({}); pass --replace to change \
             it (only when the region changed its key: uploads under the old key are then \
             refused); nothing changed",
            old.map(|o| hex::encode(o.check_value)).unwrap_or_default()
        ),
        Err(e) => Err(e.into()),
    }
}
