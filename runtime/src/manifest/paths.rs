//! Path and precision rules of manifest entries: every file a manifest names stays inside the
//! set's folder, or inside the folder of its declared `base` set beside it.

use std::path::{Component, Path};

/// Precisions a set or a graph entry may declare.
pub const PRECISIONS: [&str; 3] = ["fp32", "fp16", "int8"];

pub(super) fn check_precision(what: &str, precision: &str) -> std::result::Result<(), String> {
    if PRECISIONS.contains(&precision) {
        return Ok(());
    }
    Err(format!(
        "{what} is {precision:?}; must be one of {}",
        PRECISIONS.join(", ")
    ))
}

/// `base` must name a folder beside the set: one plain path component, an existing directory.
pub(super) fn check_base(dir: &Path, base: &str) -> std::result::Result<(), String> {
    let mut components = Path::new(base).components();
    let single = matches!(
        (components.next(), components.next()),
        (Some(Component::Normal(_)), None)
    );
    if !single || base.contains(['/', '\\']) {
        return Err(format!(
            "base {base:?} must be the name of a folder beside the set (no path separators, \
             no `..`)"
        ));
    }
    let folder = dir.join("..").join(base);
    if !folder.is_dir() {
        return Err(format!(
            "base {base:?}: folder {} does not exist",
            folder.display()
        ));
    }
    Ok(())
}

/// A manifest path must be relative and stay inside the set: no root, no drive, no `..`; with a
/// `base`, it may instead start with `../<base>/` and stay inside that folder.
pub(super) fn check_set_path(
    what: &str,
    key: &str,
    file: &str,
    base: Option<&str>,
) -> std::result::Result<(), String> {
    let full = Path::new(file);
    let path = base
        .and_then(|b| full.strip_prefix(Path::new("..").join(b)).ok())
        .unwrap_or(full);
    let problem = if file.is_empty() {
        "is empty"
    } else if path
        .components()
        .any(|c| matches!(c, Component::RootDir | Component::Prefix(_)))
    {
        "is absolute; manifest paths are relative to the set directory"
    } else if path.components().any(|c| c == Component::ParentDir) {
        match base {
            Some(_) => "leaves the set directory (`..`) other than into `../<base>/`",
            None => "leaves the set directory (`..`)",
        }
    } else if !path.components().any(|c| matches!(c, Component::Normal(_))) {
        "names no file in the set"
    } else {
        return Ok(());
    };
    Err(format!("{what}: {key} {file:?} {problem}"))
}
