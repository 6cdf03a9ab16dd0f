//! `greylist_config`: the settings builder.

use std::ffi::c_char;
use std::time::Duration;

use crate::errors::{greylist_status, status_of, value_of, Failure};
use crate::{arg_mut, arg_str, free_handle, into_handle};
use greylist_core::{ConfigBuilder, FailMode, SnapshotOptions};

/// Engine settings under construction. Create with `greylist_config_new()`,
/// change with the `greylist_config_set_*()` functions, pass to
/// `greylist_engine_new()` (which copies it), free with
/// `greylist_config_free()`.
///
/// Not thread-safe: use one config from one thread at a time.
pub struct greylist_config {
    pub(crate) builder: ConfigBuilder,
    pub(crate) snapshot: Option<SnapshotOptions>,
}

/// A new config holding the defaults (delay 300 s, retry window 2 days,
/// pass lifetime 35 days, auto-whitelist after 5 passes, /24 and /64,
/// 4 million entries).
///
/// Returns NULL only if memory could not be allocated. The caller owns the
/// result and frees it with `greylist_config_free()`.
#[no_mangle]
pub extern "C" fn greylist_config_new() -> *mut greylist_config {
    value_of(std::ptr::null_mut(), || {
        into_handle(greylist_config {
            builder: ConfigBuilder::new(),
            snapshot: None,
        })
    })
}

/// Frees a config. NULL is a no-op.
///
/// # Safety
/// `config` must be NULL or come from `greylist_config_new()` and not be
/// freed already.
#[no_mangle]
pub unsafe extern "C" fn greylist_config_free(config: *mut greylist_config) {
    value_of((), || {
        // SAFETY: the caller guarantees `config` is NULL or ours and live.
        unsafe { free_handle(config) }
    })
}

/// Applies one setting, checking it on its own right away: a value that is
/// wrong whatever the other settings are is refused here, naming the
/// setting; combinations (delay vs retry window) are checked by
/// `greylist_engine_new()`.
///
/// # Safety
/// `config` must be NULL or a live config used by this thread only.
unsafe fn set(
    config: *mut greylist_config,
    settings: &[&str],
    apply: impl Fn(ConfigBuilder) -> Result<ConfigBuilder, Failure>,
) -> greylist_status {
    status_of(|| {
        // SAFETY: guaranteed by this function's caller.
        let config = unsafe { arg_mut(config, "config") }?;
        // Against a base where the delay and retry window cannot clash.
        let base = ConfigBuilder::new().delay(0).retry_window(u32::MAX);
        if let Err(e) = apply(base)?.build() {
            if settings.contains(&e.setting()) {
                return Err(e.into());
            }
        }
        config.builder = apply(config.builder.clone())?;
        Ok(())
    })
}

// One function per setting, spelled out so that cbindgen sees them; the
// shared work is in `set`. Each returns `GREYLIST_STATUS_NULL_ARGUMENT` for
// a NULL config and `GREYLIST_STATUS_INVALID_ARGUMENT` for a value out of
// range, and needs `config` to be NULL or a live config used by this thread
// only.

/// Minimum wait, in seconds, before a retry is accepted (default 300).
///
/// # Safety
/// `config` must be NULL or a live config used by this thread only.
#[no_mangle]
pub unsafe extern "C" fn greylist_config_set_delay(
    config: *mut greylist_config,
    seconds: u32,
) -> greylist_status {
    // SAFETY: the caller's guarantee, passed on.
    unsafe { set(config, &["delay"], |b| Ok(b.delay(seconds))) }
}

/// How long, in seconds, a first retry may take (default 172800, 2 days).
///
/// # Safety
/// `config` must be NULL or a live config used by this thread only.
#[no_mangle]
pub unsafe extern "C" fn greylist_config_set_retry_window(
    config: *mut greylist_config,
    seconds: u32,
) -> greylist_status {
    // SAFETY: the caller's guarantee, passed on.
    unsafe { set(config, &["retry_window"], |b| Ok(b.retry_window(seconds))) }
}

/// Lifetime, in seconds, of a passed triplet, refreshed on each use
/// (default 3024000, 35 days).
///
/// # Safety
/// `config` must be NULL or a live config used by this thread only.
#[no_mangle]
pub unsafe extern "C" fn greylist_config_set_pass_ttl(
    config: *mut greylist_config,
    seconds: u32,
) -> greylist_status {
    // SAFETY: the caller's guarantee, passed on.
    unsafe { set(config, &["pass_ttl"], |b| Ok(b.pass_ttl(seconds))) }
}

