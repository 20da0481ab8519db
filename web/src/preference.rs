//! Settings of the `preference` widget: preference tuning of the shipped micro model with
//! LoRA on generated preference pairs (DPO, IPO, hinge — and ORPO once the core names it —
//! exactly as the core defines them after TRL), driven by the worker through `train::Run`
//! like any other run; and beside it a comparison run, plain SFT on the same pairs' chosen
//! completions only, whose model is scored on the same held-out pairs against the same
//! reference. [`PreferenceParams::train_config`] is the preference run,
//! [`PreferenceParams::sft_config`] and [`sft_examples`] the comparison's, and
//! [`PreferenceParams::command`] the native `tinytune finetune` line that runs the
//! preference run at scale.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tinytune::data::{Example, Pair, PairKind, Split, Task};
use tinytune::methods::{LoraConfig, Method};
use tinytune::optim::{Decay, OptimConfig, OptimKind, Warmup};
use tinytune::train::{DataSource, LossScale, Objective, Precision, TrainConfig};

use crate::run::MICRO_DIR;
use crate::settings::{Field, Settings, assign, boolean, float, int, one_of};

/// Training pairs generated for a run. The reference scores every one of them before the
/// first step, so they are few (30 steps of 4 pairs draw from them two or three times each).
pub const TRAIN_PAIRS: usize = 48;
/// Held-out pairs, all of them scored at every evaluation.
pub const EVAL_PAIRS: usize = 16;
/// Held-out prompts answered greedily before and after.
pub const SAMPLES: usize = 3;
/// Tokens a sample may run to (it stops at the end of its line).
pub const SAMPLE_TOKENS: usize = 16;

/// The objectives the widget can offer, in menu order. Only those the core's
/// `Objective::from_name` knows are offered ([`objectives`]), so a preference objective
/// the core learns (ORPO, KTO) appears here by its name alone. KTO takes each pair apart
/// into a desirable and an undesirable example, as TRL's `KTOTrainer` does with paired data.
const CANDIDATES: [&str; 5] = ["dpo", "ipo", "hinge", "orpo", "kto"];

/// The preference objectives on offer: every candidate the core parses.
pub fn objectives() -> Vec<&'static str> {
    CANDIDATES.into_iter().filter(|name| Objective::from_name(name, 0.1, 0.0).is_ok_and(|o| o.is_preference())).collect()
}

/// The generated pair sets the widget trains on: the style preference (a whole sentence
/// over the bare answer) and the correctness preference (the right answer over a plausible
/// wrong one).
pub const DATA: [&str; 5] = ["story-qa-sentence-pairs", "story-qa-pairs", "sentiment-sentence-pairs", "sentiment-pairs", "json-extract-pairs"];

/// Settings of the `preference` widget.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PreferenceParams {
    /// A preference objective's name as the CLI's `--objective` takes it (dpo, ipo, hinge,
    /// orpo when the core has it).
    pub objective: String,
    /// TRL's β.
    pub beta: f64,
    /// Generated preference pairs (`DataSource::Pairs`).
    pub data: DataSource,
    pub steps: usize,
    pub lr: f64,
    /// Pairs per step.
    pub batch: usize,
    /// LoRA's rank on every linear layer (alpha is twice the rank).
    pub rank: usize,
    /// Also run the comparison: plain SFT on the chosen completions.
    pub sft: bool,
}

impl Default for PreferenceParams {
    fn default() -> Self {
        Self {
            objective: "dpo".into(),
            beta: 0.1,
            data: DataSource::Pairs(Task::StoryQa, PairKind::Sentence),
            steps: 30,
            lr: 5e-3,
            batch: 4,
            rank: 8,
            sft: true,
        }
    }
}

impl PreferenceParams {
    /// The task the pairs come from.
    pub fn task(&self) -> Task {
        match self.data {
            DataSource::Pairs(task, _) | DataSource::Task(task) => task,
            DataSource::Stories => Task::StoryQa,
        }
    }

