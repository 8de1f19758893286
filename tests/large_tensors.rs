//! Tensors larger than one storage binding: the op is cut into chunks (whole
//! rows, runs of channels within a row, or pieces of one channel's plane)
//! whose partial statistics merge as one. A device opened with a 1 MiB binding limit makes small tensors
//! "huge", so every cut runs fast; its own binary, with its own device.

use std::sync::OnceLock;

use wgpu_norm::reference::{self, BatchNormArgs, Fused};
use wgpu_norm::{check::normalized_error, BatchNorm, BatchNormConfig, BatchNormState, Context, Layout, Tensor};

const LIMIT: u64 = 1024 * 1024;

fn small_binding_ctx() -> &'static Context {
    static CTX: OnceLock<Context> = OnceLock::new();
    CTX.get_or_init(|| {
        pollster::block_on(async {
            let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
            let adapter = instance
                .request_adapter(&wgpu::RequestAdapterOptions::default())
                .await
                .expect("no wgpu adapter: install mesa-vulkan-drivers (lavapipe)");
            let limits = wgpu::Limits { max_storage_buffer_binding_size: LIMIT, ..wgpu::Limits::default() };
            let (device, queue) = adapter
                .request_device(&wgpu::DeviceDescriptor { required_limits: limits, ..Default::default() })
                .await
                .unwrap();
            Context::from_device(device, queue)
        })
    })
}

fn assert_close(what: &str, got: &[f32], want: &[f64]) {
    let err = normalized_error(got, want);
    assert!(err <= 1e-3, "{what}: normalized error {err:.3e}");
}

fn wave(n: usize, seed: f32, offset: f32) -> Vec<f32> {
    (0..n).map(|i| offset + ((i as f32 * 0.73 + seed) * 1.618).sin() * (1.0 + (i % 7) as f32 * 0.1)).collect()
}

/// |pre-activation| of element i below 1e-4, from the reference's statistics.
fn pre_near_zero(
    f: &reference::BatchNormForward,
    args: &BatchNormArgs,
    x: &[f32],
    z: Option<&[f32]>,
    i: usize,
) -> bool {
    let c = wgpu_norm::ChannelView::of(args.shape, args.layout).channel_of(i);
    let (w, b) = (args.weight.map_or(1.0, |w| w[c]), args.bias.map_or(0.0, |b| b[c]));
    let pre = (f64::from(x[i]) - f.save_mean[c]) * f.save_invstd[c] * f64::from(w)
        + f64::from(b)
        + z.map_or(0.0, |z| f64::from(z[i]));
    pre.abs() < 1e-4
}

fn run(shape: &[usize], layout: Layout) {
    let ctx = small_binding_ctx();
    let c = shape[1];
    let len: usize = shape.iter().product();
    assert!(len as u64 * 4 > LIMIT, "{shape:?} fits one binding: the test would not cut it");
    let (x, z, dy) = (wave(len, 0.3, 2.0), wave(len, 1.1, -0.5), wave(len, 2.9, 0.0));
    let mut state = BatchNormState::initial(c);
    state.weight = wave(c, 0.5, 1.0);
    state.bias = wave(c, 0.9, 0.0);
    let t = |v: &[f32]| Tensor::from_slice(ctx, v, shape, layout).unwrap();
    let (xt, zt) = (t(&x), t(&z));
    let (y, dx, dz) = (t(&vec![0.0; len]), t(&vec![0.0; len]), t(&vec![0.0; len]));
    for (fused, training) in [(Fused::None, true), (Fused::None, false), (Fused::AddRelu, true)] {
        let args = BatchNormArgs {
            weight: Some(&state.weight),
            bias: Some(&state.bias),
            running_mean: Some(&state.running_mean),
            running_var: Some(&state.running_var),
            training,
            fused,
            ..BatchNormArgs::new(shape, layout)
        };
        let zr = (fused == Fused::AddRelu).then_some(&z[..]);
        let f = reference::batch_norm_forward(&args, &x, zr);
        // Behind the ReLU, a value whose pre-activation is within f32 rounding
        // of zero may fall on the other side of the mask than in f64 (a few in
        // a million here); its upstream gradient is zeroed so either side agrees.
        let dy: Vec<f32> = dy
            .iter()
            .enumerate()
            .map(|(i, &g)| {
                if fused != Fused::None && f.y[i].abs() < 1e-4 && pre_near_zero(&f, &args, &x, zr, i) {
                    0.0
                } else {
                    g
                }
            })
            .collect();
        let dyt = t(&dy);
        let bn = BatchNorm::new(ctx, BatchNormConfig::new(c)).unwrap();
        bn.write_state(&state).unwrap();
        ctx.run(|e| match fused {
            Fused::AddRelu => {
                bn.forward_add_relu(e, &xt.view(), &zt.view(), &y.view(), training)?;
                bn.backward_add_relu(e, &xt.view(), &zt.view(), &dyt.view(), &dx.view(), &dz.view(), training)
            }
            _ => {
                bn.forward(e, &xt.view(), &y.view(), training)?;
                bn.backward(e, &xt.view(), &dyt.view(), &dx.view(), training)
            }
        })
        .unwrap();
        let b = reference::batch_norm_backward(&args, &x, zr, &dy);
        let what = |n: &str| format!("{shape:?} {layout:?} {fused:?} training={training} {n}");
        assert_close(&what("y"), &y.read(ctx).unwrap(), &f.y);
        assert_close(&what("dx"), &dx.read(ctx).unwrap(), &b.dx);
        let (dw, db) = bn.read_grads().unwrap();
        assert_close(&what("dweight"), &dw, &b.dweight);
        assert_close(&what("dbias"), &db, &b.dbias);
        let s = bn.read_state().unwrap();
        assert_close(&what("running_var"), &s.running_var, f.running_var.as_ref().unwrap());
        if let Some(want) = &b.dz {
            assert_close(&what("dz"), &dz.read(ctx).unwrap(), want);
        }
    }
}

#[test]
fn cut_into_whole_rows() {
    run(&[64, 4, 1100], Layout::Nchw); // planar, vec4
    run(&[1200, 4, 7, 9], Layout::Nchw); // interleaved, inner 63 (scalar)
    run(&[9, 8, 64, 64], Layout::Nhwc); // channels-last, vec4 lanes are channels
    run(&[1300, 3, 70], Layout::Nhwc); // channels-last, scalar
}

#[test]
fn cut_into_runs_of_channels() {
    // One image's channels exceed the binding: runs of channels.
    run(&[2, 256, 32, 40], Layout::Nchw);
    run(&[3, 700, 401], Layout::Nchw);
}

#[test]
fn cut_single_planes_above_the_limit_into_pieces() {
    // 300,000 values of one channel in one image: no whole plane fits one
    // binding, so each plane is cut into pieces whose partials merge.
    run(&[2, 1, 300_000], Layout::Nchw);
    run(&[2, 3, 270_001], Layout::Nchw); // scalar pieces, planes not a multiple of four
}

#[test]
fn cut_into_runs_of_fewer_than_four_channels() {
    // Planes of 100,000 values: two fit one 1 MiB binding, four do not.
    run(&[1, 6, 100_000], Layout::Nchw);
}
