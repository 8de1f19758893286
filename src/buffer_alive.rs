//! Whether a buffer still holds its memory, asked of wgpu-core directly:
//! a kept plan's buffers are rechecked on every reuse (src/plans.rs), where
//! a throwaway bind group of them cost about as much as the rest of
//! recording a BatchNorm step (PERF_NOTES.md). wgpu has no safe query for
//! it; `Buffer::as_hal` answers `None` once a buffer is destroyed (or was
//! never valid), which is all this looks at.

/// Whether every buffer of `buffers` is alive on a device of `backend`, or
/// `None` where this build cannot ask that backend.
pub(crate) fn all_alive<'a>(
    backend: wgpu::Backend,
    mut buffers: impl Iterator<Item = &'a wgpu::Buffer>,
) -> Option<bool> {
    #[allow(clippy::match_single_binding)] // one arm where a target has none of the backends
    match backend {
        #[cfg(any(windows, target_os = "linux", target_os = "android", target_os = "freebsd"))]
        wgpu::Backend::Vulkan => Some(buffers.all(alive::<wgpu::hal::api::Vulkan>)),
        #[cfg(target_vendor = "apple")]
        wgpu::Backend::Metal => Some(buffers.all(alive::<wgpu::hal::api::Metal>)),
        #[cfg(windows)]
        wgpu::Backend::Dx12 => Some(buffers.all(alive::<wgpu::hal::api::Dx12>)),
        _ => None,
    }
}

#[cfg(any(windows, target_os = "linux", target_os = "android", target_os = "freebsd", target_vendor = "apple"))]
fn alive<A: wgpu::hal::Api>(buffer: &wgpu::Buffer) -> bool {
    // SAFETY: the hal buffer is only tested for presence, never used, and
    // its guard is dropped at once, so nothing can destroy it through us.
    unsafe { buffer.as_hal::<A>().is_some() }
}
