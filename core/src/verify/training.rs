//! Training objectives against TRL.

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::families::{files, model_files};
use super::{Check, Fixtures, Measured, Source, Tolerance, ensure, floats, json, load, s, text};
use crate::train::Objective;

const GKD: &str = "distill/gkd.json";
const PAIRS: &str = "dpo/pairs.jsonl";

/// One preference evaluation against TRL's `evaluate()`.
#[derive(Clone, Copy)]
struct Preference {
    /// tinytune's objective name.
    objective: &'static str,
    /// The reference file and the JSON pointer to its case (with `metrics` inside).
    file: &'static str,
    case: &'static str,
    data: &'static str,
    /// The model folder; with the PEFT LoRA adapter on it, and scored against the plain base.
    model: &'static str,
    adapter: bool,
    reference: bool,
    /// How many of TRL's metrics are compared (logits/* are left out where `skip_logits`).
    metrics: usize,
    skip_logits: bool,
}

fn preference_checks<const MEASURE: bool>() -> Vec<Check> {
    let dpo = |objective, case| Preference {
        objective,
        file: "dpo/reference.json",
        case,
        data: PAIRS,
        model: "hf-gpt2",
        adapter: true,
        reference: true,
        metrics: 9,
        skip_logits: false,
    };
    let kto = |case, data| Preference { objective: "kto", file: "dpo/kto.json", case, data, ..dpo("kto", "") };
    let list = [
        ("dpo-sigmoid", "DPO (sigmoid)", dpo("dpo", "/losses/sigmoid"), "make_dpo_reference.py"),
        ("dpo-ipo", "IPO", dpo("ipo", "/losses/ipo"), "make_dpo_reference.py"),
        ("dpo-hinge", "DPO with the hinge loss", dpo("hinge", "/losses/hinge"), "make_dpo_reference.py"),
        ("dpo-robust", "robust DPO (label smoothing 0.1)", dpo("robust", "/losses/robust"), "make_dpo_reference.py"),
        (
            "orpo",
            "ORPO (no reference model)",
            Preference { objective: "orpo", file: "dpo/orpo.json", case: "", reference: false, metrics: 10, skip_logits: true, ..dpo("orpo", "") },
            "make_orpo_reference.py",
        ),
        ("kto-paired", "KTO on pairs split into examples", kto("/cases/paired", PAIRS), "make_kto_reference.py"),
        ("kto-unpaired", "KTO on unpaired examples with weights 1 and 1.3", kto("/cases/unpaired", "dpo/kto.jsonl"), "make_kto_reference.py"),
        (
            "reward",
            "a reward model (Bradley–Terry loss)",
            Preference {
                objective: "reward",
                file: "dpo/reward.json",
                case: "",
                model: "hf-gpt2-reward",
                adapter: false,
                reference: false,
                metrics: 6,
                ..dpo("reward", "")
            },
            "make_reward_reference.py",
        ),
    ];
    list.into_iter()
        .map(|(name, about, p, script)| {
            let mut f = files(&[p.file, p.data], model_files(p.model));
            if p.adapter {
                f.extend(["peft-lora/adapter_config.json".to_string(), "peft-lora/adapter_model.safetensors".to_string()]);
            }
            let script: &'static str = match script {
                "make_dpo_reference.py" => "tests/fixtures/make_dpo_reference.py",
                "make_orpo_reference.py" => "tests/fixtures/make_orpo_reference.py",
                "make_kto_reference.py" => "tests/fixtures/make_kto_reference.py",
                _ => "tests/fixtures/make_reward_reference.py",
            };
            Check::new::<MEASURE, _>(
                format!("trl/{name}"),
                format!("{about}: the metrics TRL's evaluate() reports on six preference pairs, under TRL's names (logps/* within 1e-3)"),
                "trl",
                Source::json(p.file, "/versions"),
                f,
                Tolerance::abs(1e-4, "|Δ metric|"),
                script,
                move |fx, t| Box::pin(preference(fx, p, &t.device, &t.host)),
            )
        })
        .collect()
}

