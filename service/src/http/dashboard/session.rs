//! Signing in to the dashboard: a token, typed once into the sign-in form, opens a server-side session.
//! The browser keeps only a random secret in an HttpOnly, SameSite=Strict cookie (`Secure`, under the
//! `__Host-` name, behind TLS); the store keeps only the secret's SHA-256 and the token's id, so
//! revoking the token ends the session. The token itself never reaches a page, a URL or a log.
//!
//! Forms are protected against cross-site requests twice: every cookie is SameSite=Strict, and every
//! form carries a CSRF field the server checks: on the sign-in form the value of a pre-session cookie
//! (double submit), on signed-in forms a value derived from the session secret.

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Form;
use base64::Engine;
use kwm_schemas::Role;
use ring::rand::SecureRandom;
use serde::Deserialize;

use crate::app::access::{token_hash, Caller};
use crate::app::error::ApiError;
use crate::http::dashboard::i18n::Lang;
use crate::http::dashboard::{pages, PageError};
use crate::http::startup::AppState;
use crate::store::NewSession;

/// The session cookie over plain HTTP (a local demo, tests).
pub const SESSION_COOKIE: &str = "kwm_session";
/// The session cookie behind TLS: the `__Host-` prefix makes the browser refuse it unless it is
/// `Secure`, host-only and for `/`, so a sibling domain cannot plant one.
pub const SECURE_SESSION_COOKIE: &str = "__Host-kwm_session";
/// The pre-session cookie the sign-in form's CSRF field must match.
pub const SIGNIN_COOKIE: &str = "kwm_signin";
/// The same behind TLS, under the prefix a sibling domain cannot plant.
pub const SECURE_SIGNIN_COOKIE: &str = "__Host-kwm_signin";

/// How the dashboard's sessions behave, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct SessionSettings {
    /// How long a session lasts after sign-in.
    pub lifetime: time::Duration,
    /// Whether the service is reached over HTTPS only (`strict_transport_security`): cookies are then
    /// always `Secure`. A request forwarded with `X-Forwarded-Proto: https` gets them too.
    pub https_only: bool,
}

/// A signed-in person: the token behind the session, and what its forms need.
#[derive(Debug, Clone)]
pub struct Viewer {
    pub caller: Caller,
    /// The session's key in the store (the secret's SHA-256), for sign-out and the refusal tally.
    pub session_hash: [u8; 32],
    /// The value every signed-in form carries.
    pub csrf: String,
}

impl Viewer {
    /// The municipality a municipality's session is for.
    pub fn municipality(&self) -> Option<&str> {
        (self.caller.role == Role::Municipality)
            .then_some(self.caller.scope.as_deref())
            .flatten()
    }

    /// Where this person starts: their municipality, the region, or their provider page.
    pub fn home(&self) -> String {
        match self.caller.role {
            Role::Municipality => format!("/gemeente/{}", self.municipality().unwrap_or("")),
            Role::Provider => "/aanbieder".into(),
            _ => "/regio".into(),
        }
    }

    /// Checks a form's CSRF field against the session.
    pub fn check_csrf(&self, presented: &str) -> Result<(), PageError> {
        if constant_time_eq(presented.as_bytes(), self.csrf.as_bytes()) {
            Ok(())
        } else {
            Err(PageError::BadForm)
        }
    }
}

/// Equality that takes the same time wherever the first difference is (lengths are not secret).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn random_secret() -> Result<String, ApiError> {
    let mut b = zeroize::Zeroizing::new([0u8; 32]);
    ring::rand::SystemRandom::new()
        .fill(&mut b[..])
        .map_err(|_| ApiError::Internal(anyhow::anyhow!("the OS random generator failed")))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&b[..]))
}

/// The CSRF value of a session: a hash of its secret under a label of its own, so a page shows it
/// without showing the secret.
fn csrf_of(secret: &str) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"kwm-csrf-v1");
    ctx.update(secret.as_bytes());
    hex::encode(ctx.finish().as_ref())
}

/// The value of cookie `name` in a request.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

/// Whether this request reached the service over HTTPS (directly configured, or as the proxy says).
fn secure(settings: &SessionSettings, headers: &HeaderMap) -> bool {
    settings.https_only
        || headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

fn session_cookie_name(secure: bool) -> &'static str {
    if secure {
        SECURE_SESSION_COOKIE
    } else {
        SESSION_COOKIE
    }
}

