//! # greylist
//!
//! An embeddable email greylisting engine. A receiving mail server asks it
//! about each (client IP, envelope sender, recipient) triplet; an unknown
//! triplet is answered with a temporary failure, and a real mail server's
//! retry after the delay passes.
//!
//! ```
//! use greylist::{Action, Config, Engine, Reason};
//!
//! let engine = Engine::new(Config::default());
//! let t0 = 1_700_000_000; // Unix seconds; use greylist::unix_now() in production
//!
//! let v = engine.check("192.0.2.1", "alice@example.org", "bob@example.net", t0)?;
//! assert_eq!((v.action, v.reason, v.retry_after), (Action::Defer, Reason::New, 300));
//! assert_eq!(
//!     engine.reply(&v).as_deref(),
//!     Some("450 4.2.0 Greylisted, please try again in 300 seconds")
//! );
//!
//! // A retry from another host of the same /24, after the delay, passes.
//! let v = engine.check("192.0.2.7", "alice@example.org", "bob@example.net", t0 + 300)?;
//! assert_eq!((v.action, v.reason), (Action::Pass, Reason::Retried));
//! # Ok::<(), greylist::InputError>(())
//! ```
//!
//! ## The key
//! A triplet is keyed by its client network (IPv4 /24, IPv6 /64 by
//! default), its normalised sender (lower-cased; BATV and SRS unwrapped;
//! `+extension` removed; digit runs of the local part replaced by `#`, so
//! VERP bounces of one list are one sender) and its normalised recipient
//! (lower-cased, `+extension` removed). The table stores a keyed 128-bit
//! SipHash of those parts under a random secret, never an address.
//!
//! ## The decision
//! 1. A blocked client network gets [`Action::Block`]; an auto-whitelisted
//!    one passes.
//! 2. An unknown triplet is deferred for the delay ([`Reason::New`]).
//! 3. A retry inside the delay is deferred again, without resetting the
//!    timer ([`Reason::EarlyRetry`]); `retry_after` says how long is left.
//! 4. A retry after the delay and within the retry window passes
//!    ([`Reason::Retried`]) and the triplet is passed from then on
//!    ([`Reason::Passed`]), each use refreshing its lifetime.
//! 5. A pending triplet not retried within the window starts over.
//!
//! A pass counts towards its network's auto-whitelist only when the
//! network's last counted pass is an hour old or more
//! ([`rules::AWL_COUNT_INTERVAL`], postgrey's rule): one message to many
//! recipients is one pass.
//!
//! A network is blocked for `block_time` when one triplet gets more than
//! `blast_copies` early retries within its delay (copies of one message
//! blasted at once), or when its early retries fall in more than
//! `blast_threshold` distinct seconds (*rounds*) within one delay period.
//! A pending triplet with early retries (at most `blast_copies`), from a
//! network never blocked, and no attempt for `lost_after` after its delay
//! is lost mail ([`Engine::lost_mail_report`]). A clock that goes backwards never panics and never passes
//! a triplet early. The rules are pure functions in [`rules`].
//!
//! ## Defaults
//!
//! | setting | default | source |
//! | --- | --- | --- |
//! | delay | 300 s | postgrey, rspamd, sqlgrey |
//! | retry window | 2 days | postgrey |
//! | passed-triplet lifetime, refreshed on use | 35 days | postgrey, OpenBSD spamd (36 d) |
//! | auto-whitelist after N passes (one counted an hour at most) | 5 | postgrey |
//! | auto-whitelist lifetime, refreshed on use | 35 days | postgrey |
//! | client network | IPv4 /24, IPv6 /64 | postgrey (`--ipv4cidr`), common practice |
//! | blast copies, blast threshold, block time | 5 early retries, 20 rounds, 1 hour | this project (Exchange 2000/2003 retry 3 times at once) |
//! | lost after | 1 hour after the delay | this project (queueing MTAs retry within it) |
//! | max entries | 4 million | this project |
//! | reply | `450 4.2.0` | postgrey (Exchange mishandled 4.7.1, KB 950757) |
//!
//! ## Several MX hosts
//! With the cargo feature `redis` (on by default) and
//! [`ConfigBuilder::redis`] plus a shared secret
//! ([`ConfigBuilder::shared_secret_file`]), triplets live in Redis, shared
//! by every MX host with the same URL, prefix and secret: one Lua script
//! call per check (see [`store`]), the same rules as in memory; release,
//! forget, the client report and the lost-mail report act on Redis too.
//! The URL names one server, the master Redis Sentinel names
//! (`redis+sentinel://`), or a Redis Cluster (`redis+cluster://`). When
//! Redis does not answer within `redis_timeout` (50 ms), the local table
//! decides with [`Reason::StoreUnavailable`]; [`FailMode`] says whether a
//! defer then becomes a pass (the default) or stays.
//!
//! ## Layout
//!
//! ```text
//! greylist-policyd (src/bin: cli,       the C ABI (ffi): include/greylist.h,
//!   log, server, report, watch)         bindings/ (C++, Python, .NET)
//!            \     start-up: Maintenance::open      /
//!             Engine (engine.rs): the front; key, consult lists, count, emit
//!               |          |                 |
//!   keys (key.rs,     lists (lists.rs,    dyn Store (store): MemoryStore, or
//!   normalize.rs)     admin.rs)           Redis (one server, Sentinel, Cluster)
//!                                         behind its local fallback
//!                                            |
//!                                  the rules (rules.rs), pure functions
//! ```
//!
//! Snapshots (`snapshot.rs`, `maintenance.rs`) save and restore the
//! in-memory store, and [`Maintenance::open`] is how a host starts (the
//! daemon and the C ABI alike); stats and events (`stats.rs`, `events.rs`)
//! are shared by the front and the stores.
//!
//! ## Threads
//! [`Engine`] is `Send + Sync`; share it with an `Arc`. A check locks one
//! shard of the client-network table and one of the triplet table, never
//! both at once, and never while calling out.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod admin;
mod config;
mod engine;
mod events;
mod files;
mod hostname;
mod key;
mod lists;
mod maintenance;
mod normalize;
pub mod policy;
pub mod rules;
pub mod snapshot;
mod stats;
pub mod store;
mod table;

pub use admin::ClientReport;
pub use config::{Config, ConfigBuilder, ConfigError, FailMode, MAX_SHARDS};
pub use engine::{unix_now, Engine, Request};
pub use events::{CallbackError, Event, EventKind, EventSink};
pub use hostname::host_name_domain;
pub use key::{KeyKind, Secret};
pub use lists::{list_entries, read_list_file, ListError, ListKind};
pub use maintenance::{
    Clock, Maintenance, Opened, SaveEvent, SaveObserver, SnapshotOptions, Started,
};
pub use normalize::{
    normalize_recipient, normalize_sender, parse_ip, ClientNet, InputError, MAX_ADDRESS_LEN,
};
pub use rules::{Action, ClientState, Reason, TripletState, Verdict};
pub use snapshot::SnapshotError;
pub use stats::Stats;
pub use store::{LostMail, StoreError};