async fn preference(fx: &dyn Fixtures, p: Preference, device: &Device, host: &Device) -> Result<Measured, String> {
    use crate::data::preference::{Feedback, parse, parse_feedback};
    use crate::train::{Dataset, preference_eval_async, reference_logps_async};
    let reference_file = json(fx, p.file)?;
    let case = reference_file.pointer(p.case).ok_or(format!("{}: no {}", p.file, p.case))?;
    let want = case["metrics"].as_object().ok_or(format!("{}: {}: no metrics", p.file, p.case))?;
    let number = |k: &str| case[k].as_f64().ok_or(format!("{}: {}: no {k}", p.file, p.case));
    let beta = if p.objective == "reward" { 0.1 } else { number("beta")? };
    let smoothing = case["label_smoothing"].as_f64().unwrap_or(0.0);
    let mut objective = Objective::from_name(p.objective, beta, smoothing)?;
    if let Objective::Kto { desirable_weight, undesirable_weight, .. } = &mut objective {
        (*desirable_weight, *undesirable_weight) = (number("desirable_weight")?, number("undesirable_weight")?);
    }
    let batch = case["batch"].as_u64().map(|b| b as usize).unwrap_or(16);
    // The adapter loads on the host (which reads weights back synchronously); the models
    // then move to the device, where they are scored.
    let loaded = load(fx, p.model, host)?;
    let seq_len = loaded.model.context_len().min(128);
    let base = loaded.model.clone().to_device(device);
    let policy = if p.adapter {
        let config = text(fx, "peft-lora/adapter_config.json")?;
        crate::methods::peft::load(loaded.model, &config, &fx.read("peft-lora/adapter_model.safetensors")?, "peft-lora", host).map_err(s)?.0
    } else {
        loaded.model
    }
    .to_device(device);
    let data = text(fx, p.data)?;
    let feedback =
        if objective.is_unpaired() { parse_feedback(&data, p.data, None).map_err(s)? } else { Feedback::Pairs(parse(&data, p.data, None).map_err(s)?) };
    let mut ds = match &feedback {
        Feedback::Pairs(pairs) => Dataset::from_pairs_for(&objective, &loaded.tokenizer, pairs, seq_len, batch),
        Feedback::Unpaired(examples) => Dataset::from_unpaired(&loaded.tokenizer, examples, seq_len, batch),
    }
    .map_err(s)?;
    if p.reference {
        ds.set_refs(reference_logps_async(&base, &ds, batch, seq_len).await.map_err(s)?);
    }
    let m = preference_eval_async(&objective, &policy, &ds, batch, seq_len, usize::MAX).await.map_err(s)?;
    if let Some(n) = case["examples"].as_u64() {
        ensure(m.pairs as u64 == n, || format!("{} examples here, {n} in TRL's evaluation", m.pairs))?;
    }
    let (mut d, mut logps, mut compared) = (0.0f64, 0.0f64, 0);
    for (name, value) in want {
        if p.skip_logits && name.starts_with("logits/") {
            continue;
        }
        let w = value.as_f64().ok_or(format!("{}: {name} is not a number", p.file))?;
        let g = if name == "loss" { m.loss } else { *m.metrics.get(name).ok_or(format!("tinytune reports no {name}"))? };
        if name.starts_with("logps/") {
            logps = logps.max((w - g).abs());
        } else {
            d = d.max((w - g).abs());
        }
        compared += 1;
    }
    ensure(compared == p.metrics, || format!("{compared} metrics compared, {} expected", p.metrics))?;
    ensure(logps <= 1e-3, || format!("logps/* differ from TRL's by {logps:e} (tolerance 1e-3)"))?;
    Ok(Measured::new(
        d,
        format!("{compared} metrics on {} {}; logps/* within {logps:.1e}", m.pairs, if objective.is_unpaired() { "examples" } else { "pairs" }),
    ))
}

