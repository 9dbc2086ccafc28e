//! Research access: projects with their own budgets, registered and closed by the operator; their
//! researchers' queries, answered from the release index with the research core and charged to the
//! project in the transaction that stores the answer; estimates that spend nothing; and the project's
//! log. A project's rho is carved from the data years' research reserve
//! (`privacy.research_reserve` of the region file), which rounds may never spend.

use std::sync::Arc;

use kwm_schemas::api::{
    ExtractList, ExtractRequest, ExtractStatus, ResearchAnswered, ResearchEstimated, ResearchLog,
    ResearchLogLine, ResearchQueryRequest,
};
use kwm_schemas::problem::ProblemType;
use kwm_schemas::region::Rho;
use kwm_schemas::RegionConfig;
use rand::SeedableRng;
use time::Date;
use uuid::Uuid;

use crate::app::access::Caller;
use crate::app::audit_trail::{api_actor, entry};
use crate::app::error::ApiError;
use crate::app::operator::Desk;
use crate::audit::AuditAction;
use crate::clock::SharedClock;
use crate::index::ReleaseIndex;
use crate::keys::PseudonymKey;
use crate::noise::OsNoise;
use crate::research::{Query, ResearchInput};
use crate::store::{NewProject, NewResearchAnswer, Project, PutResearch, Store, StoreError};

/// The rho of a query that names none.
pub const DEFAULT_QUERY_RHO_NANOS: i64 = 10_000_000;

/// What research queries need.
#[derive(Debug, Clone)]
pub struct ResearchDeps {
    pub store: Arc<dyn Store>,
    pub index: Arc<ReleaseIndex>,
    pub region: Arc<RegionConfig>,
    pub pseudonym_key: Arc<PseudonymKey>,
    pub clock: SharedClock,
}

/// The project a researcher's token is for, as stored; `forbidden` for any other caller, and for a
/// project that is closed or past its last day.
async fn callers_project(deps: &ResearchDeps, caller: &Caller) -> Result<Project, ApiError> {
    caller.require(&[kwm_schemas::Role::Researcher])?;
    let id = caller
        .scope
        .as_deref()
        .and_then(project_of_scope)
        .ok_or_else(|| ApiError::forbidden("this token names no research project"))?;
    deps.store
        .get_project(id)
        .await?
        .ok_or_else(|| ApiError::forbidden(format!("project {id} is not registered")))
}

fn open_project(deps: &ResearchDeps, p: &Project) -> Result<(), ApiError> {
    if p.closed_at.is_some() {
        return Err(ApiError::forbidden(format!(
            "project {} is closed: it is answered nothing more",
            p.id
        )));
    }
    if deps.clock.now().date() > p.expires_on {
        return Err(ApiError::forbidden(format!(
            "project {} ended on {}: it is answered nothing more; the operator can register a new one",
            p.id, p.expires_on
        )));
    }
    Ok(())
}

/// The query and its rho, parsed; a query the dialect refuses is a bad request naming what and where.
fn parse(deps: &ResearchDeps, req: &ResearchQueryRequest) -> Result<(Query, Rho, i64), ApiError> {
    let query = Query::parse(&req.sql, &deps.region)
        .map_err(|e| ApiError::new(ProblemType::BadRequest, e.to_string()))?;
    let rho = match req.rho {
        Some(r) => r,
        None => Rho::from_nanos(DEFAULT_QUERY_RHO_NANOS)
            .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("the default rho")))?,
    };
    let nanos = rho.to_nanos().filter(|n| *n > 0).ok_or_else(|| {
        ApiError::new(
            ProblemType::BadRequest,
            format!("rho {rho}: a positive number of at most nine decimals"),
        )
    })?;
    Ok((query, rho, nanos))
}

fn research_error(e: crate::research::ResearchError) -> ApiError {
    match e {
        crate::research::ResearchError::Plan(why) => ApiError::new(
            ProblemType::BadRequest,
            format!("no answer can be planned for this query at this rho: {why}"),
        ),
        other => ApiError::Internal(anyhow::anyhow!("{other}")),
    }
}

