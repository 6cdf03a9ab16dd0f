//! The manual pages the Debian package ships (`packaging/debian/*.8`) are
//! made from the clap definitions (`--generate-man-page`, clap_mangen);
//! this fails when a checked-in page is stale. Regenerate them with
//! `GREYLIST_BLESS=1 cargo test --test man`.

use std::path::Path;
use std::process::Command;

fn check(binary: &str, page: &str) {
    let out = Command::new(binary)
        .arg("--generate-man-page")
        .output()
        .unwrap();
    assert!(out.status.success(), "{binary} --generate-man-page");
    let generated = String::from_utf8(out.stdout).unwrap();
    assert!(generated.contains(".TH "), "not a manual page");
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("packaging/debian")
        .join(page);
    if std::env::var_os("GREYLIST_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "{} is stale: run `GREYLIST_BLESS=1 cargo test --test man` and commit it",
        path.display()
    );
}

#[test]
fn greylist_policyd_8_is_up_to_date() {
    check(env!("CARGO_BIN_EXE_greylist-policyd"), "greylist-policyd.8");
}

#[test]
fn greylistctl_8_is_up_to_date() {
    check(env!("CARGO_BIN_EXE_greylistctl"), "greylistctl.8");
}
