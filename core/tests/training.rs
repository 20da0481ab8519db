//! Training behaviour on the flex CPU backend with the nano preset: loss falls to a stated
//! bound, resuming is exact, and a diverging run stops with an error instead of saving NaN.

use burn::tensor::Device;
use tinytune::checkpoint::{load_model, load_optimizer, save_model, save_optimizer};
use tinytune::data::{CHARSET, Task};
use tinytune::train::{DataSource, TrainConfig, Trainer};
use tinytune::{Error, Gpt, ModelConfig, TextTokenizer};

fn ad() -> Device {
    Device::flex().autodiff()
}

/// The shipped micro model (pre-trained on stories) and its tokenizer, on `device`.
fn micro(device: &Device) -> (Gpt, TextTokenizer) {
    let asset = |f: &str| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../assets/micro").join(f);
    let config = ModelConfig::from_json(&std::fs::read_to_string(asset("config.json")).unwrap(), "config.json").unwrap();
    let tok = TextTokenizer::from_json(&std::fs::read_to_string(asset("tokenizer.json")).unwrap(), "tokenizer.json").unwrap();
    (load_model(&config, &std::fs::read(asset("model.safetensors")).unwrap(), device, "model.safetensors").unwrap(), tok)
}

fn nano(tok: &TextTokenizer) -> ModelConfig {
    ModelConfig { vocab_size: tok.vocab_size(), ..ModelConfig::nano() }
}

fn config(data: DataSource, steps: usize) -> TrainConfig {
    TrainConfig {
        data,
        train_examples: 2000,
        eval_examples: 100,
        steps,
        batch_size: 16,
        seq_len: 64,
        lr: 3e-3,
        warmup_steps: 10,
        eval_batches: 4,
        ..TrainConfig::default()
    }
}

#[test]
fn nano_learns_the_sentiment_task_within_150_steps() {
    // Stated bound: after 150 steps (batch 16) the held-out loss on the response tokens is
    // below 1.0 nats/token, from ln(vocab) ≈ 3.6 at initialisation. Measured on flex it
    // reaches about 0.5; the bound leaves room for floating-point differences.
    let tok = TextTokenizer::char_level(CHARSET);
    let device = ad();
    let model = Gpt::init(&nano(&tok), 0, &device);
    let mut trainer = Trainer::new(model, &tok, config(DataSource::Task(Task::Sentiment), 150), &device).unwrap();
    let before = trainer.eval_loss().unwrap();
    while trainer.step < 150 {
        trainer.step().unwrap();
    }
    let after = trainer.eval_loss().unwrap();
    assert!(before > 3.0, "untrained loss {before}");
    assert!(after < 1.0, "held-out loss after 150 steps: {after}");
}

#[test]
fn a_resumed_run_continues_exactly() {
    let tok = TextTokenizer::char_level(CHARSET);
    let device = ad();
    let cfg = || TrainConfig { train_examples: 300, ..config(DataSource::Stories, 8) };
    let c = nano(&tok);

    let mut straight = Trainer::new(Gpt::init(&c, 0, &device), &tok, cfg(), &device).unwrap();
    let losses: Vec<f32> = (0..8).map(|_| straight.step().unwrap().loss).collect();

    let mut first = Trainer::new(Gpt::init(&c, 0, &device), &tok, cfg(), &device).unwrap();
    for _ in 0..4 {
        first.step().unwrap();
    }
    // Save to bytes and rebuild everything from them, as a new process would.
    let (weights, optim, t) = (save_model(&first.model), save_optimizer(&first.optim), first.optim.t);
    drop(first);
    let model = load_model(&c, &weights, &device, "model.safetensors").unwrap();
    let mut resumed = Trainer::new(model, &tok, cfg(), &device).unwrap();
    load_optimizer(&mut resumed.optim, t, &optim, &device, "optimizer.safetensors").unwrap();
    resumed.step = 4;
    let later: Vec<f32> = (0..4).map(|_| resumed.step().unwrap().loss).collect();
    assert_eq!(later, losses[4..], "resumed losses must equal the uninterrupted run's");
}

#[test]
fn a_diverging_run_stops_with_a_clear_error() {
    let tok = TextTokenizer::char_level(CHARSET);
    let device = ad();
    let mut cfg = config(DataSource::Stories, 50);
    cfg.train_examples = 200;
    cfg.lr = 1e35;
    cfg.warmup_steps = 0;
    cfg.optimizer.clip_grad_norm = None;
    let mut trainer = Trainer::new(Gpt::init(&nano(&tok), 0, &device), &tok, cfg, &device).unwrap();
    let err = (0..50).find_map(|_| trainer.step().err()).expect("a learning rate of 1e35 must blow up");
    match &err {
        Error::NonFiniteLoss { step, .. } => assert!(*step >= 2),
        other => panic!("wrong error {other:?}"),
    }
    // Core names the field; the CLI shows it as --lr (native/tests/cli.rs), the page as lr.
    assert!(err.to_string().contains("`lr`"), "{err}");
}

