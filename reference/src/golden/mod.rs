//! Reference cases: one `.safetensors` file per call, with the call's
//! parameters in the header metadata, `F32` input tensors and `F64` expected
//! outputs (format: `tests/golden/README.md`).
//!
//! [`Case::load`] reads a file and never panics on a malformed one: every
//! problem is an [`Error::Case`] naming the file. The `*Case` structs
//! ([`BatchNormCase`], [`LayerNormCase`], …) gather and check the inputs of
//! one op and give the matching [`crate::reference`] arguments;
//! [`reference_outputs`] runs the CPU reference on any case and names its
//! results as the case's expected tensors are named.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

use crate::reference::{
    self, BatchNormArgs, FoldBn, Fused, GroupNormArgs, InstanceNormArgs, LayerNormArgs, RmsNormArgs,
};
use wgpu_norm::{ChannelView, Error, Layout, Result};

mod inputs;

pub use inputs::*;

/// Tensor names that are inputs of some op; every other tensor of a case is
/// an expected output.
pub const INPUT_NAMES: &[&str] =
    &["x", "dy", "z", "weight", "bias", "running_mean", "running_var", "layer_weight", "layer_bias"];

/// One tensor of a case, converted to `f64` whatever its stored dtype.
#[derive(Clone, Debug, PartialEq)]
pub struct CaseTensor {
    /// Shape as stored (physical order: channels-last tensors are `N, H, W, C`).
    pub shape: Vec<usize>,
    /// Values in storage order, converted from `F32` or `F64`.
    pub data: Vec<f64>,
    /// Stored dtype: `"F32"` or `"F64"`.
    pub dtype: String,
}

/// The largest case file [`Case::load`] reads: reference cases are small,
/// and a file's values are held twice (as read, and as f64).
pub const MAX_CASE_BYTES: u64 = 256 << 20;

/// The longest safetensors header (the format's own limit).
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// One reference case loaded from a `.safetensors` file.
#[derive(Clone, Debug)]
pub struct Case {
    /// File stem (`bn_train_nhwc` for `bn_train_nhwc.safetensors`).
    pub name: String,
    /// Path the case was loaded from.
    pub path: PathBuf,
    /// Header metadata: the call's parameters (`op`, `shape`, `eps`, …).
    pub meta: BTreeMap<String, String>,
    tensors: BTreeMap<String, CaseTensor>,
}

impl Case {
    /// Reads and parses a case file. Any problem (unreadable file, not
    /// safetensors, no metadata, no `op` key, a dtype other than F32/F64) is
    /// an [`Error::Case`] naming the file.
    ///
    /// The header is read first and the file's size bounded before the rest
    /// is read: a case of more than [`MAX_CASE_BYTES`], a header longer than
    /// safetensors allows, or something that is not a regular file (a FIFO,
    /// `/dev/zero`) is refused without reading it.
    pub fn load(path: &Path) -> Result<Case> {
        let bad = |message: String| case_error(path, message);
        let mut file = std::fs::File::open(path).map_err(|e| bad(format!("cannot read the file: {e}")))?;
        let meta = file.metadata().map_err(|e| bad(format!("cannot read the file: {e}")))?;
        if !meta.is_file() {
            return Err(bad("not a regular file".into()));
        }
        let mut len = [0u8; 8];
        file.read_exact(&mut len).map_err(|e| bad(format!("not a safetensors file: too short for a header ({e})")))?;
        let header = u64::from_le_bytes(len);
        if header > MAX_HEADER_BYTES || header.saturating_add(8) > meta.len() {
            return Err(bad(format!("not a safetensors file: a header of {header} bytes in a file of {}", meta.len())));
        }
        if meta.len() > MAX_CASE_BYTES {
            return Err(bad(format!(
                "{} bytes of tensors; check reads cases of up to {MAX_CASE_BYTES} bytes",
                meta.len() - 8 - header
            )));
        }
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        bytes.extend_from_slice(&len);
        file.take(meta.len() - 8).read_to_end(&mut bytes).map_err(|e| bad(format!("cannot read the file: {e}")))?;
        Case::parse(path, &bytes)
    }

