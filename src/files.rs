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
//!
//! On Windows the same opens use `FILE_FLAG_OPEN_REPARSE_POINT` (a
//! symbolic link or junction is opened as itself, then refused or removed,
//! never followed), and a file's identity is its volume and file index.
//! Windows has no modes: a file there takes the access list of its
//! folder, so the snapshot's folder must be one only the service's account
//! can write (README, "Windows").

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

#[cfg(unix)]
mod sys {
    use std::fs::{File, Metadata, OpenOptions, Permissions};
    use std::io;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    use std::path::Path;

    /// The mode of every file that holds the key secret.
    const PRIVATE_MODE: u32 = 0o600;

    /// Opens refuse a link (`ELOOP`) and never block on a FIFO.
    pub(super) fn no_follow(options: &mut OpenOptions) -> &mut OpenOptions {
        options.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
    }

    /// A file made by this open is private whatever the umask.
    pub(super) fn private(options: &mut OpenOptions) -> &mut OpenOptions {
        options.mode(PRIVATE_MODE)
    }

    /// Sets the private mode exactly (the umask can only take bits away).
    pub(super) fn make_private(file: &File) -> io::Result<()> {
        file.set_permissions(Permissions::from_mode(PRIVATE_MODE))
    }

    /// The open failed because the name is a symbolic link.
    pub(super) fn is_link_error(e: &io::Error) -> bool {
        e.raw_os_error() == Some(libc::ELOOP)
    }

    /// The name can be removed rather than opened: a link, or a FIFO
    /// nobody reads (`ENXIO`).
    pub(super) fn is_removable_error(e: &io::Error) -> bool {
        is_link_error(e) || e.raw_os_error() == Some(libc::ENXIO)
    }

    /// A regular file owned by this process's user with no other name.
    pub(super) fn is_ours(_file: &File, meta: &Metadata) -> io::Result<bool> {
        Ok(
            meta.is_file()
                && meta.uid() == rustix::process::geteuid().as_raw()
                && meta.nlink() == 1,
        )
    }

    /// Whether `file` is the file named `path` (same device and inode).
    pub(crate) fn is_named(file: &File, path: &Path) -> io::Result<bool> {
        let (a, b) = (file.metadata()?, std::fs::metadata(path)?);
        Ok((a.dev(), a.ino()) == (b.dev(), b.ino()))
    }

    /// What special file a non-regular, non-folder file is.
    pub(super) fn special_kind(meta: &Metadata) -> Option<&'static str> {
        use std::os::unix::fs::FileTypeExt;
        let t = meta.file_type();
        if t.is_fifo() {
            Some("a FIFO")
        } else if t.is_socket() {
            Some("a socket")
        } else if t.is_block_device() || t.is_char_device() {
            Some("a device")
        } else {
            None
        }
    }

    /// Makes a folder's renames durable.
    pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    /// Positioned I/O: the file's cursor is not used.
    pub(crate) fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
    }

    pub(crate) fn write_all_at(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(file, buf, offset)
    }
}

#[cfg(windows)]
mod sys {
    use std::fs::{File, Metadata, OpenOptions};
    use std::io;
    use std::os::windows::fs::OpenOptionsExt;
    use std::path::Path;

    /// `FILE_FLAG_OPEN_REPARSE_POINT` (winbase.h): a symbolic link or
    /// junction is opened as itself, not followed.
    const OPEN_REPARSE_POINT: u32 = 0x0020_0000;

    pub(super) fn no_follow(options: &mut OpenOptions) -> &mut OpenOptions {
        options.custom_flags(OPEN_REPARSE_POINT)
    }

    /// No modes on Windows: the file takes its folder's access list.
    pub(super) fn private(options: &mut OpenOptions) -> &mut OpenOptions {
        options
    }

    pub(super) fn make_private(_file: &File) -> io::Result<()> {
        Ok(())
    }

    /// A link opens (as itself) and is refused after the open.
    pub(super) fn is_link_error(_e: &io::Error) -> bool {
        false
    }

    pub(super) fn is_removable_error(_e: &io::Error) -> bool {
        false
    }

    /// A regular file (not a reparse point) with no other name.
    pub(super) fn is_ours(file: &File, meta: &Metadata) -> io::Result<bool> {
        Ok(meta.is_file()
            && !meta.is_symlink()
            && winapi_util::file::information(file)?.number_of_links() == 1)
    }

