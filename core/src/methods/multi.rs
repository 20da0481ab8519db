//! Several LoRA adapters on one frozen base, served side by side: each row of a batch uses
//! its own adapter (or none) in one forward pass, nothing merged. This is the gather-per-row
//! technique of S-LoRA (Sheng et al., 2023) and Punica (Chen et al., 2023): the base
//! multiplication runs once for the whole batch, and for each adapter the rows routed to it
//! are gathered, sent through its `s·(x·A)·B`, and added back in place.
//!
//! Every projection an adapter touches holds it in a [`LoraBank`] (not a parameter: it never
//! trains and checkpoints never see it); the rows' routing is set once per forward pass on
//! the [`MultiLora`] and shared by all of its projections.

use std::sync::{Arc, Mutex};

use burn::tensor::{Int, Tensor, TensorData};

use crate::error::{Error, Result};
use crate::methods::Lora;
use crate::model::Gpt;

/// Which adapter (by its index in the bank) each row of the next forward pass uses; empty
/// for "every row uses the base". One per [`MultiLora`], shared by its projections.
#[derive(Clone, Debug, Default)]
pub struct Routing(Arc<Mutex<Vec<Option<usize>>>>);

impl Routing {
    fn set(&self, rows: Vec<Option<usize>>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = rows;
    }

    fn rows(&self) -> Vec<Option<usize>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// One projection's adapters, by bank index (`None`: that adapter leaves this projection
/// alone), and the routing of the model it sits in.
#[derive(Clone, Debug)]
pub struct LoraBank {
    pub adapters: Vec<Option<Lora>>,
    pub routing: Routing,
}

impl LoraBank {
    /// `out` (the base projection of `x`, `[batch, ..., d_out]`) plus each row's adapter
    /// update: the rows of one adapter gathered, updated together, and added back.
    pub fn forward<const D: usize>(&self, x: Tensor<D>, mut out: Tensor<D>) -> Tensor<D> {
        let rows = self.routing.rows();
        if rows.is_empty() {
            return out;
        }
        let batch = x.dims()[0];
        assert_eq!(rows.len(), batch, "the routing names {} rows for a batch of {batch}", rows.len());
        let device = x.device();
        for (k, lora) in self.adapters.iter().enumerate() {
            let Some(lora) = lora else { continue };
            let ids: Vec<i64> = rows.iter().enumerate().filter(|(_, r)| **r == Some(k)).map(|(i, _)| i as i64).collect();
            if ids.is_empty() {
                continue;
            }
            if ids.len() == batch {
                out = out + lora.forward(x.clone());
                continue;
            }
            let n = ids.len();
            let ids = Tensor::<1, Int>::from_data(TensorData::new(ids, [n]), &device);
            let update = lora.forward(x.clone().select(0, ids.clone()));
            out = out.select_assign(0, ids, update, burn::tensor::IndexingUpdateOp::Add);
        }
        out
    }
}

/// A base model with named LoRA adapters loaded side by side.
#[derive(Clone, Debug)]
pub struct MultiLora {
    /// The base, with every adapted projection holding its [`LoraBank`].
    pub model: Gpt,
    /// The adapters' names, in bank order.
    pub names: Vec<String>,
    routing: Routing,
}

impl MultiLora {
    /// `base` (a plain model) with `adapters`: each a name and the base adapted by one LoRA
    /// adapter (a PEFT folder loaded onto it, or a tinytune LoRA run of it). Refuses an
    /// adapter of another kind (DoRA, IA³, soft prompts, bottleneck adapters), one trained on
    /// other base weights, and repeated names.
    pub fn new(base: Gpt, adapters: Vec<(String, Gpt)>) -> Result<Self> {
        let origin = "adapters";
        let mut problem = None;
        super::for_each_projection_ref(&base, |path, p| {
            if problem.is_none() && (p.lora.is_some() || p.ia3.is_some()) {
                problem = Some(format!("the base model is itself adapted at {path}; load the adapters onto a plain model"));
            }
        });
        if let Some(p) = problem {
            return Err(Error::config(origin, "base", p));
        }
        let mut names: Vec<String> = Vec::new();
        for (name, adapted) in &adapters {
            if names.contains(name) {
                return Err(Error::config(origin, name.as_str(), "is named twice; give each adapter its own name"));
            }
            names.push(name.clone());
            if adapted.prompt.is_some() || adapted.prefix.is_some() || adapted.h.iter().any(|b| b.adapter_attn.is_some() || b.adapter_mlp.is_some()) {
                return Err(Error::config(
                    origin,
                    name.as_str(),
                    "is not a LoRA adapter (soft prompt, prefix or bottleneck adapter); only LoRA serves side by side",
                ));
            }
            if adapted.config() != base.config() {
                return Err(Error::config(origin, name.as_str(), "was made for another architecture (its config.json differs from the base's)"));
            }
        }
        let routing = Routing::default();
        let mut model = base;
        let mut failure = None;
        let mut touched = vec![false; adapters.len()];
        super::for_each_projection(&mut model, |path, p| {
            let mut bank = Vec::with_capacity(adapters.len());
            for (k, (name, adapted)) in adapters.iter().enumerate() {
                let mut theirs = None;
                super::for_each_projection_ref(adapted, |q, proj| {
                    if q == path {
                        theirs = Some((proj.lora.clone(), proj.ia3.is_some(), proj.base_weight()));
                    }
                });
                let Some((lora, ia3, weight)) = theirs else { continue };
                if failure.is_some() {
                    continue;
                }
                if ia3 || lora.as_ref().is_some_and(|l| l.magnitude.is_some()) {
                    failure = Some((name.clone(), format!("adapts {path} with IA³ or DoRA; only plain LoRA serves side by side")));
                    continue;
                }
                // The adapter must sit on these very weights.
                let diff: f32 = (weight - p.base_weight()).abs().max().into_scalar::<f32>();
                if diff > 1e-6 {
                    failure = Some((name.clone(), format!("was trained on other base weights ({path} differs by {diff:.3e}); load it onto its own base")));
                    continue;
                }
                touched[k] |= lora.is_some();
                bank.push(lora);
            }
            if bank.iter().any(Option::is_some) {
                p.bank = Some(LoraBank { adapters: bank, routing: routing.clone() });
            }
        });
        if let Some((name, why)) = failure {
            return Err(Error::config(origin, name.as_str(), why));
        }
        if let Some(k) = touched.iter().position(|t| !t) {
            return Err(Error::config(origin, names[k].as_str(), "adds no LoRA update to any projection; is it a LoRA adapter?"));
        }
        Ok(Self { model, names, routing })
    }

