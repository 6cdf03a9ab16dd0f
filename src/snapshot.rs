//! Crash-safe snapshots of an engine's tables.
//!
//! # File format (version 2)
//! All integers little-endian.
//!
//! | bytes | field |
//! | --- | --- |
//! | 0..8 | magic `GREYLIST` |
//! | 8..12 | format version (2; 1 is read too) |
//! | 12..16 | header size (128) |
//! | 16..20 | CRC-32 of bytes 0..16 (the preamble, the same in every version) |
//! | 20..36 | the key secret |
//! | 36..44 | created at (Unix seconds, `i64`) |
//! | 44..52 | triplet records |
//! | 52..60 | client-network records |
//! | 60..68 | string table length in bytes |
//! | 68, 69 | IPv4 and IPv6 prefix lengths |
//! | 70..72 | normalisation version |
//! | 72 | extension delimiter count (at most 16), 73..89 the delimiters |
//! | 89..92 | zero |
//! | 92..96 | triplet record size (24; 32 in version 1) |
//! | 96..100 | client record size (80) |
//! | 100..104 | CRC-32 of the body |
//! | 104..124 | zero |
//! | 124..128 | CRC-32 of bytes 0..124 |
//!
//! Then the body: the triplet records (24 bytes: the low 64 bits of the
//! triplet's keyed hash, first seen, last seen, 48 bits of the client
//! network's key, early retries, flags: 1 passed, 2 judged lost mail, 4
//! credited to its network; version 1 wrote all 128 bits of the hash, and
//! its 32-byte records are read as the 64 bits the table keeps, so a
//! snapshot of an older version loads whole), the client records (80 bytes: key,
//! kind, prefix, network, state, lost-mail counts, the latest early retry
//! at 72..76, zero before the lost-mail rule) and the string table
//! (verified domains).
//!
//! The settings that change keys (prefixes, extension delimiters, the
//! normalisation version) are stored, and a snapshot is refused by an
//! engine whose settings differ: its keys would never match. (An older
//! normalisation version is the exception: most keys still match, see
//! `NORMALISATION_VERSION` in `src/normalize.rs`.) Other settings
//! (delay, lifetimes) may change between runs.
//!
//! # Crash safety
//! A snapshot is written to `<path>.tmp` in the same folder (locked, so two
//! savers cannot interleave), fsynced, renamed over `<path>`, and the
//! folder fsynced; a crash at any instant leaves the old or the new file
//! at `<path>`. The generation being replaced is not deleted: it is kept
//! as `<path>.tmp` (via a short-lived hard link `<path>.old`) and the next
//! save rewrites it in place, which is about twice as fast as filling a
//! new file; a temporary file left by a killed save is reused the same
//! way. Loading checks every checksum and every record, and builds a new
//! engine that is returned only when all of the file was good.
//!
//! # Files a root daemon touches
//! The snapshot holds the key secret and the client networks, so the
//! snapshot and its temporary file are `0600` whatever the umask. No
//! symbolic link is followed at either path; the kept generation is
//! rewritten in place only when it is a regular file owned by this
//! process's user with no other name, and anything else found there is
//! unlinked and made anew (see `files.rs`). Loading refuses a link, a FIFO
//! or any other non-regular file at once.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::engine::{clamp_time, unix_now, Engine};
use crate::store::memory::{ClientEntry, TripletEntry, CREDITED, LOST, PASSED};

const LOST_CREDITED: u8 = LOST | CREDITED;
use crate::files;
use crate::key::Secret;
use crate::normalize::{ClientNet, NORMALISATION_VERSION};
use crate::rules::ClientState;

const MAGIC: &[u8; 8] = b"GREYLIST";
/// The snapshot format this library writes and the newest it reads.
pub const FORMAT_VERSION: u32 = 2;
const HEADER_SIZE: usize = 128;
const TRIPLET_RECORD: usize = 24;
/// Version 1's triplet records held the whole 128-bit key.
const TRIPLET_RECORD_V1: usize = 32;
const CLIENT_RECORD: usize = 80;
const KIND_V4: u8 = 4;
const KIND_V6: u8 = 6;
const KIND_DOMAIN: u8 = b'D';

