//! HTTP: the dashboard's pages (`dashboard`), the router and start-up (`startup`, the only module that knows the whole application), the
//! routes and the OpenAPI document, the auth extractors, the middleware (security headers, rate limit,
//! the forbidden-call audit, metrics) and the problem mapping. Handlers parse the request, call a use
//! case in `app`, and render its answer. Nothing outside `http` imports it but the composition roots
//! (`main`, `cli`, `demo`).

pub mod auth;
pub mod dashboard;
pub mod forbidden;
pub mod middleware;
pub mod problem;
pub mod ratelimit;
pub mod routes;
pub mod server;
pub mod startup;
