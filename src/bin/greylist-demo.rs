//! Prints the engine's verdicts for a few triplets at injected times: the
//! run command until the policy daemon lands.

use greylist::{Config, Engine};

fn main() {
    let engine = Engine::new(Config::default());
    let t0 = greylist::unix_now();
    let steps: &[(i64, &str, &str, &str)] = &[
        (0, "192.0.2.1", "alice@example.org", "bob@example.net"),
        (100, "192.0.2.1", "alice@example.org", "bob@example.net"),
        (
            301,
            "192.0.2.7",
            "Alice+news@Example.org",
            "bob@example.net",
        ),
        (86_400, "192.0.2.1", "alice@example.org", "bob@example.net"),
        (86_400, "2001:db8::1", "", "postmaster@example.net"),
        (86_401, "203.0.113.5", "not-an-ip-test@example.org", ""),
    ];
    println!(
        "{:>8}  {:<14} {:<28} {:<24} verdict",
        "t+secs", "client", "sender", "recipient"
    );
    for &(dt, ip, sender, rcpt) in steps {
        let answer = match engine.check(ip, sender, rcpt, t0 + dt) {
            Ok(v) => match engine.reply(&v) {
                Some(reply) => format!("{:?} ({}): {reply}", v.action, v.reason.as_str()),
                None if v.delayed > 0 => {
                    format!("Pass ({}, delayed {} s)", v.reason.as_str(), v.delayed)
                }
                None => format!("Pass ({})", v.reason.as_str()),
            },
            Err(e) => format!("error: {e}"),
        };
        println!("{dt:>8}  {ip:<14} {sender:<28} {rcpt:<24} {answer}");
    }
    let s = engine.stats();
    println!("checks {}, entries {}", s.checks, s.entries);
}
