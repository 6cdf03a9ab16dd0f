//! `greylist_engine`: checks, sweeps, counters and replies.

use std::ffi::c_char;

use super::config::greylist_config;
use super::error::{greylist_status, status_of, value_of, Failure};
use super::{
    arg_bytes, arg_ref, arg_str, copy_versioned, free_handle, into_handle, out_ptr, resolve_now,
    versioned_size, write_out, write_str,
};
use crate::{unix_now, Action, Config, Engine, Maintenance, Reason, Verdict};
use std::sync::Arc;

/// A greylisting engine: the triplet table and its settings.
///
/// Thread-safe: any number of threads may call any function on one engine
/// at once, except `greylist_engine_free()`, which must be the last call.
pub struct greylist_engine {
    pub(crate) engine: Arc<Engine>,
    /// With a snapshot configured: the final save on free, and the thread.
    maintenance: Option<Maintenance>,
}

impl Drop for greylist_engine {
    fn drop(&mut self) {
        // The final snapshot; its error, if any, has nowhere to go but the
        // thread's last error.
        if let Some(m) = self.maintenance.take() {
            if let Err(e) = m.stop() {
                super::error::set_last_error(e.to_string());
            }
        }
    }
}

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
            ..Verdict::new(reason, v.retry_after, v.delayed)
        })
    }
}

/// The engine's counters. Append-only: new fields are added at the end.
/// Set `struct_size` to `sizeof(greylist_stats)` before calling
/// `greylist_engine_stats()`; the library fills only the fields that fit,
/// so a program built against an older header keeps working.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct greylist_stats {
    /// Set by the caller: `sizeof(greylist_stats)`.
    pub struct_size: u32,
    /// Reserved, 0.
    pub reserved: u32,
    /// Checks answered (the sum of the per-reason counts).
    pub checks: u64,
    /// Verdicts with `GREYLIST_REASON_NEW`.
    pub new_triplets: u64,
    /// Verdicts with `GREYLIST_REASON_EARLY_RETRY`.
    pub early_retries: u64,
    /// Verdicts with `GREYLIST_REASON_RETRIED`.
    pub retried: u64,
    /// Verdicts with `GREYLIST_REASON_PASSED`.
    pub passed: u64,
    /// Verdicts with `GREYLIST_REASON_WHITELISTED`.
    pub whitelisted: u64,
    /// Verdicts with `GREYLIST_REASON_AUTO_WHITELISTED`.
    pub auto_whitelisted: u64,
    /// Verdicts with `GREYLIST_REASON_BLOCKED`.
    pub blocked: u64,
    /// Entries removed past their lifetime.
    pub expired: u64,
    /// Entries removed to stay within the maximum entry count.
    pub evicted: u64,
    /// Pending triplets judged lost mail (see
    /// `greylist_engine_lost_mail_report()`).
    pub lost_mail: u64,
    /// Triplet entries in the table now.
    pub entries: u64,
    /// Client-network records kept now.
    pub clients: u64,
    /// Verdicts with `GREYLIST_REASON_TRAPPED`.
    pub trapped: u64,
    /// Verdicts with `GREYLIST_REASON_STORE_UNAVAILABLE`.
    pub store_unavailable: u64,
    /// Calls the shared store (Redis) answered, script loads included.
    pub store_round_trips: u64,
    /// Checks whose call to the shared store failed.
    pub store_errors: u64,
    /// Checks whose call to the shared store got no answer in time.
    pub store_timeouts: u64,
    /// Passes answered from the local pass cache without a round trip.
    pub cache_hits: u64,
    /// Client-network records removed to stay within the maximum.
    pub clients_evicted: u64,
    /// Records in the shared store that were malformed and treated as
    /// absent.
    pub store_malformed: u64,
    /// Lost triplets whose late retry passed after all.
    pub lost_recovered: u64,
}

