//! Settings of the `grpo` widget: reinforcement learning with a verifiable reward on the
//! shipped micro model, in two stages as `scripts/grpo-curves.sh` runs it natively. Stage 1
//! is a short SFT run on the task's answers ([`GrpoParams::sft_config`]), so that the model
//! answers in the task's form and sometimes right; stage 2 is GRPO exactly as the core
//! defines it after TRL's `GRPOTrainer` ([`GrpoParams::train_config`]): each step samples a
//! group of completions per prompt, scores them with `Task::reward`, and pushes each
//! completion up or down by its group-normalised advantage. The worker drives both stages
//! through `train::Run`; [`GrpoParams::commands`] are the native `tinytune` lines that run
//! the same two stages at scale (and measure the SFT model's held-out reward, the widget's
//! "before").

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tinytune::data::Task;
use tinytune::methods::Method;
use tinytune::optim::{Decay, OptimConfig, OptimKind, Warmup};
use tinytune::train::grpo::{GrpoLoss, SampledGroup};
use tinytune::train::{DataSource, LossScale, Objective, Precision, TrainConfig};

use crate::run::MICRO_DIR;
use crate::settings::{Field, Settings, assign, float, int, one_of};

/// Examples generated for both stages: SFT rows, and GRPO's prompts to sample from.
pub const TRAIN_EXAMPLES: usize = 2000;
/// Held-out prompts: each evaluation samples a group of every one of them (the held-out
/// `reward`) and answers each greedily (`greedy_reward`).
pub const EVAL_PROMPTS: usize = 32;
/// Stage 1: rows per SFT step and its peak learning rate.
pub const SFT_BATCH: usize = 8;
pub const SFT_LR: f64 = 2e-3;
/// Sampled groups shown per step.
pub const GROUPS_SHOWN: usize = 4;

/// The tasks on offer: every task has a checker (`Task::reward`).
pub const TASKS: [&str; 3] = ["sentiment", "story-qa", "json-extract"];

/// Settings of the `grpo` widget.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GrpoParams {
    pub task: Task,
    /// Stage 1: SFT steps on the task's answers before GRPO.
    pub sft_steps: usize,
    /// TRL's `num_generations` G: completions sampled per prompt.
    pub group_size: usize,
    /// Prompts per GRPO step (the batch is prompts × group size completions).
    pub prompts: usize,
    /// Stage 2: GRPO steps.
    pub steps: usize,
    pub lr: f64,
    /// The KL coefficient (TRL's default 0: no reference model).
    pub beta: f64,
    /// Sampling temperature of the rollouts and of the held-out reward.
    pub temperature: f64,
}

impl Default for GrpoParams {
    fn default() -> Self {
        Self { task: Task::Sentiment, sft_steps: 60, group_size: 8, prompts: 4, steps: 24, lr: 5e-4, beta: 0.0, temperature: 1.0 }
    }
}

impl GrpoParams {
    /// Tokens per row: every prompt with its answer (training and held-out examples,
    /// micro's tokenizer) fits whole, so no prompt is cut and every right answer can be
    /// sampled and learned (a test checks it), and rows are no longer than that (every row
    /// is padded to it). The native script's `--seq-len 32` cuts sentiment's longer prompts.
    pub fn seq_len(&self) -> usize {
        match self.task {
            Task::Sentiment => 46,
            Task::StoryQa => 100,
            Task::JsonExtract => 102,
        }
    }

    /// The longest completion sampled, in tokens: room for the longest answer and its end of
    /// line, and a few tokens more.
    pub fn max_completion_len(&self) -> usize {
        match self.task {
            Task::Sentiment => 4,
            Task::StoryQa => 12,
            Task::JsonExtract => 72,
        }
    }

    /// Completions per GRPO step.
    pub fn batch(&self) -> usize {
        self.prompts * self.group_size
    }

    /// Evaluate halfway and after the last step (with the evaluation before GRPO, three
    /// points: each costs about as much as a step or two).
    pub fn eval_every(&self) -> usize {
        self.steps.div_ceil(2)
    }

