//! Fused operations: the models' elementwise-heavy steps, each as one pass forward and one
//! pass backward.
//!
//! Under autodiff, Burn runs a softmax as five operations (max, subtract, exp, sum, divide), a
//! LayerNorm as nine, and keeps what each needs for its backward pass; GPT-2's GELU is six;
//! the cross-entropy's log-softmax is six more and a gather; the Llama family's RMSNorm is
//! seven and its SwiGLU gate three. On the CPU those passes over memory cost as much as
//! the matrix products. Each function here is the same mathematics as a plain composition of
//! Burn operations (the `*_plain` twin beside it, which the tests compare against, values and
//! gradients within 1e-5), run as a single row-wise kernel with a hand-written backward pass:
//!
//! - [`causal_softmax`]: attention's scaled, causally masked softmax. The mask is never built;
//!   each row stops at its last visible key. Backward: `scale · p ⊙ (g − Σ p g)` from the saved
//!   probabilities.
//! - [`gelu_new`]: GPT-2's tanh GELU. Backward from the saved input.
//! - [`layer_norm`]: GPT-2's LayerNorm, its three gradients (input, weight, bias) from the
//!   saved input.
//! - [`token_log_probs`]: `log_softmax(logits)` at the target tokens, without materialising the
//!   log-probabilities of the whole vocabulary. Backward: `g · (onehot − softmax)`.
//! - [`rms_norm`]: the Llama family's RMSNorm, its two gradients (input, weight) from the
//!   saved input.
//! - [`swiglu`]: the Llama family's `silu(gate) ⊙ up`, both gradients from the saved inputs.
//!
//! The kernels exist for the flex backend (with the `fused` feature; the `rayon` feature splits
//! their rows across threads), in f32. Any other backend or precision, and any run with
//! [`set_enabled`]`(false)` (`TINYTUNE_FUSED=0` for the binary), takes the plain composition,
//! so a result never depends on which path ran beyond rounding.
//!
//! Under gradient checkpointing, GELU, the two norms and SwiGLU are memory-bound operations
//! with a retro-forward, as Burn's own elementwise operations are: their backward pass reads
//! its inputs through the checkpointer, which recomputes them when checkpointing dropped
//! them, and their outputs are recomputed rather than kept. The softmax (whose backward pass
//! needs its output) and the token log-probabilities (whose output is one value a token) are
//! compute-bound and keep their state.

use burn::tensor::activation::{log_softmax, sigmoid, softmax};
use burn::tensor::{Bool, Int, Tensor};
use std::sync::atomic::{AtomicBool, Ordering};

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns the fused kernels on or off for the whole process (on by default). Off, every
/// operation here runs its plain composition: for measuring what the kernels buy, and as a
/// way around them should one ever be suspected.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether an operation on `t` takes a fused kernel: the kernels are compiled in and enabled,
/// and `t` is an f32 tensor on flex (with or without autodiff, with or without gradient
/// checkpointing).
pub fn fused_for<const D: usize>(t: &Tensor<D>) -> bool {
    #[cfg(feature = "fused")]
    {
        ENABLED.load(Ordering::Relaxed)
            && t.dtype() == burn::tensor::DType::F32
            && matches!(t.device().inner().as_dispatch(), burn::backend::DispatchDevice::Flex(_))
    }
    #[cfg(not(feature = "fused"))]
    {
        let _ = t;
        false
    }
}

/// `softmax(scale · scores)` over the last dimension with query i (the second-to-last
/// dimension) seeing keys `0..=i + offset` only: causal attention over `offset` earlier
/// positions (a prefix or a cache) and its own past. Masked positions get probability 0.
///
/// # Shapes
/// `[B, H, T, offset + T] -> [B, H, T, offset + T]`
pub fn causal_softmax(scores: Tensor<4>, scale: f64, offset: usize) -> Tensor<4> {
    if fused_for(&scores) {
        #[cfg(feature = "fused")]
        return flex::causal_softmax(scores, scale as f32, offset);
    }
    causal_softmax_plain(scores, scale, offset)
}

/// [`causal_softmax`] as Burn operations: scale, fill the hidden keys with −10⁹ (not −∞, so a
/// fully masked row would stay finite), softmax.
pub fn causal_softmax_plain(scores: Tensor<4>, scale: f64, offset: usize) -> Tensor<4> {
    let [b, h, t, n] = scores.dims();
    let scores = scores.mul_scalar(scale);
    // Burn's `tril_mask` is true *outside* the lower triangle shifted by `offset`, i.e. exactly
    // where key j > i + offset (the causality tests pin this down).
    let mask = Tensor::<2, Bool>::tril_mask([t, n], offset as i64, &scores.device());
    softmax(scores.mask_fill(mask.reshape([1, 1, t, n]).expand([b, h, t, n]), -1.0e9), 3)
}

/// GPT-2's GELU, the tanh approximation ("gelu_new"):
/// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`, which is `x · sigmoid(2·√(2/π)·(x + 0.044715·x³))`.
/// The exact erf GELU would make logits differ from transformers' GPT-2 by ~1e-3.
pub fn gelu_new<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if fused_for(&x) {
        #[cfg(feature = "fused")]
        return flex::gelu_new(x);
    }
    gelu_new_plain(x)
}

/// [`gelu_new`] as Burn operations, in the sigmoid form with x³ as two multiplications (on flex
/// 2.6× faster forward and backward than `gelu_approximate`, whose `powf` dominated an MLP
/// step; `native/examples/op_profile.rs`).
pub fn gelu_new_plain<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let cubic = x.clone() * x.clone() * x.clone();
    let inner = (x.clone() + cubic.mul_scalar(GELU_A as f64)).mul_scalar(GELU_2C as f64);
    x * sigmoid(inner)
}

/// 0.044715, GPT-2's cubic coefficient.
const GELU_A: f32 = 0.044715;
/// 2·√(2/π): the tanh form's √(2/π), doubled by `0.5·(1 + tanh z) = sigmoid(2z)`.
const GELU_2C: f32 = (2.0 * 0.797_884_560_802_865_4) as f32;

/// The log-probability of each target token: `log_softmax(logits)` over the vocabulary, read
/// at `targets`.
///
/// # Shapes
/// logits `[B, T, V]`, targets `[B, T]` -> `[B, T]`
pub fn token_log_probs(logits: Tensor<3>, targets: Tensor<2, Int>) -> Tensor<2> {
    if fused_for(&logits) {
        #[cfg(feature = "fused")]
        return flex::token_log_probs(logits, targets);
    }
    token_log_probs_plain(logits, targets)
}

/// [`token_log_probs`] as Burn operations: log-softmax, then gather.
pub fn token_log_probs_plain(logits: Tensor<3>, targets: Tensor<2, Int>) -> Tensor<2> {
    let [b, t, _] = logits.dims();
    log_softmax(logits, 2).gather(2, targets.reshape([b, t, 1])).reshape([b, t])
}

