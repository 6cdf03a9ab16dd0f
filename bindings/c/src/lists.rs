//! Whitelists and trap lists: set from strings or loaded from files.

use std::ffi::c_char;

use crate::engine::greylist_engine;
use crate::errors::{greylist_status, status_of, Failure, GREYLIST_STATUS_IO};
use crate::{arg_ref, arg_str, out_ptr, write_out};
use greylist_core::{ListError, ListKind};

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
