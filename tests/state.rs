//! BatchNorm state through safetensors with PyTorch's state_dict names.

mod common;

use std::collections::HashMap;

use common::{ctx, Rng};
use safetensors::tensor::TensorView as StView;
use safetensors::Dtype;
use wgpu_norm::{BatchNorm, BatchNormConfig, BatchNormState, Error};

fn temp(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("wgpu-norm-state-{}-{name}", std::process::id()))
}

fn random_state(c: usize, rng: &mut Rng) -> BatchNormState {
    BatchNormState {
        weight: rng.normal_vec(c, 1.0, 0.2),
        bias: rng.normal_vec(c, 0.0, 0.2),
        running_mean: rng.normal_vec(c, 0.0, 1.0),
        running_var: (0..c).map(|_| 0.5 + rng.uniform() as f32).collect(),
        num_batches_tracked: 1234,
    }
}

#[test]
fn round_trip_through_a_file_with_a_prefix() {
    let mut rng = Rng(3);
    let state = random_state(6, &mut rng);
    let a = BatchNorm::new(ctx(), BatchNormConfig::new(6)).unwrap();
    a.write_state(&state).unwrap();
    let path = temp("roundtrip.safetensors");
    a.save_state_dict(&path, "layer1.0.bn1.").unwrap();
    let b = BatchNorm::new(ctx(), BatchNormConfig::new(6)).unwrap();
    b.load_state_dict(&path, "layer1.0.bn1.").unwrap();
    assert_eq!(b.read_state().unwrap(), state);
    // The file holds exactly PyTorch's names, the counter as an I64 scalar.
    let bytes = std::fs::read(&path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names = file.names();
    names.sort();
    let want =
        ["bias", "num_batches_tracked", "running_mean", "running_var", "weight"].map(|n| format!("layer1.0.bn1.{n}"));
    assert_eq!(names, want.iter().map(String::as_str).collect::<Vec<_>>());
    let counter = file.tensor("layer1.0.bn1.num_batches_tracked").unwrap();
    assert_eq!((counter.dtype(), counter.shape()), (Dtype::I64, &[][..]));
}

#[test]
fn a_layer_without_affine_or_tracking_saves_only_what_pytorch_has() {
    let config = BatchNormConfig::new(3).affine(false);
    let bytes = BatchNormState::initial(3).to_safetensors("", &config).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert!(file.tensor("weight").is_err() && file.tensor("running_var").is_ok());
    let config = BatchNormConfig::new(3).track_running_stats(false);
    let bytes = BatchNormState::initial(3).to_safetensors("", &config).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert!(file.tensor("weight").is_ok() && file.tensor("num_batches_tracked").is_err());
}

fn file_with(tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
    let views: Vec<(&str, StView)> =
        tensors.iter().map(|(n, d, s, b)| (*n, StView::new(*d, s.clone(), b).unwrap())).collect();
    safetensors::serialize(views, Some(HashMap::new())).unwrap()
}

#[test]
fn missing_or_misshaped_tensors_are_named_and_nothing_is_written() {
    let f32s = |v: &[f32]| bytemuck::cast_slice::<f32, u8>(v).to_vec();
    let bn = BatchNorm::new(ctx(), BatchNormConfig::new(2)).unwrap();
    let before = bn.read_state().unwrap();
    let missing = file_with(&[
        ("bn.weight", Dtype::F32, vec![2], f32s(&[1.0, 2.0])),
        ("bn.bias", Dtype::F32, vec![2], f32s(&[0.0, 0.0])),
        ("bn.running_mean", Dtype::F32, vec![2], f32s(&[0.0, 0.0])),
    ]);
    let path = temp("missing.safetensors");
    std::fs::write(&path, &missing).unwrap();
    let err = bn.load_state_dict(&path, "bn.").unwrap_err();
    assert!(matches!(&err, Error::State(m) if m.contains("bn.running_var")), "{err}");
    let wrong = file_with(&[
        ("weight", Dtype::F32, vec![3], f32s(&[1.0, 2.0, 3.0])),
        ("bias", Dtype::F32, vec![2], f32s(&[0.0, 0.0])),
        ("running_mean", Dtype::F32, vec![2], f32s(&[0.0, 0.0])),
        ("running_var", Dtype::F32, vec![2], f32s(&[1.0, 1.0])),
    ]);
    std::fs::write(&path, &wrong).unwrap();
    let err = bn.load_state_dict(&path, "").unwrap_err();
    assert!(matches!(&err, Error::State(m) if m.contains("weight") && m.contains("[3]")), "{err}");
    assert!(matches!(bn.load_state_dict(&temp("absent.safetensors"), ""), Err(Error::Io { .. })));
    std::fs::write(&path, b"garbage").unwrap();
    assert!(matches!(bn.load_state_dict(&path, ""), Err(Error::State(_))));
    assert_eq!(bn.read_state().unwrap(), before);
}