/// Answers a researcher's query and charges it to the project, in the transaction that stores the
/// answer and its audit entry. A query that cannot be answered or paid for charges nothing and
/// releases nothing.
pub async fn ask(
    deps: &ResearchDeps,
    caller: &Caller,
    req: &ResearchQueryRequest,
) -> Result<ResearchAnswered, ApiError> {
    let project = callers_project(deps, caller).await?;
    open_project(deps, &project)?;
    let (query, rho, rho_nanos) = parse(deps, req)?;
    let left = project.rho_nanos - project.spent_nanos;
    if rho_nanos > left {
        return Err(project_exhausted(
            &project.id,
            project.spent_nanos,
            project.rho_nanos,
        ));
    }
    deps.index.sync(deps.store.as_ref()).await?;
    let answer = {
        let index = deps.index.clone();
        let region = deps.region.clone();
        let order_key = deps
            .pseudonym_key
            .derive(crate::app::rounds::ORDER_KEY_LABEL);
        let query = query.clone();
        tokio::task::spawn_blocking(move || {
            let data = index.read();
            let input = ResearchInput {
                region: &region,
                shards: data.shards(),
                order_key: &order_key,
            };
            crate::research::answer(&query, &input, rho, &mut OsNoise::new())
        })
        .await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("the answer's computation panicked: {e}")))?
        .map_err(research_error)?
    };
    let body = serde_json::to_value(&answer)
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("serialising an answer: {e}")))?;
    let id = Uuid::now_v7();
    let actor = api_actor(caller);
    let mut years: Vec<u16> = query.window().years().collect();
    years.sort_unstable();
    years.dedup();
    let reserve_nanos = deps
        .region
        .privacy
        .research_reserve
        .and_then(|r| r.to_nanos())
        .unwrap_or(0);
    let details = serde_json::json!({
        "answer": id,
        "project": project.id,
        "query": req.sql,
        "rho_nanos": rho_nanos,
        "years": years,
    });
    let outcome = deps
        .store
        .put_research_answer(&NewResearchAnswer {
            id,
            project: project.id.clone(),
            kind: crate::store::ResearchKind::Query,
            statement: req.sql.clone(),
            actor: actor.describe(),
            rho_nanos,
            years,
            reserve_nanos,
            at: deps.clock.now(),
            answer: body,
            audit: entry(
                &actor,
                AuditAction::ResearchAnswer,
                format!("project {}: query {id}", project.id),
                None,
                &details,
            ),
        })
        .await?;
    match outcome {
        PutResearch::Charged {
            audit_seq,
            left_nanos,
        } => Ok(ResearchAnswered {
            id,
            project: project.id,
            rho_charged: rho,
            project_left: rho_text(left_nanos),
            audit_seq,
            answer,
        }),
        PutResearch::ProjectExhausted {
            spent_nanos,
            rho_nanos,
        } => Err(project_exhausted(&project.id, spent_nanos, rho_nanos)),
        PutResearch::YearExhausted {
            year,
            spent_nanos,
            reserve_nanos,
        } => Err(ApiError::new(
            ProblemType::BudgetExhausted,
            format!(
                "research has spent rho {} of data year {year}, which keeps {} for research; this \
                 answer would pass it, so nothing was answered or charged. A query over other years \
                 may still be answered.",
                rho_text(spent_nanos),
                rho_text(reserve_nanos)
            ),
        )),
        PutResearch::Closed | PutResearch::Expired { .. } | PutResearch::NoProject => Err(
            ApiError::forbidden(format!("project {} is answered nothing more", project.id)),
        ),
    }
}

fn project_exhausted(id: &str, spent: i64, rho: i64) -> ApiError {
    ApiError::new(
        ProblemType::BudgetExhausted,
        format!(
            "project {id} has spent rho {} of its {}; this answer would pass it, so nothing was \
             answered or charged. Ask with a smaller rho (wider intervals) or a coarser query; \
             POST /v1/research/queries/estimate tells the cost first.",
            rho_text(spent),
            rho_text(rho)
        ),
    )
}

