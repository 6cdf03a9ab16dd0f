//! Status codes, the per-thread last error, and the panic boundary.

use std::any::Any;
use std::cell::RefCell;
use std::ffi::c_char;
use std::panic::{catch_unwind, AssertUnwindSafe};

use greylist_core::{ConfigError, InputError, SnapshotError, StoreError};

/// The result of a fallible call: `GREYLIST_STATUS_OK` (0) or one of the
/// `GREYLIST_STATUS_*` codes. Numbers are never reused. On any other value
/// `greylist_last_error()` tells what went wrong.
#[allow(non_camel_case_types)]
pub type greylist_status = u32;

/// Success.
pub const GREYLIST_STATUS_OK: greylist_status = 0;
/// A required pointer argument was NULL.
pub const GREYLIST_STATUS_NULL_ARGUMENT: greylist_status = 1;
/// An argument was malformed: not an IP address, over-long, not UTF-8, an
/// empty recipient, or a setting out of range.
pub const GREYLIST_STATUS_INVALID_ARGUMENT: greylist_status = 2;
/// A file could not be read or written.
pub const GREYLIST_STATUS_IO: greylist_status = 3;
/// A file is corrupt, truncated or not one of ours.
pub const GREYLIST_STATUS_CORRUPT: greylist_status = 4;
/// The library caught a panic (a bug in greylist); the engine is still
/// usable, but please report it.
pub const GREYLIST_STATUS_PANIC: greylist_status = 5;
/// The caller's buffer is too small for the output; nothing was written.
pub const GREYLIST_STATUS_BUFFER_TOO_SMALL: greylist_status = 6;

/// A snapshot was written by a newer version of greylist, or with settings
/// that change keys (prefixes, extension delimiters): it cannot be used.
pub const GREYLIST_STATUS_INCOMPATIBLE: greylist_status = 7;

/// The shared store (Redis) did not answer an operator's call (release,
/// forget, a report) in time, or answered with an error: nothing is known
/// to have been done there. Try again when it is back.
pub const GREYLIST_STATUS_UNAVAILABLE: greylist_status = 8;

/// A failure on its way to the C caller: a status and a message.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) status: greylist_status,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn new(status: greylist_status, message: impl Into<String>) -> Self {
        Failure {
            status,
            message: message.into(),
        }
    }

    pub(crate) fn null(argument: &str) -> Self {
        Failure::new(
            GREYLIST_STATUS_NULL_ARGUMENT,
            format!("{argument}: is NULL"),
        )
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Failure::new(GREYLIST_STATUS_INVALID_ARGUMENT, message)
    }
}

impl From<InputError> for Failure {
    fn from(e: InputError) -> Self {
        Failure::invalid(e.to_string())
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Input(e) => e.into(),
            StoreError::Unavailable(_) => Failure::new(GREYLIST_STATUS_UNAVAILABLE, e.to_string()),
        }
    }
}

impl From<SnapshotError> for Failure {
    fn from(e: SnapshotError) -> Self {
        let status = match e {
            SnapshotError::Io { .. } => GREYLIST_STATUS_IO,
            SnapshotError::Corrupt { .. } => GREYLIST_STATUS_CORRUPT,
            SnapshotError::NewerFormat { .. } | SnapshotError::KeySettingsDiffer { .. } => {
                GREYLIST_STATUS_INCOMPATIBLE
            }
        };
        Failure::new(status, e.to_string())
    }
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        Failure::invalid(format!("config: {e}"))
    }
}

thread_local! {
    static LAST_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
}

pub(crate) fn set_last_error(message: String) {
    LAST_ERROR.with(|e| *e.borrow_mut() = message);
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    let what = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("unknown panic");
    format!("internal error (panic caught at the library boundary): {what}")
}

/// Runs `f` inside the panic boundary and turns its result into a status,
/// recording the message of any failure for `greylist_last_error()`.
pub(crate) fn status_of(f: impl FnOnce() -> Result<(), Failure>) -> greylist_status {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => GREYLIST_STATUS_OK,
        Ok(Err(failure)) => {
            set_last_error(failure.message);
            failure.status
        }
        Err(payload) => {
            set_last_error(panic_message(&*payload));
            GREYLIST_STATUS_PANIC
        }
    }
}

/// Runs `f` inside the panic boundary for functions that return a value
/// rather than a status (pointers, counts): a panic gives `fallback`.
pub(crate) fn value_of<T>(fallback: T, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        set_last_error(panic_message(&*payload));
        fallback
    })
}