/// LayerNorm over the last dimension: `(x − mean) / √(var + ε) · weight + bias`, the variance
/// biased (as PyTorch's and Burn's).
///
/// # Shapes
/// x `[..., C]`, weight and bias `[C]` -> `[..., C]`
pub fn layer_norm<const D: usize>(x: Tensor<D>, weight: Tensor<1>, bias: Tensor<1>, eps: f64) -> Tensor<D> {
    if fused_for(&x) && fused_for(&weight) && fused_for(&bias) {
        #[cfg(feature = "fused")]
        return flex::layer_norm(x, weight, bias, eps);
    }
    layer_norm_plain(x, weight, bias, eps)
}

/// [`layer_norm`] as Burn's `layer_norm` module operation (one pass on backends that implement
/// it; a differentiable composition under autodiff).
pub fn layer_norm_plain<const D: usize>(x: Tensor<D>, weight: Tensor<1>, bias: Tensor<1>, eps: f64) -> Tensor<D> {
    burn::tensor::module::layer_norm(x, weight, Some(bias), eps)
}

/// RMSNorm over the last dimension (the Llama family's): `x / √(mean(x²) + ε) · weight`, in
/// f32 as transformers' `LlamaRMSNorm`.
///
/// # Shapes
/// x `[..., C]`, weight `[C]` -> `[..., C]`
pub fn rms_norm<const D: usize>(x: Tensor<D>, weight: Tensor<1>, eps: f64) -> Tensor<D> {
    if fused_for(&x) && fused_for(&weight) {
        #[cfg(feature = "fused")]
        return flex::rms_norm(x, weight, eps);
    }
    rms_norm_plain(x, weight, eps)
}

/// [`rms_norm`] as Burn operations: square, mean, add ε, square root, reciprocal, two
/// products (under autodiff, seven operations, each keeping what its backward needs).
pub fn rms_norm_plain<const D: usize>(x: Tensor<D>, weight: Tensor<1>, eps: f64) -> Tensor<D> {
    let ms = (x.clone() * x.clone()).mean_dim(D - 1).add_scalar(eps);
    x * ms.sqrt().recip() * weight.unsqueeze::<D>()
}

/// SwiGLU's gating (the Llama family's MLP between its projections): `silu(gate) ⊙ up`, with
/// `silu(a) = a · sigmoid(a)`.
///
/// # Shapes
/// gate and up `[..., F]` (the same shape) -> `[..., F]`
pub fn swiglu<const D: usize>(gate: Tensor<D>, up: Tensor<D>) -> Tensor<D> {
    if fused_for(&gate) && fused_for(&up) && gate.dims() == up.dims() {
        #[cfg(feature = "fused")]
        return flex::swiglu(gate, up);
    }
    swiglu_plain(gate, up)
}

/// [`swiglu`] as Burn operations: Burn's `silu`, then the product.
pub fn swiglu_plain<const D: usize>(gate: Tensor<D>, up: Tensor<D>) -> Tensor<D> {
    burn::tensor::activation::silu(gate) * up
}

// ---- scalar pieces the kernels' loops are made of ----
//
// Written without branches or library calls, so that a loop over a row compiles to SIMD (4
// lanes on baseline x86-64, 8 or 16 in `widest_simd`'s copies): glibc's `expf` is a call per
// value, and a running `f32` sum or max is a serial chain the compiler may not reorder. The
// browser's size-optimised build does not vectorise, so the loops also come in four explicit
// lanes of wasm SIMD with the same bits (`lanes`).

#[cfg(any(feature = "fused", test))]
mod lanes;

/// Adding and subtracting 1.5·2²³ rounds an f32 to an integer.
#[cfg(any(feature = "fused", test))]
const EXP_ROUND: f32 = 12_582_912.0;
/// ln 2 in two parts, so that n·ln 2 is exact to f32 for n in −125..=128.
#[cfg(any(feature = "fused", test))]
const LN2_HI: f32 = 0.693_359_4;
#[cfg(any(feature = "fused", test))]
const LN2_LO: f32 = -2.121_944_4e-4;
/// Where [`exp`] flushes to 0 and where it gives ∞.
#[cfg(any(feature = "fused", test))]
const EXP_LOW: f32 = -86.5;
#[cfg(any(feature = "fused", test))]
const EXP_HIGH: f32 = 88.72;
/// e^r ≈ 1 + r + r²·(c₁ + c₂r + … + c₆r⁵), highest coefficient first (Cephes' `expf`).
#[cfg(any(feature = "fused", test))]
const EXP_POLY: [f32; 6] = [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5];

/// e^x within 2 ulp, from range reduction x = n·ln 2 + r (|r| ≤ ln 2 / 2) and a degree-6
/// polynomial for e^r (the coefficients of Cephes' `expf`). NaN stays NaN, above 88.72 it is
/// ∞, and below −86.5 it flushes to 0 (an absolute error under 3e-38). `lanes` has the same
/// steps four lanes at a time.
#[cfg(any(feature = "fused", test))]
#[inline(always)]
fn exp(x: f32) -> f32 {
    let xc = x.clamp(EXP_LOW, EXP_HIGH);
    let n = (xc * std::f32::consts::LOG2_E + EXP_ROUND) - EXP_ROUND; // −125..=128
    let r = xc - n * LN2_HI - n * LN2_LO;
    let [c6, c5, c4, c3, c2, c1] = EXP_POLY;
    let p = ((((c6 * r + c5) * r + c4) * r + c3) * r + c2) * r + c1;
    let er = p * r * r + r + 1.0;
    // 2ⁿ as 2ⁿ⁻¹ · 2, so n = 128 (e^88.72 is still finite) needs no exponent past f32's.
    let y = er * f32::from_bits(((n as i32).wrapping_add(126) as u32) << 23) * 2.0; // no overflow check: it would stop the loops vectorizing in debug builds
    if x.is_nan() {
        x
    } else if x < EXP_LOW {
        0.0
    } else if x > EXP_HIGH {
        f32::INFINITY
    } else {
        y
    }
}

/// Σ over `x`, eight lanes at a time.
#[cfg(any(feature = "fused", test))]
#[inline(always)]
fn sum8(x: &[f32]) -> f32 {
    lanes::lane_sum(x, lanes::both!(|v| v))
}

/// Σ e^(x − shift) over `x`, eight lanes at a time.
#[cfg(any(feature = "fused", test))]
#[inline(always)]
fn sum_exp8(x: &[f32], shift: f32) -> f32 {
    use lanes::Lanes;
    lanes::lane_sum(x, lanes::both!(|v| (v - L::splat(shift)).cephes_exp()))
}

/// A row's largest value and log Σ e^(x − max): the log-softmax of `v` is
/// `(v − max) − lse`.
#[cfg(feature = "fused")]
#[inline(always)]
fn max_and_log_sum_exp(x: &[f32]) -> (f32, f32) {
    let max = lanes::max8(x);
    (max, sum_exp8(x, max).ln())
}

