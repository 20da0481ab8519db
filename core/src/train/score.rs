//! A model's held-out scores on a generated task: the loss on its answers and the share of
//! prompts it answers exactly. `tinytune eval`, `tinytune merge-study` and the merge widget
//! score through these, so their numbers agree.

use serde::{Deserialize, Serialize};

use crate::data::{Split, Task};
use crate::error::Result;
use crate::model::Gpt;
use crate::sample::{SampleConfig, generate};
use crate::tokenizer::TextTokenizer;
use crate::train::{Dataset, eval_loss};

/// One held-out prompt answered greedily: the reference, the answer, whether they match.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    pub expected: String,
    pub answered: String,
    pub correct: bool,
}

/// Greedy answers (stopping at the end of the line) to the first `n` held-out prompts of
/// `task` with data seed `seed`, each scored by the task's exact-match rule. An answer may
/// run a few tokens past the reference's length (a longer one cannot match).
pub fn task_answers(model: &Gpt, tok: &TextTokenizer, task: Task, seed: u64, n: usize) -> Result<Vec<Answer>> {
    let stop = tok.line_stop_ids();
    let mut rows = Vec::with_capacity(n);
    for ex in task.examples(seed, Split::Eval, n) {
        let prompt = tok.encode(&ex.prompt)?;
        let room = tok.encode(&ex.response)?.len() + 4;
        let config = SampleConfig { max_new_tokens: room, temperature: 0.0, top_k: None, seed: 0, stop_ids: stop.clone(), cache: true };
        let answer = tok.decode(&generate(model, &prompt, &config));
        let correct = task.is_correct(&ex, &answer);
        rows.push(Answer { expected: ex.response.trim().to_string(), answered: answer.trim().to_string(), correct });
    }
    Ok(rows)
}

/// The share of `answers` that are correct (0 for none).
pub fn accuracy(answers: &[Answer]) -> f64 {
    if answers.is_empty() {
        return 0.0;
    }
    answers.iter().filter(|a| a.correct).count() as f64 / answers.len() as f64
}

/// A model's held-out loss (nats per answer token) and exact-match accuracy on one task.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskScore {
    pub loss: f32,
    pub accuracy: f64,
}

/// What a task is scored on: its held-out rows (for the loss) and how many prompts to answer.
#[derive(Clone, Debug)]
pub struct TaskEval {
    pub task: Task,
    pub data: Dataset,
    pub seed: u64,
    pub accuracy_examples: usize,
    pub batch_size: usize,
    pub seq_len: usize,
}

impl TaskEval {
    /// `examples` held-out rows of `task` (data seed `seed`) cut to `seq_len` tokens.
    pub fn new(task: Task, tok: &TextTokenizer, seed: u64, examples: usize, accuracy_examples: usize, seq_len: usize) -> Result<Self> {
        let data = Dataset::from_examples(tok, &task.examples(seed, Split::Eval, examples), seq_len, 0.0)?;
        Ok(Self { task, data, seed, accuracy_examples, batch_size: 8, seq_len })
    }

    /// `model`'s loss on the held-out rows and its accuracy on the held-out prompts.
    pub fn score(&self, model: &Gpt, tok: &TextTokenizer) -> Result<TaskScore> {
        let loss = eval_loss(model, &self.data, self.batch_size, self.seq_len, usize::MAX)?;
        let answers = task_answers(model, tok, self.task, self.seed, self.accuracy_examples)?;
        Ok(TaskScore { loss, accuracy: accuracy(&answers) })
    }
}
