//! `greylist-policyd --spf` against a real DNS server (Debian's dnsmasq,
//! started by the tests on a loopback port, authoritative for `.example`),
//! and against one that never answers.

#[path = "support/daemon.rs"]
mod daemon;
#[path = "support/dns.rs"]
mod dns;
#[path = "support/real.rs"]
mod real;

use std::io::Write;
use std::time::{Duration, Instant};

use daemon::{answers, ask, rcpt, scratch, Daemon};
use dns::{Dnsmasq, Silent};

const T0: i64 = 1_700_000_000;
const DEFER: &str = "DEFER_IF_PERMIT 4.2.0 Greylisted, please try again in 300 seconds";

fn txt(name: &str, record: &str) -> String {
    format!("txt-record={name},\"{record}\"")
}

/// The zone: each domain one case of RFC 7208 evaluation.
fn records() -> Vec<String> {
    let mut r = vec![
        // Two unrelated networks: a pool.
        txt(
            "pool.example",
            "v=spf1 ip4:192.0.2.0/24 ip4:198.51.100.0/24 -all",
        ),
        txt("strict.example", "v=spf1 ip4:192.0.2.0/24 -all"),
        // A name with an address and no SPF record.
        "host-record=nospf.example,192.0.2.1".to_string(),
        txt("chain.example", "v=spf1 include:chain2.example -all"),
        txt("chain2.example", "v=spf1 include:chain3.example -all"),
        txt(
            "chain3.example",
            "v=spf1 ip4:192.0.2.0/24 ip4:198.51.100.0/24 -all",
        ),
        txt(
            "loop.example",
            "v=spf1 include:loop2.example ip4:192.0.2.0/24 -all",
        ),
        txt("loop2.example", "v=spf1 include:loop.example -all"),
        // Passes anyone: vouches for nobody.
        txt("anyone.example", "v=spf1 +all"),
        txt("wide.example", "v=spf1 ip4:0.0.0.0/0 -all"),
    ];
    // 11 `a:` lookups before the networks that would match: over RFC
    // 7208's limit of 10, so permerror (never pass).
    let hosts: Vec<String> = (1..=11).map(|i| format!("h{i}.many.example")).collect();
    for (i, h) in hosts.iter().enumerate() {
        r.push(format!("host-record={h},10.0.0.{}", i + 1));
    }
    let mechanisms: Vec<String> = hosts.iter().map(|h| format!("a:{h}")).collect();
    r.push(txt(
        "many.example",
        &format!(
            "v=spf1 {} ip4:192.0.2.0/24 ip4:198.51.100.0/24 -all",
            mechanisms.join(" ")
        ),
    ));
    r
}

/// A daemon with `--spf` asking the DNS server at `dns` (the built-in
/// client whitelist off, so the keys decide), with `extra` options.
fn spf_daemon(name: &str, dns: std::net::SocketAddr, extra: &[&str]) -> Daemon {
    let server = dns.to_string();
    let mut args = vec![
        "--allow-test-time",
        "--no-default-whitelist",
        "--spf",
        "--dns-server",
        &server,
    ];
    args.extend_from_slice(extra);
    Daemon::start(name, &args)
}

/// The pool's first attempt from one network, and its retry from another
/// after the delay, which passes (pool.example's SPF covers both).
fn pool_retry_passes(s: &mut std::net::TcpStream) {
    assert_eq!(
        ask(s, &rcpt("192.0.2.5", "a@pool.example", "b@y.net", T0)),
        DEFER
    );
    let retry = ask(
        s,
        &rcpt("198.51.100.7", "a@pool.example", "b@y.net", T0 + 300),
    );
    assert_eq!(
        retry,
        "PREPEND X-Greylist: delayed 300 seconds by greylist-policyd"
    );
}

fn have_dnsmasq(test: &str) -> bool {
    if dns::dnsmasq_path().is_none() {
        real::skip(
            test,
            "dnsmasq is not installed (apt-get install dnsmasq-base)",
        );
        return false;
    }
    true
}

/// The decision line of the request from `client` with sender `from`.
fn line_for(d: &Daemon, client: &str, from: &str) -> String {
    let wanted = format!("client={client} from=<{from}>");
    d.wait_for_log(&wanted);
    d.log_text()
        .lines()
        .rfind(|l| l.contains(&wanted))
        .unwrap()
        .to_string()
}

