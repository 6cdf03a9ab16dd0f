//! `--spf`: the envelope sender's SPF (RFC 7208) for the client's address,
//! so that a sender whose SPF passes is keyed by its domain and pools that
//! retry from unrelated networks pass on their first retry.
//!
//! Evaluation is mail-auth's `check_host()` (its limits: 10 DNS-querying
//! mechanisms, 10 MX names; an `include:` loop runs into them), over
//! hickory's resolver, whose answer cache (bounded, by TTL) makes a warm
//! check cost no DNS round trip. Each check has a deadline (`--spf-timeout`,
//! 2 s by default) that covers waiting for a check of the same domain: at
//! most one evaluation per sender domain is in flight, so a burst for one
//! domain asks the DNS once and the others find the cache warm (or, when
//! the DNS did not answer in time, give up with it). Nothing
//! here ever costs an answer: a DNS failure or the deadline is `temperror`
//! or `timeout`, and the request keeps its network or host-name key.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use greylist::policy::Verification;
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{MessageAuthenticator, SpfResult};
use parking_lot::Mutex;

/// Cached DNS answers (hickory counts responses; an SPF check needs a
/// few): bounded, each kept for its TTL.
const DNS_CACHE: u64 = 16_384;

/// What an SPF check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// An RFC 7208 result: `pass`, `fail`, `softfail`, `neutral`, `none`,
    /// `temperror`, `permerror`.
    Result(SpfResult),
    /// The deadline passed first.
    Timeout,
    /// `pass`, but the record passes any address (`+all`, `ip4:0.0.0.0/0`):
    /// it vouches for nobody, and keys nothing.
    PassesAnyone,
}

impl Outcome {
    /// What the log line says: the RFC 7208 result name, or `timeout`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Result(SpfResult::Pass) => "pass",
            Outcome::Result(SpfResult::Fail) => "fail",
            Outcome::Result(SpfResult::SoftFail) => "softfail",
            Outcome::Result(SpfResult::Neutral) => "neutral",
            Outcome::Result(SpfResult::TempError) => "temperror",
            Outcome::Result(SpfResult::PermError) => "permerror",
            Outcome::Result(SpfResult::None) => "none",
            Outcome::Timeout => "timeout",
            Outcome::PassesAnyone => "pass-anyone",
        }
    }
}

/// The SPF checker: a resolver on a one-thread runtime; checks run on the
/// connection threads that ask (each blocks until its deadline at most).
pub struct Spf {
    runtime: tokio::runtime::Runtime,
    auth: MessageAuthenticator,
    deadline: Duration,
    /// This host's name, for the `%{r}` macro.
    host: String,
    /// One turn per sender domain being checked now: an entry lives while
    /// a check holds or waits for it, so the map is bounded by the
    /// connections.
    in_flight: Mutex<HashMap<String, Arc<Turn>>>,
}

/// The checks of one sender domain take turns, so one lookup for it is in
/// flight at a time; after a turn that ran out of time (the DNS does not
/// answer), the checks waiting give up too instead of asking again.
#[derive(Default)]
struct Turn {
    lock: tokio::sync::Mutex<()>,
    /// When a check of this domain last ran out of time: the checks that
    /// were waiting then give up; those that come later ask again.
    timed_out_at: Mutex<Option<tokio::time::Instant>>,
}

/// Addresses no SPF record should authorise (reserved, "future use"): a
/// record that passes them passes anyone.
const NOBODY_V4: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(240, 0, 0, 1));
const NOBODY_V6: IpAddr = IpAddr::V6(std::net::Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 1));