/// The next-token objective is the mean negative log-likelihood of the counted targets:
/// checked against the same sum computed on the host in f64 from the model's logits, with
/// prompt tokens weighted 0, 0.25 and 1 (SFT's prompt-loss weight), and a batch with nothing
/// counted has loss 0, not NaN.
#[test]
fn the_next_token_objective_is_the_weighted_mean_nll_of_the_targets() {
    use tinytune::train::{Batch, Objective};
    let tok = TextTokenizer::char_level(CHARSET);
    let device = Device::flex();
    let model = Gpt::init(&nano(&tok), 3, &device);
    let (b, t, v) = (2, 5, tok.vocab_size());
    let inputs: Vec<u32> = (0..b * t).map(|i| (i * 7 % v) as u32).collect();
    let targets: Vec<u32> = (0..b * t).map(|i| (i * 11 % v) as u32).collect();
    for weights in [vec![1.0; b * t], (0..b * t).map(|i| if i % t < 2 { 0.25 } else { 1.0 }).collect(), vec![0.0; b * t]] {
        let batch = Batch { b, t, inputs: inputs.clone(), targets: targets.clone(), weights: weights.clone(), ..Default::default() };
        let objective = Objective::NextToken;
        let loss = objective.loss(&model, &batch, &device, None).into_data().convert::<f32>().try_to_vec::<f32>().unwrap()[0];
        // The same on the host: log-softmax of each row of logits, picked at the target.
        let (ids, _, _) = batch.to_device(&device);
        let logits = model.forward(ids).into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
        let mut nll = 0.0f64;
        for (i, (&target, &w)) in targets.iter().zip(&weights).enumerate() {
            let row: Vec<f64> = logits[i * v..(i + 1) * v].iter().map(|&x| x as f64).collect();
            let max = row.iter().cloned().fold(f64::MIN, f64::max);
            let log_z = max + row.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
            nll += w as f64 * (log_z - row[target as usize]);
        }
        let counted: f32 = weights.iter().sum();
        assert_eq!(objective.weight(&batch), counted);
        let expected = nll / (counted as f64).max(1.0);
        assert!((loss as f64 - expected).abs() < 1e-5, "loss {loss} against the host's {expected} (weights {weights:?})");
        assert!(loss.is_finite());
    }
}

/// The DPO objectives on the device equal the host's f64 formulas (TRL 1.16's definitions,
/// `DpoLoss::pair_loss`) from the same log-probabilities: sigmoid, ipo (per-token averages),
/// hinge and robust (label smoothing 0.1); the device's loss is the mean over pairs, a pair
/// weighs one, and with the reference equal to the policy every loss is at its start (ln 2
/// for sigmoid).
#[test]
fn the_dpo_objectives_equal_trls_formulas_on_the_hosts_log_probabilities() {
    use tinytune::data::{Split, Task};
    use tinytune::train::objective::{PreferenceMetrics, RowScore, sequence_logps};
    use tinytune::train::{Dataset, DpoLoss, Objective, preference_eval, reference_logps};
    let tok = TextTokenizer::char_level(CHARSET);
    let device = Device::flex();
    let (policy, reference) = (Gpt::init(&nano(&tok), 3, &device), Gpt::init(&nano(&tok), 4, &device));
    let pairs = Task::Sentiment.pairs(tinytune::data::PairKind::Correct, 0, Split::Eval, 3);
    let mut data = Dataset::from_pairs(&tok, &pairs, 64).unwrap();
    data.set_refs(reference_logps(&reference, &data, 2, 64).unwrap());
    let batch = data.sequential(3, 64, 1).remove(0);
    assert_eq!((batch.b, batch.refs.len()), (6, 6));
    let read = |x: burn::tensor::Tensor<1>| x.into_data().convert::<f64>().try_to_vec::<f64>().unwrap();
    let logps = read(sequence_logps(&policy, &batch, &device, None, false).completion);
    let counts = batch.row_counts();
    for (loss_type, smoothing) in [(DpoLoss::Sigmoid, 0.0), (DpoLoss::Ipo, 0.0), (DpoLoss::Hinge, 0.0), (DpoLoss::Robust, 0.1)] {
        let objective = Objective::Dpo { loss_type, beta: 0.1, label_smoothing: smoothing };
        let device_loss = read(objective.loss(&policy, &batch, &device, None))[0];
        let rows: Vec<RowScore> =
            (0..6).map(|i| RowScore { logp: logps[i], count: counts[i] as f64, reference: batch.refs[i] as f64, ..Default::default() }).collect();
        let host = PreferenceMetrics::of(&objective, &rows);
        // By hand for the first pair's share: d from the rows, the loss from the formula.
        let d = |i: usize| {
            let n = |r: usize| if loss_type == DpoLoss::Ipo { counts[r] as f64 } else { 1.0 };
            (logps[i] - batch.refs[i] as f64) / n(i) - (logps[i + 1] - batch.refs[i + 1] as f64) / n(i + 1)
        };
        let by_hand: f64 = [0, 2, 4].iter().map(|&i| loss_type.pair_loss(d(i), 0.1, smoothing)).sum::<f64>() / 3.0;
        assert!((host.loss - by_hand).abs() < 1e-9, "{loss_type:?}: {} vs {by_hand}", host.loss);
        assert!((device_loss - host.loss).abs() < 1e-4 * host.loss.abs().max(1.0), "{loss_type:?}: device {device_loss}, host {}", host.loss);
        assert_eq!(objective.weight(&batch), 3.0);
        // The evaluation path reports the same loss.
        let eval = preference_eval(&objective, &policy, &data, 2, 64, 10).unwrap();
        assert!((eval.loss - host.loss).abs() < 1e-4 * host.loss.abs().max(1.0), "{loss_type:?}");
        assert_eq!(eval.pairs, 3);
    }
    // Against itself, every reward is 0 and the sigmoid loss is ln 2.
    data.set_refs(reference_logps(&policy, &data, 2, 64).unwrap());
    let m = preference_eval(&Objective::dpo(DpoLoss::Sigmoid, 0.1), &policy, &data, 3, 64, 10).unwrap();
    assert!((m.loss - std::f64::consts::LN_2).abs() < 1e-6 && m.metrics["rewards/margins"].abs() < 1e-6, "{m:?}");
    assert_eq!(m.metrics["rewards/accuracies"], 0.0, "no pair is strictly better than itself");
}

