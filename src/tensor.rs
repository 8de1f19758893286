//! Tensors on the GPU: [`TensorView`], a view of a caller-owned buffer, and
//! [`Tensor`], a buffer the crate allocates for hosts, tests and the CLI.

use crate::context::Context;
use crate::layout::{ChannelView, Layout};
use crate::{Error, Result};

/// The element type of a tensor in a buffer. Statistics are always f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum DType {
    /// Single precision, the default.
    #[default]
    F32,
    /// Half precision (IEEE binary16), on devices with `SHADER_F16`.
    F16,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> u64 {
        match self {
            DType::F32 => 4,
            DType::F16 => 2,
        }
    }
}

/// A tensor in a caller's `wgpu::Buffer`: `shape` (logical order N, C,
/// spatial...) of `dtype` values starting `offset` bytes into the buffer, in
/// `layout`'s memory order. Ops never copy it through the host.
#[derive(Clone, Debug)]
pub struct TensorView<'a> {
    /// The buffer holding the tensor (with `STORAGE` usage).
    pub buffer: &'a wgpu::Buffer,
    /// Where the tensor starts in the buffer, in bytes.
    pub offset: u64,
    /// The logical shape, `(N, C, spatial...)` or what the op names.
    pub shape: Vec<usize>,
    /// How the shape is laid out in memory.
    pub layout: Layout,
    /// The element type in memory.
    pub dtype: DType,
}

impl<'a> TensorView<'a> {
    /// A channels-second view at offset 0.
    pub fn new(buffer: &'a wgpu::Buffer, shape: &[usize]) -> TensorView<'a> {
        TensorView { buffer, offset: 0, shape: shape.to_vec(), layout: Layout::Nchw, dtype: DType::F32 }
    }

    /// The same view in another memory order.
    pub fn with_layout(mut self, layout: Layout) -> TensorView<'a> {
        self.layout = layout;
        self
    }

    /// The same view over `dtype` elements.
    pub fn with_dtype(mut self, dtype: DType) -> TensorView<'a> {
        self.dtype = dtype;
        self
    }

    /// The same view starting `offset` bytes into the buffer (a multiple of 4).
    pub fn at_offset(mut self, offset: u64) -> TensorView<'a> {
        self.offset = offset;
        self
    }

    /// Number of elements (`usize::MAX` for a shape whose product
    /// overflows, which no buffer can hold).
    pub fn len(&self) -> usize {
        element_count(&self.shape).unwrap_or(usize::MAX)
    }

    /// True when some dimension is zero.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks that the buffer can hold this view and be bound as storage, and
    /// returns the window to bind: the view's range widened down to the
    /// device's offset alignment.
    pub(crate) fn window(&self, name: &str, limits: &wgpu::Limits) -> Result<Window<'a>> {
        window(self.buffer, self.offset, self.len(), self.dtype.size(), name, limits)
    }

    /// [`Self::window`] for ops that take f32 only.
    pub(crate) fn window_f32(&self, name: &str, limits: &wgpu::Limits) -> Result<Window<'a>> {
        if self.dtype != DType::F32 {
            return Err(Error::Unsupported(format!("{name}: {:?} tensors are not supported here", self.dtype)));
        }
        self.window(name, limits)
    }
}

/// A range of a buffer to bind, and where the view starts inside it.
#[derive(Clone, Debug)]
pub(crate) struct Window<'a> {
    pub buffer: &'a wgpu::Buffer,
    pub bind_offset: u64,
    pub bind_size: u64,
    /// Element offset of the view inside the bound range.
    pub elem_offset: u32,
}

impl<'a> Window<'a> {
    pub fn resource(&self) -> wgpu::BindingResource<'a> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: self.buffer,
            offset: self.bind_offset,
            size: std::num::NonZeroU64::new(self.bind_size),
        })
    }
}

