//! sha256 of a set's files, with a cache of verified digests so that a full FP16 set (~10 GB) is
//! not read again on every run.
//!
//! # The cache
//! One small JSON file per hashed file, `<root>/checksums/<sha256 of the file's canonical path>.json`,
//! with `root` `$IDPATCH_HOME/cache`, else `$XDG_CACHE_HOME/idpatch`, else `$HOME/.cache/idpatch`
//! (no cache when none of them is set). An entry holds the file's canonical path, its identity
//! and change stamps from one `stat` (device, inode, size, modification time and status-change
//! time, to the nanosecond) and its sha256. The digest is used only when every stamp still
//! matches: rewriting a file in place changes its ctime, which unlike the mtime cannot be set back
//! by a user, and replacing it changes its inode. A file changed in the last
//! [`SETTLE_SECONDS`] seconds is hashed but not cached, since filesystem timestamps are coarse
//! and a write in the same tick would otherwise go unnoticed; nor is one whose stamps moved while
//! it was being hashed.
//!
//! Entries are written to a temporary file and renamed into place. A missing, unreadable or
//! corrupt entry means the file is hashed again, and a cache directory that cannot be created or
//! written is skipped: the cache never fails a run. Only Unix platforms cache (the stamps come
//! from `std::os::unix::fs::MetadataExt`); elsewhere every file is hashed every time.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// Largest checksum cache entry read, in bytes.
const MAX_ENTRY_BYTES: u64 = 64 * 1024;

/// Files whose stamps are younger than this (seconds) are not cached.
pub const SETTLE_SECONDS: i64 = 2;

/// sha256 of a file's bytes, as 64 lowercase hex digits. Read errors are [`Error::Io`].
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = crate::fsutil::open_for_reading(path, "hashed")?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// Lowercase hex of bytes (of a finished digest: `hex(&hasher.finalize())`).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256 of `bytes` as 64 lowercase hex digits: the one form every digest idpatch writes or
/// compares takes (manifest checksums, `model_set_digest`, cache keys).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Whether `s` is a sha256 as the manifest and the cache write it: 64 hex digits.
pub fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The digests of verified files, keyed by identity and change stamps (see the module docs).
#[derive(Debug)]
pub struct ChecksumCache {
    dir: Option<PathBuf>,
    hashed: AtomicUsize,
}

impl ChecksumCache {
    /// A cache in `dir` (created when first written).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ChecksumCache {
            dir: Some(dir.into()),
            hashed: AtomicUsize::new(0),
        }
    }

    /// No cache: every file is hashed.
    pub fn disabled() -> Self {
        ChecksumCache {
            dir: None,
            hashed: AtomicUsize::new(0),
        }
    }

    /// The user's cache: `checksums/` in [`crate::fsutil::cache_root`]
    /// (`$IDPATCH_HOME/cache/checksums`, else `$XDG_CACHE_HOME/idpatch/checksums`, else
    /// `$HOME/.cache/idpatch/checksums`); disabled when none of these is set.
    pub fn from_env() -> Self {
        match crate::fsutil::cache_root() {
            Some(root) => ChecksumCache::new(root.join("checksums")),
            None => ChecksumCache::disabled(),
        }
    }

    /// Where entries are kept, if anywhere.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// How many files this cache object has hashed (read in full) so far; cache hits do not count.
    pub fn files_hashed(&self) -> usize {
        self.hashed.load(Ordering::Relaxed)
    }

    /// The sha256 of `path`: from the cache when its entry matches the file's current stamps,
    /// else by reading the file (and recording the result). Read errors are [`Error::Io`]; cache
    /// errors are never reported.
    pub fn sha256(&self, path: &Path) -> Result<String> {
        let Some(key) = self.dir.as_deref().and_then(|dir| Key::of(dir, path)) else {
            return self.hash(path);
        };
        if let Some(digest) = key.lookup() {
            return Ok(digest);
        }
        let digest = self.hash(path)?;
        if key.stamp.settled() && Stamp::of(path).as_ref() == Some(&key.stamp) {
            key.store(&digest);
        }
        Ok(digest)
    }

    fn hash(&self, path: &Path) -> Result<String> {
        self.hashed.fetch_add(1, Ordering::Relaxed);
        sha256_file(path)
    }
}