impl Spf {
    /// A checker asking `server` (an address, port 53 unless given), or
    /// the system's resolvers (`/etc/resolv.conf`) without one.
    pub fn new(server: Option<SocketAddr>, deadline: Duration, host: &str) -> Result<Spf, String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("greylist-spf")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the SPF resolver's runtime: {e}"))?;
        let (config, mut opts) = match server {
            Some(addr) => {
                let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
                for c in &mut ns.connections {
                    c.port = addr.port();
                }
                (
                    ResolverConfig::from_parts(None, vec![], vec![ns]),
                    ResolverOpts::default(),
                )
            }
            None => hickory_resolver::system_conf::read_system_conf()
                .map_err(|e| format!("--spf: cannot read the system's resolvers: {e}"))?,
        };
        opts.cache_size = DNS_CACHE;
        // One attempt per server within the deadline; the deadline, not
        // the resolver, ends a check.
        opts.timeout = deadline;
        opts.attempts = 1;
        let auth = {
            // The resolver binds to the runtime it is built in.
            let _guard = runtime.enter();
            MessageAuthenticator::new(config, opts)
                .map_err(|e| format!("--spf: cannot build the resolver: {e}"))?
        };
        Ok(Spf {
            runtime,
            auth,
            deadline,
            host: host.to_string(),
            in_flight: Mutex::new(HashMap::new()),
        })
    }

    /// The SPF result of `sender` (an address with a domain) for `ip`
    /// within the deadline. `helo` is only used by the `%{h}` macro.
    pub fn check(&self, ip: IpAddr, sender: &str, domain: &str, helo: &str) -> Outcome {
        let gate = self
            .in_flight
            .lock()
            .entry(domain.to_string())
            .or_default()
            .clone();
        let started = tokio::time::Instant::now();
        let deadline = started + self.deadline;
        let nobody = if ip.is_ipv4() { NOBODY_V4 } else { NOBODY_V6 };
        let outcome = self.runtime.block_on(async {
            let Ok(turn) = tokio::time::timeout_at(deadline, gate.lock.lock()).await else {
                return Outcome::Timeout;
            };
            if gate.timed_out_at.lock().is_some_and(|t| t >= started) {
                return Outcome::Timeout;
            }
            let evaluate = async {
                let params = SpfParameters::verify_mail_from(ip, helo, &self.host, sender);
                let result = self.auth.verify_spf(params).await.result();
                if result != SpfResult::Pass {
                    return Outcome::Result(result);
                }
                // From the cache: the same records, another address.
                let params = SpfParameters::verify_mail_from(nobody, helo, &self.host, sender);
                match self.auth.verify_spf(params).await.result() {
                    SpfResult::Pass => Outcome::PassesAnyone,
                    _ => Outcome::Result(SpfResult::Pass),
                }
            };
            match tokio::time::timeout_at(deadline, evaluate).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    // Set before the turn passes on.
                    *gate.timed_out_at.lock() = Some(tokio::time::Instant::now());
                    drop(turn);
                    Outcome::Timeout
                }
            }
        });
        drop(gate);
        {
            let mut map = self.in_flight.lock();
            if map.get(domain).is_some_and(|g| Arc::strong_count(g) == 1) {
                map.remove(domain);
            }
        }
        outcome
    }
}

/// `--dns-server`: an IP address, with a port (`127.0.0.1:5353`,
/// `[::1]:5353`) or without (53).
pub fn parse_server(text: &str) -> Result<SocketAddr, String> {
    text.parse::<SocketAddr>()
        .or_else(|_| text.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
        .map_err(|_| format!("{text:?} is not an IP address with an optional port"))
}

impl greylist::policy::SenderCheck for Spf {
    /// The envelope sender's domain, verified when its SPF passes for the
    /// client (and does not pass anyone); nothing asked for the null
    /// sender, a sender without a domain, or a client address that is not
    /// one.
    fn verify(&self, req: &greylist::Request<'_>) -> Verification {
        let nothing = Verification::default;
        let Ok(sender) = std::str::from_utf8(req.sender) else {
            return nothing();
        };
        let sender = sender.trim();
        let sender = sender
            .strip_prefix('<')
            .and_then(|s| s.strip_suffix('>'))
            .unwrap_or(sender);
        let Some((_, domain)) = sender.rsplit_once('@') else {
            return nothing();
        };
        let domain = domain
            .strip_suffix('.')
            .unwrap_or(domain)
            .to_ascii_lowercase();
        let Ok(ip) = greylist::parse_ip(req.client_ip) else {
            return nothing();
        };
        if domain.is_empty() || domain.len() > 253 {
            return nothing();
        }
        let helo = req
            .helo
            .and_then(|h| std::str::from_utf8(h).ok())
            .unwrap_or("unknown");
        let outcome = self.check(ip.to_canonical(), sender, &domain, helo);
        Verification {
            verified: outcome == Outcome::Result(SpfResult::Pass),
            transient: matches!(
                outcome,
                Outcome::Timeout | Outcome::Result(SpfResult::TempError)
            ),
            log: Some(outcome.as_str()),
            domain: Some(domain),
        }
    }
}