    /// Whether `file` is the file named `path` (same volume and index).
    pub(crate) fn is_named(file: &File, path: &Path) -> io::Result<bool> {
        // No access asked: a file another process has locked still opens.
        let named = OpenOptions::new().access_mode(0).open(path)?;
        let (a, b) = (
            winapi_util::file::information(file)?,
            winapi_util::file::information(&named)?,
        );
        Ok(
            (a.volume_serial_number(), a.file_index())
                == (b.volume_serial_number(), b.file_index()),
        )
    }

    pub(super) fn special_kind(_meta: &Metadata) -> Option<&'static str> {
        None
    }

    /// A folder cannot be opened as a file to flush it. NTFS journals its
    /// metadata, so a crash leaves the old or the new generation, never a
    /// mix; right after a save returns, a crash may still keep the old one.
    pub(crate) fn sync_dir(_dir: &Path) -> io::Result<()> {
        Ok(())
    }

    /// Positioned I/O. Unlike `pread`, `seek_read` moves the cursor to
    /// where it ended: a caller that reads on from the cursor seeks first.
    pub(crate) fn read_exact_at(
        file: &File,
        mut buf: &mut [u8],
        mut offset: u64,
    ) -> io::Result<()> {
        use std::os::windows::fs::FileExt;
        while !buf.is_empty() {
            match file.seek_read(buf, offset)? {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                n => {
                    buf = &mut buf[n..];
                    offset += n as u64;
                }
            }
        }
        Ok(())
    }

    pub(crate) fn write_all_at(file: &File, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
        use std::os::windows::fs::FileExt;
        while !buf.is_empty() {
            match file.seek_write(buf, offset)? {
                0 => return Err(io::ErrorKind::WriteZero.into()),
                n => {
                    buf = &buf[n..];
                    offset += n as u64;
                }
            }
        }
        Ok(())
    }
}

pub(crate) use sys::{is_named, read_exact_at, sync_dir, write_all_at};

/// `<path><suffix>`, beside `path`, spelt as the caller spelt the path (an
/// error names `C:/data/g.snap.tmp`, not `C:/data\g.snap.tmp`): the
/// snapshot's temporary file, previous generation and lock file.
pub(crate) fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

fn refused(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what)
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
    let file = sys::no_follow(options).open(path).map_err(|e| {
        if sys::is_link_error(&e) {
            refused("is a symbolic link; refusing to follow it".into())
        } else {
            e
        }
    })?;
    let meta = file.metadata()?;
    if !meta.is_file() || meta.is_symlink() {
        return Err(refused(format!(
            "is not a regular file ({}); refusing it",
            kind(&meta)
        )));
    }
    Ok(file)
}

/// What a file is, for an error message.
fn kind(meta: &fs::Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_symlink() {
        "a symbolic link"
    } else if t.is_dir() {
        "a folder"
    } else {
        sys::special_kind(meta).unwrap_or("not a plain file")
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
    let existing = sys::no_follow(OpenOptions::new().write(true)).open(path);
    match existing {
        Ok(file) => {
            let meta = file.metadata()?;
            if sys::is_ours(&file, &meta)? {
                sys::make_private(&file)?;
                return Ok((file, false));
            }
            if meta.is_dir() && !meta.is_symlink() {
                return Err(refused("is a folder".into()));
            }
            drop(file);
            fs::remove_file(path)?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        // A symbolic link (ELOOP) or a FIFO nobody reads (ENXIO): remove
        // the name, which never touches what a link points to.
        Err(e) if sys::is_removable_error(&e) => {
            fs::remove_file(path)?;
        }
        Err(e) => return Err(e),
    }
    let file = sys::no_follow(sys::private(
        OpenOptions::new().write(true).create_new(true),
    ))
    .open(path)?;
    sys::make_private(&file)?;
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
        let lock_path = &sibling(path, ".lock");
        // Never removed or replaced (another user's lock file must still
        // lock), never through a link, only a regular file.
        let shown =
            |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", lock_path.display()));
        let mut file = open_regular_with(
            sys::private(OpenOptions::new().read(true).write(true).create(true)),
            lock_path,
        )
        .map_err(shown)?;
        if let Err(e) = file.try_lock() {
            let mut holder = String::new();
            let _ = sys::no_follow(OpenOptions::new().read(true))
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

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::fs::Permissions;
    use std::io::{Read, Write};
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

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