    /// Parses the bytes of a case file; `path` names it in errors.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Case> {
        let bad = |message: String| case_error(path, message);
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| bad(format!("not a safetensors file: {e}")))?;
        let meta: BTreeMap<String, String> = match header.metadata() {
            Some(m) => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            None => return Err(bad("no metadata in the safetensors header".into())),
        };
        if !meta.contains_key("op") {
            return Err(bad("no `op` key in the metadata".into()));
        }
        let st = SafeTensors::deserialize(bytes).map_err(|e| bad(format!("not a safetensors file: {e}")))?;
        let mut tensors = BTreeMap::new();
        for (name, view) in st.iter() {
            let data: Vec<f64> = match view.dtype() {
                Dtype::F32 => view
                    .data()
                    .chunks_exact(4)
                    .map(|b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
                    .collect(),
                Dtype::F64 => view
                    .data()
                    .chunks_exact(8)
                    .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
                    .collect(),
                other => return Err(bad(format!("tensor {name} has dtype {other}, expected F32 or F64"))),
            };
            let tensor = CaseTensor { shape: view.shape().to_vec(), data, dtype: view.dtype().to_string() };
            tensors.insert(name.to_string(), tensor);
        }
        let name = path.file_stem().map_or_else(|| path.display().to_string(), |s| s.to_string_lossy().into_owned());
        Ok(Case { name, path: path.to_path_buf(), meta, tensors })
    }

    /// The `op` metadata value (`batch_norm`, `layer_norm`, …).
    pub fn op(&self) -> &str {
        self.meta.get("op").map_or("", String::as_str)
    }

    /// The `eps` metadata value, which must be finite and above 0 as the
    /// layers require.
    pub fn meta_eps(&self) -> Result<f64> {
        let eps = self.meta_f64("eps")?;
        if !(eps.is_finite() && eps > 0.0) {
            return Err(self.error(format!("eps = {eps}: expected a finite value above 0")));
        }
        Ok(eps)
    }

    /// An [`Error::Case`] about this case's file.
    pub fn error(&self, message: impl Into<String>) -> Error {
        case_error(&self.path, message.into())
    }

    /// A metadata value; `Error::Case` "missing metadata key X" when absent.
    pub fn meta_str(&self, key: &str) -> Result<&str> {
        self.meta.get(key).map(String::as_str).ok_or_else(|| self.error(format!("missing metadata key {key}")))
    }

    /// A metadata value parsed with `parse`, or an error saying it is not `what`.
    fn meta_parsed<T>(&self, key: &str, what: &str, parse: impl Fn(&str) -> Option<T>) -> Result<T> {
        let v = self.meta_str(key)?;
        parse(v.trim()).ok_or_else(|| self.error(format!("metadata {key} = {v:?} is not {what}")))
    }

    /// A non-negative integer metadata value.
    pub fn meta_usize(&self, key: &str) -> Result<usize> {
        self.meta_parsed(key, "a non-negative integer", |s| s.parse().ok())
    }

    /// A floating-point metadata value (`1e-05`, `0.1`).
    pub fn meta_f64(&self, key: &str) -> Result<f64> {
        self.meta_parsed(key, "a number", |s| s.parse().ok())
    }

    /// A boolean metadata value: `true` or `false` (any case).
    pub fn meta_bool(&self, key: &str) -> Result<bool> {
        self.meta_parsed(key, "true or false", |s| match s.to_ascii_lowercase().as_str() {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        })
    }

    /// A shape metadata value. The golden files write `2,16,4,4` (a single
    /// dimension as `1024`); `[2, 16, 4, 4]` and `(2, 16)` are accepted too,
    /// and `[]` or an empty string is a scalar's empty shape.
    pub fn meta_shape(&self, key: &str) -> Result<Vec<usize>> {
        self.meta_parsed(key, "a shape like 2,3,4", parse_shape)
    }

    /// An optional boolean: `Ok(None)` when `key` is absent.
    pub(crate) fn meta_bool_opt(&self, key: &str) -> Result<Option<bool>> {
        if self.meta.contains_key(key) {
            self.meta_bool(key).map(Some)
        } else {
            Ok(None)
        }
    }

    /// True when the case holds a tensor called `name`.
    pub fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Any tensor of the case, input or expected.
    pub fn tensor(&self, name: &str) -> Option<&CaseTensor> {
        self.tensors.get(name)
    }

    /// An input tensor as `f32`, checked to be stored as F32 and, when
    /// `expected_len` is given, to hold that many values. Errors: "missing
    /// tensor X", "tensor X has N values, expected M", "tensor X is F64, inputs
    /// must be F32" (a float64 input would not be what the GPU gets).
    pub fn input_f32(&self, name: &str, expected_len: Option<usize>) -> Result<Vec<f32>> {
        let t = self.tensors.get(name).ok_or_else(|| self.error(format!("missing tensor {name}")))?;
        if t.dtype != "F32" {
            return Err(self.error(format!("tensor {name} is {}, inputs must be F32", t.dtype)));
        }
        if let Some(len) = expected_len {
            if t.data.len() != len {
                return Err(self.error(format!("tensor {name} has {} values, expected {len}", t.data.len())));
            }
        }
        Ok(t.data.iter().map(|&v| v as f32).collect())
    }

    /// [`Case::input_f32`] for an input that may be absent.
    pub fn input_f32_opt(&self, name: &str, expected_len: usize) -> Result<Option<Vec<f32>>> {
        if self.has(name) {
            self.input_f32(name, Some(expected_len)).map(Some)
        } else {
            Ok(None)
        }
    }

    /// An expected output tensor (any tensor not named in [`INPUT_NAMES`]).
    pub fn expected(&self, name: &str) -> Option<&CaseTensor> {
        if INPUT_NAMES.contains(&name) {
            None
        } else {
            self.tensors.get(name)
        }
    }

    /// Names of the expected output tensors present, sorted.
    pub fn expected_names(&self) -> impl Iterator<Item = &str> {
        self.tensor_names().filter(|n| !INPUT_NAMES.contains(n))
    }

    /// Names of all tensors, inputs and expected outputs, sorted.
    pub fn tensor_names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }
}