    /// The pair kind (`Widget::set` admits only pairs).
    pub fn kind(&self) -> PairKind {
        match self.data {
            DataSource::Pairs(_, kind) => kind,
            _ => PairKind::Sentence,
        }
    }

    /// The objective (`Widget::set` admits only names the core parses).
    pub fn objective(&self) -> Objective {
        Objective::from_name(&self.objective, self.beta, 0.0).unwrap_or_else(|_| Objective::dpo(tinytune::train::DpoLoss::Sigmoid, self.beta))
    }

    /// Tokens per row: the longest pair of each data set fits whole (prompt, completion and
    /// end-of-text token with micro's tokenizer; a test checks every training and held-out
    /// pair), and rows are no longer than that, since every row is padded to it.
    pub fn seq_len(&self) -> usize {
        match (self.task(), self.kind()) {
            (Task::StoryQa, PairKind::Sentence) => 98,
            (Task::StoryQa, PairKind::Correct) => 96,
            (Task::Sentiment, PairKind::Sentence) => 51,
            (Task::Sentiment, PairKind::Correct) => 41,
            (Task::JsonExtract, _) => 96,
        }
    }

    /// Evaluate three times per run (and after the last step).
    pub fn eval_every(&self) -> usize {
        (self.steps / 3).max(1)
    }

    /// Batches that cover every held-out pair once.
    pub fn eval_batches(&self) -> usize {
        EVAL_PAIRS.div_ceil(self.batch)
    }

    /// LoRA at `rank`, alpha twice the rank, on every linear layer, no dropout: the script
    /// `scripts/dpo-curves.sh`'s method.
    pub fn method(&self) -> Method {
        Method::Lora(LoraConfig {
            r: self.rank,
            lora_alpha: 2.0 * self.rank as f64,
            lora_dropout: 0.0,
            target_modules: LoraConfig::target_list("all-linear"),
            use_rslora: false,
            ..LoraConfig::default()
        })
    }

    /// The preference run. What is not on the widget is the CLI's default.
    pub fn train_config(&self) -> TrainConfig {
        TrainConfig {
            data: self.data,
            train_examples: TRAIN_PAIRS,
            eval_examples: EVAL_PAIRS,
            data_seed: 0,
            seed: 0,
            steps: self.steps,
            batch_size: self.batch,
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
            eval_batches: self.eval_batches(),
            // The browser keeps its run in memory.
            checkpoint_every: 0,
            prompt_loss_weight: 0.0,
            precision: Precision::Fp32,
            loss_scale: LossScale::None,
            objective: self.objective(),
            method: self.method(),
            data_file: None,
            data_sha256: None,
            teacher: None,
            teacher_cache: None,
        }
    }

    /// The comparison: the same run (model, LoRA, steps, batch, rate, seed, schedule) with
    /// the next-token objective, on [`sft_examples`] (its data sets are built from them; `data`
    /// names the task they come from).
    pub fn sft_config(&self) -> TrainConfig {
        // Its own held-out loss (next-token, on the chosen completions) only at the end: what
        // it is compared on is the held-out pairs, which the worker scores at the preference
        // run's evaluation steps.
        TrainConfig { data: DataSource::Task(self.task()), objective: Objective::NextToken, eval_every: 0, ..self.train_config() }
    }

    /// The native fine-tune of the preference run, without the program name.
    pub fn command_args(&self) -> Vec<String> {
        let mut args: Vec<String> = ["finetune", "--model", MICRO_DIR].map(String::from).to_vec();
        let flags: [(&str, String); 16] = [
            ("--data", self.data.to_string()),
            ("--objective", self.objective.clone()),
            ("--beta", self.beta.to_string()),
            ("--method", "lora".into()),
            ("--rank", self.rank.to_string()),
            ("--alpha", (2 * self.rank).to_string()),
            ("--targets", "all-linear".into()),
            ("--steps", self.steps.to_string()),
            ("--batch", self.batch.to_string()),
            ("--seq-len", self.seq_len().to_string()),
            ("--lr", self.lr.to_string()),
            ("--train-examples", TRAIN_PAIRS.to_string()),
            ("--eval-examples", EVAL_PAIRS.to_string()),
            ("--eval-every", self.eval_every().to_string()),
            ("--eval-batches", self.eval_batches().to_string()),
            ("--out", format!("runs/{}-{}", self.objective, self.data)),
        ];
        for (flag, value) in flags {
            args.push(flag.into());
            args.push(value);
        }
        args
    }

