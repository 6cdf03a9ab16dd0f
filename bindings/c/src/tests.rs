//! Tests of the C functions through their Rust names (Miri runs them).

mod engine_calls {
    use crate::*;
    use std::ffi::c_char;
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

mod admin_calls {
    use crate::*;
    use std::ffi::c_void;
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

    /// Issue 23: a pool retrying from another host and network passes,
    /// keyed by its verified host name's domain, and `key_used` says so;
    /// an older caller's request (no `key_used`) is answered the same.
    #[test]
    fn host_names_key_pools_and_say_so() {
        let mut e = null_mut();
        // SAFETY: live pointers; `e` is freed last.
        unsafe {
            assert_eq!(greylist_engine_new(null(), &mut e), GREYLIST_STATUS_OK);
            // Every access goes through the one raw pointer the library
            // writes through (Miri: a direct write would invalidate it).
            let mut cell = 0u32;
            let used = &raw mut cell;
            let mut req = greylist_request {
                struct_size: std::mem::size_of::<greylist_request>(),
                client_ip: c"209.85.220.41".as_ptr(),
                sender: c"alice@gmail.com".as_ptr(),
                recipient: c"bob@example.net".as_ptr(),
                client_name: c"mail-sor-f41.google.com".as_ptr(),
                helo: null(),
                verified_domain: null(),
                now: T0,
                key_used: used,
            };
            let mut v = std::mem::zeroed::<greylist_verdict>();
            assert_eq!(
                greylist_engine_check_request(e, &req, &mut v),
                GREYLIST_STATUS_OK
            );
            assert_eq!(
                (v.reason, *used),
                (GREYLIST_REASON_NEW, GREYLIST_KEY_HOST_DOMAIN)
            );
            req.client_ip = c"74.125.0.5".as_ptr();
            req.client_name = c"mail-yw1-f5.google.com".as_ptr();
            req.now = T0 + 301;
            req.struct_size = std::mem::offset_of!(greylist_request, key_used);
            *used = 0;
            assert_eq!(
                greylist_engine_check_request(e, &req, &mut v),
                GREYLIST_STATUS_OK
            );
            assert_eq!((v.reason, *used), (GREYLIST_REASON_RETRIED, 0));
            req.struct_size = std::mem::size_of::<greylist_request>();
            req.client_name = c"unknown".as_ptr();
            assert_eq!(
                greylist_engine_check_request(e, &req, &mut v),
                GREYLIST_STATUS_OK
            );
            assert_eq!(
                (v.reason, *used),
                (GREYLIST_REASON_NEW, GREYLIST_KEY_NETWORK)
            );
            let config = greylist_config_new();
            assert!(!config.is_null());
            assert_eq!(
                greylist_config_set_key_by_host_name(config, false),
                GREYLIST_STATUS_OK
            );
            assert_eq!(
                greylist_config_set_key_by_host_name(null_mut(), false),
                GREYLIST_STATUS_NULL_ARGUMENT
            );
            let mut off = null_mut();
            assert_eq!(greylist_engine_new(config, &mut off), GREYLIST_STATUS_OK);
            req.client_name = c"mail-yw1-f5.google.com".as_ptr();
            assert_eq!(
                greylist_engine_check_request(off, &req, &mut v),
                GREYLIST_STATUS_OK
            );
            assert_eq!(*used, GREYLIST_KEY_NETWORK);
            greylist_engine_free(off);
            greylist_config_free(config);
            greylist_engine_free(e);
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
                key_used: null_mut(),
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
                crate::GREYLIST_NOW,
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
