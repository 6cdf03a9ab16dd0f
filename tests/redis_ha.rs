//! Redis high availability against real servers the tests start on
//! 127.0.0.1: a master, its replica and a `redis-server --sentinel`
//! watching them (the master is killed while checks run: they fail over to
//! the promoted replica), and a three-master Redis Cluster made with
//! `redis-cli --cluster create` (every operation of two MX hosts, with
//! networks spread over the three nodes). Without redis-server the tests
//! say why they skipped, except under CI=true, where they fail.

#![cfg(feature = "redis")]

#[path = "support/fleet.rs"]
mod fleet;
#[path = "support/redis.rs"]
mod redis_server;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleet::T0;
use greylist::{Config, Engine, Reason, Secret};
use redis_server::{wait_until, Cluster, RedisServer};

fn engine(url: &str, prefix: &str) -> Engine {
    engine_timed(url, prefix, Duration::from_millis(500))
}

fn engine_timed(url: &str, prefix: &str, timeout: Duration) -> Engine {
    Engine::new(
        Config::builder()
            .redis(url)
            .redis_prefix(prefix)
            .shared_secret(Secret::from_bytes(*b"shared-by-mx-1-2"))
            .redis_timeout(timeout)
            .redis_retry_interval(Duration::from_millis(100))
            .pass_cache_entries(0)
            .shards(4)
            .build()
            .unwrap(),
    )
}

/// A master with one replica and a sentinel watching the master.
fn sentinel_setup(name: &str) -> Option<(RedisServer, RedisServer, RedisServer)> {
    let master = RedisServer::start(&format!("{name}-master"))?;
    let port = master.port.to_string();
    let replica = RedisServer::start_with(
        &format!("{name}-replica"),
        &["--replicaof", "127.0.0.1", &port],
    )?;
    let sentinel = RedisServer::sentinel(&format!("{name}-sentinel"), &master)?;
    // The replica must be in sync before the master can be lost.
    let deadline = Instant::now() + Duration::from_secs(20);
    wait_until("the replica in sync", deadline, || {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query(&mut replica.connection())
            .unwrap();
        info.contains("master_link_status:up")
    });
    Some((master, replica, sentinel))
}

/// An engine on the master `sentinel` names.
fn on_sentinel(sentinel: &RedisServer) -> Engine {
    let url = format!("redis+sentinel://127.0.0.1:{}/mymaster", sentinel.port);
    engine(&url, "greylist:")
}

/// The reason for the `i`-th new triplet of one network.
fn new_triplet(mx: &Engine, i: u32) -> Reason {
    let rcpt = format!("user{i}@example.net");
    mx.check("192.0.2.1", "a@x.example", &rcpt, T0)
        .unwrap()
        .reason
}

/// Checks new triplets until one is answered by Redis (not locally).
fn until_answered_by_redis(mx: &Engine, deadline: Instant) {
    let mut i = 1_000;
    wait_until("a check answered by Redis", deadline, || {
        i += 1;
        new_triplet(mx, i) == Reason::New
    });
}

/// Whether the server says it is a replica.
fn is_replica(server: &RedisServer) -> bool {
    let role: Vec<redis::Value> = redis::cmd("ROLE").query(&mut server.connection()).unwrap();
    role[0] == redis::Value::BulkString(b"slave".to_vec())
}

