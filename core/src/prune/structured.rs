//! Structured pruning, Minitron's width and depth axes (Muralidharan et al., 2024): whole
//! attention heads, MLP neurons and transformer blocks come out, and what is left is a
//! smaller model of an ordinary config that any loader reads.
//!
//! Importance, from one pass of the calibration batches through the unpruned model, averaged
//! over the counted tokens:
//! - a head: the L2 norm of its attention output (its slice of the output projection's input);
//! - an MLP neuron: its |activation| after the nonlinearity (GELU's output for GPT-2,
//!   `silu(gate)·up` for the Llama family: the down projection's input);
//! - a block: 1 − the cosine similarity of its input and output hidden states (Block
//!   Influence, as ShortGPT, Men et al., 2024, and Minitron's depth pruning).
//!
//! The lowest go, ties lowest index first. With grouped-query attention a key/value head
//! and the query heads that read it go together (a group's importance is the sum of its
//! query heads'). GPT-2's heads are not pruned: its `config.json` has no head width of its
//! own (transformers derives `n_embd / n_head`), so fewer heads of the same width cannot be
//! written down; the Llama family's `head_dim` can.

use burn::module::Param;
use burn::tensor::{Int, Tensor, TensorData};
use serde::Serialize;
use serde_json::Value;

use super::select::kept;
use super::{Structured, calibrate};
use crate::error::{Error, Result};
use crate::model::Gpt;
use crate::model::projection::Projection;
use crate::model::record::Recorder;
use crate::train::Batch;

/// Importance of every head, neuron and block of a model, from calibration activations.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Importance {
    /// Per block, per query head: the mean L2 norm of the head's attention output.
    pub heads: Vec<Vec<f64>>,
    /// Per block, per MLP hidden neuron: the mean |activation| after the nonlinearity.
    pub neurons: Vec<Vec<f64>>,
    /// Per block: 1 − mean cos(input, output).
    pub layers: Vec<f64>,
    /// Tokens the means are over.
    pub tokens: f64,
}

/// Measures [`Importance`] on `calibration` (the model comes back unchanged).
pub fn importance(mut model: Gpt, calibration: &[Batch]) -> Result<(Gpt, Importance)> {
    let calib = calibrate::embed(&model, calibration)?;
    let hd = model.config.head_dim();
    let recorder = Recorder::new();
    recorder.attach(&mut model, |path| {
        if path.ends_with("attn.c_proj") || path.ends_with("attn.o_proj") {
            Some(Some(hd))
        } else if path.ends_with("mlp.c_proj") || path.ends_with("mlp.down_proj") {
            Some(None)
        } else {
            None
        }
    });
    let mut influence = vec![0f64; model.h.len()];
    for (x, mask) in calib.xs.into_iter().zip(&calib.masks) {
        recorder.set_mask(Some(mask.clone()));
        let mut x = x;
        for (l, block) in model.h.iter().enumerate() {
            let y = block.forward_with(x.clone(), None, calib.rope.as_ref());
            let cos = calibrate::cosine(x, y.clone());
            influence[l] += cos.iter().zip(mask).map(|(c, &m)| m as f64 * (1.0 - *c as f64)).sum::<f64>();
            x = y;
        }
    }
    let stats = recorder.take();
    Recorder::detach(&mut model);
    let tokens = calib.tokens;
    let mean = |v: &[f32]| v.iter().map(|&s| s as f64 / tokens).collect::<Vec<f64>>();
    let (mut heads, mut neurons) = (Vec::new(), Vec::new());
    for (l, block) in model.h.iter().enumerate() {
        let out = block.attn.projections().into_iter().find(|(n, _)| *n == "attn.c_proj" || *n == "attn.o_proj").map(|(n, _)| n);
        let down = block.mlp.projections().into_iter().find(|(n, _)| *n == "mlp.c_proj" || *n == "mlp.down_proj").map(|(n, _)| n);
        let get = |name: Option<&str>| {
            name.and_then(|n| stats.get(&format!("h.{l}.{n}"))).ok_or_else(|| Error::Invalid(format!("block {l} recorded no activations")))
        };
        heads.push(mean(get(out)?.group_norm.as_deref().unwrap_or_default()));
        neurons.push(mean(&get(down)?.sum_abs));
    }
    let layers = influence.iter().map(|s| s / tokens).collect();
    Ok((model, Importance { heads, neurons, layers, tokens }))
}

/// What stays: blocks by index, and in each kept block (by its original index) the query
/// heads and MLP neurons, in order. None keeps all of them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Keep {
    pub layers: Vec<usize>,
    pub heads: Option<Vec<Vec<usize>>>,
    pub neurons: Option<Vec<Vec<usize>>>,
}