    /// Held-out evaluations of a run: before GRPO, every `eval_every` steps, and after the
    /// last step.
    pub fn evaluations(&self) -> usize {
        1 + self.steps.div_ceil(self.eval_every())
    }

    /// GRPO's objective: TRL's defaults (ε 0.2, the dapo loss) with the widget's group size,
    /// β, temperature and the task's completion length.
    pub fn objective(&self) -> Objective {
        Objective::Grpo {
            group_size: self.group_size,
            beta: self.beta,
            epsilon: 0.2,
            temperature: self.temperature,
            max_completion_len: self.max_completion_len(),
            loss_type: GrpoLoss::Dapo,
        }
    }

    /// Stage 2, GRPO on the SFT model, fully fine-tuned. What is not on the widget is the
    /// CLI's default.
    pub fn train_config(&self) -> TrainConfig {
        TrainConfig {
            data: DataSource::Task(self.task),
            train_examples: TRAIN_EXAMPLES,
            eval_examples: EVAL_PROMPTS,
            data_seed: 0,
            seed: 0,
            steps: self.steps,
            batch_size: self.batch(),
            seq_len: self.seq_len(),
            lr: self.lr,
            warmup_steps: Warmup::Ratio(0.1).steps(self.steps),
            warmup_ratio: Some(0.1),
            decay: Decay::Cosine,
            min_lr_ratio: 0.1,
            optimizer: OptimConfig::for_kind(OptimKind::AdamW),
            accumulate: 1,
            data_parallel: 1,
            zero: 0,
            checkpointing: false,
            eval_every: self.eval_every(),
            // The held-out loss on the reference answers: one batch holds every held-out row.
            eval_batches: EVAL_PROMPTS.div_ceil(self.batch()),
            // The browser keeps its run in memory.
            checkpoint_every: 0,
            prompt_loss_weight: 0.0,
            precision: Precision::Fp32,
            loss_scale: LossScale::None,
            objective: self.objective(),
            method: Method::Full,
            data_file: None,
            data_sha256: None,
            teacher: None,
            teacher_cache: None,
        }
    }

    /// Stage 1: next-token SFT of micro on the task's answers (its held-out loss once, at
    /// the end).
    pub fn sft_config(&self) -> TrainConfig {
        TrainConfig {
            steps: self.sft_steps,
            batch_size: SFT_BATCH,
            lr: SFT_LR,
            warmup_steps: Warmup::Ratio(0.1).steps(self.sft_steps),
            eval_every: 0,
            eval_batches: EVAL_PROMPTS.div_ceil(SFT_BATCH),
            objective: Objective::NextToken,
            ..self.train_config()
        }
    }

    /// Where the native stage 1 writes its model, which stage 2 starts from.
    pub fn sft_dir(&self) -> String {
        format!("runs/grpo-sft-{}", self.task)
    }

    /// The native SFT run (stage 1), without the program name.
    pub fn sft_command_args(&self) -> Vec<String> {
        let c = self.sft_config();
        let mut args: Vec<String> = ["finetune", "--model", MICRO_DIR].map(String::from).to_vec();
        let flags: [(&str, String); 10] = [
            ("--data", self.task.to_string()),
            ("--steps", c.steps.to_string()),
            ("--batch", c.batch_size.to_string()),
            ("--seq-len", c.seq_len.to_string()),
            ("--lr", c.lr.to_string()),
            ("--train-examples", c.train_examples.to_string()),
            ("--eval-examples", c.eval_examples.to_string()),
            ("--eval-every", c.eval_every.to_string()),
            ("--eval-batches", c.eval_batches.to_string()),
            ("--out", self.sft_dir()),
        ];
        push_flags(&mut args, flags);
        args
    }

