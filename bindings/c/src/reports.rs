//! Counters, the lost-mail and client reports, and what an administrator
//! does with them: release a triplet or a client, forget a sender.

use std::ffi::c_char;

use crate::check::opt_str;
use crate::engine::{greylist_engine, triplet_args};
use crate::errors::{greylist_status, status_of};
use crate::{
    arg_ref, arg_str, c_chars, copy_versioned, out_ptr, resolve_now, versioned_size, write_out,
};

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
                let greylist_core::Stats { $($field),* } = engine.engine.stats();
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
