//! What an operator does by hand: lists, a client's state, releasing and
//! forgetting triplets.

use std::path::Path;
use std::sync::Arc;

use crate::engine::{clamp_time, Engine};
use crate::key::{Keys, Request};
use crate::lists::{file_entries, read_file, ListError, ListKind};
use crate::normalize::{ClientNet, InputError};
use crate::store::StoreError;

/// What the engine knows of one client network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientReport {
    /// The client network the address belongs to.
    pub network: ClientNet,
    /// Its triplets waiting for a retry (not expired).
    pub pending: u64,
    /// Its passed triplets (not expired).
    pub passed: u64,
    /// Its triplets that passed so far (towards the auto-whitelist).
    pub passes: u32,
    /// On the static client whitelist (by address, or by the host name given).
    pub whitelisted: bool,
    /// Auto-whitelisted now.
    pub auto_whitelisted: bool,
    /// Blocked until this time (Unix seconds), if blocked now.
    pub blocked_until: Option<u32>,
    /// Its triplets that expired having seen only early retries.
    pub lost_mail: u64,
}

impl Engine {
    fn store_list<'a>(
        &self,
        kind: ListKind,
        entries: impl IntoIterator<Item = (usize, &'a str)> + Clone,
        replace: bool,
    ) -> Result<(), ListError> {
        // Copy on write; rcu retries only if another writer raced us.
        let mut error = None;
        self.lists.rcu(
            |current| match current.with(kind, entries.clone(), replace) {
                Ok(next) => Arc::new(next),
                Err(e) => {
                    error = Some(e);
                    Arc::clone(current)
                }
            },
        );
        error.map_or(Ok(()), Err)
    }

    /// Replaces one list with `entries`, atomically: checks running now see
    /// the old list or the new one. A bad entry (its 1-based index is the
    /// "line") refuses the whole call and keeps the old list.
    pub fn set_list(&self, kind: ListKind, entries: &[&str]) -> Result<(), ListError> {
        self.store_list(
            kind,
            entries.iter().enumerate().map(|(i, e)| (i + 1, *e)),
            true,
        )
    }

    /// Adds `entries` to one list, as [`Engine::set_list`] does.
    pub fn add_to_list(&self, kind: ListKind, entries: &[&str]) -> Result<(), ListError> {
        self.store_list(
            kind,
            entries.iter().enumerate().map(|(i, e)| (i + 1, *e)),
            false,
        )
    }

    /// Replaces one list with the entries of a file (one a line, `#`
    /// comments, blank lines allowed) and returns how many there were. A
    /// bad line refuses the whole file: `line 4: ...`; the old list stays.
    pub fn load_list(&self, kind: ListKind, path: impl AsRef<Path>) -> Result<usize, ListError> {
        let text = read_file(path.as_ref())?;
        self.store_list(kind, file_entries(&text), true)?;
        Ok(file_entries(&text).count())
    }

    /// Replaces one list with the entries of several files, all or nothing:
    /// a bad line anywhere keeps the old list, and the error names the file
    /// (`clients.txt: line 4: ...`).
    pub fn load_lists(
        &self,
        kind: ListKind,
        paths: &[impl AsRef<Path>],
    ) -> Result<usize, ListError> {
        self.load_lists_with(kind, paths, &[])
    }

    /// As [`load_lists`](Self::load_lists), with `extra` entries besides
    /// the files' (a host's run-time entries), in one replacement: a check
    /// never sees the list without them. A bad extra entry is named as
    /// `run-time entries: entry N: ...`.
    pub fn load_lists_with(
        &self,
        kind: ListKind,
        paths: &[impl AsRef<Path>],
        extra: &[&str],
    ) -> Result<usize, ListError> {
        Ok(self.load_files(kind, paths, extra, false)?.0)
    }

    /// As [`load_lists_with`](Self::load_lists_with), for postgrey's list
    /// files as they are: a line this engine cannot honour (a Perl-only
    /// regular expression, a typo) is left out instead of refusing the
    /// file, and returned, naming its file and line, for the host's log.
    /// A file that cannot be read is still an error, and so is a bad
    /// `extra` entry. How many entries were loaded, and the lines left out.
    pub fn load_lists_skipping(
        &self,
        kind: ListKind,
        paths: &[impl AsRef<Path>],
        extra: &[&str],
    ) -> Result<(usize, Vec<ListError>), ListError> {
        self.load_files(kind, paths, extra, true)
    }