    /// The native held-out reward of the SFT model (the widget's "before GRPO"), without
    /// the program name.
    pub fn eval_command_args(&self) -> Vec<String> {
        let mut args: Vec<String> = vec!["eval".into(), "--model".into(), self.sft_dir()];
        let flags: [(&str, String); 7] = [
            ("--data", self.task.to_string()),
            ("--objective", "grpo".into()),
            ("--accuracy-examples", EVAL_PROMPTS.to_string()),
            ("--group-size", self.group_size.to_string()),
            ("--temperature", self.temperature.to_string()),
            ("--max-completion-len", self.max_completion_len().to_string()),
            ("--seq-len", self.seq_len().to_string()),
        ];
        push_flags(&mut args, flags);
        args
    }

    /// The native GRPO run (stage 2) on the SFT model, without the program name.
    pub fn command_args(&self) -> Vec<String> {
        let c = self.train_config();
        let mut args: Vec<String> = vec!["finetune".into(), "--model".into(), self.sft_dir()];
        let flags: [(&str, String); 15] = [
            ("--data", self.task.to_string()),
            ("--objective", "grpo".into()),
            ("--group-size", self.group_size.to_string()),
            ("--beta", self.beta.to_string()),
            ("--temperature", self.temperature.to_string()),
            ("--max-completion-len", self.max_completion_len().to_string()),
            ("--steps", c.steps.to_string()),
            ("--batch", c.batch_size.to_string()),
            ("--seq-len", c.seq_len.to_string()),
            ("--lr", c.lr.to_string()),
            ("--train-examples", c.train_examples.to_string()),
            ("--eval-examples", c.eval_examples.to_string()),
            ("--eval-every", c.eval_every.to_string()),
            ("--eval-batches", c.eval_batches.to_string()),
            ("--out", format!("runs/grpo-{}", self.task)),
        ];
        push_flags(&mut args, flags);
        args
    }

    /// The three native commands, one a line: stage 1, the SFT model's held-out reward,
    /// stage 2.
    pub fn commands(&self) -> String {
        [self.sft_command_args(), self.eval_command_args(), self.command_args()].map(|a| format!("tinytune {}", a.join(" "))).join("\n")
    }

    /// A run's name: what sets it apart.
    pub fn label(&self) -> String {
        let kl = if self.beta > 0.0 { format!(" · β {}", self.beta) } else { String::new() };
        format!(
            "{} · {} SFT steps, then {} GRPO steps of {} prompts × {} completions · lr {} · temperature {}{kl}",
            self.task, self.sft_steps, self.steps, self.prompts, self.group_size, self.lr, self.temperature
        )
    }

    /// The expected time of the whole run on the CPU in the page, in seconds, from the
    /// task's measured cost of an SFT step, a GRPO step of 32 completions and an evaluation
    /// ([`page_costs`]), scaled by the run's sizes.
    pub fn expected_seconds(&self) -> f64 {
        let (sft, grpo, eval) = page_costs(self.task);
        let g = self.group_size as f64;
        START_S + self.sft_steps as f64 * sft + self.steps as f64 * grpo * self.batch() as f64 / 32.0 + self.evaluations() as f64 * eval * (g + 1.0) / 9.0
    }

    /// [`GrpoParams::expected_seconds`] in words.
    pub fn expected_duration(&self) -> String {
        let s = self.expected_seconds();
        if s < 100.0 { format!("about {} seconds", ((s / 10.0).round() * 10.0).max(10.0)) } else { format!("about {} minutes", (s / 60.0).round().max(2.0)) }
    }
}

/// Seconds the page spends loading micro and tokenising the data sets.
const START_S: f64 = 4.0;

/// Seconds in the page (flex on the CPU, one thread; `trunk build` on the 2-core test
/// machine) of one SFT step of 8 rows, one GRPO step of 32 completions, and one evaluation
/// (groups of 8 and a greedy answer for each of the 32 held-out prompts), by task: measured
/// by running the widget (`tests/e2e/run.mjs` prints the default run's time). Longer rows
/// and longer answers cost more: story-qa's prompts hold a story, json-extract's answers a
/// whole record.
fn page_costs(task: Task) -> (f64, f64, f64) {
    match task {
        Task::Sentiment => (0.4, 1.8, 2.3),
        Task::StoryQa => (0.8, 4.5, 9.0),
        Task::JsonExtract => (0.85, 6.0, 13.0),
    }
}

