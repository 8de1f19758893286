//! Bad input: one test per error, each asserting the variant and that
//! nothing was written (outputs keep a sentinel, state stays as it was).

mod common;

use common::ctx;
use wgpu_norm::{BatchNorm, BatchNormConfig, BatchNormState, Epilogue, Error, Layout, Mode, Tensor, TensorView};

const SENTINEL: f32 = -7.25;

fn sentinel(shape: &[usize]) -> Tensor {
    let len: usize = shape.iter().product();
    Tensor::from_slice(ctx(), &vec![SENTINEL; len.max(1)], &[len.max(1)], Layout::Nchw).unwrap()
}

fn assert_untouched(t: &Tensor) {
    let v = t.read(ctx()).unwrap();
    assert!(v.iter().all(|&x| x == SENTINEL), "the output buffer was written");
}

fn layer(c: usize) -> BatchNorm {
    BatchNorm::new(ctx(), BatchNormConfig::new(c)).unwrap()
}

/// Runs a training forward of x (`shape`, filled with ones) into a sentinel
/// buffer viewed as `shape`; returns the error and checks nothing changed.
fn forward_err(bn: &BatchNorm, shape: &[usize]) -> Error {
    let len: usize = shape.iter().product::<usize>().max(1);
    let x = Tensor::from_slice(ctx(), &vec![1.0; len], &[len], Layout::Nchw).unwrap();
    let y = sentinel(shape);
    let before = bn.read_state().unwrap();
    let err = bn
        .context()
        .run(|e| {
            bn.forward(
                e,
                &TensorView::new(&x.buffer, shape),
                &TensorView::new(&y.buffer, shape),
                Mode::Training,
                Epilogue::None,
            )
        })
        .unwrap_err();
    assert_untouched(&y);
    assert_eq!(bn.read_state().unwrap(), before, "state changed on error");
    err
}

#[test]
fn channel_count_disagrees() {
    assert!(matches!(forward_err(&layer(3), &[2, 4, 5]), Error::Shape(_)));
}

#[test]
fn rank_below_two() {
    assert!(matches!(forward_err(&layer(3), &[3]), Error::Shape(_)));
}

#[test]
fn rank_above_five() {
    assert!(matches!(forward_err(&layer(3), &[2, 3, 2, 2, 2, 2]), Error::Shape(_)));
}

#[test]
fn zero_sized_dimension() {
    assert!(matches!(forward_err(&layer(3), &[2, 3, 0]), Error::Shape(_)));
}

#[test]
fn one_value_per_channel_in_training() {
    let err = forward_err(&layer(3), &[1, 3]);
    assert!(matches!(err, Error::OneValuePerChannel(_)));
    assert!(err.to_string().contains("Expected more than 1 value per channel when training".to_lowercase().as_str()));
    // The same shape is fine in eval mode with running statistics.
    let bn = layer(3);
    let x = Tensor::from_slice(ctx(), &[1.0, 2.0, 3.0], &[1, 3], Layout::Nchw).unwrap();
    let y = Tensor::zeros(ctx(), &[1, 3], Layout::Nchw).unwrap();
    bn.context().run(|e| bn.forward(e, &x.view(), &y.view(), Mode::Eval, Epilogue::None)).unwrap();
}

#[test]
fn output_buffer_too_small() {
    let bn = layer(3);
    let x = Tensor::from_slice(ctx(), &[1.0; 12], &[4, 3], Layout::Nchw).unwrap();
    let y = sentinel(&[11]);
    let err = bn
        .context()
        .run(|e| bn.forward(e, &x.view(), &TensorView::new(&y.buffer, &[4, 3]), Mode::Training, Epilogue::None))
        .unwrap_err();
    assert!(matches!(err, Error::Buffer(_)), "{err}");
    assert_untouched(&y);
}

#[test]
fn view_offset_past_the_end_or_misaligned() {
    let bn = layer(3);
    let x = Tensor::from_slice(ctx(), &[1.0; 12], &[4, 3], Layout::Nchw).unwrap();
    let y = sentinel(&[16]);
    let past = TensorView::new(&y.buffer, &[4, 3]).at_offset(32);
    assert!(matches!(
        bn.context().run(|e| bn.forward(e, &x.view(), &past, Mode::Training, Epilogue::None)),
        Err(Error::Buffer(_))
    ));
    let odd = TensorView::new(&y.buffer, &[4, 3]).at_offset(2);
    assert!(matches!(
        bn.context().run(|e| bn.forward(e, &x.view(), &odd, Mode::Training, Epilogue::None)),
        Err(Error::Buffer(_))
    ));
    assert_untouched(&y);
}

#[test]
fn buffer_without_storage_usage() {
    let bn = layer(3);
    let x = Tensor::from_slice(ctx(), &[1.0; 12], &[4, 3], Layout::Nchw).unwrap();
    let plain = ctx().device().create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 48,
        usage: wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let err = bn
        .context()
        .run(|e| bn.forward(e, &x.view(), &TensorView::new(&plain, &[4, 3]), Mode::Training, Epilogue::None))
        .unwrap_err();
    assert!(matches!(err, Error::Buffer(ref m) if m.contains("STORAGE")), "{err}");
    assert_eq!(ctx().read::<f32>(&plain, 0, 12).unwrap(), vec![0.0; 12]);
}

