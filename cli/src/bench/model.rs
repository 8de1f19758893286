//! Real networks' normalization layers for `wgpu-norm bench --model`:
//! torchvision's ResNet-50 (its 53 BatchNorm layers at 224x224, fused where
//! the network applies ReLU or adds the residual) and transformer LayerNorm
//! and RMSNorm rows, with the totals a training step and an inference pass
//! spend in them.

use wgpu_norm::{Error, Layout, Result};

use super::{BenchResult, Job, Op};

/// A preset network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Model {
    /// torchvision's `resnet50` at 224x224 with this batch size.
    Resnet50 { batch: usize },
    /// LayerNorm and RMSNorm over `[tokens, hidden]` for the hidden sizes
    /// of BERT-base (768), GPT-2 medium (1024) and Llama 7B (4096).
    Transformer { tokens: usize },
}

/// Default batch of `--model resnet50`.
pub const DEFAULT_BATCH: usize = 32;
/// Default tokens of `--model transformer`.
pub const DEFAULT_TOKENS: usize = 8192;

/// One normalization layer of a model: its ops of a training step (their
/// medians add up to `train_step_ms`) and its op of inference (`eval_ms`).
#[derive(Clone, Debug, PartialEq)]
pub struct Layer {
    pub name: String,
    pub shape: Vec<usize>,
    pub train: Vec<Op>,
    pub eval: Op,
}

/// What a BatchNorm layer of ResNet-50 is followed by.
#[derive(Clone, Copy)]
enum Tail {
    /// The conv of a downsample branch: nothing (its output is a residual).
    None,
    Relu,
    /// A block's last BatchNorm: the residual is added, then ReLU.
    AddRelu,
}

fn bn_layer(name: String, shape: [usize; 4], tail: Tail) -> Layer {
    let (train, eval) = match tail {
        Tail::None => (Op::BnTrainStep, Op::BnForwardEval),
        Tail::Relu => (Op::BnReluTrainStep, Op::BnReluForwardEval),
        Tail::AddRelu => (Op::BnAddReluTrainStep, Op::BnAddReluForwardEval),
    };
    Layer { name, shape: shape.to_vec(), train: vec![train], eval }
}

impl Model {
    /// `--model NAME` with `--batch` / `--tokens`, each only where it means
    /// something.
    pub fn parse(name: &str, batch: Option<usize>, tokens: Option<usize>) -> Result<Model> {
        let positive = |what: &str, v: usize| {
            if v == 0 {
                Err(Error::Parameter(format!("--{what} must be at least 1")))
            } else {
                Ok(v)
            }
        };
        match name {
            "resnet50" if tokens.is_some() => {
                Err(Error::Parameter("--tokens is for --model transformer; resnet50 takes --batch".into()))
            }
            "resnet50" => Ok(Model::Resnet50 { batch: positive("batch", batch.unwrap_or(DEFAULT_BATCH))? }),
            "transformer" if batch.is_some() => {
                Err(Error::Parameter("--batch is for --model resnet50; transformer takes --tokens".into()))
            }
            "transformer" => Ok(Model::Transformer { tokens: positive("tokens", tokens.unwrap_or(DEFAULT_TOKENS))? }),
            _ => Err(Error::Parameter(format!("unknown model {name:?}; models: resnet50, transformer"))),
        }
    }

