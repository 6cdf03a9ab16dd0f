//! Opening the files the engine keeps (the snapshot and its temporary
//! file) the way a daemon running as root must: never through a symbolic
//! link, only regular files, and private modes for anything that holds the
//! key secret.
//!
//! A folder that other users can write lets them plant a link where the
//! daemon is about to write (`<snapshot>.tmp` -> `/etc/passwd`), or a FIFO
//! where it is about to read (which would block start-up for ever). Every
//! open here uses `O_NOFOLLOW` (a link is refused, not followed) and
//! `O_NONBLOCK` (a FIFO or device answers at once), then checks with
//! `fstat` on the open descriptor, so nothing can be swapped between the
//! check and the use.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// The mode of every file that holds the key secret.
pub(crate) const PRIVATE_MODE: u32 = 0o600;

const NO_FOLLOW: i32 = libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC;

fn refused(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what)
}

fn is_link_error(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ELOOP)
}

/// Opens an existing regular file for reading, refusing a symbolic link,
/// a FIFO, a device or a folder with an error that says which it was.
pub(crate) fn open_regular(path: &Path) -> io::Result<File> {
    open_regular_with(OpenOptions::new().read(true), path)
}

/// Opens `path` with `options` (plus `O_NOFOLLOW`), refusing a symbolic
/// link, and then anything but a regular file, with an error that says
/// which it was.
fn open_regular_with(options: &mut OpenOptions, path: &Path) -> io::Result<File> {
    let file = options.custom_flags(NO_FOLLOW).open(path).map_err(|e| {
        if is_link_error(&e) {
            refused("is a symbolic link; refusing to follow it".into())
        } else {
            e
        }
    })?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(refused(format!(
            "is not a regular file ({}); refusing it",
            kind(&meta)
        )));
    }
    Ok(file)
}

/// What a file is, for an error message.
fn kind(meta: &fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "a folder"
    } else if t.is_symlink() {
        "a symbolic link"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else {
        "not a plain file"
    }
}

/// Whether anything (a file, a link, a FIFO...) is at `path`, without
/// following a link.
pub(crate) fn exists(path: &Path) -> io::Result<bool> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Opens `path` for writing in place, private (`0600` whatever the umask).
/// An existing file is reused only if it is a regular file, owned by this
/// process's user, with no other hard link; anything else at `path` (a
/// symbolic link, a FIFO, another user's file, a second name of another
/// file) is unlinked, never written through, and a new file is made with
/// `O_EXCL`. Returns the file and whether it was made new.
pub(crate) fn open_private_for_write(path: &Path) -> io::Result<(File, bool)> {
    let existing = OpenOptions::new()
        .write(true)
        .custom_flags(NO_FOLLOW)
        .open(path);
    match existing {
        Ok(file) => {
            let meta = file.metadata()?;
            let ours = meta.is_file()
                && meta.uid() == rustix::process::geteuid().as_raw()
                && meta.nlink() == 1;
            if ours {
                file.set_permissions(Permissions::from_mode(PRIVATE_MODE))?;
                return Ok((file, false));
            }
            if meta.is_dir() {
                return Err(refused("is a folder".into()));
            }
            drop(file);
            fs::remove_file(path)?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        // A symbolic link (ELOOP) or a FIFO nobody reads (ENXIO): remove
        // the name, which never touches what a link points to.
        Err(e) if is_link_error(&e) || e.raw_os_error() == Some(libc::ENXIO) => {
            fs::remove_file(path)?;
        }
        Err(e) => return Err(e),
    }
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(PRIVATE_MODE)
        .custom_flags(NO_FOLLOW)
        .open(path)?;
    // The umask can only take bits away; set the mode exactly anyway.
    file.set_permissions(Permissions::from_mode(PRIVATE_MODE))?;
    Ok((file, true))
}

/// An exclusive lock on `<path>.lock`, held while this lives (the
/// operating system drops it when the process ends, however it ends). The
/// file holds the holder's process id, for the message a second holder
/// gets.
#[derive(Debug)]
pub(crate) struct PathLock {
    _file: File,
}

impl PathLock {
    /// Takes the lock beside `path`, or says who holds it.
    pub(crate) fn take(path: &Path) -> io::Result<PathLock> {
        use std::io::{Read, Seek, Write};
        let mut name = path.as_os_str().to_os_string();
        name.push(".lock");
        let lock_path = Path::new(&name);
        // Never removed or replaced (another user's lock file must still
        // lock), never through a link, only a regular file.
        let shown =
            |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", lock_path.display()));
        let mut file = open_regular_with(
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .mode(PRIVATE_MODE),
            lock_path,
        )
        .map_err(shown)?;
        if let Err(e) = file.try_lock() {
            let mut holder = String::new();
            let _ = OpenOptions::new()
                .read(true)
                .custom_flags(NO_FOLLOW)
                .open(lock_path)
                .and_then(|mut f| f.read_to_string(&mut holder));
            let holder = holder.trim();
            return Err(match e {
                fs::TryLockError::WouldBlock => io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!(
                        "in use by another process (pid {}, which holds {}); two processes on \
                         one snapshot would overwrite each other's state",
                        if holder.is_empty() { "unknown" } else { holder },
                        lock_path.display()
                    ),
                ),
                fs::TryLockError::Error(e) => e,
            });
        }
        // The holder's pid, for the message; a lock file we may not write
        // (another user's) still locks.
        let _ = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{}", std::process::id()));
        Ok(PathLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("greylist-files-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_link_is_never_written_through() {
        let dir = scratch("link");
        let victim = dir.join("passwd");
        fs::write(&victim, "root:x:0:0\n").unwrap();
        let tmp = dir.join("g.snap.tmp");
        std::os::unix::fs::symlink(&victim, &tmp).unwrap();
        let (mut file, new) = open_private_for_write(&tmp).unwrap();
        assert!(new);
        file.write_all(b"snapshot").unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "root:x:0:0\n");
        assert!(!fs::symlink_metadata(&tmp).unwrap().file_type().is_symlink());
        assert_eq!(fs::metadata(&tmp).unwrap().mode() & 0o777, 0o600);
        // Reading refuses a link too.
        std::os::unix::fs::symlink(&victim, dir.join("g.snap")).unwrap();
        let e = open_regular(&dir.join("g.snap")).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_second_hard_link_or_a_fifo_is_replaced_and_modes_are_private() {
        let dir = scratch("hardlink");
        let other = dir.join("other");
        fs::write(&other, "keep").unwrap();
        let tmp = dir.join("t");
        fs::hard_link(&other, &tmp).unwrap();
        let (mut f, new) = open_private_for_write(&tmp).unwrap();
        assert!(new);
        f.write_all(b"x").unwrap();
        assert_eq!(fs::read_to_string(&other).unwrap(), "keep");
        // Our own file with one link is reused, and made private.
        fs::set_permissions(&tmp, Permissions::from_mode(0o644)).unwrap();
        let (_, new) = open_private_for_write(&tmp).unwrap();
        assert!(!new);
        assert_eq!(fs::metadata(&tmp).unwrap().mode() & 0o777, 0o600);
        let fifo = dir.join("fifo");
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
        )
        .unwrap();
        let e = open_regular(&fifo).unwrap_err();
        assert!(e.to_string().contains("a FIFO"), "{e}");
        let (_, new) = open_private_for_write(&fifo).unwrap();
        assert!(new);
        let mut text = String::new();
        open_regular(&fifo)
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "");
        fs::remove_dir_all(&dir).unwrap();
    }
}