/// Creates an engine from `config` (NULL for the defaults) and stores it in
/// `*out`. The config is copied: it may be freed or reused afterwards.
///
/// Returns `GREYLIST_STATUS_NULL_ARGUMENT` if `out` is NULL, and
/// `GREYLIST_STATUS_INVALID_ARGUMENT` if the settings do not fit together
/// (the message names the setting). On success the caller owns `*out` and
/// frees it with `greylist_engine_free()`; on failure `*out` is untouched.
///
/// # Safety
/// `config` must be NULL or a live config; `out` must be NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn greylist_engine_new(
    config: *const greylist_config,
    out: *mut *mut greylist_engine,
) -> greylist_status {
    status_of(|| {
        let out = out_ptr(out, "out")?;
        let (config, snapshot) = if config.is_null() {
            (Config::default(), None)
        } else {
            // SAFETY: the caller guarantees a live config.
            let c = unsafe { arg_ref(config, "config") }?;
            (c.builder.clone().build()?, c.snapshot.clone())
        };
        let handle = match snapshot {
            None => greylist_engine {
                engine: Arc::new(Engine::new(config)),
                maintenance: None,
            },
            Some(options) => {
                let started = Maintenance::open(config, &options, Arc::new(unix_now), None)?;
                greylist_engine {
                    engine: started.maintenance.engine().clone(),
                    maintenance: Some(started.maintenance),
                }
            }
        };
        // SAFETY: `out` was checked non-NULL; the caller guarantees it is writable.
        unsafe { write_out(out, into_handle(handle)) };
        Ok(())
    })
}

/// Loads the snapshot at `path` into a new engine with `config` (NULL for
/// the defaults) and stores it in `*out`. Keys stay valid: the secret comes
/// from the file.
///
/// Returns `GREYLIST_STATUS_IO` when the file cannot be read,
/// `GREYLIST_STATUS_CORRUPT` when it is damaged, truncated or not a
/// snapshot, `GREYLIST_STATUS_INCOMPATIBLE` when it comes from a newer
/// version or was made with other prefixes or extension delimiters; then
/// `*out` is untouched and nothing was loaded. A snapshot path set in
/// `config` is ignored here (this call does not save on free).
///
/// # Safety
/// `config` must be NULL or a live config; `path` NULL or NUL-terminated;
/// `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn greylist_engine_load(
    config: *const greylist_config,
    path: *const c_char,
    out: *mut *mut greylist_engine,
) -> greylist_status {
    status_of(|| {
        // SAFETY: the caller guarantees NULL or a NUL-terminated string.
        let path = unsafe { arg_str(path, "path") }?;
        let out = out_ptr(out, "out")?;
        let config = if config.is_null() {
            Config::default()
        } else {
            // SAFETY: the caller guarantees a live config.
            unsafe { arg_ref(config, "config") }?
                .builder
                .clone()
                .build()?
        };
        let engine = Engine::load(path, config)?;
        let handle = into_handle(greylist_engine {
            engine: Arc::new(engine),
            maintenance: None,
        });
        // SAFETY: `out` was checked non-NULL; the caller guarantees it is writable.
        unsafe { write_out(out, handle) };
        Ok(())
    })
}

/// Writes a snapshot of the engine to `path`: to `<path>.tmp`, fsynced,
/// renamed over `path`, folder fsynced, so a crash leaves the old or the
/// new file. Checks on other threads keep running meanwhile.
///
/// Returns `GREYLIST_STATUS_IO` (with the OS's message) when writing fails.
/// Thread-safe.
///
/// # Safety
/// `engine` must be NULL or a live engine; `path` NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn greylist_engine_save(
    engine: *const greylist_engine,
    path: *const c_char,
) -> greylist_status {
    status_of(|| {
        // SAFETY: the caller guarantees NULL or valid pointers.
        let (engine, path) = unsafe { (arg_ref(engine, "engine")?, arg_str(path, "path")?) };
        engine.engine.save(path)?;
        Ok(())
    })
}