/// DPO teaches the shipped micro model (pre-trained on stories only) a style preference
/// that holds on held-out prompts: on story-qa's sentence pairs (the answer as a whole
/// sentence chosen over the bare answer), TRL's `rewards/accuracies` on 48 held-out pairs
/// rises from 0 (policy = reference) above 0.9 within 12 steps of LoRA on every linear
/// layer (batch 8 pairs, beta 0.1, lr 5e-3), and the margin grows. (Measured: 1.0 after
/// 10 steps, margin 2.3; the correctness pairs, story-qa-pairs, stay near 0.55 in 60
/// steps: micro cannot read the stories well enough yet.)
#[test]
fn dpo_on_micro_raises_held_out_reward_accuracy_above_ninety_percent() {
    use tinytune::methods::{LoraConfig, Method};
    let device = ad();
    let (model, tok) = micro(&device);
    let method = Method::Lora(LoraConfig { r: 8, lora_alpha: 16.0, target_modules: vec!["all-linear".into()], ..LoraConfig::default() });
    let model = method.apply(model, 0, &device).unwrap();
    let tc = TrainConfig {
        data: "story-qa-sentence-pairs".parse().unwrap(),
        objective: tinytune::train::Objective::dpo(tinytune::train::DpoLoss::Sigmoid, 0.1),
        method,
        train_examples: 96,
        eval_examples: 48,
        steps: 12,
        batch_size: 8,
        seq_len: 128,
        lr: 5e-3,
        warmup_steps: 2,
        eval_batches: 6,
        ..TrainConfig::default()
    };
    let mut trainer = Trainer::new(model, &tok, tc, &device).unwrap();
    let mut first = None;
    while trainer.step < trainer.config.steps {
        let e = trainer.step().unwrap();
        first.get_or_insert(e.loss);
    }
    let first = first.unwrap();
    assert!((first - std::f32::consts::LN_2).abs() < 1e-4, "the first step's loss is ln 2 (policy = reference): {first}");
    let end = trainer.evaluate().unwrap();
    let (acc, margin) = (end.metrics["rewards/accuracies"], end.metrics["rewards/margins"]);
    assert!(acc > 0.9, "held-out rewards/accuracies {acc}");
    assert!(margin > 0.5 && (end.loss as f64) < std::f64::consts::LN_2, "margin {margin}, loss {}", end.loss);
}

/// ORPO needs no reference: its loss on a batch (the chosen rows' NLL over prompt and
/// completion, minus β·mean log σ of the log-odds ratio of the per-token averages) is the
/// host formula's from the same rows' log-probabilities; and on micro's sentence pairs it
/// raises held-out `rewards/accuracies` (β times the average log-probability, so the
/// chosen completion more likely per token than the rejected one) above 0.9 within 20
/// steps. (Measured with scripts/dpo-curves.sh's settings: 0.604 at step 10, 1.0 from
/// step 20; ORPO's NLL term is mostly SFT on the chosen sentences, so it learns the style
/// more slowly than DPO.)
#[test]
fn orpo_loss_is_the_formula_and_learns_the_preference_without_a_reference() {
    use tinytune::methods::{LoraConfig, Method};
    use tinytune::train::objective::{PreferenceMetrics, RowScore, sequence_logps};
    let device = ad();
    let objective = tinytune::train::Objective::Orpo { beta: 0.1 };
    // The formula, on a nano model's batch of three pairs.
    let tok = TextTokenizer::char_level(CHARSET);
    let policy = Gpt::init(&nano(&tok), 1, &device);
    let pairs = tinytune::data::Task::Sentiment.pairs(tinytune::data::PairKind::Correct, 0, tinytune::data::Split::Train, 3);
    let data = tinytune::train::Dataset::from_pairs_for(&objective, &tok, &pairs, 64, 8).unwrap();
    let batch = data.sequential(3, 64, 1).remove(0);
    let read = |x: burn::tensor::Tensor<1>| x.into_data().convert::<f64>().try_to_vec::<f64>().unwrap();
    let logps = sequence_logps(&policy, &batch, &device, None, false);
    let (completion, whole) = (read(logps.completion), read(logps.whole.unwrap()));
    let counts = batch.row_counts();
    let lens: Vec<f32> = batch.sequence_mask().chunks(64).map(|m| m.iter().sum()).collect();
    assert!(lens.iter().zip(&counts).all(|(l, c)| l > c), "the whole row counts more tokens than the completion");
    let rows: Vec<RowScore> =
        (0..6).map(|i| RowScore { logp: completion[i], count: counts[i] as f64, whole: whole[i], whole_count: lens[i] as f64, ..Default::default() }).collect();
    let host = PreferenceMetrics::of(&objective, &rows);
    let device_loss = read(objective.loss(&policy, &batch, &device, None))[0];
    assert!((host.loss - device_loss).abs() < 1e-4, "host {} vs device {device_loss}", host.loss);
    assert!((host.loss - host.metrics["nll_loss"] + 0.1 * host.metrics["log_odds_ratio"]).abs() < 1e-9, "{host:?}");
    // Training micro with LoRA: no reference is scored, and the preference is learned.
    let (model, tok) = micro(&device);
    let method = Method::Lora(LoraConfig { r: 8, lora_alpha: 16.0, target_modules: vec!["all-linear".into()], ..LoraConfig::default() });
    let model = method.apply(model, 0, &device).unwrap();
    let tc = TrainConfig {
        data: "story-qa-sentence-pairs".parse().unwrap(),
        objective,
        method,
        train_examples: 160,
        eval_examples: 48,
        steps: 20,
        batch_size: 8,
        seq_len: 128,
        lr: 5e-3,
        warmup_steps: 2,
        eval_batches: 6,
        ..TrainConfig::default()
    };
    let mut trainer = Trainer::new(model, &tok, tc, &device).unwrap();
    let before = trainer.evaluate().unwrap();
    let first = trainer.step().unwrap();
    assert!(trainer.references().is_none(), "ORPO scores no reference");
    assert_eq!(first.metrics.len(), 9, "{:?}", first.metrics);
    while trainer.step < trainer.config.steps {
        trainer.step().unwrap();
    }
    let after = trainer.evaluate().unwrap();
    let (acc0, acc) = (before.metrics["rewards/accuracies"], after.metrics["rewards/accuracies"]);
    eprintln!(
        "orpo: accuracies {acc0} -> {acc}, loss {} -> {}, margins {} -> {}",
        before.loss, after.loss, before.metrics["rewards/margins"], after.metrics["rewards/margins"]
    );
    assert!(acc > 0.9 && acc > acc0, "held-out rewards/accuracies {acc0} -> {acc}");
    assert!(after.loss < before.loss, "loss {} -> {}", before.loss, after.loss);
}

