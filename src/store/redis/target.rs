//! Where Redis is: one server, a master found through Sentinel, or a
//! Cluster; and how to connect to it within a deadline.
//!
//! | URL | what it names |
//! | --- | --- |
//! | `redis://[[user]:password@]host:port/db`, `rediss://...`, `redis+unix:///path` | one server (or a proxy in front of several) |
//! | `redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]` | the master Sentinel names `service` |
//! | `redis+cluster://[[user]:password@]host:port[,host:port...]` | a Redis Cluster, from any of its nodes |
//!
//! `rediss+sentinel://` and `rediss+cluster://` speak TLS, to the
//! sentinels and the master, or to every node. A password in the URL is
//! the master's (or the nodes'); sentinels are asked without one.
//!
//! Sentinel is asked at every connect (never a cached address), as the
//! Sentinel client guidelines say: each sentinel in turn, the first that
//! answers moved to the front; the server it names is used only if it says
//! it is a master (`ROLE`), so a connect during a fail-over fails (and the
//! check is answered locally) rather than writing to a replica. A master
//! that was demoted while connected answers `READONLY`: the connection is
//! then dropped, and the next connect asks Sentinel again.
//!
//! A Cluster is reached through the `redis` crate's cluster client, which
//! follows `MOVED` and `ASK` redirections; a triplet's key and its
//! network's key share a hash tag, so each script runs on one node.

use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redis::{ConnectionAddr, ConnectionInfo, ConnectionLike, IntoConnectionInfo, RedisResult};

use crate::config::{Pem, RedisUrl};

/// Where Redis is.
pub(crate) enum Target {
    /// One server.
    Single(redis::Client),
    /// The master that Sentinel names.
    Sentinel(Sentinel),
    /// A Redis Cluster.
    Cluster(redis::cluster::ClusterClient),
}

/// A master found through Sentinel.
pub(crate) struct Sentinel {
    /// The sentinels, the last one that answered first.
    sentinels: Mutex<Vec<ConnectionInfo>>,
    /// The master's name in Sentinel's configuration.
    service: String,
    /// How to talk to the master once its address is known (password,
    /// database, TLS), with the first sentinel's address as a placeholder.
    master: ConnectionInfo,
    certificates: Option<Pem>,
}

/// A URL's scheme, and whether it speaks TLS.
fn scheme(url: &str) -> Option<(&str, bool)> {
    let (scheme, _) = url.split_once("://")?;
    Some(match scheme {
        "redis+sentinel" => ("sentinel", false),
        "rediss+sentinel" => ("sentinel", true),
        "redis+cluster" => ("cluster", false),
        "rediss+cluster" => ("cluster", true),
        _ => ("single", false),
    })
}

/// A URL with several hosts, taken apart: the user information (with its
/// `@`), the hosts, the path after the hosts (without its `/`), and what
/// follows the path (a query with its `?`, a fragment with its `#`),
/// which every one-server URL made from it carries on.
struct Hosts<'a> {
    userinfo: &'a str,
    hosts: Vec<&'a str>,
    path: &'a str,
    tail: &'a str,
}

/// The fragment of a URL's tail (`#insecure`): what a sentinel's URL
/// keeps (the query, database and password are the master's).
fn fragment(tail: &str) -> &str {
    tail.find('#').map_or("", |i| &tail[i..])
}

fn hosts(url: &str) -> RedisResult<Hosts<'_>> {
    let invalid = |why: &str| -> redis::RedisError {
        (
            redis::ErrorKind::InvalidClientConfig,
            "invalid URL",
            why.to_string(),
        )
            .into()
    };
    let (_, rest) = url.split_once("://").ok_or_else(|| invalid("no scheme"))?;
    // The user information ends at the last `@` (a password may hold
    // `/`, `?` or `#` only percent-encoded, but a raw one must not make the
    // password a host); the hosts at the first `/`, `?` or `#` after it.
    let (userinfo, rest) = match rest.rfind('@') {
        Some(at) => (&rest[..=at], &rest[at + 1..]),
        None => ("", rest),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, rest) = rest.split_at(end);
    let rest = rest.strip_prefix('/').unwrap_or(rest);
    let end = rest.find(['?', '#']).unwrap_or(rest.len());
    let (path, tail) = rest.split_at(end);
    let hosts = authority;
    let hosts: Vec<&str> = hosts.split(',').collect();
    if hosts.iter().any(|h| h.is_empty()) {
        return Err(invalid("an empty host in the list (host:port,host:port)"));
    }
    Ok(Hosts {
        userinfo,
        hosts,
        path,
        tail,
    })
}

