//! The dashboard: server-rendered pages for the people the monitor serves, beside the API. A
//! municipality sees its own figures against the region's (`/gemeente/GM0748`), the region team every
//! municipality, its rounds and its privacy budget (`/regio`), a provider its own scores against the
//! benchmark, its batches and its audit entries (`/aanbieder`).
//!
//! Pages read published rounds only: they never compute a figure or charge the budget. The one
//! exception is the region's explicit publish form, which calls the same use case as the API. No
//! script runs: charts are SVG drawn here, styling is one served stylesheet, and every page is sent
//! under a Content-Security-Policy that allows nothing else.

pub mod charts;
pub mod i18n;
pub mod pages;
pub mod session;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use kwm_schemas::problem::ProblemType;

use crate::app::error::ApiError;
use crate::http::dashboard::i18n::Lang;
use crate::http::startup::AppState;

pub use session::SessionSettings;

/// Every page's policy: styles and images from this site only, forms post here only, no script, no
/// framing, no plugins, no base override.
pub const PAGE_CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; \
     form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const STYLESHEET: &str = include_str!("dashboard.css");

/// The dashboard's routes (merged into the API's router, under its middleware).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(session::get_root))
        .route("/inloggen", post(session::post_sign_in))
        .route("/uitloggen", post(session::post_sign_out))
        .route("/taal", get(i18n::switch))
        .route("/uitleg", get(pages::explainer))
        .route("/static/dashboard.css", get(stylesheet))
        .route("/gemeente/{code}", get(pages::municipality))
        .route(
            "/gemeente/{code}/download/{file}",
            get(pages::municipality_download),
        )
        .route("/regio", get(pages::region))
        .route("/regio/download/{file}", get(pages::region_download))
        .route("/regio/rondes", get(pages::rounds).post(pages::publish))
        .route("/regio/privacy", get(pages::privacy))
        .route("/aanbieder", get(pages::provider))
        .route("/aanbieder/download/{file}", get(pages::provider_download))
}

async fn stylesheet() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/css; charset=utf-8"),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=3600"),
            ),
        ],
        STYLESHEET,
    )
        .into_response()
}

/// Why a page is not shown.
#[derive(Debug)]
pub enum PageError {
    /// Nobody is signed in: to the sign-in form.
    SignIn,
    /// A form without a valid CSRF field, or unreadable.
    BadForm,
    /// The signed-in person may not see this; the reason in both languages.
    Forbidden {
        nl: String,
        en: String,
        /// The session, for the audit chain's refusal entry.
        refusal: Option<crate::http::forbidden::SessionRefusal>,
    },
    NotFound {
        nl: String,
        en: String,
    },
    /// What the use case answered.
    Api(ApiError),
}

impl From<ApiError> for PageError {
    fn from(e: ApiError) -> Self {
        Self::Api(e)
    }
}

impl From<crate::store::StoreError> for PageError {
    fn from(e: crate::store::StoreError) -> Self {
        Self::Api(e.into())
    }
}

impl PageError {
    /// The error page in `lang`, with the status that fits.
    pub fn into_response_in(self, lang: Lang) -> Response {
        let (status, title, detail, refusal) = match self {
            Self::SignIn => return session::see_other("/"),
            Self::BadForm => (
                StatusCode::BAD_REQUEST,
                lang.t("Formulier verlopen", "Form expired"),
                lang.t(
                    "Dit formulier is verlopen of kwam niet van deze site. Laad de pagina opnieuw en probeer het nog eens.",
                    "This form has expired or did not come from this site. Reload the page and try again.",
                )
                .to_string(),
                None,
            ),
            Self::Forbidden { nl, en, refusal } => (
                StatusCode::FORBIDDEN,
                lang.t("Geen toegang", "No access"),
                lang.pick(&nl, &en).to_string(),
                refusal,
            ),
            Self::NotFound { nl, en } => (
                StatusCode::NOT_FOUND,
                lang.t("Niet gevonden", "Not found"),
                lang.pick(&nl, &en).to_string(),
                None,
            ),
            Self::Api(e) => {
                let p = e.to_problem();
                if matches!(e, ApiError::Internal(_)) {
                    tracing::error!(error = format!("{e}"), "a dashboard page failed");
                }
                let status = StatusCode::from_u16(p.status)
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                (status, lang.t("Dat lukte niet", "That did not work"), p.detail, None)
            }
        };
        let mut res = pages::html(status, pages::error_page(lang, title, &detail));
        if status == StatusCode::FORBIDDEN {
            // The forbidden-call audit reads these (as it reads an API problem's type).
            res.extensions_mut().insert(ProblemType::Forbidden);
            if let Some(r) = refusal {
                res.extensions_mut().insert(r);
            }
        }
        res
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        // Without the request's language at hand: Dutch, the dashboard's default. Handlers that
        // know the language answer with `into_response_in`.
        self.into_response_in(Lang::Nl)
    }
}
