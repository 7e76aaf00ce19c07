//! File helpers shared by every reader of user files and every writer of user-visible output.
//!
//! Reads are bounded: a file larger than its kind allows is refused before it is read into
//! memory (a FIFO or device that never ends included). Outputs are checked once, before any
//! work, by [`check_outputs`], and written through temporary files, so an error never leaves a
//! half-written output behind.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// What keeps `path` from being read as a file, if anything: `"does not exist"`, `"is a
/// FIFO, not a regular file"`, ... (symbolic links followed). A directory counts as a problem
/// here; [`open_for_reading`] leaves directories to the caller's own message.
pub fn regular_file_problem(path: &Path) -> Option<String> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => None,
        Ok(meta) => Some(format!("is {}, not a regular file", file_kind(&meta))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some("does not exist".into()),
        Err(e) => Some(format!("cannot be read: {e}")),
    }
}

fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let kind = meta.file_type();
    if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else {
        "a special file"
    }
}

/// Opens `path` for reading, refusing FIFOs, sockets and devices before opening them: opening a
/// FIFO without a writer blocks forever, and a device can be endless. `what` names the file in
/// the error ("image", "layout", ...). Errors: [`Error::InvalidInput`] naming the path for a
/// special file, [`Error::Io`] when it cannot be opened.
pub fn open_for_reading(path: &Path, what: &str) -> Result<File> {
    if let Ok(meta) = std::fs::metadata(path) {
        if !meta.is_file() && !meta.is_dir() {
            return Err(Error::invalid_input(
                path.display().to_string(),
                format!("{what} file is {}, not a regular file", file_kind(&meta)),
            ));
        }
    }
    File::open(path).map_err(|e| Error::io(path, e))
}

/// Reads all of `path`, refusing a file of more than `max_bytes` bytes before reading it.
/// `what` says what the file is in the error ("image", "layout", ...).
///
/// Errors: [`Error::Io`] when the file cannot be opened or read (missing, a directory, no
/// permission); [`Error::InvalidInput`] naming the path when it is too large.
pub fn read_limited(path: &Path, max_bytes: u64, what: &str) -> Result<Vec<u8>> {
    let file = open_for_reading(path, what)?;
    let too_large = |size: String| {
        Error::invalid_input(
            path.display().to_string(),
            format!("{what} file is {size} bytes, more than the {max_bytes} accepted"),
        )
    };
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if meta.is_dir() {
        let e = std::io::Error::new(std::io::ErrorKind::IsADirectory, "is a directory");
        return Err(Error::io(path, e));
    }
    let declared = meta.len();
    if declared > max_bytes {
        return Err(too_large(declared.to_string()));
    }
    // The size in the metadata is only a hint (pipes and devices report 0): never read more
    // than the limit whatever it says.
    let mut bytes = Vec::with_capacity(usize::try_from(declared).unwrap_or(0));
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > max_bytes {
        return Err(too_large(format!("more than {max_bytes}")));
    }
    Ok(bytes)
}

