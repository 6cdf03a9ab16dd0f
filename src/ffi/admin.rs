//! Extended checks, events, lists, reports, release and forget.

use std::ffi::{c_char, c_void, CString};

use super::engine::{greylist_engine, greylist_verdict, triplet_args};
use super::error::{greylist_status, status_of, Failure, GREYLIST_STATUS_IO};
use super::{
    arg_bytes, arg_ref, arg_str, c_chars, copy_versioned, opt_bytes, out_ptr, resolve_now,
    versioned_size, write_out,
};
use crate::{Event, ListError, ListKind, Request};

/// A check request with what the MTA knows of the client. Append-only:
/// set `struct_size` to `sizeof(greylist_request)`; fields a caller's
/// older header lacks count as NULL.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct greylist_request {
    /// Set by the caller: `sizeof(greylist_request)`.
    pub struct_size: usize,
    /// The connecting client's IP address (required).
    pub client_ip: *const c_char,
    /// The envelope sender, `""` or `"<>"` for the null sender (required).
    pub sender: *const c_char,
    /// The envelope recipient (required).
    pub recipient: *const c_char,
    /// The client's verified host name, or NULL.
    pub client_name: *const c_char,
    /// The HELO/EHLO name, or NULL (never decides anything: unverified).
    pub helo: *const c_char,
    /// A sender domain the MTA verified (SPF or DKIM), or NULL.
    pub verified_domain: *const c_char,
    /// Unix seconds, or `GREYLIST_NOW`.
    pub now: i64,
}

/// Reads an optional string field: NULL is `None`.
///
/// # Safety
/// `ptr` must be NULL or NUL-terminated.
unsafe fn opt_str<'a>(ptr: *const c_char, name: &str) -> Result<Option<&'a str>, Failure> {
    if ptr.is_null() {
        Ok(None)
    } else {
        // SAFETY: not NULL; the caller guarantees NUL termination.
        unsafe { arg_str(ptr, name) }.map(Some)
    }
}

/// Decides one request (see `greylist_request`): a whitelisted client (by
/// address or verified host name), sender or recipient passes
/// (`GREYLIST_REASON_WHITELISTED`); a trap recipient blocks the client
/// network (`GREYLIST_REASON_TRAPPED`); with
/// `greylist_config_set_key_by_verified_domain()`, a verified sender
/// domain replaces the client network in the key. Errors as for
/// `greylist_engine_check()`; a `struct_size` smaller than the first seven
/// fields is `GREYLIST_STATUS_INVALID_ARGUMENT`. Thread-safe.
///
/// # Safety
/// `engine` must be NULL or a live engine; `request` NULL or readable for
/// `request->struct_size` bytes, its strings NULL or NUL-terminated; `out`
/// NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn greylist_engine_check_request(
    engine: *mut greylist_engine,
    request: *const greylist_request,
    out: *mut greylist_verdict,
) -> greylist_status {
    status_of(|| {
        // SAFETY: the caller guarantees NULL or valid pointers.
        let (engine, request) =
            unsafe { (arg_ref(engine, "engine")?, arg_ref(request, "request")?) };
        let out = out_ptr(out, "out")?;
        let min = std::mem::offset_of!(greylist_request, now);
        // SAFETY: `request` is a valid reference; its first field is readable.
        let size = unsafe { versioned_size::<_, usize>(request, "request", min) }?;
        let mut r = greylist_request {
            struct_size: std::mem::size_of::<greylist_request>(),
            client_ip: std::ptr::null(),
            sender: std::ptr::null(),
            recipient: std::ptr::null(),
            client_name: std::ptr::null(),
            helo: std::ptr::null(),
            verified_domain: std::ptr::null(),
            now: super::GREYLIST_NOW,
        };
        // SAFETY: the caller guarantees `size` readable bytes; fields an
        // older caller lacks keep the defaults set above.
        unsafe { copy_versioned(request, &mut r, size) };
        // SAFETY: the caller guarantees each string is NULL or NUL-terminated.
        let req = unsafe {
            Request {
                client_ip: arg_str(r.client_ip, "client_ip")?,
                sender: arg_bytes(r.sender, "sender")?,
                recipient: arg_bytes(r.recipient, "recipient")?,
                client_name: opt_bytes(r.client_name),
                helo: opt_bytes(r.helo),
                verified_domain: opt_bytes(r.verified_domain),
            }
        };
        let verdict = engine.engine.check_request(&req, resolve_now(r.now))?;
        // SAFETY: checked non-NULL; the caller guarantees it is writable.
        unsafe { write_out(out, verdict.into()) };
        Ok(())
    })
}

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
            Box::new(move |e: &Event| c.deliver(e)) as crate::EventSink
        });
        engine
            .engine
            .on_event(sink)
            .map_err(|e| Failure::invalid(format!("callback: {e}")))
    })
}

