//! The dashboard in a real browser: headless Chromium through WebDriver, a screenshot of every view
//! and axe-core on every view. One binary: `views` tests the pages per role, `harness` the browser
//! harness itself.

mod browser;
mod harness;
// The end-to-end tests' service and SDK helpers, shared rather than copied; this binary uses a part.
#[allow(dead_code)]
#[path = "../e2e/helpers.rs"]
mod helpers;
mod views;
