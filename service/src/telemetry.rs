//! Log set-up. Log lines carry route, status, ids of batches and providers: never a token, a pseudonym or
//! a record value.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// What is logged unless `RUST_LOG` says otherwise.
pub const DEFAULT_FILTER: &str = "info,sqlx=warn,tower_http=info";

/// Installs the global subscriber; `RUST_LOG` overrides `default_filter`. Safe to call twice.
pub fn init(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour_on_stderr())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
    std::panic::set_hook(Box::new(log_panic));
}

/// Colour codes only for a person at a terminal: never in a file, a pipe or a log collector, and
/// not when `NO_COLOR` is set (no-color.org).
pub fn colour_on_stderr() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// A panic as a log line instead of the default hook's message on stderr: where it happened, and its
/// message only when that is a literal of the code (`panic!("...")`, `unreachable!`); a formatted
/// message (an `unwrap` on an error, an `expect` with its cause) may carry a value, so it is withheld.
fn log_panic(info: &std::panic::PanicHookInfo<'_>) {
    let location = info
        .location()
        .map(|l| format!("{}:{}", l.file(), l.line()))
        .unwrap_or_default();
    match info.payload().downcast_ref::<&'static str>() {
        Some(message) => tracing::error!(%location, message, "panic"),
        None => {
            tracing::error!(%location, "panic (a formatted message, withheld: it may hold data)")
        }
    }
}

/// The request URI as logs may show it: every path segment that is a pseudonym (64 hex digits, as in
/// `DELETE /v1/trajectories/{trajectory}`) replaced by `{pseudonym}`.
pub fn loggable_uri(uri: &axum::http::Uri) -> String {
    let is_pseudonym = |seg: &str| seg.len() == 64 && seg.bytes().all(|b| b.is_ascii_hexdigit());
    let path: Vec<&str> = uri
        .path()
        .split('/')
        .map(|seg| {
            if is_pseudonym(seg) {
                "{pseudonym}"
            } else {
                seg
            }
        })
        .collect();
    match uri.query() {
        Some(q) => format!("{}?{q}", path.join("/")),
        None => path.join("/"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudonyms_never_reach_a_logged_uri() {
        let hex64 = "0a".repeat(32);
        let uri: axum::http::Uri = format!("/v1/trajectories/{hex64}?x=1")
            .parse()
            .expect("uri");
        assert_eq!(loggable_uri(&uri), "/v1/trajectories/{pseudonym}?x=1");
        let uri: axum::http::Uri = "/v1/batches/abc".parse().expect("uri");
        assert_eq!(loggable_uri(&uri), "/v1/batches/abc");
    }
}