    fn load_files(
        &self,
        kind: ListKind,
        paths: &[impl AsRef<Path>],
        extra: &[&str],
        skip: bool,
    ) -> Result<(usize, Vec<ListError>), ListError> {
        let in_file = |path: &Path, e: ListError| ListError::BadEntry {
            line: 0,
            reason: format!("{}: {e}", path.display()),
        };
        let mut texts = Vec::new();
        let mut skipped = Vec::new();
        // Per file, the lines left out.
        let mut bad: Vec<Vec<usize>> = Vec::new();
        for path in paths {
            let path = path.as_ref();
            let text = read_file(path).map_err(|e| in_file(path, e))?;
            // Each file alone first, so an error names it.
            let (_, errors) =
                crate::lists::Lists::default().with_skipping(kind, file_entries(&text), true, skip);
            if !skip {
                if let Some(e) = errors.into_iter().next() {
                    return Err(in_file(path, e));
                }
            } else {
                bad.push(
                    errors
                        .iter()
                        .filter_map(|e| match e {
                            ListError::BadEntry { line, .. } => Some(*line),
                            ListError::Io(_) => None,
                        })
                        .collect(),
                );
                skipped.extend(errors.into_iter().map(|e| in_file(path, e)));
            }
            texts.push(text);
        }
        let numbered = || extra.iter().enumerate().map(|(i, e)| (i + 1, *e));
        crate::lists::Lists::default()
            .with(kind, numbered(), true)
            .map_err(|e| ListError::BadEntry {
                line: 0,
                reason: format!("run-time entries: {e}"),
            })?;
        let good = |file: usize| {
            let bad = bad.get(file).cloned().unwrap_or_default();
            move |(line, _): &(usize, &str)| !bad.contains(line)
        };
        let all = texts
            .iter()
            .enumerate()
            .flat_map(|(i, t)| file_entries(t).filter(good(i)))
            .chain(numbered());
        let loaded = all.clone().count();
        self.store_list(kind, all, true)?;
        Ok((loaded, skipped))
    }

    /// What the engine knows of `client_ip`'s network at `now` (counting its
    /// triplets scans the whole table, one shard at a time, or in Redis the
    /// network's index: an operator's call, not one for every message).
    /// `client_name` is checked against host-name whitelist entries.
    pub fn client_report(
        &self,
        client_ip: &str,
        client_name: Option<&str>,
        now: i64,
    ) -> Result<ClientReport, StoreError> {
        let k = self.client_keys(client_ip, client_name)?;
        let now = clamp_time(now);
        let record = self.store().network(&k, now)?;
        let state = record.state.unwrap_or_default();
        Ok(ClientReport {
            whitelisted: k.whitelisted(),
            network: k.net,
            pending: record.pending,
            passed: record.passed,
            passes: state.passes,
            auto_whitelisted: state.is_auto_whitelisted(now, self.config()),
            blocked_until: state
                .blocks(now, self.config())
                .then_some(state.blocked_until),
            lost_mail: record.lost_mail,
        })
    }

    /// The keys of a client's network (the triplet part is a placeholder).
    pub(crate) fn client_keys(
        &self,
        client_ip: &str,
        client_name: Option<&str>,
    ) -> Result<Keys, InputError> {
        let req = Request::new(client_ip, "", "-");
        self.keys(&match client_name {
            Some(name) => req.client_name(name),
            None => req,
        })
    }

    /// Lets a triplet pass from now on, as if it had been retried after
    /// the delay (for mail an operator knows is wanted). With a shared
    /// store, at every MX at once.
    pub fn release(
        &self,
        client_ip: &str,
        sender: &(impl AsRef<[u8]> + ?Sized),
        recipient: &(impl AsRef<[u8]> + ?Sized),
        now: i64,
    ) -> Result<(), StoreError> {
        let k = self.keys(&Request::new(client_ip, sender, recipient))?;
        self.store().release(&k, clamp_time(now))
    }

    /// Releases a client network: lifts a block, and lets every triplet of
    /// it that is waiting for a retry pass from now on. Returns how many
    /// triplets were released. With a shared store, at every MX at once.
    pub fn release_client(&self, client_ip: &str, now: i64) -> Result<u64, StoreError> {
        let k = self.client_keys(client_ip, None)?;
        self.store().release_client(&k, clamp_time(now))
    }

    /// Forgets a triplet: its next attempt is new again. Returns whether it
    /// was known. With a shared store, at every MX at once.
    pub fn forget(
        &self,
        client_ip: &str,
        sender: &(impl AsRef<[u8]> + ?Sized),
        recipient: &(impl AsRef<[u8]> + ?Sized),
    ) -> Result<bool, StoreError> {
        let k = self.keys(&Request::new(client_ip, sender, recipient))?;
        self.store().forget(&k)
    }
}
