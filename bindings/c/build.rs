//! Gives the shared library a SONAME that carries the C ABI version
//! (`libgreylist.so.1`), read from its one definition in `src/lib.rs`.

use std::fs;

fn main() {
    const SOURCE: &str = "src/lib.rs";
    println!("cargo:rerun-if-changed={SOURCE}");
    let text = fs::read_to_string(SOURCE).expect("src/lib.rs is readable");
    let abi: u32 = text
        .lines()
        .find_map(|l| l.strip_prefix("pub const GREYLIST_ABI_VERSION: u32 = "))
        .and_then(|rest| rest.trim_end_matches(';').trim().parse().ok())
        .expect("src/lib.rs defines GREYLIST_ABI_VERSION as a number");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if matches!(
        os.as_str(),
        "linux" | "android" | "freebsd" | "netbsd" | "openbsd" | "dragonfly"
    ) {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libgreylist.so.{abi}");
    }
}