/// A one-server URL for `host`, parsed by the `redis` crate, without the
/// `CLIENT SETINFO` of each connect (one round trip less, and a hung
/// server cannot make a connect wait the timeout once per command).
fn info(url: &str) -> RedisResult<ConnectionInfo> {
    let info = url.into_connection_info()?;
    let handshake = info.redis_settings().clone().set_skip_set_lib_name();
    Ok(info.set_redis_settings(handshake))
}

fn client(info: ConnectionInfo, certificates: Option<&Pem>) -> RedisResult<redis::Client> {
    match certificates {
        None => redis::Client::open(info),
        Some(pem) => redis::Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.0.clone()),
            },
        ),
    }
}

impl Target {
    /// The target a URL names (and, for TLS, the CA to trust instead of
    /// the system's roots). Nothing is connected.
    pub(crate) fn new(url: &RedisUrl, certificates: Option<&Pem>) -> RedisResult<Target> {
        let url = url.0.as_str();
        let invalid = |why: String| -> redis::RedisError {
            (redis::ErrorKind::InvalidClientConfig, "invalid URL", why).into()
        };
        let (kind, tls) = scheme(url).ok_or_else(|| invalid("no scheme".into()))?;
        let plain = if tls { "rediss" } else { "redis" };
        match kind {
            "sentinel" => {
                let h = hosts(url)?;
                let (service, db) = match h.path.split_once('/') {
                    Some((service, db)) => (service, db),
                    None => (h.path, "0"),
                };
                if service.is_empty() {
                    return Err(invalid(
                        "a Sentinel URL names the master: redis+sentinel://host:port/NAME".into(),
                    ));
                }
                let sentinels = h
                    .hosts
                    .iter()
                    .map(|host| info(&format!("{plain}://{host}/{}", fragment(h.tail))))
                    .collect::<RedisResult<Vec<_>>>()?;
                let master = info(&format!(
                    "{plain}://{}{}/{db}{}",
                    h.userinfo, h.hosts[0], h.tail
                ))?;
                // The TLS settings are checked now, not at the first connect.
                client(master.clone(), certificates)?;
                Ok(Target::Sentinel(Sentinel {
                    sentinels: Mutex::new(sentinels),
                    service: service.to_string(),
                    master,
                    certificates: certificates.cloned(),
                }))
            }
            "cluster" => {
                let h = hosts(url)?;
                if !h.path.is_empty() && h.path != "0" {
                    return Err(invalid(
                        "a Redis Cluster has database 0 only: redis+cluster://host:port".into(),
                    ));
                }
                let nodes = h
                    .hosts
                    .iter()
                    .map(|host| info(&format!("{plain}://{}{host}/{}", h.userinfo, h.tail)))
                    .collect::<RedisResult<Vec<_>>>()?;
                // No retries: see cluster.rs (a check is sent once).
                let mut builder = redis::cluster::ClusterClientBuilder::new(nodes)
                    .retries(0)
                    .min_retry_wait(0)
                    .max_retry_wait(0);
                if let Some(pem) = certificates {
                    builder = builder.certs(redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(pem.0.clone()),
                    });
                }
                Ok(Target::Cluster(builder.build()?))
            }
            _ => Ok(Target::Single(client(info(url)?, certificates)?)),
        }
    }

    /// Whether a `READONLY` answer means the connection is stale: with
    /// Sentinel, its master was demoted.
    pub(crate) fn follows_master(&self) -> bool {
        matches!(self, Target::Sentinel(_))
    }

    /// A connection to the one server or the master, within `timeout`.
    /// (A Cluster has no one server: see [`Target::cluster`].)
    pub(crate) fn connect(&self, timeout: Duration) -> RedisResult<redis::Connection> {
        match self {
            Target::Single(client) => client.get_connection_with_timeout(timeout),
            Target::Sentinel(s) => s.connect(Instant::now() + timeout),
            Target::Cluster(_) => Err((
                redis::ErrorKind::InvalidClientConfig,
                "a Redis Cluster is reached through its cluster connection",
            )
                .into()),
        }
    }

    /// A connection to the cluster whose every step (connecting to a
    /// node, a request) gives up after `timeout`; nothing is retried.
    pub(crate) fn cluster(
        client: &redis::cluster::ClusterClient,
        timeout: Duration,
    ) -> RedisResult<redis::cluster::ClusterConnection> {
        let config = redis::cluster::ClusterConfig::new()
            .set_connection_timeout(timeout)
            .set_response_timeout(timeout);
        let con = client.get_connection_with_config(config)?;
        con.set_read_timeout(Some(timeout))?;
        con.set_write_timeout(Some(timeout))?;
        Ok(con)
    }

    /// A connection for operators' calls and sweeps, whose reads and
    /// writes give up after `timeout`.
    pub(crate) fn connect_any(
        &self,
        timeout: Duration,
    ) -> RedisResult<Box<dyn ConnectionLike + Send>> {
        if let Target::Cluster(client) = self {
            return Ok(Box::new(Target::cluster(client, timeout)?));
        }
        let con = self.connect(timeout)?;
        con.set_read_timeout(Some(timeout))?;
        con.set_write_timeout(Some(timeout))?;
        Ok(Box::new(con))
    }
}