    /// `resnet50` or `transformer`.
    pub fn name(self) -> &'static str {
        match self {
            Model::Resnet50 { .. } => "resnet50",
            Model::Transformer { .. } => "transformer",
        }
    }

    /// The model's normalization layers, in the network's order.
    pub fn layers(self) -> Vec<Layer> {
        match self {
            Model::Resnet50 { batch } => resnet50(batch),
            Model::Transformer { tokens } => [(768, "bert_base"), (1024, "gpt2_medium"), (4096, "llama_7b")]
                .into_iter()
                .flat_map(|(hidden, model)| {
                    [(Op::LnForward, Op::LnBackward, "layer_norm"), (Op::RmsForward, Op::RmsBackward, "rms_norm")]
                        .into_iter()
                        .map(move |(forward, backward, norm)| Layer {
                            name: format!("{model}.{norm}.{hidden}"),
                            shape: vec![tokens, hidden],
                            train: vec![forward, backward],
                            eval: forward,
                        })
                })
                .collect(),
        }
    }

    /// Every layer's ops in each layout (LayerNorm and RMSNorm, which
    /// ignore the layout, under the first only), each op once per layer.
    pub(super) fn jobs(self, layouts: &[Layout]) -> Vec<Job> {
        let mut jobs = Vec::new();
        for &layout in layouts {
            for layer in self.layers() {
                let mut ops = layer.train.clone();
                if !ops.contains(&layer.eval) {
                    ops.push(layer.eval);
                }
                for op in ops {
                    if !(op.ignores_layout() && layout != layouts[0]) {
                        let name = Some(layer.name.clone());
                        jobs.push(Job { op, shape: layer.shape.clone(), layout, layer: name });
                    }
                }
            }
        }
        jobs
    }

    /// The totals of `results`, one set per layout the model ran in.
    pub fn summarize(self, results: &[BenchResult], layouts: &[Layout]) -> ModelSummary {
        let layers = self.layers();
        let mut totals = Vec::new();
        for &layout in layouts {
            let find = |layer: &Layer, op: Op| {
                results.iter().find(|r| {
                    r.layer.as_deref() == Some(layer.name.as_str()) && r.op == op.name() && {
                        r.layout == layout || op.ignores_layout()
                    }
                })
            };
            let mut t = LayoutTotals { layout, ..LayoutTotals::default() };
            let mut measured = 0;
            for layer in &layers {
                let train: Vec<_> = layer.train.iter().filter_map(|&op| find(layer, op)).collect();
                let eval = find(layer, layer.eval);
                if let (true, Some(eval)) = (train.len() == layer.train.len(), eval) {
                    measured += 1;
                    t.train_step_ms += train.iter().map(|r| r.median_ms).sum::<f64>();
                    t.train_step_copy_ms += train.iter().map(|r| r.copy_ms).sum::<f64>();
                    t.eval_ms += eval.median_ms;
                    t.eval_copy_ms += eval.copy_ms;
                    t.record_us += train.iter().map(|r| r.record_us).sum::<f64>();
                    t.dispatches += train.iter().map(|r| r.dispatches).sum::<u64>();
                }
            }
            t.complete = measured == layers.len();
            // A model of layout-free layers has one set of totals.
            if layers.iter().all(|l| l.eval.ignores_layout()) && !totals.is_empty() {
                break;
            }
            totals.push(t);
        }
        let (size_name, size) = match self {
            Model::Resnet50 { batch } => ("batch", batch),
            Model::Transformer { tokens } => ("tokens", tokens),
        };
        ModelSummary { name: self.name(), size_name, size, layers: layers.len(), totals }
    }
}

/// torchvision's `resnet50` BatchNorm layers at 224x224: `bn1` after the
/// stem, then per bottleneck block `bn1` and `bn2` (ReLU after each), `bn3`
/// (residual added, then ReLU) and, in each stage's first block,
/// `downsample.1`. The stride is on the 3x3 conv (ResNet v1.5), so a
/// stage's first `bn1` runs at the previous stage's resolution.
fn resnet50(n: usize) -> Vec<Layer> {
    let mut layers = vec![bn_layer("bn1".into(), [n, 64, 112, 112], Tail::Relu)];
    let mut side = 56;
    for (stage, (blocks, planes)) in [(3, 64), (4, 128), (6, 256), (3, 512)].into_iter().enumerate() {
        let (input_side, out_side) = (side, if stage == 0 { side } else { side / 2 });
        for block in 0..blocks {
            let name = |bn: &str| format!("layer{}.{block}.{bn}", stage + 1);
            let first_side = if block == 0 { input_side } else { out_side };
            layers.push(bn_layer(name("bn1"), [n, planes, first_side, first_side], Tail::Relu));
            layers.push(bn_layer(name("bn2"), [n, planes, out_side, out_side], Tail::Relu));
            layers.push(bn_layer(name("bn3"), [n, planes * 4, out_side, out_side], Tail::AddRelu));
            if block == 0 {
                layers.push(bn_layer(name("downsample.1"), [n, planes * 4, out_side, out_side], Tail::None));
            }
        }
        side = out_side;
    }
    layers
}

