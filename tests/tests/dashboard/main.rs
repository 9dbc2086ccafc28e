//! The dashboard in a real browser: headless Chromium through WebDriver, a screenshot of every view
//! and axe-core on every view. One binary, modules by view; `harness` tests the browser harness itself.

mod browser;
mod harness;