/// [`read_limited`] for UTF-8 text; text that is not UTF-8 is an [`Error::InvalidInput`].
pub fn read_text_limited(path: &Path, max_bytes: u64, what: &str) -> Result<String> {
    String::from_utf8(read_limited(path, max_bytes, what)?).map_err(|e| {
        Error::invalid_input(
            path.display().to_string(),
            format!(
                "{what} file is not UTF-8 text (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

/// Writes `bytes` to a temporary file beside `path`, then renames it into place, so an error
/// never leaves a half-written output behind.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_all_atomic(&[(path, bytes)])
}

/// Writes several outputs together: every file is first written in full (and synced) to a
/// temporary file beside its destination (`tempfile::NamedTempFile`, a hidden `.<name>.XXXXXX`),
/// and only when all of them are written are they renamed into place
/// (`NamedTempFile::persist`). A full disk or an unwritable folder thus leaves none of them
/// behind: a temporary file not persisted is removed when dropped. The files get the
/// permissions `File::create` gives (0666 less the umask), not a temporary file's 0600.
///
/// Errors: [`Error::InvalidInput`] naming the path when its folder does not exist;
/// [`Error::Io`] naming the path when writing or renaming fails.
pub fn write_all_atomic(files: &[(&Path, &[u8])]) -> Result<()> {
    let mut temps = Vec::with_capacity(files.len());
    for (path, bytes) in files {
        temps.push((write_temp(path, bytes)?, *path));
    }
    for (tmp, path) in temps {
        tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    }
    Ok(())
}

/// The folder a file path is in (`.` for a bare file name, whose `parent()` is empty).
pub fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// A new, empty hidden temporary file beside `path` (`.<name>.XXXXXX`), removed when dropped.
fn temp_beside(path: &Path) -> std::io::Result<tempfile::NamedTempFile> {
    let name = path.file_name().unwrap_or(path.as_os_str());
    let mut prefix = OsString::from(".");
    prefix.push(name);
    prefix.push(".");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    builder.tempfile_in(folder_of(path))
}

fn write_temp(path: &Path, bytes: &[u8]) -> Result<tempfile::NamedTempFile> {
    let dir = folder_of(path);
    if !dir.is_dir() {
        return Err(Error::invalid_input(
            path.display().to_string(),
            format!("output directory {} does not exist", dir.display()),
        ));
    }
    let mut tmp = temp_beside(path).map_err(|e| Error::io(path, e))?;
    tmp.write_all(bytes)
        .and_then(|_| tmp.as_file().sync_all())
        .map_err(|e| Error::io(path, e))?;
    Ok(tmp)
}

/// The root of idpatch's caches: `$IDPATCH_HOME/cache`, else `$XDG_CACHE_HOME/idpatch`, else
/// `$HOME/.cache/idpatch` (empty variables count as unset); `None` when none is set. Each cache
/// is a folder in it (`checksums/`, `tensorrt/`).
pub fn cache_root() -> Option<PathBuf> {
    cache_root_from(|k| std::env::var_os(k))
}

/// [`cache_root`] with the variables read through `env`.
fn cache_root_from(env: impl Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    let var = |k: &str| env(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    var("IDPATCH_HOME")
        .map(|h| h.join("cache"))
        .or_else(|| var("XDG_CACHE_HOME").map(|c| c.join("idpatch")))
        .or_else(|| var("HOME").map(|h| h.join(".cache/idpatch")))
}

/// Checks the output paths of one command before any work is done. `outputs` and `inputs` are
/// (flag, path) pairs, e.g. `("--out", "group.png")`. Each output must name a file (not a
/// directory, device or FIFO) in an existing folder where a file can be created (probed by
/// creating and removing a hidden file there); no two outputs, and no output and input, may be
/// the same file, however spelled (`./a.png` and `a.png`, symbolic links, hard links).
///
/// Errors: [`Error::InvalidInput`] naming the flag.
pub fn check_outputs(outputs: &[(&str, &Path)], inputs: &[(&str, &Path)]) -> Result<()> {
    let mut seen: Vec<(&str, FileId)> = Vec::new();
    for (flag, path) in inputs {
        // A missing input is reported by its reader, with a better message.
        if let Some(id) = FileId::of(path) {
            seen.push((flag, id));
        }
    }
    let inputs_len = seen.len();
    for (flag, path) in outputs {
        check_output(flag, path)?;
        let id = FileId::of(path).ok_or_else(|| {
            Error::invalid_input(*flag, format!("cannot resolve {}", path.display()))
        })?;
        if let Some((i, (other, _))) = seen.iter().enumerate().find(|(_, (_, s))| s.same(&id)) {
            let kind = if i < inputs_len { "input" } else { "output" };
            return Err(Error::invalid_input(
                *flag,
                format!(
                    "{} is the same file as the {kind} {other}: give each output its own path",
                    path.display()
                ),
            ));
        }
        seen.push((flag, id));
    }
    Ok(())
}

/// One output path: a creatable file in an existing, writable folder.
fn check_output(flag: &str, path: &Path) -> Result<()> {
    let bad = |reason: String| Error::invalid_input(flag, reason);
    let shown = path.display();
    if path.file_name().is_none() {
        return Err(bad(format!("{shown} has no file name")));
    }
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.is_dir() {
            return Err(bad(format!("{shown} is a directory, not a file name")));
        }
        // Renaming over a device node or FIFO would replace it (and, as root, /dev/null).
        if !meta.is_file() {
            return Err(bad(format!("{shown} exists and is not a regular file")));
        }
    }
    let dir = folder_of(path);
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(bad(format!(
                "cannot write {shown}: {} is not a directory",
                dir.display()
            )))
        }
        Err(_) => {
            return Err(bad(format!(
                "cannot write {shown}: directory {} does not exist",
                dir.display()
            )))
        }
    }
    // Permission bits do not tell (root ignores them; read-only mounts and /proc do not show
    // in them): create a temporary file where the output will go, as writing will; dropping it
    // removes it.
    match temp_beside(path) {
        Ok(_probe) => Ok(()),
        Err(e) => Err(bad(format!(
            "cannot write {shown}: cannot create a file in {}: {e}",
            dir.display()
        ))),
    }
}

/// What makes two paths the same file: the canonical path (folder resolved, links followed
/// where the file exists), and on Unix the device and inode of an existing file (hard links).
#[derive(Debug)]
struct FileId {
    canonical: PathBuf,
    inode: Option<(u64, u64)>,
}

impl FileId {
    fn of(path: &Path) -> Option<FileId> {
        let canonical = match path.canonicalize() {
            Ok(p) => p,
            Err(_) => folder_of(path).canonicalize().ok()?.join(path.file_name()?),
        };
        Some(FileId {
            canonical,
            inode: inode(path),
        })
    }

    fn same(&self, other: &FileId) -> bool {
        self.canonical == other.canonical || (self.inode.is_some() && self.inode == other.inode)
    }
}

#[cfg(unix)]
fn inode(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn inode(_path: &Path) -> Option<(u64, u64)> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn error(outputs: &[(&str, &Path)], inputs: &[(&str, &Path)]) -> String {
        let err = check_outputs(outputs, inputs).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        err.to_string()
    }

    #[test]
    fn reads_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.json");
        std::fs::write(&path, [b'x'; 10]).unwrap();
        assert_eq!(read_limited(&path, 10, "layout").unwrap().len(), 10);
        let err = read_limited(&path, 9, "layout").unwrap_err().to_string();
        assert!(
            err.ends_with("layout file is 10 bytes, more than the 9 accepted"),
            "{err}"
        );
        std::fs::write(&path, [0xFF, 0xFE]).unwrap();
        let err = read_text_limited(&path, 9, "layout")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not UTF-8"), "{err}");
        let err = read_limited(dir.path(), 9, "layout").unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err:?}");
    }

    #[test]
    fn outputs_must_be_distinct_files_in_writable_folders() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let a = d.join("a.png");
        let b = d.join("b.npy");
        assert!(check_outputs(&[("--out", &a), ("--raw", &b)], &[]).is_ok());
        // The write probe leaves nothing behind.
        assert!(names(d).is_empty(), "{:?}", names(d));

        let spelled = d.join("sub/../a.png");
        std::fs::create_dir(d.join("sub")).unwrap();
        let err = error(&[("--out", &a), ("--raw", &spelled)], &[]);
        assert!(
            err.ends_with("is the same file as the output --out: give each output its own path"),
            "{err}"
        );

        std::fs::write(&a, "old").unwrap();
        let linked = d.join("linked.png");
        std::fs::hard_link(&a, &linked).unwrap();
        let err = error(&[("--out", &a), ("--raw", &linked)], &[]);
        assert!(err.starts_with("--raw: "), "{err}");

        let err = error(&[("--out", &a)], &[("--layout", &linked)]);
        assert!(err.contains("same file as the input --layout"), "{err}");

        let err = error(&[("--out", &d.join("sub"))], &[]);
        assert!(err.ends_with("is a directory, not a file name"), "{err}");
        let err = error(&[("--out", &a.join("x.png"))], &[]);
        assert!(err.ends_with("a.png is not a directory"), "{err}");
        let err = error(&[("--out", &d.join("missing/x.png"))], &[]);
        assert!(err.contains("does not exist"), "{err}");
        let err = error(&[("--out", Path::new("/proc/x.png"))], &[]);
        assert!(
            err.starts_with("--out: cannot write /proc/x.png: cannot create a file in /proc"),
            "{err}"
        );
    }

    #[test]
    fn outputs_written_together_appear_together_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let a = d.join("a.png");
        let missing = d.join("missing/b.npy");
        let err = write_all_atomic(&[(&a, b"aaa"), (&missing, b"bbb")]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(names(d).is_empty(), "{:?}", names(d));
        let b = d.join("b.npy");
        write_all_atomic(&[(&a, b"aaa"), (&b, b"bbb")]).unwrap();
        assert_eq!(names(d), ["a.png", "b.npy"]);
        assert_eq!(std::fs::read(&b).unwrap(), b"bbb");
        // Replacing an existing output works the same way.
        write_atomic(&b, b"new").unwrap();
        assert_eq!(std::fs::read(&b).unwrap(), b"new");
        assert_eq!(names(d), ["a.png", "b.npy"]);
    }

    // Outputs get the permissions a plain File::create gives (0666 less the umask), not the
    // 0600 of a temporary file.
    #[cfg(unix)]
    #[test]
    fn outputs_are_created_with_ordinary_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        File::create(&plain).unwrap();
        let atomic = dir.path().join("atomic");
        write_atomic(&atomic, b"x").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&atomic), mode(&plain));
    }

    // Expected: the documented order of the variables (IDPATCH_HOME, XDG_CACHE_HOME, HOME),
    // empty ones counting as unset.
    #[test]
    fn the_cache_root_follows_the_variables() {
        let root = |vars: [&str; 3]| {
            cache_root_from(|k| {
                let i = ["IDPATCH_HOME", "XDG_CACHE_HOME", "HOME"]
                    .iter()
                    .position(|n| *n == k)?;
                Some(OsString::from(vars[i]))
            })
        };
        assert_eq!(root(["/i", "/x", "/h"]), Some(PathBuf::from("/i/cache")));
        assert_eq!(root(["", "/x", "/h"]), Some(PathBuf::from("/x/idpatch")));
        assert_eq!(
            root(["", "", "/h"]),
            Some(PathBuf::from("/h/.cache/idpatch"))
        );
        assert_eq!(root(["", "", ""]), None);
    }
}