fn signin_cookie_name(secure: bool) -> &'static str {
    if secure {
        SECURE_SIGNIN_COOKIE
    } else {
        SIGNIN_COOKIE
    }
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Strict, for the whole site, `Secure` behind TLS.
fn set_cookie(name: &str, value: &str, max_age_secs: i64, secure: bool) -> HeaderValue {
    let flags = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/; Max-Age={max_age_secs}; HttpOnly; SameSite=Strict{flags}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("kwm=; Max-Age=0"))
}

/// The session secret a request presents, under the name its transport allows.
fn presented_secret<'a>(settings: &SessionSettings, headers: &'a HeaderMap) -> Option<&'a str> {
    cookie(headers, session_cookie_name(secure(settings, headers))).filter(|s| !s.is_empty())
}

/// The signed-in person of a request, if any: a live session whose token is not revoked.
pub async fn viewer(state: &AppState, headers: &HeaderMap) -> Result<Option<Viewer>, ApiError> {
    let Some(secret) = presented_secret(&state.sessions, headers) else {
        return Ok(None);
    };
    let hash = token_hash(secret);
    let Some(token) = state.store.get_session(&hash, state.clock.now()).await? else {
        return Ok(None);
    };
    if let Err(wait) = state.rate_limiter.check(token.id) {
        return Err(ApiError::RateLimited {
            retry_after: wait.as_secs().max(1),
        });
    }
    tracing::Span::current().record("role", token.role.as_str());
    Ok(Some(Viewer {
        caller: Caller {
            token_id: token.id,
            role: token.role,
            scope: token.scope,
        },
        session_hash: hash,
        csrf: csrf_of(secret),
    }))
}

/// A page that needs a signed-in person sends everyone else to the sign-in form.
impl FromRequestParts<AppState> for Viewer {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, PageError> {
        match viewer(state, &parts.headers).await {
            Ok(Some(v)) => Ok(v),
            Ok(None) => Err(PageError::SignIn),
            Err(e) => Err(PageError::Api(e)),
        }
    }
}

/// `GET /`: the sign-in form, or, signed in, the person's home page.
pub async fn get_root(State(state): State<AppState>, lang: Lang, headers: HeaderMap) -> Response {
    match viewer(&state, &headers).await {
        Ok(Some(v)) => see_other(&v.home()),
        Ok(None) => sign_in_page(&state, lang, &headers, StatusCode::OK, None),
        Err(e) => PageError::Api(e).into_response_in(lang),
    }
}

/// The sign-in form with a fresh pre-session CSRF value (or the one the browser already holds).
fn sign_in_page(
    state: &AppState,
    lang: Lang,
    headers: &HeaderMap,
    status: StatusCode,
    error: Option<&str>,
) -> Response {
    let secure = secure(&state.sessions, headers);
    let held = cookie(headers, signin_cookie_name(secure)).filter(|v| v.len() == 43);
    let value = match held {
        Some(v) => v.to_string(),
        None => match random_secret() {
            Ok(v) => v,
            Err(e) => return PageError::Api(e).into_response_in(lang),
        },
    };
    let mut res = pages::html(status, pages::sign_in(lang, &state.region, &value, error));
    res.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(signin_cookie_name(secure), &value, 3600, secure),
    );
    res
}

#[derive(Debug, Deserialize)]
pub struct SignInForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    csrf: String,
}

