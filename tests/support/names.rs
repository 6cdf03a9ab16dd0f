//! Digit-free names for test triplets (digit runs are folded by
//! normalisation, so `user1` and `user2` would be one sender).

#![allow(dead_code)]

/// Appends `n` in base 26, written with the letters a to z.
pub fn letters_into(mut n: u64, out: &mut String) {
    loop {
        out.push(char::from(b'a' + (n % 26) as u8));
        n /= 26;
        if n == 0 {
            return;
        }
    }
}

/// `n` in base 26, written with the letters a to z.
pub fn letters(n: u64) -> String {
    let mut s = String::new();
    letters_into(n, &mut s);
    s
}

/// The resident memory of process `pid` (`"self"` for this one), from /proc.
pub fn rss_bytes(pid: &str) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}
