//! What two MX hosts sharing one store must see of each other's
//! operations (issue 18): the same scenarios on one redis-server
//! (tests/redis.rs) and on a Redis Cluster (tests/redis_ha.rs). Each takes
//! two engines on the same store, prefix and secret, with nothing in it.

#![allow(dead_code)]

use greylist::{Action, Engine, Reason, Request};

pub const T0: i64 = 1_700_000_000;

/// The Exchange 2003 SP2 sender of the scenarios.
pub const EX: (&str, &str, &str) = ("192.0.2.10", "alice@corp.example", "bob@example.net");

pub fn at(mx: &Engine, now: i64) -> greylist::Verdict {
    mx.check(EX.0, EX.1, EX.2, now).unwrap()
}

/// Every scenario, one after the other (each on its own networks would
/// not do: they share 192.0.2.0/24), for a store made anew per call.
pub fn all(mut pair: impl FnMut(&str) -> (Engine, Engine)) {
    type Scenario = fn(&Engine, &Engine);
    let scenarios: [(&str, Scenario); 5] = [
        ("release", release),
        ("forget", forget),
        ("release_client", release_client),
        ("client_report", client_report),
        ("lost_mail", lost_mail),
    ];
    for (name, scenario) in scenarios {
        let (mx1, mx2) = pair(name);
        scenario(&mx1, &mx2);
    }
}

pub fn release(mx1: &Engine, mx2: &Engine) {
    assert_eq!(at(mx1, T0).reason, Reason::New);
    mx2.release(EX.0, EX.1, EX.2, T0 + 10).unwrap();
    let state = mx1.triplet_state(EX.0, EX.1, EX.2).unwrap().unwrap();
    assert!(state.passed, "{state:?}");
    let v = at(mx1, T0 + 11);
    assert_eq!((v.action, v.reason), (Action::Pass, Reason::Passed));
    // MX 1 kept nothing locally: it all lives in Redis (MX 2 keeps its
    // release locally too, for checks it answers during an outage).
    assert_eq!((mx1.len(), mx2.len()), (0, 1));
}

pub fn forget(mx1: &Engine, mx2: &Engine) {
    at(mx1, T0);
    assert_eq!(at(mx1, T0 + 10).reason, Reason::EarlyRetry);
    assert!(mx2.forget(EX.0, EX.1, EX.2).unwrap(), "known in Redis");
    assert!(!mx2.forget(EX.0, EX.1, EX.2).unwrap(), "gone");
    assert_eq!(mx1.triplet_state(EX.0, EX.1, EX.2).unwrap(), None);
    let v = at(mx1, T0 + 300);
    assert_eq!(v.reason, Reason::New, "the retry starts over");
}

pub fn release_client(mx1: &Engine, mx2: &Engine) {
    mx2.set_list(greylist::ListKind::TrapRecipients, &["trap@example.net"])
        .unwrap();
    // A pending triplet of the network, then the trap at MX 2.
    assert_eq!(at(mx1, T0).reason, Reason::New);
    let v = mx2
        .check("192.0.2.99", "spam@x.example", "trap@example.net", T0 + 1)
        .unwrap();
    assert_eq!((v.action, v.reason), (Action::Block, Reason::Trapped));
    let v = at(mx1, T0 + 2);
    assert_eq!((v.action, v.reason), (Action::Block, Reason::Blocked));
    let report = mx1.client_report("192.0.2.1", None, T0 + 2).unwrap();
    assert!(report.blocked_until.is_some(), "{report:?}");
    assert_eq!(
        report,
        mx2.client_report("192.0.2.7", None, T0 + 2).unwrap()
    );

    assert_eq!(mx1.release_client("192.0.2.5", T0 + 3).unwrap(), 1);
    for mx in [mx1, mx2] {
        let r = mx.client_report("192.0.2.1", None, T0 + 3).unwrap();
        assert_eq!(
            (r.blocked_until, r.pending, r.passed),
            (None, 0, 1),
            "{r:?}"
        );
    }
    let v = at(mx2, T0 + 4);
    assert_eq!((v.action, v.reason), (Action::Pass, Reason::Passed));
    let v = mx2
        .check("192.0.2.98", "other@x.example", "u@example.net", T0 + 5)
        .unwrap();
    assert_eq!(v.reason, Reason::New, "no longer blocked");
}