/// Frees an engine and everything in it. NULL is a no-op. No other call on
/// the engine may be running or follow. With a snapshot configured, stops
/// the maintenance thread and writes a final snapshot first (a failure of
/// that save is left in `greylist_last_error()`).
///
/// # Safety
/// `engine` must be NULL or come from `greylist_engine_new()` and not be
/// freed already.
#[no_mangle]
pub unsafe extern "C" fn greylist_engine_free(engine: *mut greylist_engine) {
    value_of((), || {
        // SAFETY: the caller guarantees `engine` is NULL or ours and live.
        unsafe { free_handle(engine) }
    })
}

/// An engine, a client IP and a sender and recipient as bytes.
pub(crate) type TripletArgs<'a> = (&'a greylist_engine, &'a str, &'a [u8], &'a [u8]);

/// The engine and the three strings of a triplet.
///
/// # Safety
/// `engine` must be NULL or a live engine; the strings NULL or
/// NUL-terminated, all living for `'a`.
pub(crate) unsafe fn triplet_args<'a>(
    engine: *const greylist_engine,
    client_ip: *const c_char,
    sender: *const c_char,
    recipient: *const c_char,
) -> Result<TripletArgs<'a>, Failure> {
    // SAFETY: the caller's guarantees, passed on.
    unsafe {
        Ok((
            arg_ref(engine, "engine")?,
            arg_str(client_ip, "client_ip")?,
            arg_bytes(sender, "sender")?,
            arg_bytes(recipient, "recipient")?,
        ))
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

/// Removes every expired entry, one shard at a time while checks go on, and
/// writes the number of triplet entries removed to `*removed`. `now` is Unix
/// seconds or `GREYLIST_NOW`.
///
/// Thread-safe.
///
/// # Safety
/// `engine` must be NULL or a live engine; `removed` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn greylist_engine_sweep(
    engine: *mut greylist_engine,
    now: i64,
    removed: *mut u64,
) -> greylist_status {
    status_of(|| {
        // SAFETY: the caller guarantees NULL or a live engine.
        let engine = unsafe { arg_ref(engine, "engine") }?;
        let removed = out_ptr(removed, "removed")?;
        let n = engine.engine.sweep(resolve_now(now));
        // SAFETY: checked non-NULL; the caller guarantees it is writable.
        unsafe { write_out(removed, n) };
        Ok(())
    })
}

/// The number of triplet entries (pending and passed) in the table; 0 for
/// NULL. Thread-safe.
///
/// # Safety
/// `engine` must be NULL or a live engine.
#[no_mangle]
pub unsafe extern "C" fn greylist_engine_len(engine: *const greylist_engine) -> u64 {
    value_of(0, || {
        // SAFETY: the caller guarantees NULL or a live engine.
        unsafe { arg_ref(engine, "engine") }.map_or(0, |e| e.engine.len() as u64)
    })
}