/// KTO's loss on a batch of unpaired examples is the host formula's (TRL's `KTOTrainer`:
/// `1 − σ(β(r − z))` for a desirable example, `1 − σ(β(z − r))` for an undesirable one, z
/// the clamped mean log-ratio of the mismatched rows), and starts at 0.5 when the policy is
/// its own reference; on micro's sentence pairs taken apart (the sentence desirable, the
/// bare answer undesirable) it pulls held-out rewards/chosen above rewards/rejected.
#[test]
fn kto_loss_is_the_formula_and_separates_desirable_from_undesirable() {
    use tinytune::methods::{LoraConfig, Method};
    use tinytune::train::objective::{PreferenceMetrics, RowScore, sequence_logps};
    use tinytune::train::reference_logps;
    let device = ad();
    let objective = tinytune::train::Objective::Kto { beta: 0.3, desirable_weight: 1.0, undesirable_weight: 1.5 };
    // The formula, on a nano model's batch of four examples against another nano model.
    let tok = TextTokenizer::char_level(CHARSET);
    let (policy, reference) = (Gpt::init(&nano(&tok), 1, &device), Gpt::init(&nano(&tok), 2, &device));
    let pairs = tinytune::data::Task::Sentiment.pairs(tinytune::data::PairKind::Correct, 0, tinytune::data::Split::Train, 2);
    let mut data = tinytune::train::Dataset::from_pairs_for(&objective, &tok, &pairs, 64, 4).unwrap();
    data.set_refs(reference_logps(&reference, &data, 4, 64).unwrap());
    let batch = data.sequential(4, 64, 1).remove(0);
    assert_eq!((batch.b, batch.labels.clone()), (8, vec![true, true, false, false]), "TRL's order: every chosen, then every rejected");
    let read = |x: burn::tensor::Tensor<1>| x.into_data().convert::<f64>().try_to_vec::<f64>().unwrap();
    let logps = read(sequence_logps(&policy, &batch, &device, None, false).completion);
    let rows: Vec<RowScore> = (0..8)
        .map(|i| RowScore { logp: logps[i], reference: batch.refs[i] as f64, label: (i % 2 == 0).then(|| batch.labels[i / 2]), ..Default::default() })
        .collect();
    let host = PreferenceMetrics::of(&objective, &rows);
    let r = |i: usize| logps[i] - batch.refs[i] as f64;
    let z = ((r(1) + r(3) + r(5) + r(7)) / 4.0).max(0.0);
    let s = |x: f64| 1.0 / (1.0 + (-x).exp());
    let by_hand = ((1.0 - s(0.3 * (r(0) - z))) + (1.0 - s(0.3 * (r(2) - z))) + 1.5 * (1.0 - s(0.3 * (z - r(4)))) + 1.5 * (1.0 - s(0.3 * (z - r(6))))) / 4.0;
    assert!((host.loss - by_hand).abs() < 1e-9, "{} vs {by_hand}", host.loss);
    assert!((host.metrics["kl"] - z).abs() < 1e-9);
    let device_loss = read(objective.loss(&policy, &batch, &device, None))[0];
    assert!((host.loss - device_loss).abs() < 1e-4, "host {} vs device {device_loss}", host.loss);
    // Training micro with LoRA on the sentence pairs, taken apart.
    let (model, tok) = micro(&device);
    let method = Method::Lora(LoraConfig { r: 8, lora_alpha: 16.0, target_modules: vec!["all-linear".into()], ..LoraConfig::default() });
    let model = method.apply(model, 0, &device).unwrap();
    let tc = TrainConfig {
        data: "story-qa-sentence-pairs".parse().unwrap(),
        objective: tinytune::train::Objective::from_name("kto", 0.1, 0.0).unwrap(),
        method,
        train_examples: 96,
        eval_examples: 24,
        steps: 12,
        batch_size: 8,
        seq_len: 128,
        lr: 5e-3,
        warmup_steps: 2,
        eval_batches: 6,
        ..TrainConfig::default()
    };
    let mut trainer = Trainer::new(model, &tok, tc, &device).unwrap();
    let first = trainer.step().unwrap();
    assert!((first.loss - 0.5).abs() < 1e-5, "policy = reference: every loss is 1 − σ(0) = 0.5, got {}", first.loss);
    assert!(first.metrics.contains_key("kl") && first.metrics.contains_key("rewards/chosen"), "{:?}", first.metrics);
    while trainer.step < trainer.config.steps {
        trainer.step().unwrap();
    }
    let after = trainer.evaluate().unwrap();
    let (margin, kl) = (after.metrics["rewards/margins"], after.metrics["kl"]);
    eprintln!("kto: held-out loss {}, margin {margin}, kl {kl}, {:?}", after.loss, after.metrics);
    assert!(margin > 0.5 && after.loss < 0.45, "held-out margin {margin}, loss {}", after.loss);
}

