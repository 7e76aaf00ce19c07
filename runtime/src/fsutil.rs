//! File helpers shared by every reader of user files and every writer of user-visible output.
//!
//! Reads are bounded: a file larger than its kind allows is refused before it is read into
//! memory (a FIFO or device that never ends included). Outputs are checked once, before any
//! work, by [`check_outputs`], and written through temporary files, so an error never leaves a
//! half-written output behind.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Reads all of `path`, refusing a file of more than `max_bytes` bytes before reading it.
/// `what` says what the file is in the error ("image", "layout", ...).
///
/// Errors: [`Error::Io`] when the file cannot be opened or read (missing, a directory, no
/// permission); [`Error::InvalidInput`] naming the path when it is too large.
pub fn read_limited(path: &Path, max_bytes: u64, what: &str) -> Result<Vec<u8>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
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

/// Writes several outputs together: every file is first written in full to a temporary file
/// beside its destination, and only when all of them are written are they renamed into place.
/// A full disk or an unwritable folder thus leaves none of them behind.
pub fn write_all_atomic(files: &[(&Path, &[u8])]) -> Result<()> {
    let mut temps: Vec<(PathBuf, &Path)> = Vec::with_capacity(files.len());
    let remove = |temps: &[(PathBuf, &Path)]| {
        for (tmp, _) in temps {
            let _ = std::fs::remove_file(tmp);
        }
    };
    for (path, bytes) in files {
        match write_temp(path, bytes) {
            Ok(tmp) => temps.push((tmp, path)),
            Err(e) => {
                remove(&temps);
                return Err(e);
            }
        }
    }
    for (i, (tmp, path)) in temps.iter().enumerate() {
        if let Err(e) = std::fs::rename(tmp, path) {
            remove(&temps[i..]);
            return Err(Error::io(*path, e));
        }
    }
    Ok(())
}

/// The folder a file path is in (`.` for a bare file name).
fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// A hidden name beside `path`, unique to this process: `.<name>.<tag>-<pid>`.
fn sibling(path: &Path, tag: &str) -> Result<PathBuf> {
    let name = path.file_name().ok_or_else(|| {
        Error::invalid_input(path.display().to_string(), "output path has no file name")
    })?;
    let mut hidden = OsString::from(".");
    hidden.push(name);
    hidden.push(format!(".{tag}-{}", std::process::id()));
    Ok(folder_of(path).join(hidden))
}

fn write_temp(path: &Path, bytes: &[u8]) -> Result<PathBuf> {
    let dir = folder_of(path);
    if !dir.is_dir() {
        return Err(Error::invalid_input(
            path.display().to_string(),
            format!("output directory {} does not exist", dir.display()),
        ));
    }
    let tmp = sibling(path, "tmp")?;
    let written =
        File::create(&tmp).and_then(|mut f| f.write_all(bytes).and_then(|_| f.sync_all()));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(tmp)
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
    // in them): create and remove a file where the output will go.
    let probe = sibling(path, "probe")?;
    let created = OpenOptions::new().write(true).create_new(true).open(&probe);
    match created {
        Ok(file) => {
            drop(file);
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
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
    }
}
