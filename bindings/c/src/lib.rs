//! libgreylist: the C ABI of the greylist engine, a thin translation layer
//! over its safe Rust API (`include/greylist.h`, generated from this crate
//! by cbindgen; built and installed with cargo-c).
//!
//! Conventions (the README's "C API conventions" says the same for C users):
//! every exported function runs inside the panic boundary of
//! `errors::status_of` / `errors::value_of`; fallible functions return a
//! `greylist_status` and write their outputs only on success; NULL,
//! malformed or over-long input is a status, never a crash; the message of
//! the last failure on a thread is copied out by `greylist_last_error()`.
//! All pointer casting happens in this file.
//!
//! The modules follow the header: status and errors, config, engine, check,
//! lists, reports, events.

#![allow(unsafe_code, non_camel_case_types)]

use std::ffi::{c_char, CStr};

// In the header's order (cbindgen reads them in this order): one per
// group, so rustfmt keeps it.
pub mod errors;

pub mod config;

pub mod engine;

pub mod check;

pub mod lists;

pub mod reports;

pub mod events;

pub use check::*;
pub use config::*;
pub use engine::*;
pub use errors::*;
pub use events::*;
pub use lists::*;
pub use reports::*;

#[cfg(test)]
mod tests;

/// The version of the C ABI. It changes only when a released function,
/// type or constant changes incompatibly; additions keep it. The shared
/// library's SONAME carries it (`libgreylist.so.1`).
pub const GREYLIST_ABI_VERSION: u32 = 1;

/// Pass as `now` to use the system clock.
pub const GREYLIST_NOW: i64 = i64::MIN;

const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");

/// The library's version (`"0.1.0"`), a static NUL-terminated string.
///
/// Never NULL, never freed. Thread-safe.
#[no_mangle]
pub extern "C" fn greylist_version() -> *const c_char {
    VERSION.as_ptr().cast()
}

/// The ABI version this library implements; equals `GREYLIST_ABI_VERSION`
/// of the header it was built with. Bindings compare the two at load time.
///
/// Thread-safe.
#[no_mangle]
pub extern "C" fn greylist_abi_version() -> u32 {
    GREYLIST_ABI_VERSION
}

/// Resolves the `now` argument of an exported function.
pub(crate) fn resolve_now(now: i64) -> i64 {
    if now == GREYLIST_NOW {
        greylist_core::unix_now()
    } else {
        now
    }
}

/// Borrows a handle the caller passed.
///
/// # Safety
/// `ptr` must be NULL or point to a live `T` that is not mutated for `'a`.
pub(crate) unsafe fn arg_ref<'a, T>(ptr: *const T, name: &str) -> Result<&'a T, Failure> {
    // SAFETY: the caller guarantees `ptr` is NULL or valid for `'a`.
    unsafe { ptr.as_ref() }.ok_or_else(|| Failure::null(name))
}

/// Mutably borrows a handle the caller passed.
///
/// # Safety
/// `ptr` must be NULL or point to a live `T` that nothing else uses for `'a`.
pub(crate) unsafe fn arg_mut<'a, T>(ptr: *mut T, name: &str) -> Result<&'a mut T, Failure> {
    // SAFETY: the caller guarantees `ptr` is NULL or valid and unaliased.
    unsafe { ptr.as_mut() }.ok_or_else(|| Failure::null(name))
}

/// Reads a NUL-terminated UTF-8 string argument.
///
/// # Safety
/// `ptr` must be NULL or point to a NUL-terminated string that lives for `'a`.
pub(crate) unsafe fn arg_str<'a>(ptr: *const c_char, name: &str) -> Result<&'a str, Failure> {
    if ptr.is_null() {
        return Err(Failure::null(name));
    }
    // SAFETY: not NULL, and the caller guarantees NUL termination.
    let bytes = unsafe { CStr::from_ptr(ptr) }.to_bytes();
    std::str::from_utf8(bytes).map_err(|e| {
        Failure::invalid(format!(
            "{name}: is not valid UTF-8 (bad byte at offset {})",
            e.valid_up_to()
        ))
    })
}

/// Reads a NUL-terminated string argument as bytes (an address from SMTP,
/// which need not be UTF-8).
///
/// # Safety
/// `ptr` must be NULL or point to a NUL-terminated string that lives for `'a`.
pub(crate) unsafe fn arg_bytes<'a>(ptr: *const c_char, name: &str) -> Result<&'a [u8], Failure> {
    if ptr.is_null() {
        return Err(Failure::null(name));
    }
    // SAFETY: not NULL, and the caller guarantees NUL termination.
    Ok(unsafe { CStr::from_ptr(ptr) }.to_bytes())
}

/// Reads an optional NUL-terminated string argument as bytes: NULL is
/// `None`.
///
/// # Safety
/// `ptr` must be NULL or point to a NUL-terminated string that lives for `'a`.
pub(crate) unsafe fn opt_bytes<'a>(ptr: *const c_char) -> Option<&'a [u8]> {
    // SAFETY: the caller's guarantee, passed on.
    (!ptr.is_null()).then(|| unsafe { CStr::from_ptr(ptr) }.to_bytes())
}

/// Checks an output pointer before any work is done, so that a NULL output
/// fails without side effects.
pub(crate) fn out_ptr<T>(ptr: *mut T, name: &str) -> Result<*mut T, Failure> {
    if ptr.is_null() {
        Err(Failure::null(name))
    } else {
        Ok(ptr)
    }
}

/// Writes a result through a checked output pointer.
///
/// # Safety
/// `ptr` must come from [`out_ptr`] and point to writable memory for a `T`.
pub(crate) unsafe fn write_out<T>(ptr: *mut T, value: T) {
    // SAFETY: the caller guarantees `ptr` is non-NULL and writable; `write`
    // does not read or drop the old (possibly uninitialised) contents.
    unsafe { ptr.write(value) }
}