/// The flex kernels behind a Burn backend extension, and their autodiff.
#[cfg(feature = "fused")]
mod flex {
    use super::lanes::{Lanes, both, lane_sum, map, max8, sigmoid, update};
    use super::{GELU_2C, GELU_A, max_and_log_sum_exp, sum8};
    use burn::backend::autodiff::NodeId;
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::retro_forward::RetroForward;
    use burn::backend::autodiff::checkpoint::state::BackwardStates;
    use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
    use burn::backend::flex::FlexTensor;
    use burn::backend::tensor::{FloatTensor, IntTensor};
    use burn::backend::{Autodiff, AutodiffBackend, Backend, Dispatch, Flex, backend_extension};
    use burn::tensor::{DType, Int, Shape, Tensor, TensorData};

    #[backend_extension(Flex, Autodiff)]
    pub trait Fused: Backend {
        fn causal_softmax(x: FloatTensor<Self>, scale: f32, offset: usize) -> FloatTensor<Self>;
        fn causal_softmax_backward(probs: FloatTensor<Self>, grad: FloatTensor<Self>, scale: f32) -> FloatTensor<Self>;
        fn gelu_new(x: FloatTensor<Self>) -> FloatTensor<Self>;
        fn gelu_new_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self>;
        fn token_log_probs(logits: FloatTensor<Self>, targets: IntTensor<Self>) -> FloatTensor<Self>;
        fn token_log_probs_backward(logits: FloatTensor<Self>, targets: IntTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self>;
        fn fused_layer_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>, eps: f64) -> FloatTensor<Self>;
        fn layer_norm_backward_input(x: FloatTensor<Self>, weight: FloatTensor<Self>, grad: FloatTensor<Self>, eps: f64) -> FloatTensor<Self>;
        fn layer_norm_backward_weight(x: FloatTensor<Self>, grad: FloatTensor<Self>, eps: f64) -> FloatTensor<Self>;
        fn layer_norm_backward_bias(grad: FloatTensor<Self>) -> FloatTensor<Self>;
        fn fused_rms_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, eps: f64) -> FloatTensor<Self>;
        fn rms_norm_backward_input(x: FloatTensor<Self>, weight: FloatTensor<Self>, grad: FloatTensor<Self>, eps: f64) -> FloatTensor<Self>;
        fn rms_norm_backward_weight(x: FloatTensor<Self>, grad: FloatTensor<Self>, eps: f64) -> FloatTensor<Self>;
        fn fused_swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self>;
        fn swiglu_backward_gate(gate: FloatTensor<Self>, up: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self>;
        fn swiglu_backward_up(gate: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self>;
    }

    pub fn causal_softmax(scores: Tensor<4>, scale: f32, offset: usize) -> Tensor<4> {
        Tensor::from_dispatch(<Dispatch as Fused>::causal_softmax(scores.into_dispatch(), scale, offset))
    }

    pub fn gelu_new<const D: usize>(x: Tensor<D>) -> Tensor<D> {
        Tensor::from_dispatch(<Dispatch as Fused>::gelu_new(x.into_dispatch()))
    }

    pub fn token_log_probs(logits: Tensor<3>, targets: Tensor<2, Int>) -> Tensor<2> {
        Tensor::from_dispatch(<Dispatch as Fused>::token_log_probs(logits.into_dispatch(), targets.into_dispatch()))
    }

    pub fn layer_norm<const D: usize>(x: Tensor<D>, weight: Tensor<1>, bias: Tensor<1>, eps: f64) -> Tensor<D> {
        Tensor::from_dispatch(<Dispatch as Fused>::fused_layer_norm(x.into_dispatch(), weight.into_dispatch(), bias.into_dispatch(), eps))
    }

    pub fn rms_norm<const D: usize>(x: Tensor<D>, weight: Tensor<1>, eps: f64) -> Tensor<D> {
        Tensor::from_dispatch(<Dispatch as Fused>::fused_rms_norm(x.into_dispatch(), weight.into_dispatch(), eps))
    }

    pub fn swiglu<const D: usize>(gate: Tensor<D>, up: Tensor<D>) -> Tensor<D> {
        Tensor::from_dispatch(<Dispatch as Fused>::fused_swiglu(gate.into_dispatch(), up.into_dispatch()))
    }

    // ---- flex: the kernels, over contiguous f32 rows ----

    /// Runs `f(chunk index, output chunk)` over `out` in chunks of `CHUNK` values, across
    /// threads: for elementwise kernels, whose rows are whatever the caller's shape says.
    fn elementwise(out: &mut [f32], f: impl Fn(usize, &mut [f32]) + Sync + Send) {
        const CHUNK: usize = 4096;
        let n = out.len();
        rows(
            out,
            CHUNK.min(n),
            CHUNK,
            #[inline(always)]
            |c, o| f(c * CHUNK, o),
        );
    }

    /// A row's centre and scale: LayerNorm's mean and 1/√(biased variance + ε), as Burn's
    /// layer_norm computes them, or (not `centered`) RMSNorm's 0 and 1/√(mean(x²) + ε).
    #[inline(always)]
    fn moments(row: &[f32], eps: f64, centered: bool) -> (f32, f32) {
        let n = row.len() as f32;
        let mean = if centered { sum8(row) / n } else { 0.0 };
        let var = lane_sum(row, both!(|v| (v - L::splat(mean)) * (v - L::splat(mean)))) / n;
        (mean, 1.0 / (var + eps as f32).sqrt())
    }

    /// LayerNorm (`centered`, with its bias) or RMSNorm (no bias) over the last dimension.
    fn norm(x: FlexTensor, weight: FlexTensor, bias: Option<FlexTensor>, eps: f64, centered: bool) -> FlexTensor {
        let (x, w, b) = (dense(x), dense(weight), bias.map(dense));
        let dims = shape(&x);
        let n = dims[dims.num_dims() - 1];
        let (input, w, b) = (values(&x), values(&w), b.as_ref().map(values));
        let mut out = vec![0.0f32; input.len()];
        rows(
            &mut out,
            n,
            n,
            #[inline(always)]
            |r, o| {
                let row = &input[r * n..(r + 1) * n];
                let (mean, inv) = moments(row, eps, centered);
                match b {
                    Some(b) => map(o, [row, w, b], both!(|v, w, b| (v - L::splat(mean)) * L::splat(inv) * w + b)),
                    None => map(o, [row, w], both!(|v, w| (v - L::splat(mean)) * L::splat(inv) * w)),
                }
            },
        );
        build(out, dims)
    }

    /// [`norm`]'s input gradient. With x̂ = (x − μ)/σ (μ = 0 for RMSNorm) and ĝ = g ⊙ w:
    /// dx = (ĝ − mean(ĝ) − x̂ · mean(ĝ ⊙ x̂)) / σ, without the mean(ĝ) term for RMSNorm.
    fn norm_backward_input(x: FlexTensor, weight: FlexTensor, grad: FlexTensor, eps: f64, centered: bool) -> FlexTensor {
        let (x, w, g) = (dense(x), dense(weight), dense(grad));
        let dims = shape(&x);
        let n = dims[dims.num_dims() - 1];
        let (input, w, gv) = (values(&x), values(&w), values(&g));
        let mut out = vec![0.0f32; input.len()];
        rows(
            &mut out,
            n,
            2 * n,
            #[inline(always)]
            |r, o| {
                let (row, g) = (&input[r * n..(r + 1) * n], &gv[r * n..(r + 1) * n]);
                let (mean, inv) = moments(row, eps, centered);
                let (mut sum_g, mut sum_gx) = (0.0f32, 0.0f32);
                for ((&v, &g), &w) in row.iter().zip(g).zip(w) {
                    sum_g += g * w;
                    sum_gx += g * w * (v - mean) * inv;
                }
                let mean_g = if centered { sum_g / n as f32 } else { 0.0 };
                let mean_gx = sum_gx / n as f32;
                map(o, [row, g, w], both!(|v, g, w| (g * w - L::splat(mean_g) - (v - L::splat(mean)) * L::splat(inv) * L::splat(mean_gx)) * L::splat(inv)));
            },
        );
        build(out, dims)
    }

    /// [`norm`]'s weight gradient: the column sums of g ⊙ x̂.
    fn norm_backward_weight(x: FlexTensor, grad: FlexTensor, eps: f64, centered: bool) -> FlexTensor {
        let (x, g) = (dense(x), dense(grad));
        let dims = shape(&x);
        let n = dims[dims.num_dims() - 1];
        let (input, gv) = (values(&x), values(&g));
        let sums = column_sums(
            input.len() / n.max(1),
            n,
            #[inline(always)]
            |r, acc| {
                let (row, g) = (&input[r * n..(r + 1) * n], &gv[r * n..(r + 1) * n]);
                let (mean, inv) = moments(row, eps, centered);
                update(acc, [row, g], both!(|a; v, g| a + g * (v - L::splat(mean)) * L::splat(inv)));
            },
        );
        build(sums, vec![n].into())
    }

    /// Column sums of `f(row index, row)` over a `[rows, n]` matrix, rows split across
    /// threads with `rayon` (partial sums added in task order).
    fn column_sums(rows_n: usize, n: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) -> Vec<f32> {
        let per_task = (16_384 / n.max(1)).max(1);
        let tasks = rows_n.div_ceil(per_task);
        let task = |k: usize| {
            let mut acc = vec![0.0f32; n];
            widest_simd(
                #[inline(always)]
                || {
                    for r in k * per_task..((k + 1) * per_task).min(rows_n) {
                        f(r, &mut acc);
                    }
                },
            );
            acc
        };
        #[cfg(feature = "rayon")]
        let parts: Vec<Vec<f32>> = {
            use rayon::prelude::*;
            (0..tasks).into_par_iter().map(task).collect()
        };
        #[cfg(not(feature = "rayon"))]
        let parts: Vec<Vec<f32>> = (0..tasks).map(task).collect();
        let mut sum = vec![0.0f32; n];
        for p in parts {
            sum.iter_mut().zip(p).for_each(|(s, p)| *s += p);
        }
        sum
    }

    /// A contiguous copy when `t` is strided (a view), else `t` itself.
    fn dense(t: FlexTensor) -> FlexTensor {
        if t.layout().contiguous_offsets().is_some() { t } else { t.to_contiguous() }
    }

    fn values(t: &FlexTensor) -> &[f32] {
        let (start, end) = t.layout().contiguous_offsets().expect("a dense tensor");
        &t.storage::<f32>()[start..end]
    }

    fn shape(t: &FlexTensor) -> Shape {
        t.layout().shape().clone()
    }

    fn build(v: Vec<f32>, shape: Shape) -> FlexTensor {
        FlexTensor::from_data(TensorData::new(v, shape))
    }

    /// Token ids as indices; an id outside `0..n` becomes `usize::MAX` (its row's result is NaN).
    fn indices(t: FlexTensor, n: usize) -> Vec<usize> {
        let t = dense(t);
        let (start, end) = t.layout().contiguous_offsets().expect("a dense tensor");
        let ok = |i: i64| if (0..n as i64).contains(&i) { i as usize } else { usize::MAX };
        match t.dtype() {
            DType::I64 => t.storage::<i64>()[start..end].iter().map(|&i| ok(i)).collect(),
            DType::I32 => t.storage::<i32>()[start..end].iter().map(|&i| ok(i as i64)).collect(),
            DType::U32 => t.storage::<u32>()[start..end].iter().map(|&i| ok(i as i64)).collect(),
            DType::U64 => t.storage::<u64>()[start..end].iter().map(|&i| ok(i.min(i64::MAX as u64) as i64)).collect(),
            other => panic!("token ids of type {other:?}; tinytune makes them i64 or i32"),
        }
    }

    /// Runs `f` compiled for the widest vector instructions this CPU has: AVX-512 or AVX2
    /// with FMA on x86-64, found at run time (the binary itself targets baseline x86-64, whose
    /// SSE2 has 4 lanes). `f` and the kernel loops it calls are inlined into a copy built
    /// with those features, so the loops vectorise 16 or 8 lanes wide. On one CPU the
    /// results are those of the baseline copy bit for bit: Rust never fuses a multiply and an
    /// add on its own, and the kernels' sums fix their order in eight explicit lanes. (Matrix
    /// products are another matter: gemm picks its kernels and blocks by CPU.)
    #[inline(always)]
    pub(super) fn widest_simd(f: impl FnOnce()) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") {
                if has!("avx512f") {
                    // SAFETY: the CPU has just been found to have each feature `x86::v4`
                    // enables (std reports avx512f only with the f16c it implies).
                    return unsafe { x86::v4(f) };
                }
                // SAFETY: as above, for `x86::v3`.
                return unsafe { x86::v3(f) };
            }
        }
        f()
    }

    #[cfg(target_arch = "x86_64")]
    pub(super) mod x86 {
        /// `f` built for x86-64-v4's AVX-512 (foundation).
        #[target_feature(enable = "avx512f,avx2,fma")]
        pub unsafe fn v4(f: impl FnOnce()) {
            f()
        }

        /// `f` built for x86-64-v3's AVX2 and FMA.
        #[target_feature(enable = "avx2,fma")]
        pub unsafe fn v3(f: impl FnOnce()) {
            f()
        }
    }

    /// Runs `f(row index, output row)` over `out`'s rows of `n`, across threads with `rayon`;
    /// `cost` is a row's work in elements, so that each task gets enough of it.
    fn rows(out: &mut [f32], n: usize, cost: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
        if n == 0 {
            return;
        }
        #[cfg(feature = "rayon")]
        {
            use rayon::prelude::*;
            // Enough work per task that scheduling stays small beside it.
            let per_task = (16_384 / cost.max(1)).max(1);
            out.par_chunks_mut(n * per_task).enumerate().for_each(|(c, chunk)| {
                widest_simd(
                    #[inline(always)]
                    || {
                        for (k, row) in chunk.chunks_mut(n).enumerate() {
                            f(c * per_task + k, row)
                        }
                    },
                )
            });
        }
        #[cfg(not(feature = "rayon"))]
        let _ = cost;
        #[cfg(not(feature = "rayon"))]
        widest_simd(
            #[inline(always)]
            || {
                for (r, row) in out.chunks_mut(n).enumerate() {
                    f(r, row)
                }
            },
        )
    }

    impl Fused for Flex {
        fn causal_softmax(x: FloatTensor<Self>, scale: f32, offset: usize) -> FloatTensor<Self> {
            let x = dense(x);
            let dims = shape(&x);
            let (t, n) = (dims[dims.num_dims() - 2], dims[dims.num_dims() - 1]);
            let input = values(&x);
            let mut out = vec![0.0f32; input.len()];
            rows(
                &mut out,
                n,
                n,
                #[inline(always)]
                |r, o| {
                    let visible = (r % t + offset + 1).min(n);
                    let row = &input[r * n..r * n + visible];
                    let o = &mut o[..visible];
                    map(o, [row], both!(|v| v * L::splat(scale)));
                    let max = max8(o);
                    update(o, [], both!(|o;| (o - L::splat(max)).cephes_exp()));
                    let inv = 1.0 / sum8(o);
                    update(o, [], both!(|o;| o * L::splat(inv)));
                },
            );
            build(out, dims)
        }

        fn causal_softmax_backward(probs: FloatTensor<Self>, grad: FloatTensor<Self>, scale: f32) -> FloatTensor<Self> {
            let (p, g) = (dense(probs), dense(grad));
            let dims = shape(&p);
            let n = dims[dims.num_dims() - 1];
            let (pv, gv) = (values(&p), values(&g));
            let mut out = vec![0.0f32; pv.len()];
            rows(
                &mut out,
                n,
                n,
                #[inline(always)]
                |r, o| {
                    let (p, g) = (&pv[r * n..(r + 1) * n], &gv[r * n..(r + 1) * n]);
                    map(o, [p, g], both!(|p, g| p * g));
                    let dot = sum8(o);
                    map(o, [p, g], both!(|p, g| L::splat(scale) * p * (g - L::splat(dot))));
                },
            );
            build(out, dims)
        }

        fn gelu_new(x: FloatTensor<Self>) -> FloatTensor<Self> {
            let x = dense(x);
            let dims = shape(&x);
            let input = values(&x);
            let mut out = vec![0.0f32; input.len()];
            elementwise(
                &mut out,
                #[inline(always)]
                |at, o| {
                    map(o, [&input[at..]], both!(|x| x * sigmoid(L::splat(GELU_2C) * (x + L::splat(GELU_A) * x * x * x))));
                },
            );
            build(out, dims)
        }

        fn gelu_new_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
            let (x, g) = (dense(x), dense(grad));
            let dims = shape(&x);
            let (xv, gv) = (values(&x), values(&g));
            let mut out = vec![0.0f32; xv.len()];
            elementwise(
                &mut out,
                #[inline(always)]
                |at, o| {
                    map(
                        o,
                        [&xv[at..], &gv[at..]],
                        both!(|x, g| {
                            let s = sigmoid(L::splat(GELU_2C) * (x + L::splat(GELU_A) * x * x * x));
                            g * (s + x * s * (L::splat(1.0) - s) * L::splat(GELU_2C) * (L::splat(1.0) + L::splat(3.0 * GELU_A) * x * x))
                        }),
                    );
                },
            );
            build(out, dims)
        }

        fn token_log_probs(logits: FloatTensor<Self>, targets: IntTensor<Self>) -> FloatTensor<Self> {
            let x = dense(logits);
            let dims = shape(&x);
            let n = dims[dims.num_dims() - 1];
            let picked = indices(targets, n);
            let input = values(&x);
            let mut out = vec![0.0f32; picked.len()];
            // One output per row: rows of one.
            rows(
                &mut out,
                1,
                n,
                #[inline(always)]
                |r, o| {
                    let row = &input[r * n..(r + 1) * n];
                    let (max, lse) = max_and_log_sum_exp(row);
                    o[0] = match row.get(picked[r]) {
                        Some(&v) => (v - max) - lse,
                        None => f32::NAN,
                    };
                },
            );
            build(out, (0..dims.num_dims() - 1).map(|i| dims[i]).collect::<Vec<_>>().into())
        }

        fn token_log_probs_backward(logits: FloatTensor<Self>, targets: IntTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
            let (x, g) = (dense(logits), dense(grad));
            let dims = shape(&x);
            let n = dims[dims.num_dims() - 1];
            let picked = indices(targets, n);
            let (input, gv) = (values(&x), values(&g));
            let mut out = vec![0.0f32; input.len()];
            rows(
                &mut out,
                n,
                n,
                #[inline(always)]
                |r, o| {
                    let row = &input[r * n..(r + 1) * n];
                    let (max, lse) = max_and_log_sum_exp(row);
                    let shift = max + lse;
                    let g = gv[r];
                    map(o, [row], both!(|v| -L::splat(g) * (v - L::splat(shift)).cephes_exp()));
                    if let Some(o) = o.get_mut(picked[r]) {
                        *o += g;
                    }
                },
            );
            build(out, dims)
        }

        fn fused_layer_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
            norm(x, weight, Some(bias), eps, true)
        }

        fn layer_norm_backward_input(x: FloatTensor<Self>, weight: FloatTensor<Self>, grad: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
            norm_backward_input(x, weight, grad, eps, true)
        }

        fn layer_norm_backward_weight(x: FloatTensor<Self>, grad: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
            norm_backward_weight(x, grad, eps, true)
        }

        fn layer_norm_backward_bias(grad: FloatTensor<Self>) -> FloatTensor<Self> {
            let g = dense(grad);
            let dims = shape(&g);
            let n = dims[dims.num_dims() - 1];
            let gv = values(&g);
            let sums = column_sums(
                gv.len() / n.max(1),
                n,
                #[inline(always)]
                |r, acc| update(acc, [&gv[r * n..(r + 1) * n]], both!(|a; g| a + g)),
            );
            build(sums, vec![n].into())
        }

        fn fused_rms_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
            norm(x, weight, None, eps, false)
        }

        fn rms_norm_backward_input(x: FloatTensor<Self>, weight: FloatTensor<Self>, grad: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
            norm_backward_input(x, weight, grad, eps, false)
        }

        fn rms_norm_backward_weight(x: FloatTensor<Self>, grad: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
            norm_backward_weight(x, grad, eps, false)
        }

        fn fused_swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
            let (a, b) = (dense(gate), dense(up));
            let dims = shape(&a);
            let (av, bv) = (values(&a), values(&b));
            let mut out = vec![0.0f32; av.len()];
            elementwise(
                &mut out,
                #[inline(always)]
                |at, o| {
                    map(o, [&av[at..], &bv[at..]], both!(|a, b| a * sigmoid(a) * b));
                },
            );
            build(out, dims)
        }

        fn swiglu_backward_gate(gate: FloatTensor<Self>, up: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
            let (a, b, g) = (dense(gate), dense(up), dense(grad));
            let dims = shape(&a);
            let (av, bv, gv) = (values(&a), values(&b), values(&g));
            let mut out = vec![0.0f32; av.len()];
            elementwise(
                &mut out,
                #[inline(always)]
                |at, o| {
                    // d silu(a)/da = σ(a) · (1 + a · (1 − σ(a))).
                    map(
                        o,
                        [&av[at..], &bv[at..], &gv[at..]],
                        both!(|a, b, g| {
                            let s = sigmoid(a);
                            g * b * s * (L::splat(1.0) + a * (L::splat(1.0) - s))
                        }),
                    );
                },
            );
            build(out, dims)
        }

        fn swiglu_backward_up(gate: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
            let (a, g) = (dense(gate), dense(grad));
            let dims = shape(&a);
            let (av, gv) = (values(&a), values(&g));
            let mut out = vec![0.0f32; av.len()];
            elementwise(
                &mut out,
                #[inline(always)]
                |at, o| {
                    map(o, [&av[at..], &gv[at..]], both!(|a, g| g * a * sigmoid(a)));
                },
            );
            build(out, dims)
        }
    }

    // ---- autodiff: each forward kernel records its backward kernel ----

    /// A memory-bound kernel's retro-forward: under gradient checkpointing, recomputes the
    /// kernel's output from its `N` inputs (themselves recomputed first where checkpointing
    /// dropped them) when a backward pass asks for it.
    struct Recompute<B: Backend, const N: usize> {
        inputs: [NodeId; N],
        forward: Box<dyn Fn([B::FloatTensorPrimitive; N]) -> B::FloatTensorPrimitive + Send + Sync>,
    }

    impl<B: Backend, const N: usize> Recompute<B, N> {
        fn new(inputs: [NodeId; N], forward: impl Fn([B::FloatTensorPrimitive; N]) -> B::FloatTensorPrimitive + Send + Sync + 'static) -> Self {
            Self { inputs, forward: Box::new(forward) }
        }
    }

    impl<B: Backend, const N: usize> std::fmt::Debug for Recompute<B, N> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Recompute").field("inputs", &self.inputs).finish_non_exhaustive()
        }
    }

    impl<B: Backend, const N: usize> RetroForward for Recompute<B, N> {
        fn forward(&self, states: &mut BackwardStates, out: NodeId) {
            let inputs = self.inputs.map(|id| states.get_state::<B::FloatTensorPrimitive>(&id));
            states.save(out, (self.forward)(inputs));
        }
    }

    impl<B: Fused, C: CheckpointStrategy> Fused for Autodiff<B, C> {
        fn causal_softmax(x: FloatTensor<Self>, scale: f32, offset: usize) -> FloatTensor<Self> {
            #[derive(Debug)]
            struct CausalSoftmax;
            impl<B: Fused> Backward<B, 1> for CausalSoftmax {
                type State = (B::FloatTensorPrimitive, f32);
                fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
                    let (probs, scale) = ops.state;
                    unary::<B, _>(ops.parents, ops.node, grads, |g| B::causal_softmax_backward(probs, g, scale));
                }
            }
            let (x, node) = x.into_parts();
            match CausalSoftmax.prepare::<C>([node]).compute_bound().stateful() {
                OpsKind::Tracked(prep) => {
                    let p = B::causal_softmax(x, scale, offset);
                    prep.finish((p.clone(), scale), p)
                }
                OpsKind::UnTracked(prep) => prep.finish(B::causal_softmax(x, scale, offset)),
            }
        }

        fn gelu_new(x: FloatTensor<Self>) -> FloatTensor<Self> {
            #[derive(Debug)]
            struct GeluNew;
            impl<B: Fused> Backward<B, 1> for GeluNew {
                type State = NodeId;
                fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
                    let x = checkpointer.retrieve_node_output(ops.state);
                    unary::<B, _>(ops.parents, ops.node, grads, |g| B::gelu_new_backward(x, g));
                }
            }
            match GeluNew.prepare::<C>([x.node()]).memory_bound().retro_forward(Recompute::<B, 1>::new([x.id()], |[x]| B::gelu_new(x))).parents([&x]).stateful()
            {
                OpsKind::Tracked(mut prep) => {
                    let state = prep.checkpoint(&x);
                    prep.finish(state, B::gelu_new(x.into_primitive()))
                }
                OpsKind::UnTracked(prep) => prep.finish(B::gelu_new(x.into_primitive())),
            }
        }

        fn token_log_probs(logits: FloatTensor<Self>, targets: IntTensor<Self>) -> FloatTensor<Self> {
            #[derive(Debug)]
            struct TokenLogProbs;
            impl<B: Fused> Backward<B, 1> for TokenLogProbs {
                type State = (B::FloatTensorPrimitive, B::IntTensorPrimitive);
                fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
                    let (logits, targets) = ops.state;
                    unary::<B, _>(ops.parents, ops.node, grads, |g| B::token_log_probs_backward(logits, targets, g));
                }
            }
            let (x, node) = logits.into_parts();
            match TokenLogProbs.prepare::<C>([node]).compute_bound().stateful() {
                OpsKind::Tracked(prep) => {
                    let y = B::token_log_probs(x.clone(), targets.clone());
                    prep.finish((x, targets), y)
                }
                OpsKind::UnTracked(prep) => prep.finish(B::token_log_probs(x, targets)),
            }
        }

        fn fused_layer_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
            #[derive(Debug)]
            struct LayerNorm;
            impl<B: Fused> Backward<B, 3> for LayerNorm {
                type State = (NodeId, NodeId, f64);
                fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
                    let (ix, iw, eps) = ops.state;
                    let x: B::FloatTensorPrimitive = checkpointer.retrieve_node_output(ix);
                    let w = checkpointer.retrieve_node_output(iw);
                    let g = grads.consume::<B>(&ops.node);
                    let [px, pw, pb] = ops.parents;
                    if let Some(p) = pb {
                        grads.register::<B>(p.id, B::layer_norm_backward_bias(g.clone()));
                    }
                    if let Some(p) = pw {
                        grads.register::<B>(p.id, B::layer_norm_backward_weight(x.clone(), g.clone(), eps));
                    }
                    if let Some(p) = px {
                        grads.register::<B>(p.id, B::layer_norm_backward_input(x, w, g, eps));
                    }
                }
            }
            let retro = Recompute::<B, 3>::new([x.id(), weight.id(), bias.id()], move |[x, w, b]| B::fused_layer_norm(x, w, b, eps));
            let prepared =
                LayerNorm.prepare::<C>([x.node(), weight.node(), bias.node()]).memory_bound().retro_forward(retro).parents([&x, &weight, &bias]).stateful();
            match prepared {
                OpsKind::Tracked(mut prep) => {
                    let state = (prep.checkpoint(&x), prep.checkpoint(&weight), eps);
                    prep.finish(state, B::fused_layer_norm(x.into_primitive(), weight.into_primitive(), bias.into_primitive(), eps))
                }
                OpsKind::UnTracked(prep) => prep.finish(B::fused_layer_norm(x.into_primitive(), weight.into_primitive(), bias.into_primitive(), eps)),
            }
        }

        fn fused_rms_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
            #[derive(Debug)]
            struct RmsNorm;
            impl<B: Fused> Backward<B, 2> for RmsNorm {
                type State = (NodeId, NodeId, f64);
                fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
                    let (ix, iw, eps) = ops.state;
                    let x: B::FloatTensorPrimitive = checkpointer.retrieve_node_output(ix);
                    let w = checkpointer.retrieve_node_output(iw);
                    let g = grads.consume::<B>(&ops.node);
                    let [px, pw] = ops.parents;
                    if let Some(p) = pw {
                        grads.register::<B>(p.id, B::rms_norm_backward_weight(x.clone(), g.clone(), eps));
                    }
                    if let Some(p) = px {
                        grads.register::<B>(p.id, B::rms_norm_backward_input(x, w, g, eps));
                    }
                }
            }
            let retro = Recompute::<B, 2>::new([x.id(), weight.id()], move |[x, w]| B::fused_rms_norm(x, w, eps));
            match RmsNorm.prepare::<C>([x.node(), weight.node()]).memory_bound().retro_forward(retro).parents([&x, &weight]).stateful() {
                OpsKind::Tracked(mut prep) => {
                    let state = (prep.checkpoint(&x), prep.checkpoint(&weight), eps);
                    prep.finish(state, B::fused_rms_norm(x.into_primitive(), weight.into_primitive(), eps))
                }
                OpsKind::UnTracked(prep) => prep.finish(B::fused_rms_norm(x.into_primitive(), weight.into_primitive(), eps)),
            }
        }

        fn fused_swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
            #[derive(Debug)]
            struct SwiGlu;
            impl<B: Fused> Backward<B, 2> for SwiGlu {
                type State = (NodeId, NodeId);
                fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
                    let (ia, ib) = ops.state;
                    let a: B::FloatTensorPrimitive = checkpointer.retrieve_node_output(ia);
                    let b = checkpointer.retrieve_node_output(ib);
                    let g = grads.consume::<B>(&ops.node);
                    let [pa, pb] = ops.parents;
                    if let Some(p) = pb {
                        grads.register::<B>(p.id, B::swiglu_backward_up(a.clone(), g.clone()));
                    }
                    if let Some(p) = pa {
                        grads.register::<B>(p.id, B::swiglu_backward_gate(a, b, g));
                    }
                }
            }
            let retro = Recompute::<B, 2>::new([gate.id(), up.id()], |[a, b]| B::fused_swiglu(a, b));
            match SwiGlu.prepare::<C>([gate.node(), up.node()]).memory_bound().retro_forward(retro).parents([&gate, &up]).stateful() {
                OpsKind::Tracked(mut prep) => {
                    let state = (prep.checkpoint(&gate), prep.checkpoint(&up));
                    prep.finish(state, B::fused_swiglu(gate.into_primitive(), up.into_primitive()))
                }
                OpsKind::UnTracked(prep) => prep.finish(B::fused_swiglu(gate.into_primitive(), up.into_primitive())),
            }
        }

        // The backward kernels take part in no graph themselves (no second derivatives).
        fn rms_norm_backward_input(x: FloatTensor<Self>, weight: FloatTensor<Self>, grad: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
            Self::from_inner(B::rms_norm_backward_input(Self::inner(x), Self::inner(weight), Self::inner(grad), eps))
        }

        fn rms_norm_backward_weight(x: FloatTensor<Self>, grad: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
            Self::from_inner(B::rms_norm_backward_weight(Self::inner(x), Self::inner(grad), eps))
        }

        fn swiglu_backward_gate(gate: FloatTensor<Self>, up: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
            Self::from_inner(B::swiglu_backward_gate(Self::inner(gate), Self::inner(up), Self::inner(grad)))
        }

        fn swiglu_backward_up(gate: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
            Self::from_inner(B::swiglu_backward_up(Self::inner(gate), Self::inner(grad)))
        }

        fn layer_norm_backward_input(x: FloatTensor<Self>, weight: FloatTensor<Self>, grad: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
            Self::from_inner(B::layer_norm_backward_input(Self::inner(x), Self::inner(weight), Self::inner(grad), eps))
        }

        fn layer_norm_backward_weight(x: FloatTensor<Self>, grad: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
            Self::from_inner(B::layer_norm_backward_weight(Self::inner(x), Self::inner(grad), eps))
        }

        fn layer_norm_backward_bias(grad: FloatTensor<Self>) -> FloatTensor<Self> {
            Self::from_inner(B::layer_norm_backward_bias(Self::inner(grad)))
        }

        fn causal_softmax_backward(probs: FloatTensor<Self>, grad: FloatTensor<Self>, scale: f32) -> FloatTensor<Self> {
            Self::from_inner(B::causal_softmax_backward(Self::inner(probs), Self::inner(grad), scale))
        }

        fn gelu_new_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
            Self::from_inner(B::gelu_new_backward(Self::inner(x), Self::inner(grad)))
        }

        fn token_log_probs_backward(logits: FloatTensor<Self>, targets: IntTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
            Self::from_inner(B::token_log_probs_backward(Self::inner(logits), targets, Self::inner(grad)))
        }
    }

    /// Every kernel gives the same bits whether its loops take four lanes at a time (as in the
    /// browser's wasm build) or one value at a time (as natively, before vectorisation), NaN
    /// for NaN.
    #[cfg(test)]
    mod four_lanes {
        use super::{Flex, FlexTensor, Fused, TensorData, build, values};

        fn tensor(n: usize, shape: &[usize], scale: f32) -> FlexTensor {
            // Values within ±2·scale; at a scale above 10 (arguments past exp's ends once the
            // kernels scale them), with NaN, infinities and exp's edges every 41 values, so
            // in a different row and column each time.
            let mut v: Vec<f32> = (0..n).map(|i| ((i as f32 * 0.731).sin() + (i as f32 * 0.057).cos()) * scale).collect();
            if scale > 10.0 {
                let special = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 88.71, -86.49];
                for (k, i) in (3..n).step_by(41).enumerate() {
                    v[i] = special[k % special.len()];
                }
            }
            build(v, shape.to_vec().into())
        }

        fn bits(t: FlexTensor) -> Vec<u32> {
            values(&t).iter().map(|v| v.to_bits()).collect()
        }

        /// Each kernel's output bits, with the loops one value or four at a time.
        fn outputs() -> Vec<(&'static str, Vec<u32>)> {
            // Rows of 37 (tails after four and eight lanes); 8,195 elementwise values (chunks
            // of 4,096, 4,096 and 3: the last all tail).
            let (rows, n) = ([2, 3, 5], 37);
            let x = || tensor(2 * 3 * 5 * 37, &[2, 3, 5, n], 1.5);
            let g = || tensor(2 * 3 * 5 * 37, &[2, 3, 5, n], 0.3);
            let w = || tensor(n, &[n], 1.1);
            let e = || tensor(8195, &[5, 1639], 4.0);
            let eg = || tensor(8195, &[5, 1639], 0.7);
            let wide = || tensor(8195, &[5, 1639], 40.0);
            let targets = || FlexTensor::from_data(TensorData::new((0..30).map(|i| (i * 7 % n) as i64).collect::<Vec<_>>(), rows.to_vec()));
            let logits = || tensor(30 * n, &[2, 3, 5, n], 9.0);
            let lp_grad = || tensor(30, &rows, 0.5);
            let probs = Flex::causal_softmax(x(), 0.25, 0);
            vec![
                // An offset of 20 shows each query 21 to 25 keys: full chunks of eight and a tail.
                ("causal_softmax", bits(Flex::causal_softmax(tensor(30 * n, &[2, 3, 5, n], 40.0), 0.25, 20))),
                ("causal_softmax_backward", bits(Flex::causal_softmax_backward(probs, g(), 0.25))),
                ("gelu_new", bits(Flex::gelu_new(wide()))),
                ("gelu_new_backward", bits(Flex::gelu_new_backward(e(), eg()))),
                ("token_log_probs", bits(Flex::token_log_probs(logits(), targets()))),
                ("token_log_probs_backward", bits(Flex::token_log_probs_backward(logits(), targets(), lp_grad()))),
                ("fused_layer_norm", bits(Flex::fused_layer_norm(x(), w(), w(), 1e-5))),
                ("layer_norm_backward_input", bits(Flex::layer_norm_backward_input(x(), w(), g(), 1e-5))),
                ("layer_norm_backward_weight", bits(Flex::layer_norm_backward_weight(x(), g(), 1e-5))),
                ("layer_norm_backward_bias", bits(Flex::layer_norm_backward_bias(g()))),
                ("fused_rms_norm", bits(Flex::fused_rms_norm(x(), w(), 1e-6))),
                ("rms_norm_backward_input", bits(Flex::rms_norm_backward_input(x(), w(), g(), 1e-6))),
                ("rms_norm_backward_weight", bits(Flex::rms_norm_backward_weight(x(), g(), 1e-6))),
                ("fused_swiglu", bits(Flex::fused_swiglu(wide(), e()))),
                ("swiglu_backward_gate", bits(Flex::swiglu_backward_gate(e(), eg(), wide()))),
                ("swiglu_backward_up", bits(Flex::swiglu_backward_up(wide(), eg()))),
            ]
        }

        #[test]
        fn every_kernel_gives_the_same_bits_four_lanes_at_a_time() {
            crate::kernels::lanes::set_four(false);
            let one = outputs();
            crate::kernels::lanes::set_four(true);
            let four = outputs();
            crate::kernels::lanes::set_four(false);
            for ((name, a), (_, b)) in one.iter().zip(&four) {
                assert!(!a.is_empty(), "{name} gave nothing");
                // A NaN is any NaN: IEEE 754 (and WebAssembly) leave a NaN result's sign and
                // payload open, and compilers may swap a commutative operation's operands.
                let same = |a: &u32, b: &u32| a == b || (f32::from_bits(*a).is_nan() && f32::from_bits(*b).is_nan());
                let differ = a.iter().zip(b).filter(|(a, b)| !same(a, b)).count();
                for (i, (x, y)) in a.iter().zip(b).enumerate().filter(|(_, (a, b))| !same(a, b)).take(5) {
                    eprintln!("{name}[{i}]: {} one value at a time, {} four", f32::from_bits(*x), f32::from_bits(*y));
                }
                assert_eq!(differ, 0, "{name}: {differ} of {} values differ four lanes at a time", a.len());
            }
            // The wide inputs reach exp's special cases: NaN in, NaN out; σ = 0 once exp
            // overflows to ∞ (GELU of a large negative input is then 0).
            let gelu = &one.iter().find(|(n, _)| *n == "gelu_new").expect("gelu_new").1;
            assert!(gelu.iter().any(|&b| f32::from_bits(b).is_nan()));
            assert!(gelu.iter().any(|&b| f32::from_bits(b) == 0.0));
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn exp_is_within_two_ulp_of_the_library_and_keeps_its_edges() {
        let mut worst = 0.0f64;
        let mut x = -86.0f32;
        while x < 88.7 {
            let (got, want) = (super::exp(x) as f64, (x as f64).exp());
            worst = worst.max(((got - want) / want).abs());
            x += 0.001_37;
        }
        // 2 ulp of f32 is 2·2⁻²³ ≈ 2.4e-7 relative.
        assert!(worst < 2.4e-7, "worst relative error {worst:e}");
        assert_eq!(super::exp(0.0), 1.0);
        assert_eq!(super::exp(-1e9), 0.0);
        assert_eq!(super::exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(super::exp(89.0), f32::INFINITY);
        assert!(super::exp(88.7).is_finite());
        assert!(super::exp(f32::NAN).is_nan());
    }

    /// The kernels' loops give the same bits in the AVX-512 or AVX2 copy that
    /// `widest_simd` runs as in the baseline copy on the same CPU (no fused multiply-adds,
    /// fixed summation order).
    #[cfg(feature = "fused")]
    #[test]
    fn the_widest_simd_copy_gives_the_same_bits_as_the_baseline_build() {
        let mut x: Vec<f32> = (0..4099).map(|i| (i as f32 * 0.37).sin() * 12.0 - 1.0).collect();
        x.extend([f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1e30, -1e30, 0.0, -0.0, 88.7, -86.4]);
        #[inline(always)]
        fn kernel(x: &[f32], out: &mut Vec<f32>) {
            for (o, &v) in out.iter_mut().zip(x) {
                let s = super::lanes::sigmoid(super::GELU_2C * (v + super::GELU_A * v * v * v));
                *o = v * s + super::exp(v - 2.0) * (1.0 - s);
            }
            let finite = &x[..4099];
            out.extend([super::sum_exp8(finite, 3.0), super::lanes::max8(finite), super::sum8(finite)]);
        }
        let mut plain = vec![0.0f32; x.len()];
        kernel(&x, &mut plain);
        let mut wide = vec![0.0f32; x.len()];
        super::flex::widest_simd(
            #[inline(always)]
            || kernel(&x, &mut wide),
        );
        let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&plain), bits(&wide));
        // The AVX2 copy too, which `widest_simd` passes over on an AVX-512 machine.
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            let mut v3 = vec![0.0f32; x.len()];
            // SAFETY: the CPU has both features `v3` enables.
            unsafe {
                super::flex::x86::v3(
                    #[inline(always)]
                    || kernel(&x, &mut v3),
                )
            };
            assert_eq!(bits(&plain), bits(&v3));
        }
    }

    #[test]
    fn lane_sums_and_maxima_cover_tails() {
        let x: Vec<f32> = (0..19).map(|i| (i as f32 * 0.7).sin()).collect();
        let want: f32 = x.iter().sum();
        assert!((super::sum8(&x) - want).abs() < 1e-6);
        assert_eq!(super::lanes::max8(&x), x.iter().cloned().fold(f32::NEG_INFINITY, f32::max));
        assert_eq!(super::lanes::max8(&[]), f32::NEG_INFINITY);
        let want: f32 = x.iter().map(|v| (v - 1.0).exp()).sum();
        assert!((super::sum_exp8(&x, 1.0) - want).abs() < 1e-5);
    }
}
