//! [`Context`]: a device and queue, opened headless or borrowed from the
//! application, plus the compiled kernels and host <-> GPU helpers.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::kernels::{create_init, KernelCache};
use crate::plan_support::PlanSupport;
use crate::strategy::{Access, Reduction};
use crate::{Error, Result};

/// A wgpu device and queue with this crate's compiled pipelines.
///
/// Cheap to clone (an `Arc`), `Send + Sync`: threads may share one context.
#[derive(Clone)]
pub struct Context {
    inner: Arc<Inner>,
}

struct Inner {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    /// The device's limits, which never change: read once, not on every op.
    limits: wgpu::Limits,
    kernels: KernelCache,
    plans: PlanSupport,
    lost: Arc<AtomicBool>,
    lost_reason: Arc<Mutex<String>>,
    /// The [`Reduction`] strategy, as its discriminant.
    reduction: AtomicU8,
    /// Reductions' last workgroups merge ([`Context::last_workgroup_merges`]).
    last_merge: AtomicBool,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("adapter", &self.inner.info.name)
            .field("backend", &self.inner.info.backend)
            .finish()
    }
}

/// The one wgpu instance of every context `Context::new` opens. wgpu knows
/// a buffer by an id within its instance: with an instance per context, a
/// buffer of one context handed to another was taken as whatever that one's
/// buffer of the same id was. Within one instance wgpu sees that the buffer
/// belongs to another device, and the op fails cleanly.
fn shared_instance() -> &'static wgpu::Instance {
    static INSTANCE: OnceLock<wgpu::Instance> = OnceLock::new();
    INSTANCE.get_or_init(|| wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env()))
}

/// Features this crate uses when the adapter offers them: timestamps for
/// the bench, f16 tensors, subgroups for the one-pass LayerNorm and
/// RMSNorm over longer rows (src/resident.rs), 64-bit integers for
/// [`Access::Words64`], and coherent storage for reductions whose last
/// workgroup merges ([`Context::last_workgroup_merges`]).
fn wanted_features() -> wgpu::Features {
    wgpu::Features::TIMESTAMP_QUERY
        | wgpu::Features::SHADER_F16
        | wgpu::Features::SUBGROUP
        | wgpu::Features::SHADER_INT64
        | wgpu::Features::MEMORY_DECORATION_COHERENT
}

/// Whether reductions on `device` may merge in their last workgroup: its
/// storage barriers have device scope where naga writes them for Vulkan
/// (OpControlBarrier with Device memory scope) and DX12
/// (DeviceMemoryBarrierWithGroupSync), not for Metal or GL, and the
/// partials need the `@coherent` decoration.
fn can_merge_last(device: &wgpu::Device, backend: wgpu::Backend) -> bool {
    matches!(backend, wgpu::Backend::Vulkan | wgpu::Backend::Dx12)
        && device.features().contains(wgpu::Features::MEMORY_DECORATION_COHERENT)
}

impl Context {
    /// Opens a headless device, blocking. See [`Context::new_async`].
    pub fn new() -> Result<Context> {
        pollster::block_on(Self::new_async())
    }