    /// The index of adapter `name`.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    /// Routes the rows of the next forward passes: row i through adapter `rows[i]` (or the
    /// base). Every pass until the next call must have `rows.len()` rows.
    pub fn route(&mut self, rows: &[Option<usize>]) -> Result<()> {
        if let Some(bad) = rows.iter().flatten().find(|k| **k >= self.names.len()) {
            return Err(Error::config("adapters", "rows", format!("names adapter {bad}, but {} are loaded", self.names.len())));
        }
        self.routing.set(rows.to_vec());
        Ok(())
    }

    /// Logits `[batch, seq, vocab]` of `ids` with row i through adapter `rows[i]`, in one
    /// forward pass.
    pub fn forward(&mut self, ids: Tensor<2, Int>, rows: &[Option<usize>]) -> Result<Tensor<3>> {
        let batch = ids.dims()[0];
        if rows.len() != batch {
            return Err(Error::config("adapters", "rows", format!("routes {} rows for a batch of {batch}", rows.len())));
        }
        self.route(rows)?;
        let logits = self.model.forward(ids);
        self.routing.set(Vec::new());
        Ok(logits)
    }
}

/// Why a stream stopped: a stop token, or its token budget (or the caller's stop text).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Finish {
    Stop,
    Length,
}

/// One text being generated in a shared batch: its adapter, its tokens so far, its own
/// sampling settings and generator (seeded as [`crate::sample::generate`] seeds it, so a
/// stream samples the same tokens as generating it alone).
#[derive(Clone, Debug)]
pub struct Stream {
    pub adapter: Option<usize>,
    ids: Vec<u32>,
    /// The tokens generated so far.
    pub out: Vec<u32>,
    config: crate::sample::SampleConfig,
    rng: crate::data::rng::Rng,
    pub finished: Option<Finish>,
}

impl Stream {
    /// A stream continuing `prompt` (at least one token) through `adapter`.
    pub fn new(prompt: &[u32], adapter: Option<usize>, config: crate::sample::SampleConfig) -> Self {
        let finished = (config.max_new_tokens == 0).then_some(Finish::Length);
        Self { adapter, ids: prompt.to_vec(), out: Vec::new(), rng: crate::data::rng::Rng::derive(config.seed, "sample"), config, finished }
    }

