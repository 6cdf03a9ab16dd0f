//! For tests of real third-party software (Postfix, Exim, Redis): a test
//! whose software is missing says why it skipped, except under CI=true,
//! where every such test must run.

#![allow(dead_code)]

use std::process::{Command, Stdio};

/// Says why `test` is skipped; fails instead under CI=true.
pub fn skip(test: &str, why: &str) {
    assert_ne!(
        std::env::var("CI").as_deref(),
        Ok("true"),
        "{test} cannot run under CI=true: {why}"
    );
    println!("SKIPPED {test}: {why}");
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