#[test]
fn input_and_output_share_a_buffer() {
    let bn = layer(3);
    let both = sentinel(&[24]);
    let x = TensorView::new(&both.buffer, &[4, 3]);
    let y = TensorView::new(&both.buffer, &[4, 3]).at_offset(48);
    assert!(matches!(
        bn.context().run(|e| bn.forward(e, &x, &y, Mode::Training, Epilogue::None)),
        Err(Error::Buffer(_))
    ));
    assert_untouched(&both);
}

#[test]
fn output_shape_differs_from_input() {
    let bn = layer(3);
    let x = Tensor::from_slice(ctx(), &[1.0; 12], &[4, 3], Layout::Nchw).unwrap();
    let y = sentinel(&[12]);
    let err = bn
        .context()
        .run(|e| bn.forward(e, &x.view(), &TensorView::new(&y.buffer, &[2, 3, 2]), Mode::Training, Epilogue::None))
        .unwrap_err();
    assert!(matches!(err, Error::Shape(_)), "{err}");
    assert_untouched(&y);
}

#[test]
fn eps_must_be_finite_and_positive() {
    for eps in [0.0, -1e-5, f32::NAN, f32::INFINITY] {
        let err = BatchNorm::new(ctx(), BatchNormConfig::new(3).eps(eps)).err().expect("accepted bad eps");
        assert!(matches!(err, Error::Parameter(_)), "eps {eps}: {err}");
    }
}

#[test]
fn momentum_must_be_within_zero_and_one() {
    for m in [-0.1, 1.5, f32::NAN] {
        let err = BatchNorm::new(ctx(), BatchNormConfig::new(3).momentum(Some(m))).err().expect("accepted");
        assert!(matches!(err, Error::Parameter(_)), "momentum {m}: {err}");
    }
    BatchNorm::new(ctx(), BatchNormConfig::new(3).momentum(Some(1.0))).unwrap();
    BatchNorm::new(ctx(), BatchNormConfig::new(3).momentum(None)).unwrap();
}

#[test]
fn state_of_the_wrong_length() {
    let bn = layer(3);
    let mut state = BatchNormState::initial(3);
    state.running_var = vec![2.0; 4];
    assert!(matches!(bn.write_state(&state), Err(Error::Shape(_))));
    assert_eq!(bn.read_state().unwrap(), BatchNormState::initial(3));
}

#[test]
fn training_backward_without_a_matching_forward() {
    let bn = layer(3);
    let x = Tensor::from_slice(ctx(), &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3], Layout::Nchw).unwrap();
    let dy = Tensor::from_slice(ctx(), &[1.0; 6], &[2, 3], Layout::Nchw).unwrap();
    let dx = sentinel(&[2, 3]);
    let dxv = TensorView::new(&dx.buffer, &[2, 3]);
    assert!(matches!(
        bn.context().run(|e| bn.backward(e, &x.view(), &dy.view(), &dxv, Mode::Training, Epilogue::None)),
        Err(Error::Parameter(_))
    ));
    assert_untouched(&dx);
    // After a training forward of another shape it is still refused.
    let x2 = Tensor::from_slice(ctx(), &[1.0; 9], &[3, 3], Layout::Nchw).unwrap();
    let y2 = Tensor::zeros(ctx(), &[3, 3], Layout::Nchw).unwrap();
    bn.context().run(|e| bn.forward(e, &x2.view(), &y2.view(), Mode::Training, Epilogue::None)).unwrap();
    assert!(matches!(
        bn.context().run(|e| bn.backward(e, &x.view(), &dy.view(), &dxv, Mode::Training, Epilogue::None)),
        Err(Error::Parameter(_))
    ));
    assert_untouched(&dx);
}

#[test]
fn wgpu_validation_errors_come_back_as_err() {
    // A destroyed buffer passes the crate's own checks; wgpu rejects it, and
    // the error scope must turn that into Err instead of a panic.
    let bn = layer(3);
    let x = Tensor::from_slice(ctx(), &[1.0; 12], &[4, 3], Layout::Nchw).unwrap();
    let y = Tensor::zeros(ctx(), &[4, 3], Layout::Nchw).unwrap();
    y.buffer.destroy();
    let err = bn.context().run(|e| bn.forward(e, &x.view(), &y.view(), Mode::Training, Epilogue::None)).unwrap_err();
    assert!(matches!(err, Error::Validation(_)), "{err}");
    // The context still works afterwards.
    let y = Tensor::zeros(ctx(), &[4, 3], Layout::Nchw).unwrap();
    bn.context().run(|e| bn.forward(e, &x.view(), &y.view(), Mode::Training, Epilogue::None)).unwrap();
}
