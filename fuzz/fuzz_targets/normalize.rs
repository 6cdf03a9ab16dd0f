//! Normalisation of arbitrary senders and recipients. Must hold:
//! normalising a normalised address changes nothing (so the key is the
//! same), ASCII case never changes the key, and neither does the text of
//! a `+extension`.
#![no_main]

use greylist::{normalize_recipient, normalize_sender, Config, Engine, MAX_ADDRESS_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (address, tag) = text.split_once('\u{1}').unwrap_or((text, "x"));
    if let Ok(once) = normalize_sender(address, "+") {
        assert_eq!(normalize_sender(&once, "+").unwrap(), once, "sender {address:?}");
        assert_eq!(normalize_sender(&address.to_ascii_uppercase(), "+").unwrap(), once, "case of {address:?}");
    }
    if let Ok(once) = normalize_recipient(address, "+") {
        assert_eq!(normalize_recipient(&once, "+").unwrap(), once, "recipient {address:?}");
        assert_eq!(normalize_recipient(&address.to_ascii_uppercase(), "+").unwrap(), once);
    }
    // An extension's text never matters: user+A@d and user+B@d are one key.
    // (Not for SRS or BATV locals, where what follows `+` can be the whole
    // wrapped mailbox, nor when the tag would end the address, nor past
    // MAX_ADDRESS_LEN, where an address is keyed by its exact bytes.)
    let engine = Engine::new(Config::builder().shards(1).build().unwrap());
    if let Some((local, domain)) = address.rsplit_once('@') {
        let plain_local = !local.is_empty()
            && !local.contains(['+', '@', '<', '>'])
            && !local.trim().is_empty()
            && local.trim() == local
            && !["srs", "prvs=", "msprvs1=", "btv1=="]
                .iter()
                .any(|p| local.to_ascii_lowercase().starts_with(p));
        let plain_tag = !tag.contains(['@', '<', '>']) && tag.trim() == tag;
        if plain_local && plain_tag && domain.trim() == domain && !domain.contains('>') {
            let key = |l: &str| engine.triplet_key("192.0.2.1", l, "r@example.net");
            let (a, b) = (format!("{local}+{tag}@{domain}"), format!("{local}+other@{domain}"));
            let short = a.len().max(b.len()) <= MAX_ADDRESS_LEN;
            if let (true, Ok(a), Ok(b)) = (short, key(&a), key(&b)) {
                assert_eq!(a, b, "extension changed the key of {local:?}@{domain:?}");
            }
        }
    }
});