/// The name of a status code, as a static NUL-terminated string
/// (`"GREYLIST_STATUS_OK"`, ...; `"GREYLIST_STATUS_UNKNOWN"` for a number
/// this version does not know).
///
/// Never fails, never returns NULL; the string is never freed. Thread-safe.
#[no_mangle]
pub extern "C" fn greylist_status_str(status: greylist_status) -> *const c_char {
    let name: &'static [u8] = match status {
        GREYLIST_STATUS_OK => b"GREYLIST_STATUS_OK\0",
        GREYLIST_STATUS_NULL_ARGUMENT => b"GREYLIST_STATUS_NULL_ARGUMENT\0",
        GREYLIST_STATUS_INVALID_ARGUMENT => b"GREYLIST_STATUS_INVALID_ARGUMENT\0",
        GREYLIST_STATUS_IO => b"GREYLIST_STATUS_IO\0",
        GREYLIST_STATUS_CORRUPT => b"GREYLIST_STATUS_CORRUPT\0",
        GREYLIST_STATUS_PANIC => b"GREYLIST_STATUS_PANIC\0",
        GREYLIST_STATUS_BUFFER_TOO_SMALL => b"GREYLIST_STATUS_BUFFER_TOO_SMALL\0",
        GREYLIST_STATUS_INCOMPATIBLE => b"GREYLIST_STATUS_INCOMPATIBLE\0",
        GREYLIST_STATUS_UNAVAILABLE => b"GREYLIST_STATUS_UNAVAILABLE\0",
        _ => b"GREYLIST_STATUS_UNKNOWN\0",
    };
    name.as_ptr().cast()
}

/// Copies the message of the last failure on this thread into `buf`,
/// NUL-terminated and truncated to `len` bytes (at a character boundary).
///
/// Returns the full length of the message in bytes, without the NUL, so a
/// caller can tell that it was truncated; 0 when no call on this thread has
/// failed yet. A successful call does not clear the message: read it right
/// after a call returned a status other than `GREYLIST_STATUS_OK`.
///
/// `buf` may be NULL when `len` is 0 (to ask for the length). Thread-safe:
/// each thread has its own last error.
///
/// # Safety
/// `buf` must be NULL or point to `len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn greylist_last_error(buf: *mut c_char, len: usize) -> usize {
    value_of(0, || {
        LAST_ERROR.with(|e| {
            let message = e.borrow();
            if !buf.is_null() && len > 0 {
                // SAFETY: the caller guarantees `buf` points to `len`
                // writable bytes; it is not NULL and `len > 0`.
                let out = unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), len) };
                crate::copy_truncated(&message, out);
            }
            message.len()
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_the_panic_status_with_a_message() {
        let status = status_of(|| panic!("boom"));
        assert_eq!(status, GREYLIST_STATUS_PANIC);
        let mut buf = [0 as c_char; 128];
        // SAFETY: buf is 128 writable bytes.
        let n = unsafe { greylist_last_error(buf.as_mut_ptr(), buf.len()) };
        // SAFETY: greylist_last_error NUL-terminates within buf.
        let msg = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
            .to_str()
            .unwrap();
        assert_eq!(n, msg.len());
        assert!(msg.ends_with("boom"), "{msg}");
        assert_eq!(
            value_of(7, || -> i32 { panic!("{}", String::from("owned")) }),
            7
        );
    }

    #[test]
    fn failures_set_the_message_and_success_keeps_it() {
        assert_eq!(
            status_of(|| Err(Failure::null("engine"))),
            GREYLIST_STATUS_NULL_ARGUMENT
        );
        assert_eq!(status_of(|| Ok(())), GREYLIST_STATUS_OK);
        // SAFETY: a NULL buffer with length 0 only asks for the length.
        assert_eq!(
            unsafe { greylist_last_error(std::ptr::null_mut(), 0) },
            "engine: is NULL".len()
        );
    }

    #[test]
    fn status_names() {
        for (status, name) in [
            (GREYLIST_STATUS_OK, "GREYLIST_STATUS_OK"),
            (GREYLIST_STATUS_PANIC, "GREYLIST_STATUS_PANIC"),
            (
                GREYLIST_STATUS_BUFFER_TOO_SMALL,
                "GREYLIST_STATUS_BUFFER_TOO_SMALL",
            ),
            (9999, "GREYLIST_STATUS_UNKNOWN"),
        ] {
            // SAFETY: greylist_status_str returns a static NUL-terminated string.
            let s = unsafe { std::ffi::CStr::from_ptr(greylist_status_str(status)) };
            assert_eq!(s.to_str().unwrap(), name);
        }
    }
}