/// One block's importance and what was removed from it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LayerReport {
    /// The block's index in the model before pruning.
    pub layer: usize,
    /// Its index after (None: removed).
    pub new_index: Option<usize>,
    pub block_influence: f64,
    /// Per query head, mean L2 norm of its output.
    pub heads: Vec<f64>,
    pub heads_removed: Vec<usize>,
    /// Per MLP neuron, mean |activation|.
    pub neurons: Vec<f64>,
    pub neurons_removed: Vec<usize>,
}

/// The sizes structured pruning changes.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Shape {
    pub n_layer: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub inner: usize,
}

impl Shape {
    fn of(c: &crate::ModelConfig) -> Self {
        Self { n_layer: c.n_layer, n_head: c.n_head, n_kv_head: c.n_kv_head, head_dim: c.head_dim(), inner: c.inner() }
    }
}

/// What structured pruning did: the importance it ranked by and what it removed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StructuredReport {
    pub shape_before: Shape,
    pub shape_after: Shape,
    /// Query heads per key/value head (pruned together).
    pub heads_per_group: usize,
    pub layers_removed: Vec<usize>,
    pub calibration_tokens: f64,
    pub layers: Vec<LayerReport>,
}

/// Prunes heads, neurons and blocks as `plan` says, ranked by their importance on
/// `calibration`.
pub fn prune_structured(model: Gpt, plan: &Structured, calibration: &[Batch]) -> Result<(Gpt, StructuredReport)> {
    let (model, imp) = importance(model, calibration)?;
    let c = model.config.clone();
    let rep = c.n_head / c.n_kv_head;
    let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
    let layers = match plan.layers {
        Some(l) => kept(&f32s(&imp.layers), c.n_layer - l),
        None => (0..c.n_layer).collect(),
    };
    let heads = plan.heads.map(|k| {
        imp.heads
            .iter()
            .map(|h| {
                let groups: Vec<f32> = h.chunks(rep).map(|g| g.iter().sum::<f64>() as f32).collect();
                kept(&groups, c.n_kv_head - k / rep).into_iter().flat_map(|g| g * rep..(g + 1) * rep).collect()
            })
            .collect::<Vec<Vec<usize>>>()
    });
    let neurons = plan.neurons.map(|n| imp.neurons.iter().map(|v| kept(&f32s(v), c.inner() - n)).collect::<Vec<Vec<usize>>>());
    let keep = Keep { layers, heads, neurons };
    let pruned = slice(model, &keep)?;
    let removed = |all: usize, kept: Option<&Vec<usize>>| kept.map_or(Vec::new(), |k| (0..all).filter(|i| !k.contains(i)).collect());
    let reports = (0..c.n_layer)
        .map(|l| LayerReport {
            layer: l,
            new_index: keep.layers.iter().position(|&k| k == l),
            block_influence: imp.layers[l],
            heads: imp.heads[l].clone(),
            heads_removed: removed(c.n_head, keep.heads.as_ref().map(|h| &h[l])),
            neurons: imp.neurons[l].clone(),
            neurons_removed: removed(c.inner(), keep.neurons.as_ref().map(|n| &n[l])),
        })
        .collect();
    let report = StructuredReport {
        shape_before: Shape::of(&c),
        shape_after: Shape::of(&pruned.config),
        heads_per_group: rep,
        layers_removed: (0..c.n_layer).filter(|l| !keep.layers.contains(l)).collect(),
        calibration_tokens: imp.tokens,
        layers: reports,
    };
    Ok((pruned, report))
}

fn indices(idx: &[usize], device: &burn::tensor::Device) -> Tensor<1, Int> {
    Tensor::<1, Int>::from_data(TensorData::new(idx.iter().map(|&i| i as i64).collect::<Vec<_>>(), [idx.len()]), device)
}

/// Keeps the output columns `idx` of a projection (weight `[in, out]` columns and bias).
fn keep_outputs(p: &mut Projection, idx: &[usize]) {
    let w = p.weight.take().expect("an FP32 weight (checked before pruning)").val();
    let i = indices(idx, &w.device());
    p.weight = Some(Param::from_tensor(w.select(1, i.clone())));
    p.source = None;
    p.bias = p.bias.take().map(|b| Param::from_tensor(b.val().select(0, i)));
}

/// Keeps the input rows `idx` of a projection (weight `[in, out]` rows; the bias stays).
fn keep_inputs(p: &mut Projection, idx: &[usize]) {
    let w = p.weight.take().expect("an FP32 weight (checked before pruning)").val();
    let i = indices(idx, &w.device());
    p.weight = Some(Param::from_tensor(w.select(0, i)));
    p.source = None;
}

