//! The dashboard's two languages: Dutch by default, English on request (a cookie set by the switch in
//! every page's header). Texts live beside the markup that shows them, as `lang.t("nl", "en")` pairs,
//! so that no page can miss a translation. Figures are written the way each language writes them.

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use kwm_schemas::release::Figure;
use serde::Deserialize;
use time::OffsetDateTime;

use crate::http::dashboard::session::{cookie, see_other};

/// The cookie that keeps the chosen language (a preference, not a secret).
pub const LANG_COOKIE: &str = "kwm_lang";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Nl,
    En,
}

impl Lang {
    /// The text in this language.
    pub fn t(self, nl: &'static str, en: &'static str) -> &'static str {
        match self {
            Self::Nl => nl,
            Self::En => en,
        }
    }

    /// The `lang` attribute of the page.
    pub fn code(self) -> &'static str {
        match self {
            Self::Nl => "nl",
            Self::En => "en",
        }
    }

    pub fn other(self) -> Self {
        match self {
            Self::Nl => Self::En,
            Self::En => Self::Nl,
        }
    }

    /// A released figure as this language writes it: `63,4` in Dutch, `63.4` in English. The text of
    /// the exact figure, never a float.
    pub fn figure(self, f: Figure) -> String {
        let text = f.to_string();
        match self {
            Self::Nl => text.replace('.', ","),
            Self::En => text,
        }
    }

    /// A whole number with thousands grouped (`12.345` in Dutch, `12,345` in English).
    pub fn count(self, n: u64) -> String {
        let digits = n.to_string();
        let sep = match self {
            Self::Nl => '.',
            Self::En => ',',
        };
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(sep);
            }
            out.push(c);
        }
        out
    }

    /// A moment as a date and time in UTC.
    pub fn moment(self, t: OffsetDateTime) -> String {
        let t = t.to_offset(time::UtcOffset::UTC);
        match self {
            Self::Nl => format!(
                "{}-{:02}-{} {:02}:{:02} UTC",
                t.day(),
                u8::from(t.month()),
                t.year(),
                t.hour(),
                t.minute()
            ),
            Self::En => format!(
                "{}-{:02}-{:02} {:02}:{:02} UTC",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute()
            ),
        }
    }

    /// A label in this language out of a Dutch and an English one.
    pub fn pick<'a>(self, nl: &'a str, en: &'a str) -> &'a str {
        match self {
            Self::Nl => nl,
            Self::En => en,
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Lang {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(match cookie(&parts.headers, LANG_COOKIE) {
            Some("en") => Self::En,
            _ => Self::Nl,
        })
    }
}

#[derive(Debug, Deserialize)]
pub struct Switch {
    #[serde(default)]
    taal: String,
    #[serde(default)]
    terug: String,
}

/// A path of this site to go back to: absolute, not protocol-relative, no backslashes or controls;
/// anything else goes to `/`, so the switch cannot send anyone elsewhere.
pub fn local_path(p: &str) -> &str {
    let ok = p.starts_with('/')
        && !p.starts_with("//")
        && !p.contains('\\')
        && p.len() <= 512
        && p.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        p
    } else {
        "/"
    }
}

/// `GET /taal?taal=en&terug=/regio`: keeps the language for a year and goes back.
pub async fn switch(
    query: Result<Query<Switch>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return see_other("/");
    };
    let lang = if q.taal == "en" { "en" } else { "nl" };
    let mut res = see_other(local_path(&q.terug));
    res.headers_mut().append(
        header::SET_COOKIE,
        HeaderValue::from_str(&format!(
            "{LANG_COOKIE}={lang}; Path=/; Max-Age=31536000; SameSite=Lax"
        ))
        .unwrap_or_else(|_| HeaderValue::from_static("kwm_lang=nl; Path=/")),
    );
    res.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_written_as_each_language_writes_them() {
        assert_eq!(Lang::Nl.figure(Figure::Tenths(634)), "63,4");
        assert_eq!(Lang::En.figure(Figure::Tenths(634)), "63.4");
        assert_eq!(Lang::Nl.figure(Figure::Whole(35)), "35");
        assert_eq!(Lang::Nl.count(12345), "12.345");
        assert_eq!(Lang::En.count(1234567), "1,234,567");
        assert_eq!(Lang::En.count(999), "999");
    }

    #[test]
    fn the_switch_goes_back_to_this_site_only() {
        assert_eq!(
            local_path("/gemeente/GM0748?periode=2025"),
            "/gemeente/GM0748?periode=2025"
        );
        for bad in [
            "//evil.example/",
            "https://evil.example/",
            "/\\evil",
            "",
            "regio",
            "/a b",
        ] {
            assert_eq!(local_path(bad), "/", "{bad:?}");
        }
    }
}