/// An [`Error::Case`] naming `path`.
fn case_error(path: &Path, message: String) -> Error {
    Error::Case { file: path.display().to_string(), message }
}

/// Parses `2,3,4`, `[2, 3, 4]`, `(2, 3)`, `16`; `[]` / empty is `[]`. `None`
/// for a malformed shape or one whose element count overflows.
fn parse_shape(s: &str) -> Option<Vec<usize>> {
    let s = s.trim();
    let inner = match (s.chars().next(), s.chars().last()) {
        (Some('['), Some(']')) | (Some('('), Some(')')) => &s[1..s.len() - 1],
        _ => s,
    };
    let parts: Vec<&str> = inner.split(',').map(str::trim).collect();
    if parts.iter().all(|p| p.is_empty()) {
        return Some(Vec::new());
    }
    // A trailing comma, as in Python's `(3,)`, is fine.
    let parts = match parts.split_last() {
        Some((last, rest)) if last.is_empty() && !rest.is_empty() => rest,
        _ => &parts[..],
    };
    let dims: Vec<usize> = parts.iter().map(|p| p.parse().ok()).collect::<Option<_>>()?;
    // A shape whose element count overflows is no shape a case can hold.
    dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d))?;
    Some(dims)
}

/// Expands `paths` into case files: a file is taken as given, a folder gives
/// its `*.safetensors` files (sorted, not recursive). A path that does not
/// exist or a folder that cannot be listed is an `Err` ([`Error::Io`]) naming it,
/// in its place in the list.
pub fn collect_case_files(paths: &[PathBuf]) -> Vec<Result<PathBuf>> {
    let io = |p: &Path, source| Error::Io { path: p.display().to_string(), source };
    let mut out = Vec::new();
    for path in paths {
        match std::fs::metadata(path) {
            Err(e) => out.push(Err(io(path, e))),
            Ok(m) if m.is_dir() => match std::fs::read_dir(path) {
                Err(e) => out.push(Err(io(path, e))),
                Ok(entries) => {
                    let mut files = Vec::new();
                    for entry in entries {
                        match entry {
                            Err(e) => out.push(Err(io(path, e))),
                            Ok(entry) => {
                                let p = entry.path();
                                if p.extension().is_some_and(|e| e == "safetensors") && p.is_file() {
                                    files.push(p);
                                }
                            }
                        }
                    }
                    files.sort();
                    out.extend(files.into_iter().map(Ok));
                }
            },
            Ok(_) => out.push(Ok(path.clone())),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::parse_shape;

    #[test]
    fn shapes_parse_and_overflowing_ones_do_not() {
        assert_eq!(parse_shape("[2, 3, 4]"), Some(vec![2, 3, 4]));
        assert_eq!(parse_shape("(3,)"), Some(vec![3]));
        assert_eq!(parse_shape("[]"), Some(vec![]));
        assert_eq!(parse_shape("[4, 3, 6148914691236517206]"), None, "4 * 3 * that overflows");
        assert_eq!(parse_shape("[4, x]"), None);
    }
}
