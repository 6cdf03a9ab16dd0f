//! Whitelists, traps, blasting, verified-domain keys, the lost-mail report,
//! events, and an operator's release and forget.

use std::sync::{Arc, Mutex};

#[path = "support/names.rs"]
mod names;

use greylist::{Action, Config, Engine, Event, EventKind, KeyKind, ListKind, Reason, Request};

const T0: i64 = 1_700_000_000;

fn reason(e: &Engine, ip: &str, sender: &str, rcpt: &str, now: i64) -> Reason {
    e.check(ip, sender, rcpt, now).unwrap().reason
}

#[test]
fn each_list_kind_matches_and_does_not_over_match() {
    let e = Engine::new(Config::default());
    e.set_list(
        ListKind::Clients,
        &["10.0.0.0/8", "2001:db8::/32", ".google.com"],
    )
    .unwrap();
    e.set_list(ListKind::Senders, &["example.com", "boss@corp.example"])
        .unwrap();
    e.set_list(
        ListKind::Recipients,
        &["postmaster@example.net", "example.org"],
    )
    .unwrap();
    let w = Reason::Whitelisted;
    assert_eq!(reason(&e, "10.1.2.3", "a@x.net", "b@y.net", T0), w);
    assert_ne!(reason(&e, "11.0.0.1", "a@x.net", "b@y.net", T0), w);
    assert_eq!(reason(&e, "2001:db8:1::1", "a@x.net", "b@y.net", T0), w);
    assert_ne!(reason(&e, "2001:db9::1", "a@x.net", "b@y.net", T0), w);
    let named = |name: &str| {
        let req = Request::new("203.0.113.7", "a@x.net", "b@y.net").client_name(name);
        e.check_request(&req, T0).unwrap().reason
    };
    assert_eq!(named("mail-a1.google.com"), w);
    assert_ne!(named("evilgoogle.com"), w);
    assert_eq!(
        reason(&e, "203.0.113.8", "Someone@Example.com", "b@y.net", T0),
        w
    );
    assert_eq!(
        reason(&e, "203.0.113.8", "news@lists.example.com", "b@y.net", T0),
        w
    );
    assert_ne!(
        reason(&e, "203.0.113.8", "a@notexample.com", "b@y.net", T0),
        w
    );
    assert_eq!(
        reason(&e, "203.0.113.8", "boss@corp.example", "b@y.net", T0),
        w
    );
    assert_ne!(
        reason(&e, "203.0.113.8", "intern@corp.example", "b@y.net", T0),
        w
    );
    assert_eq!(
        reason(&e, "203.0.113.9", "a@x.net", "Postmaster+x@example.net", T0),
        w
    );
    assert_ne!(
        reason(&e, "203.0.113.9", "a@x.net", "bob@example.net", T0),
        w
    );
    assert_eq!(
        reason(&e, "203.0.113.9", "a@x.net", "anyone@example.org", T0),
        w
    );
    // Whitelisted checks leave no entries behind.
    assert_eq!(e.stats().whitelisted, 8);
}