/// A reward model: micro with a fresh score head in place of its LM head (transformers'
/// GPT2ForSequenceClassification, one label), LoRA on every linear layer and the head
/// trained whole (as PEFT's `modules_to_save`). Its loss on a batch is the Bradley–Terry
/// formula on the host's scores, its first loss near ln 2 (the head starts at
/// N(0, 0.02²), so the rewards start near 0), and on story-qa's sentence pairs its
/// held-out accuracy (chosen scored above rejected) rises above 0.9. The body is frozen
/// but for LoRA; the head trains; a reward model refuses any other objective.
#[test]
fn a_reward_model_learns_the_preference_with_the_bradley_terry_loss() {
    use tinytune::methods::{LoraConfig, Method};
    use tinytune::model::named_params;
    use tinytune::train::objective::{PreferenceMetrics, RowScore, reward_positions};
    let device = ad();
    let (model, tok) = micro(&device);
    let eot = tok.eot().unwrap();
    let model = model.into_reward_model(eot, 7);
    assert_eq!((model.config().score_labels(), model.config().pad_token_id(), model.lm_head.is_none()), (Some(1), Some(eot), true));
    let method = Method::Lora(LoraConfig { r: 8, lora_alpha: 16.0, target_modules: vec!["all-linear".into()], ..LoraConfig::default() });
    let model = method.apply(model, 0, &device).unwrap();
    let trainable: Vec<String> = named_params(&model).into_iter().filter(|p| p.trainable).map(|p| p.name).collect();
    assert!(trainable.contains(&"score.weight".to_string()), "the head trains: {trainable:?}");
    assert!(trainable.iter().all(|n| n == "score.weight" || n.contains("lora_")), "only LoRA and the head: {trainable:?}");
    let objective = tinytune::train::Objective::from_name("reward", 0.1, 0.0).unwrap();
    // The formula on one batch of four pairs.
    let pairs = tinytune::data::Task::StoryQa.pairs(tinytune::data::PairKind::Sentence, 0, tinytune::data::Split::Train, 4);
    let data = tinytune::train::Dataset::from_pairs_for(&objective, &tok, &pairs, 128, 4).unwrap();
    let batch = data.sequential(4, 128, 1).remove(0);
    let positions = reward_positions(&batch, Some(eot));
    assert!((0..8).all(|i| batch.inputs[i * 128 + positions[i]] != eot && batch.inputs[i * 128 + positions[i] + 1] == eot), "read before the end token");
    let read = |x: burn::tensor::Tensor<1>| x.into_data().convert::<f64>().try_to_vec::<f64>().unwrap();
    let (inputs, _, _) = batch.to_device(&device);
    let rewards = read(model.rewards(inputs, &positions));
    let rows: Vec<RowScore> = rewards.iter().map(|&r| RowScore { logp: r, ..Default::default() }).collect();
    let host = PreferenceMetrics::of(&objective, &rows);
    let by_hand = (0..4).map(|k| (1.0 + (rewards[2 * k + 1] - rewards[2 * k]).exp()).ln()).sum::<f64>() / 4.0;
    assert!((host.loss - by_hand).abs() < 1e-9);
    let device_loss = read(objective.loss(&model, &batch, &device, None))[0];
    assert!((host.loss - device_loss).abs() < 1e-5, "host {} vs device {device_loss}", host.loss);
    // Training on the sentence pairs.
    let tc = TrainConfig {
        data: "story-qa-sentence-pairs".parse().unwrap(),
        objective,
        method,
        train_examples: 96,
        eval_examples: 48,
        steps: 12,
        batch_size: 8,
        seq_len: 128,
        lr: 5e-3,
        warmup_steps: 2,
        eval_batches: 6,
        ..TrainConfig::default()
    };
    let mut trainer = Trainer::new(model.clone(), &tok, tc.clone(), &device).unwrap();
    let before = trainer.evaluate().unwrap();
    let first = trainer.step().unwrap();
    assert!((first.loss - std::f32::consts::LN_2).abs() < 0.05, "rewards start near 0: {}", first.loss);
    assert!(first.metrics.contains_key("accuracy") && first.metrics.contains_key("mean_reward"), "{:?}", first.metrics);
    while trainer.step < trainer.config.steps {
        trainer.step().unwrap();
    }
    let after = trainer.evaluate().unwrap();
    let (acc0, acc) = (before.metrics["accuracy"], after.metrics["accuracy"]);
    eprintln!("reward model: held-out accuracy {acc0} -> {acc}, loss {} -> {}, margin {}", before.loss, after.loss, after.metrics["margin"]);
    assert!(acc > 0.9 && after.loss < before.loss, "held-out accuracy {acc0} -> {acc}, loss {} -> {}", before.loss, after.loss);
    let e = Trainer::new(model, &tok, TrainConfig { objective: tinytune::train::Objective::NextToken, data: "story-qa".parse().unwrap(), ..tc }, &device)
        .err()
        .unwrap();
    assert!(e.to_string().contains("is a reward model"), "{e}");
}

/// A DPO step in two micro-batches (each keeping its pairs whole) takes the same update as
/// in one: the losses of three steps agree within 1e-5, and each step reports TRL's
/// training metrics for all its pairs.
#[test]
fn dpo_accumulation_takes_the_same_steps() {
    let tok = TextTokenizer::char_level(CHARSET);
    let device = ad();
    let run = |accumulate: usize| {
        let tc = TrainConfig {
            data: "sentiment-pairs".parse().unwrap(),
            objective: tinytune::train::Objective::dpo(tinytune::train::DpoLoss::Sigmoid, 0.5),
            accumulate,
            train_examples: 40,
            eval_examples: 8,
            steps: 3,
            batch_size: 4,
            seq_len: 64,
            lr: 1e-2,
            warmup_steps: 0,
            ..TrainConfig::default()
        };
        let mut trainer = Trainer::new(Gpt::init(&nano(&tok), 0, &device), &tok, tc, &device).unwrap();
        (0..3).map(|_| trainer.step().unwrap()).collect::<Vec<_>>()
    };
    let (one, two) = (run(1), run(2));
    for (a, b) in one.iter().zip(&two) {
        assert!((a.loss - b.loss).abs() < 1e-5, "step {}: {} vs {}", a.step, a.loss, b.loss);
        assert!((a.metrics["rewards/margins"] - b.metrics["rewards/margins"]).abs() < 1e-4, "{:?} vs {:?}", a.metrics, b.metrics);
    }
    assert!(one[2].metrics["rewards/margins"] != 0.0 && one[0].metrics.len() == 6, "{:?}", one[2].metrics);
}

