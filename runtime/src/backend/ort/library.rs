//! Finding and loading `libonnxruntime` at run time, once per process.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ::ort::environment::Environment;

use crate::{Error, Result};

/// The ONNX Runtime release the project is built and tested against.
pub const ORT_VERSION: &str = "1.31.1";
/// File name of the library in the onnxruntime 1.31.1 wheel.
pub const ORT_LIB_FILE: &str = "libonnxruntime.so.1.31.1";

/// What to install when no usable library is found.
pub(super) const INSTALL_HINT: &str =
    "install ONNX Runtime 1.31.1: run scripts/fetch-onnxruntime.sh (or \
`pip download --no-deps onnxruntime==1.31.1` and take onnxruntime/capi/libonnxruntime.so.1.31.1 \
from the wheel; onnxruntime-gpu for CUDA/TensorRT), then pass --ort-lib PATH or set ORT_DYLIB_PATH";

pub(super) const GPU_BUILD_HINT: &str =
    "(CUDA and TensorRT need the onnxruntime-gpu build with its \
provider libraries beside libonnxruntime, CUDA 13 and cuDNN 9 on the loader path, and a GPU)";

/// Where the library is looked for, in order, with the name of the setting each comes from.
pub fn library_candidates(explicit: Option<&Path>) -> Vec<(&'static str, PathBuf)> {
    if let Some(p) = explicit {
        return vec![("--ort-lib", p.to_path_buf())];
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        return vec![("ORT_DYLIB_PATH", PathBuf::from(p))];
    }
    let mut candidates = Vec::new();
    if let Some(home) = std::env::var_os("IDPATCH_HOME").filter(|p| !p.is_empty()) {
        candidates.push((
            "IDPATCH_HOME",
            PathBuf::from(home).join("lib").join(ORT_LIB_FILE),
        ));
    }
    candidates.push((
        "the default location",
        PathBuf::from("target/onnxruntime").join(ORT_LIB_FILE),
    ));
    candidates.push((
        "the default location",
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target/onnxruntime")
            .join(ORT_LIB_FILE),
    ));
    candidates
}

/// The library file to load: the first candidate that exists, or an error saying what to install.
pub fn find_library(explicit: Option<&Path>) -> Result<PathBuf> {
    let candidates = library_candidates(explicit);
    if let Some((_, p)) = candidates.iter().find(|(_, p)| p.is_file()) {
        return std::path::absolute(p).map_err(|e| Error::io(p, e));
    }
    let (setting, _) = candidates[0];
    let tried: Vec<String> = candidates
        .iter()
        .map(|(_, p)| p.display().to_string())
        .collect();
    Err(Error::invalid_input(
        if setting == "the default location" {
            "ONNX Runtime library"
        } else {
            setting
        },
        format!("no file at {}; {INSTALL_HINT}", tried.join(" or ")),
    ))
}

/// The process's ONNX Runtime environment, the library it was loaded from and its version.
static ENVIRONMENT: Mutex<Option<(PathBuf, Environment, String)>> = Mutex::new(None);

pub(super) fn environment(library: &Path) -> Result<(Environment, String)> {
    let mut slot = ENVIRONMENT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((loaded, env, version)) = slot.as_ref() {
        if loaded != library {
            return Err(Error::invalid_input(
                "--ort-lib",
                format!(
                    "ONNX Runtime was already loaded from {} in this process; cannot also load {}",
                    loaded.display(),
                    library.display()
                ),
            ));
        }
        return Ok((env.clone(), version.clone()));
    }
    let unusable = |e: String| {
        Error::invalid_input(
            "ONNX Runtime library",
            format!("cannot use {}: {e}; {INSTALL_HINT}", library.display()),
        )
    };
    let version = library_version(library).map_err(unusable)?;
    let builder = ::ort::init_from(library).map_err(|e| unusable(e.to_string()))?;
    let env = builder
        .with_name("idpatch")
        .with_telemetry(false)
        .build()
        .map_err(|e| unusable(format!("cannot create an environment: {e}")))?;
    *slot = Some((library.to_path_buf(), env.clone(), version.clone()));
    Ok((env, version))
}

/// The version string a library reports ("1.31.1"), read before `ort` takes it over so that a
/// file that is not ONNX Runtime gives an error, not a panic.
fn library_version(library: &Path) -> std::result::Result<String, String> {
    // SAFETY: loading ONNX Runtime runs no code with preconditions; OrtGetApiBase has this
    // signature in every release and its version string is static.
    unsafe {
        let lib = libloading::Library::new(library).map_err(|e| e.to_string())?;
        let get_base: libloading::Symbol<unsafe extern "C" fn() -> *const ::ort::sys::OrtApiBase> =
            lib.get(b"OrtGetApiBase")
                .map_err(|_| "it does not export OrtGetApiBase (not ONNX Runtime)".to_string())?;
        let base = get_base();
        if base.is_null() {
            return Err("OrtGetApiBase returned null".into());
        }
        let version = std::ffi::CStr::from_ptr(((*base).GetVersionString)())
            .to_string_lossy()
            .into_owned();
        let minor = version
            .split('.')
            .nth(1)
            .and_then(|m| m.parse::<u32>().ok());
        if version.split('.').next() != Some("1") || minor.is_none_or(|m| m < ::ort::MINOR_VERSION)
        {
            return Err(format!(
                "it is ONNX Runtime {version}; this build needs 1.{} or newer",
                ::ort::MINOR_VERSION
            ));
        }
        Ok(version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_library_is_an_input_error_that_says_what_to_install() {
        let err = find_library(Some(Path::new("/nonexistent/libonnxruntime.so"))).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let msg = err.to_string();
        assert!(
            msg.starts_with("--ort-lib: no file at /nonexistent/libonnxruntime.so"),
            "{msg}"
        );
        assert!(msg.contains("scripts/fetch-onnxruntime.sh"), "{msg}");
        assert!(msg.contains("onnxruntime==1.31.1"), "{msg}");
    }
}
