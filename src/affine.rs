//! The learnable affine parameters every layer carries, one type for all:
//! weight (gamma), bias (beta) and their gradients, on the GPU.

use crate::context::{block_on, Context};
use crate::{Error, Result};

/// A layer's weight (gamma) and bias (beta), one f32 per feature, and their
/// gradients from the last backward, in GPU buffers.
///
/// Every layer has all four buffers whatever its config: a layer without
/// affine parameters ignores weight and bias, and one without a bias
/// (RMSNorm, LayerNorm with `bias = false`) leaves it and its gradient at
/// zero. Reach it through the layer's `affine()`.
pub struct Affine {
    ctx: Context,
    features: usize,
    weight: wgpu::Buffer,
    bias: wgpu::Buffer,
    grad_weight: wgpu::Buffer,
    grad_bias: wgpu::Buffer,
}

impl Affine {
    /// Weight 1 and bias 0 for `features` features; `layer` names the
    /// buffers' labels.
    pub(crate) fn new(ctx: &Context, features: usize, layer: &str) -> Result<Affine> {
        let bytes = features as u64 * 4;
        Ok(Affine {
            weight: ctx.upload(&format!("{layer} weight"), &vec![1.0f32; features])?,
            bias: ctx.zeros(&format!("{layer} bias"), bytes)?,
            grad_weight: ctx.zeros(&format!("{layer} grad weight"), bytes)?,
            grad_bias: ctx.zeros(&format!("{layer} grad bias"), bytes)?,
            ctx: ctx.clone(),
            features,
        })
    }

    /// Values in each vector: channels, or elements of `normalized_shape`.
    pub fn features(&self) -> usize {
        self.features
    }

    /// The weight (gamma) buffer.
    pub fn weight(&self) -> &wgpu::Buffer {
        &self.weight
    }

    /// The bias (beta) buffer.
    pub fn bias(&self) -> &wgpu::Buffer {
        &self.bias
    }

    /// dweight of the last backward.
    pub fn grad_weight(&self) -> &wgpu::Buffer {
        &self.grad_weight
    }

    /// dbias of the last backward.
    pub fn grad_bias(&self) -> &wgpu::Buffer {
        &self.grad_bias
    }

    /// Writes the weight. `Err(Shape)`, writing nothing, on a wrong length.
    pub fn write_weight(&self, weight: &[f32]) -> Result<()> {
        self.write(&self.weight, weight, "weight")
    }

    /// Writes the bias. `Err(Shape)`, writing nothing, on a wrong length.
    pub fn write_bias(&self, bias: &[f32]) -> Result<()> {
        self.write(&self.bias, bias, "bias")
    }

    /// Reads (weight, bias) back (blocking).
    pub fn read(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        block_on(self.read_async())
    }

    /// [`Self::read`] without blocking.
    pub async fn read_async(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        Ok((self.read_vec(&self.weight).await?, self.read_vec(&self.bias).await?))
    }

    /// Reads (dweight, dbias) of the last backward (blocking).
    pub fn read_grads(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        block_on(self.read_grads_async())
    }

    /// [`Self::read_grads`] without blocking.
    pub async fn read_grads_async(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        Ok((self.read_vec(&self.grad_weight).await?, self.read_vec(&self.grad_bias).await?))
    }

    fn write(&self, buffer: &wgpu::Buffer, data: &[f32], name: &str) -> Result<()> {
        if data.len() != self.features {
            return Err(Error::Shape(format!("{name} has {} values, the layer has {}", data.len(), self.features)));
        }
        self.ctx.write(buffer, 0, data)
    }

    async fn read_vec(&self, buffer: &wgpu::Buffer) -> Result<Vec<f32>> {
        self.ctx.read_async(buffer, 0, self.features).await
    }

    /// Whether `buffer` is one of the four.
    pub(crate) fn owns(&self, buffer: &wgpu::Buffer) -> bool {
        [&self.weight, &self.bias, &self.grad_weight, &self.grad_bias].contains(&buffer)
    }
}