/// Passed triplets after which a client network is auto-whitelisted; 0
/// turns auto-whitelisting off (default 5). At most one pass of a network
/// counts an hour (postgrey's rule), so one message to many recipients is
/// one pass.
///
/// # Safety
/// `config` must be NULL or a live config used by this thread only.
#[no_mangle]
pub unsafe extern "C" fn greylist_config_set_awl_threshold(
    config: *mut greylist_config,
    passes: u32,
) -> greylist_status {
    // SAFETY: the caller's guarantee, passed on.
    unsafe { set(config, &["awl_threshold"], |b| Ok(b.awl_threshold(passes))) }
}

/// Lifetime, in seconds, of an auto-whitelist record, refreshed on each use
/// (default 3024000, 35 days).
///
/// # Safety
/// `config` must be NULL or a live config used by this thread only.
#[no_mangle]
pub unsafe extern "C" fn greylist_config_set_awl_ttl(
    config: *mut greylist_config,
    seconds: u32,
) -> greylist_status {
    // SAFETY: the caller's guarantee, passed on.
    unsafe { set(config, &["awl_ttl"], |b| Ok(b.awl_ttl(seconds))) }
}

/// Early-retry rounds (distinct seconds) within one delay period that block
/// a client network, and for how many seconds; a threshold of 0 turns blast
/// blocking off (defaults 20 and 3600).
///
/// # Safety
/// `config` must be NULL or a live config used by this thread only.
#[no_mangle]
pub unsafe extern "C" fn greylist_config_set_blast(
    config: *mut greylist_config,
    rounds: u32,
    block_seconds: u32,
) -> greylist_status {
    // SAFETY: the caller's guarantee, passed on.
    unsafe {
        set(config, &["blast_threshold", "block_time"], |b| {
            Ok(b.blast_threshold(rounds).block_time(block_seconds))
        })
    }
}

/// Early retries of one triplet (copies of one message sent again before
/// its delay is over) that, when exceeded, block its client network for
/// the block time, however many arrive in one second; 0 turns it off
/// (default 5: Exchange 2000/2003 makes 3 quick retries).
///
/// # Safety
/// `config` must be NULL or a live config used by this thread only.
#[no_mangle]
pub unsafe extern "C" fn greylist_config_set_blast_copies(
    config: *mut greylist_config,
    copies: u32,
) -> greylist_status {
    // SAFETY: the caller's guarantee, passed on.
    unsafe { set(config, &["blast_copies"], |b| Ok(b.blast_copies(copies))) }
}

/// Seconds after its delay ended that a pending triplet with only early
/// retries (at most `blast_copies`) and no attempt since counts as lost
/// mail (default 3600; at least 1). See
/// `greylist_engine_lost_mail_report()`.
///
/// # Safety
/// `config` must be NULL or a live config used by this thread only.
#[no_mangle]
pub unsafe extern "C" fn greylist_config_set_lost_after(
    config: *mut greylist_config,
    seconds: u32,
) -> greylist_status {
    // SAFETY: the caller's guarantee, passed on.
    unsafe { set(config, &["lost_after"], |b| Ok(b.lost_after(seconds))) }
}

/// Most triplet entries kept (default 4000000); when full, expired entries
/// and then the oldest pending ones make room.
///
/// # Safety
/// `config` must be NULL or a live config used by this thread only.
#[no_mangle]
pub unsafe extern "C" fn greylist_config_set_max_entries(
    config: *mut greylist_config,
    entries: u64,
) -> greylist_status {
    // SAFETY: the caller's guarantee, passed on.
    unsafe { set(config, &["max_entries"], |b| Ok(b.max_entries(entries))) }
}

/// Most client-network records kept (default 1000000): auto-whitelist,
/// blast and lost-mail records. When full, expired records and then the
/// least recently active ones that neither block nor auto-whitelist make
/// room.
///
/// # Safety
/// `config` must be NULL or a live config used by this thread only.
#[no_mangle]
pub unsafe extern "C" fn greylist_config_set_max_clients(
    config: *mut greylist_config,
    clients: u64,
) -> greylist_status {
    // SAFETY: the caller's guarantee, passed on.
    unsafe { set(config, &["max_clients"], |b| Ok(b.max_clients(clients))) }
}

