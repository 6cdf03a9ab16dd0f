//! A flood of unique triplets (forged senders, as spam runs make them)
//! into an engine capped at one million entries: the cap holds, passed
//! triplets made before the flood survive it, and resident memory stays
//! within 1.5x of what the cap implies. Alone in its file, so that the
//! process's memory is this test's.

use greylist::{Config, Engine, Reason};

#[path = "support/names.rs"]
mod names;
use names::letters_into as letters;

fn rss_bytes() -> usize {
    names::rss_bytes("self")
}

const T0: i64 = 1_700_000_000;

#[test]
fn five_million_unique_triplets_into_a_one_million_cap() {
    const CAP: u64 = 1_000_000;
    const FLOOD: u64 = 5_000_000;
    let config = Config::builder()
        .max_entries(CAP)
        .awl_threshold(0)
        .build()
        .unwrap();
    let engine = Engine::new(config);
    let before = rss_bytes();

    for i in 0..1000u64 {
        let mut rcpt = String::from("friend-");
        letters(i, &mut rcpt);
        rcpt.push_str("@example.net");
        engine
            .check("192.0.2.1", "partner@example.org", &rcpt, T0)
            .unwrap();
        assert_eq!(
            engine
                .check("192.0.2.1", "partner@example.org", &rcpt, T0 + 300)
                .unwrap()
                .reason,
            Reason::Retried
        );
    }

    let (mut sender, mut ip) = (String::new(), String::new());
    let mut peak_len = 0;
    for i in 0..FLOOD {
        sender.clear();
        sender.push_str("spam-");
        letters(i, &mut sender);
        sender.push_str("@forged.example");
        ip.clear();
        use std::fmt::Write;
        write!(ip, "198.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255).unwrap();
        engine
            .check(
                &ip,
                &sender,
                "victim@example.net",
                T0 + 400 + (i / 10_000) as i64,
            )
            .unwrap();
        if i % 250_000 == 0 {
            let len = engine.len() as u64;
            assert!(len <= CAP, "{len} entries after {i} checks");
            peak_len = peak_len.max(len);
        }
    }
    let len = engine.len() as u64;
    assert!(len <= CAP && peak_len <= CAP);
    assert!(len > CAP / 2, "the cap is used, not starved: {len}");
    let stats = engine.stats();
    assert!(stats.evicted >= FLOOD - CAP, "{stats:?}");

    for i in 0..1000u64 {
        let mut rcpt = String::from("friend-");
        letters(i, &mut rcpt);
        rcpt.push_str("@example.net");
        let v = engine
            .check("192.0.2.1", "partner@example.org", &rcpt, T0 + 86_400)
            .unwrap();
        assert_eq!(
            v.reason,
            Reason::Passed,
            "passed triplet {i} was pushed out by the flood"
        );
    }

    let grown = rss_bytes().saturating_sub(before);
    let implied = engine.table_memory_limit();
    println!(
        "flood: {len} entries, {} evicted; resident memory grew {} MB, the cap implies {} MB ({:.2}x)",
        stats.evicted,
        grown >> 20,
        implied >> 20,
        grown as f64 / implied as f64
    );
    assert!(
        grown as f64 <= 1.5 * implied as f64,
        "grew {grown} bytes, cap implies {implied}"
    );
}