    pub fn command(&self) -> String {
        format!("tinytune {}", self.command_args().join(" "))
    }

    /// A run's name: what sets it apart.
    pub fn label(&self) -> String {
        let unit = if self.objective().is_unpaired() { "examples" } else { "pairs" };
        format!("{} β {} · {} · lr {} · {} steps of {} {unit} · LoRA r{}", self.objective, self.beta, self.data, self.lr, self.steps, self.batch, self.rank)
    }
}

/// The comparison's data: each pair's prompt with its chosen completion as the response
/// (the next-token objective then learns the chosen completions only). The pairs are the
/// preference run's own (`Task::pairs` with the same seed, split and count), so both runs
/// see the same prompts.
pub fn sft_examples(p: &PreferenceParams, split: Split, n: usize) -> Vec<Example> {
    p.task().pairs(p.kind(), 0, split, n).into_iter().map(|pair| Example { prompt: pair.prompt, response: pair.chosen, chat: pair.chat }).collect()
}

/// The held-out pairs whose prompts are answered before and after: the first of the held-out
/// pairs the runs evaluate on.
pub fn sample_pairs(p: &PreferenceParams) -> Vec<Pair> {
    p.task().pairs(p.kind(), 0, Split::Eval, SAMPLES)
}

/// Which model wrote a set of samples.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SampleModel {
    /// The model before tuning: the reference.
    Reference,
    /// After the preference run.
    Preference,
    /// After the SFT comparison.
    Sft,
}

/// What the worker reports of a preference run besides its `TrainEvent`s (which go to the
/// page unchanged as `FromWorker::Run`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum PreferenceNews {
    /// The held-out pairs whose prompts are sampled.
    Prompts(Vec<Pair>),
    /// One model's greedy completions of those prompts, in order.
    Samples { model: SampleModel, completions: Vec<String> },
    /// The SFT comparison's model after `step` steps, scored on the preference run's
    /// held-out pairs against the same reference, with the run's objective (the core's
    /// `preference_eval`): its loss and TRL's metrics by name.
    SftPairs { step: usize, loss: f64, metrics: BTreeMap<String, f64> },
}

impl Settings for PreferenceParams {
    const NAME: &'static str = "preference";
    fn fields() -> Vec<Field<Self>> {
        vec![
            Field { key: "objective", get: |p| p.objective.clone(), set: |p, v| assign(&mut p.objective, one_of(v, &objectives())) },
            Field { key: "beta", get: |p| p.beta.to_string(), set: |p, v| assign(&mut p.beta, float(v, 1e-3, 10.0)) },
            Field {
                key: "data",
                get: |p| p.data.to_string(),
                set: |p, v| {
                    one_of(v, &DATA)?;
                    assign(&mut p.data, v.parse::<DataSource>())
                },
            },
            Field { key: "steps", get: |p| p.steps.to_string(), set: |p, v| assign(&mut p.steps, int(v, 1, 300)) },
            Field { key: "lr", get: |p| p.lr.to_string(), set: |p, v| assign(&mut p.lr, float(v, 1e-6, 1.0)) },
            Field { key: "batch", get: |p| p.batch.to_string(), set: |p, v| assign(&mut p.batch, int(v, 1, 32)) },
            Field { key: "rank", get: |p| p.rank.to_string(), set: |p, v| assign(&mut p.rank, int(v, 1, 64)) },
            Field { key: "sft", get: |p| p.sft.to_string(), set: |p, v| assign(&mut p.sft, boolean(v)) },
        ]
    }
}

