//! Turning text into training batches: a token stream for pre-training, and padded rows with
//! a loss mask for supervised fine-tuning (SFT), where only the response is learned.

use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::data::rng::Rng;
use crate::data::tasks::Example;
use crate::error::{Error, Result};
use crate::tokenizer::TextTokenizer;

/// One batch on the host: `b` rows of `t` positions, flattened row-major.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Batch {
    pub b: usize,
    pub t: usize,
    pub inputs: Vec<u32>,
    pub targets: Vec<u32>,
    /// 1.0 where the target counts towards the loss, 0.0 where it does not.
    pub weights: Vec<f32>,
    /// Preference batches: each row's reference log-probability (its counted targets'
    /// summed log-probability under the reference model), rows paired chosen then
    /// rejected. Empty for every other batch.
    pub refs: Vec<f32>,
    /// Preference batches: how many token ids each row holds (prompt and completion, before
    /// padding), so a loss over whole sequences (ORPO's NLL) can tell tokens from padding.
    /// Empty for every other batch.
    pub lens: Vec<u32>,
    /// GRPO batches: each row's advantage (its completion's reward against its group's).
    /// Empty for every other batch.
    pub advantages: Vec<f32>,
    /// GRPO batches with a KL term: the reference model's log-probability of each target,
    /// `[B * T]`. Empty otherwise.
    pub token_refs: Vec<f32>,
    /// KTO batches: each example's label (true: desirable), one per row pair (the
    /// example's row, then its mismatched row). Empty for every other batch.
    pub labels: Vec<bool>,
    /// Distillation batches whose completions the student sampled itself (GKD's on-policy
    /// steps): there is no label to learn from, only the teacher's distribution.
    pub on_policy: bool,
    /// Distillation batches served from a teacher cache (`TeacherCache`): the teacher's
    /// logits `[B * T * V]`, zeros where a position does not count. Empty otherwise (the
    /// teacher then runs on the batch).
    pub teacher_logits: Vec<f32>,
}

impl Batch {
    /// Sum of the weights: the number of tokens the loss averages over.
    pub fn weight_sum(&self) -> f32 {
        self.weights.iter().sum()
    }

    /// The vocabulary `teacher_logits` spans (0 when there are none).
    pub fn teacher_vocab(&self) -> usize {
        self.teacher_logits.len() / (self.b * self.t).max(1)
    }

    /// Each row's counted tokens (at least 1, so a per-token mean never divides by 0).
    pub fn row_counts(&self) -> Vec<f32> {
        self.weights.chunks(self.t.max(1)).map(|w| w.iter().sum::<f32>().max(1.0)).collect()
    }

    /// The batch cut into `k` micro-batches of `b / k` consecutive rows (gradient
    /// accumulation); `k` must divide `b`.
    pub fn split(&self, k: usize) -> Vec<Batch> {
        assert!(k >= 1 && self.b.is_multiple_of(k), "{k} micro-batches do not divide a batch of {} rows", self.b);
        let rows = self.b / k;
        let span = rows * self.t;
        (0..k)
            .map(|i| {
                let r = i * span..(i + 1) * span;
                Batch {
                    b: rows,
                    t: self.t,
                    inputs: self.inputs[r.clone()].to_vec(),
                    targets: self.targets[r.clone()].to_vec(),
                    weights: self.weights[r].to_vec(),
                    refs: if self.refs.is_empty() { vec![] } else { self.refs[i * rows..(i + 1) * rows].to_vec() },
                    lens: if self.lens.is_empty() { vec![] } else { self.lens[i * rows..(i + 1) * rows].to_vec() },
                    advantages: if self.advantages.is_empty() { vec![] } else { self.advantages[i * rows..(i + 1) * rows].to_vec() },
                    token_refs: if self.token_refs.is_empty() { vec![] } else { self.token_refs[i * span..(i + 1) * span].to_vec() },
                    labels: if self.labels.is_empty() { vec![] } else { self.labels[i * rows / 2..(i + 1) * rows / 2].to_vec() },
                    on_policy: self.on_policy,
                    teacher_logits: {
                        let v = self.teacher_vocab();
                        self.teacher_logits[i * span * v..(i + 1) * span * v].to_vec()
                    },
                }
            })
            .collect()
    }

