//! Every fused kernel against its plain composition of Burn operations: values and the
//! gradient of a weighted sum, within 1e-5 (relative to the value where it exceeds 1: sums
//! over rows add in another order), on flex under autodiff (where the kernels run).

#![allow(deprecated)] // Device::ndarray, the one other CPU backend to check against

use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use tinytune::kernels;

const TOL: f32 = 1e-5;

fn device() -> Device {
    Device::flex().autodiff()
}

/// The largest difference, relative where |b| > 1.
fn max_diff(a: &Tensor<1>, b: &Tensor<1>) -> f32 {
    let a = a.clone().into_data().try_to_vec::<f32>().unwrap();
    let b = b.clone().into_data().try_to_vec::<f32>().unwrap();
    assert_eq!(a.len(), b.len());
    a.iter().zip(&b).map(|(x, y)| if x.is_finite() && y.is_finite() { (x - y).abs() / y.abs().max(1.0) } else { f32::INFINITY }).fold(0.0, f32::max)
}

/// Runs `f` and `plain` on the same input, and compares outputs and the input's gradient of
/// `Σ w ⊙ out` for a fixed, irregular `w`. Asserts the fused path really ran.
fn check<const D: usize, const E: usize>(what: &str, x: Tensor<D>, f: impl Fn(Tensor<D>) -> Tensor<E>, plain: impl Fn(Tensor<D>) -> Tensor<E>) {
    assert!(kernels::fused_for(&x), "{what}: the fused kernel is not used on {:?}", x.device());
    let run = |g: &dyn Fn(Tensor<D>) -> Tensor<E>| {
        let x = x.clone().detach().require_grad();
        let y = g(x.clone());
        let dims = y.dims();
        let n = dims.iter().product::<usize>();
        let w: Vec<f32> = (0..n).map(|i| ((i * 7919 % 1000) as f32 / 250.0 - 2.0).sin()).collect();
        let w = Tensor::<E>::from_data(TensorData::new(w, dims), &y.device());
        let grads = (y.clone() * w).sum().backward();
        let m = x.dims().iter().product::<usize>();
        (y.reshape([n]), x.grad(&grads).expect("a gradient").reshape([m]))
    };
    let (yf, gf) = run(&f);
    let (yp, gp) = run(&plain);
    let d = max_diff(&yf, &yp);
    assert!(d <= TOL, "{what}: values differ by {d}");
    let d = max_diff(&gf, &gp);
    assert!(d <= TOL, "{what}: gradients differ by {d}");
}

#[test]
fn causal_softmax_matches_its_composition() {
    let device = device();
    for (t, offset) in [(5, 0), (4, 3), (1, 6)] {
        let scores = Tensor::<4>::random([2, 3, t, offset + t], Distribution::Normal(0.0, 3.0), &device);
        let scale = 0.35;
        check(
            &format!("causal_softmax t={t} offset={offset}"),
            scores,
            |s| kernels::causal_softmax(s, scale, offset),
            |s| kernels::causal_softmax_plain(s, scale, offset),
        );
    }
    // A strided view (a transpose) is read correctly.
    let scores = Tensor::<4>::random([2, 3, 6, 6], Distribution::Normal(0.0, 1.0), &device).swap_dims(2, 3);
    check("causal_softmax on a view", scores, |s| kernels::causal_softmax(s, 1.0, 0), |s| kernels::causal_softmax_plain(s, 1.0, 0));
}

#[test]
fn gelu_matches_its_composition() {
    let device = device();
    // Spans the flat tails and the curved middle, and more than one 4096-value task.
    let x = Tensor::<2>::random([3, 2000], Distribution::Uniform(-8.0, 8.0), &device);
    check("gelu_new", x, kernels::gelu_new, kernels::gelu_new_plain);
    let x = Tensor::<3>::random([2, 3, 5], Distribution::Normal(0.0, 1.0), &device);
    check("gelu_new small", x, kernels::gelu_new, kernels::gelu_new_plain);
}

#[test]
fn token_log_probs_match_their_composition() {
    let device = device();
    let (b, t, v) = (3, 5, 37);
    let logits = Tensor::<3>::random([b, t, v], Distribution::Normal(0.0, 4.0), &device);
    let ids: Vec<i64> = (0..b * t).map(|i| (i as i64 * 11 + 3) % v as i64).collect();
    let targets = Tensor::<2, Int>::from_data(TensorData::new(ids, [b, t]), &device);
    check("token_log_probs", logits, |l| kernels::token_log_probs(l, targets.clone()), |l| kernels::token_log_probs_plain(l, targets.clone()));
}

