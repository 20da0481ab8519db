//! Text generation: greedy, temperature and top-k sampling, seeded.
//!
//! Sampling happens on the host from the last position's logits, with tinytune's portable
//! generator, so the same seed gives the same text on every backend whose logits agree.
//! Each position's keys and values are computed once and kept (`Gpt::forward_cached`);
//! `cache: false` re-runs the model over the whole window for every token instead, the
//! slow way the cache exists to avoid (both give the same tokens, but for rotations that
//! depend on the sequence's length: see `Gpt::forward_cached`; `tinytune generate
//! --no-cache` measures the difference). When the text outgrows the context, the window
//! slides and the cache starts again from the window.

use burn::tensor::{Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::data::rng::Rng;
use crate::model::Gpt;
use crate::model::transformer::KvCache;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SampleConfig {
    pub max_new_tokens: usize,
    /// 0 means greedy (always the most likely token).
    pub temperature: f64,
    /// Keep only the k most likely tokens before sampling (None: all).
    pub top_k: Option<usize>,
    pub seed: u64,
    /// Stop after generating any of these token ids (e.g. `<|endoftext|>`).
    pub stop_ids: Vec<u32>,
    /// Keep every position's keys and values instead of recomputing them per token.
    #[serde(default = "yes")]
    pub cache: bool,
}

fn yes() -> bool {
    true
}

impl Default for SampleConfig {
    fn default() -> Self {
        Self { max_new_tokens: 100, temperature: 0.8, top_k: Some(40), seed: 0, stop_ids: Vec::new(), cache: true }
    }
}

/// Picks the next token from one position's logits.
pub fn pick(logits: &[f32], config: &SampleConfig, rng: &mut Rng) -> u32 {
    let argmax = || logits.iter().enumerate().fold((0, f32::NEG_INFINITY), |best, (i, &x)| if x > best.1 { (i, x) } else { best }).0 as u32;
    if config.temperature <= 0.0 {
        return argmax();
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if let Some(k) = config.top_k {
        order.truncate(k.max(1));
    }
    // Softmax over the kept logits at the given temperature, max-subtracted for stability.
    let max = logits[order[0]] as f64;
    let weights: Vec<f64> = order.iter().map(|&i| ((logits[i] as f64 - max) / config.temperature).exp()).collect();
    let total: f64 = weights.iter().sum();
    let mut r = rng.unit_f64() * total;
    for (&i, w) in order.iter().zip(&weights) {
        if r < *w {
            return i as u32;
        }
        r -= w;
    }
    order[order.len() - 1] as u32
}

/// Continues `prompt` by up to `max_new_tokens` tokens; returns only the new tokens.
pub fn generate(model: &Gpt, prompt: &[u32], config: &SampleConfig) -> Vec<u32> {
    let mut state = Generation::new(prompt, config);
    while let Some(logits) = state.next_logits(model, config.cache) {
        state.push(&to_vec(logits.into_data()), config);
    }
    state.out
}

/// [`generate`] for the browser, where WebGPU reads results back asynchronously.
pub async fn generate_async(model: &Gpt, prompt: &[u32], config: &SampleConfig) -> crate::Result<Vec<u32>> {
    generate_stream_async(model, prompt, config, |_| {}).await
}

/// [`generate_async`], calling `each` with the tokens generated so far after every new
/// one (how the page shows a reply as it is written).
pub async fn generate_stream_async(model: &Gpt, prompt: &[u32], config: &SampleConfig, mut each: impl FnMut(&[u32])) -> crate::Result<Vec<u32>> {
    let mut state = Generation::new(prompt, config);
    while let Some(logits) = state.next_logits(model, config.cache) {
        let data = logits.into_data_async().await.map_err(|e| crate::Error::Invalid(format!("reading logits back from the device failed: {e:?}")))?;
        state.push(&to_vec(data), config);
        each(&state.out);
    }
    Ok(state.out)
}

/// `n` continuations of one `prompt` sampled together, as one batch of `n` rows sharing the
/// prompt's cached keys and values (GRPO's group of completions). Row `i` draws from its
/// own generator (`config.seed` and `i`), so each row's text is the same however many rows
/// are sampled beside it. Each row stops at its first stop id (kept) or after
/// `max_new_tokens`; the prompt and the completion must fit the context window.
pub fn generate_group(model: &Gpt, prompt: &[u32], n: usize, config: &SampleConfig) -> crate::Result<Vec<Vec<u32>>> {
    let mut group = Group::new(model, prompt, n, config)?;
    while let Some(logits) = group.next_logits(model) {
        group.push(&to_vec(logits.into_data()), config);
    }
    Ok(group.out)
}

/// [`generate_group`] for the browser (asynchronous read-back).
pub async fn generate_group_async(model: &Gpt, prompt: &[u32], n: usize, config: &SampleConfig) -> crate::Result<Vec<Vec<u32>>> {
    let mut group = Group::new(model, prompt, n, config)?;
    while let Some(logits) = group.next_logits(model) {
        let data = logits.into_data_async().await.map_err(|e| crate::Error::Invalid(format!("reading logits back from the device failed: {e:?}")))?;
        group.push(&to_vec(data), config);
    }
    Ok(group.out)
}

/// The state of a group being sampled: each row's generator, tokens and whether it stopped.
struct Group {
    rngs: Vec<Rng>,
    out: Vec<Vec<u32>>,
    done: Vec<bool>,
    /// The next input: the prompt (first call), then each row's last token.
    next: Vec<u32>,
    rows: usize,
    /// Tokens sampled per row so far (finished rows included).
    steps: usize,
    max_new_tokens: usize,
    cache: KvCache,
}

impl Group {
    fn new(model: &Gpt, prompt: &[u32], n: usize, config: &SampleConfig) -> crate::Result<Self> {
        let room = model.context_len().saturating_sub(prompt.len());
        if prompt.is_empty() || room == 0 {
            return Err(crate::Error::Invalid(format!("a prompt of {} tokens leaves no room to sample in a context of {}", prompt.len(), model.context_len())));
        }
        Ok(Self {
            rngs: (0..n).map(|i| Rng::derive(config.seed, &format!("sample/{i}"))).collect(),
            out: vec![Vec::new(); n],
            done: vec![false; n],
            next: prompt.to_vec(),
            rows: n,
            steps: 0,
            max_new_tokens: config.max_new_tokens.min(room),
            cache: KvCache::default(),
        })
    }

    /// The last position's logits of every row, `[n * V]`, or None when all are finished.
    fn next_logits(&mut self, model: &Gpt) -> Option<Tensor<1>> {
        let generated = self.steps;
        if self.done.iter().all(|&d| d) || generated >= self.max_new_tokens {
            return None;
        }
        let t = if generated == 0 { self.next.len() } else { 1 };
        let ids: Vec<i64> = if generated == 0 {
            (0..self.rows).flat_map(|_| self.next.iter().map(|&x| x as i64)).collect()
        } else {
            self.next.iter().map(|&x| x as i64).collect()
        };
        let input = Tensor::<2, Int>::from_data(TensorData::new(ids, [self.rows, t]), &model.device());
        let logits = model.forward_cached(input, &mut self.cache); // [n, t, V]
        let v = logits.dims()[2];
        Some(logits.narrow(1, t - 1, 1).reshape([self.rows * v]))
    }

    fn push(&mut self, logits: &[f32], config: &SampleConfig) {
        let v = logits.len() / self.rows;
        self.steps += 1;
        self.next.clear();
        for (i, row) in logits.chunks(v).enumerate() {
            // A finished row keeps the batch's shape; what it draws is thrown away.
            let token = pick(row, config, &mut self.rngs[i]);
            self.next.push(token);
            if !self.done[i] {
                self.out[i].push(token);
                self.done[i] = config.stop_ids.contains(&token);
            }
        }
    }
}

fn to_vec(data: TensorData) -> Vec<f32> {
    data.convert::<f32>().try_to_vec::<f32>().expect("f32 logits")
}

/// The sampling loop's state, shared by the synchronous and asynchronous drivers.
struct Generation {
    rng: Rng,
    ids: Vec<u32>,
    out: Vec<u32>,
    done: bool,
    max_new_tokens: usize,
    cache: KvCache,
    /// How many of `ids` the cache holds.
    cached: usize,
}

impl Generation {
    fn new(prompt: &[u32], config: &SampleConfig) -> Self {
        Self {
            rng: Rng::derive(config.seed, "sample"),
            ids: prompt.to_vec(),
            out: Vec::new(),
            done: prompt.is_empty(),
            max_new_tokens: config.max_new_tokens,
            cache: KvCache::default(),
            cached: 0,
        }
    }

    /// The last position's logits `[V]` over the context window, or None when finished.
    fn next_logits(&mut self, model: &Gpt, use_cache: bool) -> Option<Tensor<1>> {
        if self.done || self.out.len() >= self.max_new_tokens {
            return None;
        }
        let device = model.device();
        let start = self.ids.len().saturating_sub(model.context_len());
        if start > 0 {
            // The window slid: positions changed, so what the cache holds no longer applies.
            self.cache = KvCache::default();
            self.cached = 0;
        }
        let from = if use_cache { start.max(self.cached) } else { start };
        let ctx: Vec<i64> = self.ids[from..].iter().map(|&x| x as i64).collect();
        let t = ctx.len();
        let input = Tensor::<2, Int>::from_data(TensorData::new(ctx, [1, t]), &device);
        let logits = if use_cache {
            self.cached = self.ids.len();
            model.forward_cached(input, &mut self.cache) // [1, T, V]
        } else {
            model.forward(input) // [1, T, V]
        };
        let v = logits.dims()[2];
        Some(logits.narrow(1, t - 1, 1).reshape([v]))
    }

    fn push(&mut self, logits: &[f32], config: &SampleConfig) {
        let next = pick(logits, config, &mut self.rng);
        self.ids.push(next);
        self.out.push(next);
        self.done = config.stop_ids.contains(&next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_argmax_and_top_k_1_equals_greedy() {
        let logits = [0.1, 2.0, -1.0, 1.9];
        let greedy = SampleConfig { temperature: 0.0, ..Default::default() };
        assert_eq!(pick(&logits, &greedy, &mut Rng::new(0)), 1);
        let top1 = SampleConfig { temperature: 1.0, top_k: Some(1), ..Default::default() };
        for s in 0..20 {
            assert_eq!(pick(&logits, &top1, &mut Rng::new(s)), 1);
        }
    }

    #[test]
    fn sampling_follows_the_softmax() {
        // Two tokens with logits ln 3 and 0 at temperature 1: probabilities 3/4 and 1/4.
        let logits = [3f32.ln(), 0.0];
        let cfg = SampleConfig { temperature: 1.0, top_k: None, ..Default::default() };
        let mut rng = Rng::new(1);
        let n = 20_000;
        let zeros = (0..n).filter(|_| pick(&logits, &cfg, &mut rng) == 0).count();
        let p = zeros as f64 / n as f64;
        // Binomial standard error sqrt(.75·.25/20000) ≈ 0.003.
        assert!((p - 0.75).abs() < 0.015, "{p}");
        // top_k = 1 removes the tail entirely, and a high temperature flattens it.
        let hot = SampleConfig { temperature: 100.0, top_k: None, ..Default::default() };
        let zeros = (0..n).filter(|_| pick(&logits, &hot, &mut rng) == 0).count();
        assert!((zeros as f64 / n as f64 - 0.5).abs() < 0.02);
    }
}