/// GRPO's loss has the policy gradient's gradient: with one update per rollout the ratio is
/// 1, so the clipped surrogate's gradient is that of `−Σ A·log π(completion) / N` (N the
/// completion tokens: TRL's default `dapo` aggregation), here on two completions with
/// advantages +1 and −0.5; and `grpo` aggregation weights each completion by its own
/// length instead. A rollout on a nano model gives groups of 8 with TRL's metrics.
#[test]
fn grpo_loss_has_the_policy_gradient_and_a_rollout_reports_its_groups() {
    use tinytune::data::Example;
    use tinytune::optim::NamedGrads;
    use tinytune::train::objective::sequence_logps;
    use tinytune::train::{Dataset, GrpoLoss, Objective};
    let tok = TextTokenizer::char_level(CHARSET);
    let device = ad();
    let model = Gpt::init(&nano(&tok), 2, &device);
    let ex = |r: &str| Example { prompt: "text: the zoo was fun.\nfeeling:".into(), response: r.into(), chat: false };
    let data = Dataset::from_examples(&tok, &[ex(" happy\n"), ex(" so sad\n")], 64, 0.0).unwrap();
    let mut batch = data.sequential(2, 64, 1).remove(0);
    batch.advantages = vec![1.0, -0.5];
    let counts = batch.row_counts();
    let flat = |g: NamedGrads| -> Vec<f32> { g.0.into_iter().flat_map(|(_, t)| t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()).collect() };
    let grads_of = |loss: burn::tensor::Tensor<1>| flat(NamedGrads::collect(&model, &loss.backward()));
    for (loss_type, weights) in [
        (GrpoLoss::Dapo, [1.0 / (counts[0] + counts[1]), -0.5 / (counts[0] + counts[1])]),
        (GrpoLoss::Grpo, [1.0 / (2.0 * counts[0]), -0.5 / (2.0 * counts[1])]),
    ] {
        let mut objective = Objective::grpo(2, 0.0);
        if let Objective::Grpo { loss_type: l, .. } = &mut objective {
            *l = loss_type;
        }
        let loss = objective.loss(&model, &batch, &device, None);
        let value = loss.clone().into_data().convert::<f32>().try_to_vec::<f32>().unwrap()[0];
        let got = grads_of(loss);
        let logps = sequence_logps(&model, &batch, &device, None, false).completion;
        let w = burn::tensor::Tensor::<1>::from_data(burn::tensor::TensorData::new(weights.to_vec(), [2]), &device);
        let want = grads_of((logps * w).sum().neg());
        let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
        let diff = got.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(scale > 1e-4 && diff <= 1e-5 * scale.max(1.0), "{loss_type:?}: gradients differ by {diff} (scale {scale})");
        // In value the loss is −mean advantage per token (the ratio is 1).
        let expect = -(weights[0] * counts[0] + weights[1] * counts[1]);
        assert!((value - expect).abs() < 1e-6, "{loss_type:?}: loss {value}, expected {expect}");
    }
    // A rollout: two prompts × 8 completions, each group's advantages summing to 0.
    let tc = TrainConfig {
        data: DataSource::Task(Task::Sentiment),
        objective: Objective::grpo(8, 0.0),
        train_examples: 40,
        eval_examples: 4,
        steps: 1,
        batch_size: 16,
        seq_len: 64,
        warmup_steps: 0,
        ..TrainConfig::default()
    };
    let mut trainer = Trainer::new(Gpt::init(&nano(&tok), 0, &device), &tok, tc, &device).unwrap();
    let event = trainer.step().unwrap();
    let groups = trainer.rl.as_ref().unwrap().last.clone();
    assert_eq!((groups.len(), groups[0].completions.len()), (2, 8));
    for g in &groups {
        assert!(g.advantages.iter().sum::<f64>().abs() < 1e-9 && g.rewards.iter().all(|&r| r == 0.0 || r == 1.0), "{g:?}");
    }
    for key in ["reward", "reward_std", "frac_reward_zero_std", "completions/mean_length", "rewards/sentiment/mean"] {
        assert!(event.metrics.contains_key(key), "{key}: {:?}", event.metrics);
    }
    assert!(trainer.evaluate().unwrap().metrics.contains_key("reward"));
}

/// GRPO raises the verifiable reward on held-out prompts: micro, taught sentiment's answer
/// format by 60 steps of SFT, then 24 GRPO steps (full fine-tuning, 4 prompts × 8
/// completions a step, lr 5e-4: the grpo widget's defaults) on the exact-label reward. The
/// held-out reward sampled as in training (64 prompts × 8) rises by more than 0.05.
/// (Measured: 0.613 -> 0.691, greedy 0.672 -> 0.719.)
#[test]
fn grpo_raises_the_held_out_reward_on_micro() {
    use tinytune::train::Objective;
    let device = ad();
    let (model, tok) = micro(&device);
    let sft = TrainConfig {
        data: DataSource::Task(Task::Sentiment),
        train_examples: 2000,
        eval_examples: 16,
        steps: 60,
        batch_size: 8,
        seq_len: 48,
        lr: 2e-3,
        warmup_steps: 6,
        ..TrainConfig::default()
    };
    let mut trainer = Trainer::new(model, &tok, sft, &device).unwrap();
    while trainer.step < trainer.config.steps {
        trainer.step().unwrap();
    }
    let grpo = TrainConfig {
        data: DataSource::Task(Task::Sentiment),
        objective: match Objective::grpo(8, 0.0) {
            Objective::Grpo { group_size, beta, epsilon, temperature, loss_type, .. } => {
                Objective::Grpo { group_size, beta, epsilon, temperature, loss_type, max_completion_len: 4 }
            }
            other => other,
        },
        train_examples: 2000,
        eval_examples: 64,
        steps: 24,
        batch_size: 32,
        seq_len: 48,
        lr: 5e-4,
        warmup_steps: 3,
        ..TrainConfig::default()
    };
    let mut trainer = Trainer::new(trainer.model, &tok, grpo, &device).unwrap();
    let before = trainer.evaluate().unwrap().metrics;
    while trainer.step < trainer.config.steps {
        trainer.step().unwrap();
    }
    let after = trainer.evaluate().unwrap().metrics;
    eprintln!("grpo: held-out reward {} -> {}, greedy {} -> {}", before["reward"], after["reward"], before["greedy_reward"], after["greedy_reward"]);
    assert!(after["reward"] > before["reward"] + 0.05, "held-out reward {} -> {}", before["reward"], after["reward"]);
}