/// Why a snapshot could not be saved or loaded.
#[derive(Debug)]
pub enum SnapshotError {
    /// The file could not be read or written.
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// The file is damaged, truncated, or not a greylist snapshot.
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The file was written by a newer version of greylist.
    NewerFormat {
        /// The file.
        path: PathBuf,
        /// Its format version.
        found: u32,
    },
    /// The file was written with settings that change keys (prefixes,
    /// extension delimiters, normalisation): its keys cannot match.
    KeySettingsDiffer {
        /// The file.
        path: PathBuf,
        /// Which settings differ, snapshot vs. now.
        differences: String,
    },
}

impl fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            SnapshotError::Corrupt { path, reason } => {
                write!(f, "{}: corrupt snapshot: {reason}", path.display())
            }
            SnapshotError::NewerFormat { path, found } => write!(
                f,
                "{}: snapshot format version {found} is newer than this library reads ({FORMAT_VERSION})",
                path.display()
            ),
            SnapshotError::KeySettingsDiffer { path, differences } => write!(
                f,
                "{}: snapshot was made with settings that change keys ({differences}); \
                 its entries would never match",
                path.display()
            ),
        }
    }
}

impl std::error::Error for SnapshotError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SnapshotError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The settings that change keys, as stored in the header.
#[derive(Debug, PartialEq, Eq)]
struct KeySettings {
    ipv4_prefix: u8,
    ipv6_prefix: u8,
    normalisation: u16,
    delimiters: Vec<u8>,
}

impl KeySettings {
    fn of(config: &Config) -> Self {
        KeySettings {
            ipv4_prefix: config.ipv4_prefix(),
            ipv6_prefix: config.ipv6_prefix(),
            normalisation: NORMALISATION_VERSION,
            delimiters: config.extension_delimiters().as_bytes().to_vec(),
        }
    }

    fn differences(&self, now: &KeySettings) -> String {
        let mut out = Vec::new();
        if (self.ipv4_prefix, self.ipv6_prefix) != (now.ipv4_prefix, now.ipv6_prefix) {
            out.push(format!(
                "prefixes /{} /{} vs /{} /{}",
                self.ipv4_prefix, self.ipv6_prefix, now.ipv4_prefix, now.ipv6_prefix
            ));
        }
        if self.delimiters != now.delimiters {
            out.push(format!(
                "extension delimiters {:?} vs {:?}",
                String::from_utf8_lossy(&self.delimiters),
                String::from_utf8_lossy(&now.delimiters)
            ));
        }
        // An older normalisation is read (see NORMALISATION_VERSION); a
        // newer one is not.
        if self.normalisation > now.normalisation || self.normalisation == 0 {
            out.push(format!(
                "normalisation version {} vs {}",
                self.normalisation, now.normalisation
            ));
        }
        out.join(", ")
    }
}

/// A little-endian cursor over a fixed-size record.
struct Fields<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Fields<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Fields { bytes, at: 0 }
    }
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let out: [u8; N] = self.bytes[self.at..self.at + N]
            .try_into()
            .expect("in bounds");
        self.at += N;
        out
    }
    fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.take())
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }
    fn u128(&mut self) -> u128 {
        u128::from_le_bytes(self.take())
    }
}

