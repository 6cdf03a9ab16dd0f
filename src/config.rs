//! Engine settings, built and validated through [`ConfigBuilder`].

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::key::Secret;

/// A setting that was refused, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    setting: &'static str,
    reason: String,
}

impl ConfigError {
    fn new(setting: &'static str, reason: impl Into<String>) -> Self {
        ConfigError {
            setting,
            reason: reason.into(),
        }
    }

    /// The name of the refused setting (`delay`, `retry_window`, ...).
    pub fn setting(&self) -> &'static str {
        self.setting
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.setting, self.reason)
    }
}

impl std::error::Error for ConfigError {}

const DAY: u32 = 86_400;

/// What a check answers when the shared store (Redis) fails or is slow:
/// either way the local table decides, with
/// [`Reason::StoreUnavailable`](crate::Reason::StoreUnavailable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailMode {
    /// A defer becomes a pass: mail is never held up by the store (the
    /// default, as sqlgrey and rspamd do).
    #[default]
    Open,
    /// The local table's verdict stands: new triplets are deferred, and a
    /// retry after the delay to the same host passes.
    Defer,
}

/// A Redis URL, shown without its password.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct RedisUrl(pub(crate) String);

impl RedisUrl {
    /// The URL with any password replaced by `***`, for logs and errors.
    pub(crate) fn redacted(&self) -> String {
        let url = &self.0;
        let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
            return url.clone();
        };
        // Up to the last `@` of the whole URL, as the URL is parsed for
        // several hosts: a password with a raw `/`, `?` or `#` (which should
        // have been percent-encoded) is hidden too; hiding too much is safe.
        match url[scheme_end..].rfind('@') {
            Some(at) => {
                let userinfo = &url[scheme_end..scheme_end + at];
                let user = userinfo.split(':').next().unwrap_or("");
                let hidden = if userinfo.contains(':') { ":***" } else { "" };
                format!(
                    "{}{user}{hidden}{}",
                    &url[..scheme_end],
                    &url[scheme_end + at..]
                )
            }
            None => url.clone(),
        }
    }
}

/// PEM certificates (a private CA for `rediss://`), shown by size only.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Pem(pub(crate) Vec<u8>);

impl fmt::Debug for Pem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} bytes of PEM>", self.0.len())
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Validated engine settings. Durations are in seconds.
///
/// Build one with [`Config::builder`]; [`Config::default`] gives the defaults
/// of the table in the crate documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub(crate) delay: u32,
    pub(crate) retry_window: u32,
    pub(crate) pass_ttl: u32,
    pub(crate) awl_threshold: u32,
    pub(crate) awl_ttl: u32,
    pub(crate) ipv4_prefix: u8,
    pub(crate) ipv6_prefix: u8,
    pub(crate) extension_delimiters: String,
    pub(crate) blast_threshold: u32,
    pub(crate) blast_copies: u32,
    pub(crate) block_time: u32,
    pub(crate) lost_after: u32,
    pub(crate) max_entries: u64,
    pub(crate) max_clients: u64,
    pub(crate) shards: usize,
    pub(crate) reply_code: u16,
    pub(crate) reply_enhanced: String,
    pub(crate) greylist_text: String,
    pub(crate) block_text: String,
    pub(crate) key_by_verified_domain: bool,
    pub(crate) key_by_host_name: bool,
    pub(crate) redis: Option<RedisUrl>,
    pub(crate) redis_ca: Option<Pem>,
    pub(crate) redis_prefix: String,
    pub(crate) redis_timeout: Duration,
    pub(crate) redis_retry_interval: Duration,
    pub(crate) fail_mode: FailMode,
    pub(crate) pass_cache_entries: usize,
    pub(crate) pass_cache_ttl: u32,
    pub(crate) shared_secret: Option<Secret>,
}

impl Default for Config {
    fn default() -> Self {
        ConfigBuilder::new()
            .build()
            .expect("the default settings are valid")
    }
}

