//! The manual pages, greylist-policyd(8) and greylistctl(8), made from the
//! clap definitions by clap_mangen, so that they cannot drift from
//! `--help`. `--generate-man-page`, alone on the command line, prints one
//! in roff; the Debian package ships the copies kept in `packaging/debian/`
//! (tests/man.rs fails when one of them is stale).

/// The option that prints the page.
const OPTION: &str = "--generate-man-page";

/// Whether the command line asks for the page: the option alone (a
/// subcommand that a program requires is not needed for it).
pub fn requested() -> bool {
    let mut args = std::env::args_os().skip(1);
    args.next().is_some_and(|a| a == OPTION) && args.next().is_none()
}

/// The page of `cmd` in section 8, with `sections` (roff: `.SH` sections
/// that --help has no place for, such as FILES and SEE ALSO) before its
/// VERSION section.
pub fn page(cmd: clap::Command, sections: &str) -> String {
    let cmd_name = cmd.get_name().to_string();
    let man = clap_mangen::Man::new(cmd)
        .section("8")
        .manual("System Manager's Manual")
        .source(format!("greylist {}", env!("CARGO_PKG_VERSION")));
    let name = cmd_name.clone();
    let mut out = Vec::new();
    man.render(&mut out).expect("rendering to memory");
    // Subcommands are described here, not in pages of their own
    // (clap_mangen names "greylistctl-status(8)" and the like).
    let own_page = format!("{}\\-", name.replace('-', "\\-"));
    let page: String = String::from_utf8_lossy(&out)
        .lines()
        .map(|line| match line.strip_prefix(&own_page) {
            Some(sub) if line.ends_with("(8)") => {
                format!(
                    "\\fB{} {}\\fR\n",
                    name.replace('-', "\\-"),
                    &sub[..sub.len() - 3]
                )
            }
            _ if line == ".SH EXTRA" => ".SH NOTES\n".to_string(),
            _ => format!("{line}\n"),
        })
        .collect();
    match page.find(".SH VERSION") {
        Some(at) => format!("{}{sections}{}", &page[..at], &page[at..]),
        None => page + sections,
    }
}

/// Prints the page and exits.
pub fn print(cmd: clap::Command, sections: &str) -> ! {
    print!("{}", page(cmd, sections));
    std::process::exit(0)
}