/// Prefix lengths client addresses are grouped by: IPv4 1 to 32 (default
/// 24), IPv6 1 to 128 (default 64); 32 and 128 mean the exact address.
///
/// Returns `GREYLIST_STATUS_NULL_ARGUMENT` for a NULL config and
/// `GREYLIST_STATUS_INVALID_ARGUMENT` for a length out of range.
///
/// # Safety
/// `config` must be NULL or a live config used by this thread only.
#[no_mangle]
pub unsafe extern "C" fn greylist_config_set_prefixes(
    config: *mut greylist_config,
    ipv4: u8,
    ipv6: u8,
) -> greylist_status {
    // SAFETY: the caller's guarantee, passed on.
    unsafe {
        set(config, &["ipv4_prefix", "ipv6_prefix"], |b| {
            Ok(b.prefixes(ipv4, ipv6))
        })
    }
}

/// Characters that start an address extension (`"+"` by default, `"+-"`
/// for both, `""` for none), as Postfix's `recipient_delimiter`.
///
/// # Safety
/// `config` must be NULL or a live config used by this thread only;
/// `delimiters` must be NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn greylist_config_set_extension_delimiters(
    config: *mut greylist_config,
    delimiters: *const c_char,
) -> greylist_status {
    // SAFETY: the caller's guarantees for `config` and `delimiters`,
    // passed on (the closure reads `delimiters`).
    unsafe {
        set(config, &["extension_delimiters"], |b| {
            Ok(b.extension_delimiters(arg_str(delimiters, "delimiters")?))
        })
    }
}

/// The suggested reply for a defer: SMTP code (4xx, default 450), enhanced
/// code (default `"4.2.0"`) and text, where `%s` stands for the seconds
/// until a retry passes (default `"Greylisted, please try again in %s
/// seconds"`).
///
/// # Safety
/// `config` must be NULL or a live config used by this thread only;
/// `enhanced` and `text` must be NULL or NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn greylist_config_set_reply(
    config: *mut greylist_config,
    code: u16,
    enhanced: *const c_char,
    text: *const c_char,
) -> greylist_status {
    // SAFETY: the caller's guarantees for `config`, `enhanced` and `text`,
    // passed on (the closure reads the strings).
    unsafe {
        set(
            config,
            &["reply_code", "reply_enhanced", "greylist_text"],
            |b| {
                let (enhanced, text) = (arg_str(enhanced, "enhanced")?, arg_str(text, "text")?);
                Ok(b.reply_code(code)
                    .reply_enhanced(enhanced)
                    .greylist_text(text))
            },
        )
    }
}

/// When a request carries a verified sender domain (SPF or DKIM, see
/// `greylist_request`), key triplets by that domain instead of the client
/// network, so pools that retry from unrelated addresses pass on their
/// first retry after the delay. Off by default.
///
/// # Safety
/// `config` must be NULL or a live config used by this thread only.
#[no_mangle]
pub unsafe extern "C" fn greylist_config_set_key_by_verified_domain(
    config: *mut greylist_config,
    enable: bool,
) -> greylist_status {
    // SAFETY: the caller's guarantee, passed on.
    unsafe { set(config, &[], |b| Ok(b.key_by_verified_domain(enable))) }
}

/// Keys a request that carries the client's verified host name
/// (`greylist_request.client_name`: Postfix's `client_name`, Exim's
/// `$sender_host_name`) by the name's registrable domain instead of the
/// client network (`mail-sor-f41.google.com` keys as `google.com`), unless
/// the name is generic (carries the client's address, or a word such as
/// `dsl`, `dyn` or `pool`), so pools that retry from another host pass on
/// their first retry after the delay. On by default.
///
/// # Safety
/// `config` must be NULL or a live config used by this thread only.
#[no_mangle]
pub unsafe extern "C" fn greylist_config_set_key_by_host_name(
    config: *mut greylist_config,
    enable: bool,
) -> greylist_status {
    // SAFETY: the caller's guarantee, passed on.
    unsafe { set(config, &[], |b| Ok(b.key_by_host_name(enable))) }
}

/// Keeps triplets in Redis, shared by every MX host with the same URL,
/// prefix and key secret (`greylist_config_set_secret_file()`, needed
/// too): `redis://[user:password@]host:port/db`, `rediss://...` for TLS
/// (`#insecure` at the end skips certificate checks: tests only),
/// `redis+unix:///path/redis.sock`. Nothing is connected until the first
/// check. NULL turns the shared store off again. Refused with
/// `GREYLIST_STATUS_INVALID_ARGUMENT` for a URL the client cannot use, or
/// when the library was built without its `redis` feature.
///
/// # Safety
/// `config` must be NULL or a live config used by this thread only; `url`
/// must be NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn greylist_config_set_redis(
    config: *mut greylist_config,
    url: *const c_char,
) -> greylist_status {
    // SAFETY: the caller's guarantees for `config` and `url`, passed on.
    unsafe {
        set(config, &["redis"], |b| {
            if url.is_null() {
                return Ok(b.no_redis());
            }
            Ok(b.redis(arg_str(url, "url")?))
        })
    }
}

