//! The hostile matrix (issue #17): every op's every tensor argument spoiled
//! in each of the ways a careless or hostile caller can spoil it. Each case
//! asserts the error's kind, that every output and every layer's state
//! (parameters, running and saved statistics, gradients) is untouched
//! (sentinels read back), and that the caller's encoder still finishes and
//! submits.

mod common;

use common::ctx;
use wgpu_norm::{
    BatchNorm, BatchNormConfig, Context, DType, Epilogue, Error, GroupNorm, GroupNormConfig, InstanceNorm,
    InstanceNormConfig, LayerNorm, LayerNormConfig, Layout, Mode, RmsNorm, RmsNormConfig, Tensor, TensorView,
};

const SENTINEL: f32 = -7.25;
const SHAPE: [usize; 3] = [2, 4, 3];
const LEN: usize = 24;

/// The tensor roles an op can take, in this order.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Role {
    X,
    Dy,
    Z,
    Y,
    Dx,
    Dz,
}

impl Role {
    fn is_output(self) -> bool {
        matches!(self, Role::Y | Role::Dx | Role::Dz)
    }
}

/// The ways one tensor argument is spoiled.
#[derive(Clone, Copy, Debug)]
enum Spoil {
    /// Another shape: fewer values.
    FewerValues,
    /// Five channels where the layer has four.
    OtherChannels,
    /// Rank 1, and rank 6.
    Rank1,
    Rank6,
    /// Channels-last where the other tensors are channels-second.
    OtherLayout,
    /// f16 among f32 tensors.
    OtherDtype,
    /// A byte offset that is not a multiple of the element size.
    MisalignedOffset,
    /// A view running past the end of its buffer.
    PastTheEnd,
    /// A buffer without STORAGE usage.
    NoStorage,
    /// A destroyed buffer.
    Destroyed,
    /// A buffer of another context's device.
    OtherDevice,
    /// An output in the same buffer as x (or an input in an output's).
    Aliased,
    /// A shape whose size overflows.
    Overflowing,
}

const SPOILS: [Spoil; 13] = [
    Spoil::FewerValues,
    Spoil::OtherChannels,
    Spoil::Rank1,
    Spoil::Rank6,
    Spoil::OtherLayout,
    Spoil::OtherDtype,
    Spoil::MisalignedOffset,
    Spoil::PastTheEnd,
    Spoil::NoStorage,
    Spoil::Destroyed,
    Spoil::OtherDevice,
    Spoil::Aliased,
    Spoil::Overflowing,
];

impl Spoil {
    /// Whether `err` is the error this spoil must give.
    fn expected(self, err: &Error) -> bool {
        match self {
            Spoil::FewerValues | Spoil::OtherChannels | Spoil::Rank1 | Spoil::Rank6 | Spoil::OtherLayout => {
                matches!(err, Error::Shape(_))
            }
            Spoil::OtherDtype => matches!(err, Error::Parameter(_)),
            Spoil::MisalignedOffset | Spoil::PastTheEnd | Spoil::NoStorage | Spoil::Aliased => {
                matches!(err, Error::Buffer(_))
            }
            Spoil::Destroyed | Spoil::OtherDevice => matches!(err, Error::Validation(_)),
            Spoil::Overflowing => matches!(err, Error::Shape(_) | Error::Buffer(_)),
        }
    }
}

/// Every layer the matrix calls, each after one good forward so that its
/// backward has statistics to use.
struct Layers {
    bn: BatchNorm,
    ln: LayerNorm,
    rms: RmsNorm,
    gn: GroupNorm,
    inorm: InstanceNorm,
}

/// Everything a call could change, read back.
#[derive(Debug, PartialEq)]
struct Snapshot(Vec<Vec<f32>>);

impl Layers {
    fn new(ctx: &Context, x: &Tensor) -> Layers {
        let layers = Layers {
            bn: BatchNorm::new(ctx, BatchNormConfig::new(4)).unwrap(),
            ln: LayerNorm::new(ctx, LayerNormConfig::new(&[3])).unwrap(),
            rms: RmsNorm::new(ctx, RmsNormConfig::new(&[3])).unwrap(),
            gn: GroupNorm::new(ctx, GroupNormConfig::new(2, 4)).unwrap(),
            inorm: InstanceNorm::new(ctx, InstanceNormConfig::new(4).track_running_stats(true)).unwrap(),
        };
        let y = Tensor::zeros(ctx, &SHAPE, Layout::Nchw).unwrap();
        let (x, y) = (&x.view(), &y.view());
        ctx.run(|e| {
            layers.bn.forward(e, x, y, Mode::Training, Epilogue::None)?;
            layers.ln.forward(e, x, y)?;
            layers.rms.forward(e, x, y)?;
            layers.gn.forward(e, x, y)?;
            layers.inorm.forward(e, x, y, true)
        })
        .unwrap();
        layers
    }