fn crc(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

struct Header {
    secret: Secret,
    created_at: i64,
    triplets: u64,
    clients: u64,
    strings: u64,
    key_settings: KeySettings,
    body_crc: u32,
    /// Bytes per triplet record (by the format version).
    triplet_record: usize,
}

impl Header {
    fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut h = [0u8; HEADER_SIZE];
        h[0..8].copy_from_slice(MAGIC);
        h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        h[12..16].copy_from_slice(&(HEADER_SIZE as u32).to_le_bytes());
        let preamble = crc(&h[0..16]);
        h[16..20].copy_from_slice(&preamble.to_le_bytes());
        h[20..36].copy_from_slice(&self.secret.to_bytes());
        h[36..44].copy_from_slice(&self.created_at.to_le_bytes());
        h[44..52].copy_from_slice(&self.triplets.to_le_bytes());
        h[52..60].copy_from_slice(&self.clients.to_le_bytes());
        h[60..68].copy_from_slice(&self.strings.to_le_bytes());
        let k = &self.key_settings;
        h[68] = k.ipv4_prefix;
        h[69] = k.ipv6_prefix;
        h[70..72].copy_from_slice(&k.normalisation.to_le_bytes());
        h[72] = k.delimiters.len() as u8;
        h[73..73 + k.delimiters.len()].copy_from_slice(&k.delimiters);
        h[92..96].copy_from_slice(&(TRIPLET_RECORD as u32).to_le_bytes());
        h[96..100].copy_from_slice(&(CLIENT_RECORD as u32).to_le_bytes());
        h[100..104].copy_from_slice(&self.body_crc.to_le_bytes());
        let all = crc(&h[0..124]);
        h[124..128].copy_from_slice(&all.to_le_bytes());
        h
    }

    /// Checks the preamble, version and header checksum, in that order, so
    /// a damaged file is called corrupt and only an intact newer file is
    /// called newer.
    fn decode(h: &[u8], path: &Path) -> Result<Header, SnapshotError> {
        let corrupt = |reason: String| SnapshotError::Corrupt {
            path: path.to_path_buf(),
            reason,
        };
        if h.len() < 20 || &h[0..8] != MAGIC {
            return Err(corrupt(
                "not a greylist snapshot (no GREYLIST magic)".into(),
            ));
        }
        let mut f = Fields::new(&h[8..20]);
        let (version, size, preamble) = (f.u32(), f.u32(), f.u32());
        if preamble != crc(&h[0..16]) {
            return Err(corrupt("preamble checksum mismatch".into()));
        }
        if version > FORMAT_VERSION {
            return Err(SnapshotError::NewerFormat {
                path: path.to_path_buf(),
                found: version,
            });
        }
        if version == 0 || size as usize != HEADER_SIZE {
            return Err(corrupt(format!(
                "unknown format version {version} / header size {size}"
            )));
        }
        if h.len() < HEADER_SIZE {
            return Err(corrupt(format!(
                "truncated header: {} of {HEADER_SIZE} bytes",
                h.len()
            )));
        }
        let mut f = Fields::new(&h[20..HEADER_SIZE]);
        if f.bytes[104..108] != crc(&h[0..124]).to_le_bytes() {
            return Err(corrupt("header checksum mismatch".into()));
        }
        let secret = Secret::from_bytes(f.take());
        let created_at = f.u64() as i64;
        let (triplets, clients, strings) = (f.u64(), f.u64(), f.u64());
        let (ipv4_prefix, ipv6_prefix, normalisation) = (f.u8(), f.u8(), f.u16());
        let delim_len = f.u8() as usize;
        let delims: [u8; 16] = f.take();
        let _zero: [u8; 3] = f.take();
        let (triplet_size, client_size, body_crc) = (f.u32(), f.u32(), f.u32());
        let triplet_record = if version == 1 {
            TRIPLET_RECORD_V1
        } else {
            TRIPLET_RECORD
        };
        if delim_len > 16
            || triplet_size as usize != triplet_record
            || client_size as usize != CLIENT_RECORD
        {
            return Err(corrupt("impossible header values".into()));
        }
        Ok(Header {
            secret,
            created_at,
            triplets,
            clients,
            strings,
            key_settings: KeySettings {
                ipv4_prefix,
                ipv6_prefix,
                normalisation,
                delimiters: delims[..delim_len].to_vec(),
            },
            body_crc,
            triplet_record,
        })
    }

    /// The file length the header implies, or `None` if it overflows.
    fn file_len(&self) -> Option<u64> {
        let t = self.triplets.checked_mul(self.triplet_record as u64)?;
        let c = self.clients.checked_mul(CLIENT_RECORD as u64)?;
        (HEADER_SIZE as u64)
            .checked_add(t)?
            .checked_add(c)?
            .checked_add(self.strings)
    }
}