/// `greylist_engine_set_list()` kind: client IPs, CIDRs and host names.
pub const GREYLIST_LIST_CLIENTS: u32 = 0;
/// Kind: sender addresses, domains and local parts (`postmaster@`).
pub const GREYLIST_LIST_SENDERS: u32 = 1;
/// Kind: recipient addresses and domains that opt out of greylisting.
pub const GREYLIST_LIST_RECIPIENTS: u32 = 2;
/// Kind: trap recipients; a check for one blocks the client network.
pub const GREYLIST_LIST_TRAP_RECIPIENTS: u32 = 3;

fn list_kind(kind: u32) -> Result<ListKind, Failure> {
    ListKind::from_u32(kind)
        .ok_or_else(|| Failure::invalid(format!("kind: {kind} is not a GREYLIST_LIST_* constant")))
}

impl From<ListError> for Failure {
    fn from(e: ListError) -> Self {
        match e {
            ListError::Io(io) => Failure::new(GREYLIST_STATUS_IO, io.to_string()),
            bad => Failure::invalid(bad.to_string()),
        }
    }
}

/// Reads `count` C strings.
///
/// # Safety
/// `entries` must be NULL or point to `count` pointers, each NULL or
/// NUL-terminated.
unsafe fn string_array<'a>(
    entries: *const *const c_char,
    count: usize,
) -> Result<Vec<&'a str>, Failure> {
    if count == 0 {
        return Ok(Vec::new());
    }
    let entries = out_ptr(entries.cast_mut(), "entries")?;
    // SAFETY: non-NULL; the caller guarantees `count` readable pointers.
    let pointers = unsafe { std::slice::from_raw_parts(entries, count) };
    pointers
        .iter()
        .enumerate()
        // SAFETY: the caller guarantees each is NULL or NUL-terminated.
        .map(|(i, p)| {
            unsafe { arg_str(*p, "entries") }
                .map_err(|e| Failure::new(e.status, format!("entries[{i}]: {}", e.message)))
        })
        .collect()
}

/// Replaces (`replace` true) or extends one list with `count` entries,
/// atomically: checks see the old list or the new one. A bad entry refuses
/// the call (`GREYLIST_STATUS_INVALID_ARGUMENT`, the message names it:
/// `line 2: ...` for `entries[1]`) and keeps the old list. Thread-safe.
///
/// # Safety
/// `engine` must be NULL or a live engine; `entries` NULL (when `count` is
/// 0) or `count` NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn greylist_engine_set_list(
    engine: *mut greylist_engine,
    kind: u32,
    entries: *const *const c_char,
    count: usize,
    replace: bool,
) -> greylist_status {
    status_of(|| {
        // SAFETY: the caller guarantees NULL or valid pointers.
        let (engine, entries) =
            unsafe { (arg_ref(engine, "engine")?, string_array(entries, count)?) };
        let kind = list_kind(kind)?;
        if replace {
            engine.engine.set_list(kind, &entries)?;
        } else {
            engine.engine.add_to_list(kind, &entries)?;
        }
        Ok(())
    })
}

/// Replaces one list with the entries of the file at `path` (one a line,
/// `#` comments) and writes how many there were to `*loaded`. A bad line
/// refuses the whole file (`GREYLIST_STATUS_INVALID_ARGUMENT`, `"<path>:
/// line 4: ..."`); an unreadable file is `GREYLIST_STATUS_IO`; the old list
/// stays in both cases. Thread-safe.
///
/// # Safety
/// `engine` must be NULL or a live engine; `path` NULL or NUL-terminated;
/// `loaded` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn greylist_engine_load_list(
    engine: *mut greylist_engine,
    kind: u32,
    path: *const c_char,
    loaded: *mut usize,
) -> greylist_status {
    status_of(|| {
        // SAFETY: the caller guarantees NULL or valid pointers.
        let (engine, path) = unsafe { (arg_ref(engine, "engine")?, arg_str(path, "path")?) };
        let loaded = out_ptr(loaded, "loaded")?;
        let kind = list_kind(kind)?;
        let n = engine.engine.load_list(kind, path).map_err(|e| {
            let f = Failure::from(e);
            Failure::new(f.status, format!("{path}: {}", f.message))
        })?;
        // SAFETY: checked non-NULL; the caller guarantees it is writable.
        unsafe { write_out(loaded, n) };
        Ok(())
    })
}

