//! The middleware that records `forbidden` answers in the audit chain (at most one entry per token and
//! window, the rest counted: `app::audit_trail::RefusalTally`).

use axum::extract::{MatchedPath, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;
use kwm_schemas::problem::ProblemType;
use kwm_schemas::Role;

use crate::app::access::token_hash;
use crate::app::audit_trail::{append_best_effort, entry, AlreadyAudited};
use crate::app::rounds::Actor;
use crate::audit::AuditAction;
use crate::http::startup::AppState;

/// Middleware: records `forbidden` answers of the role and scope checks (the extractors and the
/// handlers alike) as `forbidden` entries naming the caller's token id and the route template (never
/// the concrete path, which may hold a pseudonym), at most one per token and window plus one counted
/// entry for the rest ([`RefusalTally`]). The token is looked up only when a window opens.
pub async fn audit_forbidden(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = crate::http::middleware::method_label(req.method());
    let presented = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(|t| token_hash(t.trim()));
    let res = next.run(req).await;
    if res.extensions().get::<ProblemType>() != Some(&ProblemType::Forbidden)
        || res.extensions().get::<AlreadyAudited>().is_some()
    {
        return res;
    }
    // A dashboard page names its session instead of a bearer token.
    let session = res.extensions().get::<SessionRefusal>().cloned();
    let Some(hash) = presented.or(session.as_ref().map(|s| s.key)) else {
        return res;
    };
    let subject = format!("{method} {route}");
    if !state
        .refusals
        .admit(hash, &subject, std::time::Instant::now())
    {
        return res;
    }
    let (token_id, role, scope) = match session {
        Some(s) if presented.is_none() => (s.caller.token_id, s.caller.role, s.caller.scope),
        _ => match state.store.get_token(&hash).await {
            Ok(Some(t)) => (t.id, t.role, t.scope),
            Ok(None) => return res,
            Err(e) => {
                state.metrics.observe_audit_failure(false);
                tracing::error!(error = %e, "the audit entry of a forbidden call could not be written");
                return res;
            }
        },
    };
    let actor = Actor {
        role: role.as_str().into(),
        id: format!("token {token_id}"),
    };
    let provider = match role {
        Role::Provider => scope.as_deref().and_then(|s| s.parse().ok()),
        _ => None,
    };
    state.refusals.identify(hash, actor.clone(), provider);
    let e = entry(
        &actor,
        AuditAction::Forbidden,
        subject.clone(),
        provider,
        &subject,
    );
    append_best_effort(state.recorder(), e).await;
    res
}

/// A dashboard page's refusal, carried on its response for [`audit_forbidden`]: the session's key (the
/// tally counts per session as it counts per token) and the token behind it.
#[derive(Debug, Clone)]
pub struct SessionRefusal {
    pub key: [u8; 32],
    pub caller: crate::app::access::Caller,
}