pub(super) fn checks<const MEASURE: bool>() -> Vec<Check> {
    let mut all = preference_checks::<MEASURE>();
    all.push(Check::new::<MEASURE, _>(
        "trl/gkd",
        "distillation divergences (forward KL, reverse KL, generalised JSD) as GKDTrainer.generalized_jsd_loss, at temperatures 1 and 2, on the host and the device",
        "trl",
        Source::json(GKD, "/library"),
        files(&[GKD], vec![]),
        Tolerance::abs(1e-5, "|Δ loss|"),
        "tests/fixtures/make_distill_reference.py",
        |fx, t| Box::pin(gkd(fx, &t.device)),
    ));
    all
}

/// tinytune's loss with α = 1 is T² times TRL's (Hinton's scaling, which GKD leaves out);
/// with α < 1 it mixes in the next-token loss, checked against the host's closed form.
async fn gkd(fx: &dyn Fixtures, device: &Device) -> Result<Measured, String> {
    use crate::train::distill::{Divergence, distill_loss, divergence_f64, logits_tensor};
    let f = json(fx, GKD)?;
    let shape: Vec<usize> = f["shape"].as_array().ok_or(format!("{GKD}: no shape"))?.iter().filter_map(|v| v.as_u64().map(|x| x as usize)).collect();
    ensure(shape.len() == 3, || format!("{GKD}: shape is [batch, time, vocab]"))?;
    let (b, t, v) = (shape[0], shape[1], shape[2]);
    let (student, teacher, counted) = (floats(&f["student"], GKD)?, floats(&f["teacher"], GKD)?, floats(&f["counted"], GKD)?);
    ensure(student.len() == b * t * v && teacher.len() == b * t * v && counted.len() == b * t, || format!("{GKD}: arrays do not match the shape"))?;
    // Targets for the hard loss: any ids; its value is checked against the host's.
    let targets: Vec<i64> = (0..b * t).map(|i| (i * 7 % v) as i64).collect();
    let n: f32 = counted.iter().sum();
    let row = |x: &[f32], i: usize| x[i * v..(i + 1) * v].iter().map(|&a| a as f64).collect::<Vec<f64>>();
    let hard: f64 = (0..b * t)
        .filter(|&i| counted[i] > 0.0)
        .map(|i| {
            let s = row(&student, i);
            s.iter().map(|x| x.exp()).sum::<f64>().ln() - s[targets[i] as usize]
        })
        .sum::<f64>()
        / n as f64;
    let cases = f["cases"].as_array().ok_or(format!("{GKD}: no cases"))?;
    ensure(cases.len() == 8, || format!("{GKD}: eight cases expected"))?;
    let mut d = 0.0f64;
    for case in cases {
        let (beta, temperature, want) =
            (case["beta"].as_f64().unwrap_or(f64::NAN), case["temperature"].as_f64().unwrap_or(f64::NAN), case["loss"].as_f64().unwrap_or(f64::NAN));
        let divergence = match beta {
            0.0 => Divergence::ForwardKl,
            1.0 => Divergence::ReverseKl,
            _ => Divergence::Jsd,
        };
        let host: f64 =
            (0..b * t).filter(|&i| counted[i] > 0.0).map(|i| divergence_f64(&row(&student, i), &row(&teacher, i), divergence, beta, temperature)).sum::<f64>()
                / n as f64;
        d = d.max((host - want).abs());
        for alpha in [1.0, 0.25] {
            let s = logits_tensor(student.clone(), [b, t, v], device);
            let q = logits_tensor(teacher.clone(), [b, t, v], device);
            let target = Tensor::<2, Int>::from_data(TensorData::new(targets.clone(), [b, t]), device);
            let weights = Tensor::<2>::from_data(TensorData::new(counted.clone(), [b, t]), device);
            let (loss, soft, _) = distill_loss(s, q, target, weights, n, (divergence, beta, temperature, alpha));
            let (loss, soft) = (super::read(loss).await?[0] as f64, super::read(soft).await?[0] as f64);
            d = d.max((soft - want).abs());
            let expected = alpha * temperature * temperature * want + (1.0 - alpha) * hard;
            d = d.max((loss - expected).abs() / expected.abs().max(1.0));
        }
    }
    Ok(Measured::new(d, "8 cases; α 1 and 0.25"))
}