/// What is left until `deadline`, or a timeout error.
fn left(deadline: Instant) -> RedisResult<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into());
    }
    Ok(left)
}

impl Sentinel {
    /// Asks the sentinels, in turn, where the master is, and connects to it
    /// if it says it is one, all before `deadline`. Each sentinel gets an
    /// equal share of what is left, so one that does not answer (a host
    /// that is down drops the connect) cannot use up the time of the
    /// others; the first that answers moves to the front of the list and
    /// one that failed to the back.
    fn connect(&self, deadline: Instant) -> RedisResult<redis::Connection> {
        let sentinels = self.sentinels.lock().clone();
        let mut last_error = None;
        for (i, sentinel) in sentinels.iter().enumerate() {
            let share = left(deadline)? / u32::try_from(sentinels.len() - i).unwrap_or(u32::MAX);
            match self.ask(sentinel, Instant::now() + share) {
                Ok(address) => {
                    self.reorder(sentinel, true);
                    return self.master(address, deadline);
                }
                Err(e) => {
                    self.reorder(sentinel, false);
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| {
            (
                redis::ErrorKind::InvalidClientConfig,
                "no sentinel configured",
            )
                .into()
        }))
    }

    /// Moves a sentinel to the front (it answered) or the back.
    fn reorder(&self, sentinel: &ConnectionInfo, answered: bool) {
        let mut list = self.sentinels.lock();
        if let Some(at) = list.iter().position(|s| s.addr() == sentinel.addr()) {
            let moved = list.remove(at);
            if answered {
                list.insert(0, moved);
            } else {
                list.push(moved);
            }
        }
    }

    /// One sentinel's answer: the master's host and port.
    fn ask(&self, sentinel: &ConnectionInfo, deadline: Instant) -> RedisResult<(String, u16)> {
        let mut con = client(sentinel.clone(), self.certificates.as_ref())?
            .get_connection_with_timeout(left(deadline)?)?;
        con.set_read_timeout(Some(left(deadline)?))?;
        con.set_write_timeout(Some(left(deadline)?))?;
        let address: Option<(String, u16)> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(&self.service)
            .query(&mut con)?;
        address.ok_or_else(|| {
            (
                redis::ErrorKind::InvalidClientConfig,
                "sentinel does not know the master",
                self.service.clone(),
            )
                .into()
        })
    }

    /// Connects to the server Sentinel named, if it is a master.
    fn master(
        &self,
        (host, port): (String, u16),
        deadline: Instant,
    ) -> RedisResult<redis::Connection> {
        let addr = match self.master.addr() {
            ConnectionAddr::TcpTls {
                insecure,
                tls_params,
                ..
            } => ConnectionAddr::TcpTls {
                host,
                port,
                insecure: *insecure,
                tls_params: tls_params.clone(),
            },
            _ => ConnectionAddr::Tcp(host, port),
        };
        let info = self.master.clone().set_addr(addr);
        let mut con = client(info, self.certificates.as_ref())?
            .get_connection_with_timeout(left(deadline)?)?;
        con.set_read_timeout(Some(left(deadline)?))?;
        con.set_write_timeout(Some(left(deadline)?))?;
        let role: Vec<redis::Value> = redis::cmd("ROLE").query(&mut con)?;
        let is_master = matches!(role.first(), Some(redis::Value::BulkString(r)) if r == b"master");
        if !is_master {
            return Err((
                redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly),
                "the server Sentinel named is not a master (yet)",
            )
                .into());
        }
        Ok(con)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str) -> RedisResult<Target> {
        Target::new(&RedisUrl(url.to_string()), None)
    }