fn push_flags<const N: usize>(args: &mut Vec<String>, flags: [(&str, String); N]) {
    for (flag, value) in flags {
        args.push(flag.into());
        args.push(value);
    }
}

/// A prompt as the widget shows it: its last two lines (story-qa's story before the
/// question is long), joined by ⏎, and at most `max` characters, keeping the end.
pub fn short_prompt(prompt: &str, max: usize) -> String {
    let lines: Vec<&str> = prompt.trim_end_matches('\n').lines().collect();
    let tail = lines[lines.len().saturating_sub(2)..].join(" ⏎ ");
    let n = tail.chars().count();
    if n <= max { tail } else { format!("…{}", tail.chars().skip(n - (max - 1)).collect::<String>()) }
}

/// A completion as the widget shows it: its first line (what the checker reads), ⏎ marking
/// where it ended the line, or "(no end of line)" when it ran out of tokens first.
pub fn show_completion(text: &str) -> String {
    match text.split_once('\n') {
        Some((line, _)) => format!("{line} ⏎"),
        None => format!("{text} (no end of line)"),
    }
}

/// What the worker reports of a GRPO run besides its stages' `TrainEvent`s (which go to
/// the page unchanged as `FromWorker::Run`: stage 1 under its own id, stage 2 under the
/// run's).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum GrpoNews {
    /// The SFT model's held-out figures, as GRPO's evaluation measures them, before the
    /// first GRPO step: the answer loss, `reward` and `greedy_reward`.
    Before { eval_loss: f32, metrics: BTreeMap<String, f64> },
    /// The first [`GROUPS_SHOWN`] groups of GRPO step `step`'s rollout, as sampled and
    /// scored (`Rl::last`).
    Groups { step: usize, groups: Vec<SampledGroup> },
}