#[test]
fn spf_pass_keys_by_the_sender_domain_and_nothing_else_does() {
    if !have_dnsmasq("spf_pass_keys_by_the_sender_domain_and_nothing_else_does") {
        return;
    }
    let dir = scratch("spf-cases");
    let dns = Dnsmasq::start(&dir.join("dns"), &records());
    let d = spf_daemon("spf-cases-daemon", dns.addr, &[]);
    let mut s = d.connect();

    // A domain whose SPF covers two unrelated networks: the retry from
    // the second network passes.
    pool_retry_passes(&mut s);
    let line = line_for(&d, "198.51.100.7", "a@pool.example");
    assert!(line.contains("reason=retried"), "{line}");
    assert!(
        line.ends_with("key=spf-domain domain=pool.example spf=pass"),
        "{line}"
    );
    // The pool's next attempt: the triplet passed under the domain's key,
    // which only SPF can vouch for, so SPF runs again, from the DNS cache:
    // one TXT query in all.
    assert_eq!(
        ask(
            &mut s,
            &rcpt("198.51.100.9", "a@pool.example", "b@y.net", T0 + 400)
        ),
        "DUNNO"
    );
    assert_eq!(
        dns.queries("TXT", "pool.example"),
        1,
        "the answer is cached"
    );

    // An include: chain that passes (a new connection: one X-Greylist
    // header per message and connection).
    let mut s = d.connect();
    assert_eq!(
        ask(&mut s, &rcpt("192.0.2.5", "a@chain.example", "b@y.net", T0)),
        DEFER
    );
    let retry = ask(
        &mut s,
        &rcpt("198.51.100.7", "a@chain.example", "b@y.net", T0 + 300),
    );
    assert!(retry.starts_with("PREPEND"), "{retry}");
    let line = line_for(&d, "198.51.100.7", "a@chain.example");
    assert!(
        line.ends_with("key=spf-domain domain=chain.example spf=pass"),
        "{line}"
    );

    // `-all` for the client: keyed by its network as without SPF; no
    // penalty (the same network's retry passes), no pool pass.
    let mut s = d.connect();
    assert_eq!(
        ask(
            &mut s,
            &rcpt("203.0.113.9", "a@strict.example", "b@y.net", T0)
        ),
        DEFER
    );
    assert_eq!(
        ask(
            &mut s,
            &rcpt("198.51.100.9", "a@strict.example", "b@y.net", T0 + 300)
        ),
        DEFER,
        "another network is another triplet"
    );
    let pass = ask(
        &mut s,
        &rcpt("203.0.113.10", "a@strict.example", "b@y.net", T0 + 300),
    );
    assert!(pass.starts_with("PREPEND"), "{pass}");
    let line = line_for(&d, "203.0.113.9", "a@strict.example");
    assert!(line.ends_with("key=network spf=fail"), "{line}");

    // No SPF record, a lookup loop, more than 10 lookups, a record that
    // passes anyone: the network.
    for (domain, result) in [
        ("nospf.example", "none"),
        ("loop.example", "permerror"),
        ("many.example", "permerror"),
        ("unknown-domain.example", "none"),
        ("anyone.example", "pass-anyone"),
        ("wide.example", "pass-anyone"),
    ] {
        let from = format!("a@{domain}");
        assert_eq!(ask(&mut s, &rcpt("192.0.2.5", &from, "b@y.net", T0)), DEFER);
        assert_eq!(
            ask(&mut s, &rcpt("198.51.100.7", &from, "b@y.net", T0 + 300)),
            DEFER,
            "{domain}: keyed by network, the other network is new"
        );
        let line = line_for(&d, "198.51.100.7", &from);
        assert!(
            line.ends_with(&format!("key=network spf={result}")),
            "{line}"
        );
    }
    assert!(
        dns.queries("A", "h10.many.example") == 1 && dns.queries("A", "h11.many.example") == 0,
        "the 11th lookup is never made"
    );

    // The null sender has no domain to verify: nothing asked.
    assert_eq!(ask(&mut s, &rcpt("192.0.2.5", "", "b@y.net", T0)), DEFER);
    let line = line_for(&d, "192.0.2.5", "");
    assert!(line.ends_with("key=network"), "{line}");
}

