//! Kernel parameters as uniform buffers, made once per distinct content and
//! shared: a buffer is filled when it is made and never written again, so
//! every recording that needs the same parameters may bind the same buffer,
//! whatever order the caller submits them in.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use crate::kernels::{create_init, lock, ChannelParams};
use crate::Result;

/// Distinct parameter sets kept; the oldest goes first beyond this (a
/// network's layers each use a handful, 256 bytes of GPU memory apiece).
const CAPACITY: usize = 4096;

/// The parameters as the cache's key: their bytes, as words.
type Key = [u32; std::mem::size_of::<ChannelParams>() / 4];

#[derive(Default)]
pub(crate) struct Uniforms {
    cached: Mutex<(HashMap<Key, wgpu::Buffer>, VecDeque<Key>)>,
}

impl Uniforms {
    /// The uniform buffer holding `params`: the cached one, or a new one.
    pub fn get(&self, device: &wgpu::Device, params: &ChannelParams) -> Result<wgpu::Buffer> {
        let key: Key = bytemuck::cast(*params);
        if let Some(buffer) = lock(&self.cached).0.get(&key) {
            return Ok(buffer.clone());
        }
        let buffer = create_init(device, "wgpu-norm params", bytemuck::bytes_of(params), wgpu::BufferUsages::UNIFORM)?;
        let mut cached = lock(&self.cached);
        let (map, order) = &mut *cached;
        if map.insert(key, buffer.clone()).is_none() {
            order.push_back(key);
        }
        if order.len() > CAPACITY {
            if let Some(oldest) = order.pop_front() {
                map.remove(&oldest);
            }
        }
        Ok(buffer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cover_every_byte_of_the_parameters() {
        assert_eq!(std::mem::size_of::<Key>(), std::mem::size_of::<ChannelParams>());
    }
}