/// One row of the lost-mail report.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct greylist_lost_mail {
    /// The client network (`"192.0.2.0/24"`) or verified domain,
    /// NUL-terminated.
    pub network: [c_char; 256],
    /// Its triplets that expired having seen only early retries.
    pub count: u64,
    /// The last attempt of the latest one (Unix seconds).
    pub last_seen: i64,
}

/// Fills `rows` with up to `capacity` client networks whose mail was most
/// likely lost, worst first (see the README, "When mail goes missing"),
/// and writes how many rows were filled to `*count`. Thread-safe.
///
/// # Safety
/// `engine` must be NULL or a live engine; `rows` NULL (when `capacity`
/// is 0) or writable for `capacity` rows; `count` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn greylist_engine_lost_mail_report(
    engine: *const greylist_engine,
    rows: *mut greylist_lost_mail,
    capacity: usize,
    count: *mut usize,
) -> greylist_status {
    status_of(|| {
        // SAFETY: the caller guarantees NULL or a live engine.
        let engine = unsafe { arg_ref(engine, "engine") }?;
        let count = out_ptr(count, "count")?;
        let rows = if capacity == 0 {
            rows
        } else {
            out_ptr(rows, "rows")?
        };
        let report = engine.engine.lost_mail_report(capacity)?;
        for (i, row) in report.iter().enumerate() {
            let out = greylist_lost_mail {
                network: c_chars(&row.network.to_string()),
                count: row.count,
                last_seen: i64::from(row.last_seen),
            };
            // SAFETY: `i < capacity` rows, which the caller guarantees are writable.
            unsafe { write_out(rows.add(i), out) };
        }
        // SAFETY: checked non-NULL; the caller guarantees it is writable.
        unsafe { write_out(count, report.len()) };
        Ok(())
    })
}

/// `greylist_client_report.flags`: on the static client whitelist.
pub const GREYLIST_CLIENT_WHITELISTED: u32 = 1;
/// Flag: auto-whitelisted now.
pub const GREYLIST_CLIENT_AUTO_WHITELISTED: u32 = 2;
/// Flag: blocked now (until `blocked_until`).
pub const GREYLIST_CLIENT_BLOCKED: u32 = 4;

/// What the engine knows of one client network. Append-only: set
/// `struct_size` to `sizeof(greylist_client_report)`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct greylist_client_report {
    /// Set by the caller: `sizeof(greylist_client_report)`.
    pub struct_size: u32,
    /// `GREYLIST_CLIENT_*` flags.
    pub flags: u32,
    /// The client network, NUL-terminated (`"192.0.2.0/24"`).
    pub network: [c_char; 64],
    /// Its triplets waiting for a retry.
    pub pending: u64,
    /// Its passed triplets.
    pub passed: u64,
    /// Its triplets that expired having seen only early retries.
    pub lost_mail: u64,
    /// When the block ends (Unix seconds), 0 if not blocked.
    pub blocked_until: i64,
    /// Triplets that passed so far (towards the auto-whitelist).
    pub passes: u32,
    /// Reserved, 0.
    pub reserved: u32,
}