/// Prefix of every key the engine keeps in Redis (default `"greylist:"`),
/// so several greylists or other programs can share a database.
///
/// # Safety
/// `config` must be NULL or a live config used by this thread only;
/// `prefix` must be NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn greylist_config_set_redis_prefix(
    config: *mut greylist_config,
    prefix: *const c_char,
) -> greylist_status {
    // SAFETY: the caller's guarantees for `config` and `prefix`, passed on.
    unsafe {
        set(config, &["redis_prefix"], |b| {
            Ok(b.redis_prefix(arg_str(prefix, "prefix")?))
        })
    }
}

/// How long, in milliseconds, a check waits for Redis before the local
/// table answers (default 50, from 1 to 60000).
///
/// # Safety
/// `config` must be NULL or a live config used by this thread only.
#[no_mangle]
pub unsafe extern "C" fn greylist_config_set_redis_timeout_ms(
    config: *mut greylist_config,
    milliseconds: u32,
) -> greylist_status {
    let timeout = Duration::from_millis(milliseconds.into());
    // SAFETY: the caller's guarantee, passed on.
    unsafe { set(config, &["redis_timeout"], |b| Ok(b.redis_timeout(timeout))) }
}

/// When Redis fails: `false` (the default) fails open, so a check the
/// local table would defer passes; `true` keeps the local table's defer.
/// Either way the verdict's reason is `GREYLIST_REASON_STORE_UNAVAILABLE`.
///
/// # Safety
/// `config` must be NULL or a live config used by this thread only.
#[no_mangle]
pub unsafe extern "C" fn greylist_config_set_redis_fail_defer(
    config: *mut greylist_config,
    defer: bool,
) -> greylist_status {
    let mode = if defer {
        FailMode::Defer
    } else {
        FailMode::Open
    };
    // SAFETY: the caller's guarantee, passed on.
    unsafe { set(config, &[], |b| Ok(b.fail_mode(mode))) }
}

/// The local cache of passed triplets answered without asking Redis: at
/// most `entries` (0 turns it off; default 100000), each for `seconds`
/// after Redis last said it passed (default 300).
///
/// # Safety
/// `config` must be NULL or a live config used by this thread only.
#[no_mangle]
pub unsafe extern "C" fn greylist_config_set_pass_cache(
    config: *mut greylist_config,
    entries: u32,
    seconds: u32,
) -> greylist_status {
    // SAFETY: the caller's guarantee, passed on.
    unsafe {
        set(config, &[], |b| {
            Ok(b.pass_cache_entries(entries as usize)
                .pass_cache_ttl(seconds))
        })
    }
}

/// For a `rediss://` URL: trust the CA certificates (PEM) in `path`
/// instead of the system's roots (a private CA). Read when the engine is
/// made; a missing file, or one without a certificate, is refused then,
/// naming the file. NULL goes back to the system's roots.
///
/// # Safety
/// `config` must be NULL or a live config used by this thread only; `path`
/// must be NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn greylist_config_set_redis_ca_file(
    config: *mut greylist_config,
    path: *const c_char,
) -> greylist_status {
    // SAFETY: the caller's guarantees for `config` and `path`, passed on.
    unsafe {
        set(config, &[], |b| {
            if path.is_null() {
                return Ok(b.no_redis_ca());
            }
            Ok(b.redis_ca_file(arg_str(path, "path")?))
        })
    }
}

/// Reads the key secret from a file holding 32 hex digits (`openssl rand
/// -hex 16 > secret`), so every MX host sharing Redis derives the same
/// keys. Read now: a missing or malformed file is refused here, naming it.
///
/// # Safety
/// `config` must be NULL or a live config used by this thread only; `path`
/// must be NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn greylist_config_set_secret_file(
    config: *mut greylist_config,
    path: *const c_char,
) -> greylist_status {
    // SAFETY: the caller's guarantees for `config` and `path`, passed on.
    unsafe {
        set(config, &["shared_secret_file"], |b| {
            let path = arg_str(path, "path")?;
            let secret = greylist_core::Secret::from_file(path.as_ref())
                .map_err(|e| Failure::invalid(format!("shared_secret_file: {e}")))?;
            Ok(b.shared_secret(secret))
        })
    }
}

