//! The daemon's lists: the operator's list files, never written, plus
//! run-time whitelist entries added with `greylistctl whitelist add`, kept
//! in a file of the daemon's own beside the snapshot
//! (`<snapshot>.whitelist`, mode 0600, replaced atomically) so that they
//! survive a restart. Every (re)load applies a kind's files and run-time
//! entries in one replacement.

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use greylist::{Engine, ListKind};
use parking_lot::Mutex;
use serde::Serialize;

use crate::protocol::Whitelist;

/// Most run-time entries (each one a line of the file and an entry of
/// the engine's lists).
pub const MAX_RUNTIME: usize = 100_000;

fn kind(list: Whitelist) -> ListKind {
    match list {
        Whitelist::Clients => ListKind::Clients,
        Whitelist::Senders => ListKind::Senders,
        Whitelist::Recipients => ListKind::Recipients,
    }
}

/// One entry and where it comes from, for `whitelist list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Row {
    pub list: &'static str,
    pub entry: String,
    /// The list file, or `run time`.
    pub origin: String,
}

/// The client whitelist built into the daemon (`whitelist_clients` beside
/// this file): used when no `--whitelist-clients` is given.
pub const DEFAULT_CLIENTS: &str = include_str!("whitelist_clients");

/// Where [`DEFAULT_CLIENTS`] entries come from, for `whitelist list`.
pub const BUILT_IN: &str = "built in";

pub struct Lists {
    files: Vec<(ListKind, Vec<PathBuf>)>,
    /// The built-in client entries, when they are used.
    default_clients: Vec<&'static str>,
    path: PathBuf,
    runtime: Mutex<BTreeSet<(Whitelist, String)>>,
}

/// The file's text for a set of entries.
fn render(entries: &BTreeSet<(Whitelist, String)>) -> String {
    let mut text = String::from(
        "# greylist-policyd's run-time whitelist entries (greylistctl whitelist add|remove).\n\
         # Written by the daemon: edit the list files instead.\n",
    );
    for (list, entry) in entries {
        text.push_str(list.as_str());
        text.push(' ');
        text.push_str(entry);
        text.push('\n');
    }
    text
}