/// Validates `len` values of `esize` bytes at `offset` bytes of `buffer` (named `name` in
/// errors) and returns the window that binds them.
pub(crate) fn window<'a>(
    buffer: &'a wgpu::Buffer,
    offset: u64,
    len: usize,
    esize: u64,
    name: &str,
    limits: &wgpu::Limits,
) -> Result<Window<'a>> {
    check_range(buffer, offset, len, esize, name)?;
    let end = offset + len as u64 * esize;
    let align = u64::from(limits.min_storage_buffer_offset_alignment.max(4));
    let bind_offset = offset - offset % align;
    let bind_size = end - bind_offset;
    let max = limits.max_storage_buffer_binding_size;
    if bind_size > max || bind_size > u64::from(u32::MAX) {
        return Err(Error::Unsupported(format!(
            "{name}: {bind_size} bytes exceed the device's storage binding limit of {max} bytes"
        )));
    }
    // Bindings are whole 4-byte words: an f16 view ending mid-word binds the
    // rest of that word too (never touched) when the buffer has it.
    let bind_size = bind_size.next_multiple_of(4);
    if bind_offset + bind_size > buffer.size() {
        return Err(Error::Buffer(format!(
            "{name}: the view ends mid-word at byte {end} of a {}-byte buffer; bindings are whole 4-byte words",
            buffer.size()
        )));
    }
    Ok(Window {
        buffer,
        bind_offset,
        bind_size: bind_size.max(4),
        elem_offset: ((offset - bind_offset) / esize) as u32,
    })
}

/// Checks that `buffer` can hold `len` values of `esize` bytes at `offset`
/// bytes and be bound as storage, whatever the binding limit.
pub(crate) fn check_range(buffer: &wgpu::Buffer, offset: u64, len: usize, esize: u64, name: &str) -> Result<()> {
    if !buffer.usage().contains(wgpu::BufferUsages::STORAGE) {
        return Err(Error::Buffer(format!("{name}: the buffer lacks STORAGE usage")));
    }
    if !offset.is_multiple_of(esize) {
        return Err(Error::Buffer(format!("{name}: offset {offset} is not a multiple of {esize} bytes")));
    }
    let bytes = len as u64 * esize;
    let end = offset.saturating_add(bytes);
    if end > buffer.size() {
        return Err(Error::Buffer(format!(
            "{name}: {len} values at offset {offset} need {end} bytes, the buffer has {}",
            buffer.size()
        )));
    }
    Ok(())
}

/// Checks a logical shape for the per-channel ops: rank 2 to 5, no zero
/// dimension, `channels` channels.
pub(crate) fn check_shape(shape: &[usize], layout: Layout, channels: usize) -> Result<ChannelView> {
    check_shape_of(shape, layout, channels, false)
}

/// [`check_shape`], but a zero-sized dimension other than the channels
/// passes where `allow_empty` (a SyncBatchNorm rank with no samples).
pub(crate) fn check_shape_of(
    shape: &[usize],
    layout: Layout,
    channels: usize,
    allow_empty: bool,
) -> Result<ChannelView> {
    if !(2..=5).contains(&shape.len()) {
        return Err(Error::Shape(format!("rank {} ({shape:?}): expected 2 to 5 dimensions", shape.len())));
    }
    if shape.contains(&0) && !allow_empty {
        return Err(Error::Shape(format!("{shape:?} has a zero-sized dimension")));
    }
    if shape[1] != channels {
        return Err(Error::Shape(format!("{shape:?} has {} channels (dimension 1), the op has {channels}", shape[1])));
    }
    if element_count(shape).map_or(true, |n| n > u32::MAX as usize) {
        return Err(Error::Shape(format!("{shape:?} has more than 2^32 elements")));
    }
    Ok(ChannelView::of(shape, layout))
}

/// A tensor in a buffer the crate allocated (`STORAGE | COPY_SRC | COPY_DST`).
#[derive(Debug)]
pub struct Tensor {
    /// The buffer, exactly the tensor's size (at least 4 bytes).
    pub buffer: wgpu::Buffer,
    /// The logical shape.
    pub shape: Vec<usize>,
    /// How the shape is laid out in memory.
    pub layout: Layout,
    /// The element type in memory.
    pub dtype: DType,
}