/// What a query would cost and how wide its intervals would be, from the query and the region file
/// alone: nothing is read, drawn or charged.
pub async fn estimate(
    deps: &ResearchDeps,
    caller: &Caller,
    req: &ResearchQueryRequest,
) -> Result<ResearchEstimated, ApiError> {
    let project = callers_project(deps, caller).await?;
    let (query, rho, rho_nanos) = parse(deps, req)?;
    let estimate = crate::research::estimate(&query, &deps.region, rho).map_err(research_error)?;
    let left = project.rho_nanos - project.spent_nanos;
    Ok(ResearchEstimated {
        affordable: project.closed_at.is_none()
            && deps.clock.now().date() <= project.expires_on
            && rho_nanos <= left,
        project: project.id,
        project_left: rho_text(left),
        estimate,
    })
}

/// The project's budget and its log.
pub async fn log(deps: &ResearchDeps, caller: &Caller) -> Result<ResearchLog, ApiError> {
    let p = callers_project(deps, caller).await?;
    let mut entries: Vec<ResearchLogLine> = deps
        .store
        .list_research_log(&p.id)
        .await?
        .into_iter()
        .map(|e| ResearchLogLine {
            id: e.id,
            kind: e.kind.as_str().into(),
            statement: e.statement,
            actor: e.actor,
            rho: rho_text(e.rho_nanos),
            at: e.at,
            audit_seq: e.audit_seq,
        })
        .collect();
    // Extracts spend no rho (they are not differentially private): each is in the log as asked for,
    // and again once the operator approved and produced it.
    for x in deps.store.list_extracts(Some(&p.id)).await? {
        let statement = x.request.to_string();
        entries.push(ResearchLogLine {
            id: x.id,
            kind: "extract-requested".into(),
            statement: statement.clone(),
            actor: x.requested_by.clone(),
            rho: "0".into(),
            at: x.requested_at,
            audit_seq: 0,
        });
        if let Some((by, at, _)) = &x.produced {
            entries.push(ResearchLogLine {
                id: x.id,
                kind: "extract-produced".into(),
                statement,
                actor: by.clone(),
                rho: "0".into(),
                at: *at,
                audit_seq: 0,
            });
        }
    }
    entries.sort_by_key(|e| e.at);
    Ok(ResearchLog {
        rho: rho_text(p.rho_nanos),
        spent: rho_text(p.spent_nanos),
        left: rho_text(p.rho_nanos - p.spent_nanos),
        expires_on: p.expires_on.to_string(),
        closed: p.closed_at.is_some(),
        project: p.id,
        name: p.name,
        purpose: p.purpose,
        entries,
    })
}

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

/// What a stored extract looks like to its project.
fn extract_status(x: &crate::store::ExtractRecord) -> Result<ExtractStatus, ApiError> {
    let request: ExtractRequest = serde_json::from_value(x.request.clone())
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("a stored extract request: {e}")))?;
    let report = x
        .produced
        .as_ref()
        .map(|(_, _, r)| serde_json::from_value(r.clone()))
        .transpose()
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("a stored risk report: {e}")))?;
    Ok(ExtractStatus {
        id: x.id,
        project: x.project.clone(),
        state: if x.produced.is_some() {
            "produced"
        } else {
            "requested"
        }
        .into(),
        request,
        requested_at: x.requested_at,
        download: x
            .produced
            .as_ref()
            .map(|_| format!("/v1/research/extracts/{}.csv", x.id)),
        report,
    })
}

/// Refuses a request the extract core would refuse, or one below the region's k, before anything is
/// stored.
fn check_extract(region: &RegionConfig, req: &ExtractRequest) -> Result<(), ApiError> {
    let bad = |d: String| ApiError::new(ProblemType::BadRequest, d);
    crate::extract::check_request(&req.spec).map_err(|e| bad(e.to_string()))?;
    if req.spec.k < region.policy.k {
        return Err(bad(format!(
            "k {}: an extract of region {} needs at least k {} children in every class, as its \
             releases do",
            req.spec.k, region.code, region.policy.k
        )));
    }
    if req.from_year > req.to_year
        || !crate::store::DATA_YEARS.contains(&req.from_year)
        || !crate::store::DATA_YEARS.contains(&req.to_year)
    {
        return Err(bad(format!(
            "from_year {} to_year {}: a range of calendar years, the first not after the last",
            req.from_year, req.to_year
        )));
    }
    Ok(())
}