impl Settings for GrpoParams {
    const NAME: &'static str = "grpo";
    fn fields() -> Vec<Field<Self>> {
        vec![
            Field {
                key: "task",
                get: |p| p.task.to_string(),
                set: |p, v| {
                    one_of(v, &TASKS)?;
                    assign(&mut p.task, v.parse::<Task>())
                },
            },
            Field { key: "sft_steps", get: |p| p.sft_steps.to_string(), set: |p, v| assign(&mut p.sft_steps, int(v, 1, 1000)) },
            Field { key: "group_size", get: |p| p.group_size.to_string(), set: |p, v| assign(&mut p.group_size, int(v, 2, 16)) },
            Field { key: "prompts", get: |p| p.prompts.to_string(), set: |p, v| assign(&mut p.prompts, int(v, 1, 16)) },
            Field { key: "steps", get: |p| p.steps.to_string(), set: |p, v| assign(&mut p.steps, int(v, 1, 300)) },
            Field { key: "lr", get: |p| p.lr.to_string(), set: |p, v| assign(&mut p.lr, float(v, 1e-6, 1.0)) },
            Field { key: "beta", get: |p| p.beta.to_string(), set: |p, v| assign(&mut p.beta, float(v, 0.0, 10.0)) },
            Field { key: "temperature", get: |p| p.temperature.to_string(), set: |p, v| assign(&mut p.temperature, float(v, 0.05, 5.0)) },
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::widgets::Widget;
    use tinytune::TextTokenizer;
    use tinytune::data::Split;

    fn micro_tokenizer() -> TextTokenizer {
        TextTokenizer::from_json(include_str!("../../assets/micro/tokenizer.json"), "assets/micro/tokenizer.json").unwrap()
    }

    #[test]
    fn the_defaults_are_the_lessons_run_and_validate() {
        let p = GrpoParams::default();
        let (c, s) = (p.train_config(), p.sft_config());
        let n = tinytune::ModelConfig::micro().n_positions;
        c.validate("widget", n).unwrap();
        s.validate("widget", n).unwrap();
        assert!(c.objective.is_rl() && s.objective == Objective::NextToken);
        assert_eq!((c.steps, c.batch_size, c.seq_len, c.lr, c.eval_every, c.eval_examples), (24, 32, 46, 5e-4, 12, 32));
        assert_eq!((s.steps, s.batch_size, s.lr, s.eval_every, s.eval_batches, s.warmup_steps), (60, 8, 2e-3, 0, 4, 6));
        assert_eq!(c.method, Method::Full);
        assert_eq!(
            p.commands(),
            "tinytune finetune --model assets/micro --data sentiment --steps 60 --batch 8 --seq-len 46 --lr 0.002 --train-examples 2000 \
             --eval-examples 32 --eval-every 0 --eval-batches 4 --out runs/grpo-sft-sentiment\n\
             tinytune eval --model runs/grpo-sft-sentiment --data sentiment --objective grpo --accuracy-examples 32 --group-size 8 \
             --temperature 1 --max-completion-len 4 --seq-len 46\n\
             tinytune finetune --model runs/grpo-sft-sentiment --data sentiment --objective grpo --group-size 8 --beta 0 --temperature 1 \
             --max-completion-len 4 --steps 24 --batch 32 --seq-len 46 --lr 0.0005 --train-examples 2000 --eval-examples 32 \
             --eval-every 12 --eval-batches 1 --out runs/grpo-sentiment"
        );
        // The lesson's run takes about a minute and a quarter in the page; the other tasks
        // are labelled slower.
        assert_eq!((p.evaluations(), p.expected_duration().as_str()), (3, "about 80 seconds"));
        let other = |task: &str| GrpoParams { task: task.parse().unwrap(), ..GrpoParams::default() }.expected_duration();
        assert_eq!((other("story-qa").as_str(), other("json-extract").as_str()), ("about 3 minutes", "about 4 minutes"));
    }

    #[test]
    fn settings_are_read_and_bad_values_are_named() {
        let w = Widget::from_block("name: grpo\ntask: story-qa\ngroup_size: 4\nprompts: 2\nbeta: 0.04\ntemperature: 0.7").unwrap();
        let Widget::Grpo(p) = &w else { panic!("{w:?}") };
        let c = p.train_config();
        assert_eq!((c.data.to_string().as_str(), c.batch_size, c.seq_len), ("story-qa", 8, 100));
        let Objective::Grpo { group_size, beta, temperature, max_completion_len, .. } = c.objective else { panic!("{:?}", c.objective) };
        assert_eq!((group_size, beta, temperature, max_completion_len), (4, 0.04, 0.7, 12));
        c.validate("widget", 128).unwrap();
        assert!(p.command_args().join(" ").contains("--group-size 4 --beta 0.04 --temperature 0.7"));
        let e = Widget::from_block("name: grpo\ntask: stories").unwrap_err();
        assert!(e.contains("grpo: task") && e.contains("choose sentiment, story-qa, json-extract"), "{e}");
        let e = Widget::from_block("name: grpo\ngroup_size: 1").unwrap_err();
        assert!(e.contains("group_size") && e.contains("from 2"), "{e}");
        let e = Widget::from_block("name: grpo\ntemperature: 0").unwrap_err();
        assert!(e.contains("temperature"), "{e}");
    }

    #[test]
    fn every_task_fits_its_rows_whole() {
        let tok = micro_tokenizer();
        for task in TASKS {
            let p = GrpoParams { task: task.parse().unwrap(), ..GrpoParams::default() };
            let (mut prompt, mut whole, mut answer) = (0, 0, 0);
            for (split, n) in [(Split::Train, TRAIN_EXAMPLES), (Split::Eval, EVAL_PROMPTS)] {
                for ex in p.task.examples(0, split, n) {
                    prompt = prompt.max(tok.encode(&ex.prompt).unwrap().len());
                    answer = answer.max(tok.encode(&ex.response).unwrap().len());
                    // An SFT row: prompt and answer (with its end of line) in t + 1 ids.
                    whole = whole.max(tok.encode(&format!("{}{}", ex.prompt, ex.response)).unwrap().len());
                }
            }
            let (t, m) = (p.seq_len(), p.max_completion_len());
            // Every prompt with its answer (an SFT row, and a rollout's right answer) fits
            // in t + 1 ids, and no row is padded past the longest.
            assert_eq!(whole, t + 1, "{task}: the longest example has {whole} tokens; set seq_len to {}", whole - 1);
            // A completion has room for any answer and its end of line, and more.
            assert!(m > answer && prompt < t, "{task}: answers have up to {answer} tokens, prompts {prompt}");
            p.train_config().validate("widget", 128).unwrap();
            p.sft_config().validate("widget", 128).unwrap();
        }
    }

    #[test]
    fn commands_carry_every_value_of_both_stages() {
        for p in [
            GrpoParams::default(),
            GrpoParams { task: Task::JsonExtract, sft_steps: 7, group_size: 4, prompts: 3, steps: 5, lr: 1e-3, beta: 0.1, temperature: 0.8 },
        ] {
            let flag = |args: &[String], f: &str| args.iter().position(|a| a == f).map(|i| args[i + 1].clone()).unwrap_or_else(|| panic!("{f}: {args:?}"));
            let (sft, grpo, eval) = (p.sft_command_args(), p.command_args(), p.eval_command_args());
            // Stage 2 starts from the model stage 1 writes, and so does the "before" measure.
            assert_eq!((flag(&grpo, "--model"), flag(&eval, "--model")), (flag(&sft, "--out"), flag(&sft, "--out")));
            for (args, c) in [(&sft, p.sft_config()), (&grpo, p.train_config())] {
                assert_eq!(flag(args, "--data").parse::<DataSource>().unwrap(), c.data);
                assert_eq!(flag(args, "--steps").parse::<usize>().unwrap(), c.steps);
                assert_eq!(flag(args, "--batch").parse::<usize>().unwrap(), c.batch_size);
                assert_eq!(flag(args, "--seq-len").parse::<usize>().unwrap(), c.seq_len);
                assert_eq!(flag(args, "--lr").parse::<f64>().unwrap(), c.lr);
                assert_eq!(flag(args, "--eval-every").parse::<usize>().unwrap(), c.eval_every);
                assert_eq!(flag(args, "--eval-batches").parse::<usize>().unwrap(), c.eval_batches);
                assert_eq!(flag(args, "--eval-examples").parse::<usize>().unwrap(), c.eval_examples);
            }
            let Objective::Grpo { group_size, beta, temperature, max_completion_len, .. } = p.train_config().objective else { panic!() };
            assert_eq!(flag(&grpo, "--group-size").parse::<usize>().unwrap(), group_size);
            assert_eq!(flag(&grpo, "--beta").parse::<f64>().unwrap(), beta);
            assert_eq!(flag(&grpo, "--temperature").parse::<f64>().unwrap(), temperature);
            assert_eq!(flag(&grpo, "--max-completion-len").parse::<usize>().unwrap(), max_completion_len);
            // The held-out reward is measured as the GRPO run's evaluations measure it.
            for f in ["--group-size", "--temperature", "--max-completion-len", "--seq-len", "--data"] {
                assert_eq!(flag(&eval, f), flag(&grpo, f), "{f}");
            }
            assert_eq!(flag(&eval, "--accuracy-examples"), flag(&grpo, "--eval-examples"));
        }
    }

    #[test]
    fn prompts_and_completions_are_shown_short_and_plain() {
        assert_eq!(short_prompt("text: the kite is fun.\nfeeling:", 60), "text: the kite is fun. ⏎ feeling:");
        let story = "once upon a time lily went to the park.\nshe saw a dog.\nquestion: where did lily go?\nanswer:";
        assert_eq!(short_prompt(story, 80), "question: where did lily go? ⏎ answer:");
        let cut = short_prompt(story, 20);
        assert_eq!(cut.chars().count(), 20);
        assert!(cut.starts_with('…') && cut.ends_with("go? ⏎ answer:"), "{cut}");
        assert_eq!(show_completion(" happy\n"), " happy ⏎");
        assert_eq!(show_completion(" the park and"), " the park and (no end of line)");
        assert_eq!(show_completion("\n"), " ⏎");
    }
}