    fn snapshot(&self) -> Snapshot {
        let bn = self.bn.read_state().unwrap();
        let (mean, invstd) = self.bn.read_saved().unwrap();
        let mut all = vec![bn.weight, bn.bias, bn.running_mean, bn.running_var, mean, invstd];
        all.push(vec![bn.num_batches_tracked as f32]);
        for affine in [self.bn.affine(), self.ln.affine(), self.rms.affine(), self.gn.affine(), self.inorm.affine()] {
            let (w, b) = affine.read().unwrap();
            let (dw, db) = affine.read_grads().unwrap();
            all.extend([w, b, dw, db]);
        }
        let (m, r) = self.ln.read_saved().unwrap();
        all.extend([m, r, self.rms.read_saved().unwrap()]);
        let (m, r) = self.gn.read_saved().unwrap();
        all.extend([m, r]);
        let s = self.inorm.read_state().unwrap();
        all.extend([s.running_mean, s.running_var]);
        Snapshot(all)
    }
}

/// One op of the matrix: its name, its roles, and how to call it with one
/// view per role (in the order of `roles`).
struct Op {
    name: &'static str,
    roles: &'static [Role],
    call: fn(&Layers, &mut wgpu::CommandEncoder, &[TensorView]) -> wgpu_norm::Result<()>,
}

const OPS: [Op; 15] = [
    Op {
        name: "bn forward training",
        roles: &[Role::X, Role::Y],
        call: |l, e, t| l.bn.forward(e, &t[0], &t[1], Mode::Training, Epilogue::None),
    },
    Op {
        name: "bn forward eval",
        roles: &[Role::X, Role::Y],
        call: |l, e, t| l.bn.forward(e, &t[0], &t[1], Mode::Eval, Epilogue::None),
    },
    Op {
        name: "bn forward relu",
        roles: &[Role::X, Role::Y],
        call: |l, e, t| l.bn.forward(e, &t[0], &t[1], Mode::Training, Epilogue::Relu),
    },
    Op {
        name: "bn forward add-relu",
        roles: &[Role::X, Role::Z, Role::Y],
        call: |l, e, t| l.bn.forward(e, &t[0], &t[2], Mode::Eval, Epilogue::AddRelu { z: &t[1], dz: None }),
    },
    Op {
        name: "bn backward training",
        roles: &[Role::X, Role::Dy, Role::Dx],
        call: |l, e, t| l.bn.backward(e, &t[0], &t[1], &t[2], Mode::Training, Epilogue::None),
    },
    Op {
        name: "bn backward eval",
        roles: &[Role::X, Role::Dy, Role::Dx],
        call: |l, e, t| l.bn.backward(e, &t[0], &t[1], &t[2], Mode::Eval, Epilogue::Relu),
    },
    Op {
        name: "bn backward add-relu",
        roles: &[Role::X, Role::Dy, Role::Z, Role::Dx, Role::Dz],
        call: |l, e, t| {
            l.bn.backward(e, &t[0], &t[1], &t[3], Mode::Training, Epilogue::AddRelu { z: &t[2], dz: Some(&t[4]) })
        },
    },
    Op { name: "ln forward", roles: &[Role::X, Role::Y], call: |l, e, t| l.ln.forward(e, &t[0], &t[1]) },
    Op {
        name: "ln backward",
        roles: &[Role::X, Role::Dy, Role::Dx],
        call: |l, e, t| l.ln.backward(e, &t[0], &t[1], &t[2]),
    },
    Op { name: "rms forward", roles: &[Role::X, Role::Y], call: |l, e, t| l.rms.forward(e, &t[0], &t[1]) },
    Op {
        name: "rms backward",
        roles: &[Role::X, Role::Dy, Role::Dx],
        call: |l, e, t| l.rms.backward(e, &t[0], &t[1], &t[2]),
    },
    Op { name: "gn forward", roles: &[Role::X, Role::Y], call: |l, e, t| l.gn.forward(e, &t[0], &t[1]) },
    Op {
        name: "gn backward",
        roles: &[Role::X, Role::Dy, Role::Dx],
        call: |l, e, t| l.gn.backward(e, &t[0], &t[1], &t[2]),
    },
    Op { name: "in forward eval", roles: &[Role::X, Role::Y], call: |l, e, t| l.inorm.forward(e, &t[0], &t[1], false) },
    Op {
        name: "in backward",
        roles: &[Role::X, Role::Dy, Role::Dx],
        call: |l, e, t| l.inorm.backward(e, &t[0], &t[1], &t[2], true),
    },
];

/// A buffer of `len` f32 sentinels with `usage`.
fn sentinels(ctx: &Context, len: usize, usage: wgpu::BufferUsages) -> wgpu::Buffer {
    use wgpu::util::DeviceExt;
    ctx.device().create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("hostile sentinels"),
        contents: bytemuck::cast_slice(&vec![SENTINEL; len]),
        usage,
    })
}

