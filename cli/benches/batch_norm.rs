//! Criterion benches of every op of `wgpu-norm bench` (BatchNorm, its fused
//! forwards and the family; LayerNorm and RMSNorm in one layout only, the
//! group norms on rank >= 3 only), with `Throughput::Bytes` set to
//! the bytes each op must move at the least (as `wgpu-norm bench` counts
//! them). Each iteration records, submits and waits for one op: the time is
//! wall clock around submit-and-wait, so it includes submission overhead
//! that `wgpu-norm bench`'s GPU timestamps leave out.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use wgpu_norm::{Context, Layout};
use wgpu_norm_cli::bench::{all_ops, shape_name, Workload};

/// Modest shapes: a ResNet stage on a small batch, and transformer rows.
const SHAPES: [&[usize]; 2] = [&[8, 64, 28, 28], &[2048, 512]];

fn bench_ops(c: &mut Criterion) {
    let ctx = Context::new().expect("no GPU adapter");
    for op in all_ops() {
        let mut group = c.benchmark_group(op.name());
        group.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
        for shape in SHAPES {
            for layout in [Layout::Nchw, Layout::Nhwc] {
                if op.unsupported(shape, layout, &ctx.device().limits()).is_some()
                    || (op.ignores_layout() && layout != Layout::Nchw)
                {
                    continue;
                }
                let work = Workload::new(&ctx, op, shape, layout, 7).expect("workload");
                group.throughput(Throughput::Bytes(work.bytes()));
                let id = BenchmarkId::new(layout.name(), shape_name(shape));
                group.bench_function(id, |b| {
                    b.iter_custom(|iters| {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            let commands = {
                                let mut encoder = ctx.device().create_command_encoder(&Default::default());
                                work.record(&mut encoder).expect("record");
                                encoder.finish()
                            };
                            let start = Instant::now();
                            let index = ctx.queue().submit([commands]);
                            ctx.wait(Some(index)).expect("wait");
                            total += start.elapsed();
                        }
                        total
                    })
                });
            }
        }
        group.finish();
    }
}

criterion_group!(benches, bench_ops);
criterion_main!(benches);
