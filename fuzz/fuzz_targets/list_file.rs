//! List files of every kind, with arbitrary text. Must hold: a clean
//! error naming a line, or a list that checks then consult without a
//! panic; a refused file changes nothing.
#![no_main]

use greylist::{Config, Engine, ListKind, Reason, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, text)) = data.split_first() else { return };
    let kind = ListKind::ALL[usize::from(kind) % ListKind::ALL.len()];
    let dir = std::env::temp_dir().join(format!("greylist-fuzz-lists-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("list.txt");
    std::fs::write(&path, text).unwrap();
    let engine = Engine::new(Config::builder().shards(1).build().unwrap());
    match engine.load_list(kind, &path) {
        Ok(_) => {
            let req = Request::new("192.0.2.1", "a@example.org", "b@example.net").client_name("mail.example.com");
            engine.check_request(&req, 1_700_000_000).unwrap();
        }
        Err(e) => {
            let message = e.to_string();
            assert!(message.starts_with("line ") || std::str::from_utf8(text).is_err(), "{message}");
            // Nothing was applied: a plain check is still new.
            let v = engine.check("192.0.2.1", "a@example.org", "b@example.net", 1_700_000_000).unwrap();
            assert_eq!(v.reason, Reason::New);
        }
    }
});
