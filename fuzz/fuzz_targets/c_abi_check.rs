//! The C ABI check path: arbitrary bytes split into IP / sender /
//! recipient C strings (with and without NUL inside, over-long), through
//! `greylist_engine_check`. Must hold: a status, never a panic; outputs
//! only on success; a triplet checked twice within the delay never passes.
#![no_main]

use std::ffi::c_char;

use greylist_c::*;
use libfuzzer_sys::fuzz_target;

const T0: i64 = 1_700_000_000;

fuzz_target!(|data: &[u8]| {
    // Split at the first two 0xFF bytes; each part NUL-terminated (a NUL
    // inside a part just ends that C string early).
    let mut parts = data.splitn(3, |&b| b == 0xFF).map(|p| {
        let mut v = p.to_vec();
        v.push(0);
        v
    });
    let (ip, sender, recipient) = match (parts.next(), parts.next(), parts.next()) {
        (Some(a), Some(b), Some(c)) => (a, b, c),
        _ => return,
    };
    let mut engine = std::ptr::null_mut();
    // SAFETY: NULL config means defaults; `engine` is writable.
    assert_eq!(unsafe { greylist_engine_new(std::ptr::null(), &mut engine) }, GREYLIST_STATUS_OK);
    let check = |now: i64| {
        let mut v = greylist_verdict { action: 77, reason: 77, retry_after: 77, delayed: 77 };
        // SAFETY: a live engine, NUL-terminated buffers, a writable verdict.
        let status = unsafe {
            greylist_engine_check(
                engine,
                ip.as_ptr() as *const c_char,
                sender.as_ptr() as *const c_char,
                recipient.as_ptr() as *const c_char,
                now,
                &mut v,
            )
        };
        (status, v)
    };
    let (first, v1) = check(T0);
    match first {
        GREYLIST_STATUS_OK => assert_eq!((v1.action, v1.reason), (GREYLIST_ACTION_DEFER, GREYLIST_REASON_NEW)),
        GREYLIST_STATUS_INVALID_ARGUMENT => assert_eq!(v1.action, 77, "output written on failure"),
        other => panic!("unexpected status {other}"),
    }
    let (second, v2) = check(T0 + 1);
    assert_eq!(second, first, "the same input must get the same status");
    if second == GREYLIST_STATUS_OK {
        assert_ne!(v2.action, GREYLIST_ACTION_PASS, "passed before the delay");
        assert_eq!(v2.reason, GREYLIST_REASON_EARLY_RETRY);
    }
    // SAFETY: the engine is not used after this.
    unsafe { greylist_engine_free(engine) };
});
