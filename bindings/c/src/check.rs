//! The check: a triplet (or a whole request) in, a verdict out, and the
//! verdict's SMTP reply.

use std::ffi::c_char;

use crate::engine::{greylist_engine, triplet_args};
use crate::errors::{greylist_status, status_of, Failure};
use crate::{
    arg_bytes, arg_ref, arg_str, copy_versioned, opt_bytes, out_ptr, resolve_now, versioned_size,
    write_out, write_str,
};
use greylist_core::{Action, KeyKind, Reason, Request, Verdict};

/// What the mail server should do (`greylist_verdict.action`).
#[allow(non_camel_case_types)]
pub type greylist_action = u32;

/// Accept the recipient.
pub const GREYLIST_ACTION_PASS: greylist_action = 0;

/// Answer with a temporary failure (see `greylist_verdict_reply()`).
pub const GREYLIST_ACTION_DEFER: greylist_action = 1;

/// The client network is blocked: refuse, temporarily or for good.
pub const GREYLIST_ACTION_BLOCK: greylist_action = 2;

/// Why the engine decided so (`greylist_verdict.reason`). Numbers are never
/// reused; new reasons may be added.
#[allow(non_camel_case_types)]
pub type greylist_reason = u32;

/// First attempt of the triplet (or first after its retry window ran out).
pub const GREYLIST_REASON_NEW: greylist_reason = 1;

/// Retried before the delay was over; the timer is not reset.
pub const GREYLIST_REASON_EARLY_RETRY: greylist_reason = 2;

/// Retried after the delay: passes now (`delayed` says how long it waited).
pub const GREYLIST_REASON_RETRIED: greylist_reason = 3;

/// Passed before, within its lifetime.
pub const GREYLIST_REASON_PASSED: greylist_reason = 4;

/// On a static whitelist.
pub const GREYLIST_REASON_WHITELISTED: greylist_reason = 5;

/// The client network is auto-whitelisted.
pub const GREYLIST_REASON_AUTO_WHITELISTED: greylist_reason = 6;

/// The client network is blocked for blasting early retries.
pub const GREYLIST_REASON_BLOCKED: greylist_reason = 7;

/// The recipient is a trap address: the client network is blocked now.
pub const GREYLIST_REASON_TRAPPED: greylist_reason = 8;

/// The shared store (Redis) did not answer in time or failed: the local
/// table decided. The action may be any: a defer becomes a pass when the
/// engine fails open (the default), see `greylist_config_set_redis_fail_defer()`.
pub const GREYLIST_REASON_STORE_UNAVAILABLE: greylist_reason = 9;

/// What the client part of a request's key was
/// (`greylist_request.key_used`). Numbers are never reused.
#[allow(non_camel_case_types)]
pub type greylist_key_kind = u32;

/// The client's network (its address masked to the configured prefix).
pub const GREYLIST_KEY_NETWORK: greylist_key_kind = 1;

/// The registrable domain of the client's verified host name
/// (`greylist_config_set_key_by_host_name()`).
pub const GREYLIST_KEY_HOST_DOMAIN: greylist_key_kind = 2;

/// A sender domain the MTA verified, by SPF or DKIM
/// (`greylist_config_set_key_by_verified_domain()`).
pub const GREYLIST_KEY_VERIFIED_DOMAIN: greylist_key_kind = 3;

fn key_kind_number(kind: KeyKind) -> greylist_key_kind {
    match kind {
        KeyKind::HostDomain => GREYLIST_KEY_HOST_DOMAIN,
        KeyKind::VerifiedDomain => GREYLIST_KEY_VERIFIED_DOMAIN,
        _ => GREYLIST_KEY_NETWORK,
    }
}

/// The answer for one triplet.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct greylist_verdict {
    /// `GREYLIST_ACTION_PASS`, `_DEFER` or `_BLOCK`.
    pub action: greylist_action,
    /// One of the `GREYLIST_REASON_*` constants.
    pub reason: greylist_reason,
    /// For a defer, seconds until a retry would pass; for a block, seconds
    /// until it ends; 0 for a pass.
    pub retry_after: u32,
    /// For `GREYLIST_REASON_RETRIED`, seconds since the first attempt (for an
    /// `X-Greylist: delayed N seconds` header); else 0.
    pub delayed: u32,
}

impl From<Verdict> for greylist_verdict {
    fn from(v: Verdict) -> Self {
        greylist_verdict {
            action: v.action as u32,
            reason: v.reason as u32,
            retry_after: v.retry_after,
            delayed: v.delayed,
        }
    }
}

impl greylist_verdict {
    /// Reads a verdict the caller passed back, which may hold any numbers.
    fn to_verdict(self) -> Result<Verdict, Failure> {
        let v = self;
        let reason = Reason::from_number(v.reason)
            .ok_or_else(|| Failure::invalid(format!("verdict: unknown reason {}", v.reason)))?;
        let action = Action::from_number(v.action)
            .ok_or_else(|| Failure::invalid(format!("verdict: unknown action {}", v.action)))?;
        if reason != Reason::StoreUnavailable && reason.action() != action {
            return Err(Failure::invalid(format!(
                "verdict: action {} does not go with reason {}",
                v.action, v.reason
            )));
        }
        Ok(Verdict {
            action,
            reason,
            retry_after: v.retry_after,
            delayed: v.delayed,
            key: KeyKind::Network,
        })
    }
}

