//! One battery over every fine-tuning method, in the spirit of PEFT's TEST_CASES: at
//! initialisation the adapted model equals the base model; after training every frozen
//! parameter is bit-identical and every trainable one moved; merged equals unmerged;
//! merging in place and unmerging gives the weights back; save/load round-trips; the
//! trainable count equals the closed form.

use std::collections::HashMap;

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};
use tinytune::checkpoint::{load_model_for, save_model};
use tinytune::data::{CHARSET, Task};
use tinytune::formats::ptq::quantize_model;
use tinytune::methods::{
    AdapterActivation, AdapterConfig, AdapterKind, Ia3Config, LoraBias, LoraConfig, LoraInit, Method, MethodKind, PrefixConfig, PromptConfig, PromptInit,
    QloraConfig, for_each_projection_ref, merge, merge_in_place, unmerge,
};
use tinytune::model::named_params;
use tinytune::model::params::param_data;
use tinytune::train::{DataSource, TrainConfig, Trainer};
use tinytune::{Gpt, ModelConfig, TextTokenizer};

fn methods() -> Vec<(&'static str, Method)> {
    vec![
        ("full", Method::Full),
        ("last layers (1 of 2)", Method::LastLayers { n: 1 }),
        ("bitfit", Method::Bitfit),
        ("layernorm only", Method::Layernorm),
        ("lora c_attn r4", Method::Lora(LoraConfig { r: 4, lora_alpha: 8.0, ..LoraConfig::default() })),
        (
            "lora all-linear r2 rslora dropout",
            Method::Lora(LoraConfig {
                r: 2,
                lora_alpha: 4.0,
                lora_dropout: 0.1,
                target_modules: vec!["all-linear".into()],
                use_rslora: true,
                ..LoraConfig::default()
            }),
        ),
        ("lora c_proj (attn and mlp)", Method::Lora(LoraConfig { r: 3, target_modules: vec!["c_proj".into()], ..LoraConfig::default() })),
        ("lora gaussian init, bias all", Method::Lora(LoraConfig { r: 2, init: LoraInit::Gaussian, bias: LoraBias::All, ..LoraConfig::default() })),
        ("dora c_attn r4", Method::Lora(LoraConfig { r: 4, lora_alpha: 8.0, use_dora: true, ..LoraConfig::default() })),
        (
            "qdora all-linear r2",
            Method::Qlora(QloraConfig {
                lora: LoraConfig { r: 2, target_modules: vec!["all-linear".into()], use_dora: true, ..LoraConfig::default() },
                ..QloraConfig::default()
            }),
        ),
        (
            "lora c_fc, bias lora_only",
            Method::Lora(LoraConfig { r: 2, target_modules: vec!["c_fc".into()], bias: LoraBias::LoraOnly, ..LoraConfig::default() }),
        ),
        (
            "qlora c_attn r4, nf4 blocks of 64 + double quant",
            Method::Qlora(QloraConfig { lora: LoraConfig { r: 4, ..LoraConfig::default() }, ..QloraConfig::default() }),
        ),
        (
            "qlora all-linear r2, nf4 blocks of 32",
            Method::Qlora(QloraConfig {
                lora: LoraConfig { r: 2, target_modules: vec!["all-linear".into()], ..LoraConfig::default() },
                block: 32,
                double_quant: false,
            }),
        ),
        ("lora pissa c_attn r4", Method::Lora(LoraConfig { r: 4, lora_alpha: 8.0, init: LoraInit::Pissa, ..LoraConfig::default() })),
        ("adapter houlsby 8", Method::Adapter(AdapterConfig { size: 8, ..AdapterConfig::default() })),
        ("adapter pfeiffer 4 gelu", Method::Adapter(AdapterConfig { kind: AdapterKind::Pfeiffer, size: 4, activation: AdapterActivation::Gelu, scaling: 1.0 })),
        (
            "adapter parallel 4 tanh, scaling 4",
            Method::Adapter(AdapterConfig { kind: AdapterKind::Parallel, size: 4, activation: AdapterActivation::Tanh, scaling: 4.0 }),
        ),
        ("ia3 (PEFT's GPT-2 targets)", Method::Ia3(Ia3Config::default())),
        ("ia3 all-linear, no feedforward", Method::Ia3(Ia3Config { target_modules: vec!["all-linear".into()], feedforward_modules: vec![] })),
        ("prompt tuning 4, random", Method::Prompt(PromptConfig { num_virtual_tokens: 4, ..PromptConfig::default() })),
        (
            "prompt tuning 5, from text",
            Method::Prompt(PromptConfig {
                num_virtual_tokens: 5,
                init: PromptInit::Text,
                init_text: "ab".into(),
                init_ids: vec![1, 2],
                encoder_hidden_size: None,
            }),
        ),
        ("prompt tuning 3, sampled vocab", Method::Prompt(PromptConfig { num_virtual_tokens: 3, init: PromptInit::Vocab, ..PromptConfig::default() })),
        ("p-tuning 4, encoder 16", Method::Prompt(PromptConfig { num_virtual_tokens: 4, encoder_hidden_size: Some(16), ..PromptConfig::default() })),
        ("prefix 3", Method::Prefix(PrefixConfig { num_virtual_tokens: 3, encoder_hidden_size: None })),
        ("prefix 2, encoder 8", Method::Prefix(PrefixConfig { num_virtual_tokens: 2, encoder_hidden_size: Some(8) })),
    ]
}