/// A project asks for an extract: checked, stored as `requested`, on the audit chain. Nothing is
/// produced until the operator approves it.
pub async fn request_extract(
    deps: &ResearchDeps,
    caller: &Caller,
    req: &ExtractRequest,
) -> Result<ExtractStatus, ApiError> {
    let project = callers_project(deps, caller).await?;
    open_project(deps, &project)?;
    check_extract(&deps.region, req)?;
    let actor = api_actor(caller);
    let record = crate::store::ExtractRecord {
        id: Uuid::now_v7(),
        project: project.id.clone(),
        request: serde_json::to_value(req)
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("serialising a request: {e}")))?,
        requested_by: actor.describe(),
        requested_at: deps.clock.now(),
        produced: None,
    };
    let e = entry(
        &actor,
        AuditAction::ExtractRequested,
        format!("project {}: extract {}", project.id, record.id),
        None,
        &record.request,
    );
    deps.store.put_extract_request_recorded(&record, &e).await?;
    extract_status(&record)
}

/// The caller's project's extracts.
pub async fn list_extracts(deps: &ResearchDeps, caller: &Caller) -> Result<ExtractList, ApiError> {
    let project = callers_project(deps, caller).await?;
    let extracts = deps
        .store
        .list_extracts(Some(&project.id))
        .await?
        .iter()
        .map(extract_status)
        .collect::<Result<_, _>>()?;
    Ok(ExtractList { extracts })
}

/// A produced extract of the caller's project, as CSV; another project's is not found.
pub async fn extract_csv(
    deps: &ResearchDeps,
    caller: &Caller,
    id: Uuid,
) -> Result<Vec<u8>, ApiError> {
    let project = callers_project(deps, caller).await?;
    let mine = deps
        .store
        .list_extracts(Some(&project.id))
        .await?
        .into_iter()
        .any(|x| x.id == id && x.produced.is_some());
    if !mine {
        return Err(ApiError::not_found(format!(
            "your project has no produced extract {id}"
        )));
    }
    deps.store
        .get_extract_csv(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no extract {id}")))
}

/// The operator approves an extract: it is built now from the stored trajectories of its years, with
/// client ids drawn from the OS's generator, and kept with its risk report; the approval is on the
/// audit chain in the same transaction. Returns the report.
pub async fn approve_extract(desk: Desk<'_>, id: Uuid) -> anyhow::Result<ExtractStatus> {
    let Some(x) = desk
        .store
        .list_extracts(None)
        .await?
        .into_iter()
        .find(|x| x.id == id)
    else {
        anyhow::bail!("there is no extract {id}; `admin extract list` shows them");
    };
    anyhow::ensure!(
        x.produced.is_none(),
        "extract {id} was approved and produced before"
    );
    let req: ExtractRequest = serde_json::from_value(x.request.clone())?;
    check_extract(desk.region, &req).map_err(|e| anyhow::anyhow!("{}", e.to_string_detail()))?;
    let from = kwm_schemas::Month::new(req.from_year, 1)?;
    let to = kwm_schemas::Month::new(req.to_year, 12)?;
    let rows = desk.store.list_trajectories_between(from, to).await?;
    let region = desk.region.clone();
    let spec = req.spec.clone();
    let (report, csv) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let mut rng = rand::rngs::StdRng::from_os_rng();
        let extract = crate::extract::anonymise(&rows, &spec, &region, &mut rng)?;
        let mut csv = Vec::new();
        crate::extract::to_csv(&extract, &mut csv)?;
        Ok((extract.report, csv))
    })
    .await??;
    let report_json = serde_json::to_value(&report)?;
    let e = entry(
        desk.actor,
        AuditAction::ExtractApproved,
        format!("project {}: extract {id}", x.project),
        None,
        &serde_json::json!({
            "extract": id,
            "report": report_json,
            "sha256": hex::encode(ring::digest::digest(&ring::digest::SHA256, &csv)),
        }),
    );
    desk.store
        .put_extract_produced_recorded(
            id,
            &desk.actor.describe(),
            desk.clock.now(),
            &report_json,
            &csv,
            &e,
        )
        .await?;
    let produced = desk
        .store
        .list_extracts(None)
        .await?
        .into_iter()
        .find(|x| x.id == id)
        .ok_or_else(|| anyhow::anyhow!("extract {id} vanished"))?;
    extract_status(&produced).map_err(|e| anyhow::anyhow!("{}", e.to_string_detail()))
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