/// Decides one triplet and records the attempt; writes the verdict to
/// `*out`.
///
/// `client_ip` is the connecting client's address (`192.0.2.1`,
/// `2001:db8::1`, `::ffff:192.0.2.1`); `sender` the envelope sender (`""`
/// or `"<>"` for the null sender); `recipient` the envelope recipient. All
/// are NUL-terminated. Sender and recipient are bytes as SMTP carries them:
/// one that is not UTF-8, or longer than 1024 bytes, is keyed by its bytes
/// and greylisted like any other. `now` is the time in Unix seconds, or
/// `GREYLIST_NOW` for the system clock.
///
/// Returns `GREYLIST_STATUS_NULL_ARGUMENT` for a NULL pointer and
/// `GREYLIST_STATUS_INVALID_ARGUMENT` for a malformed IP (or one that is
/// not UTF-8) or an empty recipient (the message names the argument); then
/// nothing is recorded and `*out` is untouched.
///
/// Thread-safe.
///
/// # Safety
/// `engine` must be NULL or a live engine; the strings must be NULL or
/// NUL-terminated; `out` must be NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn greylist_engine_check(
    engine: *mut greylist_engine,
    client_ip: *const c_char,
    sender: *const c_char,
    recipient: *const c_char,
    now: i64,
    out: *mut greylist_verdict,
) -> greylist_status {
    status_of(|| {
        // SAFETY: the caller guarantees every pointer is NULL or valid.
        let (engine, ip, sender, recipient) =
            unsafe { triplet_args(engine, client_ip, sender, recipient) }?;
        let out = out_ptr(out, "out")?;
        let verdict = engine
            .engine
            .check(ip, sender, recipient, resolve_now(now))?;
        // SAFETY: `out` was checked non-NULL; the caller guarantees it is writable.
        unsafe { write_out(out, verdict.into()) };
        Ok(())
    })
}

/// Writes the suggested SMTP reply for `verdict` into `buf` (NUL-terminated):
/// for a defer e.g. `"450 4.2.0 Greylisted, please try again in 300
/// seconds"`, for a block the block text, for a pass the empty string.
///
/// Returns `GREYLIST_STATUS_BUFFER_TOO_SMALL` (writing nothing) when the
/// reply and its NUL do not fit in `len` bytes; 600 bytes always suffice.
/// `GREYLIST_STATUS_INVALID_ARGUMENT` for a verdict whose action and reason
/// do not go together. Thread-safe.
///
/// # Safety
/// `engine` must be NULL or a live engine; `verdict` NULL or readable;
/// `buf` NULL or writable for `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn greylist_verdict_reply(
    engine: *const greylist_engine,
    verdict: *const greylist_verdict,
    buf: *mut c_char,
    len: usize,
) -> greylist_status {
    status_of(|| {
        // SAFETY: the caller guarantees NULL or valid pointers.
        let (engine, verdict) =
            unsafe { (arg_ref(engine, "engine")?, arg_ref(verdict, "verdict")?) };
        let verdict = verdict.to_verdict()?;
        let reply = engine.engine.reply(&verdict).unwrap_or_default();
        // SAFETY: the caller guarantees `buf` is NULL or `len` writable bytes.
        unsafe { write_str(buf, len, &reply) }
    })
}

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
    /// NULL, or where the engine writes what the client part of the key
    /// was: `GREYLIST_KEY_NETWORK`, `_HOST_DOMAIN` or `_VERIFIED_DOMAIN`
    /// (written only when the call succeeds).
    pub key_used: *mut greylist_key_kind,
}

/// Reads an optional string field: NULL is `None`.
///
/// # Safety
/// `ptr` must be NULL or NUL-terminated.
pub(crate) unsafe fn opt_str<'a>(
    ptr: *const c_char,
    name: &str,
) -> Result<Option<&'a str>, Failure> {
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
/// network (`GREYLIST_REASON_TRAPPED`); the registrable domain of a
/// verified `client_name` (`greylist_config_set_key_by_host_name()`, on by
/// default) or, with `greylist_config_set_key_by_verified_domain()`, a
/// verified sender domain replaces the client network in the key
/// (`key_used` says which). Errors as for
/// `greylist_engine_check()`; a `struct_size` smaller than the first seven
/// fields is `GREYLIST_STATUS_INVALID_ARGUMENT`. Thread-safe.
///
/// # Safety
/// `engine` must be NULL or a live engine; `request` NULL or readable for
/// `request->struct_size` bytes, its strings NULL or NUL-terminated, its
/// `key_used` NULL or writable; `out` NULL or writable.
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
            key_used: std::ptr::null_mut(),
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
        if !r.key_used.is_null() {
            // SAFETY: not NULL; the caller guarantees it is writable.
            unsafe { write_out(r.key_used, key_kind_number(verdict.key)) };
        }
        Ok(())
    })
}