/// Logits in evaluation mode (no dropout), so two calls on the same weights agree.
fn logits(model: &Gpt, device: &Device) -> Vec<f32> {
    let ids: Vec<i64> = (0..24).map(|i| (i * 5 % 40) as i64).collect();
    let x = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, 24]), &device.clone().inner());
    model.valid().forward(x).into_data().try_to_vec::<f32>().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn values(model: &Gpt) -> HashMap<String, Vec<f32>> {
    param_data(model).into_iter().map(|(n, d)| (n, d.try_to_vec::<f32>().unwrap())).collect()
}

/// The battery covers every method there is: a new `MethodKind` without a case here fails.
#[test]
fn every_method_kind_has_a_battery_case() {
    let covered: Vec<MethodKind> = methods().iter().map(|(_, m)| m.kind()).collect();
    for kind in MethodKind::ALL {
        assert!(covered.contains(&kind), "{kind}: add a case to methods() in core/tests/methods.rs");
        // Names round-trip, so the CLI, the widgets and train.json agree.
        assert_eq!(kind.name().parse::<MethodKind>(), Ok(kind));
    }
}

#[test]
fn every_method_passes_the_battery() {
    let tok = TextTokenizer::char_level(CHARSET);
    battery(&ModelConfig { vocab_size: tok.vocab_size(), ..ModelConfig::nano() }, methods());
}

/// The same battery on the Llama layout (RMSNorm, RoPE, grouped-query attention, SwiGLU,
/// untied head), with GPT-2's target names replaced by their Llama counterparts.
#[test]
fn every_method_passes_the_battery_on_a_llama() {
    let tok = TextTokenizer::char_level(CHARSET);
    let config = ModelConfig { vocab_size: tok.vocab_size(), ..ModelConfig::nano_llama() };
    let rename = |targets: &[String]| -> Vec<String> {
        targets
            .iter()
            .flat_map(|t| match t.as_str() {
                "c_attn" => vec!["q_proj", "v_proj"],
                "c_proj" => vec!["o_proj", "down_proj"],
                "c_fc" => vec!["up_proj"],
                other => vec![other],
            })
            .map(str::to_string)
            .collect()
    };
    let llama_methods = methods()
        .into_iter()
        .map(|(name, method)| {
            let method = match method {
                Method::Lora(l) => Method::Lora(LoraConfig { target_modules: rename(&l.target_modules), ..l }),
                Method::Qlora(q) => Method::Qlora(QloraConfig { lora: LoraConfig { target_modules: rename(&q.lora.target_modules), ..q.lora }, ..q }),
                Method::Ia3(i) if i == Ia3Config::default() => Method::Ia3(Ia3Config::for_family(tinytune::model::Family::Llama)),
                other => other,
            };
            (name, method)
        })
        .filter(|(_, m)| *m != Method::Bitfit)
        .collect();
    // nano-llama has no biases, so BitFit has nothing to train and says so.
    let device = Device::flex();
    let e = Method::Bitfit.apply(Gpt::init(&config, 0, &device), 0, &device).unwrap_err().to_string();
    assert!(e.contains("no") && e.contains("bias") && e.contains("llama"), "{e}");
    battery(&config, llama_methods);
}

