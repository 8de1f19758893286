//! BatchNorm state in safetensors with PyTorch's `state_dict` names
//! (`weight`, `bias`, `running_mean`, `running_var`, `num_batches_tracked`,
//! after an optional prefix such as `layer1.0.bn1.`), so weights trained in
//! PyTorch run here and back. Export one from PyTorch with
//! `safetensors.torch.save_file(bn.state_dict(), "bn.safetensors")`.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::TensorView as StView;
use safetensors::{Dtype, SafeTensors};

use crate::batch_norm::{BatchNorm, BatchNormConfig, BatchNormState};
use crate::{Error, Result};

impl BatchNormState {
    /// Serializes the tensors a PyTorch layer with `config` has: `weight` and
    /// `bias` when affine, running statistics and `num_batches_tracked` (an
    /// `I64` scalar) when tracking.
    pub fn to_safetensors(&self, prefix: &str, config: &BatchNormConfig) -> Result<Vec<u8>> {
        let c = config.num_features;
        let counter = (self.num_batches_tracked as i64).to_le_bytes();
        let mut tensors: Vec<(String, Dtype, Vec<usize>, &[u8])> = Vec::new();
        if config.affine {
            tensors.push(("weight".into(), Dtype::F32, vec![c], bytemuck::cast_slice(&self.weight)));
            tensors.push(("bias".into(), Dtype::F32, vec![c], bytemuck::cast_slice(&self.bias)));
        }
        if config.track_running_stats {
            tensors.push(("running_mean".into(), Dtype::F32, vec![c], bytemuck::cast_slice(&self.running_mean)));
            tensors.push(("running_var".into(), Dtype::F32, vec![c], bytemuck::cast_slice(&self.running_var)));
            tensors.push(("num_batches_tracked".into(), Dtype::I64, vec![], &counter));
        }
        let mut views = Vec::new();
        for (name, dtype, shape, data) in tensors {
            let view = StView::new(dtype, shape, data)
                .map_err(|e| Error::State(format!("{prefix}{name} has {} bytes: {e}", data.len())))?;
            views.push((format!("{prefix}{name}"), view));
        }
        let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
        safetensors::serialize(views, Some(meta)).map_err(|e| Error::State(e.to_string()))
    }

    /// Reads the tensors of a layer with `config` under `prefix`. Tensors the
    /// config does not use may be absent and keep PyTorch's initial values;
    /// a missing or mis-shaped tensor the config needs is an error naming it.
    pub fn from_safetensors(bytes: &[u8], prefix: &str, config: &BatchNormConfig) -> Result<BatchNormState> {
        let file = SafeTensors::deserialize(bytes).map_err(|e| Error::State(format!("not a safetensors file: {e}")))?;
        let c = config.num_features;
        let vector = |name: &str| -> Result<Vec<f32>> {
            let full = format!("{prefix}{name}");
            let t = file.tensor(&full).map_err(|_| Error::State(format!("missing tensor {full}")))?;
            if t.shape() != [c] {
                return Err(Error::State(format!("{full} has shape {:?}, expected [{c}]", t.shape())));
            }
            match t.dtype() {
                Dtype::F32 => {
                    Ok(t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
                }
                other => Err(Error::State(format!("{full} is {other:?}, expected F32"))),
            }
        };
        let mut state = BatchNormState::initial(c);
        if config.affine {
            state.weight = vector("weight")?;
            state.bias = vector("bias")?;
        }
        if config.track_running_stats {
            state.running_mean = vector("running_mean")?;
            state.running_var = vector("running_var")?;
            let full = format!("{prefix}num_batches_tracked");
            // Older PyTorch checkpoints lack the counter; PyTorch then keeps 0.
            if let Ok(t) = file.tensor(&full) {
                let data = t.data();
                state.num_batches_tracked = match (t.dtype(), data.len()) {
                    (Dtype::I64, 8) => i64::from_le_bytes(data.try_into().unwrap_or_default()).max(0) as u64,
                    (Dtype::I32, 4) => i32::from_le_bytes(data.try_into().unwrap_or_default()).max(0) as u64,
                    (dtype, _) => {
                        return Err(Error::State(format!(
                            "{full} is {dtype:?} of shape {:?}, expected an I64 scalar",
                            t.shape()
                        )))
                    }
                };
            }
        }
        Ok(state)
    }
}

impl BatchNorm {
    /// Saves the layer's state to `path` with PyTorch's names after `prefix`.
    pub fn save_state_dict(&self, path: &Path, prefix: &str) -> Result<()> {
        let bytes = self.read_state()?.to_safetensors(prefix, self.config())?;
        std::fs::write(path, bytes).map_err(|source| Error::Io { path: path.display().to_string(), source })
    }

    /// Loads the layer's state from `path` (PyTorch's names after `prefix`).
    /// On error nothing is written.
    pub fn load_state_dict(&self, path: &Path, prefix: &str) -> Result<()> {
        let bytes = std::fs::read(path).map_err(|source| Error::Io { path: path.display().to_string(), source })?;
        let state = BatchNormState::from_safetensors(&bytes, prefix, self.config()).map_err(|e| match e {
            Error::State(m) => Error::State(format!("{}: {m}", path.display())),
            other => other,
        })?;
        self.write_state(&state)
    }
}