/// Identity and change stamps of a file, from one `stat`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: [i64; 2],
    ctime: [i64; 2],
}

impl Stamp {
    #[cfg(unix)]
    fn of(path: &Path) -> Option<Stamp> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        m.is_file().then(|| Stamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: [m.mtime(), m.mtime_nsec()],
            ctime: [m.ctime(), m.ctime_nsec()],
        })
    }

    #[cfg(not(unix))]
    fn of(_: &Path) -> Option<Stamp> {
        None
    }

    /// Whether both times are at least [`SETTLE_SECONDS`] in the past (a clock that cannot be
    /// read, or a time in the future, counts as not settled).
    fn settled(&self) -> bool {
        let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) else {
            return false;
        };
        let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        [self.mtime[0], self.ctime[0]]
            .iter()
            .all(|&t| now.saturating_sub(t) > SETTLE_SECONDS)
    }
}

/// What a cache entry records.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Entry {
    path: String,
    stamp: Stamp,
    sha256: String,
}

/// Where one file's entry lives and what it must match.
struct Key {
    entry_path: PathBuf,
    canonical: String,
    stamp: Stamp,
}

impl Key {
    fn of(dir: &Path, path: &Path) -> Option<Key> {
        let stamp = Stamp::of(path)?;
        let canonical = path.canonicalize().ok()?;
        let canonical = canonical.to_str()?.to_string();
        let name = sha256_hex(canonical.as_bytes());
        Some(Key {
            entry_path: dir.join(format!("{name}.json")),
            canonical,
            stamp,
        })
    }

    /// The cached digest, when the entry parses and matches the path and stamps.
    fn lookup(&self) -> Option<String> {
        // An entry is a few hundred bytes; anything else (a FIFO, a device, a huge file) is
        // not one of ours and means hashing again.
        let text =
            crate::fsutil::read_text_limited(&self.entry_path, MAX_ENTRY_BYTES, "cache entry")
                .ok()?;
        let entry: Entry = serde_json::from_str(&text).ok()?;
        (entry.path == self.canonical && entry.stamp == self.stamp && is_sha256(&entry.sha256))
            .then(|| entry.sha256.to_ascii_lowercase())
    }

    /// Writes the entry atomically ([`crate::fsutil::write_atomic`]); any failure leaves the
    /// cache as it was.
    fn store(&self, digest: &str) {
        let Some(dir) = self.entry_path.parent() else {
            return;
        };
        let entry = Entry {
            path: self.canonical.clone(),
            stamp: self.stamp.clone(),
            sha256: digest.to_string(),
        };
        let Ok(text) = serde_json::to_string(&entry) else {
            return;
        };
        if std::fs::create_dir_all(dir).is_ok() {
            // A cache that cannot be written is skipped: the digest was computed anyway.
            let _ = crate::fsutil::write_atomic(&self.entry_path, text.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected: hashlib.sha256(b"abc").hexdigest() (FIPS 180-2 test vector).
    #[test]
    fn sha256_of_a_known_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("abc");
        std::fs::write(&path, b"abc").unwrap();
        assert_eq!(
            sha256_file(&path).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn fresh_files_are_hashed_but_not_cached() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fresh");
        std::fs::write(&path, b"abc").unwrap();
        let cache = ChecksumCache::new(dir.path().join("cache"));
        cache.sha256(&path).unwrap();
        cache.sha256(&path).unwrap();
        assert_eq!(cache.files_hashed(), 2);
        assert!(!dir.path().join("cache").exists());
    }

    // Expected: hashlib.sha256(b"").hexdigest() (FIPS 180-2).
    #[test]
    fn sha256_hex_of_bytes() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(sha256_hex(b"abc"), sha256_hex_of_file(b"abc"));
    }

    fn sha256_hex_of_file(bytes: &[u8]) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, bytes).unwrap();
        sha256_file(&path).unwrap()
    }

    #[test]
    fn sha256_strings_are_recognised() {
        assert!(is_sha256(&"ab".repeat(32)));
        assert!(is_sha256(&"AB".repeat(32)));
        assert!(!is_sha256(&"ab".repeat(31)));
        assert!(!is_sha256(&"zz".repeat(32)));
    }
}