/// Settings that are one plain value: a getter on [`Config`] and a setter
/// on [`ConfigBuilder`] each, from one list.
macro_rules! settings {
    ($($(#[$doc:meta])* $name:ident: $ty:ty),* $(,)?) => {
        impl Config {
            $( $(#[$doc])* pub fn $name(&self) -> $ty { self.$name } )*
        }
        impl ConfigBuilder {
            $( $(#[$doc])* pub fn $name(mut self, value: $ty) -> Self { self.config.$name = value; self } )*
        }
    };
}

settings! {
    /// Minimum wait, in seconds, before a retry is accepted (default 300).
    delay: u32,
    /// How long, in seconds, a first retry may take before the triplet
    /// starts over (default 2 days).
    retry_window: u32,
    /// Lifetime, in seconds, of a passed triplet, refreshed on each use
    /// (default 35 days).
    pass_ttl: u32,
    /// Passed triplets that auto-whitelist a client network; 0 turns it off
    /// (default 5). At most one pass of a network counts an hour
    /// ([`AWL_COUNT_INTERVAL`](crate::rules::AWL_COUNT_INTERVAL), postgrey's
    /// rule), so one message to many recipients is one pass.
    awl_threshold: u32,
    /// Lifetime, in seconds, of an auto-whitelist record, refreshed on each
    /// use (default 35 days).
    awl_ttl: u32,
    /// Early-retry rounds within one delay period that block a network; 0
    /// turns it off (default 20).
    blast_threshold: u32,
    /// Early retries of one triplet (copies of one message blasted before
    /// its delay is over) that, when exceeded, block its network; 0 turns
    /// it off (default 5: Exchange 2000/2003 makes 3 quick retries).
    blast_copies: u32,
    /// How long, in seconds, a blocked network stays blocked (default 3600).
    block_time: u32,
    /// How long, in seconds, after its delay ended a pending triplet that
    /// saw only early retries (at most `blast_copies`) and no attempt since
    /// counts as lost mail (default 3600: a queueing MTA retries well
    /// within an hour of a 5-minute delay). When that is past the retry
    /// window, the triplet is lost when its window runs out.
    lost_after: u32,
    /// Most triplet entries kept; the oldest pending go first when full
    /// (default 4 million).
    max_entries: u64,
    /// Most client-network records kept (auto-whitelist, blast and
    /// lost-mail records); blocked and auto-whitelisted networks go last
    /// (default 1 million).
    max_clients: u64,
    /// Number of lock shards, rounded up to a power of two (default: 8 per
    /// core, at least 1024).
    shards: usize,
    /// SMTP reply code (4xx) of the suggested reply (default 450).
    reply_code: u16,
    /// When the MTA passes a verified sender domain (SPF or DKIM), key
    /// triplets by that domain instead of the client network, so pools
    /// that retry from unrelated addresses pass on their first retry
    /// (default off).
    key_by_verified_domain: bool,
    /// When the MTA passes the client's verified host name (Postfix's
    /// `client_name`, forward-confirmed reverse DNS), key triplets by its
    /// registrable domain instead of the client network
    /// ([`host_name_domain`](crate::host_name_domain): `mail-sor-f41.google.com`
    /// keys as `google.com`), unless the name is generic (carries the
    /// client's address, or a word of dynamic pools such as `dsl` or
    /// `pool`). Pools that retry from another host pass on their first
    /// retry after the delay (default on).
    key_by_host_name: bool,
    /// How long a check waits for the shared store before the local table
    /// answers (default 50 ms).
    redis_timeout: Duration,
    /// After the shared store failed to connect, how long checks answer
    /// locally before the next attempt (default 1 s).
    redis_retry_interval: Duration,
    /// What a check answers when the shared store fails (default open).
    fail_mode: FailMode,
    /// Passed triplets this host remembers and answers without asking the
    /// shared store; 0 turns the cache off (default 100,000).
    pass_cache_entries: usize,
    /// How long, in seconds, a pass is answered from the local cache
    /// (default 300).
    pass_cache_ttl: u32,
}

impl Config {
    /// A builder starting from the defaults.
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder::new()
    }

    /// A builder starting from these settings.
    pub fn to_builder(&self) -> ConfigBuilder {
        ConfigBuilder {
            config: self.clone(),
            secret_file: None,
            ca_file: None,
        }
    }

    /// IPv4 prefix length a client is grouped by (default 24).
    pub fn ipv4_prefix(&self) -> u8 {
        self.ipv4_prefix
    }

    /// IPv6 prefix length a client is grouped by (default 64).
    pub fn ipv6_prefix(&self) -> u8 {
        self.ipv6_prefix
    }

    /// The shared store's URL (`redis://[user:password@]host:port/db`,
    /// `rediss://` for TLS, `redis+unix:///path`,
    /// `redis+sentinel://host:port,.../master_name[/db]`,
    /// `redis+cluster://host:port,...`), if any; its password is shown as
    /// `***`.
    pub fn redis(&self) -> Option<String> {
        self.redis.as_ref().map(RedisUrl::redacted)
    }

    /// Prefix of every key in the shared store (default `greylist:`).
    pub fn redis_prefix(&self) -> &str {
        &self.redis_prefix
    }

    /// The key secret every host sharing a store derives its keys from.
    pub fn shared_secret(&self) -> Option<&Secret> {
        self.shared_secret.as_ref()
    }

    /// Characters that start an address extension (`user+tag`); empty = off.
    pub fn extension_delimiters(&self) -> &str {
        &self.extension_delimiters
    }

    /// Enhanced status code of the suggested reply (default `4.2.0`).
    pub fn reply_enhanced(&self) -> &str {
        &self.reply_enhanced
    }

    /// Reply text for a defer; `%s` stands for the seconds until a retry passes.
    pub fn greylist_text(&self) -> &str {
        &self.greylist_text
    }

    /// Reply text for a block; `%s` stands for the seconds until the block ends.
    pub fn block_text(&self) -> &str {
        &self.block_text
    }
}

/// Builds a [`Config`]; every setting is optional.
///
/// ```
/// let config = greylist::Config::builder().delay(60).awl_threshold(0).build().unwrap();
/// assert_eq!(config.delay(), 60);
/// let err = greylist::Config::builder().delay(3 * 86_400).build().unwrap_err();
/// assert_eq!(err.setting(), "delay");
/// ```
#[derive(Debug, Clone)]
pub struct ConfigBuilder {
    config: Config,
    secret_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
}

/// The default number of shards: at least 8 per core, so two threads
/// rarely meet on one lock, and at least 1024, so that with millions of
/// entries each shard stays small: a snapshot copies, and a growing table
/// rehashes, one shard at a time under its lock, and small shards keep
/// those pauses short for the checks that meet them. An empty shard costs
/// a few hundred bytes.
fn default_shards() -> usize {
    let cores = std::thread::available_parallelism().map_or(4, |n| n.get());
    (cores * 8).next_power_of_two().clamp(1024, 4096)
}

/// Most shards accepted; more only costs memory.
pub const MAX_SHARDS: usize = 1 << 16;

impl Default for ConfigBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ConfigBuilder {
    /// The defaults (see the crate documentation for their sources).
    pub fn new() -> Self {
        ConfigBuilder {
            config: Config {
                delay: 300,
                retry_window: 2 * DAY,
                pass_ttl: 35 * DAY,
                awl_threshold: 5,
                awl_ttl: 35 * DAY,
                ipv4_prefix: 24,
                ipv6_prefix: 64,
                extension_delimiters: "+".to_string(),
                blast_threshold: 20,
                blast_copies: 5,
                block_time: 3600,
                lost_after: 3600,
                max_entries: 4_000_000,
                max_clients: 1_000_000,
                shards: default_shards(),
                reply_code: 450,
                reply_enhanced: "4.2.0".to_string(),
                greylist_text: "Greylisted, please try again in %s seconds".to_string(),
                block_text: "Client network blocked, please try again in %s seconds".to_string(),
                key_by_verified_domain: false,
                key_by_host_name: true,
                redis: None,
                redis_ca: None,
                redis_prefix: "greylist:".to_string(),
                redis_timeout: Duration::from_millis(50),
                redis_retry_interval: Duration::from_secs(1),
                fail_mode: FailMode::Open,
                pass_cache_entries: 100_000,
                pass_cache_ttl: 300,
                shared_secret: None,
            },
            secret_file: None,
            ca_file: None,
        }
    }

    /// Keeps triplets in Redis, shared by every host with the same URL,
    /// prefix and [`shared_secret`](Self::shared_secret). Needs the cargo
    /// feature `redis` (on by default).
    ///
    /// The URL names one server (`redis://[[user]:password@]host:port/db`,
    /// `rediss://` for TLS, `redis+unix:///path`), the master that Redis
    /// Sentinel names (`redis+sentinel://[[user]:password@]host:port[,host:port...]/master_name[/db]`:
    /// asked at every connect, so checks follow a fail-over), or a Redis
    /// Cluster (`redis+cluster://[[user]:password@]host:port[,host:port...]`,
    /// any of its nodes). `rediss+sentinel://` and `rediss+cluster://`
    /// speak TLS. The password is the master's or the nodes'; sentinels are
    /// asked without one.
    pub fn redis(mut self, url: &str) -> Self {
        self.config.redis = Some(RedisUrl(url.to_string()));
        self
    }

    /// No shared store: triplets stay in this process (the default).
    pub fn no_redis(mut self) -> Self {
        self.config.redis = None;
        self
    }

    /// Prefix of every key in the shared store, so several greylists (or
    /// other programs) can use one Redis database.
    pub fn redis_prefix(mut self, prefix: &str) -> Self {
        self.config.redis_prefix = prefix.to_string();
        self
    }

    /// The key secret shared by every host of a shared store.
    pub fn shared_secret(mut self, secret: Secret) -> Self {
        self.config.shared_secret = Some(secret);
        self
    }

    /// For a `rediss://` URL: trust the CA certificates (PEM) in this file
    /// instead of the system's roots, read when the configuration is built.
    pub fn redis_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// Back to the system's roots for `rediss://` (the default).
    pub fn no_redis_ca(mut self) -> Self {
        self.ca_file = None;
        self.config.redis_ca = None;
        self
    }

    /// Reads the shared key secret from a file (32 hex digits, as
    /// `openssl rand -hex 16` writes) when the configuration is built.
    pub fn shared_secret_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.secret_file = Some(path.into());
        self
    }

    /// Prefix lengths clients are grouped by: IPv4 1..=32, IPv6 1..=128
    /// (32 and 128 mean the exact address).
    pub fn prefixes(mut self, ipv4: u8, ipv6: u8) -> Self {
        self.config.ipv4_prefix = ipv4;
        self.config.ipv6_prefix = ipv6;
        self
    }

    /// Characters that start an address extension (`+`, or `+-` for both);
    /// empty turns extension stripping off.
    pub fn extension_delimiters(mut self, delimiters: &str) -> Self {
        self.config.extension_delimiters = delimiters.to_string();
        self
    }

    /// Enhanced status code of the suggested reply, e.g. `4.2.0`.
    pub fn reply_enhanced(mut self, code: &str) -> Self {
        self.config.reply_enhanced = code.to_string();
        self
    }

    /// Reply text for a defer; `%s` stands for the seconds until a retry passes.
    pub fn greylist_text(mut self, text: &str) -> Self {
        self.config.greylist_text = text.to_string();
        self
    }

    /// Reply text for a block; `%s` stands for the seconds until the block ends.
    pub fn block_text(mut self, text: &str) -> Self {
        self.config.block_text = text.to_string();
        self
    }

    /// Checks every setting and returns the configuration, or the first
    /// setting that is wrong and why.
    pub fn build(self) -> Result<Config, ConfigError> {
        let mut c = self.config;
        if let Some(path) = &self.secret_file {
            let secret = Secret::from_file(path)
                .map_err(|reason| ConfigError::new("shared_secret_file", reason))?;
            c.shared_secret = Some(secret);
        }
        if let Some(path) = &self.ca_file {
            let fail = |why: String| ConfigError::new("redis_ca_file", why);
            let pem = std::fs::read(path)
                .map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?;
            if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
                return Err(fail(format!(
                    "{}: no PEM certificate in it",
                    path.display()
                )));
            }
            c.redis_ca = Some(Pem(pem));
        }
        if c.redis_ca.is_some()
            && !c
                .redis
                .as_ref()
                .is_some_and(|u| u.0.starts_with("rediss://") || u.0.starts_with("rediss+"))
        {
            return Err(ConfigError::new(
                "redis_ca_file",
                "a CA file goes with a rediss:// (TLS) URL",
            ));
        }
        if let Some(url) = &c.redis {
            check_redis_url(url, c.redis_ca.as_ref())?;
            if c.shared_secret.is_none() {
                return Err(ConfigError::new(
                    "shared_secret",
                    "a shared store needs the key secret every host shares (a secret file); \
                     with a random one no two hosts would find each other's triplets",
                ));
            }
        }
        if c.redis_prefix.len() > 64 || c.redis_prefix.contains(char::is_whitespace) {
            return Err(ConfigError::new(
                "redis_prefix",
                "must be at most 64 bytes without white space",
            ));
        }
        if !(Duration::from_millis(1)..=Duration::from_secs(60)).contains(&c.redis_timeout) {
            return Err(ConfigError::new(
                "redis_timeout",
                format!("{:?} is not from 1 ms to 60 s", c.redis_timeout),
            ));
        }
        if c.redis_retry_interval > Duration::from_secs(3600) {
            return Err(ConfigError::new(
                "redis_retry_interval",
                "must be at most an hour",
            ));
        }
        if c.delay >= c.retry_window {
            return Err(ConfigError::new(
                "delay",
                format!(
                    "{} s must be shorter than the retry window ({} s), or no retry could ever pass",
                    c.delay, c.retry_window
                ),
            ));
        }
        if c.pass_ttl == 0 {
            return Err(ConfigError::new("pass_ttl", "must be at least 1 second"));
        }
        if c.awl_threshold > 0 && c.awl_ttl == 0 {
            return Err(ConfigError::new(
                "awl_ttl",
                "must be at least 1 second while auto-whitelisting is on",
            ));
        }
        let interval = crate::rules::AWL_COUNT_INTERVAL;
        if c.awl_threshold > 1 && c.awl_ttl < interval {
            return Err(ConfigError::new(
                "awl_ttl",
                format!(
                    "{} s is shorter than the {interval} s between two counted passes: \
                     {} passes could never add up",
                    c.awl_ttl, c.awl_threshold
                ),
            ));
        }
        if (c.blast_threshold > 0 || c.blast_copies > 0) && c.block_time == 0 {
            return Err(ConfigError::new(
                "block_time",
                "must be at least 1 second while blast blocking is on",
            ));
        }
        if c.lost_after == 0 {
            return Err(ConfigError::new(
                "lost_after",
                "must be at least 1 second: a sender gets the delay and then this long to retry",
            ));
        }
        if !(1..=32).contains(&c.ipv4_prefix) {
            return Err(ConfigError::new(
                "ipv4_prefix",
                format!("{} is not a prefix length from 1 to 32", c.ipv4_prefix),
            ));
        }
        if !(1..=128).contains(&c.ipv6_prefix) {
            return Err(ConfigError::new(
                "ipv6_prefix",
                format!("{} is not a prefix length from 1 to 128", c.ipv6_prefix),
            ));
        }
        if !c.extension_delimiters.is_ascii()
            || c.extension_delimiters.contains('@')
            || c.extension_delimiters.len() > 16
        {
            return Err(ConfigError::new(
                "extension_delimiters",
                "must be at most 16 ASCII characters other than '@'",
            ));
        }
        if c.max_entries == 0 {
            return Err(ConfigError::new("max_entries", "must be at least 1"));
        }
        if c.max_clients == 0 {
            return Err(ConfigError::new("max_clients", "must be at least 1"));
        }
        if c.shards == 0 || c.shards > MAX_SHARDS {
            return Err(ConfigError::new(
                "shards",
                format!("{} is not from 1 to {MAX_SHARDS}", c.shards),
            ));
        }
        if !(400..=499).contains(&c.reply_code) {
            return Err(ConfigError::new(
                "reply_code",
                format!("{} is not a temporary (4xx) SMTP reply code", c.reply_code),
            ));
        }
        if !valid_enhanced(&c.reply_enhanced, b'4') {
            return Err(ConfigError::new(
                "reply_enhanced",
                format!(
                    "{:?} is not a temporary enhanced status code like 4.2.0",
                    c.reply_enhanced
                ),
            ));
        }
        for (setting, text) in [
            ("greylist_text", &c.greylist_text),
            ("block_text", &c.block_text),
        ] {
            if text.len() > 512 || text.contains(['\r', '\n', '\0']) {
                return Err(ConfigError::new(
                    setting,
                    "must be one line of at most 512 bytes",
                ));
            }
        }
        c.shards = c.shards.next_power_of_two();
        Ok(c)
    }
}

/// A URL the Redis client accepts, or why not.
fn check_redis_url(url: &RedisUrl, ca: Option<&Pem>) -> Result<(), ConfigError> {
    #[cfg(feature = "redis")]
    {
        let redacted = url.redacted();
        use crate::store::redis::target::Target;
        Target::new(url, None)
            .map_err(|e| ConfigError::new("redis", format!("{redacted}: {e}")))?;
        Target::new(url, ca)
            .map(drop)
            .map_err(|e| ConfigError::new("redis_ca_file", e.to_string()))
    }
    #[cfg(not(feature = "redis"))]
    {
        let _ = (url, ca);
        Err(ConfigError::new(
            "redis",
            "this build has no Redis support (cargo feature `redis`)",
        ))
    }
}

/// `class.subject.detail` as RFC 3463 writes it, with the given class digit.
fn valid_enhanced(code: &str, class: u8) -> bool {
    let parts: Vec<&str> = code.split('.').collect();
    parts.len() == 3
        && parts[0].as_bytes() == [class]
        && parts[1..]
            .iter()
            .all(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Review of issue 18: a password with a raw `/` or `#` was shown in
    /// full by a configuration error.
    #[test]
    fn passwords_are_hidden_however_they_are_written() {
        for url in [
            "redis://:s3cret@127.0.0.1:6379/0",
            "redis://user:s3cret@127.0.0.1:6379/0",
            "redis://:s3/cret@127.0.0.1:6379/0",
            "redis://:s3#cret@127.0.0.1:6379/0",
            "redis+sentinel://:s3?cret@h1:26379,h2:26379/mymaster",
            "rediss+cluster://u:s3cret@h1:7000,h2:7000#insecure",
        ] {
            let shown = RedisUrl(url.to_string()).redacted();
            assert!(
                !shown.contains("s3") && !shown.contains("cret"),
                "{url}: {shown}"
            );
            assert!(shown.contains(":***@"), "{url}: {shown}");
        }
        let plain = RedisUrl("redis+unix:///run/redis.sock".to_string());
        assert_eq!(plain.redacted(), "redis+unix:///run/redis.sock");
    }

    #[test]
    fn defaults_match_the_design() {
        let c = Config::default();
        assert_eq!(c.delay(), 300);
        assert_eq!(c.retry_window(), 2 * 86_400);
        assert_eq!(c.pass_ttl(), 35 * 86_400);
        assert_eq!(c.awl_threshold(), 5);
        assert_eq!(c.awl_ttl(), 35 * 86_400);
        assert_eq!((c.ipv4_prefix(), c.ipv6_prefix()), (24, 64));
        assert_eq!(c.blast_threshold(), 20);
        assert_eq!(c.blast_copies(), 5);
        assert_eq!(c.block_time(), 3600);
        assert_eq!(c.lost_after(), 3600);
        assert_eq!(c.max_entries(), 4_000_000);
        assert_eq!((c.reply_code(), c.reply_enhanced()), (450, "4.2.0"));
        assert!(c.shards().is_power_of_two());
    }

    #[test]
    fn a_short_awl_ttl_is_fine_when_one_pass_whitelists() {
        let c = Config::builder().awl_threshold(1).awl_ttl(60).build();
        assert_eq!(c.map(|c| c.awl_ttl()).ok(), Some(60));
        assert!(Config::builder()
            .awl_threshold(2)
            .awl_ttl(3600)
            .build()
            .is_ok());
    }

    #[test]
    fn each_bad_setting_is_named() {
        let cases: Vec<(ConfigBuilder, &str)> = vec![
            (Config::builder().delay(100).retry_window(100), "delay"),
            (Config::builder().pass_ttl(0), "pass_ttl"),
            (Config::builder().awl_ttl(0), "awl_ttl"),
            // Two passes an hour apart cannot fit in a shorter lifetime.
            (Config::builder().awl_ttl(3599), "awl_ttl"),
            (Config::builder().block_time(0), "block_time"),
            (Config::builder().lost_after(0), "lost_after"),
            (Config::builder().prefixes(0, 64), "ipv4_prefix"),
            (Config::builder().prefixes(33, 64), "ipv4_prefix"),
            (Config::builder().prefixes(24, 129), "ipv6_prefix"),
            (
                Config::builder().extension_delimiters("@"),
                "extension_delimiters",
            ),
            (Config::builder().max_entries(0), "max_entries"),
            (Config::builder().shards(0), "shards"),
            (Config::builder().reply_code(250), "reply_code"),
            (Config::builder().reply_enhanced("5.7.1"), "reply_enhanced"),
            (Config::builder().reply_enhanced("4.2"), "reply_enhanced"),
            (Config::builder().greylist_text("a\r\nb"), "greylist_text"),
        ];
        for (builder, setting) in cases {
            let err = builder.build().unwrap_err();
            assert_eq!(err.setting(), setting, "{err}");
            assert!(err.to_string().starts_with(setting));
        }
        // Turned-off features do not need their lifetimes.
        assert!(Config::builder()
            .awl_threshold(0)
            .awl_ttl(0)
            .build()
            .is_ok());
        assert!(Config::builder()
            .blast_threshold(0)
            .blast_copies(0)
            .block_time(0)
            .build()
            .is_ok());
        // Either kind of blast blocking needs a block time.
        let e = Config::builder()
            .blast_threshold(0)
            .block_time(0)
            .build()
            .unwrap_err();
        assert_eq!(e.setting(), "block_time");
    }

    #[test]
    fn shards_round_up() {
        let c = Config::builder().shards(5).build().unwrap();
        assert_eq!(c.shards(), 8);
        let c = Config::builder().shards(1).build().unwrap();
        assert_eq!(c.shards(), 1);
    }
}