fn storage() -> wgpu::BufferUsages {
    wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST
}

#[test]
fn every_spoiled_argument_of_every_op_is_refused_cleanly() {
    let ctx = ctx();
    let other = Context::new().unwrap();
    let data: Vec<f32> = (0..LEN).map(|i| (i as f32 * 0.37).sin() + 0.1 * i as f32).collect();
    let x = Tensor::from_slice(ctx, &data, &SHAPE, Layout::Nchw).unwrap();
    let layers = Layers::new(ctx, &x);
    let before = layers.snapshot();
    let mut cases = 0;
    for op in &OPS {
        for (k, &role) in op.roles.iter().enumerate() {
            for spoil in SPOILS {
                // Fresh tensors: inputs hold data, outputs sentinels.
                let good: Vec<wgpu::Buffer> = op
                    .roles
                    .iter()
                    .map(|r| {
                        let b = sentinels(ctx, LEN, storage());
                        if !r.is_output() {
                            ctx.queue().write_buffer(&b, 0, bytemuck::cast_slice(&data));
                        }
                        b
                    })
                    .collect();
                let big = sentinels(ctx, 40, storage());
                let short = sentinels(ctx, LEN - 4, storage());
                let unbound = sentinels(ctx, LEN, wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST);
                let dead = sentinels(ctx, LEN, storage());
                dead.destroy();
                let foreign = sentinels(&other, LEN, storage());
                let mut views: Vec<TensorView> = good.iter().map(|b| TensorView::new(b, &SHAPE)).collect();
                // An output shares x's buffer; an input shares the first output's.
                let first_output = op.roles.iter().position(|r| r.is_output()).unwrap();
                let aliased_with = if role.is_output() { 0 } else { first_output };
                views[k] = match spoil {
                    Spoil::FewerValues => TensorView::new(&good[k], &[2, 4, 2]),
                    Spoil::OtherChannels => TensorView::new(&big, &[2, 5, 3]),
                    Spoil::Rank1 => TensorView::new(&good[k], &[LEN]),
                    Spoil::Rank6 => TensorView::new(&good[k], &[1, 2, 4, 1, 3, 1]),
                    Spoil::OtherLayout => TensorView::new(&good[k], &SHAPE).with_layout(Layout::Nhwc),
                    Spoil::OtherDtype => TensorView::new(&good[k], &SHAPE).with_dtype(DType::F16),
                    Spoil::MisalignedOffset => TensorView::new(&big, &SHAPE).at_offset(2),
                    Spoil::PastTheEnd => TensorView::new(&short, &SHAPE),
                    Spoil::NoStorage => TensorView::new(&unbound, &SHAPE),
                    Spoil::Destroyed => TensorView::new(&dead, &SHAPE),
                    Spoil::OtherDevice => TensorView::new(&foreign, &SHAPE),
                    Spoil::Aliased => TensorView::new(&good[aliased_with], &SHAPE),
                    Spoil::Overflowing => TensorView::new(&good[k], &[1 << 40, 4, 1 << 40]),
                };
                let what = format!("{} with {role:?} {spoil:?}", op.name);
                let mut encoder = ctx.device().create_command_encoder(&Default::default());
                let result = (op.call)(&layers, &mut encoder, &views);
                ctx.scoped(|| Ok(ctx.queue().submit([encoder.finish()])))
                    .unwrap_or_else(|e| panic!("{what}: the caller's encoder no longer submits: {e}"));
                ctx.wait(None).unwrap();
                let err = result.err().unwrap_or_else(|| panic!("{what}: returned Ok"));
                assert!(spoil.expected(&err), "{what}: the wrong error: {err}");
                for (r, b) in op.roles.iter().zip(&good) {
                    if r.is_output() {
                        let values: Vec<f32> = ctx.read(b, 0, LEN).unwrap();
                        assert!(values.iter().all(|&v| v == SENTINEL), "{what}: {r:?} was written");
                    }
                }
                if role.is_output() {
                    let spoiled: Vec<f32> = match spoil {
                        Spoil::OtherDevice => other.read(&foreign, 0, LEN).unwrap(),
                        Spoil::OtherChannels | Spoil::MisalignedOffset => ctx.read(&big, 0, 40).unwrap(),
                        Spoil::PastTheEnd => ctx.read(&short, 0, LEN - 4).unwrap(),
                        _ => Vec::new(),
                    };
                    assert!(spoiled.iter().all(|&v| v == SENTINEL), "{what}: the spoiled output was written");
                }
                assert!(layers.snapshot() == before, "{what}: a layer's state changed");
                cases += 1;
            }
        }
    }
    eprintln!("{cases} hostile cases refused cleanly");
    assert!(cases >= 150, "{cases} cases");
}