/// A DNS server that never answers costs each check its SPF, not its
/// answer: every check answers at the deadline (2 s by default) plus at
/// most 50 ms, and a burst for one domain sends one query, not one per
/// check (at most one lookup in flight per domain).
#[test]
fn a_dns_server_that_never_answers_costs_only_the_spf() {
    let dns = Silent::start();
    let d = spf_daemon("spf-silent", dns.addr, &[]);
    // A burst: 6 connections ask about one domain at once.
    let threads: Vec<_> = (0..6)
        .map(|i| {
            let mut s = d.connect();
            std::thread::spawn(move || {
                let rcpt = rcpt(
                    "192.0.2.5",
                    "a@slow.example",
                    &format!("r{}@y.net", char::from(b'a' + i)),
                    T0,
                );
                s.write_all(rcpt.as_bytes()).unwrap();
                answers(&mut s, 1).remove(0)
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), DEFER);
    }
    assert_eq!(
        dns.queries("slow.example"),
        1,
        "one lookup in flight for the domain"
    );
    d.wait_for_lines("spf=timeout", 6);
    // A check that comes after that lookup ran out asks again.
    let mut s = d.connect();
    assert_eq!(
        ask(&mut s, &rcpt("192.0.2.5", "a@slow.example", "z@y.net", T0)),
        DEFER
    );
    assert_eq!(dns.queries("slow.example"), 2, "asked again");

    // One check, timed.
    let mut s = d.connect();
    let started = Instant::now();
    let answer = ask(&mut s, &rcpt("192.0.2.5", "a@other.example", "b@y.net", T0));
    let took = started.elapsed();
    assert_eq!(answer, DEFER);
    assert!(
        took >= Duration::from_millis(2000) && took <= Duration::from_millis(2050),
        "answered after {took:?}: the deadline is 2 s, plus at most 50 ms"
    );
    let line = line_for(&d, "192.0.2.5", "a@other.example");
    assert!(line.ends_with("key=network spf=timeout"), "{line}");
}

#[test]
fn bad_dns_server_options_are_refused_at_start() {
    let dir = scratch("spf-options");
    for (args, said) in [
        (
            &["--spf", "--dns-server", "not-an-address"][..],
            "not an IP address",
        ),
        (&["--spf", "--spf-timeout", "0"][..], "spf-timeout"),
    ] {
        let (code, log) = daemon::run_to_exit(&dir, args);
        assert_eq!(code, Some(1), "{args:?}: {log}");
        assert!(log.contains(said), "{args:?}: {log}");
    }
}

/// A DNS failure never costs a sender what passed under its domain: the
/// pool's triplet passed by SPF keeps passing, from another network, when
/// the DNS server is gone (SPF `temperror` or `timeout`).
#[test]
fn a_dns_failure_keeps_what_passed_under_the_domain() {
    if !have_dnsmasq("a_dns_failure_keeps_what_passed_under_the_domain") {
        return;
    }
    let dir = scratch("spf-outage");
    // Answers live one second in the cache.
    let dns = Dnsmasq::start_with_ttl(&dir.join("dns"), &records(), 1);
    let d = spf_daemon("spf-outage-daemon", dns.addr, &["--spf-timeout", "500"]);
    let mut s = d.connect();
    pool_retry_passes(&mut s);
    drop(dns);
    std::thread::sleep(Duration::from_millis(1500));
    let mut s = d.connect();
    let again = ask(
        &mut s,
        &rcpt("198.51.100.8", "a@pool.example", "b@y.net", T0 + 600),
    );
    assert_eq!(again, "DUNNO", "passed under pool.example, DNS or not");
    let line = line_for(&d, "198.51.100.8", "a@pool.example");
    assert!(line.contains("reason=passed"), "{line}");
    assert!(
        line.ends_with("key=spf-domain domain=pool.example spf=temperror")
            || line.ends_with("key=spf-domain domain=pool.example spf=timeout"),
        "{line}"
    );
    // A triplet that never passed is keyed by network meanwhile.
    assert_eq!(
        ask(
            &mut s,
            &rcpt("198.51.100.8", "c@pool.example", "b@y.net", T0 + 600)
        ),
        DEFER
    );
    let line = line_for(&d, "198.51.100.8", "c@pool.example");
    assert!(line.contains(" key=network spf="), "{line}");
}