/// A regular file (not a link, FIFO or device) or nothing at `path`.
fn check_regular(path: &Path) -> Result<bool, String> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_file() => Ok(true),
        Ok(_) => Err(format!(
            "{}: not a regular file (a link or another kind of file); refusing it",
            path.display()
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

impl Lists {
    /// The list files of the command line (with the built-in client
    /// whitelist when `default_clients`) and the run-time entries kept at
    /// `path` (none when there is no such file yet).
    pub fn open(
        files: Vec<(ListKind, Vec<PathBuf>)>,
        default_clients: bool,
        path: PathBuf,
    ) -> Result<Lists, String> {
        let mut runtime = BTreeSet::new();
        if check_regular(&path)? {
            let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let parsed = line
                    .split_once(' ')
                    .and_then(|(list, entry)| Some((Whitelist::from_name(list)?, entry.trim())));
                match parsed {
                    Some((list, entry)) if !entry.is_empty() => {
                        runtime.insert((list, entry.to_string()));
                    }
                    _ => {
                        return Err(format!(
                            "{}: line {}: not \"clients|senders|recipients ENTRY\"",
                            path.display(),
                            n + 1
                        ))
                    }
                }
            }
        }
        let default_clients = if default_clients {
            greylist::list_entries(DEFAULT_CLIENTS)
        } else {
            Vec::new()
        };
        Ok(Lists {
            files,
            default_clients,
            path,
            runtime: Mutex::new(runtime),
        })
    }

    /// Loads every kind's files and run-time entries into the engine (a
    /// bad file keeps that kind's old list); how many entries each kind
    /// now has, for the log.
    pub fn apply(&self, engine: &Engine) -> Result<Vec<(ListKind, usize)>, String> {
        let runtime = self.runtime.lock();
        self.apply_with(engine, &runtime)
    }

    fn apply_with(
        &self,
        engine: &Engine,
        runtime: &BTreeSet<(Whitelist, String)>,
    ) -> Result<Vec<(ListKind, usize)>, String> {
        let mut loaded = Vec::new();
        for (kind, paths) in &self.files {
            // A kind without files is loaded too when it can have run-time
            // entries: removing the last one must empty it.
            let runtime_kind = Whitelist::ALL.into_iter().any(|w| self::kind(w) == *kind);
            if paths.is_empty() && !runtime_kind {
                continue;
            }
            loaded.push((*kind, self.apply_kind(engine, *kind, runtime)?));
        }
        Ok(loaded)
    }

    /// Loads one kind's files (each with its `.local` companion when there
    /// is one, as postgrey reads them) and run-time entries, in one
    /// replacement. A line the engine cannot honour is left out, with a
    /// warning in the log naming its file and line.
    fn apply_kind(
        &self,
        engine: &Engine,
        kind: ListKind,
        runtime: &BTreeSet<(Whitelist, String)>,
    ) -> Result<usize, String> {
        let paths = self.paths(kind);
        let built_in = match kind {
            ListKind::Clients => &self.default_clients[..],
            _ => &[],
        };
        let extra: Vec<&str> = built_in
            .iter()
            .copied()
            .chain(
                runtime
                    .iter()
                    .filter(|(list, _)| self::kind(*list) == kind)
                    .map(|(_, e)| e.as_str()),
            )
            .collect();
        let (loaded, skipped) = engine
            .load_lists_skipping(kind, &paths, &extra)
            .map_err(|e| format!("{kind} list: {e}"))?;
        for e in skipped {
            crate::log::log(format_args!("warning: {kind} list: {e}: left out"));
        }
        Ok(loaded)
    }

    /// A kind's files, each followed by its `.local` file if one exists.
    fn paths(&self, kind: ListKind) -> Vec<PathBuf> {
        let files = self
            .files
            .iter()
            .find(|(k, _)| *k == kind)
            .map_or(&[][..], |(_, p)| p.as_slice());
        let mut paths = Vec::new();
        for file in files {
            paths.push(file.clone());
            let mut local = file.as_os_str().to_owned();
            local.push(".local");
            let local = PathBuf::from(local);
            if check_regular(&local).unwrap_or(false) {
                paths.push(local);
            }
        }
        paths
    }

    /// Adds (or with `add` false removes) a run-time entry: the engine's
    /// lists first (a bad entry is refused there and nothing changes),
    /// then the file; whether anything changed.
    pub fn change(
        &self,
        engine: &Engine,
        list: Whitelist,
        entry: &str,
        add: bool,
    ) -> Result<bool, String> {
        let entry = entry.trim();
        if entry.is_empty() || entry.contains(['\n', '\r']) {
            return Err("an entry is one line of text".into());
        }
        let mut runtime = self.runtime.lock();
        let mut next = runtime.clone();
        let item = (list, entry.to_string());
        let changed = if add {
            if next.len() >= MAX_RUNTIME {
                return Err(format!("at most {MAX_RUNTIME} run-time entries"));
            }
            next.insert(item)
        } else {
            next.remove(&item)
        };
        if !changed {
            return Ok(false);
        }
        // Only the edited kind is loaded again (with its files, which may
        // have changed on disk: then the change is refused and nothing is).
        self.apply_kind(engine, kind(list), &next)?;
        if let Err(e) = self.save(&next) {
            // The file is the truth across restarts: undo the list. (The
            // same files just loaded, so this load succeeds unless they
            // changed again in between; then the old list stays anyway.)
            let _ = self.apply_kind(engine, kind(list), &runtime);
            return Err(e);
        }
        *runtime = next;
        Ok(true)
    }

    /// Writes the entries: a temporary file beside it (private, never
    /// through a link), synced, renamed over it, and the folder synced.
    fn save(&self, entries: &BTreeSet<(Whitelist, String)>) -> Result<(), String> {
        let shown = self.path.display();
        check_regular(&self.path)?;
        let mut tmp = self.path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        if check_regular(&tmp)? {
            fs::remove_file(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
        }
        let write = || -> std::io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&tmp)?;
            f.write_all(render(entries).as_bytes())?;
            f.sync_all()?;
            fs::rename(&tmp, &self.path)
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            format!("saving the run-time whitelist to {shown}: {e}")
        })?;
        // Renamed: the change is made. A folder that cannot be synced
        // only makes it less durable across a crash; say so.
        let folder = self.path.parent().filter(|p| !p.as_os_str().is_empty());
        if let Err(e) = fs::File::open(folder.unwrap_or(Path::new("."))).and_then(|d| d.sync_all())
        {
            crate::log::log(format_args!("warning: syncing the folder of {shown}: {e}"));
        }
        Ok(())
    }

    /// Every whitelist entry, with its origin: the files' (as they are on
    /// disk now), then the run-time ones.
    pub fn rows(&self) -> Vec<Row> {
        let mut rows: Vec<Row> = (self.default_clients.iter())
            .map(|entry| Row {
                list: Whitelist::Clients.as_str(),
                entry: entry.to_string(),
                origin: BUILT_IN.into(),
            })
            .collect();
        for list in Whitelist::ALL {
            for path in &self.paths(kind(list)) {
                match greylist::read_list_file(path) {
                    Ok(entries) => rows.extend(entries.into_iter().map(|entry| Row {
                        list: list.as_str(),
                        entry,
                        origin: path.display().to_string(),
                    })),
                    Err(e) => rows.push(Row {
                        list: list.as_str(),
                        entry: format!("(cannot be read: {e})"),
                        origin: path.display().to_string(),
                    }),
                }
            }
        }
        rows.extend(self.runtime.lock().iter().map(|(list, entry)| Row {
            list: list.as_str(),
            entry: entry.clone(),
            origin: "run time".into(),
        }));
        rows
    }
}
