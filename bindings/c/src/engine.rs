//! `greylist_engine`: made, loaded, saved, swept and freed.

use std::ffi::c_char;
use std::sync::Arc;

use crate::config::greylist_config;
use crate::errors::{greylist_status, status_of, value_of, Failure};
use crate::{
    arg_bytes, arg_ref, arg_str, free_handle, into_handle, out_ptr, resolve_now, write_out,
};
use greylist_core::{unix_now, Config, Engine, Maintenance};

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
                crate::errors::set_last_error(e.to_string());
            }
        }
    }
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