/// The number of elements of `shape`, or `Err(Shape)` when the product
/// overflows.
pub(crate) fn element_count(shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| Error::Shape(format!("{shape:?} has more elements than an address space holds")))
}

/// The bytes of `len` elements of `element_bytes` each, or `Err(Shape)`.
fn byte_count(shape: &[usize], len: usize, element_bytes: u64) -> Result<u64> {
    (len as u64)
        .checked_mul(element_bytes)
        .ok_or_else(|| Error::Shape(format!("{shape:?} needs more bytes than a buffer can hold")))
}

impl Tensor {
    /// Uploads `data` (in `layout`'s memory order) as a tensor of `shape`.
    pub fn from_slice(ctx: &Context, data: &[f32], shape: &[usize], layout: Layout) -> Result<Tensor> {
        let len = element_count(shape)?;
        if data.len() != len {
            return Err(Error::Shape(format!("{} values for shape {shape:?} ({len} elements)", data.len())));
        }
        Ok(Tensor { buffer: ctx.upload("wgpu-norm tensor", data)?, shape: shape.to_vec(), layout, dtype: DType::F32 })
    }

    /// A zero-filled tensor of `shape`.
    pub fn zeros(ctx: &Context, shape: &[usize], layout: Layout) -> Result<Tensor> {
        let bytes = byte_count(shape, element_count(shape)?, 4)?;
        Ok(Tensor { buffer: ctx.zeros("wgpu-norm tensor", bytes)?, shape: shape.to_vec(), layout, dtype: DType::F32 })
    }

    /// A view of the whole tensor.
    pub fn view(&self) -> TensorView<'_> {
        TensorView {
            buffer: &self.buffer,
            offset: 0,
            shape: self.shape.clone(),
            layout: self.layout,
            dtype: self.dtype,
        }
    }

    /// Uploads `data` rounded to half precision (f16) as a tensor of `shape`.
    pub fn from_slice_f16(ctx: &Context, data: &[f32], shape: &[usize], layout: Layout) -> Result<Tensor> {
        let len = element_count(shape)?;
        if data.len() != len {
            return Err(Error::Shape(format!("{} values for shape {shape:?} ({len} elements)", data.len())));
        }
        let mut halves: Vec<u16> = data.iter().map(|&v| half::f16::from_f32(v).to_bits()).collect();
        if halves.len() % 2 == 1 {
            halves.push(0); // buffers hold whole 4-byte words
        }
        Ok(Tensor {
            buffer: ctx.upload("wgpu-norm f16 tensor", &halves)?,
            shape: shape.to_vec(),
            layout,
            dtype: DType::F16,
        })
    }

    /// A zero-filled f16 tensor of `shape`.
    pub fn zeros_f16(ctx: &Context, shape: &[usize], layout: Layout) -> Result<Tensor> {
        let bytes = byte_count(shape, element_count(shape)?, 2)?;
        Ok(Tensor {
            buffer: ctx.zeros("wgpu-norm f16 tensor", bytes.next_multiple_of(4))?,
            shape: shape.to_vec(),
            layout,
            dtype: DType::F16,
        })
    }

    /// Downloads the values as f32 (blocking), whatever the tensor's dtype.
    pub fn read(&self, ctx: &Context) -> Result<Vec<f32>> {
        crate::context::block_on(self.read_async(ctx))
    }

    /// [`Self::read`] without blocking.
    pub async fn read_async(&self, ctx: &Context) -> Result<Vec<f32>> {
        let len = element_count(&self.shape)?;
        match self.dtype {
            DType::F32 => ctx.read_async(&self.buffer, 0, len).await,
            DType::F16 => {
                let words: Vec<u16> = ctx.read_async(&self.buffer, 0, len.next_multiple_of(2)).await?;
                Ok(words[..len].iter().map(|&b| half::f16::from_bits(b).to_f32()).collect())
            }
        }
    }
}