/// `POST /inloggen`: checks the token and opens a session (303 to the person's home page).
pub async fn post_sign_in(
    State(state): State<AppState>,
    lang: Lang,
    headers: HeaderMap,
    form: Result<Form<SignInForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Ok(Form(form)) = form else {
        return PageError::BadForm.into_response_in(lang);
    };
    let secure = secure(&state.sessions, &headers);
    let held = cookie(&headers, signin_cookie_name(secure)).unwrap_or_default();
    if held.is_empty() || !constant_time_eq(held.as_bytes(), form.csrf.as_bytes()) {
        return PageError::BadForm.into_response_in(lang);
    }
    let refused =
        |status, nl, en| sign_in_page(&state, lang, &headers, status, Some(lang.t(nl, en)));
    let presented = form.token.trim();
    if presented.is_empty() {
        return refused(
            StatusCode::UNAUTHORIZED,
            "Vul uw token in.",
            "Enter your token.",
        );
    }
    let token = match state.store.get_token(&token_hash(presented)).await {
        Ok(Some(t)) if t.revoked_at.is_none() => t,
        Ok(_) => {
            return refused(
                StatusCode::UNAUTHORIZED,
                "Dit token is onbekend of ingetrokken. Vraag de beheerder van de monitor om een nieuw token.",
                "This token is unknown or revoked. Ask the monitor's operator for a new one.",
            )
        }
        Err(e) => return PageError::Api(e.into()).into_response_in(lang),
    };
    if !matches!(
        token.role,
        Role::Municipality | Role::Region | Role::Provider
    ) {
        return refused(
            StatusCode::FORBIDDEN,
            "Het dashboard is voor gemeenten, de regio en aanbieders. Onderzoekers en beheerders werken met de API en de beheeropdrachten.",
            "The dashboard is for municipalities, the region and providers. Researchers and operators use the API and the operator commands.",
        );
    }
    let secret = match random_secret() {
        Ok(s) => s,
        Err(e) => return PageError::Api(e).into_response_in(lang),
    };
    let now = state.clock.now();
    let session = NewSession {
        session_hash: token_hash(&secret),
        token_id: token.id,
        created_at: now,
        expires_at: now + state.sessions.lifetime,
    };
    if let Err(e) = state.store.put_session(&session).await {
        return PageError::Api(e.into()).into_response_in(lang);
    }
    // Signing in again replaces the browser's earlier session: that one ends on the server too.
    if let Some(old) = presented_secret(&state.sessions, &headers) {
        if let Err(e) = state.store.delete_session(&token_hash(old)).await {
            tracing::warn!(error = %e, "an earlier dashboard session could not be ended");
        }
    }
    let viewer = Viewer {
        caller: Caller {
            token_id: token.id,
            role: token.role,
            scope: token.scope,
        },
        session_hash: session.session_hash,
        csrf: String::new(),
    };
    let mut res = see_other(&viewer.home());
    let h = res.headers_mut();
    h.append(
        header::SET_COOKIE,
        set_cookie(
            session_cookie_name(secure),
            &secret,
            state.sessions.lifetime.whole_seconds(),
            secure,
        ),
    );
    h.append(
        header::SET_COOKIE,
        set_cookie(signin_cookie_name(secure), "", 0, secure),
    );
    res
}

#[derive(Debug, Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// `POST /uitloggen`: ends the session in the store and in the browser.
pub async fn post_sign_out(
    State(state): State<AppState>,
    headers: HeaderMap,
    viewer: Viewer,
    form: Result<Form<CsrfForm>, axum::extract::rejection::FormRejection>,
) -> Result<Response, PageError> {
    let Ok(Form(form)) = form else {
        return Err(PageError::BadForm);
    };
    viewer.check_csrf(&form.csrf)?;
    state
        .store
        .delete_session(&viewer.session_hash)
        .await
        .map_err(|e| PageError::Api(e.into()))?;
    let secure = secure(&state.sessions, &headers);
    let mut res = see_other("/");
    res.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(session_cookie_name(secure), "", 0, secure),
    );
    Ok(res)
}

/// A `303 See Other` to a path of this site.
pub fn see_other(path: &str) -> Response {
    let location = HeaderValue::from_str(path).unwrap_or_else(|_| HeaderValue::from_static("/"));
    (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cookie_is_found_by_its_exact_name() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("kwm_lang=en; xkwm_session=wrong; kwm_session=abc"),
        );
        h.append(header::COOKIE, HeaderValue::from_static("kwm_signin=s1"));
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&h, SIGNIN_COOKIE), Some("s1"));
        assert_eq!(cookie(&h, SECURE_SESSION_COOKIE), None);
    }

    #[test]
    fn behind_tls_the_session_cookie_is_secure_and_host_only() {
        let settings = SessionSettings {
            lifetime: time::Duration::hours(8),
            https_only: false,
        };
        let mut h = HeaderMap::new();
        assert!(!secure(&settings, &h));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        assert!(secure(&settings, &h));
        let v = set_cookie(session_cookie_name(true), "s", 60, true);
        let v = v.to_str().expect("ascii");
        assert!(v.starts_with("__Host-kwm_session=s; Path=/;"), "{v}");
        for flag in ["HttpOnly", "SameSite=Strict", "Secure", "Max-Age=60"] {
            assert!(v.contains(flag), "{v} lacks {flag}");
        }
        assert_eq!(signin_cookie_name(true), "__Host-kwm_signin");
        // A plain-HTTP cookie under the secure name is not read behind TLS.
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("kwm_session=planted"),
        );
        assert_eq!(presented_secret(&settings, &h), None);
    }

    #[test]
    fn the_csrf_value_is_the_sessions_and_not_its_secret() {
        let a = csrf_of("secret-a");
        assert_eq!(a, csrf_of("secret-a"));
        assert_ne!(a, csrf_of("secret-b"));
        assert!(!a.contains("secret-a"));
        assert!(constant_time_eq(
            a.as_bytes(),
            csrf_of("secret-a").as_bytes()
        ));
        assert!(!constant_time_eq(a.as_bytes(), &a.as_bytes()[1..]));
    }
}
