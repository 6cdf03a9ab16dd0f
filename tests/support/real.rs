//! For tests of real third-party software (Postfix, Exim, Redis): a test
//! whose software is missing says why it skipped, except under CI=true,
//! where every such test must run.

#![allow(dead_code)]

use std::process::{Command, Stdio};

/// Says why `test` is skipped, and records it for `tests/run.sh`'s summary
/// (in `GREYLIST_SKIP_FILE`, under the running test's name). Under CI=true
/// a skip is a failure: every such test must run there.
pub fn skip(test: &str, why: &str) {
    let name = match std::thread::current().name() {
        Some(name) if name != "main" => name.to_string(),
        _ => test.to_string(),
    };
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "{name} ({test}) cannot run under CI=true: {why}. \
             .ci/run installs every component the tests need"
        );
    }
    println!("SKIPPED {name} ({test}): {why}");
    if let Some(file) = std::env::var_os("GREYLIST_SKIP_FILE") {
        use std::io::Write;
        // One write per line to a file opened for appending: concurrent
        // tests never interleave their lines.
        let line = format!("{name}: {why}\n");
        let _ = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(file)
            .and_then(|mut f| f.write_all(line.as_bytes()));
    }
}

/// Whether `tool arg` runs and exits 0 (`--version` and the like).
pub fn runs(tool: &str, arg: &str) -> bool {
    Command::new(tool)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A TCP port on 127.0.0.1 that nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