#[test]
fn a_bad_list_line_is_numbered_and_nothing_is_applied() {
    let dir = std::env::temp_dir().join(format!("greylist-lists-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.txt");
    std::fs::write(
        &good,
        "# partners\n192.0.2.0/24\n\n2001:db8::/32  # v6\n.partner.example\n",
    )
    .unwrap();
    assert_eq!(e_load(&good).unwrap(), 3);
    let bad = dir.join("bad.txt");
    std::fs::write(&bad, "198.51.100.0/24\n# fine so far\n\n203.0.113.0/33\n").unwrap();
    let e = Engine::new(Config::default());
    e.load_list(ListKind::Clients, &good).unwrap();
    let err = e.load_list(ListKind::Clients, &bad).unwrap_err();
    assert_eq!(
        err.to_string(),
        "line 4: /33 is not a prefix length from 0 to 32"
    );
    // The good file's list is still in force; the bad file's first line is not.
    assert_eq!(
        reason(&e, "192.0.2.9", "a@x", "b@y", T0),
        Reason::Whitelisted
    );
    assert_eq!(reason(&e, "198.51.100.1", "a@x", "b@y", T0), Reason::New);
    assert!(e
        .load_list(ListKind::Clients, dir.join("missing.txt"))
        .is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

fn e_load(path: &std::path::Path) -> Result<usize, greylist::ListError> {
    Engine::new(Config::default()).load_list(ListKind::Clients, path)
}

#[test]
fn a_pool_retrying_from_another_address_passes_with_verified_domains() {
    for (on, expected) in [(true, Reason::Retried), (false, Reason::New)] {
        let config = Config::builder()
            .key_by_verified_domain(on)
            .build()
            .unwrap();
        let e = Engine::new(config);
        let at = |ip, now| {
            let req = Request::new(ip, "alice@example.com", "bob@example.net")
                .verified_domain("example.com");
            e.check_request(&req, now).unwrap().reason
        };
        assert_eq!(at("203.0.113.5", T0), Reason::New);
        assert_eq!(
            at("198.51.100.7", T0 + 300),
            expected,
            "key_by_verified_domain = {on}"
        );
    }
}

/// Issue 23: a pool retrying from other hosts in other networks passes
/// on its first retry when keyed by its verified host names' domain, and
/// the verdict says so; without a verified name (`unknown`) each new
/// network is greylisted, and a generic name keeps its network.
#[test]
fn a_pool_retrying_from_another_host_passes_by_its_host_names() {
    let e = Engine::new(Config::default());
    let at = |ip, name, now| {
        let req = Request::new(ip, "alice@gmail.com", "bob@example.net").client_name(name);
        e.check_request(&req, now).unwrap()
    };
    let v = at("209.85.220.41", "mail-sor-f41.google.com", T0);
    assert_eq!((v.reason, v.key), (Reason::New, KeyKind::HostDomain));
    let v = at("74.125.0.5", "mail-yw1-f5.google.com", T0 + 301);
    assert_eq!((v.reason, v.key), (Reason::Retried, KeyKind::HostDomain));
    let v = at("172.217.0.9", "mail-qt1-f9.google.com", T0 + 400);
    assert_eq!((v.reason, v.key), (Reason::Passed, KeyKind::HostDomain));
    // No verified name: every new network is a new triplet.
    for (i, ip) in ["209.85.220.41", "74.125.0.5", "172.217.0.9"]
        .iter()
        .enumerate()
    {
        let v = e
            .check_request(
                &Request::new(ip, "carol@gmail.com", "bob@example.net").client_name("unknown"),
                T0 + 301 * i as i64,
            )
            .unwrap();
        assert_eq!((v.reason, v.key), (Reason::New, KeyKind::Network), "{ip}");
    }
    // A generic name keeps its /24: the same /24 passes, another does not.
    let dsl = |ip, name, now| {
        let req = Request::new(ip, "dave@example.org", "bob@example.net").client_name(name);
        e.check_request(&req, now).unwrap()
    };
    let v = dsl("203.0.113.7", "host-203-0-113-7.dsl.example.net", T0);
    assert_eq!((v.reason, v.key), (Reason::New, KeyKind::Network));
    let v = dsl("203.0.113.8", "host-203-0-113-8.dsl.example.net", T0 + 301);
    assert_eq!((v.reason, v.key), (Reason::Retried, KeyKind::Network));
    let v = dsl(
        "198.51.100.8",
        "host-198-51-100-8.dsl.example.net",
        T0 + 302,
    );
    assert_eq!((v.reason, v.key), (Reason::New, KeyKind::Network));
    // Off: the network keys it.
    let off = Engine::new(Config::builder().key_by_host_name(false).build().unwrap());
    let req = Request::new("209.85.220.41", "a@gmail.com", "b@example.net")
        .client_name("mail-sor-f41.google.com");
    let v = off.check_request(&req, T0).unwrap();
    assert_eq!(v.key, KeyKind::Network);
}

/// A trap hit or a blast from one host of a pool blocks that host's
/// network, never the pool's domain (every other host of it still passes).
#[test]
fn a_pool_domain_is_never_blocked() {
    let e = Engine::new(Config::builder().blast_copies(2).build().unwrap());
    e.set_list(ListKind::TrapRecipients, &["trap@example.net"])
        .unwrap();
    let google = |ip, name, rcpt, now| {
        let req = Request::new(ip, "spammer@gmail.com", rcpt).client_name(name);
        e.check_request(&req, now).unwrap()
    };
    let v = google(
        "209.85.220.41",
        "mail-sor-f41.google.com",
        "trap@example.net",
        T0,
    );
    assert_eq!((v.reason, v.key), (Reason::Trapped, KeyKind::Network));
    let v = google(
        "209.85.220.42",
        "mail-sor-f42.google.com",
        "x@example.net",
        T0 + 1,
    );
    assert_eq!(
        v.reason,
        Reason::Blocked,
        "the trapped host's /24 is blocked"
    );
    let v = google(
        "74.125.0.5",
        "mail-yw1-f5.google.com",
        "x@example.net",
        T0 + 1,
    );
    assert_eq!((v.reason, v.key), (Reason::New, KeyKind::HostDomain));
    // Copies of one message from the pool, over blast_copies: deferred,
    // never blocked.
    for i in 0..6 {
        let v = google(
            "74.125.0.6",
            "mail-yw1-f6.google.com",
            "y@example.net",
            T0 + 2 + i,
        );
        assert_eq!(v.action, Action::Defer, "copy {i}: {v:?}");
    }
    let v = google(
        "172.217.0.9",
        "mail-qt1-f9.google.com",
        "z@example.net",
        T0 + 10,
    );
    assert_eq!(v.reason, Reason::New);
}

/// A domain key is never auto-whitelisted: a provider's hosts share its
/// domain (`vmi123456.contaboserver.net`), and a few good customers must
/// not let every other one's first attempts through. Its hosts' networks
/// still are, by their own passes.
#[test]
fn a_domain_key_is_never_auto_whitelisted() {
    let e = Engine::new(Config::default());
    let hour = 3600;
    let vps = |ip: &str, name: &str, sender: &str, now| {
        let req = Request::new(ip, sender, "bob@example.net").client_name(name);
        e.check_request(&req, now).unwrap()
    };
    // Five customers, five passes an hour apart, all under the domain.
    for (i, user) in ["ann", "ben", "cat", "dan", "eve"].iter().enumerate() {
        let t = T0 + i as i64 * hour;
        let ip = format!("198.51.{}.10", 100 + i);
        let name = format!("vmi{}.contaboserver.net", 100 + i);
        let from = format!("{user}@customer.example");
        vps(&ip, &name, &from, t);
        let v = vps(&ip, &name, &from, t + 301);
        assert_eq!((v.reason, v.key), (Reason::Retried, KeyKind::HostDomain));
    }
    let v = vps(
        "203.0.113.9",
        "vmi999.contaboserver.net",
        "spam@bad.example",
        T0 + 6 * hour,
    );
    assert_eq!(
        (v.reason, v.key),
        (Reason::New, KeyKind::HostDomain),
        "not auto-whitelisted"
    );
    // Keyed by network, the same passes whitelist the network.
    let net = Engine::new(Config::builder().key_by_host_name(false).build().unwrap());
    for (i, user) in ["ann", "ben", "cat", "dan", "eve"].iter().enumerate() {
        let t = T0 + i as i64 * hour;
        let from = format!("{user}@customer.example");
        net.check("198.51.100.10", &from, "bob@example.net", t)
            .unwrap();
        net.check("198.51.100.10", &from, "bob@example.net", t + 301)
            .unwrap();
    }
    let v = net.check(
        "198.51.100.11",
        "new@x.example",
        "bob@example.net",
        T0 + 6 * hour,
    );
    assert_eq!(v.unwrap().reason, Reason::AutoWhitelisted);
}

/// Turning host names on (the default since issue 23) greylists no known
/// correspondent again: a triplet that passed by network, or a network on
/// the auto-whitelist, still passes when its client now has a name.
#[test]
fn correspondents_known_by_network_pass_when_keyed_by_name() {
    let e = Engine::new(Config::builder().key_by_host_name(false).build().unwrap());
    let req = Request::new("209.85.220.41", "alice@gmail.com", "bob@example.net")
        .client_name("mail-sor-f41.google.com");
    e.check_request(&req, T0).unwrap();
    assert_eq!(
        e.check_request(&req, T0 + 301).unwrap().reason,
        Reason::Retried
    );
    let dir = std::env::temp_dir().join(format!("greylist-upgrade-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("g.snap");
    e.save(&path).unwrap();
    let upgraded = Engine::load(&path, Config::default()).unwrap();
    let v = upgraded.check_request(&req, T0 + 500).unwrap();
    assert_eq!((v.reason, v.key), (Reason::Passed, KeyKind::Network));
    // Another recipient is new, for the host name's domain.
    let other = Request::new("209.85.220.41", "alice@gmail.com", "carol@example.net")
        .client_name("mail-sor-f41.google.com");
    let v = upgraded.check_request(&other, T0 + 500).unwrap();
    assert_eq!((v.reason, v.key), (Reason::New, KeyKind::HostDomain));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// 25 copies of one message within a minute from one /24: blocked by the
/// rounds rule alone (copies off), after 21 distinct seconds...
#[test]
fn blasting_is_blocked_and_a_good_sender_still_passes() {
    let e = Engine::new(Config::builder().blast_copies(0).build().unwrap());
    e.check("198.51.100.20", "good@example.org", "bob@example.net", T0)
        .unwrap();
    // 25 copies of one message within a minute, from one /24.
    let verdicts: Vec<_> = (0..25)
        .map(|i| {
            e.check(
                &format!("203.0.113.{}", 10 + i % 3),
                "promo@spam.example",
                "bob@example.net",
                T0 + 2 * i,
            )
            .unwrap()
        })
        .collect();
    assert_eq!(verdicts.last().unwrap().action, Action::Block);
    assert!(verdicts[..21].iter().all(|v| v.action == Action::Defer));
    assert_eq!(
        reason(
            &e,
            "203.0.113.99",
            "other@spam.example",
            "x@example.net",
            T0 + 60
        ),
        Reason::Blocked
    );
    assert_eq!(
        reason(
            &e,
            "198.51.100.20",
            "good@example.org",
            "bob@example.net",
            T0 + 300
        ),
        Reason::Retried
    );
}

/// ...and with the defaults by the copies rule, at the 6th early retry
/// (issue 16: 30 copies within 2 s used to be deferred 30 times).
#[test]
fn blasted_copies_block_at_once_whatever_the_delay() {
    for delay in [300, 10] {
        let config = Config::builder()
            .delay(delay)
            .retry_window(3600)
            .build()
            .unwrap();
        let e = Engine::new(config);
        let events = recording(&e);
        // 30 copies within 2 seconds.
        let verdicts: Vec<_> = (0..30)
            .map(|i| {
                e.check(
                    "203.0.113.10",
                    "promo@spam.example",
                    "bob@example.net",
                    T0 + i / 15,
                )
                .unwrap()
            })
            .collect();
        assert!(
            verdicts[..6].iter().all(|v| v.action == Action::Defer),
            "delay {delay}: {verdicts:?}"
        );
        assert_eq!(
            (
                verdicts[6].action,
                verdicts[6].reason,
                verdicts[6].retry_after
            ),
            (Action::Block, Reason::Blocked, 3600),
            "delay {delay}"
        );
        assert!(verdicts[6..].iter().all(|v| v.action == Action::Block));
        // The whole /24 is blocked; another network is greylisted as usual.
        assert_eq!(
            reason(&e, "203.0.113.77", "x@y.example", "z@example.net", T0 + 3),
            Reason::Blocked
        );
        assert_eq!(
            reason(&e, "198.51.100.1", "x@y.example", "z@example.net", T0 + 3),
            Reason::New
        );
        // One event when the block starts, saying why, and one when a
        // sweep finds it ended.
        e.sweep(T0 + 3599);
        e.sweep(T0 + 3601);
        e.sweep(T0 + 3901);
        let blocks: Vec<_> = events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| matches!(e.kind, EventKind::BlockStarted | EventKind::BlockEnded))
            .map(|e| (e.kind, e.network.to_string(), e.reason, e.at, e.count))
            .collect();
        let net = "203.0.113.0/24".to_string();
        assert_eq!(
            blocks,
            [
                (
                    EventKind::BlockStarted,
                    net.clone(),
                    Reason::Blocked,
                    T0 as u32,
                    6
                ),
                (
                    EventKind::BlockEnded,
                    net,
                    Reason::Blocked,
                    (T0 + 3600) as u32,
                    0
                ),
            ],
            "delay {delay}"
        );
    }
}

/// The guarantees: one message to many recipients (many first attempts)
/// is never blocked, nor is Exchange 2003's pattern (3 quick retries of
/// each recipient, all in one second each time).
#[test]
fn a_message_to_many_recipients_and_exchange_glitch_retries_are_not_blasting() {
    let e = Engine::new(Config::default());
    // Each attempt is one SMTP transaction with all 10 recipients.
    for dt in [0, 2, 5, 9] {
        for r in 0..10u64 {
            let rcpt = format!("user{}@example.net", names::letters(r));
            let v = e
                .check("192.0.2.25", "ceo@corp.example", &rcpt, T0 + dt)
                .unwrap();
            assert_eq!(v.action, Action::Defer, "{rcpt} at +{dt}");
        }
    }
    for r in 0..200u64 {
        let rcpt = format!("list{}@example.net", names::letters(r));
        let v = e
            .check("198.51.100.9", "news@list.example", &rcpt, T0)
            .unwrap();
        assert_eq!(v.reason, Reason::New);
    }
    assert_eq!(e.stats().blocked, 0);
}

#[test]
fn a_trap_blocks_the_network_at_once() {
    let e = Engine::new(Config::default());
    e.set_list(ListKind::TrapRecipients, &["trap@example.net", "spamtrap@"])
        .unwrap();
    let v = e
        .check("203.0.113.5", "x@spam.example", "Trap@Example.net", T0)
        .unwrap();
    assert_eq!(
        (v.action, v.reason, v.retry_after),
        (Action::Block, Reason::Trapped, 3600)
    );
    assert_eq!(
        reason(
            &e,
            "203.0.113.200",
            "y@spam.example",
            "bob@example.net",
            T0 + 10
        ),
        Reason::Blocked
    );
    assert_eq!(
        reason(
            &e,
            "198.51.100.1",
            "z@x.example",
            "spamtrap@any.example",
            T0
        ),
        Reason::Trapped
    );
    assert_eq!(
        reason(
            &e,
            "203.0.113.5",
            "x@spam.example",
            "bob@example.net",
            T0 + 3601
        ),
        Reason::New
    );
    // A whitelisted client writing to a trap is not punished.
    e.set_list(ListKind::Clients, &["192.0.2.0/24"]).unwrap();
    assert_eq!(
        reason(&e, "192.0.2.1", "a@b.example", "trap@example.net", T0),
        Reason::Whitelisted
    );
    assert_eq!(e.stats().trapped, 2);
}

fn recording(e: &Engine) -> Arc<Mutex<Vec<Event>>> {
    let events = Arc::new(Mutex::new(Vec::<Event>::new()));
    let sink = events.clone();
    e.on_event(Some(Box::new(move |ev: &Event| {
        sink.lock().unwrap().push(ev.clone())
    })))
    .unwrap();
    events
}

/// Issue 16: the daemon sweeps every 300 s. A sweep used to remove the
/// network record an early retry made, so a triplet that expired later
/// was counted nowhere; and lost mail showed only at expiry, two days on.
#[test]
fn the_exchange_2003_pattern_is_lost_mail_within_the_hour_despite_sweeps() {
    let e = Engine::new(Config::default());
    let events = recording(&e);
    let at = |dt: i64, ip: &str, from: &str, to: &str| e.check(ip, from, to, T0 + dt).unwrap();
    // Exchange 2003 SP2: the first attempt and two retries within 10 s, for
    // two messages, then silence.
    for rcpt in ["a@example.net", "b@example.net"] {
        for dt in [0, 4, 9] {
            at(dt, "192.0.2.25", "ceo@corp.example", rcpt);
        }
    }
    // Another sender retried once, quickly, and then properly.
    at(0, "198.51.100.8", "x@ok.example", "a@example.net");
    at(5, "198.51.100.8", "x@ok.example", "a@example.net");
    at(400, "198.51.100.8", "x@ok.example", "a@example.net");
    // A spammer that never retried, and a blaster: 30 copies in 2 s.
    at(0, "203.0.113.66", "s@spam.example", "a@example.net");
    for i in 0..30 {
        at(i / 15, "198.18.0.5", "promo@blast.example", "a@example.net");
    }
    // A network that retried twice and wrote to a trap is not a victim.
    e.set_list(ListKind::TrapRecipients, &["trap@example.net"])
        .unwrap();
    at(0, "198.18.7.1", "x@trapped.example", "a@example.net");
    at(3, "198.18.7.1", "x@trapped.example", "a@example.net");
    at(4, "198.18.7.1", "x@trapped.example", "trap@example.net");

    // Sweeps every 300 s, as the maintenance thread does: nothing is lost
    // before delay + lost_after (300 + 3600 s), all of it at the first
    // sweep after.
    let mut dt = 300;
    while dt < 300 + 3600 {
        e.sweep(T0 + dt);
        assert!(e.lost_mail_report(10).unwrap().is_empty(), "lost at +{dt}");
        dt += 300;
    }
    e.sweep(T0 + dt);
    let report = e.lost_mail_report(10).unwrap();
    assert_eq!(report.len(), 1, "{report:?}");
    assert_eq!(report[0].network.to_string(), "192.0.2.0/24");
    assert_eq!((report[0].count, report[0].last_seen), (2, (T0 + 9) as u32));
    assert_eq!(e.stats().lost_mail, 2);
    let lost: Vec<_> = events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.kind == EventKind::LostMail)
        .cloned()
        .collect();
    assert_eq!(lost.len(), 2, "{lost:?}");
    assert!(lost.iter().all(|e| e.network.to_string() == "192.0.2.0/24"
        && e.at == (T0 + 9) as u32
        && e.count == 2
        && e.reason == Reason::EarlyRetry));

    // More sweeps count nothing twice.
    for _ in 0..5 {
        dt += 300;
        e.sweep(T0 + dt);
    }
    assert_eq!(e.stats().lost_mail, 2);
    assert_eq!(e.lost_mail_report(10).unwrap()[0].count, 2);

    // The user complained; Exchange's queue was flushed by hand: the late
    // retry passes, and that mail leaves the report.
    let v = at(dt, "192.0.2.25", "ceo@corp.example", "a@example.net");
    assert_eq!(v.reason, Reason::Retried);
    let report = e.lost_mail_report(10).unwrap();
    assert_eq!(report[0].count, 1, "{report:?}");
    let s = e.stats();
    assert_eq!((s.lost_mail, s.lost_recovered), (2, 1));
    let recovered = events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.kind == EventKind::Recovered)
        .count();
    assert_eq!(recovered, 1);

    // The row outlives the triplets: they expire after the two-day window,
    // the report keeps the network for 35 days.
    e.sweep(T0 + 3 * 86_400);
    let r = e
        .client_report("192.0.2.77", None, T0 + 3 * 86_400)
        .unwrap();
    assert_eq!((r.lost_mail, r.pending), (1, 0));
    e.sweep(T0 + 30 * 86_400);
    assert_eq!(e.lost_mail_report(10).unwrap().len(), 1);
    assert_eq!(e.stats().lost_mail, 2, "expiry counts nothing again");
}

/// With `lost_after` past the retry window, lost mail is found when the
/// window ends; a lost triplet restarting on a check is judged first.
#[test]
fn lost_mail_is_found_at_expiry_when_lost_after_is_longer_than_the_window() {
    let config = Config::builder()
        .retry_window(3600)
        .lost_after(86_400)
        .build()
        .unwrap();
    let e = Engine::new(config);
    for dt in [0, 5] {
        e.check("192.0.2.25", "a@corp.example", "x@example.net", T0 + dt)
            .unwrap();
        e.check("192.0.2.25", "a@corp.example", "y@example.net", T0 + dt)
            .unwrap();
    }
    e.sweep(T0 + 3500);
    assert_eq!(e.stats().lost_mail, 0);
    // One is swept at expiry; the other starts over on a check first.
    assert_eq!(
        reason(
            &e,
            "192.0.2.25",
            "a@corp.example",
            "y@example.net",
            T0 + 3700
        ),
        Reason::New
    );
    assert_eq!(e.stats().lost_mail, 1);
    e.sweep(T0 + 3700);
    assert_eq!(e.stats().lost_mail, 2);
    assert_eq!(e.lost_mail_report(10).unwrap()[0].count, 2);
}

#[test]
fn an_operator_can_inspect_release_and_forget() {
    let e = Engine::new(Config::default());
    for rcpt in ["a@example.net", "b@example.net", "c@example.net"] {
        e.check("192.0.2.1", "x@corp.example", rcpt, T0).unwrap();
    }
    e.check("192.0.2.1", "x@corp.example", "c@example.net", T0 + 300)
        .unwrap();
    let r = e.client_report("192.0.2.200", None, T0 + 301).unwrap();
    assert_eq!(r.network.to_string(), "192.0.2.0/24");
    assert_eq!(
        (
            r.pending,
            r.passed,
            r.passes,
            r.whitelisted,
            r.blocked_until
        ),
        (2, 1, 1, false, None)
    );

    e.release("192.0.2.1", "x@corp.example", "a@example.net", T0 + 10)
        .unwrap();
    assert_eq!(
        reason(&e, "192.0.2.1", "x@corp.example", "a@example.net", T0 + 11),
        Reason::Passed
    );
    assert_eq!(e.release_client("192.0.2.1", T0 + 12).unwrap(), 1);
    assert_eq!(
        reason(&e, "192.0.2.1", "x@corp.example", "b@example.net", T0 + 13),
        Reason::Passed
    );

    assert!(e
        .forget("192.0.2.1", "x@corp.example", "b@example.net")
        .unwrap());
    assert!(!e
        .forget("192.0.2.1", "x@corp.example", "b@example.net")
        .unwrap());
    assert_eq!(
        reason(&e, "192.0.2.1", "x@corp.example", "b@example.net", T0 + 14),
        Reason::New
    );

    // Releasing a blocked network lifts the block.
    e.set_list(ListKind::TrapRecipients, &["trap@example.net"])
        .unwrap();
    e.check("203.0.113.1", "s@x.example", "trap@example.net", T0)
        .unwrap();
    assert!(e
        .client_report("203.0.113.1", None, T0 + 1)
        .unwrap()
        .blocked_until
        .is_some());
    e.release_client("203.0.113.1", T0 + 2).unwrap();
    assert_eq!(
        reason(&e, "203.0.113.1", "s@x.example", "bob@example.net", T0 + 3),
        Reason::New
    );
    // Whitelisted by host name, as the report says.
    e.set_list(ListKind::Clients, &[".corp.example"]).unwrap();
    assert!(
        e.client_report("192.0.2.1", Some("mx1.corp.example"), T0)
            .unwrap()
            .whitelisted
    );
    assert!(!e.client_report("192.0.2.1", None, T0).unwrap().whitelisted);
}

#[test]
fn early_retries_from_many_networks_stay_within_max_clients() {
    const CAP: u64 = 2_000;
    const NETWORKS: u64 = 100_000;
    // The system clock: a snapshot loaded below makes room as of the time
    // it was saved.
    let t0 = greylist::unix_now();
    let e = Engine::new(
        Config::builder()
            .max_clients(CAP)
            .shards(16)
            .build()
            .unwrap(),
    );
    // First, a network earns the auto-whitelist and another one gets
    // blocked for blasting (a message an hour: one pass an hour counts).
    for i in 0..5 {
        let (rcpt, t) = (format!("user{i}@example.net"), t0 - (4 - i) * 3600);
        reason(&e, "198.51.100.1", "news@example.com", &rcpt, t);
        let r = reason(&e, "198.51.100.1", "news@example.com", &rcpt, t + 400);
        assert_eq!(r, Reason::Retried);
    }
    reason(
        &e,
        "203.0.113.5",
        "spam@example.biz",
        "victim@example.net",
        t0,
    );
    let blocked = (1..=21)
        .map(|s| {
            reason(
                &e,
                "203.0.113.5",
                "spam@example.biz",
                "victim@example.net",
                t0 + s,
            )
        })
        .last();
    assert_eq!(blocked, Some(Reason::Blocked));

    // Then a flood: 100,000 IPv6 /64 networks, each a first attempt and an
    // early retry, which is what makes a network's record.
    for i in 0..NETWORKS {
        let ip = format!("2001:db8:{:x}:{:x}::1", i >> 16, i & 0xffff);
        let now = t0 + 30 + (i / 100) as i64;
        assert_eq!(
            reason(&e, &ip, "x@example.org", "y@example.net", now),
            Reason::New
        );
        let r = reason(&e, &ip, "x@example.org", "y@example.net", now + 5);
        assert_eq!(r, Reason::EarlyRetry, "network {i}");
    }
    let s = e.stats();
    assert!(s.clients <= CAP, "{} client records", s.clients);
    assert!(s.clients_evicted >= NETWORKS - CAP, "{s:?}");
    // The defences survived the flood.
    let end = t0 + 30 + (NETWORKS / 100) as i64 + 10;
    assert_eq!(
        reason(&e, "203.0.113.9", "other@example.biz", "x@example.net", end),
        Reason::Blocked
    );
    assert_eq!(
        reason(&e, "198.51.100.7", "new@example.com", "x@example.net", end),
        Reason::AutoWhitelisted
    );

    // A snapshot loaded by an engine allowed fewer networks keeps what a
    // full table keeps.
    let dir = std::env::temp_dir().join(format!("greylist-clients-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("g.snap");
    e.save(&path).unwrap();
    let smaller = Config::builder()
        .max_clients(CAP / 4)
        .shards(16)
        .build()
        .unwrap();
    let loaded = Engine::load(&path, smaller).unwrap();
    assert!(loaded.stats().clients <= CAP / 4);
    assert_eq!(
        reason(
            &loaded,
            "203.0.113.9",
            "other@example.biz",
            "x@example.net",
            end
        ),
        Reason::Blocked
    );
    assert_eq!(
        reason(
            &loaded,
            "198.51.100.7",
            "new@example.com",
            "x@example.net",
            end
        ),
        Reason::AutoWhitelisted
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Issue 15, item 11: a triplet first seen with `now` ten years ahead (a
/// bad clock for a moment, or milliseconds passed as seconds) stayed
/// deferred for ten years after the clock was right and was never swept;
/// a network blocked during the jump stayed blocked for ten years.
#[test]
fn a_clock_jump_ahead_does_not_poison_state_for_years() {
    const TEN_YEARS: i64 = 10 * 365 * 86_400;
    let e = Engine::new(Config::default());
    e.set_list(ListKind::TrapRecipients, &["trap@example.net"])
        .unwrap();
    let ahead = T0 + TEN_YEARS;
    e.check("192.0.2.1", "a@x.org", "b@y.net", ahead).unwrap();
    // During the jump a trap blocks 203.0.113.0/24 until ten years ahead.
    e.check("203.0.113.5", "s@spam.example", "trap@example.net", ahead)
        .unwrap();
    // The clock is right again: the triplet starts over at now, and never
    // passes early.
    let v = e.check("192.0.2.1", "a@x.org", "b@y.net", T0).unwrap();
    assert_eq!((v.reason, v.retry_after), (Reason::New, 300));
    assert_eq!(
        e.check("192.0.2.1", "a@x.org", "b@y.net", T0 + 299)
            .unwrap()
            .reason,
        Reason::EarlyRetry
    );
    assert_eq!(
        e.check("192.0.2.1", "a@x.org", "b@y.net", T0 + 300)
            .unwrap()
            .reason,
        Reason::Retried
    );
    // The block is lifted.
    let v = e
        .check("203.0.113.5", "s@spam.example", "b@y.net", T0)
        .unwrap();
    assert_eq!(v.reason, Reason::New, "not blocked for ten years");
    // A sweep removes entries stored that far ahead.
    e.check("198.51.100.1", "c@x.org", "d@y.net", ahead)
        .unwrap();
    assert_eq!(e.len(), 3);
    assert_eq!(e.sweep(T0 + 301), 1, "the entry from the future went");
    assert_eq!(e.len(), 2);
    // A block seen by a check whose clock is a little behind (another
    // thread read it a moment earlier, or NTP stepped it back) is a block:
    // only times beyond the setting and CLOCK_GRACE are corrupt.
    e.check(
        "203.0.113.5",
        "s@spam.example",
        "trap@example.net",
        T0 + 400,
    )
    .unwrap();
    for behind in [1, 60, 3599] {
        let v = e
            .check(
                "203.0.113.5",
                "s@spam.example",
                "b@y.net",
                T0 + 400 - behind,
            )
            .unwrap();
        assert_eq!(v.reason, Reason::Blocked, "{behind} s behind");
    }
    // A small step back (inside the delay) is judged as before.
    e.check("198.51.100.2", "c@x.org", "d@y.net", T0 + 1000)
        .unwrap();
    let v = e
        .check("198.51.100.2", "c@x.org", "d@y.net", T0 + 900)
        .unwrap();
    assert_eq!((v.reason, v.retry_after), (Reason::EarlyRetry, 400));
}