    /// 1.0 at every position whose target is one of the row's own tokens (not padding),
    /// `[B * T]`: the mask of a loss over prompt and completion alike. Needs `lens`.
    pub fn sequence_mask(&self) -> Vec<f32> {
        self.lens.iter().flat_map(|&n| (0..self.t).map(move |j| if j + 1 < n as usize { 1.0 } else { 0.0 })).collect()
    }

    /// Uploads the batch: inputs `[B, T]`, targets `[B, T]`, weights `[B, T]`.
    pub fn to_device(&self, device: &Device) -> (Tensor<2, Int>, Tensor<2, Int>, Tensor<2>) {
        let ids = |v: &[u32]| {
            let v: Vec<i64> = v.iter().map(|&x| x as i64).collect();
            Tensor::<2, Int>::from_data(TensorData::new(v, [self.b, self.t]), device)
        };
        let weights = Tensor::<2>::from_data(TensorData::new(self.weights.clone(), [self.b, self.t]), device);
        (ids(&self.inputs), ids(&self.targets), weights)
    }
}

/// What a model trains or is evaluated on.
#[derive(Clone, Debug)]
pub enum Dataset {
    /// Documents joined into one stream, separated by `<|endoftext|>`; batches are random
    /// windows of it (pre-training).
    Stream { tokens: Vec<u32> },
    /// One example per row: prompt then response then `<|endoftext|>`, with weight
    /// `prompt_loss_weight` on prompt tokens and 1 on the rest (supervised fine-tuning).
    Rows { rows: Vec<(Vec<u32>, Vec<f32>)>, pad: u32 },
    /// Preference pairs: rows as in `Rows` (the prompt weighted 0), chosen then rejected,
    /// and once a reference model has scored them ([`Dataset::set_refs`]) each row's
    /// reference log-probability. A batch of `b` draws `b` pairs: `2b` rows.
    ///
    /// KTO's unpaired examples take the same layout ([`Dataset::from_unpaired`]): each
    /// example's own row, then the row of its prompt with another example's completion
    /// (the mismatched pair its KL estimate reads), with each example's label in `labels`
    /// (empty for preference pairs).
    Pairs { rows: Vec<(Vec<u32>, Vec<f32>)>, refs: Vec<f32>, pad: u32, labels: Vec<bool> },
}