/// Copies `text` into `out` NUL-terminated, cut at a character boundary to
/// fit. `out` must not be empty.
pub(crate) fn copy_truncated(text: &str, out: &mut [u8]) {
    let mut n = text.len().min(out.len() - 1);
    while !text.is_char_boundary(n) {
        n -= 1;
    }
    out[..n].copy_from_slice(&text.as_bytes()[..n]);
    out[n] = 0;
}

/// Copies `text` into the caller's buffer in full, NUL-terminated, or fails
/// with `GREYLIST_STATUS_BUFFER_TOO_SMALL` without writing.
///
/// # Safety
/// `buf` must be NULL or point to `len` writable bytes.
pub(crate) unsafe fn write_str(buf: *mut c_char, len: usize, text: &str) -> Result<(), Failure> {
    let buf = out_ptr(buf, "buf")?;
    if text.len() >= len {
        return Err(Failure::new(
            errors::GREYLIST_STATUS_BUFFER_TOO_SMALL,
            format!("buf: {} bytes needed, {len} given", text.len() + 1),
        ));
    }
    // SAFETY: `buf` is non-NULL and the caller guarantees `len` writable
    // bytes; `len > text.len() >= 0`.
    let out = unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), len) };
    copy_truncated(text, out);
    Ok(())
}

/// A string as a NUL-terminated C character array, cut to fit.
pub(crate) fn c_chars<const N: usize>(text: &str) -> [c_char; N] {
    let mut bytes = [0u8; N];
    copy_truncated(text, &mut bytes);
    bytes.map(|b| b as c_char)
}

/// The `struct_size` a caller wrote at the start of a versioned struct
/// (a `u32` or a `usize`, `S`), checked to cover at least `min` bytes: the
/// fields every version of the struct has.
///
/// # Safety
/// `ptr` must be non-NULL, with its first field (an `S`) readable.
pub(crate) unsafe fn versioned_size<T, S: Copy + TryInto<usize>>(
    ptr: *const T,
    name: &str,
    min: usize,
) -> Result<usize, Failure> {
    // SAFETY: the caller guarantees the first field is readable.
    let size = unsafe { ptr.cast::<S>().read() }.try_into().unwrap_or(0);
    if size < min {
        let type_name = std::any::type_name::<T>().rsplit("::").next().unwrap_or("");
        return Err(Failure::invalid(format!(
            "{name}: struct_size {size} is too small; set it to sizeof({type_name})"
        )));
    }
    Ok(size)
}

/// Copies the first `size` bytes (at most the whole struct) between the
/// caller's version of a struct and ours: an older caller's smaller struct
/// gets, or gives, only the fields it has.
///
/// # Safety
/// `from` must be readable and `to` writable for `min(size, size_of::<T>())`
/// bytes, and they must not overlap.
pub(crate) unsafe fn copy_versioned<T>(from: *const T, to: *mut T, size: usize) {
    // SAFETY: the caller's guarantees; `T` is plain `repr(C)` data.
    unsafe {
        std::ptr::copy_nonoverlapping(
            from.cast::<u8>(),
            to.cast::<u8>(),
            size.min(std::mem::size_of::<T>()),
        )
    }
}

/// Moves a value to the heap and hands its ownership to C.
pub(crate) fn into_handle<T>(value: T) -> *mut T {
    Box::into_raw(Box::new(value))
}

/// Takes back ownership of a handle from C and drops it; NULL is a no-op.
///
/// # Safety
/// `ptr` must be NULL or come from [`into_handle`] and not be freed yet.
pub(crate) unsafe fn free_handle<T>(ptr: *mut T) {
    if !ptr.is_null() {
        // SAFETY: the caller guarantees `ptr` came from `Box::into_raw` and
        // ownership returns to us exactly once.
        drop(unsafe { Box::from_raw(ptr) });
    }
}

#[cfg(test)]
mod lib_tests {
    use super::*;

    #[test]
    fn version_and_abi() {
        // SAFETY: greylist_version returns a static NUL-terminated string.
        let v = unsafe { CStr::from_ptr(greylist_version()) };
        assert_eq!(v.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
        assert_eq!(greylist_abi_version(), GREYLIST_ABI_VERSION);
    }

    #[test]
    fn truncation_respects_characters() {
        let mut out = [0xFFu8; 4];
        copy_truncated("añb", &mut out);
        assert_eq!(&out, b"a\xC3\xB1\0");
        let mut out = [0xFFu8; 3];
        copy_truncated("añb", &mut out);
        assert_eq!(&out[..2], b"a\0");
        let mut out = [0xFFu8; 1];
        copy_truncated("abc", &mut out);
        assert_eq!(out, [0]);
    }

    #[test]
    fn strings_are_checked() {
        let bad = [0xC3u8, 0x28, 0];
        // SAFETY: NUL-terminated arrays that outlive the calls.
        let e = unsafe { arg_str(bad.as_ptr().cast(), "sender") }.unwrap_err();
        assert_eq!(e.status, errors::GREYLIST_STATUS_INVALID_ARGUMENT);
        assert!(e.message.starts_with("sender: is not valid UTF-8"));
        // SAFETY: NULL is allowed.
        let e = unsafe { arg_str(std::ptr::null(), "recipient") }.unwrap_err();
        assert_eq!(
            (e.status, e.message.as_str()),
            (errors::GREYLIST_STATUS_NULL_ARGUMENT, "recipient: is NULL")
        );
        // SAFETY: a static NUL-terminated string.
        assert_eq!(unsafe { arg_str(c"ok".as_ptr(), "x") }.unwrap(), "ok");
    }
}