    /// Ends the stream early (a stop string matched, the client left).
    pub fn finish(&mut self, why: Finish) {
        self.finished = Some(why);
    }
}

impl MultiLora {
    /// One token for every unfinished stream in `streams`, from one forward pass over them all:
    /// each row its stream's last `context_len` tokens, right-padded to the longest (causal
    /// attention never looks right, so padding changes no row's last real position), each
    /// through its own adapter. Returns how many streams took a token.
    pub fn step(&mut self, streams: &mut [Stream]) -> Result<usize> {
        let live: Vec<usize> = (0..streams.len()).filter(|&i| streams[i].finished.is_none()).collect();
        if live.is_empty() {
            return Ok(0);
        }
        let context = self.model.context_len();
        let windows: Vec<&[u32]> = live.iter().map(|&i| &streams[i].ids[streams[i].ids.len().saturating_sub(context)..]).collect();
        if windows.iter().any(|w| w.is_empty()) {
            return Err(Error::config("adapters", "prompt", "is empty; a stream needs at least one token to continue"));
        }
        let width = windows.iter().map(|w| w.len()).max().unwrap_or(1);
        let mut flat = Vec::with_capacity(live.len() * width);
        for w in &windows {
            flat.extend(w.iter().map(|&t| t as i64));
            flat.extend(std::iter::repeat_n(0i64, width - w.len()));
        }
        let lengths: Vec<usize> = windows.iter().map(|w| w.len()).collect();
        let routes: Vec<Option<usize>> = live.iter().map(|&i| streams[i].adapter).collect();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(flat, [live.len(), width]), &self.model.device());
        let logits = self.forward(ids, &routes)?;
        let vocab = logits.dims()[2];
        // Only each row's last real position is read back.
        let last: Vec<i64> = lengths.iter().enumerate().map(|(row, len)| (row * width + len - 1) as i64).collect();
        let last = Tensor::<1, Int>::from_data(TensorData::new(last, [live.len()]), &self.model.device());
        let logits = logits.reshape([live.len() * width, vocab]).select(0, last);
        let values: Vec<f32> =
            logits.into_data().convert::<f32>().try_into_vec().map_err(|e| Error::Invalid(format!("reading the logits back failed: {e:?}")))?;
        for (row, &i) in live.iter().enumerate() {
            let at = row * vocab;
            let s = &mut streams[i];
            let next = crate::sample::pick(&values[at..at + vocab], &s.config, &mut s.rng);
            s.ids.push(next);
            s.out.push(next);
            if s.config.stop_ids.contains(&next) {
                s.finished = Some(Finish::Stop);
            } else if s.out.len() >= s.config.max_new_tokens {
                s.finished = Some(Finish::Length);
            }
        }
        Ok(live.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::rng::Rng;
    use crate::methods::{LoraConfig, Method};
    use crate::model::ModelConfig;
    use burn::module::Param;
    use burn::tensor::Device;

    /// The base with a LoRA on `targets` whose B is random too (a fresh LoRA adds nothing).
    fn adapted(base: &Gpt, targets: &[&str], seed: u64, device: &Device) -> Gpt {
        let config = LoraConfig { r: 4, lora_alpha: 8.0, target_modules: targets.iter().map(|t| t.to_string()).collect(), ..Default::default() };
        let mut model = Method::Lora(config).apply(base.clone(), seed, device).unwrap();
        let mut rng = Rng::new(seed);
        super::super::for_each_projection(&mut model, |_, p| {
            if let Some(l) = &mut p.lora {
                let [r, d_out] = l.lora_b.val().dims();
                let values: Vec<f32> = (0..r * d_out).map(|_| (rng.unit_f64() as f32 - 0.5) * 0.4).collect();
                l.lora_b = Param::from_tensor(Tensor::from_data(TensorData::new(values, [r, d_out]), device));
            }
        });
        model
    }

    #[test]
    fn a_mixed_batch_equals_each_row_alone_with_its_adapter() {
        let device = Device::flex();
        let base = Gpt::init(&ModelConfig::nano(), 1, &device);
        let x = adapted(&base, &["c_attn"], 2, &device);
        let y = adapted(&base, &["c_attn", "c_fc", "c_proj"], 3, &device);
        let mut multi = MultiLora::new(base.clone(), vec![("x".into(), x.clone()), ("y".into(), y.clone())]).unwrap();
        let rows = [vec![1i64, 5, 9, 2, 7], vec![3, 3, 8, 1, 0], vec![4, 6, 2, 2, 9], vec![7, 1, 1, 5, 3]];
        let routes = [Some(1), None, Some(0), Some(1)];
        let ids = |rs: &[&Vec<i64>]| {
            let flat: Vec<i64> = rs.iter().flat_map(|r| r.iter().copied()).collect();
            Tensor::<2, Int>::from_data(TensorData::new(flat, [rs.len(), 5]), &device)
        };
        let mixed: Vec<f32> = multi.forward(ids(&rows.iter().collect::<Vec<_>>()), &routes).unwrap().into_data().try_into_vec().unwrap();
        let per_row = mixed.len() / rows.len();
        let mut moved = 0.0f32;
        for (i, (row, route)) in rows.iter().zip(routes).enumerate() {
            let alone = match route {
                Some(0) => &x,
                Some(_) => &y,
                None => &base,
            };
            let want: Vec<f32> = alone.forward(ids(&[row])).into_data().try_into_vec().unwrap();
            let plain: Vec<f32> = base.forward(ids(&[row])).into_data().try_into_vec().unwrap();
            let got = &mixed[i * per_row..(i + 1) * per_row];
            let worst = got.iter().zip(&want).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(worst < 1e-5, "row {i} ({route:?}) differs from running it alone by {worst}");
            moved = moved.max(want.iter().zip(&plain).fold(0.0f32, |m, (a, b)| m.max((a - b).abs())));
        }
        // The adapters change the logits, so the check above is not base against base.
        assert!(moved > 1e-3, "{moved}");
        // The routing is cleared after the pass: the model alone is the base again.
        let again: Vec<f32> = multi.model.forward(ids(&[&rows[0]])).into_data().try_into_vec().unwrap();
        let plain: Vec<f32> = base.forward(ids(&[&rows[0]])).into_data().try_into_vec().unwrap();
        assert_eq!(again, plain);
        assert!(multi.forward(ids(&[&rows[0]]), &[Some(2)]).is_err());
        assert!(multi.forward(ids(&[&rows[0]]), &[None, None]).is_err());
        let other = Gpt::init(&ModelConfig::nano(), 9, &device);
        let err = MultiLora::new(base.clone(), vec![("z".into(), adapted(&other, &["c_attn"], 4, &device))]).unwrap_err().to_string();
        assert!(err.contains("other base weights"), "{err}");
        let err = MultiLora::new(base, vec![("x".into(), x.clone()), ("x".into(), x)]).unwrap_err().to_string();
        assert!(err.contains("named twice"), "{err}");
    }

    #[test]
    fn streams_stepped_together_take_the_tokens_each_takes_alone() {
        use crate::sample::{SampleConfig, generate};
        let device = Device::flex();
        let base = Gpt::init(&ModelConfig::nano(), 1, &device);
        let x = adapted(&base, &["c_attn", "c_fc"], 2, &device);
        let mut multi = MultiLora::new(base.clone(), vec![("x".into(), x.clone())]).unwrap();
        let greedy = SampleConfig { max_new_tokens: 6, temperature: 0.0, top_k: None, seed: 0, stop_ids: vec![], cache: false };
        let sampled = SampleConfig { temperature: 0.9, top_k: Some(5), seed: 7, ..greedy.clone() };
        let prompts: [&[u32]; 3] = [&[3, 9, 4, 1], &[7], &[2, 2, 8]];
        let cases = [(prompts[0], Some(0), greedy.clone()), (prompts[1], None, sampled.clone()), (prompts[2], Some(0), sampled)];
        let mut streams: Vec<Stream> = cases.iter().map(|(p, a, c)| Stream::new(p, *a, c.clone())).collect();
        while multi.step(&mut streams).unwrap() > 0 {}
        for ((prompt, adapter, config), s) in cases.iter().zip(&streams) {
            let alone = generate(if adapter.is_some() { &x } else { &base }, prompt, config);
            assert_eq!(s.out, alone, "{prompt:?} through {adapter:?}");
            assert_eq!(s.finished, Some(Finish::Length));
        }
    }
}
