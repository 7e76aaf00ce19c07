//! File helpers shared by every writer of user-visible output.

use std::io::Write;
use std::path::Path;

use crate::{Error, Result};

/// Writes `bytes` to a temporary file beside `path`, then renames it into place, so an error
/// never leaves a half-written output behind.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(Error::invalid_input(
            path.display().to_string(),
            format!("output directory {} does not exist", dir.display()),
        ));
    }
    let name = path.file_name().ok_or_else(|| {
        Error::invalid_input(path.display().to_string(), "output path has no file name")
    })?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|_| f.sync_all()))
        .and_then(|_| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}