/// Fills `*out` with what the engine knows of `client_ip`'s network at
/// `now` (Unix seconds or `GREYLIST_NOW`); `client_name` (or NULL) is
/// checked against host-name whitelist entries. Counting its triplets scans
/// the table: an operator's call. Thread-safe.
///
/// # Safety
/// `engine` must be NULL or a live engine; strings NULL or NUL-terminated;
/// `out` NULL or writable for `out->struct_size` bytes.
#[no_mangle]
pub unsafe extern "C" fn greylist_engine_client_report(
    engine: *const greylist_engine,
    client_ip: *const c_char,
    client_name: *const c_char,
    now: i64,
    out: *mut greylist_client_report,
) -> greylist_status {
    status_of(|| {
        // SAFETY: the caller guarantees NULL or valid pointers.
        let (engine, ip, name) = unsafe {
            (
                arg_ref(engine, "engine")?,
                arg_str(client_ip, "client_ip")?,
                opt_str(client_name, "client_name")?,
            )
        };
        let out = out_ptr(out, "out")?;
        let min = std::mem::offset_of!(greylist_client_report, pending);
        // SAFETY: `out` is non-NULL; the caller guarantees its first field
        // is readable.
        let size = unsafe { versioned_size::<_, u32>(out, "out", min) }?;
        let r = engine.engine.client_report(ip, name, resolve_now(now))?;
        let flags = [
            (r.whitelisted, GREYLIST_CLIENT_WHITELISTED),
            (r.auto_whitelisted, GREYLIST_CLIENT_AUTO_WHITELISTED),
            (r.blocked_until.is_some(), GREYLIST_CLIENT_BLOCKED),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .fold(0, |acc, (_, bit)| acc | bit);
        let report = greylist_client_report {
            struct_size: size.min(std::mem::size_of::<greylist_client_report>()) as u32,
            flags,
            network: c_chars(&r.network.to_string()),
            pending: r.pending,
            passed: r.passed,
            lost_mail: r.lost_mail,
            blocked_until: r.blocked_until.map_or(0, i64::from),
            passes: r.passes,
            reserved: 0,
        };
        // SAFETY: the caller guarantees `out` holds `size` bytes.
        unsafe { copy_versioned(&report, out, size) };
        Ok(())
    })
}

/// Lets a triplet pass from now on (`now`: Unix seconds or
/// `GREYLIST_NOW`), as if it had been retried after the delay.
/// Thread-safe.
///
/// # Safety
/// `engine` must be NULL or a live engine; strings NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn greylist_engine_release(
    engine: *mut greylist_engine,
    client_ip: *const c_char,
    sender: *const c_char,
    recipient: *const c_char,
    now: i64,
) -> greylist_status {
    status_of(|| {
        // SAFETY: the caller guarantees NULL or valid pointers.
        let (engine, ip, sender, recipient) =
            unsafe { triplet_args(engine, client_ip, sender, recipient) }?;
        engine
            .engine
            .release(ip, sender, recipient, resolve_now(now))?;
        Ok(())
    })
}

/// Releases `client_ip`'s network: lifts a block and lets every triplet of
/// it waiting for a retry pass; writes how many were released to
/// `*released`. Thread-safe.
///
/// # Safety
/// `engine` must be NULL or a live engine; `client_ip` NULL or
/// NUL-terminated; `released` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn greylist_engine_release_client(
    engine: *mut greylist_engine,
    client_ip: *const c_char,
    now: i64,
    released: *mut u64,
) -> greylist_status {
    status_of(|| {
        // SAFETY: the caller guarantees NULL or valid pointers.
        let (engine, ip) =
            unsafe { (arg_ref(engine, "engine")?, arg_str(client_ip, "client_ip")?) };
        let released = out_ptr(released, "released")?;
        let n = engine.engine.release_client(ip, resolve_now(now))?;
        // SAFETY: checked non-NULL; the caller guarantees it is writable.
        unsafe { write_out(released, n) };
        Ok(())
    })
}