#[test]
fn sentinel_checks_fail_over_when_the_master_is_killed() {
    let Some((mut master, replica, sentinel)) = sentinel_setup("sentinel-failover") else {
        return;
    };
    let mx = Arc::new(on_sentinel(&sentinel));
    // Before the fail-over: deferred by the master, and replicated.
    let v = mx
        .check("192.0.2.1", "alice@example.org", "bob@example.net", T0)
        .unwrap();
    assert_eq!(v.reason, Reason::New, "{:?}", mx.stats());
    let acked: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(5000)
        .query(&mut master.connection())
        .unwrap();
    assert_eq!(acked, 1, "the replica has the triplet");

    // Checks run on another thread while the master is killed.
    let stop = Arc::new(AtomicBool::new(false));
    let reasons = Arc::new(Mutex::new(Vec::new()));
    let checker = {
        let (mx, stop, reasons) = (mx.clone(), stop.clone(), reasons.clone());
        std::thread::spawn(move || {
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let rcpt = format!("user{i}@example.net");
                let v = mx.check("198.51.100.1", "a@x.example", &rcpt, T0).unwrap();
                reasons.lock().unwrap().push(v.reason);
                i += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    master.kill();
    let deadline = Instant::now() + Duration::from_secs(60);
    wait_until("the replica promoted", deadline, || {
        sentinel.master_port() == Some(replica.port)
    });
    // Checks reach the new master (asked of the sentinel) by themselves.
    let mut answered_after = 0;
    while answered_after < 5 {
        assert!(
            Instant::now() < deadline,
            "checks never reached the new master"
        );
        std::thread::sleep(Duration::from_millis(50));
        let r = reasons.lock().unwrap();
        answered_after = r.iter().rev().take_while(|r| **r == Reason::New).count();
    }
    stop.store(true, Ordering::Relaxed);
    checker.join().unwrap();
    let r = reasons.lock().unwrap();
    assert_eq!(r[0], Reason::New, "{r:?}");
    assert!(
        r.iter()
            .all(|r| matches!(r, Reason::New | Reason::StoreUnavailable)),
        "{r:?}"
    );

    // The new master has what the old one decided: the retry passes, and
    // an operator's release works there.
    let v = mx
        .check(
            "192.0.2.1",
            "alice@example.org",
            "bob@example.net",
            T0 + 300,
        )
        .unwrap();
    assert_eq!(v.reason, Reason::Retried, "{:?}", mx.stats());
    mx.release(
        "192.0.2.1",
        "carol@example.org",
        "bob@example.net",
        T0 + 301,
    )
    .unwrap();
    let state = mx
        .triplet_state("192.0.2.1", "carol@example.org", "bob@example.net")
        .unwrap()
        .unwrap();
    assert!(state.passed);
    let keys: u64 = redis::cmd("DBSIZE")
        .query(&mut replica.connection())
        .unwrap();
    assert!(keys > 0, "the records live on the promoted replica");
}

#[test]
fn sentinel_a_master_demoted_under_an_open_connection_is_left() {
    // SENTINEL FAILOVER demotes the master without killing it: the
    // connection to it must be given up for the master the sentinel
    // names next.
    let Some((master, replica, sentinel)) = sentinel_setup("sentinel-demoted") else {
        return;
    };
    let mx = on_sentinel(&sentinel);
    assert_eq!(new_triplet(&mx, 0), Reason::New);
    let _: () = redis::cmd("SENTINEL")
        .arg("FAILOVER")
        .arg("mymaster")
        .query(&mut sentinel.connection())
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    wait_until("the fail-over", deadline, || {
        sentinel.master_port() == Some(replica.port)
    });
    wait_until("the old master demoted", deadline, || is_replica(&master));
    let keys = || -> u64 {
        redis::cmd("DBSIZE")
            .query(&mut replica.connection())
            .unwrap()
    };
    let before = keys();
    until_answered_by_redis(&mx, deadline);
    assert!(keys() > before, "the check was written to the new master");
}

#[test]
fn sentinel_a_readonly_answer_sends_the_check_back_to_the_sentinel() {
    // A switch by hand (no client killed, as a sentinel's own fail-over
    // does): the open connection to the old master gets READONLY answers
    // for as long as it stays open, so it must be dropped and the sentinel
    // asked again.
    let Some((master, replica, sentinel)) = sentinel_setup("sentinel-readonly") else {
        return;
    };
    let mx = on_sentinel(&sentinel);
    let check = |i: u32| new_triplet(&mx, i);
    assert_eq!(check(0), Reason::New);
    let mut s = sentinel.connection();
    let _: () = redis::cmd("SENTINEL")
        .arg("REMOVE")
        .arg("mymaster")
        .query(&mut s)
        .unwrap();
    let _: () = redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query(&mut replica.connection())
        .unwrap();
    let _: () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(replica.port)
        .query(&mut master.connection())
        .unwrap();
    let _: () = redis::cmd("SENTINEL")
        .arg("MONITOR")
        .arg("mymaster")
        .arg("127.0.0.1")
        .arg(replica.port)
        .arg(1)
        .query(&mut s)
        .unwrap();
    assert_eq!(sentinel.master_port(), Some(replica.port));
    let reasons: Vec<Reason> = (1..=3).map(check).collect();
    assert_eq!(
        reasons,
        [Reason::StoreUnavailable, Reason::New, Reason::New],
        "{:?}",
        mx.store_error()
    );
}

/// Review of issue 18: every sentinel shared one deadline, so a first
/// sentinel that never answers (its host down, or hung) used up each check's
/// whole time and the others were never asked.
#[test]
fn sentinel_a_hung_sentinel_does_not_keep_the_others_from_answering() {
    let Some((master, _replica, good)) = sentinel_setup("sentinel-hung") else {
        return;
    };
    let Some(hung) = RedisServer::sentinel("sentinel-hung-first", &master) else {
        return;
    };
    hung.pause(true);
    let url = format!(
        "redis+sentinel://127.0.0.1:{},127.0.0.1:{}/mymaster",
        hung.port, good.port
    );
    let mx = engine(&url, "greylist:");
    // The hung one gets half the time, the good one the rest: answered.
    assert_eq!(new_triplet(&mx, 0), Reason::New, "{:?}", mx.store_error());
    // After a failure the connection is made anew: the hung sentinel has
    // gone to the back of the list and is not asked first again.
    let _: () = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .query(&mut master.connection())
        .unwrap();
    let reasons: Vec<Reason> = (1..=3).map(|i| new_triplet(&mx, i)).collect();
    assert!(
        reasons[1..].iter().all(|r| *r == Reason::New),
        "{reasons:?} {:?}",
        mx.store_error()
    );
    hung.pause(false);
}

#[test]
fn sentinel_never_writes_to_a_replica_it_names() {
    // A sentinel that names a server which is a replica (as in the moment
    // of a fail-over): the check is answered locally, never sent to a
    // server that is not the master.
    let Some(master) = RedisServer::start("sentinel-replica-master") else {
        return;
    };
    let port = master.port.to_string();
    let Some(replica) =
        RedisServer::start_with("sentinel-replica", &["--replicaof", "127.0.0.1", &port])
    else {
        return;
    };
    let Some(sentinel) = RedisServer::sentinel("sentinel-replica-sentinel", &replica) else {
        return;
    };
    assert_eq!(sentinel.master_port(), Some(replica.port));
    let url = format!("redis+sentinel://127.0.0.1:{}/mymaster", sentinel.port);
    let mx = engine(&url, "greylist:");
    let v = mx
        .check("192.0.2.1", "alice@example.org", "bob@example.net", T0)
        .unwrap();
    assert_eq!(v.reason, Reason::StoreUnavailable, "{:?}", mx.stats());
    let error = mx.store_error().unwrap_or_default();
    assert!(error.contains("not a master"), "{error}");
    let keys: u64 = redis::cmd("DBSIZE")
        .query(&mut master.connection())
        .unwrap();
    assert_eq!(keys, 0, "nothing was written anywhere");
}

#[test]
fn sentinel_urls_name_unknown_masters_clearly() {
    let Some((_master, _replica, sentinel)) = sentinel_setup("sentinel-unknown") else {
        return;
    };
    let url = format!("redis+sentinel://127.0.0.1:{}/nosuchmaster", sentinel.port);
    let mx = engine(&url, "greylist:");
    let v = mx
        .check("192.0.2.1", "alice@example.org", "bob@example.net", T0)
        .unwrap();
    assert_eq!(v.reason, Reason::StoreUnavailable);
    let probe = mx.probe_store(Duration::from_secs(2)).unwrap();
    let error = probe.unwrap_err();
    assert!(error.contains("nosuchmaster"), "{error}");
}

#[test]
fn cluster_runs_every_operation_of_two_mx_hosts() {
    let Some(cluster) = Cluster::start("cluster-ops") else {
        return;
    };
    let url = cluster.url();
    fleet::all(|scenario| {
        let prefix = format!("{scenario}:");
        (engine(&url, &prefix), engine(&url, &prefix))
    });
}

#[test]
fn cluster_spreads_networks_over_its_nodes_and_checks_stay_atomic() {
    let Some(cluster) = Cluster::start("cluster-spread") else {
        return;
    };
    let (mx1, mx2) = (
        engine(&cluster.url(), "greylist:"),
        engine(&cluster.url(), "greylist:"),
    );
    for net in 0..60 {
        let ip = format!("10.0.{net}.1");
        let v = mx1.check(&ip, "a@x.example", "u@example.net", T0).unwrap();
        assert_eq!(v.reason, Reason::New, "{ip}: {:?}", mx1.stats());
        let v = mx1
            .check(&ip, "a@x.example", "u@example.net", T0 + 5)
            .unwrap();
        assert_eq!(v.reason, Reason::EarlyRetry, "{ip}");
        let v = mx2
            .check(&ip, "a@x.example", "u@example.net", T0 + 300)
            .unwrap();
        assert_eq!(v.reason, Reason::Retried, "{ip}: {:?}", mx2.stats());
    }
    // Every node holds some networks, and no call was refused (CROSSSLOT)
    // or answered locally.
    let keys = cluster.keys_per_node();
    assert!(keys.iter().all(|&k| k > 0), "{keys:?}");
    for mx in [&mx1, &mx2] {
        let s = mx.stats();
        assert_eq!(
            (s.store_errors, s.store_timeouts, s.store_unavailable),
            (0, 0, 0),
            "{s:?} {:?}",
            mx.store_error()
        );
    }
    // Lost mail of networks on every node, settled by the other MX.
    for net in 100..130 {
        let ip = format!("10.0.{net}.1");
        for dt in [0, 4, 9] {
            mx1.check(&ip, "a@corp.example", "u@example.net", T0 + dt)
                .unwrap();
        }
    }
    mx2.sweep(T0 + 300 + 3600);
    let report = mx1.lost_mail_report(100).unwrap();
    assert_eq!(report.len(), 30, "{report:?}");
    assert!(report.iter().all(|r| r.count == 1));
    assert_eq!(mx1.stats().store_errors, 0, "{:?}", mx1.store_error());
}

/// Review of issue 18: the cluster client kept the redis crate's retries,
/// so a check whose node stalled past the timeout was sent again and again
/// (up to 17 times, each one run by the node when it woke: a new triplet
/// counted as many early retries, enough to block its network), and slept
/// a second and more between tries after CLUSTERDOWN.
#[test]
fn cluster_a_check_is_sent_once_even_when_its_node_stalls() {
    let Some(cluster) = Cluster::start("cluster-stall") else {
        return;
    };
    let mx = engine_timed(&cluster.url(), "greylist:", Duration::from_millis(100));
    let (ip, sender, rcpt) = ("192.0.2.1", "a@x.example", "u@example.net");
    let key_of = |ip: &str| {
        format!(
            "greylist:{{{:032x}}}:t:{:032x}",
            mx.network_key(ip).unwrap(),
            mx.triplet_key(ip, sender, rcpt).unwrap()
        )
    };
    let key = key_of(ip);
    let node = cluster.node_for(&key);
    // A check of another network on the same node first, so the pooled
    // connection is connected to it.
    let warm = (0..255)
        .map(|n| format!("10.0.{n}.1"))
        .find(|other| cluster.node_for(&key_of(other)).port == node.port)
        .unwrap();
    assert_eq!(
        mx.check(&warm, sender, rcpt, T0).unwrap().reason,
        Reason::New
    );
    node.pause(true);
    let v = mx.check(ip, sender, rcpt, T0).unwrap();
    assert_eq!(v.reason, Reason::StoreUnavailable);
    node.pause(false);
    // The node runs what it was sent while it stalled: the check, once.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut con = node.connection();
    wait_until("the stalled check to run", deadline, || {
        let record: Option<String> = redis::cmd("GET").arg(&key).query(&mut con).unwrap();
        record.is_some()
    });
    std::thread::sleep(Duration::from_millis(500));
    let record: Option<String> = redis::cmd("GET").arg(&key).query(&mut con).unwrap();
    assert_eq!(record.as_deref(), Some(format!("{T0} {T0} 0 0").as_str()));
    // The next check is answered by the cluster: an early retry, the first.
    let v = mx.check(ip, sender, rcpt, T0 + 10).unwrap();
    assert_eq!(v.reason, Reason::EarlyRetry, "{:?}", mx.store_error());
}

#[test]
fn cluster_urls_are_checked_when_the_configuration_is_built() {
    for url in [
        "redis+cluster://127.0.0.1:7000/3",
        "redis+cluster://127.0.0.1:7000,,127.0.0.1:7001",
        "redis+sentinel://127.0.0.1:26379",
    ] {
        let e = Config::builder()
            .redis(url)
            .shared_secret(Secret::from_bytes([7; 16]))
            .build()
            .unwrap_err();
        assert_eq!(e.setting(), "redis", "{url}: {e}");
    }
}