/// Distillation: with α = 1 and T = 1 the student learns the teacher's distribution (the
/// divergence it logs falls: measured 5.50 → 3.67 nats/token over 20 steps of a fresh
/// nano from micro); the trainer refuses a run without a teacher and a teacher with
/// another vocabulary; a student initialised from the teacher takes its layers evenly
/// spaced, and with all of them computes exactly the teacher's logits.
#[test]
fn a_student_learns_its_teachers_distribution() {
    use tinytune::train::{Divergence, Objective};
    let device = ad();
    let (teacher, tok) = micro(&device);
    // A fresh nano-width student cannot start from micro; it learns from it.
    let student = Gpt::init(&nano(&tok), 3, &device);
    let objective = Objective::Distill { divergence: Divergence::ForwardKl, beta: 0.5, temperature: 1.0, alpha: 1.0, lmbda: 0.0, seq_kd: false };
    let cfg = TrainConfig { objective, lr: 3e-3, ..config(DataSource::Stories, 20) };
    let mut trainer = Trainer::new(student, &tok, cfg.clone(), &device).unwrap();
    let err = trainer.step().unwrap_err().to_string();
    assert!(err.contains("teacher"), "{err}");
    let wrong = Gpt::init(&ModelConfig { vocab_size: 64, ..ModelConfig::nano() }, 0, &device);
    let err = trainer.set_teacher(wrong).unwrap_err().to_string();
    assert!(err.contains("vocabulary has 64 tokens"), "{err}");
    trainer.set_teacher(teacher.clone()).unwrap();
    let mut divergences = vec![];
    while trainer.step < 20 {
        let e = trainer.step().unwrap();
        divergences.push(e.metrics["divergence"]);
        // α = 1: the loss is the divergence alone.
        assert!((e.loss as f64 - divergences.last().unwrap()).abs() < 1e-4, "loss {} vs divergence {:?}", e.loss, divergences.last());
    }
    let (first, last) = (divergences[..3].iter().sum::<f64>() / 3.0, divergences[17..].iter().sum::<f64>() / 3.0);
    assert!(last < 0.75 * first, "the divergence to the teacher fell only from {first:.3} to {last:.3}");
    // Initialised from the teacher with 2 of its 4 layers: layers 0 and 2, as DistilBERT.
    assert_eq!(tinytune::train::distill::teacher_layers_for(2, 4), vec![0, 2]);
    let half = ModelConfig { n_layer: 2, ..teacher.config().clone() };
    let student = tinytune::train::distill::student_from_teacher(&teacher, &half, &device).unwrap();
    let data = |m: &Gpt, name: &str| {
        tinytune::model::params::param_data(m).into_iter().find(|(n, _)| n == name).unwrap().1.convert::<f32>().try_to_vec::<f32>().unwrap()
    };
    assert_eq!(data(&student, "h.1.mlp.c_fc.weight"), data(&teacher, "h.2.mlp.c_fc.weight"));
    assert_eq!(data(&student, "wte.weight"), data(&teacher, "wte.weight"));
    let whole = tinytune::train::distill::student_from_teacher(&teacher, teacher.config(), &device).unwrap();
    let ids = burn::tensor::Tensor::<2, burn::tensor::Int>::from_data(burn::tensor::TensorData::new(vec![5i64, 17, 40, 2], [1, 4]), &device);
    let logits = |m: &Gpt| m.forward(ids.clone()).into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
    assert_eq!(logits(&whole), logits(&teacher));
    // A wider student cannot start from the teacher.
    let err = tinytune::train::distill::student_from_teacher(&teacher, &nano(&tok), &device).unwrap_err().to_string();
    assert!(err.contains("n_embd"), "{err}");
}

