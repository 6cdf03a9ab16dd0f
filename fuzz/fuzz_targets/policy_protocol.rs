//! The policy protocol reader on arbitrary byte streams, split at arbitrary
//! points. Must hold: the same requests (and the same error, if any)
//! whatever the split, and never a panic; answering each request never
//! panics either, stays on one line, and a first attempt at the RCPT
//! stage is never waved through (`DUNNO`) because of what it holds: an
//! engine that has never seen it greylists it (issue 15, item 1).
#![no_main]

use std::io::{BufReader, Read};

use greylist::policy::{answer, read_request, PolicyOptions, PolicyRequest};
use greylist::{Config, Engine};
use libfuzzer_sys::fuzz_target;

/// A reader that hands out the stream in the given chunk sizes.
struct Chunked<'a> {
    data: &'a [u8],
    sizes: Vec<usize>,
    next: usize,
}

impl Read for Chunked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let size = self.sizes.get(self.next).copied().unwrap_or(usize::MAX).max(1);
        self.next += 1;
        let n = size.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fn read_all(reader: impl Read) -> (Vec<PolicyRequest>, Option<String>) {
    let mut reader = BufReader::with_capacity(64, reader);
    let mut requests = Vec::new();
    loop {
        match read_request(&mut reader) {
            Ok(Some(r)) => requests.push(r),
            Ok(None) => return (requests, None),
            Err(e) => return (requests, Some(e.to_string())),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let (splits, stream) = data.split_at(data.len().min(8));
    let sizes: Vec<usize> = splits.iter().map(|&b| usize::from(b % 17) + 1).collect();
    let whole = read_all(stream);
    let chunked = read_all(Chunked { data: stream, sizes, next: 0 });
    assert_eq!(whole, chunked);
    let engine = Engine::new(Config::builder().shards(1).build().unwrap());
    let options = PolicyOptions { allow_test_time: true, ..PolicyOptions::default() };
    for request in &whole.0 {
        let a = answer(&engine, request, &options, 1_700_000_000);
        assert!(!a.action.contains('\n'), "an answer must stay on one line: {:?}", a.action);
        assert!(!a.log.contains('\n'), "a log line must stay one line: {:?}", a.log);
        let rcpt_stage = request.get_bytes("request") == Some(b"smtpd_access_policy")
            && request
                .get_bytes("protocol_state")
                .is_some_and(|s| s.eq_ignore_ascii_case(b"RCPT"));
        if rcpt_stage {
            let fresh = Engine::new(Config::builder().shards(1).build().unwrap());
            let first = answer(&fresh, request, &options, 1_700_000_000);
            assert!(
                first.action.starts_with("DEFER_IF_PERMIT "),
                "a first attempt was not greylisted: {:?} for {:?}",
                first.action,
                request
            );
        }
    }
});