#[test]
fn layer_norm_matches_its_composition_in_all_three_gradients() {
    let device = device();
    let c = 24;
    let x = Tensor::<3>::random([3, 50, c], Distribution::Normal(0.5, 2.0), &device);
    let w = Tensor::<1>::random([c], Distribution::Normal(1.0, 0.5), &device);
    let b = Tensor::<1>::random([c], Distribution::Normal(0.0, 0.5), &device);
    check(
        "layer_norm (input)",
        x.clone(),
        |x| kernels::layer_norm(x, w.clone(), b.clone(), 1e-5),
        |x| kernels::layer_norm_plain(x, w.clone(), b.clone(), 1e-5),
    );
    check(
        "layer_norm (weight)",
        w.clone(),
        |w| kernels::layer_norm(x.clone(), w, b.clone(), 1e-5),
        |w| kernels::layer_norm_plain(x.clone(), w, b.clone(), 1e-5),
    );
    check("layer_norm (bias)", b.clone(), |b| kernels::layer_norm(x.clone(), w.clone(), b, 1e-5), |b| kernels::layer_norm_plain(x.clone(), w.clone(), b, 1e-5));
}

#[test]
fn other_backends_take_the_composition() {
    assert!(kernels::fused_for(&Tensor::<2>::zeros([2, 3], &device())));
    assert!(kernels::fused_for(&Tensor::<2>::zeros([2, 3], &Device::flex())));
    assert!(!kernels::fused_for(&Tensor::<2>::zeros([2, 3], &Device::ndarray())));
    assert!(!kernels::fused_for(&Tensor::<2>::zeros([2, 3], &Device::flex()).cast(burn::tensor::DType::BF16)));
    // Under gradient checkpointing too (fused_kernels_under_gradient_checkpointing_...).
    assert!(kernels::fused_for(&Tensor::<2>::zeros([2, 3], &device().gradient_checkpointing())));
}

/// Under gradient checkpointing every kernel gives its composition's values and gradients,
/// with its input made by a cheap (memory-bound) operation and its output squared, so that
/// the checkpointer recomputes both: the retro-forwards of GELU, the norms and SwiGLU
/// run in the backward pass. The same gradients also come out without checkpointing.
#[test]
fn fused_kernels_under_gradient_checkpointing_match_their_compositions() {
    let ckpt = device().gradient_checkpointing();
    let cheap = |x: Tensor<3>| x * 1.5 + 0.25;
    // Its backward pass needs its input, the kernel's output, which is then recomputed.
    let square = |y: Tensor<3>| y.clone() * y;
    let c = 24;
    let x = Tensor::<3>::random([3, 20, c], Distribution::Normal(0.5, 2.0), &ckpt);
    let w = Tensor::<1>::random([c], Distribution::Normal(1.0, 0.5), &ckpt).into_data();
    let b = Tensor::<1>::random([c], Distribution::Normal(0.0, 0.5), &ckpt).into_data();
    let up = Tensor::<3>::random([3, 20, c], Distribution::Normal(0.0, 2.0), &ckpt).into_data();
    type Op = Box<dyn Fn(Tensor<3>) -> Tensor<3>>;
    // Each kernel and its composition, with its other inputs on `device`.
    let ops = |device: &Device| -> Vec<(&'static str, Op, Op)> {
        // Tracked, as a model's weights are: an operation with an untracked input is
        // compute-bound under checkpointing (Burn's rule), and its retro-forward never runs.
        let w = Tensor::<1>::from_data(w.clone(), device).require_grad();
        let b = Tensor::<1>::from_data(b.clone(), device).require_grad();
        let up = Tensor::<3>::from_data(up.clone(), device).require_grad();
        let (w2, b2, w3, w4, up2, up3, up4) = (w.clone(), b.clone(), w.clone(), w.clone(), up.clone(), up.clone(), up.clone());
        vec![
            ("gelu_new", Box::new(move |x| kernels::gelu_new(cheap(x))), Box::new(move |x| kernels::gelu_new_plain(cheap(x)))),
            (
                "layer_norm",
                Box::new(move |x| kernels::layer_norm(cheap(x), w.clone(), b.clone(), 1e-5)),
                Box::new(move |x| kernels::layer_norm_plain(cheap(x), w2.clone(), b2.clone(), 1e-5)),
            ),
            (
                "rms_norm",
                Box::new(move |x| kernels::rms_norm(cheap(x), w3.clone(), 1e-6)),
                Box::new(move |x| kernels::rms_norm_plain(cheap(x), w4.clone(), 1e-6)),
            ),
            ("swiglu (gate)", Box::new(move |x| kernels::swiglu(cheap(x), up.clone())), Box::new(move |x| kernels::swiglu_plain(cheap(x), up2.clone()))),
            ("swiglu (up)", Box::new(move |x| kernels::swiglu(up3.clone(), cheap(x))), Box::new(move |x| kernels::swiglu_plain(up4.clone(), cheap(x)))),
        ]
    };
    let grad = |f: &Op, x: Tensor<3>| {
        let x = x.detach().require_grad();
        let grads = square(f(x.clone())).sum().backward();
        let n = x.dims().iter().product::<usize>();
        x.grad(&grads).expect("a gradient").reshape([n])
    };
    let plain_x = Tensor::<3>::from_data(x.to_data(), &device());
    for ((what, f, plain), (_, f_plain_device, _)) in ops(&ckpt).iter().zip(ops(&device()).iter()) {
        check(&format!("{what}, checkpointed"), x.clone(), |x| square(f(x)), |x| square(plain(x)));
        // The checkpointed kernel's gradient equals the kernel's without checkpointing.
        let d = max_diff(&grad(f, x.clone()), &grad(f_plain_device, plain_x.clone()));
        assert!(d <= TOL, "{what}: checkpointed and plain runs' gradients differ by {d}");
    }
    // The softmax and the token log-probabilities keep their state and run checkpointed too.
    let scores = Tensor::<4>::random([2, 3, 5, 5], Distribution::Normal(0.0, 3.0), &ckpt);
    check(
        "causal_softmax, checkpointed",
        scores,
        |s| kernels::causal_softmax(s * 1.5, 0.35, 0) * 2.0,
        |s| kernels::causal_softmax_plain(s * 1.5, 0.35, 0) * 2.0,
    );
    let logits = Tensor::<3>::random([3, 5, 37], Distribution::Normal(0.0, 4.0), &ckpt);
    let ids: Vec<i64> = (0..15).map(|i| (i * 11 + 3) % 37).collect();
    let targets = Tensor::<2, Int>::from_data(TensorData::new(ids, [3, 5]), &ckpt);
    check(
        "token_log_probs, checkpointed",
        logits,
        |l| kernels::token_log_probs(l * 1.5, targets.clone()) * 2.0,
        |l| kernels::token_log_probs_plain(l * 1.5, targets.clone()) * 2.0,
    );
}

