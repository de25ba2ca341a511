//! One guard per request: a panic in the core while serving a request
//! becomes that request's `EIO` and one log line, and the mount keeps
//! serving. fuser does not catch panics: without this, the request would
//! never be answered (its caller hangs) and the thread serving it would die.
//!
//! Unwinding out of the core is sound to continue from: every lock in it
//! recovers from poisoning (`unwrap_or_else(PoisonError::into_inner)`) and
//! holds state that stays consistent between statements.
//!
//! Debug builds can inject a panic into one operation for the tests of this
//! guard: `MODELFS_INJECT_PANIC=<op>` (read once, at the first request).

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::fs::Error;

/// Runs `f`, the core's part of request `op`; a panic in it is returned as
/// [`Error::panicked`].
pub(super) fn guarded<T>(op: &'static str, f: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
    let run = || {
        inject(op);
        f()
    };
    match catch_unwind(AssertUnwindSafe(run)) {
        Ok(result) => result,
        Err(payload) => Err(Error::panicked(op, panic_message(payload.as_ref()))),
    }
}

/// The message a panic was raised with, when it is text.
fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "(no message)"
    }
}

#[cfg(debug_assertions)]
fn inject(op: &str) {
    static OP: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let target = OP.get_or_init(|| std::env::var("MODELFS_INJECT_PANIC").ok());
    if target.as_deref() == Some(op) {
        panic!("injected panic in {op} (MODELFS_INJECT_PANIC)");
    }
}

#[cfg(not(debug_assertions))]
fn inject(_op: &str) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_eio_and_later_requests_run() {
        let err = guarded::<()>("read", || panic!("index out of bounds: {}", 7)).unwrap_err();
        assert_eq!(err.errno, libc::EIO);
        assert_eq!(err.level, log::Level::Error);
        let text = err.to_string();
        assert!(
            text.contains("read") && text.contains("index out of bounds: 7"),
            "{text}"
        );
        let err = guarded::<()>("lookup", || std::panic::panic_any(42u8)).unwrap_err();
        assert!(err.to_string().contains("(no message)"));
        assert_eq!(guarded("getattr", || Ok(5)).unwrap(), 5);
        let not_found = guarded::<()>("lookup", || Err(Error::not_found("x"))).unwrap_err();
        assert_eq!(not_found.errno, libc::ENOENT);
    }
}