fn encode_triplet(e: &TripletEntry, out: &mut [u8]) {
    out[0..8].copy_from_slice(&e.key.to_le_bytes());
    out[8..12].copy_from_slice(&e.first_seen.to_le_bytes());
    out[12..16].copy_from_slice(&e.last_seen.to_le_bytes());
    out[16..20].copy_from_slice(&e.net_lo.to_le_bytes());
    out[20..22].copy_from_slice(&e.net_hi.to_le_bytes());
    out[22] = e.early_retries;
    out[23] = e.flags;
}

/// A triplet record of either size: a version 1 record's key is 128 bits,
/// of which the table keeps the low 64 (the first 8 bytes).
fn decode_triplet(b: &[u8]) -> Option<TripletEntry> {
    let mut f = Fields::new(b);
    let key = f.u64();
    if b.len() == TRIPLET_RECORD_V1 {
        let _high: [u8; 8] = f.take();
    }
    let e = TripletEntry {
        key,
        first_seen: f.u32(),
        last_seen: f.u32(),
        net_lo: f.u32(),
        net_hi: f.u16(),
        early_retries: f.u8(),
        flags: f.u8(),
    };
    // Passed, or pending and perhaps judged (and credited) as lost.
    matches!(e.flags, 0 | PASSED | LOST | LOST_CREDITED).then_some(e)
}

fn encode_client(e: &ClientEntry, strings: &mut Vec<u8>, out: &mut [u8]) {
    out.fill(0);
    out[0..16].copy_from_slice(&e.key.to_le_bytes());
    match &e.net {
        ClientNet::V4 { network, prefix } => {
            out[16] = KIND_V4;
            out[17] = *prefix;
            out[20..24].copy_from_slice(&network.octets());
        }
        ClientNet::V6 { network, prefix } => {
            out[16] = KIND_V6;
            out[17] = *prefix;
            out[20..36].copy_from_slice(&network.octets());
        }
        ClientNet::Domain(d) => {
            out[16] = KIND_DOMAIN;
            out[20..24].copy_from_slice(&(strings.len() as u32).to_le_bytes());
            out[24..28].copy_from_slice(&(d.len() as u32).to_le_bytes());
            strings.extend_from_slice(d.as_bytes());
        }
    }
    let s = &e.state;
    for (i, v) in [
        s.passes,
        s.last_seen,
        s.blocked_until,
        s.round_start,
        s.rounds,
        s.last_round,
        e.lost_last_seen,
    ]
    .into_iter()
    .enumerate()
    {
        out[36 + 4 * i..40 + 4 * i].copy_from_slice(&v.to_le_bytes());
    }
    out[64..72].copy_from_slice(&e.lost_count.to_le_bytes());
    out[72..76].copy_from_slice(&e.last_early.to_le_bytes());
}