/// GKD's generated completions: with `lmbda` 1 every step trains on the student's own
/// samples of the batch's prompts (the prompts kept, the completions new, ending at the
/// end-of-text token or the row's end), with the hard term left out; with `seq_kd` on the
/// teacher's samples, with it. A run whose data has no prompts is refused.
#[test]
fn on_policy_and_sequence_level_distillation_sample_their_completions() {
    use tinytune::train::{Divergence, Objective};
    let device = ad();
    let (teacher, tok) = micro(&device);
    let distill = |lmbda: f64, seq_kd: bool| Objective::Distill { divergence: Divergence::ForwardKl, beta: 0.5, temperature: 2.0, alpha: 0.5, lmbda, seq_kd };
    let cfg = |objective| TrainConfig { objective, batch_size: 4, train_examples: 64, ..config(DataSource::Task(Task::Sentiment), 2) };
    let student = || Gpt::init(&nano(&tok), 5, &device);
    // The data's batch, and the same prompts completed by the teacher.
    let mut trainer = Trainer::new(student(), &tok, cfg(distill(1.0, false)), &device).unwrap();
    trainer.set_teacher(teacher.clone()).unwrap();
    let batch = trainer.batch_for(0);
    let pad = tok.eot().unwrap();
    let sampled = tinytune::train::distill::resample(&batch, &burn::module::Module::valid(&teacher), 7, pad, pad);
    let mut changed = 0;
    for r in 0..batch.b {
        let row = r * batch.t..(r + 1) * batch.t;
        let first = batch.weights[row.clone()].iter().position(|&w| w > 0.0).unwrap();
        assert_eq!(sampled.inputs[row.start..=row.start + first], batch.inputs[row.start..=row.start + first], "row {r}'s prompt is kept");
        assert!(sampled.weights[row.start..row.start + first].iter().all(|&w| w == 0.0));
        let counted: Vec<usize> = (0..batch.t).filter(|&i| sampled.weights[row.start + i] > 0.0).collect();
        assert_eq!(counted[0], first, "the completion starts after the prompt");
        let last = *counted.last().unwrap();
        assert!(sampled.targets[row.start + last] == pad || last == batch.t - 1, "row {r} ends at the end-of-text token or the row's end");
        changed += usize::from(sampled.targets[row.clone()] != batch.targets[row]);
    }
    assert!(changed > 0, "sampled completions differ from the data's");
    // lmbda 1: on-policy every step, and the loss is α·T²·divergence alone.
    for _ in 0..2 {
        let e = trainer.step().unwrap();
        assert_eq!(e.metrics["on_policy"], 1.0);
        assert!((e.loss as f64 - 0.5 * 4.0 * e.metrics["divergence"]).abs() < 1e-4, "{:?}", e.metrics);
    }
    // seq_kd: the teacher's samples, learned with both terms.
    let mut trainer = Trainer::new(student(), &tok, cfg(distill(0.0, true)), &device).unwrap();
    trainer.set_teacher(teacher).unwrap();
    let e = trainer.step().unwrap();
    assert!(!e.metrics.contains_key("on_policy"));
    let expected = 0.5 * 4.0 * e.metrics["divergence"] + 0.5 * e.metrics["nll_loss"];
    assert!((e.loss as f64 - expected).abs() < 1e-4, "{} vs {expected}", e.loss);
    let err = Trainer::new(student(), &tok, TrainConfig { data: DataSource::Stories, ..cfg(distill(0.5, false)) }, &device).err().unwrap().to_string();
    assert!(err.contains("lmbda") && err.contains("prompts"), "{err}");
}

/// A teacher cache serves the teacher's own logits: a run filling it (the teacher runs, its
/// rows are kept) and a second run reading the file with a *different* teacher set beside
/// it have bit-equal losses, so the cache, not the teacher, served every row (those steps
/// report `teacher_cached` 1); both match the live teacher's run (the first step bit for
/// bit, later ones within 1e-6: with the logits entering as uploaded data, autodiff adds the
/// gradient's parts in another order). Story-qa rows store only their answer positions;
/// gradient accumulation splits batches as the loss does.
#[test]
fn teacher_cache_reproduces_the_live_teacher() {
    use tinytune::train::teacher_cache::{TeacherCache, fingerprint};
    use tinytune::train::{Divergence, Objective};
    let device = ad();
    let (teacher, tok) = micro(&device);
    let objective = Objective::Distill { divergence: Divergence::Jsd, beta: 0.3, temperature: 2.0, alpha: 0.7, lmbda: 0.0, seq_kd: false };
    let cfg = TrainConfig { objective, batch_size: 4, accumulate: 2, train_examples: 200, seq_len: 128, ..config(DataSource::Task(Task::StoryQa), 3) };
    let run = |with: &Gpt, cache: Option<TeacherCache>| {
        let mut trainer = Trainer::new(Gpt::init(&nano(&tok), 5, &device), &tok, cfg.clone(), &device).unwrap();
        trainer.set_teacher(with.clone()).unwrap();
        trainer.teacher_cache = cache;
        let mut steps = vec![];
        while trainer.step < 3 {
            let e = trainer.step().unwrap();
            steps.push((e.loss, e.metrics.get("teacher_cached").copied()));
        }
        (steps, trainer.teacher_cache)
    };
    let (live, _) = run(&teacher, None);
    assert!(live.iter().all(|s| s.0 > 0.0 && s.1.is_none()), "{live:?}");
    let print = fingerprint(&teacher);
    let (filling, cache) = run(&teacher, Some(TeacherCache::new(print.clone(), tok.vocab_size())));
    let cache = cache.unwrap();
    let losses = |steps: &[(f32, Option<f64>)]| steps.iter().map(|s| s.0).collect::<Vec<_>>();
    assert_eq!(filling[0].0, live[0].0);
    for (a, b) in losses(&filling).iter().zip(losses(&live)) {
        assert!((a - b).abs() <= 1e-6 * b.abs(), "filling {filling:?} vs live {live:?}");
    }
    // A micro-batch is read from the cache only when all its rows were seen before.
    assert!(filling[0].1 == Some(0.0) && filling.iter().all(|s| s.1 < Some(1.0)), "{filling:?}");
    let rows = cache.len();
    assert!(rows > 8 && rows <= 12 && cache.misses == rows, "{rows} rows, {} added", cache.misses);
    // Answers only: far fewer positions than rows × length.
    assert!(cache.logit_bytes() < rows * cfg.seq_len * tok.vocab_size() * 4 / 2, "{} bytes", cache.logit_bytes());
    let bytes = cache.to_bytes();
    let file_bytes = bytes.len();
    let file = TeacherCache::from_bytes(&bytes, "cache.safetensors", &print, tok.vocab_size()).unwrap();
    let other = Gpt::init(teacher.config(), 99, &device);
    assert_ne!(fingerprint(&other), print);
    let (reused, cache) = run(&other, Some(file));
    assert_eq!(losses(&reused), losses(&filling));
    assert!(reused.iter().all(|s| s.1 == Some(1.0)), "{reused:?}");
    assert_eq!(cache.unwrap().hits, 12);
    eprintln!("teacher cache: {rows} rows, {} bytes of logits", file_bytes);
    // The other teacher live gives other losses: the comparison above can fail.
    let (others, _) = run(&other, None);
    assert!((others[0].0 - live[0].0).abs() > 1e-3, "{others:?} vs {live:?}");
}