/// `model` with only the blocks, heads and neurons `keep` names, and the config that
/// describes it (fewer `n_layer`, `n_head`/`n_kv_head` with `head_dim` kept, a smaller
/// MLP width).
pub fn slice(mut model: Gpt, keep: &Keep) -> Result<Gpt> {
    super::check_prunable(&model)?;
    let mut c = model.config.clone();
    let (hd, rep) = (c.head_dim(), c.n_head / c.n_kv_head);
    let n = model.h.len();
    if [keep.heads.as_ref(), keep.neurons.as_ref()].into_iter().flatten().any(|lists| lists.len() != n) {
        return Err(Error::Invalid(format!("the kept heads and neurons are listed per block: {n} lists")));
    }
    let within = |lists: Option<&Vec<Vec<usize>>>, size: usize| lists.is_none_or(|ls| ls.iter().all(|l| !l.is_empty() && l.iter().all(|&i| i < size)));
    if !within(keep.heads.as_ref(), c.n_head) || !within(keep.neurons.as_ref(), c.inner()) {
        return Err(Error::Invalid(format!("every block keeps at least one head and one neuron, of the {} heads and {} neurons it has", c.n_head, c.inner())));
    }
    if keep.layers.windows(2).any(|w| w[0] >= w[1]) {
        return Err(Error::Invalid(format!("the kept blocks {:?} must be in increasing order", keep.layers)));
    }
    let uniform =
        |lists: Option<&Vec<Vec<usize>>>| lists.is_none_or(|ls| keep.layers.iter().all(|&l| ls.get(l).map(Vec::len) == ls.get(keep.layers[0]).map(Vec::len)));
    if !uniform(keep.heads.as_ref()) || !uniform(keep.neurons.as_ref()) {
        return Err(Error::Invalid("every kept block must keep as many heads, and as many neurons, as the others (one config describes them all)".into()));
    }
    let mut blocks: Vec<Option<_>> = std::mem::take(&mut model.h).into_iter().map(Some).collect();
    for &l in &keep.layers {
        let mut block = blocks.get_mut(l).and_then(Option::take).ok_or_else(|| Error::Invalid(format!("block {l} is not in the model or kept twice")))?;
        if let Some(heads) = keep.heads.as_ref().map(|h| &h[l]) {
            if !c.family.is_llama_like() {
                return Err(Error::config(super::ORIGIN, "heads", super::GPT2_HEADS));
            }
            if heads.len() % rep != 0 || heads.chunks(rep).any(|g| g[0] % rep != 0 || g.iter().enumerate().any(|(i, &h)| h != g[0] + i)) {
                return Err(Error::Invalid(format!("block {l}: heads {heads:?} are not whole key/value groups of {rep}")));
            }
            let cols = |hs: &[usize]| hs.iter().flat_map(|&h| h * hd..(h + 1) * hd).collect::<Vec<usize>>();
            let groups: Vec<usize> = heads.iter().step_by(rep).map(|&h| h / rep).collect();
            let attn = &mut block.attn;
            keep_outputs(attn.q_proj.as_mut().expect("a Llama-family attention"), &cols(heads));
            keep_outputs(attn.k_proj.as_mut().expect("a Llama-family attention"), &cols(&groups));
            keep_outputs(attn.v_proj.as_mut().expect("a Llama-family attention"), &cols(&groups));
            keep_inputs(attn.o_proj.as_mut().expect("a Llama-family attention"), &cols(heads));
            attn.n_head = heads.len();
            attn.n_kv_head = groups.len();
        }
        if let Some(neurons) = keep.neurons.as_ref().map(|n| &n[l]) {
            let mlp = &mut block.mlp;
            for p in [mlp.c_fc.as_mut(), mlp.gate_proj.as_mut(), mlp.up_proj.as_mut()].into_iter().flatten() {
                keep_outputs(p, neurons);
            }
            for p in [mlp.c_proj.as_mut(), mlp.down_proj.as_mut()].into_iter().flatten() {
                keep_inputs(p, neurons);
            }
        }
        model.h.push(block);
    }
    if let Some(first) = keep.layers.first() {
        if let Some(heads) = keep.heads.as_ref().map(|h| h[*first].len()) {
            c.n_head = heads;
            c.n_kv_head = heads / rep;
            c.head_dim = Some(hd).filter(|&h| h != c.n_embd / heads);
        }
        if let Some(n) = keep.neurons.as_ref().map(|n| n[*first].len()) {
            c.n_inner = Some(n);
        }
    }
    c.n_layer = keep.layers.len();
    if !c.sliding_layers.is_empty() {
        c.sliding_layers = keep.layers.iter().map(|&l| c.sliding_layers.get(l).copied().unwrap_or(false)).collect();
    }
    if let Some(Value::Array(types)) = c.extra.get("layer_types") {
        let types: Vec<Value> = keep.layers.iter().filter_map(|&l| types.get(l).cloned()).collect();
        c.extra.insert("layer_types".into(), Value::Array(types));
    }
    c.validate(super::ORIGIN)?;
    model.config = c;
    Ok(model)
}