impl Dataset {
    pub fn from_documents<'a>(tok: &TextTokenizer, docs: impl IntoIterator<Item = &'a String>) -> Result<Self> {
        let eot = tok
            .eot()
            .ok_or_else(|| Error::Tokenizer("the tokenizer has no end-of-text token (<|endoftext|>, <|end_of_text|> or </s>) to separate documents".into()))?;
        let mut tokens = Vec::new();
        for doc in docs {
            tokens.extend(tok.encode(doc)?);
            tokens.push(eot);
        }
        Ok(Dataset::Stream { tokens })
    }

    /// Rows longer than `max_len + 1` tokens are cut at the end (a row cut before its
    /// response begins keeps weight 0 throughout); when that leaves no row with anything
    /// to learn, the error says to raise `seq_len`.
    pub fn from_examples(tok: &TextTokenizer, examples: &[Example], max_len: usize, prompt_loss_weight: f32) -> Result<Self> {
        let eot = tok.eot();
        let no_end = || Error::Tokenizer("the tokenizer has no end-of-text token (<|endoftext|>, <|end_of_text|> or </s>) to end examples".into());
        let mut rows = Vec::with_capacity(examples.len());
        for ex in examples {
            let p = tok.encode(&ex.prompt)?;
            let r = tok.encode(&ex.response)?;
            let mut ids = p.clone();
            ids.extend(&r);
            // The end of the response is a target like any of its tokens: by position, not
            // by id, so padding with the same id (pad = eos) never masks it.
            if !ex.chat {
                ids.push(eot.ok_or_else(no_end)?);
            }
            // weights[i] is the weight of predicting ids[i]; ids[0] is never a target.
            let mut w = vec![prompt_loss_weight; p.len()];
            w.extend(std::iter::repeat_n(1.0, ids.len() - p.len()));
            ids.truncate(max_len + 1);
            w.truncate(max_len + 1);
            rows.push((ids, w));
        }
        if !rows.is_empty() && rows.iter().all(|(_, w)| w.iter().skip(1).all(|&x| x == 0.0)) {
            return Err(Error::config(
                "training config",
                "seq_len",
                format!("is {max_len} tokens, and every example's response starts after that, so nothing would be learned; raise it"),
            ));
        }
        // Padding never counts (weight 0), so any id will do where there is no end token.
        Ok(Dataset::Rows { rows, pad: eot.unwrap_or(0) })
    }

    /// Preference pairs as rows, chosen then rejected, tokenised as TRL 1.16 does: the
    /// prompt alone, and the prompt joined with each completion (a plain-text completion
    /// ending with the end-of-text token, as TRL appends EOS); the completion starts where
    /// the token ids first differ from the prompt's (usually the prompt's end; earlier when
    /// tokens merge across the boundary). Only completion tokens count. Rows are cut at
    /// `max_len + 1` tokens from the end (TRL's `keep_start`); a pair with a completion cut
    /// to nothing is refused, naming `seq_len`.
    ///
    /// This is `DPOTrainer`'s tokenisation, where both completions start at the same place
    /// (the earlier of the two); [`Dataset::from_pairs_for`] gives each objective its own.
    pub fn from_pairs(tok: &TextTokenizer, pairs: &[crate::data::Pair], max_len: usize) -> Result<Self> {
        Self::pairs_with(tok, pairs, max_len, true)
    }

    /// The pairs tokenised as `objective`'s TRL trainer does: DPO's shared completion start
    /// ([`Dataset::from_pairs`]), or ORPO's (`build_tokenized_answer`), where each
    /// completion starts at its own boundary with the prompt. They differ only when tokens
    /// merge across the boundary differently for the two completions. KTO takes the pairs
    /// apart ([`crate::data::preference::unpair`]) into [`Dataset::from_unpaired`], its
    /// mismatched completions rotating within chunks of `batch` examples.
    pub fn from_pairs_for(objective: &super::Objective, tok: &TextTokenizer, pairs: &[crate::data::Pair], max_len: usize, batch: usize) -> Result<Self> {
        match objective {
            super::Objective::Kto { .. } => Self::from_unpaired(tok, &crate::data::preference::unpair(pairs), max_len, batch),
            super::Objective::Orpo { .. } => Self::pairs_with(tok, pairs, max_len, false),
            _ => Self::pairs_with(tok, pairs, max_len, true),
        }
    }

    /// KTO's examples as rows, tokenised as TRL 1.16's `KTOTrainer` does: the completion
    /// (plain text ending with the end-of-text token) starts where the tokenised prompt and
    /// prompt + completion first differ, and only it counts. Each example's row is followed
    /// by its *mismatched* row: its prompt's tokens with the completion tokens of the
    /// example before it within its chunk of `chunk` examples (the chunk's first takes the
    /// last's), as TRL builds `KL_completion_ids` in chunks of `per_device_train_batch_size`.
    /// Rows are cut at `max_len + 1` tokens; an example whose own completion is cut to
    /// nothing is refused, naming `seq_len`.
    pub fn from_unpaired(tok: &TextTokenizer, examples: &[crate::data::Unpaired], max_len: usize, chunk: usize) -> Result<Self> {
        let eot = tok.eot();
        // Each example's prompt ids (up to where the completion starts) and completion ids.
        let mut split = Vec::with_capacity(examples.len());
        for ex in examples {
            let prompt = tok.encode(&ex.prompt)?;
            let mut ids = tok.encode(&format!("{}{}", ex.prompt, ex.completion))?;
            if !ex.chat {
                ids.push(eot.ok_or_else(|| Error::Tokenizer("the tokenizer has no end-of-text token to end completions with".into()))?);
            }
            let start = prompt.iter().zip(&ids).take_while(|(a, b)| a == b).count();
            let completion = ids.split_off(start);
            split.push((ids, completion));
        }
        let row = |prompt: &[u32], completion: &[u32]| {
            let mut ids = prompt.to_vec();
            ids.extend(completion);
            let mut w: Vec<f32> = (0..ids.len()).map(|j| if j >= prompt.len() { 1.0 } else { 0.0 }).collect();
            ids.truncate(max_len + 1);
            w.truncate(max_len + 1);
            (ids, w)
        };
        let mut rows = Vec::with_capacity(2 * examples.len());
        for (c, group) in split.chunks(chunk.max(1)).enumerate() {
            for (j, (prompt, completion)) in group.iter().enumerate() {
                let own = row(prompt, completion);
                if own.1.iter().skip(1).all(|&x| x == 0.0) {
                    return Err(Error::config(
                        "training config",
                        "seq_len",
                        format!(
                            "is {max_len} tokens, and example {}'s completion starts after that, so it cannot be scored; raise it",
                            c * chunk.max(1) + j + 1
                        ),
                    ));
                }
                rows.push(own);
                let other = &group[(j + group.len() - 1) % group.len()].1;
                rows.push(row(prompt, other));
            }
        }
        let labels = examples.iter().map(|ex| ex.label).collect();
        Ok(Dataset::Pairs { rows, refs: vec![], pad: eot.unwrap_or(0), labels })
    }

    fn pairs_with(tok: &TextTokenizer, pairs: &[crate::data::Pair], max_len: usize, shared_start: bool) -> Result<Self> {
        let eot = tok.eot();
        let mut rows = Vec::with_capacity(2 * pairs.len());
        for (i, pair) in pairs.iter().enumerate() {
            let prompt = tok.encode(&pair.prompt)?;
            let mut full = Vec::new();
            for completion in [&pair.chosen, &pair.rejected] {
                let mut ids = tok.encode(&format!("{}{completion}", pair.prompt))?;
                if !pair.chat {
                    ids.push(eot.ok_or_else(|| Error::Tokenizer("the tokenizer has no end-of-text token to end completions with".into()))?);
                }
                full.push(ids);
            }
            let shared = |ids: &[u32]| prompt.iter().zip(ids).take_while(|(a, b)| a == b).count();
            let common = shared(&full[0]).min(shared(&full[1]));
            for (which, mut ids) in full.into_iter().enumerate() {
                let start = if shared_start { common } else { shared(&ids) };
                // weights[i] is the weight of predicting ids[i]; ids[0] is never a target.
                let mut w: Vec<f32> = (0..ids.len()).map(|j| if j >= start { 1.0 } else { 0.0 }).collect();
                ids.truncate(max_len + 1);
                w.truncate(max_len + 1);
                if w.iter().skip(1).all(|&x| x == 0.0) {
                    return Err(Error::config(
                        "training config",
                        "seq_len",
                        format!(
                            "is {max_len} tokens, and pair {}'s {} completion starts after that, so it cannot be scored; raise it",
                            i + 1,
                            ["chosen", "rejected"][which]
                        ),
                    ));
                }
                rows.push((ids, w));
            }
        }
        Ok(Dataset::Pairs { rows, refs: vec![], pad: eot.unwrap_or(0), labels: vec![] })
    }

    /// Stores the reference model's log-probability of each row (preference pairs only;
    /// `refs` in row order, as [`Dataset::sequential`] yields them).
    pub fn set_refs(&mut self, new: Vec<f32>) {
        if let Dataset::Pairs { rows, refs, .. } = self {
            assert_eq!(new.len(), rows.len(), "one reference log-probability per row");
            *refs = new;
        }
    }

    /// The reference log-probabilities (empty until set, and for other data).
    pub fn refs(&self) -> &[f32] {
        match self {
            Dataset::Pairs { refs, .. } => refs,
            _ => &[],
        }
    }

    /// Number of tokens (stream), rows, or pairs.
    pub fn len(&self) -> usize {
        match self {
            Dataset::Stream { tokens } => tokens.len(),
            Dataset::Rows { rows, .. } => rows.len(),
            Dataset::Pairs { rows, .. } => rows.len() / 2,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A random batch. The same `rng` state gives the same batch, which is what makes a
    /// resumed run draw exactly the batches an uninterrupted one would.
    pub fn sample(&self, rng: &mut Rng, b: usize, t: usize) -> Batch {
        if let Dataset::Pairs { rows, .. } = self {
            let picks: Vec<usize> = (0..b).map(|_| rng.below(rows.len() / 2)).collect();
            return self.pair_batch(&picks, t);
        }
        let mut batch =
            Batch { b, t, inputs: Vec::with_capacity(b * t), targets: Vec::with_capacity(b * t), weights: Vec::with_capacity(b * t), ..Default::default() };
        for _ in 0..b {
            match self {
                Dataset::Stream { tokens } => {
                    let start = rng.below(tokens.len().saturating_sub(t + 1).max(1));
                    self.push_window(&mut batch, start, t);
                }
                Dataset::Rows { rows, pad } => {
                    let (ids, w) = &rows[rng.below(rows.len())];
                    push_row(&mut batch, ids, w, *pad, t);
                }
                Dataset::Pairs { .. } => unreachable!("pairs return above"),
            }
        }
        batch
    }

    /// The batch of pairs `picks`: their chosen and rejected rows, with the reference
    /// log-probabilities when they are set.
    fn pair_batch(&self, picks: &[usize], t: usize) -> Batch {
        let Dataset::Pairs { rows, refs, pad, labels } = self else { unreachable!() };
        let b = 2 * picks.len();
        let mut batch =
            Batch { b, t, inputs: Vec::with_capacity(b * t), targets: Vec::with_capacity(b * t), weights: Vec::with_capacity(b * t), ..Default::default() };
        for &p in picks {
            if !labels.is_empty() {
                batch.labels.push(labels[p]);
            }
            for r in [2 * p, 2 * p + 1] {
                let (ids, w) = &rows[r];
                push_row(&mut batch, ids, w, *pad, t);
                batch.lens.push(ids.len().min(t + 1) as u32);
                if !refs.is_empty() {
                    batch.refs.push(refs[r]);
                }
            }
        }
        batch
    }

    /// Deterministic batches that cover the data set once (up to `max_batches`), for eval loss.
    /// (Pairs: `b` pairs a batch, in order.)
    pub fn sequential(&self, b: usize, t: usize, max_batches: usize) -> Vec<Batch> {
        if let Dataset::Pairs { rows, labels, .. } = self {
            let n = rows.len() / 2;
            let cap = max_batches.saturating_mul(b.max(1));
            // KTO's examples come desirable first, then undesirable (TRL's unpairing): when
            // the batches cannot cover them all, take an even spread, so an evaluation sees
            // both kinds.
            let picks: Vec<usize> = if !labels.is_empty() && cap < n { (0..cap).map(|i| i * n / cap).collect() } else { (0..n).collect() };
            return picks.chunks(b.max(1)).take(max_batches).map(|c| self.pair_batch(c, t)).collect();
        }
        let mut out = Vec::new();
        let mut row = 0;
        'outer: while out.len() < max_batches {
            let mut batch = Batch { b, t, inputs: vec![], targets: vec![], weights: vec![], ..Default::default() };
            for _ in 0..b {
                match self {
                    Dataset::Stream { tokens } => {
                        let start = row * t;
                        if start + t + 1 > tokens.len() {
                            break 'outer;
                        }
                        self.push_window(&mut batch, start, t);
                    }
                    Dataset::Rows { rows, pad } => {
                        let Some((ids, w)) = rows.get(row) else { break 'outer };
                        push_row(&mut batch, ids, w, *pad, t);
                    }
                    Dataset::Pairs { .. } => unreachable!("pairs return above"),
                }
                row += 1;
            }
            out.push(batch);
        }
        out
    }

    fn push_window(&self, batch: &mut Batch, start: usize, t: usize) {
        let Dataset::Stream { tokens } = self else { unreachable!() };
        let end = (start + t + 1).min(tokens.len());
        let window = &tokens[start..end];
        let n = window.len().saturating_sub(1);
        batch.inputs.extend(&window[..n]);
        batch.targets.extend(&window[1..]);
        batch.weights.extend(std::iter::repeat_n(1.0, n));
        // A stream shorter than the context is padded with weight 0.
        let pad = *tokens.last().unwrap_or(&0);
        for _ in n..t {
            batch.inputs.push(pad);
            batch.targets.push(pad);
            batch.weights.push(0.0);
        }
    }
}

/// Appends one row of `t` positions: `ids[i]` predicting `ids[i + 1]` with weight `w[i + 1]`,
/// then padding (`pad`, weight 0).
pub(super) fn push_row(batch: &mut Batch, ids: &[u32], w: &[f32], pad: u32, t: usize) {
    for i in 0..t {
        let (inp, tgt, wt) = match (ids.get(i), ids.get(i + 1)) {
            (Some(&a), Some(&b)) => (a, b, w[i + 1]),
            (Some(&a), None) => (a, pad, 0.0),
            _ => (pad, pad, 0.0),
        };
        batch.inputs.push(inp);
        batch.targets.push(tgt);
        batch.weights.push(wt);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::EOT;

    fn tok() -> TextTokenizer {
        TextTokenizer::char_level("abcdefghijklmnopqrstuvwxyz :\n")
    }

    #[test]
    fn stream_windows_shift_targets_by_one() {
        let ds = Dataset::from_documents(&tok(), &["abcdefgh".to_string()]).unwrap();
        let b = ds.sequential(1, 4, 10);
        // 8 chars + eot = 9 tokens: windows of 4+1 at strides of 4 start at 0 and 4.
        assert_eq!(b.len(), 2);
        let t = tok();
        assert_eq!(t.decode(&b[0].inputs), "abcd");
        assert_eq!(t.decode(&b[0].targets), "bcde");
        assert_eq!(t.decode(&b[1].inputs), "efgh");
        assert_eq!(b[1].targets.last(), t.eot().as_ref());
        assert_eq!(b[0].weight_sum(), 4.0);
    }

    #[test]
    fn sft_rows_mask_the_prompt_and_pad() {
        let t = tok();
        let ex = Example { prompt: "q:ab\na:".into(), response: " c\n".into(), chat: false };
        let ds = Dataset::from_examples(&t, &[ex], 16, 0.0).unwrap();
        let b = ds.sequential(1, 12, 1).remove(0);
        // Targets with weight 1 are exactly the response and the end-of-text token.
        let counted: Vec<u32> = b.targets.iter().zip(&b.weights).filter(|(_, w)| **w > 0.0).map(|(t, _)| *t).collect();
        let mut want = t.encode(" c\n").unwrap();
        want.push(t.eot().unwrap());
        assert_eq!(counted, want);
        assert_eq!(b.inputs.len(), 12);
        // Prompt loss weight flows through.
        let ds = Dataset::from_examples(&t, &[Example { prompt: "ab".into(), response: "c".into(), chat: false }], 16, 0.25).unwrap();
        let b = ds.sequential(1, 4, 1).remove(0);
        assert_eq!(b.weights, vec![0.25, 1.0, 1.0, 0.0]);
        // Rows cut before any response token teach nothing: refused, naming seq_len.
        let long = Example { prompt: "q: a long question\na:".into(), response: " c".into(), chat: false };
        let e = Dataset::from_examples(&t, std::slice::from_ref(&long), 8, 0.0).unwrap_err().to_string();
        assert!(e.contains("seq_len") && e.contains("raise it"), "{e}");
        // One row with something to learn is enough.
        let short = Example { prompt: "q:".into(), response: " c".into(), chat: false };
        assert!(Dataset::from_examples(&t, &[long, short], 8, 0.0).is_ok());
    }

    /// The pad = eos pitfall: padding rows with the end-of-sequence id must not mask the
    /// real end of a response, or the model never learns to stop. Weights are by position:
    /// the one genuine end token counts, the pads (same id) after it do not. A chat turn
    /// ends with its template's own end-of-turn token and gets no extra end-of-text.
    #[test]
    fn the_end_of_a_response_trains_even_when_padding_uses_the_same_id() {
        let t = tok();
        let eos = t.eot().unwrap();
        for (response, chat) in [(" c\n".to_string(), false), (format!(" c{EOT}"), true)] {
            let ex = Example { prompt: "q:".into(), response: response.clone(), chat };
            let b = Dataset::from_examples(&t, &[ex], 16, 0.0).unwrap().sequential(1, 12, 1).remove(0);
            let ends: Vec<(usize, f32)> = b.targets.iter().zip(&b.weights).enumerate().filter(|(_, (id, _))| **id == eos).map(|(i, (_, w))| (i, *w)).collect();
            assert!(ends.len() > 2, "{response:?}: the row is padded with the end id");
            assert_eq!(ends[0].1, 1.0, "{response:?}: the real end of the response is a target");
            assert!(ends[1..].iter().all(|(_, w)| *w == 0.0), "{response:?}: padding is not");
            let counted = b.weights.iter().filter(|w| **w > 0.0).count();
            assert_eq!(counted, t.encode(&response).unwrap().len() + usize::from(!chat), "{response:?}");
        }
    }

    /// Preference pairs become two rows each, chosen then rejected, counting only the
    /// completion: with the end-of-text token for plain text, without it for a chat reply
    /// (whose template ends the turn); a batch of `b` draws `b` pairs, their reference
    /// log-probabilities beside them.
    #[test]
    fn pairs_become_chosen_and_rejected_rows_counting_the_completion() {
        use crate::data::Pair;
        let t = tok();
        let eot = t.eot().unwrap();
        let counted = |b: &Batch, row: usize| -> Vec<u32> {
            let r = row * b.t..(row + 1) * b.t;
            b.targets[r.clone()].iter().zip(&b.weights[r]).filter(|(_, w)| **w > 0.0).map(|(t, _)| *t).collect()
        };
        let plain = Pair { prompt: "q:".into(), chosen: " yes".into(), rejected: " no".into(), chat: false };
        let chat = Pair { prompt: "q:".into(), chosen: " yes".into(), rejected: " no".into(), chat: true };
        let mut ds = Dataset::from_pairs(&t, &[plain, chat], 16).unwrap();
        assert_eq!(ds.len(), 2);
        ds.set_refs(vec![-1.0, -2.0, -3.0, -4.0]);
        let b = ds.sequential(2, 12, 1).remove(0);
        assert_eq!((b.b, b.refs.clone()), (4, vec![-1.0, -2.0, -3.0, -4.0]));
        let with_end = |s: &str| [t.encode(s).unwrap(), vec![eot]].concat();
        assert_eq!(counted(&b, 0), with_end(" yes"));
        assert_eq!(counted(&b, 1), with_end(" no"));
        assert_eq!(counted(&b, 2), t.encode(" yes").unwrap());
        assert_eq!(counted(&b, 3), t.encode(" no").unwrap());
        let sampled = ds.sample(&mut Rng::new(1), 3, 12);
        assert_eq!((sampled.b, sampled.refs.len()), (6, 6));
        // Micro-batches keep pairs whole.
        assert!(sampled.split(3).iter().all(|m| m.b == 2 && m.refs.len() == 2));
        // A completion cut off entirely is refused, naming seq_len.
        let long = Pair { prompt: "a long question:".into(), chosen: " y".into(), rejected: " n".into(), chat: false };
        let e = Dataset::from_pairs(&t, &[long], 8).unwrap_err().to_string();
        assert!(e.contains("seq_len") && e.contains("pair 1's chosen"), "{e}");
    }

    /// KTO's rows: each example's own row (its completion counted), then its prompt with
    /// the completion of the example before it in its chunk (the first takes the last's),
    /// labels beside them; a capped evaluation takes both kinds.
    #[test]
    fn unpaired_examples_carry_a_mismatched_row_rotated_within_chunks() {
        use crate::data::Unpaired;
        let t = tok();
        let ex = |p: &str, c: &str, label| Unpaired { prompt: p.into(), completion: c.into(), label, chat: false };
        let examples = [ex("a:", " x", true), ex("b:", " yy", false), ex("c:", " zzz", true), ex("d:", " w", false), ex("e:", " v", true)];
        let ds = Dataset::from_unpaired(&t, &examples, 16, 3).unwrap();
        assert_eq!(ds.len(), 5);
        let batch = ds.sequential(5, 8, 1).remove(0);
        assert_eq!(batch.labels, vec![true, false, true, false, true]);
        let row = |r: usize| -> (String, String) {
            let span = r * batch.t..(r + 1) * batch.t;
            let counted: Vec<u32> = batch.targets[span.clone()].iter().zip(&batch.weights[span.clone()]).filter(|(_, w)| **w > 0.0).map(|(t, _)| *t).collect();
            (t.decode(&batch.inputs[span][..1]), t.decode(&counted).trim_end_matches(EOT).to_string())
        };
        // Chunk 1 (a, b, c): a takes c's completion, b takes a's, c takes b's; chunk 2 (d, e).
        let want = [("a", " x"), ("a", " zzz"), ("b", " yy"), ("b", " x"), ("c", " zzz"), ("c", " yy"), ("d", " w"), ("d", " v"), ("e", " v"), ("e", " w")];
        for (r, (p, c)) in want.iter().enumerate() {
            assert_eq!(row(r), (p.to_string(), c.to_string()), "row {r}");
        }
        // Pairs taken apart: every chosen, then every rejected; a capped evaluation spreads.
        let pairs =
            [("p:", " a", " b"), ("q:", " c", " d")].map(|(p, c, r)| crate::data::Pair { prompt: p.into(), chosen: c.into(), rejected: r.into(), chat: false });
        let kto = super::super::Objective::Kto { beta: 0.1, desirable_weight: 1.0, undesirable_weight: 1.0 };
        let ds = Dataset::from_pairs_for(&kto, &t, &pairs, 16, 4).unwrap();
        assert_eq!(ds.sequential(4, 8, 9).remove(0).labels, vec![true, true, false, false]);
        assert_eq!(ds.sequential(1, 8, 2).iter().map(|b| b.labels[0]).collect::<Vec<_>>(), vec![true, false]);
    }

    #[test]
    fn sampling_is_deterministic_in_the_rng() {
        let ds = Dataset::from_documents(&tok(), &["the quick brown fox jumps over the lazy dog".to_string()]).unwrap();
        let a = ds.sample(&mut Rng::new(3), 4, 8);
        let b = ds.sample(&mut Rng::new(3), 4, 8);
        assert_eq!(a, b);
        assert_ne!(a, ds.sample(&mut Rng::new(4), 4, 8));
    }
}