    /// Opens a headless device. The adapter is chosen as wgpu's own tools do:
    /// `WGPU_BACKEND` limits the backends, `WGPU_ADAPTER_NAME` picks by a
    /// substring of the name, `WGPU_POWER_PREF` (`low`/`high`) the preference;
    /// when no hardware adapter exists, a CPU adapter such as lavapipe is used.
    /// The device gets the adapter's own limits, and timestamp queries, f16
    /// shaders, subgroups and 64-bit integers when offered.
    pub async fn new_async() -> Result<Context> {
        let adapter = pick_adapter(shared_instance()).await?;
        let features = adapter.features() & wanted_features();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("wgpu-norm"),
                required_features: features,
                required_limits: adapter.limits(),
                ..Default::default()
            })
            .await
            .map_err(|e| Error::RequestDevice(e.to_string()))?;
        let ctx = Self::wrap(device, queue, adapter.get_info());
        ctx.strategy_from_env()?;
        Ok(ctx)
    }

    /// `WGPU_NORM_REDUCTION` (`tree`, `per-invocation`),
    /// `WGPU_NORM_ACCESS` (`floats`, `words64`) and `WGPU_NORM_LAST_MERGE`
    /// (`on`, `off`) override the device's defaults, as `WGPU_BACKEND`
    /// picks the backend: to run a CPU adapter the way GPUs run (the test
    /// suite does so on lavapipe), or to compare.
    fn strategy_from_env(&self) -> Result<()> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        if let Some(v) = var("WGPU_NORM_REDUCTION") {
            let r = Reduction::from_name(&v)
                .ok_or_else(|| Error::Parameter(format!("WGPU_NORM_REDUCTION={v}: expected tree or per-invocation")))?;
            self.set_reduction(r);
        }
        if let Some(v) = var("WGPU_NORM_ACCESS") {
            let a = Access::from_name(&v)
                .ok_or_else(|| Error::Parameter(format!("WGPU_NORM_ACCESS={v}: expected floats or words64")))?;
            self.set_access(a)?;
        }
        if let Some(v) = var("WGPU_NORM_LAST_MERGE") {
            let on = match v.as_str() {
                "on" => true,
                "off" => false,
                _ => return Err(Error::Parameter(format!("WGPU_NORM_LAST_MERGE={v}: expected on or off"))),
            };
            self.set_last_workgroup_merges(on)?;
        }
        Ok(())
    }

    /// Wraps a device the application already owns. The crate then works
    /// within that device's features and limits.
    ///
    /// Ops refuse, with an `Err` and the encoder untouched, buffers of
    /// another device of the same `wgpu::Instance` and destroyed buffers.
    /// Two things wgpu 30 gives no way to check: a buffer made through
    /// another `wgpu::Instance` (wgpu knows buffers by ids within their
    /// instance, so such a buffer is taken for whatever has its id here),
    /// and an encoder of another device (wgpu reports that when the encoder
    /// finishes). Keep an application's devices in one instance, and hand
    /// each op an encoder of its layer's device.
    pub fn from_device(device: wgpu::Device, queue: wgpu::Queue) -> Context {
        let info = device.adapter_info();
        Self::wrap(device, queue, info)
    }

    fn wrap(device: wgpu::Device, queue: wgpu::Queue, info: wgpu::AdapterInfo) -> Context {
        let lost = Arc::new(AtomicBool::new(false));
        let lost_reason = Arc::new(Mutex::new(String::new()));
        {
            let lost = lost.clone();
            let lost_reason = lost_reason.clone();
            device.set_device_lost_callback(move |reason, message| {
                if let Ok(mut r) = lost_reason.lock() {
                    *r = format!("{reason:?}: {message}");
                }
                lost.store(true, Ordering::SeqCst);
            });
        }
        let cpu = info.device_type == wgpu::DeviceType::Cpu;
        let reduction = if cpu { Reduction::PerInvocation } else { Reduction::Tree };
        let words = cpu && device.features().contains(wgpu::Features::SHADER_INT64);
        let last_merge = can_merge_last(&device, info.backend);
        Context {
            inner: Arc::new(Inner {
                kernels: KernelCache::new(&device, words),
                plans: PlanSupport::new(),
                limits: device.limits(),
                device,
                queue,
                info,
                lost,
                lost_reason,
                reduction: AtomicU8::new(reduction as u8),
                last_merge: AtomicBool::new(last_merge),
            }),
        }
    }

    /// How reductions combine a workgroup's values: chosen from the
    /// adapter's type ([`Reduction::PerInvocation`] on CPU adapters, else
    /// [`Reduction::Tree`]). Both give the same results to rounding.
    pub fn reduction(&self) -> Reduction {
        match self.inner.reduction.load(Ordering::Relaxed) {
            1 => Reduction::PerInvocation,
            _ => Reduction::Tree,
        }
    }

    /// Overrides the reduction strategy for the ops recorded from now on
    /// (by every clone of this context).
    pub fn set_reduction(&self, reduction: Reduction) {
        self.inner.reduction.store(reduction as u8, Ordering::Relaxed);
    }

    /// Whether a reduction's last workgroup merges the partials of every
    /// workgroup, where an op allows (tree reductions, [`Reduction::Tree`]):
    /// BatchNorm's training forward and backward then take two dispatches
    /// where a merge kernel between the reduction and the elementwise pass
    /// made three (PERF_NOTES.md, eleventh session, has the rest). On by default
    /// where the device can: Vulkan or DX12 with
    /// `wgpu::Features::MEMORY_DECORATION_COHERENT` enabled (a device from
    /// [`Context::new`] has it where the adapter offers it; an application's
    /// own device needs it requested).
    pub fn last_workgroup_merges(&self) -> bool {
        self.inner.last_merge.load(Ordering::Relaxed)
    }

    /// Whether a reduction's last workgroup may merge with a kernel that
    /// binds `storage` storage buffers: the context merges so, and the
    /// device's stage may bind that many.
    pub(crate) fn last_merge_binds(&self, storage: u32) -> bool {
        self.last_workgroup_merges() && storage <= self.inner.limits.max_storage_buffers_per_shader_stage
    }

    /// Turns [`Context::last_workgroup_merges`] off, or on again, for the
    /// ops recorded from now on (by every clone of this context). `Err`
    /// turning it on where the device cannot.
    pub fn set_last_workgroup_merges(&self, on: bool) -> Result<()> {
        if on && !can_merge_last(self.device(), self.inner.info.backend) {
            return Err(Error::Unsupported(
                "a reduction's last workgroup merges only on Vulkan or DX12, with MEMORY_DECORATION_COHERENT".into(),
            ));
        }
        self.inner.last_merge.store(on, Ordering::Relaxed);
        Ok(())
    }

    /// How the vec4 kernels move f32 tensors: chosen from the adapter's
    /// type and features ([`Access::Words64`] on CPU adapters whose device
    /// has `SHADER_INT64`, else [`Access::Floats`]).
    pub fn access(&self) -> Access {
        if self.inner.kernels.words() {
            Access::Words64
        } else {
            Access::Floats
        }
    }

    /// Overrides the access for the ops recorded from now on (by every
    /// clone of this context). `Err` for [`Access::Words64`] on a device
    /// without `SHADER_INT64`.
    pub fn set_access(&self, access: Access) -> Result<()> {
        let words = access == Access::Words64;
        if words && !self.device().features().contains(wgpu::Features::SHADER_INT64) {
            return Err(Error::Unsupported("64-bit word access needs a device with SHADER_INT64".into()));
        }
        self.inner.kernels.set_words(words);
        Ok(())
    }

    /// The wgpu device.
    pub fn device(&self) -> &wgpu::Device {
        &self.inner.device
    }

    /// The wgpu queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.inner.queue
    }

    /// The adapter behind the device.
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.inner.info
    }

    /// The device's limits (`wgpu::Device::limits` copies them on every call).
    pub(crate) fn limits(&self) -> &wgpu::Limits {
        &self.inner.limits
    }

    pub(crate) fn kernels(&self) -> &KernelCache {
        &self.inner.kernels
    }

    pub(crate) fn plan_support(&self) -> &PlanSupport {
        &self.inner.plans
    }

    /// Whether layers keep the wgpu objects of an op (its bind groups,
    /// parameters and pipelines) for later calls that bind the same buffers
    /// the same way (on by default). Recording such a call then makes
    /// nothing; the price is that a layer holds the buffers of its last few
    /// such calls alive. Off: ops recorded from now on make everything
    /// afresh, and each layer drops what it kept at its next op.
    pub fn set_plan_cache(&self, on: bool) {
        self.inner.plans.set_keep(on);
    }

    /// `Err(DeviceLost)` once the device has been lost or destroyed.
    pub fn check_alive(&self) -> Result<()> {
        // wgpu reports a destroyed device through the callback on the next poll.
        let _ = self.inner.device.poll(wgpu::PollType::Poll);
        if self.inner.lost.load(Ordering::SeqCst) {
            let reason = self.inner.lost_reason.lock().map(|r| r.clone()).unwrap_or_default();
            return Err(Error::DeviceLost(reason));
        }
        Ok(())
    }

    /// Runs `f` under a validation + out-of-memory error scope and turns what
    /// the scopes catch into `Err(Validation)` or `Err(OutOfMemory)`, instead
    /// of wgpu's default handler (which panics): for callers that create
    /// their own wgpu objects on this context's device.
    pub fn scoped<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.check_alive()?;
        let device = &self.inner.device;
        let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let out = f();
        let validation = pollster::block_on(validation.pop());
        let oom = pollster::block_on(oom.pop());
        self.check_alive()?;
        if let Some(e) = oom {
            return Err(Error::OutOfMemory(e.to_string()));
        }
        if let Some(e) = validation {
            return Err(Error::Validation(e.to_string()));
        }
        out
    }

    /// Records with `record` into a new encoder, submits it, and waits until
    /// the GPU is done: the blocking convenience beside every op
    /// ([`Context::run_async`] does not block).
    pub fn run(&self, record: impl FnOnce(&mut wgpu::CommandEncoder) -> Result<()>) -> Result<()> {
        let index = self.submit(record)?;
        self.wait(Some(index))
    }

    /// Blocks until the queue has finished `index` (or everything submitted).
    pub fn wait(&self, index: Option<wgpu::SubmissionIndex>) -> Result<()> {
        self.check_alive()?;
        self.device()
            .poll(wgpu::PollType::Wait { submission_index: index, timeout: None })
            .map_err(|e| Error::DeviceLost(format!("waiting for the GPU: {e}")))?;
        self.check_alive()
    }

    /// A new storage buffer holding `data`, usable as an op's input or output
    /// and readable with [`Context::read`].
    pub fn upload<T: bytemuck::Pod>(&self, label: &str, data: &[T]) -> Result<wgpu::Buffer> {
        self.scoped(|| {
            // wgpu rejects zero-sized mapped buffers; keep 4 bytes at least.
            let bytes: &[u8] = bytemuck::cast_slice(data);
            let padded;
            let contents = if bytes.is_empty() {
                padded = [0u8; 4];
                &padded[..]
            } else {
                bytes
            };
            create_init(self.device(), label, contents, storage_usage())
        })
    }

    /// A new zero-filled storage buffer of `bytes` bytes (rounded up to 4).
    pub fn zeros(&self, label: &str, bytes: u64) -> Result<wgpu::Buffer> {
        let size = bytes.max(4).div_ceil(4) * 4;
        self.scoped(|| {
            Ok(self.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size,
                usage: storage_usage(),
                mapped_at_creation: false,
            }))
        })
    }

    /// Reads `len` values of type `T` from `buffer` starting at `offset`
    /// bytes (a multiple of 4); the buffer needs `COPY_SRC`. Blocks: the
    /// blocking form of [`Context::read_async`].
    pub fn read<T: bytemuck::Pod>(&self, buffer: &wgpu::Buffer, offset: u64, len: usize) -> Result<Vec<T>> {
        block_on(self.read_async(buffer, offset, len))
    }

    /// [`Context::read`] without blocking the thread: the copy is submitted
    /// and the staging buffer mapped with `map_async`. On native backends
    /// the future polls the device, without waiting, each time it is polled
    /// and asks to be polled again until the map completes (it never blocks
    /// the executor, at the cost of spinning while the GPU works); on the
    /// web the browser completes the map.
    pub async fn read_async<T: bytemuck::Pod>(&self, buffer: &wgpu::Buffer, offset: u64, len: usize) -> Result<Vec<T>> {
        let bytes = len
            .checked_mul(std::mem::size_of::<T>())
            .map(|b| b as u64)
            .ok_or_else(|| Error::Buffer(format!("cannot read {len} values: the byte count overflows")))?;
        if !buffer.usage().contains(wgpu::BufferUsages::COPY_SRC) {
            return Err(Error::Buffer("reading a buffer needs COPY_SRC usage".into()));
        }
        if !offset.is_multiple_of(4)
            || !bytes.is_multiple_of(4)
            || offset.checked_add(bytes).is_none_or(|end| end > buffer.size())
        {
            return Err(Error::Buffer(format!(
                "cannot read {bytes} bytes at offset {offset} of a {}-byte buffer",
                buffer.size()
            )));
        }
        if bytes == 0 {
            return Ok(Vec::new());
        }
        let staging = self.scoped(|| {
            Ok(self.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some("wgpu-norm readback"),
                size: bytes,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }))
        })?;
        self.submit(|encoder| {
            encoder.copy_buffer_to_buffer(buffer, offset, &staging, 0, bytes);
            Ok(())
        })?;
        let (sender, receiver) = futures_intrusive::channel::shared::oneshot_channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = sender.send(r);
        });
        match self.device_done(receiver.receive()).await? {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(Error::DeviceLost(format!("map failed: {e}"))),
            None => return Err(Error::DeviceLost("a buffer map was dropped".into())),
        }
        let view = staging.get_mapped_range(..).map_err(|e| Error::Validation(format!("map range: {e}")))?;
        let out = bytemuck::cast_slice::<u8, T>(&view).to_vec();
        drop(view);
        staging.unmap();
        Ok(out)
    }

    /// [`Context::run`] without blocking the thread: records, submits, and
    /// resolves when the GPU has done the work (see [`Context::read_async`]
    /// for how the device is polled).
    pub async fn run_async(&self, record: impl FnOnce(&mut wgpu::CommandEncoder) -> Result<()>) -> Result<()> {
        self.submit(record)?;
        let (sender, receiver) = futures_intrusive::channel::shared::oneshot_channel();
        self.queue().on_submitted_work_done(move || {
            let _ = sender.send(());
        });
        self.device_done(receiver.receive()).await?;
        self.check_alive()
    }

    /// Records with `record` into a new encoder and submits it.
    fn submit(&self, record: impl FnOnce(&mut wgpu::CommandEncoder) -> Result<()>) -> Result<wgpu::SubmissionIndex> {
        let commands = self.scoped(|| {
            let mut encoder =
                self.device().create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("wgpu-norm run") });
            record(&mut encoder)?;
            Ok(encoder.finish())
        })?;
        self.scoped(|| Ok(self.queue().submit([commands])))
    }

    /// Awaits `done`, a future a GPU callback completes. Under [`block_on`]
    /// the thread first waits for the queue, and gives up after 60 s; in an
    /// executor the device is polled without waiting. Another thread's poll
    /// may run the callback, so `done` is awaited either way.
    async fn device_done<T>(&self, done: impl std::future::Future<Output = T>) -> Result<T> {
        let deadline =
            BLOCKING.with(|b| b.get()).then(|| std::time::Instant::now() + std::time::Duration::from_secs(60));
        if deadline.is_some() {
            self.wait(None)?;
        }
        let mut done = std::pin::pin!(done);
        std::future::poll_fn(|cx| {
            #[cfg(not(target_arch = "wasm32"))]
            let _ = self.device().poll(wgpu::PollType::Poll);
            match done.as_mut().poll(cx) {
                std::task::Poll::Ready(v) => std::task::Poll::Ready(Ok(v)),
                std::task::Poll::Pending if deadline.is_some_and(|d| std::time::Instant::now() > d) => {
                    std::task::Poll::Ready(Err(Error::DeviceLost("the GPU did not answer within 60 s".into())))
                }
                std::task::Poll::Pending => {
                    // Native devices finish work only when polled: come back.
                    #[cfg(not(target_arch = "wasm32"))]
                    cx.waker().wake_by_ref();
                    std::task::Poll::Pending
                }
            }
        })
        .await
    }

    /// Writes `data` into `buffer` at `offset` bytes through the queue (it
    /// lands before the next submission's commands run).
    pub fn write<T: bytemuck::Pod>(&self, buffer: &wgpu::Buffer, offset: u64, data: &[T]) -> Result<()> {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        if !buffer.usage().contains(wgpu::BufferUsages::COPY_DST) {
            return Err(Error::Buffer("writing a buffer needs COPY_DST usage".into()));
        }
        if !offset.is_multiple_of(4) || offset + bytes.len() as u64 > buffer.size() {
            return Err(Error::Buffer(format!(
                "cannot write {} bytes at offset {offset} of a {}-byte buffer",
                bytes.len(),
                buffer.size()
            )));
        }
        self.check_alive()?;
        self.scoped(|| {
            self.queue().write_buffer(buffer, offset, bytes);
            Ok(())
        })
    }
}