/// Decodes a client record and checks it against the secret: its key must
/// be the keyed hash of its network.
fn decode_client(b: &[u8], strings: &[u8], secret: &Secret) -> Result<ClientEntry, String> {
    let mut f = Fields::new(b);
    let key = f.u128();
    let (kind, prefix, _pad) = (f.u8(), f.u8(), f.u16());
    let raw: [u8; 16] = f.take();
    let net = match kind {
        KIND_V4 if (1..=32).contains(&prefix) => {
            let v4 = Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]);
            ClientNet::from_ip(v4.into(), prefix, 128)
        }
        KIND_V6 if (1..=128).contains(&prefix) => {
            ClientNet::from_ip(Ipv6Addr::from(raw).into(), 32, prefix)
        }
        KIND_DOMAIN => {
            let mut r = Fields::new(&raw);
            let (at, len) = (r.u32() as usize, r.u32() as usize);
            let bytes = at
                .checked_add(len)
                .and_then(|end| strings.get(at..end))
                .ok_or("domain outside the string table")?;
            let text = std::str::from_utf8(bytes).map_err(|_| "domain is not UTF-8")?;
            ClientNet::domain(text).map_err(|e| e.to_string())?
        }
        _ => return Err(format!("bad network kind {kind} / prefix {prefix}")),
    };
    if secret.net_key(&net) != key {
        return Err(format!("client record for {net} does not match its key"));
    }
    let state = ClientState {
        passes: f.u32(),
        last_seen: f.u32(),
        blocked_until: f.u32(),
        round_start: f.u32(),
        rounds: f.u32(),
        last_round: f.u32(),
    };
    let lost_last_seen = f.u32();
    let lost_count = f.u64();
    // Zero in snapshots older than the lost-mail rule: nothing waits.
    let last_early = f.u32();
    Ok(ClientEntry {
        key,
        net,
        state,
        lost_count,
        lost_last_seen,
        last_early,
        block_open: state.blocked_until > clamp_time(unix_now()),
    })
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// How many threads restore a snapshot: the cores, at most 4.
fn restore_workers() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(4)
}

/// Takes an exclusive, non-blocking lock on the temporary file, so two
/// saves to one path (in this process or another) cannot interleave, and
/// checks that the locked file is still the one named `path` (another
/// saver may have renamed it into place meanwhile).
fn lock_exclusive(file: &File, path: &Path) -> Result<(), SnapshotError> {
    let busy = || {
        io_err(path)(io::Error::new(
            io::ErrorKind::WouldBlock,
            "another save to this snapshot is in progress",
        ))
    };
    file.try_lock().map_err(|e| match e {
        fs::TryLockError::WouldBlock => busy(),
        fs::TryLockError::Error(e) => io_err(path)(e),
    })?;
    match files::is_named(file, path) {
        Ok(true) => Ok(()),
        _ => Err(busy()),
    }
}

/// Opens (or makes) the temporary file a save writes, private and locked:
/// see [`files::open_private_for_write`] for what is refused.
fn open_temp(tmp: &Path) -> Result<File, SnapshotError> {
    let (file, _) = files::open_private_for_write(tmp).map_err(io_err(tmp))?;
    lock_exclusive(&file, tmp)?;
    Ok(file)
}

/// Checks that a snapshot can be saved at `path`: its temporary file can
/// be opened for writing in its folder. For start-up, so that a folder
/// that cannot be written is an error at once, not at the first save.
pub fn check_writable(path: impl AsRef<Path>) -> Result<(), SnapshotError> {
    open_temp(&files::sibling(path.as_ref(), ".tmp")).map(drop)
}

