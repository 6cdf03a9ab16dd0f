//! What the engine tells the operator without being asked, from its
//! events (lost mail found, recovered; blocks starting and ending), and
//! when asked by SIGUSR1 (the status and the lost-mail report).

use std::sync::Arc;

use greylist::{Config, Engine, Event, EventKind, Reason};

use crate::log::{decision, log, utc};
use crate::recall::Recall;
use greylist::policy::address_field;

/// Most rows of the lost-mail report a SIGUSR1 writes to the log.
pub const REPORT_ROWS: usize = 100;

/// The event callback: one line per lost or recovered triplet and per
/// block start or end (decision lines: a flood of them is dropped and
/// counted, never queued without bound). A lost triplet's line names its
/// sender and recipient when this daemon deferred it (`recall`). Verdicts
/// are logged by the server; a pass after the delay only tells `recall`
/// that the triplet is not lost.
pub fn event_sink(config: &Config, recall: Arc<Recall>) -> greylist::EventSink {
    let (copies, block_time) = (config.blast_copies(), config.block_time());
    Box::new(move |e: &Event| {
        let client = &e.network;
        match e.kind {
            EventKind::Passed if e.reason == Reason::Retried => {
                if let Some(key) = e.triplet {
                    recall.passed(key);
                }
            }
            EventKind::LostMail => {
                let mut line = format!("action=lost-mail client={client}");
                let named = e
                    .triplet
                    .and_then(|k| recall.lost(k, &client.to_string(), e.at));
                if let Some(a) = named {
                    address_field(&mut line, "from", a.from.as_bytes());
                    address_field(&mut line, "to", a.to.as_bytes());
                }
                decision(format_args!(
                    "{line} early_retries={} last_seen={}",
                    e.count,
                    utc(e.at.into())
                ))
            }
            EventKind::Recovered => {
                if let Some(key) = e.triplet {
                    recall.recovered(key, &client.to_string());
                }
                decision(format_args!(
                    "action=recovered client={client} at={}",
                    utc(e.at.into())
                ))
            }
            EventKind::BlockStarted => {
                let why = match e.reason {
                    Reason::Trapped => "trap-recipient",
                    _ if copies > 0 && e.count > copies => "blast-copies",
                    _ => "blast-rounds",
                };
                decision(format_args!(
                    "action=block-start client={client} reason={why} early_retries={} until={}",
                    e.count,
                    utc(i64::from(e.at) + i64::from(block_time.max(1)))
                ))
            }
            EventKind::BlockEnded => decision(format_args!(
                "action=block-end client={client} ended={}",
                utc(e.at.into())
            )),
            _ => {}
        }
    })
}

/// SIGUSR1: the counters and the lost-mail report, worst first, in the log.
pub fn status(engine: &Engine) {
    let s = engine.stats();
    log(format_args!(
        "status: {} triplet entries, {} client records; {} checks: {} new, {} early retries, \
         {} retried, {} passed, {} whitelisted, {} auto-whitelisted, {} blocked, {} trapped, \
         {} answered locally while Redis was unavailable; lost mail {} ({} recovered); \
         {} expired, {} evicted",
        s.entries,
        s.clients,
        s.checks,
        s.new_triplets,
        s.early_retries,
        s.retried,
        s.passed,
        s.whitelisted,
        s.auto_whitelisted,
        s.blocked,
        s.trapped,
        s.store_unavailable,
        s.lost_mail,
        s.lost_recovered,
        s.expired,
        s.evicted
    ));
    let rows = match engine.lost_mail_report(REPORT_ROWS) {
        Ok(rows) => rows,
        Err(e) => {
            log(format_args!("lost-mail report: cannot be read: {e}"));
            return;
        }
    };
    if rows.is_empty() {
        log("lost-mail report: no network lost mail");
        return;
    }
    log(format_args!(
        "lost-mail report: {} networks, worst first (at most {REPORT_ROWS})",
        rows.len()
    ));
    for row in rows {
        log(format_args!(
            "lost-mail report: client={} lost={} last_seen={}",
            row.network,
            row.count,
            utc(row.last_seen.into())
        ));
    }
}