pub fn client_report(mx1: &Engine, mx2: &Engine) {
    // A message an hour (the auto-whitelist counts one pass an hour).
    for i in 0..3 {
        let (rcpt, t) = (format!("user{i}@example.net"), T0 + i * 3600);
        mx1.check("198.51.100.7", "a@x.example", &rcpt, t).unwrap();
        if i < 2 {
            let v = mx2
                .check("198.51.100.8", "a@x.example", &rcpt, t + 300)
                .unwrap();
            assert_eq!(v.reason, Reason::Retried);
        }
    }
    let end = T0 + 2 * 3600 + 1;
    let r1 = mx1.client_report("198.51.100.1", None, end).unwrap();
    let r2 = mx2.client_report("198.51.100.200", None, end).unwrap();
    assert_eq!(r1, r2);
    assert_eq!((r1.pending, r1.passed, r1.passes), (1, 2, 2), "{r1:?}");
    assert_eq!(r1.network.to_string(), "198.51.100.0/24");
    let c = mx2.client_state("198.51.100.3").unwrap().unwrap();
    assert_eq!(c.passes, 2);
}

pub fn lost_mail(mx1: &Engine, mx2: &Engine) {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = seen.clone();
    mx2.on_event(Some(Box::new(move |e: &greylist::Event| {
        if e.kind == greylist::EventKind::LostMail {
            sink.lock()
                .unwrap()
                .push((e.network.to_string(), e.count, e.at, e.triplet));
        }
    })))
    .unwrap();
    // Exchange 2003 SP2 at MX 1: two retries within seconds, then silence.
    for dt in [0, 4, 9] {
        at(mx1, T0 + dt);
    }
    // A spammer that never retried, and a blaster, lose nothing.
    mx1.check("203.0.113.5", "s@spam.example", "u@example.net", T0)
        .unwrap();
    for dt in 0..8 {
        mx1.check("198.51.100.9", "b@blast.example", "u@example.net", T0 + dt)
            .unwrap();
    }
    // Not lost before delay + lost_after...
    mx2.sweep(T0 + 300 + 3599);
    assert!(mx1.lost_mail_report(10).unwrap().is_empty());
    // ...and then at whichever MX sweeps, once.
    mx2.sweep(T0 + 300 + 3600);
    mx1.sweep(T0 + 300 + 3601);
    for mx in [mx1, mx2] {
        let report = mx.lost_mail_report(10).unwrap();
        assert_eq!(report.len(), 1, "{report:?}");
        assert_eq!(report[0].network.to_string(), "192.0.2.0/24");
        assert_eq!((report[0].count, report[0].last_seen), (1, (T0 + 9) as u32));
        let r = mx.client_report(EX.0, None, T0 + 4000).unwrap();
        assert_eq!(r.lost_mail, 1);
    }
    assert_eq!((mx1.stats().lost_mail, mx2.stats().lost_mail), (0, 1));
    assert_eq!(
        *seen.lock().unwrap(),
        vec![(
            "192.0.2.0/24".to_string(),
            2,
            (T0 + 9) as u32,
            Some(mx2.request_key(&Request::new(EX.0, EX.1, EX.2)).unwrap())
        )]
    );
    // A late retry at MX 1 passes after all: recovered, the row goes.
    let v = at(mx1, T0 + 5000);
    assert_eq!(v.reason, Reason::Retried);
    assert_eq!(mx1.stats().lost_recovered, 1);
    assert!(mx2.lost_mail_report(10).unwrap().is_empty());
}
