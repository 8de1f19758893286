//! Many threads on one context: the context and the ops are Send + Sync, and
//! concurrent forward + backward calls each get their own correct results.

mod common;

use common::{assert_close, ctx, Rng};
use wgpu_norm::{BatchNorm, BatchNormConfig, Context, Epilogue, Layout, Mode, Tensor};
use wgpu_norm_reference::reference::{self, BatchNormArgs};

fn assert_send_sync<T: Send + Sync>() {}

#[test]
fn context_and_ops_are_send_and_sync() {
    assert_send_sync::<Context>();
    assert_send_sync::<BatchNorm>();
    assert_send_sync::<Tensor>();
}

#[test]
fn threads_share_a_context_and_a_layer_in_eval_mode() {
    let ctx = ctx();
    // One shared layer in eval mode (its state is only read) plus one training
    // layer per thread; every thread checks its own results.
    let shared = BatchNorm::new(ctx, BatchNormConfig::new(5)).unwrap();
    std::thread::scope(|s| {
        for t in 0..6u64 {
            let shared = &shared;
            s.spawn(move || {
                let mut rng = Rng(100 + t);
                let own = BatchNorm::new(ctx, BatchNormConfig::new(5)).unwrap();
                let layout = if t % 2 == 0 { Layout::Nchw } else { Layout::Nhwc };
                let shape = [3 + t as usize, 5, 7];
                let len: usize = shape.iter().product();
                for round in 0..5 {
                    let x = rng.normal_vec(len, t as f32, 1.0 + round as f32);
                    let dy = rng.normal_vec(len, 0.0, 1.0);
                    let xt = Tensor::from_slice(ctx, &x, &shape, layout).unwrap();
                    let dyt = Tensor::from_slice(ctx, &dy, &shape, layout).unwrap();
                    let (y, dx, ye) = (
                        Tensor::zeros(ctx, &shape, layout).unwrap(),
                        Tensor::zeros(ctx, &shape, layout).unwrap(),
                        Tensor::zeros(ctx, &shape, layout).unwrap(),
                    );
                    ctx.run(|e| {
                        own.forward(e, &xt.view(), &y.view(), Mode::Training, Epilogue::None)?;
                        own.backward(e, &xt.view(), &dyt.view(), &dx.view(), Mode::Training, Epilogue::None)?;
                        shared.forward(e, &xt.view(), &ye.view(), Mode::Eval, Epilogue::None)
                    })
                    .unwrap();
                    let args = BatchNormArgs::new(&shape, layout);
                    let what = format!("thread {t} round {round}");
                    assert_close(&what, &y.read(ctx).unwrap(), &reference::batch_norm_forward(&args, &x, None).y);
                    let want_dx = reference::batch_norm_backward(&args, &x, None, &dy).dx;
                    assert_close(&what, &dx.read(ctx).unwrap(), &want_dx);
                    let eval = BatchNormArgs {
                        running_mean: Some(&[0.0; 5]),
                        running_var: Some(&[1.0; 5]),
                        training: false,
                        ..args
                    };
                    assert_close(&what, &ye.read(ctx).unwrap(), &reference::batch_norm_forward(&eval, &x, None).y);
                }
            });
        }
    });
}