/// A model's totals in one layout: sums over its layers of the medians of
/// their training-step ops and their inference op, and of the copies over
/// the same bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct LayoutTotals {
    pub layout: Layout,
    pub train_step_ms: f64,
    pub eval_ms: f64,
    pub train_step_copy_ms: f64,
    pub eval_copy_ms: f64,
    /// Host time to record the training step's ops, all layers.
    pub record_us: f64,
    /// Dispatches of the training step, all layers.
    pub dispatches: u64,
    /// Whether every layer was measured (none skipped).
    pub complete: bool,
}

impl Default for LayoutTotals {
    fn default() -> LayoutTotals {
        LayoutTotals {
            layout: Layout::Nchw,
            train_step_ms: 0.0,
            eval_ms: 0.0,
            train_step_copy_ms: 0.0,
            eval_copy_ms: 0.0,
            record_us: 0.0,
            dispatches: 0,
            complete: false,
        }
    }
}

/// What `--model` adds to the report.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSummary {
    pub name: &'static str,
    /// `batch` or `tokens`.
    pub size_name: &'static str,
    pub size: usize,
    pub layers: usize,
    /// One per layout run, the first of `--layouts` first.
    pub totals: Vec<LayoutTotals>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resnet50_has_torchvisions_53_layers() {
        let layers = Model::Resnet50 { batch: 2 }.layers();
        assert_eq!(layers.len(), 53);
        let get = |name: &str| layers.iter().find(|l| l.name == name).unwrap_or_else(|| panic!("no {name}"));
        assert_eq!(layers[0].name, "bn1");
        assert_eq!(layers[52].name, "layer4.2.bn3");
        assert_eq!(get("bn1").shape, [2, 64, 112, 112]);
        assert_eq!(get("layer1.0.bn1").shape, [2, 64, 56, 56]);
        assert_eq!(get("layer1.0.downsample.1").shape, [2, 256, 56, 56]);
        // v1.5: a stage's first bn1 at the old resolution, bn2 at the new.
        assert_eq!(get("layer2.0.bn1").shape, [2, 128, 56, 56]);
        assert_eq!(get("layer2.0.bn2").shape, [2, 128, 28, 28]);
        assert_eq!(get("layer3.5.bn3").shape, [2, 1024, 14, 14]);
        assert_eq!(get("layer4.0.bn1").shape, [2, 512, 14, 14]);
        assert_eq!(get("layer4.2.bn3").shape, [2, 2048, 7, 7]);
        assert_eq!(layers.iter().filter(|l| l.name.ends_with("downsample.1")).count(), 4);
        assert_eq!(get("layer3.2.bn3").train, [Op::BnAddReluTrainStep]);
        assert_eq!(get("layer3.2.bn2").eval, Op::BnReluForwardEval);
        assert_eq!(get("layer3.0.downsample.1").eval, Op::BnForwardEval);
        let unique: std::collections::HashSet<_> = layers.iter().map(|l| &l.name).collect();
        assert_eq!(unique.len(), 53);
    }

    #[test]
    fn transformer_runs_both_norms_on_three_widths() {
        let layers = Model::Transformer { tokens: 16 }.layers();
        assert_eq!(layers.len(), 6);
        for hidden in [768, 1024, 4096] {
            for op in [Op::LnForward, Op::RmsForward] {
                assert!(layers.iter().any(|l| l.shape == [16, hidden] && l.eval == op), "{hidden} {op:?}");
            }
        }
        // Layout-free: one job per op, whatever the layouts.
        let jobs = Model::Transformer { tokens: 16 }.jobs(&[Layout::Nchw, Layout::Nhwc]);
        assert_eq!(jobs.len(), 12);
    }

    #[test]
    fn options_are_checked() {
        assert_eq!(Model::parse("resnet50", None, None).unwrap(), Model::Resnet50 { batch: 32 });
        assert_eq!(Model::parse("transformer", None, Some(64)).unwrap(), Model::Transformer { tokens: 64 });
        assert!(Model::parse("resnet50", Some(0), None).is_err());
        assert!(Model::parse("resnet50", None, Some(8)).is_err());
        assert!(Model::parse("transformer", Some(8), None).is_err());
        assert!(Model::parse("vgg16", None, None).is_err());
    }
}