#[test]
fn rms_norm_matches_its_composition_in_both_gradients() {
    let device = device();
    let c = 24;
    let x = Tensor::<3>::random([3, 50, c], Distribution::Normal(0.5, 2.0), &device);
    let w = Tensor::<1>::random([c], Distribution::Normal(1.0, 0.5), &device);
    check("rms_norm (input)", x.clone(), |x| kernels::rms_norm(x, w.clone(), 1e-6), |x| kernels::rms_norm_plain(x, w.clone(), 1e-6));
    check("rms_norm (weight)", w.clone(), |w| kernels::rms_norm(x.clone(), w, 1e-6), |w| kernels::rms_norm_plain(x.clone(), w, 1e-6));
    // A strided view (a transpose) is read correctly.
    let x = Tensor::<3>::random([2, c, 7], Distribution::Normal(0.0, 1.0), &device).swap_dims(1, 2);
    check("rms_norm on a view", x, |x| kernels::rms_norm(x, w.clone(), 1e-5), |x| kernels::rms_norm_plain(x, w.clone(), 1e-5));
}

#[test]
fn swiglu_matches_its_composition_in_both_gradients() {
    let device = device();
    // Spans silu's flat negative tail and linear positive side, and more than one 4096-value task.
    let gate = Tensor::<2>::random([3, 2000], Distribution::Uniform(-10.0, 10.0), &device);
    let up = Tensor::<2>::random([3, 2000], Distribution::Normal(0.0, 2.0), &device);
    check("swiglu (gate)", gate.clone(), |g| kernels::swiglu(g, up.clone()), |g| kernels::swiglu_plain(g, up.clone()));
    check("swiglu (up)", up.clone(), |u| kernels::swiglu(gate.clone(), u), |u| kernels::swiglu_plain(gate.clone(), u));
    let gate = Tensor::<3>::random([2, 3, 5], Distribution::Normal(0.0, 1.0), &device);
    let up = Tensor::<3>::random([2, 3, 5], Distribution::Normal(0.0, 1.0), &device);
    check("swiglu small", gate, |g| kernels::swiglu(g, up.clone()), |g| kernels::swiglu_plain(g, up.clone()));
}
