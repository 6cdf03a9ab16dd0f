//! Events: a callback told of deferrals, passes, blocks and lost mail.

use std::ffi::{c_char, c_void, CString};

use crate::arg_ref;
use crate::engine::greylist_engine;
use crate::errors::Failure;
use crate::errors::{greylist_status, status_of};
use greylist_core::Event;

/// `greylist_event.kind`: a check was deferred.
pub const GREYLIST_EVENT_DEFERRED: u32 = 1;

/// `greylist_event.kind`: a check passed.
pub const GREYLIST_EVENT_PASSED: u32 = 2;

/// `greylist_event.kind`: a check was blocked.
pub const GREYLIST_EVENT_BLOCKED: u32 = 3;

/// `greylist_event.kind`: a sweep judged a pending triplet lost mail
/// (early retries, then no attempt for `lost_after` after its delay);
/// `count` is its early retries, `at` its last attempt.
pub const GREYLIST_EVENT_LOST_MAIL: u32 = 4;

/// The name `GREYLIST_EVENT_LOST_MAIL` had before lost mail was found
/// within `lost_after` rather than at expiry; same value.
pub const GREYLIST_EVENT_EXPIRED_UNRETRIED: u32 = GREYLIST_EVENT_LOST_MAIL;

/// `greylist_event.kind`: a triplet judged lost passed on a late retry.
pub const GREYLIST_EVENT_RECOVERED: u32 = 5;

/// `greylist_event.kind`: a network became blocked; `reason` is
/// `GREYLIST_REASON_BLOCKED` (blasting; `count` is the early retries of
/// the triplet that set it off) or `GREYLIST_REASON_TRAPPED`.
pub const GREYLIST_EVENT_BLOCK_STARTED: u32 = 6;

/// `greylist_event.kind`: a sweep found a network's block ended (`at`).
pub const GREYLIST_EVENT_BLOCK_ENDED: u32 = 7;

/// One event, valid only during the callback.
#[repr(C)]
#[derive(Debug)]
pub struct greylist_event {
    /// One of the `GREYLIST_EVENT_*` constants.
    pub kind: u32,
    /// The verdict's `GREYLIST_REASON_*` (`_EARLY_RETRY` for an expired one).
    pub reason: u32,
    /// The client network (`"192.0.2.0/24"`) or verified domain; valid only
    /// during the callback.
    pub network: *const c_char,
    /// Unix seconds: the check's time, the lost triplet's last attempt, or
    /// the end of a block.
    pub at: i64,
    /// For `GREYLIST_EVENT_LOST_MAIL` and a blasting
    /// `GREYLIST_EVENT_BLOCK_STARTED`: the triplet's early retries; else 0.
    pub count: u32,
}

/// An event callback: called on the thread that made the check or sweep,
/// with no lock held, so it may call into the engine. It must be
/// thread-safe and must not call `greylist_engine_free()`.
pub type greylist_event_fn =
    Option<unsafe extern "C" fn(user_data: *mut c_void, event: *const greylist_event)>;

/// The C callback and its user pointer, as a Rust event sink.
struct CallbackSink {
    callback: unsafe extern "C" fn(*mut c_void, *const greylist_event),
    user_data: *mut c_void,
}

// SAFETY: `greylist_engine_set_event_callback` documents that the callback
// and its user data must be usable from any thread; the pointer is only
// passed back to the callback, never dereferenced here.

unsafe impl Send for CallbackSink {}
// SAFETY: as above.

unsafe impl Sync for CallbackSink {}

impl CallbackSink {
    fn deliver(&self, event: &Event) {
        let network = CString::new(event.network.to_string()).unwrap_or_default();
        let e = greylist_event {
            kind: event.kind as u32,
            reason: event.reason as u32,
            network: network.as_ptr(),
            at: i64::from(event.at),
            count: event.count,
        };
        // SAFETY: the callback is a valid function pointer by the caller's
        // promise; `e` and the string it points to outlive the call.
        unsafe { (self.callback)(self.user_data, &e) };
    }
}

/// Sets the event callback (NULL removes it). It receives every verdict
/// (deferred, passed, blocked), every lost and recovered triplet, and
/// every block's start and end (`GREYLIST_EVENT_*`; losses and block ends
/// are found by sweeps), with the client network and reason. Thread-safe.
///
/// When this returns, the previous callback has returned from every call
/// in flight on any thread and is never called again: its `user_data` may
/// be freed at once. To keep that promise it waits for those calls, so it
/// must not be called from inside a callback: from there it returns
/// `GREYLIST_STATUS_INVALID_ARGUMENT` and changes nothing.
///
/// # Safety
/// `engine` must be NULL or a live engine; `callback` NULL or a function
/// that is safe to call from any thread with `user_data`, until this
/// function returns for the next callback.
#[no_mangle]
pub unsafe extern "C" fn greylist_engine_set_event_callback(
    engine: *mut greylist_engine,
    callback: greylist_event_fn,
    user_data: *mut c_void,
) -> greylist_status {
    status_of(|| {
        // SAFETY: the caller guarantees NULL or a live engine.
        let engine = unsafe { arg_ref(engine, "engine") }?;
        let sink = callback.map(|callback| {
            let c = CallbackSink {
                callback,
                user_data,
            };
            Box::new(move |e: &Event| c.deliver(e)) as greylist_core::EventSink
        });
        engine
            .engine
            .on_event(sink)
            .map_err(|e| Failure::invalid(format!("callback: {e}")))
    })
}