    #[test]
    fn urls_name_one_server_a_sentinel_master_or_a_cluster() {
        assert!(matches!(
            target("redis://127.0.0.1:6379/0"),
            Ok(Target::Single(_))
        ));
        let Ok(Target::Sentinel(s)) =
            target("redis+sentinel://:pw@127.0.0.1:26379,[::1]:26380/mymaster/3")
        else {
            panic!("a sentinel URL");
        };
        assert_eq!(s.service, "mymaster");
        assert_eq!(s.sentinels.lock().len(), 2);
        assert_eq!(s.master.redis_settings().db(), 3);
        assert_eq!(s.master.redis_settings().password(), Some("pw"));
        assert!(
            s.sentinels.lock()[0].redis_settings().password().is_none(),
            "sentinels are asked without the master's password"
        );
        assert!(matches!(
            target("redis+cluster://127.0.0.1:7000,127.0.0.1:7001"),
            Ok(Target::Cluster(_))
        ));
    }

    /// Review of issue 18: a query was read as part of the master's name
    /// (or of a cluster host), and a raw `/` in a password as a host.
    #[test]
    fn queries_fragments_and_odd_passwords_stay_where_they_belong() {
        let Ok(Target::Sentinel(s)) =
            target("redis+sentinel://127.0.0.1:26379/mymaster?protocol=resp3")
        else {
            panic!("a sentinel URL with a query");
        };
        assert_eq!(s.service, "mymaster");
        assert!(matches!(
            target("redis+cluster://127.0.0.1:7000,127.0.0.1:7001?protocol=resp3"),
            Ok(Target::Cluster(_))
        ));
        // A `/` in a password is written %2F; a raw one is refused, never
        // read as the end of the hosts.
        let Ok(Target::Sentinel(s)) = target("redis+sentinel://:pa%2Fss@127.0.0.1:26379/m/2")
        else {
            panic!("a password with a slash");
        };
        assert_eq!(s.master.redis_settings().password(), Some("pa/ss"));
        assert_eq!(s.master.redis_settings().db(), 2);
        let e = target("redis+sentinel://:pa/ss@127.0.0.1:26379/m/2")
            .err()
            .unwrap();
        assert!(!e.to_string().contains("pa/ss"), "{e}");
        let Ok(Target::Sentinel(s)) = target("rediss+sentinel://127.0.0.1:26379/m#insecure") else {
            panic!("a TLS sentinel URL");
        };
        for info in s.sentinels.lock().iter().chain([&s.master]) {
            assert!(
                matches!(info.addr(), ConnectionAddr::TcpTls { insecure: true, .. }),
                "{:?}",
                info.addr()
            );
        }
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        for (url, says) in [
            ("redis+sentinel://127.0.0.1:26379", "names the master"),
            ("redis+sentinel://127.0.0.1:26379,/m", "empty host"),
            ("redis+cluster://127.0.0.1:7000/2", "database 0"),
        ] {
            let e = target(url).err().expect(url).to_string();
            assert!(e.contains(says), "{url}: {e}");
        }
        assert!(target("redis+sentinel://127.0.0.1:notaport/m").is_err());
    }
}
