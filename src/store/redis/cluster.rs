//! Checks on a Redis Cluster: each on a cluster connection of its own,
//! taken from a small pool, which routes the script call to the node that
//! holds the network's hash slot and follows a redirection once.
//!
//! A cluster connection cannot pipeline calls to different nodes, so calls
//! are not pipelined across checking threads as on one server; each
//! thread's check is one round trip to one node, and idle connections are
//! kept for the next checks. The fleet's suspects index has a slot of its
//! own, so it is updated by a second call after a check that made a
//! suspect (the check itself stays one atomic script on one node).

use parking_lot::Mutex;
use redis::cluster::{ClusterClient, ClusterConnection};
use redis::{ConnectionLike, RedisError, RedisResult, Value};

use super::pipeline::{Failure, Link};
use super::target::Target;
use super::{Answer, SCRIPT};

/// Idle connections kept for the next checks (more are made while more
/// threads check at once, and closed when they are done).
const IDLE: usize = 16;

/// The pool of cluster connections.
#[derive(Default)]
pub(crate) struct ClusterCalls {
    idle: Mutex<Vec<ClusterConnection>>,
}

/// Whether an error leaves the connection usable (an error answer) or not
/// (the network, a timeout).
fn broken(e: &RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_unrecoverable_error()
}

impl ClusterCalls {
    /// Runs `f` on a pooled connection (a new one when none is idle,
    /// unless the cluster is known to be down). A connection that failed
    /// is closed; one that answered, even with an error, is kept.
    pub(crate) fn with<T>(
        &self,
        link: &Link,
        client: &ClusterClient,
        f: impl FnOnce(&mut ClusterConnection) -> RedisResult<T>,
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
        match f(&mut con) {
            Ok(value) => {
                self.keep(con);
                Ok(value)
            }
            Err(e) => {
                if !broken(&e) {
                    self.keep(con);
                }
                Err(link.failure(&e))
            }
        }
    }

    fn keep(&self, con: ClusterConnection) {
        let mut idle = self.idle.lock();
        if idle.len() < IDLE {
            idle.push(con);
        }
    }
}

/// Sends a packed check script call, loading the script on every node
/// first if the node does not have it.
pub(crate) fn check(con: &mut ClusterConnection, command: &[u8]) -> RedisResult<Answer> {
    let answer = match con
        .req_packed_command(command)
        .and_then(Value::extract_error)
    {
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
            redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(SCRIPT)
                .query::<Value>(con)?;
            con.req_packed_command(command)
                .and_then(Value::extract_error)?
        }
        other => other?,
    };
    Ok(redis::from_redis_value(answer)?)
}
