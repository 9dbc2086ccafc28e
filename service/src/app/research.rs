//! Research access: projects with their own budgets, registered and closed by the operator, and the
//! researchers' log. A project's rho is carved from the data years' research reserve
//! (`privacy.research_reserve` of the region file), which rounds may never spend.

use kwm_schemas::region::Rho;
use time::Date;

use crate::app::audit_trail::entry;
use crate::app::operator::Desk;
use crate::audit::AuditAction;
use crate::store::{NewProject, Project, StoreError};

/// The scope of a researcher's token: `project:<id>`.
pub fn project_scope(id: &str) -> String {
    format!("project:{id}")
}

/// The project a researcher's scope names.
pub fn project_of_scope(scope: &str) -> Option<&str> {
    scope
        .strip_prefix("project:")
        .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// Registers a research project with its own budget. Its rho is at most the region's research
/// reserve (what research may spend of any one data year), and its last day is not past.
pub async fn add_project(
    desk: Desk<'_>,
    name: &str,
    purpose: &str,
    rho: Rho,
    expires_on: Date,
) -> anyhow::Result<Project> {
    let name = name.trim();
    let purpose = purpose.trim();
    anyhow::ensure!(!name.is_empty(), "--name: a project needs a name");
    anyhow::ensure!(
        !purpose.is_empty(),
        "--purpose: say what the project studies (it is on the audit chain and in every answer's log)"
    );
    let rho_nanos = rho.to_nanos().filter(|n| *n > 0).ok_or_else(|| {
        anyhow::anyhow!("--rho {rho}: a positive number of at most nine decimals")
    })?;
    let reserve = desk.region.privacy.research_reserve;
    let reserve_nanos = reserve.and_then(|r| r.to_nanos()).unwrap_or(0);
    if rho_nanos > reserve_nanos {
        anyhow::bail!(
            "--rho {rho}: more than research may spend of any data year in region {} \
             (privacy.research_reserve = {}); give the project at most that",
            desk.region.code,
            reserve.map_or_else(
                || "0: the region keeps nothing for research".into(),
                |r| r.to_string()
            )
        );
    }
    let today = desk.clock.now().date();
    anyhow::ensure!(
        expires_on >= today,
        "--expires {expires_on}: that day has passed"
    );
    let project = NewProject {
        name: name.to_string(),
        purpose: purpose.to_string(),
        rho_nanos,
        expires_on,
        created_at: desk.clock.now(),
    };
    let actor = desk.actor.clone();
    let record = move |p: &Project| {
        entry(
            &actor,
            AuditAction::ProjectRegistered,
            format!("project {}", p.id),
            None,
            &serde_json::json!({
                "id": p.id,
                "name": p.name,
                "purpose": p.purpose,
                "rho_nanos": p.rho_nanos,
                "expires_on": p.expires_on.to_string(),
            }),
        )
    };
    Ok(desk.store.put_project_recorded(&project, &record).await?)
}

/// Closes a project: it is answered nothing from then on.
pub async fn close_project(desk: Desk<'_>, id: &str) -> anyhow::Result<Project> {
    let e = entry(
        desk.actor,
        AuditAction::ProjectClosed,
        format!("project {id}"),
        None,
        &serde_json::json!({ "id": id }),
    );
    match desk
        .store
        .close_project_recorded(id, desk.clock.now(), &e)
        .await
    {
        Ok(()) => {}
        Err(StoreError::NotFound) => {
            anyhow::bail!("there is no project {id}; `admin project list` shows them")
        }
        Err(e) => return Err(e.into()),
    }
    desk.store
        .get_project(id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("project {id} vanished"))
}

/// Rho in nano-units as a decimal, for people.
pub fn rho_text(nanos: i64) -> String {
    Rho::from_nanos(nanos).map_or_else(|| "0".into(), |r| r.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scope_names_its_project() {
        assert_eq!(project_of_scope(&project_scope("p12")), Some("p12"));
        assert_eq!(project_of_scope("project:"), None);
        assert_eq!(project_of_scope("project:p1; drop"), None);
        assert_eq!(project_of_scope("p1"), None);
        assert_eq!(rho_text(200_000_000), "0.2");
    }
}