/// Forgets a triplet (its next attempt is new again); writes whether it
/// was known to `*found`. Thread-safe.
///
/// # Safety
/// `engine` must be NULL or a live engine; strings NULL or NUL-terminated;
/// `found` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn greylist_engine_forget(
    engine: *mut greylist_engine,
    client_ip: *const c_char,
    sender: *const c_char,
    recipient: *const c_char,
    found: *mut bool,
) -> greylist_status {
    status_of(|| {
        // SAFETY: the caller guarantees NULL or valid pointers.
        let (engine, ip, sender, recipient) =
            unsafe { triplet_args(engine, client_ip, sender, recipient) }?;
        let found = out_ptr(found, "found")?;
        let known = engine.engine.forget(ip, sender, recipient)?;
        // SAFETY: checked non-NULL; the caller guarantees it is writable.
        unsafe { write_out(found, known) };
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::super::engine::{
        greylist_engine_free, greylist_engine_new, GREYLIST_REASON_NEW, GREYLIST_REASON_WHITELISTED,
    };
    use super::super::error::*;
    use super::*;
    use std::ptr::{null, null_mut};

    const T0: i64 = 1_700_000_000;

    unsafe extern "C" fn count(user: *mut c_void, event: *const greylist_event) {
        // SAFETY: the test passes a live counter and the engine a live event.
        unsafe {
            let network = std::ffi::CStr::from_ptr((*event).network).to_str().unwrap();
            assert_eq!(network, "192.0.2.0/24");
            *user.cast::<u32>() += 1;
        }
    }

    #[test]
    fn requests_events_lists_and_reports_through_the_c_abi() {
        let mut e = null_mut();
        // SAFETY: everything below uses live pointers; `e` is freed last.
        unsafe {
            assert_eq!(greylist_engine_new(null(), &mut e), GREYLIST_STATUS_OK);
            let mut events = 0u32;
            let user = (&mut events as *mut u32).cast();
            assert_eq!(
                greylist_engine_set_event_callback(e, Some(count), user),
                GREYLIST_STATUS_OK
            );
            // An old caller's request: struct_size covers all but `now`.
            let mut req = greylist_request {
                struct_size: std::mem::offset_of!(greylist_request, now),
                client_ip: c"192.0.2.1".as_ptr(),
                sender: c"a@x.org".as_ptr(),
                recipient: c"b@y.net".as_ptr(),
                client_name: null(),
                helo: c"mx.x.org".as_ptr(),
                verified_domain: null(),
                now: T0,
            };
            let mut v = greylist_verdict {
                action: 9,
                reason: 9,
                retry_after: 9,
                delayed: 9,
            };
            assert_eq!(
                greylist_engine_check_request(e, &req, &mut v),
                GREYLIST_STATUS_OK
            );
            assert_eq!(v.reason, GREYLIST_REASON_NEW);
            req.struct_size = 4;
            assert_eq!(
                greylist_engine_check_request(e, &req, &mut v),
                GREYLIST_STATUS_INVALID_ARGUMENT
            );
            let entries = [c"192.0.2.0/24".as_ptr()];
            assert_eq!(
                greylist_engine_set_list(e, GREYLIST_LIST_CLIENTS, entries.as_ptr(), 1, true),
                GREYLIST_STATUS_OK
            );
            req.struct_size = std::mem::size_of::<greylist_request>();
            assert_eq!(
                greylist_engine_check_request(e, &req, &mut v),
                GREYLIST_STATUS_OK
            );
            assert_eq!(v.reason, GREYLIST_REASON_WHITELISTED);
            assert_eq!(events, 2);
            assert_eq!(
                greylist_engine_set_event_callback(e, None, null_mut()),
                GREYLIST_STATUS_OK
            );

            let mut rows = [greylist_lost_mail {
                network: [1; 256],
                count: 7,
                last_seen: 7,
            }; 2];
            let mut n = 9;
            assert_eq!(
                greylist_engine_lost_mail_report(e, rows.as_mut_ptr(), 2, &mut n),
                GREYLIST_STATUS_OK
            );
            assert_eq!((n, rows[0].count), (0, 7));
            let mut report = greylist_client_report {
                struct_size: std::mem::size_of::<greylist_client_report>() as u32,
                flags: 0,
                network: [1; 64],
                pending: 0,
                passed: 0,
                lost_mail: 0,
                blocked_until: 0,
                passes: 0,
                reserved: 0,
            };
            // The first check ran at the system clock (its request had no
            // `now`): report at it too.
            let status = greylist_engine_client_report(
                e,
                c"192.0.2.9".as_ptr(),
                null(),
                crate::ffi::GREYLIST_NOW,
                &mut report,
            );
            assert_eq!(status, GREYLIST_STATUS_OK);
            assert_eq!(
                (report.flags, report.pending),
                (GREYLIST_CLIENT_WHITELISTED, 1)
            );
            let mut found = false;
            let status = greylist_engine_forget(
                e,
                c"192.0.2.1".as_ptr(),
                c"a@x.org".as_ptr(),
                c"b@y.net".as_ptr(),
                &mut found,
            );
            assert_eq!((status, found), (GREYLIST_STATUS_OK, true));
            greylist_engine_free(e);
        }
    }
}
