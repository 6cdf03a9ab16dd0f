//! The snapshot loader on arbitrary files (and, from the seed corpus,
//! mutations of a valid snapshot). Must hold: a clean error or an engine
//! whose every entry answers a check, never a panic; allocations stay
//! within what the file's length justifies (checked by libFuzzer's
//! -rss_limit_mb and -malloc_limit_mb in CI).
#![no_main]

use greylist::{Config, Engine, SnapshotError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("greylist-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("input.snap");
    std::fs::write(&path, data).unwrap();
    match Engine::load(&path, Config::default()) {
        Ok(engine) => {
            // Every entry is usable: checks and a sweep answer.
            assert!(engine.len() <= data.len() / 32);
            engine.check("192.0.2.1", "a@example.org", "b@example.net", 1_700_000_000).unwrap();
            engine.sweep(2_000_000_000);
            assert!(engine.stats().entries <= engine.len() as u64 + 1);
        }
        Err(SnapshotError::Io { source, .. }) => panic!("reading a written file failed: {source}"),
        Err(_) => {}
    }
});