impl Engine {
    /// Writes a snapshot of the engine to `path`, crash-safely (see the
    /// [module docs](crate::snapshot)). Checks keep running: each shard is
    /// locked only while its records are encoded.
    ///
    /// The previous generation's file is kept as `<path>.tmp` and rewritten
    /// in place by the next save: reusing its pages makes saves about twice
    /// as fast as writing a new file, at the cost of a second copy on disk.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), SnapshotError> {
        let path = path.as_ref();
        let _one_at_a_time = self.save_lock.lock();
        let (tmp, old) = (files::sibling(path, ".tmp"), files::sibling(path, ".old"));
        // A save killed between its renames leaves `.old`: recycle it.
        if files::exists(&old).map_err(io_err(&old))? {
            if files::exists(&tmp).map_err(io_err(&tmp))? {
                fs::remove_file(&old).map_err(io_err(&old))?;
            } else {
                fs::rename(&old, &tmp).map_err(io_err(&old))?;
            }
        }
        let file = open_temp(&tmp)?;
        let mut out = BufWriter::with_capacity(1 << 20, &file);
        out.write_all(&[0; HEADER_SIZE]).map_err(io_err(&tmp))?;
        let mut crc = crc32fast::Hasher::new();
        let (mut triplets, mut clients) = (0u64, 0u64);
        let mut buf = Vec::new();
        let mut written = Ok(());
        let mut write = |buf: &[u8]| {
            crc.update(buf);
            if written.is_ok() {
                written = out.write_all(buf);
            }
        };
        let local = self.local();
        local.each_triplet_shard(|table| {
            buf.resize(table.len() * TRIPLET_RECORD, 0);
            for (e, out) in table.iter().zip(buf.chunks_exact_mut(TRIPLET_RECORD)) {
                encode_triplet(e, out);
            }
            triplets += table.len() as u64;
            write(&buf);
        });
        let mut strings = Vec::new();
        local.each_client_shard(|table| {
            buf.resize(table.len() * CLIENT_RECORD, 0);
            for (e, out) in table.iter().zip(buf.chunks_exact_mut(CLIENT_RECORD)) {
                encode_client(e, &mut strings, out);
            }
            clients += table.len() as u64;
            write(&buf);
        });
        written.map_err(io_err(&tmp))?;
        crc.update(&strings);
        out.write_all(&strings).map_err(io_err(&tmp))?;
        out.flush().map_err(io_err(&tmp))?;
        drop(out);
        let header = Header {
            secret: self.secret().clone(),
            created_at: unix_now(),
            triplets,
            clients,
            strings: strings.len() as u64,
            key_settings: KeySettings::of(self.config()),
            body_crc: crc.finalize(),
            triplet_record: TRIPLET_RECORD,
        };
        files::write_all_at(&file, &header.encode(), 0).map_err(io_err(&tmp))?;
        let len = header.file_len().expect("sizes of records in memory fit");
        file.set_len(len).map_err(io_err(&tmp))?;
        file.sync_all().map_err(io_err(&tmp))?;
        // Keep the generation being replaced, to rewrite next time.
        match fs::hard_link(path, &old) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&old)(e)),
        }
        fs::rename(&tmp, path).map_err(io_err(path))?;
        if files::exists(&old).map_err(io_err(&old))? {
            fs::rename(&old, &tmp).map_err(io_err(&old))?;
        }
        let dir = parent_dir(path);
        files::sync_dir(dir).map_err(io_err(dir))?;
        Ok(())
    }

    /// Loads a snapshot into a new engine with `config`. The secret comes
    /// from the file, so keys are stable across restarts. The file is
    /// refused whole, with its own error, when it is damaged, truncated,
    /// foreign, newer than this library, or made with settings that change
    /// keys; nothing half-loaded is ever returned.
    pub fn load(path: impl AsRef<Path>, config: Config) -> Result<Engine, SnapshotError> {
        let path = path.as_ref();
        let corrupt = |reason: String| SnapshotError::Corrupt {
            path: path.to_path_buf(),
            reason,
        };
        let file = files::open_regular(path).map_err(io_err(path))?;
        let len = file.metadata().map_err(io_err(path))?.len();
        let mut head = vec![0u8; HEADER_SIZE.min(len as usize)];
        files::read_exact_at(&file, &mut head, 0).map_err(io_err(path))?;
        let header = Header::decode(&head, path)?;
        let wanted = KeySettings::of(&config);
        let mut differences = header.key_settings.differences(&wanted);
        if config.shared_secret().is_some_and(|s| *s != header.secret) {
            if !differences.is_empty() {
                differences.push_str(", ");
            }
            differences.push_str("key secret (the file's is not the shared secret)");
        }
        if !differences.is_empty() {
            return Err(SnapshotError::KeySettingsDiffer {
                path: path.to_path_buf(),
                differences,
            });
        }
        match header.file_len() {
            Some(n) if n == len => {}
            Some(n) => return Err(corrupt(format!("{len} bytes, but the header says {n}"))),
            None => return Err(corrupt("impossible record counts".into())),
        }
        // Every size below is bounded by the file's own length. The string
        // table (last in the file) is read first, so client records can be
        // checked as they stream by.
        let mut strings = vec![0u8; header.strings as usize];
        files::read_exact_at(&file, &mut strings, len - header.strings).map_err(io_err(path))?;
        let engine = Engine::with_secret(config, header.secret.clone());
        engine
            .local()
            .reserve(header.triplets.min(engine.config().max_entries()) as usize);
        let now = clamp_time(header.created_at);
        let mut reader = BufReader::with_capacity(1 << 16, file);
        reader
            // From the start: the positioned reads above leave the cursor
            // where they ended on Windows.
            .seek(SeekFrom::Start(HEADER_SIZE as u64))
            .map_err(io_err(path))?;
        let mut crc = crc32fast::Hasher::new();
        let sections: [(u64, usize); 2] = [
            (header.triplets, header.triplet_record),
            (header.clients, CLIENT_RECORD),
        ];
        let mut chunk = Vec::new();
        for (section, (count, size)) in sections.into_iter().enumerate() {
            let mut left = count as usize;
            while left > 0 {
                let n = left.min(262_144);
                chunk.resize(n * size, 0);
                reader.read_exact(&mut chunk).map_err(io_err(path))?;
                crc.update(&chunk);
                let result = if section == 0 {
                    engine.restore_triplets(&chunk, header.triplet_record, now)
                } else {
                    engine.restore_clients(&chunk, &strings, &header.secret, now)
                };
                result.map_err(corrupt)?;
                left -= n;
            }
        }
        crc.update(&strings);
        if crc.finalize() != header.body_crc {
            return Err(corrupt("body checksum mismatch".into()));
        }
        Ok(engine)
    }

    /// Restores a chunk of triplet records, the shards split between
    /// threads (each thread inserts only into its own shards).
    fn restore_triplets(&self, chunk: &[u8], size: usize, now: u32) -> Result<(), String> {
        let workers = restore_workers();
        let work = |w: usize| -> Result<(), String> {
            for record in chunk.chunks_exact(size) {
                let key = u64::from_le_bytes(record[..8].try_into().expect("8 bytes"));
                if self.local().triplet_shard(key) % workers != w {
                    continue;
                }
                let e = decode_triplet(record).ok_or("bad triplet flags")?;
                if !self.local().restore_triplet(e, now) {
                    return Err("duplicate triplet key".into());
                }
            }
            Ok(())
        };
        split_work(workers, &work)
    }

    /// Restores a chunk of client records, checking each against its key.
    fn restore_clients(
        &self,
        chunk: &[u8],
        strings: &[u8],
        secret: &Secret,
        now: u32,
    ) -> Result<(), String> {
        let workers = restore_workers();
        let work = |w: usize| -> Result<(), String> {
            for record in chunk.chunks_exact(CLIENT_RECORD) {
                let key = u128::from_le_bytes(record[..16].try_into().expect("16 bytes"));
                if self.local().client_shard(key) % workers != w {
                    continue;
                }
                let e = decode_client(record, strings, secret)?;
                self.local().restore_client(e, now)?;
            }
            Ok(())
        };
        split_work(workers, &work)
    }
}

/// Runs `work(0..workers)` on scoped threads (the first on this one) and
/// returns the first error.
fn split_work(
    workers: usize,
    work: &(dyn Fn(usize) -> Result<(), String> + Sync),
) -> Result<(), String> {
    if workers == 1 {
        return work(0);
    }
    std::thread::scope(|scope| {
        let others: Vec<_> = (1..workers).map(|w| scope.spawn(move || work(w))).collect();
        let mut result = work(0);
        for handle in others {
            let r = handle
                .join()
                .unwrap_or_else(|_| Err("restore thread panicked".into()));
            result = result.and(r);
        }
        result
    })
}
