//! Checks on a Redis Cluster: each on a cluster connection of its own,
//! taken from a small pool, sent to the primary that holds the network's
//! hash slot.
//!
//! A check is sent once and never again: the cluster client is built
//! without retries (its own would sleep a second and more after
//! `CLUSTERDOWN`, and send a script again after a read timed out, which
//! would run it twice: a new triplet counted as an early retry). A
//! redirection (`MOVED` after a fail-over or resharding, `ASK` during a
//! slot's migration) is followed once, here, and a connection that was
//! sent `MOVED` is closed, so the next one learns the new slot map. A node
//! without the script (`NOSCRIPT`: restarted, or new) is sent it, then the
//! call once more.
//!
//! A cluster connection cannot pipeline calls to different nodes, so calls
//! are not pipelined across checking threads as on one server; each
//! thread's check is one round trip to one node, and idle connections are
//! kept for the next checks. Making a connection (at the first check, and
//! whenever more threads check at once than are idle) reads the cluster's
//! slot map from a node, within the timeout for each step. The fleet's
//! suspects index has a slot of its own, so it is updated by a second call
//! after a check that made a suspect (the check itself stays one atomic
//! script on one node).

use parking_lot::Mutex;
use redis::cluster::{ClusterClient, ClusterConnection};
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{ErrorKind, RedisError, RedisResult, Value};

use super::pipeline::{Failure, Link};
use super::target::Target;

/// Idle connections kept for the next checks (more are made while more
/// threads check at once, and closed when they are done).
const IDLE: usize = 32;

/// The pool of cluster connections.
#[derive(Default)]
pub(crate) struct ClusterCalls {
    idle: Mutex<Vec<ClusterConnection>>,
}

/// Whether an error leaves the connection usable (an error answer) or not
/// (the network, a timeout, a slot map found stale).
fn broken(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_unrecoverable_error()
        || e.kind() == ErrorKind::Server(redis::ServerErrorKind::Moved)
}

impl ClusterCalls {
    /// Runs `f` on a pooled connection (a new one when none is idle,
    /// unless the cluster is known to be down). `f` sets its flag when the
    /// connection must not be used again (its slot map is stale). A
    /// connection that failed is closed; one that answered, even with an
    /// error, is kept.
    pub(crate) fn with<T>(
        &self,
        link: &Link,
        client: &ClusterClient,
        f: impl FnOnce(&mut ClusterConnection, &mut bool) -> RedisResult<T>,
    ) -> Result<T, Failure> {
        let pooled = self.idle.lock().pop();
        let mut con = match pooled {
            Some(con) => con,
            None if link.is_down() => return Err(Failure::Down),
            None => Target::cluster(client, link.timeout).map_err(|e| {
                link.down_for_a_while();
                link.failure(&e)
            })?,
        };
        let mut stale = false;
        let result = f(&mut con, &mut stale);
        let keep = match &result {
            Ok(_) => !stale,
            Err(e) => !stale && !broken(e),
        };
        if keep {
            let mut idle = self.idle.lock();
            if idle.len() < IDLE {
                idle.push(con);
            }
        }
        result.map_err(|e| link.failure(&e))
    }
}

/// CRC16/XMODEM, the checksum Redis Cluster hashes keys with.
fn crc16(bytes: &[u8]) -> u16 {
    bytes.iter().fold(0u16, |crc, &b| {
        (0..8).fold(crc ^ (u16::from(b) << 8), |c, _| {
            if c & 0x8000 != 0 {
                (c << 1) ^ 0x1021
            } else {
                c << 1
            }
        })
    })
}

/// The hash slot of a key, as Redis Cluster computes it: of what stands
/// between the first `{` and the next `}` when that is not empty (the
/// hash tag), else of the whole key.
pub(crate) fn slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16(tagged.unwrap_or(key)) & 0x3FFF
}

/// Runs a script call (`EVALSHA` of `script` on `key` and others in its
/// slot, in `cmd`) on the primary of `key`'s slot: once, following one
/// redirection, and loading the script there first if that node lacks it.
/// Sets `stale` when the cluster said the connection's slot map is out of
/// date.
pub(crate) fn eval(
    con: &mut ClusterConnection,
    key: &str,
    cmd: &redis::Cmd,
    script: &str,
    stale: &mut bool,
) -> RedisResult<Value> {
    let mut route =
        SingleNodeRoutingInfo::SpecificNode(Route::new(slot(key.as_bytes()), SlotAddr::Master));
    let (mut loaded, mut redirected) = (false, false);
    loop {
        let answer = con
            .route_command(cmd, RoutingInfo::SingleNode(route.clone()))
            .and_then(Value::extract_error);
        let e = match answer {
            Ok(value) => return Ok(value),
            Err(e) => e,
        };
        match e.kind() {
            ErrorKind::Server(redis::ServerErrorKind::NoScript) if !loaded => {
                loaded = true;
                let load = redis::cmd("SCRIPT").arg("LOAD").arg(script).to_owned();
                con.route_command(&load, RoutingInfo::SingleNode(route.clone()))
                    .and_then(Value::extract_error)?;
            }
            ErrorKind::Server(
                kind @ (redis::ServerErrorKind::Moved | redis::ServerErrorKind::Ask),
            ) if !redirected => {
                redirected = true;
                let asking = kind == redis::ServerErrorKind::Ask;
                *stale |= !asking;
                let Some((node, _slot)) = e.redirect_node() else {
                    return Err(e);
                };
                let Some((host, port)) = node.rsplit_once(':') else {
                    return Err(e);
                };
                let Ok(port) = port.parse() else {
                    return Err(e);
                };
                route = SingleNodeRoutingInfo::ByAddress {
                    host: host.trim_start_matches('[').trim_end_matches(']').into(),
                    port,
                };
                if asking {
                    con.route_command(
                        &redis::cmd("ASKING"),
                        RoutingInfo::SingleNode(route.clone()),
                    )
                    .and_then(Value::extract_error)?;
                }
            }
            _ => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_computed_as_redis_does() {
        // The reference values of the Redis Cluster specification, and of
        // CLUSTER KEYSLOT on a Redis 7 server.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
        assert_eq!(slot(b"foo{}{bar}"), slot(b"foo{}{bar}"));
        assert_ne!(
            slot(b"foo{}{bar}"),
            slot(b"bar"),
            "an empty tag hashes the whole key"
        );
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
        assert_eq!(slot(b"greylist:{00ff}:c"), slot(b"00ff"));
    }
}
