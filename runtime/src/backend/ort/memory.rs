//! What an ONNX Runtime session holds in its provider's memory, as the session's allocator
//! reports it (`AllocatorGetStats` of the C API): the arena allocators (ONNX Runtime's BFC arena,
//! used for CUDA device memory and, by default, for CPU memory) report byte counts; a plain
//! allocator reports nothing, and then neither does [`arena_use`].
//!
//! The `ort` bindings have no safe wrapper for this call, so it goes through the raw API table;
//! every pointer it hands back is released here.

use std::ffi::CStr;

use ::ort::memory::{Allocator, MemoryInfo};
use ::ort::session::Session;
use ::ort::AsPointer;

use crate::backend::MemoryUse;

/// The session's allocator for `memory` (`device` names it in [`MemoryUse::device`]): bytes in
/// use, reserved and the peak in use. `None` when the allocator keeps no statistics or the call
/// fails (a gauge that cannot be read is left out, never reported as zero).
pub(super) fn arena_use(
    session: &Session,
    memory: &MemoryInfo<'static>,
    device: String,
) -> Option<MemoryUse> {
    let allocator = Allocator::new(session, memory.clone()).ok()?;
    let pairs = allocator_stats(&allocator)?;
    let value = |key: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.parse::<u64>().ok())
    };
    Some(MemoryUse {
        device,
        in_use: value("InUse")?,
        reserved: value("TotalAllocated")?,
        peak: value("MaxInUse")?,
    })
}

/// Every key/value pair the allocator reports, copied out of ONNX Runtime's memory.
fn allocator_stats(allocator: &Allocator) -> Option<Vec<(String, String)>> {
    let api = ::ort::api();
    let mut pairs: *mut ::ort::sys::OrtKeyValuePairs = std::ptr::null_mut();
    // SAFETY: `allocator` is a live allocator of a live session; on success ONNX Runtime hands
    // back a key/value list we own and release below; on failure a status we release.
    let status = unsafe { (api.AllocatorGetStats)(allocator.ptr(), &mut pairs) };
    if !status.0.is_null() {
        // SAFETY: a non-null status returned to us is ours to release.
        unsafe { (api.ReleaseStatus)(status.0) };
        return None;
    }
    if pairs.is_null() {
        return None;
    }
    let mut keys: *const *const std::ffi::c_char = std::ptr::null();
    let mut values: *const *const std::ffi::c_char = std::ptr::null();
    let mut count = 0usize;
    let mut out = Vec::new();
    // SAFETY: `pairs` is valid until released; the key and value arrays it exposes hold `count`
    // NUL-terminated strings each, read before the release.
    unsafe {
        (api.GetKeyValuePairs)(pairs, &mut keys, &mut values, &mut count);
        if !keys.is_null() && !values.is_null() {
            for i in 0..count {
                let (k, v) = (*keys.add(i), *values.add(i));
                if k.is_null() || v.is_null() {
                    continue;
                }
                out.push((
                    CStr::from_ptr(k).to_string_lossy().into_owned(),
                    CStr::from_ptr(v).to_string_lossy().into_owned(),
                ));
            }
        }
        (api.ReleaseKeyValuePairs)(pairs);
    }
    Some(out)
}