/// Keeps the engine in a snapshot file: `greylist_engine_new()` loads
/// `path` if it exists (a missing file starts empty; a damaged one is an
/// error, see `greylist_config_set_start_empty_if_corrupt()`), every
/// `interval_seconds` (0: never) a background thread sweeps expired entries
/// and saves, and `greylist_engine_free()` writes a final snapshot. A NULL
/// `path` turns snapshots off again.
///
/// # Safety
/// `config` must be NULL or a live config used by this thread only; `path`
/// must be NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn greylist_config_set_snapshot(
    config: *mut greylist_config,
    path: *const c_char,
    interval_seconds: u32,
) -> greylist_status {
    status_of(|| {
        // SAFETY: the caller guarantees NULL or a live, unshared config.
        let config = unsafe { arg_mut(config, "config") }?;
        if path.is_null() {
            config.snapshot = None;
            return Ok(());
        }
        // SAFETY: not NULL; the caller guarantees NUL termination.
        let path = unsafe { arg_str(path, "path") }?;
        if path.is_empty() {
            return Err(Failure::invalid("path: is empty"));
        }
        let interval = (interval_seconds > 0).then(|| Duration::from_secs(interval_seconds.into()));
        let keep = config
            .snapshot
            .as_ref()
            .is_some_and(|s| s.start_empty_if_corrupt);
        config.snapshot = Some(SnapshotOptions {
            start_empty_if_corrupt: keep,
            ..SnapshotOptions::new(path, interval)
        });
        Ok(())
    })
}

/// With a snapshot configured: when the file is corrupt, rename it to
/// `<path>.corrupt-<time>` (never overwritten) and start empty, instead of
/// failing `greylist_engine_new()`. Off by default. Files from a newer
/// version or with other key settings are always refused.
///
/// # Safety
/// `config` must be NULL or a live config used by this thread only.
#[no_mangle]
pub unsafe extern "C" fn greylist_config_set_start_empty_if_corrupt(
    config: *mut greylist_config,
    enable: bool,
) -> greylist_status {
    status_of(|| {
        // SAFETY: the caller guarantees NULL or a live, unshared config.
        let config = unsafe { arg_mut(config, "config") }?;
        match config.snapshot.as_mut() {
            Some(options) => {
                options.start_empty_if_corrupt = enable;
                Ok(())
            }
            None => Err(Failure::invalid(
                "config: set a snapshot path with greylist_config_set_snapshot first",
            )),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::errors::*;

    #[test]
    fn setters_check_their_own_range_at_once() {
        let c = greylist_config_new();
        // SAFETY: `c` is a live config; it is freed once at the end.
        unsafe {
            assert_eq!(greylist_config_set_delay(c, 60), GREYLIST_STATUS_OK);
            assert_eq!(
                greylist_config_set_prefixes(c, 0, 64),
                GREYLIST_STATUS_INVALID_ARGUMENT
            );
            assert_eq!(greylist_config_set_prefixes(c, 32, 128), GREYLIST_STATUS_OK);
            assert_eq!(
                greylist_config_set_max_entries(c, 0),
                GREYLIST_STATUS_INVALID_ARGUMENT
            );
            assert_eq!(
                greylist_config_set_max_clients(c, 0),
                GREYLIST_STATUS_INVALID_ARGUMENT
            );
            assert_eq!(greylist_config_set_max_clients(c, 5000), GREYLIST_STATUS_OK);
            // Out of range against the current retry window only: accepted
            // here, checked when the engine is made.
            assert_eq!(greylist_config_set_delay(c, 3 * 86_400), GREYLIST_STATUS_OK);
            assert_eq!(
                greylist_config_set_retry_window(c, 7 * 86_400),
                GREYLIST_STATUS_OK
            );
            assert_eq!(
                greylist_config_set_reply(c, 451, c"4.7.1".as_ptr(), c"wait %s".as_ptr()),
                GREYLIST_STATUS_OK
            );
            assert_eq!(
                greylist_config_set_reply(c, 550, c"5.7.1".as_ptr(), c"no".as_ptr()),
                GREYLIST_STATUS_INVALID_ARGUMENT
            );
            assert_eq!(
                greylist_config_set_extension_delimiters(c, std::ptr::null()),
                GREYLIST_STATUS_NULL_ARGUMENT
            );
            let b = (*c).builder.clone().build().unwrap();
            assert_eq!(
                (b.delay(), b.ipv4_prefix(), b.reply_code()),
                (3 * 86_400, 32, 451)
            );
            assert_eq!(
                greylist_config_set_delay(std::ptr::null_mut(), 1),
                GREYLIST_STATUS_NULL_ARGUMENT
            );
            greylist_config_free(c);
            greylist_config_free(std::ptr::null_mut());
        }
    }
}