/// Fills `*out` with the engine's counters, read while checks go on.
/// `out->struct_size` must be set by the caller (see `greylist_stats`); at
/// least the first two fields must fit, else
/// `GREYLIST_STATUS_INVALID_ARGUMENT`.
///
/// Thread-safe.
///
/// # Safety
/// `engine` must be NULL or a live engine; `out` NULL or writable for
/// `out->struct_size` bytes.
#[no_mangle]
pub unsafe extern "C" fn greylist_engine_stats(
    engine: *const greylist_engine,
    out: *mut greylist_stats,
) -> greylist_status {
    status_of(|| {
        // SAFETY: the caller guarantees NULL or a live engine.
        let engine = unsafe { arg_ref(engine, "engine") }?;
        let out = out_ptr(out, "out")?;
        let min = std::mem::offset_of!(greylist_stats, new_triplets);
        // SAFETY: `out` is non-NULL; the caller guarantees its first field
        // is readable.
        let size = unsafe { versioned_size::<_, u32>(out, "out", min) }?;
        let ours = std::mem::size_of::<greylist_stats>();
        // Every counter named once, with no `..`: one added to the Rust
        // stats does not compile until the C struct has it too.
        macro_rules! copy_stats {
            ($($field:ident),* $(,)?) => {{
                let crate::Stats { $($field),* } = engine.engine.stats();
                greylist_stats {
                    struct_size: size.min(ours) as u32,
                    reserved: 0,
                    $($field),*
                }
            }};
        }
        let stats = copy_stats!(
            checks,
            new_triplets,
            early_retries,
            retried,
            passed,
            whitelisted,
            auto_whitelisted,
            blocked,
            expired,
            evicted,
            lost_mail,
            entries,
            clients,
            trapped,
            store_unavailable,
            store_round_trips,
            store_errors,
            store_timeouts,
            cache_hits,
            clients_evicted,
            store_malformed,
            lost_recovered,
        );
        // SAFETY: the caller guarantees `out` holds `size` bytes.
        unsafe { copy_versioned(&stats, out, size) };
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

#[cfg(test)]
mod tests {
    use super::super::error::*;
    use super::*;
    use std::ptr::{null, null_mut};

    const T0: i64 = 1_700_000_000;

    fn new_engine() -> *mut greylist_engine {
        let mut e = null_mut();
        // SAFETY: NULL config means defaults; `e` is writable.
        assert_eq!(
            unsafe { greylist_engine_new(null(), &mut e) },
            GREYLIST_STATUS_OK
        );
        e
    }

    unsafe fn check(
        e: *mut greylist_engine,
        ip: &std::ffi::CStr,
        now: i64,
    ) -> (greylist_status, greylist_verdict) {
        let mut v = greylist_verdict {
            action: 99,
            reason: 99,
            retry_after: 99,
            delayed: 99,
        };
        // SAFETY: the caller passes a live engine; strings are NUL-terminated.
        let s = unsafe {
            greylist_engine_check(
                e,
                ip.as_ptr(),
                c"a@x.org".as_ptr(),
                c"b@y.net".as_ptr(),
                now,
                &mut v,
            )
        };
        (s, v)
    }

    #[test]
    fn cycle_through_the_c_abi() {
        let e = new_engine();
        // SAFETY: `e` is live until the free at the end.
        unsafe {
            let (s, v) = check(e, c"192.0.2.1", T0);
            assert_eq!(s, GREYLIST_STATUS_OK);
            assert_eq!(
                (v.action, v.reason, v.retry_after),
                (GREYLIST_ACTION_DEFER, GREYLIST_REASON_NEW, 300)
            );
            let mut buf = [0 as c_char; 64];
            assert_eq!(
                greylist_verdict_reply(e, &v, buf.as_mut_ptr(), buf.len()),
                GREYLIST_STATUS_OK
            );
            let text = std::ffi::CStr::from_ptr(buf.as_ptr()).to_str().unwrap();
            assert_eq!(
                text,
                "450 4.2.0 Greylisted, please try again in 300 seconds"
            );
            let mut small = [7 as c_char; 10];
            assert_eq!(
                greylist_verdict_reply(e, &v, small.as_mut_ptr(), small.len()),
                GREYLIST_STATUS_BUFFER_TOO_SMALL
            );
            assert_eq!(small, [7; 10], "nothing written on failure");
            let (_, v) = check(e, c"192.0.2.1", T0 + 300);
            assert_eq!(
                (v.action, v.reason, v.delayed),
                (GREYLIST_ACTION_PASS, GREYLIST_REASON_RETRIED, 300)
            );
            assert_eq!(greylist_engine_len(e), 1);
            let mut removed = 99;
            assert_eq!(
                greylist_engine_sweep(e, T0 + 100 * 86_400, &mut removed),
                GREYLIST_STATUS_OK
            );
            assert_eq!((removed, greylist_engine_len(e)), (1, 0));
            greylist_engine_free(e);
        }
    }

    #[test]
    fn failures_leave_outputs_alone() {
        let e = new_engine();
        // SAFETY: `e` is live until the free at the end; NULLs are allowed.
        unsafe {
            let (s, v) = check(e, c"not-an-ip", T0);
            assert_eq!(s, GREYLIST_STATUS_INVALID_ARGUMENT);
            assert_eq!(v.action, 99);
            let (s, _) = check(null_mut(), c"192.0.2.1", T0);
            assert_eq!(s, GREYLIST_STATUS_NULL_ARGUMENT);
            let mut v = greylist_verdict {
                action: 0,
                reason: 0,
                retry_after: 0,
                delayed: 0,
            };
            let s = greylist_engine_check(
                e,
                c"192.0.2.1".as_ptr(),
                null(),
                c"b@y".as_ptr(),
                T0,
                &mut v,
            );
            assert_eq!(s, GREYLIST_STATUS_NULL_ARGUMENT);
            let s = greylist_engine_check(
                e,
                c"192.0.2.1".as_ptr(),
                c"".as_ptr(),
                c"b@y".as_ptr(),
                T0,
                null_mut(),
            );
            assert_eq!(s, GREYLIST_STATUS_NULL_ARGUMENT);
            assert_eq!(
                greylist_engine_len(e),
                0,
                "no output pointer, nothing recorded"
            );
            let bogus = greylist_verdict {
                action: 0,
                reason: 42,
                retry_after: 0,
                delayed: 0,
            };
            let mut buf = [0 as c_char; 8];
            assert_eq!(
                greylist_verdict_reply(e, &bogus, buf.as_mut_ptr(), 8),
                GREYLIST_STATUS_INVALID_ARGUMENT
            );
            assert_eq!(greylist_engine_len(null()), 0);
            greylist_engine_free(e);
            greylist_engine_free(null_mut());
        }
    }

    #[test]
    fn stats_fill_only_what_the_caller_has() {
        let e = new_engine();
        // SAFETY: `e` is live until the free at the end; `old` holds 24 bytes.
        unsafe {
            check(e, c"192.0.2.1", T0);
            let mut full = greylist_stats {
                struct_size: std::mem::size_of::<greylist_stats>() as u32,
                ..Default::default()
            };
            assert_eq!(greylist_engine_stats(e, &mut full), GREYLIST_STATUS_OK);
            assert_eq!((full.checks, full.new_triplets, full.entries), (1, 1, 1));
            // A caller built against a header with only the first three fields.
            let mut old = [24u64, 0, 0, 77];
            assert_eq!(
                greylist_engine_stats(e, old.as_mut_ptr().cast()),
                GREYLIST_STATUS_OK
            );
            assert_eq!(
                (old[0] & 0xFFFF_FFFF, old[1], old[2], old[3]),
                (24, 1, 1, 77)
            );
            let mut tiny = greylist_stats {
                struct_size: 4,
                ..Default::default()
            };
            assert_eq!(
                greylist_engine_stats(e, &mut tiny),
                GREYLIST_STATUS_INVALID_ARGUMENT
            );
            greylist_engine_free(e);
        }
    }

    #[test]
    fn bad_config_is_named() {
        let c = super::super::config::greylist_config_new();
        // SAFETY: `c` is live until freed; `e` is writable.
        unsafe {
            super::super::config::greylist_config_set_delay(c, 3 * 86_400);
            let mut e = null_mut();
            assert_eq!(
                greylist_engine_new(c, &mut e),
                GREYLIST_STATUS_INVALID_ARGUMENT
            );
            assert!(e.is_null());
            let mut buf = [0 as c_char; 256];
            greylist_last_error(buf.as_mut_ptr(), buf.len());
            let msg = std::ffi::CStr::from_ptr(buf.as_ptr()).to_str().unwrap();
            assert!(msg.starts_with("config: delay: "), "{msg}");
            super::super::config::greylist_config_free(c);
        }
    }
}