thread_local! {
    /// Set while [`block_on`] runs a future on this thread: reads may then
    /// wait for the queue instead of polling.
    static BLOCKING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `future` to completion on this thread: the blocking forms of the
/// crate's async reads are this around them.
pub(crate) fn block_on<F: std::future::Future>(future: F) -> F::Output {
    /// Puts the flag back however the future ends (a panic included).
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            BLOCKING.with(|b| b.set(self.0));
        }
    }
    let _restore = Restore(BLOCKING.with(|b| b.replace(true)));
    pollster::block_on(future)
}

/// Usage of every buffer the crate creates: bindable and copyable both ways.
pub(crate) fn storage_usage() -> wgpu::BufferUsages {
    wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST
}

async fn pick_adapter(instance: &wgpu::Instance) -> Result<wgpu::Adapter> {
    let backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all());
    if let Ok(wanted) = std::env::var("WGPU_ADAPTER_NAME") {
        let wanted = wanted.to_lowercase();
        let adapters = instance.enumerate_adapters(backends).await;
        let names: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
        return adapters
            .into_iter()
            .find(|a| a.get_info().name.to_lowercase().contains(&wanted))
            .ok_or_else(|| Error::NoAdapter(format!("WGPU_ADAPTER_NAME={wanted:?} matches none of {names:?}")));
    }
    let power_preference = wgpu::PowerPreference::from_env().unwrap_or_default();
    let hardware = instance
        .request_adapter(&wgpu::RequestAdapterOptions {
            power_preference,
            force_fallback_adapter: false,
            compatible_surface: None,
            ..Default::default()
        })
        .await;
    match hardware {
        Ok(adapter) => Ok(adapter),
        Err(first) => instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference,
                force_fallback_adapter: true,
                compatible_surface: None,
                ..Default::default()
            })
            .await
            .map_err(|e| {
                Error::NoAdapter(format!(
                    "{first}; no fallback adapter either ({e}). On Debian: apt-get install mesa-vulkan-drivers"
                ))
            }),
    }
}