fn battery(config: &ModelConfig, methods: Vec<(&'static str, Method)>) {
    let tok = TextTokenizer::char_level(CHARSET);
    let config = config.clone();
    let device = Device::flex().autodiff();
    for (name, method) in methods {
        let base = Gpt::init(&config, 0, &device);
        // QLoRA's base is the NF4-rounded base: the same rounding `tinytune quantize` applies.
        let rounded = match &method {
            Method::Qlora(q) => Some(quantize_model(base.clone(), "nf4", q.block, q.double_quant).unwrap().0),
            _ => None,
        };
        let base_logits = logits(rounded.as_ref().unwrap_or(&base), &device);
        let model = method.apply(base, 1, &device).unwrap();

        // 1. At initialisation the adapted model is the base model (LoRA's B, an adapter's
        //    up-projection start at zero, IA³'s vectors at one). For QLoRA, the dequantized
        //    weights are bit-identical to the NF4-rounded base's, but the weight is rebuilt on
        //    every forward, and the matmul over a freshly built tensor may sum in another
        //    order: equal within 1e-5. PiSSA moves W's top singular part into A·B, so the
        //    sum W_res + s·A·B equals W up to rounding. Soft prompts cannot start at the
        //    base model: prepending anything changes what attention sees.
        let pissa = method.lora().is_some_and(|l| l.init == LoraInit::Pissa);
        let tolerance = match &rounded {
            Some(r) => {
                let want = values(r);
                for_each_projection_ref(&model, |path, p| {
                    let got = p.base_weight().into_data().try_to_vec::<f32>().unwrap();
                    assert_eq!(got, want[&format!("{path}.weight")], "{name}: {path} dequantizes differently");
                });
                1e-5
            }
            None if pissa => 1e-5,
            None => 0.0,
        };
        let init_diff = max_diff(&logits(&model, &device), &base_logits);
        if method.starts_at_base() {
            assert!(init_diff <= tolerance, "{name}: init differs from base by {init_diff}");
        } else {
            assert!(init_diff > 1e-4, "{name}: a soft prompt should change the logits, changed by {init_diff}");
        }
        let packed_before = packed(&model);

        // 2. The trainable count equals the closed form.
        let params = named_params(&model);
        let trainable: usize = params.iter().filter(|p| p.trainable).map(|p| p.numel).sum();
        assert_eq!(trainable, method.trainable_params(&model), "{name}: trainable count");

        // 3. A few steps: frozen parameters bit-identical, trainable ones changed.
        let before = values(&model);
        let cfg = TrainConfig {
            data: DataSource::Task(Task::Sentiment),
            train_examples: 200,
            eval_examples: 20,
            steps: 3,
            batch_size: 4,
            seq_len: 48,
            lr: 1e-2,
            warmup_steps: 0,
            ..TrainConfig::default()
        };
        let mut trainer = Trainer::new(model, &tok, cfg, &device).unwrap();
        for _ in 0..3 {
            trainer.step().unwrap();
        }
        let after = values(&trainer.model);
        for p in &params {
            let moved = before[&p.name] != after[&p.name];
            assert_eq!(moved, p.trainable, "{name}: {} moved={moved} trainable={}", p.name, p.trainable);
        }
        assert_eq!(packed(&trainer.model), packed_before, "{name}: the NF4 base changed");

        // 4. Save and load into a freshly adapted model: identical logits.
        let trained = trainer.model;
        let back = load_model_for(&config, &method, &save_model(&trained), &device, "model.safetensors").unwrap();
        assert_eq!(logits(&back, &device), logits(&trained, &device), "{name}: save/load");

        // 5. Merging in place and back (PEFT's merge_adapter / unmerge_adapter). While
        //    merged: the same logits within 1e-4, and a checkpoint holds the unmerged
        //    weights. Unmerged again: every parameter back within 1e-5 (floating-point
        //    arithmetic is not exactly reversible). An NF4 base refuses, changing nothing.
        let unmerged = logits(&trained, &device);
        let mut has_update = false;
        for_each_projection_ref(&trained, |_, p| has_update |= p.lora.is_some() || p.ia3.is_some());
        let mut in_place = trained.clone();
        match merge_in_place(&mut in_place) {
            Ok(n) => {
                assert_eq!(n > 0, has_update, "{name}: merged {n} projections");
                assert!(max_diff(&logits(&in_place, &device), &unmerged) < 1e-4, "{name}: merged in place differs");
                if n > 0 {
                    assert_ne!(values(&in_place), values(&trained), "{name}: merging in place changed no weight");
                }
                let back = load_model_for(&config, &method, &save_model(&in_place), &device, "model.safetensors").unwrap();
                assert!(max_diff(&logits(&back, &device), &unmerged) < 1e-5, "{name}: a merged model saved its update twice");
                assert_eq!(merge_in_place(&mut in_place).unwrap(), 0, "{name}: merged twice");
                assert_eq!(unmerge(&mut in_place), n, "{name}: unmerged count");
                let (restored, original) = (values(&in_place), values(&trained));
                for (param, w) in &original {
                    let worst = max_diff(w, &restored[param]);
                    assert!(worst < 1e-5, "{name}: {param} came back {worst:e} away");
                }
                assert!(max_diff(&logits(&in_place, &device), &unmerged) < 1e-5, "{name}: unmerged logits differ");
            }
            Err(e) => {
                assert!(matches!(method, Method::Qlora(_)), "{name}: {e}");
                assert!(e.to_string().contains("NF4"), "{name}: {e}");
                assert_eq!(values(&in_place), values(&trained), "{name}: a refused merge changed weights");
            }
        }

        // 6. Merging folds the update into the base weights: same logits within 1e-4, and
        //    the base model's parameter set. Methods that cannot merge say why, and merging
        //    leaves their modules in place.
        let trained_params = named_params(&trained).len();
        let merged = merge(trained);
        assert!(max_diff(&logits(&merged, &device), &unmerged) < 1e-4, "{name}: merged differs");
        let base_params = named_params(&Gpt::init(&config, 0, &device)).len();
        match method.merge_blocker() {
            None => assert_eq!(named_params(&merged).len(), base_params, "{name}: merged model has extra parameters"),
            Some(why) => {
                assert!(why.contains("stays a separate"), "{name}: {why}");
                assert_eq!(named_params(&merged).len(), trained_params, "{name}: merge dropped what cannot merge");
                assert!(trained_params > base_params);
            }
        }
    }
}

/// The packed NF4 codes and scales of every projection (empty without QLoRA).
fn packed(model: &Gpt) -> Vec<(String, Vec<u8>, Vec<f32>)> {
    let mut out = Vec::new();
    for_each_projection_ref(model, |path, p| {
        if let Some(q) = &p.frozen
            && let tinytune::methods::qlora::Stored::Nf4(q) = &*q.stored
        {
            out.push((path.to_string(), q.packed.clone(), q.absmax()));
        }
    });
    out
}

#[test]
fn qlora_keeps_the_base_packed_at_half_a_byte_per_weight() {
    let device = Device::flex();
    let c = ModelConfig::micro();
    let model = Gpt::init(&c, 0, &device);
    let linear: usize = c.n_layer * (c.n_embd * 3 * c.n_embd + c.n_embd * c.n_embd + 2 * c.n_embd * 4 * c.n_embd);
    let q = Method::Qlora(QloraConfig::default()).apply(model, 0, &device).unwrap();
    let mut bytes = 0;
    let mut expected = 0;
    for_each_projection_ref(&q, |path, p| {
        assert!(p.weight.is_none(), "{path} still holds an FP32 weight");
        let n = p.d_in() * p.d_out();
        let blocks = n.div_ceil(64);
        // Two codes per byte, one 8-bit code per block of 64, one FP32 scale per 256 block
        // codes, and the FP32 offset.
        expected += n.div_ceil(2) + blocks + 4 * blocks.div_ceil(256) + 4;
        bytes += p.frozen.as_ref().unwrap().bytes();
    });
    assert_eq!(bytes, expected);
    let per_weight = bytes as f64 / linear as f64;
    assert!((per_weight - (0.5 + 1.0 / 64.0 + 4.0 / (64.0 * 256.0))).abs() < 2e-4, "{per_weight} bytes per weight");
    // No base linear weight is a parameter any more.
    assert!(named_params(&q).iter().all(|p| !p.name.ends_with("c_attn.weight") && !p.name.ends_with("c_fc.weight")));
}

#[test]
fn lora_counts_and_scales_follow_the_formulas() {
    let device = Device::flex();
    let c = ModelConfig::nano(); // C = 64, 2 layers, MLP 256
    let model = Gpt::init(&c, 0, &device);
    let lora =
        |targets: &[&str], r: usize| Method::Lora(LoraConfig { r, target_modules: targets.iter().map(|s| s.to_string()).collect(), ..LoraConfig::default() });
    // c_attn: 64 -> 192, so r·(64 + 192) per layer.
    assert_eq!(lora(&["c_attn"], 8).trainable_params(&model), 2 * 8 * (64 + 192));
    // all-linear: c_attn (64+192) + attn.c_proj (64+64) + c_fc (64+256) + mlp.c_proj (256+64).
    assert_eq!(lora(&["all-linear"], 4).trainable_params(&model), 2 * 4 * (256 + 128 + 320 + 320));
    // A dotted target narrows the match.
    assert_eq!(lora(&["attn.c_proj"], 1).trainable_params(&model), 2 * (64 + 64));
    let cfg = LoraConfig { r: 16, lora_alpha: 32.0, ..LoraConfig::default() };
    assert_eq!(cfg.scale(), 2.0);
    assert_eq!(LoraConfig { use_rslora: true, ..cfg.clone() }.scale(), 8.0);
    let bad = Method::Lora(LoraConfig { r: 0, ..LoraConfig::default() });
    assert!(bad.apply(model.clone(), 0, &device).unwrap_err().to_string().contains("r: rank must be at least 1"));
    // An unknown target lists the model's projection names; a rank beyond a matrix's
    // smaller side is refused with that side named.
    let unknown = lora(&["q_proj"], 8).apply(model.clone(), 0, &device).unwrap_err().to_string();
    assert!(unknown.contains("target_modules") && unknown.contains("'q_proj'") && unknown.contains("h.0.attn.c_attn"), "{unknown}");
    let too_big = lora(&["c_attn"], 65).apply(model, 0, &device).unwrap_err().to_string();
    assert!(too_big.contains("rank 65") && too_big.contains("64×192") && too_big.contains("r ≤ 64"), "{too_big}");
}

/// The lora-rank report on a real full fine-tune of nano: at full rank the truncated model
/// is the fine-tuned model; at rank 1 only part of the update's energy is kept; the rank-r
/// LoRA and its merge agree within 1e-4; bad matrices and ranks are named.
#[test]
fn rank_report_measures_what_rank_r_keeps() {
    use tinytune::methods::rank::rank_report;
    let tok = TextTokenizer::char_level(CHARSET);
    let config = ModelConfig { vocab_size: tok.vocab_size(), ..ModelConfig::nano() };
    let ad = Device::flex().autodiff();
    let cfg = TrainConfig {
        data: DataSource::Task(Task::Sentiment),
        train_examples: 200,
        eval_examples: 40,
        steps: 8,
        batch_size: 8,
        seq_len: 48,
        lr: 3e-3,
        warmup_steps: 0,
        ..TrainConfig::default()
    };
    let base = Gpt::init(&config, 0, &ad);
    let mut trainer = Trainer::new(base.clone(), &tok, cfg.clone(), &ad).unwrap();
    for _ in 0..8 {
        trainer.step().unwrap();
    }
    let device = ad.clone().inner();
    let (base, tuned) = (base.valid(), trainer.model.valid());
    let eval = &trainer.eval;
    let full = rank_report(&base, &tuned, "h.1.attn.c_attn", 64, eval, 8, 48, 2, &device).unwrap();
    assert_eq!((full.d_in, full.d_out, full.dense_params, full.lora_params), (64, 192, 64 * 192, 64 * 256));
    assert!((full.energy_kept - 1.0).abs() < 1e-9 && full.relative_error < 1e-4, "{} {}", full.energy_kept, full.relative_error);
    assert!((full.loss_truncated - full.loss_full).abs() < 1e-4, "full rank: {} vs {}", full.loss_truncated, full.loss_full);
    assert!(full.loss_full < full.loss_base, "fine-tuning lowered the loss");
    assert!(full.delta_spectrum.windows(2).all(|w| w[0] >= w[1]) && full.delta_spectrum.len() == 64);
    let one = rank_report(&base, &tuned, "h.1.attn.c_attn", 1, eval, 8, 48, 2, &device).unwrap();
    assert!(one.energy_kept < 1.0 && one.energy_kept > 0.0 && one.merge_max_diff < 1e-4, "{one:?}");
    assert!(one.unmerge_max_diff < 1e-5, "{one:?}");
    assert_eq!(one.delta_spectrum, full.delta_spectrum);
    let e = rank_report(&base, &tuned, "h.9.attn.c_attn", 1, eval, 8, 48, 2, &device).unwrap_err().to_string();
    assert!(e.contains("matrix") && e.contains("h.0.attn.c_attn"), "{e}");
    let e = rank_report(&base, &tuned, "h.0.mlp.c_fc", 65, eval, 8, 48, 2, &device).unwrap_err().to_string();
    assert!(e.contains("rank") && e.contains("between 1 and 64"), "{e}");
}

/// Prompt tuning initialised from a text starts exactly at that text's token embeddings, so
/// each virtual token's nearest real token is the text's token itself (similarity 1).
#[test]
fn a_text_initialised_prompt_is_nearest_its_own_tokens() {
    use tinytune::methods::prompt::{nearest, token_similarity};
    let tok = TextTokenizer::char_level(CHARSET);
    let config = ModelConfig { vocab_size: tok.vocab_size(), ..ModelConfig::nano() };
    let device = Device::flex();
    let ids = tok.encode("happy").unwrap();
    let method = Method::Prompt(PromptConfig {
        num_virtual_tokens: 5,
        init: PromptInit::Text,
        init_text: "happy".into(),
        init_ids: ids.clone(),
        encoder_hidden_size: None,
    });
    let model = method.apply(Gpt::init(&config, 0, &device), 0, &device).unwrap();
    let sims = token_similarity(&model).unwrap().into_data().try_to_vec::<f32>().unwrap();
    let near = nearest(&sims, config.vocab_size, 2);
    assert_eq!(near.len(), 5);
    for (row, id) in near.iter().zip(&ids) {
        assert_eq!(row[0].0, *id);
        assert!((row[0].1 - 1.0).abs() < 1e-5 && row[1].1 < row[0].1);
    }
    assert!(token_similarity(&Gpt::init(&config, 0, &device)).is_none());
}