/// One metric's points from a stream of `(step, metrics)`: the steps that carry it.
pub fn curve<'a>(points: impl IntoIterator<Item = (usize, &'a BTreeMap<String, f64>)>, key: &str) -> Vec<(f64, f64)> {
    points.into_iter().filter_map(|(step, m)| m.get(key).map(|v| (step as f64, *v))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::widgets::Widget;
    use tinytune::TextTokenizer;
    use tinytune::train::Dataset;

    fn micro_tokenizer() -> TextTokenizer {
        TextTokenizer::from_json(include_str!("../../assets/micro/tokenizer.json"), "assets/micro/tokenizer.json").unwrap()
    }

    #[test]
    fn the_defaults_are_the_lessons_run_and_validate() {
        let p = PreferenceParams::default();
        let c = p.train_config();
        assert_eq!(c.objective, Objective::from_name("dpo", 0.1, 0.0).unwrap());
        assert_eq!(c.data.to_string(), "story-qa-sentence-pairs");
        assert_eq!((c.steps, c.batch_size, c.lr, c.eval_every, c.eval_batches), (30, 4, 5e-3, 10, 4));
        assert_eq!(c.method.name(), "lora");
        c.validate("widget", tinytune::ModelConfig::micro().n_positions).unwrap();
        p.sft_config().validate("widget", tinytune::ModelConfig::micro().n_positions).unwrap();
        assert_eq!(
            p.command(),
            "tinytune finetune --model assets/micro --data story-qa-sentence-pairs --objective dpo --beta 0.1 --method lora --rank 8 --alpha 16 \
             --targets all-linear --steps 30 --batch 4 --seq-len 98 --lr 0.005 --train-examples 48 --eval-examples 16 --eval-every 10 \
             --eval-batches 4 --out runs/dpo-story-qa-sentence-pairs"
        );
    }

    #[test]
    fn every_objective_on_offer_is_the_cores_and_bad_values_are_named() {
        let offered = objectives();
        assert!(offered.starts_with(&["dpo", "ipo", "hinge"]), "{offered:?}");
        for name in &offered {
            let w = Widget::from_block(&format!("name: preference\nobjective: {name}\nbeta: 0.2\ndata: story-qa-pairs\nsft: false")).unwrap();
            let Widget::Preference(p) = &w else { panic!("{w:?}") };
            let c = p.train_config();
            assert_eq!((c.objective.name(), c.data.to_string().as_str(), p.sft), (*name, "story-qa-pairs", false));
            assert!(c.objective.is_preference());
            c.validate("widget", 128).unwrap();
            assert!(p.command().contains(&format!("--objective {name} --beta 0.2")), "{}", p.command());
        }
        assert!(offered.contains(&"kto"), "{offered:?}");
        let e = Widget::from_block("name: preference\nobjective: simpo").unwrap_err();
        assert!(e.contains("preference: objective") && e.contains("choose dpo, ipo, hinge"), "{e}");
        let e = Widget::from_block("name: preference\ndata: story-qa").unwrap_err();
        assert!(e.contains("choose story-qa-sentence-pairs"), "{e}");
        let e = Widget::from_block("name: preference\nbeta: 0").unwrap_err();
        assert!(e.contains("beta"), "{e}");
    }

    #[test]
    fn the_command_carries_every_value_of_the_run() {
        // The flags the command gives, read back the way the CLI reads them.
        for p in [
            PreferenceParams::default(),
            PreferenceParams {
                objective: "hinge".into(),
                beta: 0.5,
                data: "json-extract-pairs".parse().unwrap(),
                steps: 7,
                lr: 1e-3,
                batch: 3,
                rank: 2,
                sft: false,
            },
        ] {
            let args = p.command_args();
            let flag = |f: &str| args.iter().position(|a| a == f).map(|i| args[i + 1].clone()).unwrap_or_else(|| panic!("{f} missing: {args:?}"));
            let c = p.train_config();
            assert_eq!(Objective::from_name(&flag("--objective"), flag("--beta").parse().unwrap(), 0.0).unwrap(), c.objective);
            assert_eq!(flag("--data").parse::<DataSource>().unwrap(), c.data);
            assert_eq!(flag("--steps").parse::<usize>().unwrap(), c.steps);
            assert_eq!(flag("--batch").parse::<usize>().unwrap(), c.batch_size);
            assert_eq!(flag("--seq-len").parse::<usize>().unwrap(), c.seq_len);
            assert_eq!(flag("--lr").parse::<f64>().unwrap(), c.lr);
            assert_eq!(flag("--train-examples").parse::<usize>().unwrap(), c.train_examples);
            assert_eq!(flag("--eval-examples").parse::<usize>().unwrap(), c.eval_examples);
            assert_eq!(flag("--eval-every").parse::<usize>().unwrap(), c.eval_every);
            assert_eq!(flag("--eval-batches").parse::<usize>().unwrap(), c.eval_batches);
            let lora = c.method.lora().expect("LoRA").clone();
            assert_eq!((flag("--rank").parse::<usize>().unwrap(), flag("--alpha").parse::<f64>().unwrap()), (lora.r, lora.lora_alpha));
            assert_eq!(LoraConfig::target_list(&flag("--targets")), lora.target_modules);
        }
    }

    #[test]
    fn every_pair_fits_its_rows_whole() {
        let tok = micro_tokenizer();
        for data in DATA {
            let p = PreferenceParams { data: data.parse().unwrap(), ..PreferenceParams::default() };
            let t = p.seq_len();
            let mut longest = 0;
            for (split, n) in [(Split::Train, TRAIN_PAIRS), (Split::Eval, EVAL_PAIRS)] {
                for pair in p.task().pairs(p.kind(), 0, split, n) {
                    for completion in [&pair.chosen, &pair.rejected] {
                        // prompt, completion and the end-of-text token: t inputs hold t + 1 ids.
                        let ids = tok.encode(&format!("{}{completion}", pair.prompt)).unwrap().len() + 1;
                        longest = longest.max(ids);
                    }
                }
            }
            // The longest row fits whole, and no row is padded past it (every row is padded to
            // seq_len, so a longer one costs time for nothing).
            assert_eq!(longest, t + 1, "{data}: the longest row has {longest} tokens; set seq_len to {}", longest - 1);
            // The data sets build, at this length, for both runs.
            let pairs = Dataset::from_pairs(&tok, &p.task().pairs(p.kind(), 0, Split::Train, TRAIN_PAIRS), t).unwrap();
            let sft = Dataset::from_examples(&tok, &sft_examples(&p, Split::Train, TRAIN_PAIRS), t, 0.0).unwrap();
            assert_eq!((pairs.len(), sft.len()), (TRAIN_PAIRS, TRAIN_PAIRS), "{data}");
        }
    }

    #[test]
    fn the_comparison_learns_the_chosen_completions_of_the_same_prompts() {
        let p = PreferenceParams::default();
        let pairs = p.task().pairs(p.kind(), 0, Split::Train, 5);
        let sft = sft_examples(&p, Split::Train, 5);
        for (pair, ex) in pairs.iter().zip(&sft) {
            assert_eq!((&ex.prompt, &ex.response), (&pair.prompt, &pair.chosen));
            assert_ne!(pair.chosen, pair.rejected);
        }
        // Sentence pairs: the chosen completion is the whole sentence.
        assert!(sft[0].response.split(' ').count() > 3, "{:?}", sft[0].response);
        let c = p.sft_config();
        assert_eq!(c.objective, Objective::NextToken);
        assert_eq!(TrainConfig { objective: p.train_config().objective, data: p.data, eval_every: p.eval_every(), ..c }, p.train_config());
        // The sampled prompts are the first held-out pairs.
        assert_eq!(sample_pairs(&p), p.task().pairs(p.kind(), 0, Split::Eval, EVAL_PAIRS)[..SAMPLES].to_vec());
    }

    #[test]
    fn curves_keep_the_steps_that_carry_the_metric() {
        let a: BTreeMap<String, f64> = [("rewards/margins".to_string(), 0.5)].into();
        let b: BTreeMap<String, f64> = BTreeMap::new();
        assert_eq!(curve([(1, &a), (2, &b), (3, &a)], "rewards/margins"), vec![(1.0, 0.5), (3.0, 0.5)]);
    }
}
