//! Wall-clock timing of the family's forward and backward over short, medium
//! and long rows (submit + wait per call, best of several): a quick check
//! that the kernel shape chosen by row length keeps every row length fast.
//! `cargo run --release --example family_timing [scale]` (scale divides the
//! sizes; default 1, use 8 or more on a CPU adapter).

use std::time::Instant;

use wgpu_norm::{
    Context, GroupNorm, GroupNormConfig, LayerNorm, LayerNormConfig, Layout, RmsNorm, RmsNormConfig, Tensor,
};

fn best(mut f: impl FnMut()) -> f64 {
    f();
    (0..5)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn report(name: &str, len: usize, fwd: f64, bwd: f64) {
    // Forward reads x twice and writes y; backward reads x and dy three times and writes dx.
    let gb = |passes: usize, s: f64| (len * 4 * passes) as f64 / s / 1e9;
    println!(
        "{name:<36} fwd {:>8.3} ms ({:>6.1} GB/s)  bwd {:>8.3} ms ({:>6.1} GB/s)",
        fwd * 1e3,
        gb(3, fwd),
        bwd * 1e3,
        gb(7, bwd)
    );
}

fn main() -> wgpu_norm::Result<()> {
    let scale: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(1);
    let ctx = Context::new()?;
    println!("adapter: {}", ctx.adapter_info().name);
    let total = (1 << 24) / scale;
    for d in [32, 64, 200, 1024, 20000, 1 << 20] {
        let d = d.min(total);
        let rows = total / d;
        let shape = [rows, d];
        let x = Tensor::from_slice(&ctx, &vec![1.5; rows * d], &shape, Layout::Nchw)?;
        let y = Tensor::zeros(&ctx, &shape, Layout::Nchw)?;
        let dx = Tensor::zeros(&ctx, &shape, Layout::Nchw)?;
        let ln = LayerNorm::new(&ctx, LayerNormConfig::new(&[d]))?;
        let fwd = best(|| ln.context().run(|e| ln.forward(e, &x.view(), &y.view())).unwrap());
        let bwd = best(|| ln.context().run(|e| ln.backward(e, &x.view(), &y.view(), &dx.view())).unwrap());
        report(&format!("layer_norm {rows} x {d}"), rows * d, fwd, bwd);
        let rn = RmsNorm::new(&ctx, RmsNormConfig::new(&[d]))?;
        let fwd = best(|| rn.context().run(|e| rn.forward(e, &x.view(), &y.view())).unwrap());
        let bwd = best(|| rn.context().run(|e| rn.backward(e, &x.view(), &y.view(), &dx.view())).unwrap());
        report(&format!("rms_norm {rows} x {d}"), rows * d, fwd, bwd);
    }
    for (layout, hw) in
        [(Layout::Nchw, 1024 / scale.min(1024)), (Layout::Nhwc, 1024 / scale.min(1024)), (Layout::Nchw, 4)]
    {
        let (n, c, g) = (total / (256 * hw).max(1), 256, 32);
        let shape = [n.max(1), c, hw];
        let len = shape.iter().product();
        let x = Tensor::from_slice(&ctx, &vec![1.5; len], &shape, layout)?;
        let y = Tensor::zeros(&ctx, &shape, layout)?;
        let dx = Tensor::zeros(&ctx, &shape, layout)?;
        let gn = GroupNorm::new(&ctx, GroupNormConfig::new(g, c))?;
        let fwd = best(|| gn.context().run(|e| gn.forward(e, &x.view(), &y.view())).unwrap());
        let bwd = best(|| gn.context().run(|e| gn.backward(e, &x.view(), &y.view(), &dx.view())).unwrap());
        report(&format!("group_norm {shape:?} {} G={g}", layout.name()), len, fwd, bwd);
    }
    Ok(())
}
