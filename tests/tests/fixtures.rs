//! Parity with the Python ecosystem on committed fixtures (each made by the script beside
//! it in tests/fixtures).

use std::path::PathBuf;

use tinytune::TextTokenizer;

fn fixture(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(path)
}

/// A tokenizer.json in GPT-2's format written by Python `tokenizers` loads here and gives
/// exactly the ids Python gave, including for text and bytes it never saw in training.
#[test]
fn gpt2_style_tokenizer_json_from_python_gives_the_same_ids() {
    let json = std::fs::read_to_string(fixture("gpt2-style-tokenizer/tokenizer.json")).unwrap();
    let tok = TextTokenizer::from_json(&json, "gpt2-style-tokenizer/tokenizer.json").unwrap();
    let expected: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("gpt2-style-tokenizer/expected.json")).unwrap()).unwrap();
    assert_eq!(tok.kind(), "bpe");
    assert_eq!(tok.vocab_size() as u64, expected["vocab_size"].as_u64().unwrap());
    assert_eq!(tok.eot(), Some(0), "<|endoftext|> is the first special token");
    let probes = expected["probes"].as_array().unwrap();
    assert_eq!(probes.len(), 4);
    for p in probes {
        let text = p["text"].as_str().unwrap();
        let want: Vec<u32> = p["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let ids = tok.encode(text).unwrap();
        assert_eq!(ids, want, "ids of {text:?}");
        assert_eq!(tok.decode(&ids), p["decoded"].as_str().unwrap());
    }
    // Saving it again keeps the same behaviour.
    let again = TextTokenizer::from_json(&tok.to_json(), "resaved").unwrap();
    assert_eq!(again.encode("the robot counted pebbles.").unwrap(), tok.encode("the robot counted pebbles.").unwrap());
}

/// bitsandbytes' block-wise 4-bit quantization (NF4 and FP4; blocks of 64 and 128; with and
/// without double quantization), made on the CPU by tests/fixtures/make_bnb_4bit.py:
/// tinytune produces the same codes, the same (double-quantized) scales, and dequantized
/// values equal bit for bit.
///
/// One input is not reproducible bit for bit by anyone: double quantization subtracts the
/// mean of the block maxima, which bitsandbytes takes with `torch.mean`, and PyTorch's f32
/// summation order depends on its kernels and the CPU's vector width. tinytune's correctly
/// rounded mean must be within one ulp of it; given bitsandbytes' offset, everything
/// downstream (8-bit codes, scales, dequantized values) must be identical.
#[test]
fn bitsandbytes_4bit_quantization_is_reproduced_bit_for_bit() {
    use tinytune::formats::blockwise::{FourBit, Scales, double_quantize, dynamic_map, quantize_4bit};
    let bytes = std::fs::read(fixture("bnb-4bit/cases.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let f32s = |name: &str| -> Vec<f32> { st.tensor(name).unwrap().data().chunks(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect() };
    let u8s = |name: &str| -> Vec<u8> { st.tensor(name).unwrap().data().to_vec() };
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let cases: Vec<String> = meta.metadata().as_ref().unwrap()["cases"].split(',').map(String::from).collect();
    assert_eq!(cases.len(), 8);
    for case in &cases {
        let kind = if case.starts_with("nf4") { FourBit::Nf4 } else { FourBit::Fp4 };
        let blocksize = if case.contains("-b64-") { 64 } else { 128 };
        let double = case.ends_with("-dq");
        let input = f32s(&format!("{case}.input"));
        let q = quantize_4bit(&input, kind, blocksize, double);
        let want_packed = u8s(&format!("{case}.packed"));
        // FP4 has two zeros (+0 is code 0, −0 code 8); both dequantize to a zero.
        let same_code = |a: u8, b: u8| a == b || (kind == FourBit::Fp4 && (a & 7) == 0 && (b & 7) == 0);
        for (i, (a, b)) in q.packed.iter().zip(&want_packed).enumerate() {
            assert!(same_code(a >> 4, b >> 4) && same_code(a & 15, b & 15), "{case}: byte {i}: {a:#04x} vs bitsandbytes {b:#04x}");
        }
        assert_eq!(q.packed.len(), want_packed.len(), "{case}");
        match &q.scales {
            Scales::Plain(absmax) => assert_eq!(absmax, &f32s(&format!("{case}.absmax")), "{case}: absmax"),
            Scales::Double { offset, .. } => {
                assert_eq!(dynamic_map().to_vec(), f32s(&format!("{case}.code8")), "{case}: the 8-bit dynamic map");
                let theirs = f32s(&format!("{case}.offset"))[0];
                assert!(offset.to_bits().abs_diff(theirs.to_bits()) <= 1, "{case}: offset {offset:e} vs {theirs:e}");
            }
        }
        let mut q = q;
        if double {
            let plain = quantize_4bit(&input, kind, blocksize, false);
            let Scales::Plain(absmax) = &plain.scales else { unreachable!() };
            q.scales = double_quantize(absmax, f32s(&format!("{case}.offset"))[0]);
            let Scales::Double { codes, scales, .. } = &q.scales else { unreachable!() };
            assert_eq!(scales, &f32s(&format!("{case}.absmax_scales")), "{case}: second-level scales");
            assert_eq!(codes, &u8s(&format!("{case}.absmax_codes")), "{case}: 8-bit absmax codes");
        }
        let got = q.dequantize();
        let want = f32s(&format!("{case}.dequantized"));
        assert_eq!(got.len(), want.len());
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!(a == b, "{case}: element {i}: {a:e} vs bitsandbytes {b:e}");
        }
    }
}

/// tinytune's optimizers against PyTorch's and bitsandbytes' on the CPU, step by step
/// (tests/fixtures/make_optim_reference.py): five steps on a 48×100 matrix (decayed) and a
/// 100-vector (not decayed) with recorded gradients. Parameters must agree to a relative
/// error of 1e-5 of the largest parameter (f32 rounding in a different order, compounded
/// over five steps).
///
/// For 8-bit AdamW: bitsandbytes' maps are ours bit for bit; its stored codes and block
/// maxima dequantize here to exactly its moments; after each step our block maxima are
/// identical to its and every code is the nearest code of the map, exactly as bitsandbytes'
/// pure-PyTorch quantizer (an argmin over distances) picks it. Its C++ CPU quantizer, which
/// the 8-bit optimizer calls, finds codes with a table-driven binary search that misses the
/// nearest one among the maps' tightly packed small codes (5–12 of 4,800 first-moment codes
/// per step here, 7–163 second-moment codes; e.g. a normalised 5.33e-7 becomes 2.125e-5
/// although 5.5e-7 is in the map). Each step continues from bitsandbytes' own state, so
/// every step is compared on its own.
#[test]
fn optimizers_follow_pytorch_and_bitsandbytes_step_by_step() {
    use burn::module::{Module, Param};
    use burn::tensor::{Device, Tensor, TensorData};
    use tinytune::formats::blockwise::{dynamic_map, dynamic_map_unsigned};
    use tinytune::optim::{NamedGrads, OptimConfig, OptimKind, Optimizer, Quant8, Slot};

    #[derive(Module, Debug)]
    struct Two {
        w: Param<Tensor<2>>,
        b: Param<Tensor<1>>,
    }

    let bytes = std::fs::read(fixture("optim/trajectories.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let f32s = |name: &str| -> Vec<f32> {
        st.tensor(name).unwrap_or_else(|_| panic!("{name}")).data().chunks(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
    };
    let u8s = |name: &str| -> Vec<u8> { st.tensor(name).unwrap().data().to_vec() };
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let cases: serde_json::Value = serde_json::from_str(&meta.metadata().as_ref().unwrap()["cases"]).unwrap();
    let steps: usize = meta.metadata().as_ref().unwrap()["steps"].parse().unwrap();

    // The maps bitsandbytes stored in the optimizer's state are ours, bit for bit.
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&f32s("adamw8bit.1.w.qmap1")), bits(&dynamic_map()), "signed dynamic map");
    assert_eq!(bits(&f32s("adamw8bit.1.w.qmap2")), bits(&dynamic_map_unsigned()), "unsigned dynamic map");

    let device = Device::flex().autodiff();
    let tensor2 = |v: Vec<f32>| Tensor::<2>::from_data(TensorData::new(v, [48, 100]), &device);
    let tensor1 = |v: Vec<f32>| Tensor::<1>::from_data(TensorData::new(v, [100]), &device);
    for (case, hp) in cases.as_object().unwrap() {
        let kind: OptimKind = case.replace("sgd_momentum", "sgd").parse().unwrap();
        let config = OptimConfig {
            weight_decay: 0.01,
            clip_grad_norm: None,
            momentum: hp.get("momentum").and_then(|m| m.as_f64()).unwrap_or(0.0),
            ..OptimConfig::for_kind(kind)
        };
        let lr = hp["lr"].as_f64().unwrap();
        let mut optim = Optimizer::new(config);
        let mut model = Two { w: Param::from_tensor(tensor2(f32s("init.w"))), b: Param::from_tensor(tensor1(f32s("init.b"))) };
        for k in 1..=steps {
            let grads = NamedGrads(vec![
                ("w".to_string(), Tensor::<1>::from_data(TensorData::new(f32s(&format!("grad.{k}.w")), [4800]), &device)),
                ("b".to_string(), Tensor::<1>::from_data(TensorData::new(f32s(&format!("grad.{k}.b")), [100]), &device)),
            ]);
            model = optim.step(lr, model, grads);
            for (name, got) in [("w", model.w.val().into_data()), ("b", model.b.val().into_data())] {
                let got: Vec<f32> = got.convert::<f32>().try_to_vec().unwrap();
                let want = f32s(&format!("{case}.{k}.{name}"));
                let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
                let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                assert!(worst <= 1e-5 * scale, "{case} step {k} {name}: max |Δ| {worst:e} (largest |p| {scale})");
            }
            if kind == OptimKind::AdamW8bit {
                for (slot, key, absmax) in [("exp_avg", "state1", "absmax1"), ("exp_avg_sq", "state2", "absmax2")] {
                    let Some(Slot::Quant(q)) = optim.state.get(&format!("w.{slot}")) else { panic!("w.{slot} is not 8-bit") };
                    let want_codes = u8s(&format!("{case}.{k}.w.{key}"));
                    let want_absmax = f32s(&format!("{case}.{k}.w.{absmax}"));
                    // Dequantizing bitsandbytes' own codes and maxima gives its moments bit for bit.
                    let theirs = Quant8 { codes: want_codes.clone(), absmax: want_absmax.clone(), signed: slot == "exp_avg" };
                    assert_eq!(bits(&theirs.dequantize()), bits(&f32s(&format!("{case}.{k}.w.{slot}"))), "{case} step {k} {slot} dequantized");
                    // Requantizing: the block maxima are identical, and every code is the nearest
                    // one, exactly as bitsandbytes' PyTorch fallback picks it.
                    assert_eq!(bits(&q.absmax), bits(&want_absmax), "{case} step {k} {slot} block maxima");
                    let nearest = u8s(&format!("{case}.{k}.w.{key}_nearest"));
                    let wrong = q.codes.iter().zip(&nearest).filter(|(a, b)| a != b).count();
                    assert_eq!(wrong, 0, "{case} step {k} {slot}: {wrong} codes are not the nearest");
                    let differ = q.codes.iter().zip(&want_codes).filter(|(a, b)| a != b).count();
                    assert!(
                        differ * 20 <= want_codes.len(),
                        "{case} step {k} {slot}: {differ} of {} codes differ from bitsandbytes' C++ path",
                        want_codes.len()
                    );
                }
                // Continue from bitsandbytes' exact state, so each step is compared on its own.
                for (slot, key, absmax) in [("exp_avg", "state1", "absmax1"), ("exp_avg_sq", "state2", "absmax2")] {
                    let q = Quant8 { codes: u8s(&format!("{case}.{k}.w.{key}")), absmax: f32s(&format!("{case}.{k}.w.{absmax}")), signed: slot == "exp_avg" };
                    optim.state.insert(format!("w.{slot}"), Slot::Quant(q));
                }
                // Under 4,096 elements the moments stay FP32, as in bitsandbytes.
                assert!(matches!(optim.state.get("b.exp_avg"), Some(Slot::Dense(_))));
            }
        }
    }
}

/// The tiny GPT-2 that transformers saved (tests/fixtures/hf-gpt2, made with every
/// parameter perturbed by tests/fixtures/make_hf_reference.py) and the PEFT adapters saved
/// on it, loaded here.
struct HfReference {
    cases: Vec<(String, Vec<u32>, serde_json::Value)>,
}

fn hf_reference() -> HfReference {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("hf-reference.json")).unwrap()).unwrap();
    let cases = v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["prompt"].as_str().unwrap().to_string(),
                c["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect(),
                c["variants"].clone(),
            )
        })
        .collect();
    HfReference { cases }
}

fn hf_base(device: &burn::tensor::Device) -> tinytune::checkpoint::LoadedModel {
    let dir = fixture("hf-gpt2");
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    tinytune::checkpoint::load_parts("hf-gpt2", &read("config.json"), &read("tokenizer.json"), &std::fs::read(dir.join("model.safetensors")).unwrap(), device)
        .unwrap()
}

fn all_logits(model: &tinytune::Gpt, ids: &[u32], device: &burn::tensor::Device) -> Vec<f32> {
    use burn::tensor::{Int, Tensor, TensorData};
    let x = Tensor::<2, Int>::from_data(TensorData::new(ids.iter().map(|&i| i as i64).collect::<Vec<_>>(), [1, ids.len()]), device);
    model.forward(x).into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn worst(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn read_adapter(name: &str) -> (String, Vec<u8>) {
    let dir = fixture(name);
    (std::fs::read_to_string(dir.join("adapter_config.json")).unwrap(), std::fs::read(dir.join("adapter_model.safetensors")).unwrap())
}

/// transformers' GPT-2 (HF key names, `transformer.` prefix, tied head, Conv1D layout, its
/// own tokenizer.json): same token ids and logits at every position within 1e-4.
#[test]
fn a_transformers_gpt2_checkpoint_gives_transformers_logits() {
    let device = burn::tensor::Device::flex();
    let loaded = hf_base(&device);
    let reference = hf_reference();
    assert_eq!(reference.cases.len(), 2);
    for (prompt, ids, variants) in &reference.cases {
        assert_eq!(&loaded.tokenizer.encode(prompt).unwrap(), ids, "token ids of {prompt:?}");
        let got = all_logits(&loaded.model, ids, &device);
        let d = worst(&got, &floats(&variants["base"]["logits"]));
        eprintln!("base on {prompt:?}: largest logit difference to transformers {d:.2e}");
        assert!(d < 1e-4, "{prompt:?}: logits differ from transformers' by {d}");
    }
}

/// PEFT's LoRA (plain, rsLoRA on three module names, DoRA), IA³ and prompt-tuning adapter
/// folders load onto the transformers base and reproduce PEFT's logits within 1e-4; PEFT's
/// merged LoRA logits are reproduced by tinytune's merge; saving an adapter writes PEFT's
/// tensor names and shapes exactly, and it loads back to the same logits.
#[test]
fn peft_adapter_folders_reproduce_peft_logits_and_round_trip() {
    use tinytune::methods::peft;
    let device = burn::tensor::Device::flex();
    let reference = hf_reference();
    for name in ["peft-lora", "peft-lora-rslora", "peft-dora", "peft-ia3", "peft-prompt"] {
        let (config, weights) = read_adapter(name);
        let (model, method) = peft::load(hf_base(&device).model, &config, &weights, name, &device).unwrap();
        for (prompt, ids, variants) in &reference.cases {
            let want = floats(&variants[name]["logits"]);
            let got = all_logits(&model, ids, &device);
            let d = worst(&got, &want);
            eprintln!("{name} on {prompt:?}: largest logit difference to PEFT {d:.2e}");
            assert!(d < 1e-4, "{name} on {prompt:?}: logits differ from PEFT's by {d}");
            // The adapter matters: the base model's logits are far from these.
            assert!(worst(&floats(&variants["base"]["logits"]), &want) > 1e-2, "{name}: the fixture's adapter changes nothing");
            if let Some(merged) = variants[name].get("merged_logits") {
                let m = tinytune::methods::merge(model.clone());
                let d = worst(&all_logits(&m, ids, &device), &floats(merged));
                assert!(d < 1e-4, "{name}: merged logits differ from PEFT's merge_and_unload by {d}");
            }
        }
        // Save as PEFT does: the same tensor names and shapes as PEFT's own file, and the
        // same logits after loading it back.
        let (config2, weights2) = peft::save(&model, &method, None).unwrap();
        let shapes = |bytes: &[u8]| -> Vec<(String, Vec<usize>)> {
            let mut v: Vec<_> =
                tinytune::checkpoint::from_safetensors(bytes, &"test".into()).unwrap().into_iter().map(|(k, d)| (k, d.shape().to_vec())).collect();
            v.sort();
            v
        };
        assert_eq!(shapes(&weights2), shapes(&weights), "{name}: saved tensor names or shapes differ from PEFT's");
        let (back, method2) = peft::load(hf_base(&device).model, &config2, &weights2, "resaved", &device).unwrap();
        assert_eq!(method2, method, "{name}: the config round-trips");
        let ids = &reference.cases[0].1;
        assert_eq!(all_logits(&back, ids, &device), all_logits(&model, ids, &device), "{name}: save/load changed the logits");
    }
}

/// The reverse direction: adapters that tinytune trained and exported
/// (`tests/fixtures/make_peft_export_reference.py` ran `finetune` and `export-adapter` for
/// LoRA on all linear layers with every bias, rsLoRA with `lora_only` biases, DoRA, IA³,
/// prompt tuning and a PiSSA run converted to a plain LoRA, and checked that PEFT 0.21's
/// logits equal the run's own to 1e-4) load in tinytune to PEFT's logits within 1e-4, and
/// exporting them again writes the committed files exactly: the config and every tensor,
/// so what PEFT was shown is what tinytune writes today.
#[test]
fn tinytunes_exported_adapters_load_in_peft_with_the_runs_logits() {
    use tinytune::methods::peft;
    let device = burn::tensor::Device::flex();
    let reference: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("peft-export/reference.json")).unwrap()).unwrap();
    let cases = reference["cases"].as_object().unwrap();
    assert_eq!(cases.len(), 6, "one case per exportable method");
    for (case, want) in cases {
        let name = format!("peft-export/{case}");
        let (config, weights) = read_adapter(&name);
        let (model, method) = peft::load(hf_base(&device).model, &config, &weights, &name, &device).unwrap();
        let ids: Vec<u32> = want["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        let expected: Vec<f32> = want["peft_logits"].as_array().unwrap().iter().flat_map(floats).collect();
        let got = all_logits(&model, &ids, &device);
        // A prompt-tuned model's output has its virtual tokens' rows in front.
        let got = &got[got.len() - expected.len()..];
        let d = worst(got, &expected);
        eprintln!("{case}: tinytune's export, in PEFT and in tinytune: largest logit difference {d:.2e} (the run against PEFT: {})", want["run_vs_peft"]);
        assert!(d < 1e-4, "{case}: logits differ from PEFT's by {d}");
        assert!(want["base_vs_run"].as_f64().unwrap() > 1e-2, "{case}: the adapter changes the base's logits");
        let (config2, weights2) = peft::save(&model, &method, None).unwrap();
        let json = |t: &str| serde_json::from_str::<serde_json::Value>(t).unwrap();
        assert_eq!(json(&config2), json(&config), "{case}: adapter_config.json");
        let tensors = |bytes: &[u8]| {
            let mut v: Vec<_> = tinytune::checkpoint::from_safetensors(bytes, &"test".into())
                .unwrap()
                .into_iter()
                .map(|(k, d)| (k, d.shape().to_vec(), d.convert::<f32>().try_to_vec::<f32>().unwrap()))
                .collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        assert_eq!(tensors(&weights2), tensors(&weights), "{case}: adapter_model.safetensors");
    }
}

/// A reward model's LoRA adapter is PEFT's sequence-classification form: `task_type`
/// `SEQ_CLS`, `modules_to_save` `["score"]`, and the trained head saved whole as
/// `base_model.model.score.weight`; loaded onto a fresh reward model of the same base, it
/// gives the trained model's rewards exactly (the head is the adapter's, not the base's).
/// (Checked by hand with PEFT 0.21: `PeftModel.from_pretrained` on
/// `AutoModelForSequenceClassification(hf-gpt2, num_labels=1, pad_token_id=0)` reproduced a
/// trained run's accuracy, margin and mean reward to 1e-6.)
#[test]
fn a_reward_models_lora_adapter_saves_as_peft_sequence_classification() {
    use burn::tensor::{Int, Tensor, TensorData};
    use tinytune::methods::{LoraConfig, Method, peft};
    let device = burn::tensor::Device::flex();
    let method = Method::Lora(LoraConfig { r: 4, lora_alpha: 8.0, target_modules: vec!["all-linear".into()], ..LoraConfig::default() });
    let trained = method.apply(hf_base(&device).model.into_reward_model(0, 3), 0, &device).unwrap();
    let (config, weights) = peft::save(&trained, &method, None).unwrap();
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!((config["task_type"].as_str(), config["modules_to_save"].clone()), (Some("SEQ_CLS"), serde_json::json!(["score"])));
    let tensors = tinytune::checkpoint::from_safetensors(&weights, &"test".into()).unwrap();
    assert_eq!(tensors.get("base_model.model.score.weight").map(|d| d.shape().to_vec()), Some(vec![1, 32]));
    let fresh = hf_base(&device).model.into_reward_model(0, 5);
    let (back, _) = peft::load(fresh.clone(), &config.to_string(), &weights, "saved", &device).unwrap();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(vec![5i64, 9, 13, 2, 0], [1, 5]), &device);
    let reward = |m: &tinytune::Gpt| m.rewards(ids.clone(), &[3]).into_data().convert::<f32>().try_to_vec::<f32>().unwrap()[0];
    assert_eq!(reward(&back), reward(&trained), "the adapter carries the head");
    assert_ne!(reward(&fresh), reward(&trained), "the fresh base's head is another");
}

/// Bad adapter folders are refused with the file, the tensor or field, and the problem.
#[test]
fn bad_peft_adapters_name_the_file_and_tensor() {
    use tinytune::checkpoint::{from_safetensors, to_safetensors};
    use tinytune::methods::peft;
    let device = burn::tensor::Device::flex();
    let (config, weights) = read_adapter("peft-lora");
    let tensors = from_safetensors(&weights, &"x".into()).unwrap();
    let err = |config: &str, tensors: Vec<(String, burn::tensor::TensorData)>| {
        peft::load(hf_base(&device).model, config, &to_safetensors(tensors), "dir", &device).unwrap_err().to_string()
    };
    let mut sorted: Vec<_> = tensors.into_iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    // A missing tensor.
    let e = err(&config, sorted[1..].to_vec());
    assert!(e.contains("dir/adapter_model.safetensors") && e.contains(&sorted[0].0) && e.contains("missing"), "{e}");
    // An extra tensor the config does not make.
    let mut extra = sorted.clone();
    extra.push(("base_model.model.transformer.h.0.mlp.c_fc.lora_A.weight".into(), sorted[0].1.clone()));
    let e = err(&config, extra);
    assert!(e.contains("h.0.mlp.c_fc.lora_A.weight") && e.contains("no place"), "{e}");
    // A tensor of the wrong shape (rank 4 in the config, a rank-3 matrix in the file).
    let mut wrong = sorted.clone();
    wrong[0].1 = burn::tensor::TensorData::new(vec![0.0f32; 3 * 32], [3, 32]);
    let e = err(&config, wrong);
    assert!(e.contains(&sorted[0].0) && e.contains("[3, 32]") && e.contains("[4, 32]"), "{e}");
    // Configs: an unsupported type, a regex target, rank 0, a module the model lacks.
    let e = err(&config.replace("\"LORA\"", "\"LOHA\""), sorted.clone());
    assert!(e.contains("dir/adapter_config.json") && e.contains("peft_type") && e.contains("LOHA"), "{e}");
    let e = err(&config.replace("[\n    \"c_attn\"\n  ]", "\".*c_attn\""), sorted.clone());
    assert!(e.contains("target_modules") && e.contains("pattern"), "{e}");
    let e = err(&config.replace("\"r\": 4", "\"r\": 0"), sorted.clone());
    assert!(e.contains("r: rank must be at least 1"), "{e}");
    let e = err(&config.replace("[\n    \"c_attn\"\n  ]", "[\"q_proj\"]"), sorted);
    assert!(e.contains("target_modules") && e.contains("q_proj") && e.contains("h.0.attn.c_attn"), "{e}");
}

/// Every merge method tinytune reads from mergekit's YAML merges the committed folders as
/// mergekit 0.1.5 did (`tests/fixtures/make_merge_reference.py`): the same configs, three
/// tensors compared, within 1e-5 (SLERP's angle is computed in f64 here, in float32 there),
/// layer stacking (passthrough) included.
#[test]
fn merges_equal_mergekits_on_the_same_yaml() {
    use burn::tensor::Device;
    use tinytune::merging::{MergeConfig, merge_models};
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let device = Device::flex();
    let load = |dir: &str| {
        let d = root.join(dir);
        let read = |f: &str| std::fs::read_to_string(d.join(f)).unwrap();
        tinytune::checkpoint::load_parts(dir, &read("config.json"), &read("tokenizer.json"), &std::fs::read(d.join("model.safetensors")).unwrap(), &device)
            .unwrap()
            .model
    };
    for name in ["linear", "slerp", "task_arithmetic", "ties", "breadcrumbs", "breadcrumbs_ties", "model_stock", "passthrough"] {
        let yaml = std::fs::read_to_string(fixture(&format!("merge/{name}.yml"))).unwrap();
        let config = MergeConfig::from_yaml(&yaml, format!("{name}.yml")).unwrap();
        let models: Vec<(String, tinytune::Gpt)> = config.model_names().into_iter().map(|m| (m.clone(), load(&m))).collect();
        let merged = merge_models(&config, &models, 0, &device).unwrap();
        // Passthrough stacks a's two layers and b's second: three.
        assert_eq!(merged.config().n_layer, if name == "passthrough" { 3 } else { 2 }, "{name}");
        let ours = tinytune::checkpoint::from_safetensors(&tinytune::checkpoint::save_model(&merged), &"merged".into()).unwrap();
        let want =
            tinytune::checkpoint::from_safetensors(&std::fs::read(fixture(&format!("merge/out-{name}.safetensors"))).unwrap(), &"mergekit".into()).unwrap();
        assert_eq!(want.len(), 3);
        // The merge moved the weights: the check would see a method doing nothing.
        let base =
            tinytune::checkpoint::from_safetensors(&std::fs::read(root.join("tests/fixtures/hf-llama/model.safetensors")).unwrap(), &"base".into()).unwrap();
        for (tensor, expected) in &want {
            let values = |d: &burn::tensor::TensorData| d.clone().convert::<f32>().try_into_vec::<f32>().unwrap();
            let (a, b) = (values(&ours[tensor]), values(expected));
            let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
            assert!(worst < 1e-5, "{name}: {tensor} differs from mergekit's by {worst}");
            // (A stacked layer past the base's depth has no base to compare with.)
            if let Some(before) = base.get(tensor) {
                let moved = values(before).iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
                assert!(moved > 1e-3, "{name}: {tensor} equals the base");
            }
        }
    }
}

/// LoRA arithmetic equals PEFT 0.21.2's `add_weighted_adapter` on the committed adapters
/// (`tests/fixtures/make_lora_arith_reference.py`: weights 0.7 and 0.4, density 0.5, SVD rank
/// 3): every deterministic combination type's update `B·A` per module within 1e-5 of the
/// largest entry, and for the types PEFT builds without an SVD, the factors themselves
/// within 1e-6 (an SVD's factors are only fixed up to sign).
#[test]
fn lora_arithmetic_equals_peft_add_weighted_adapter() {
    use tinytune::checkpoint::from_safetensors;
    use tinytune::merging::adapters::{Combine, LoraAdapter, Majority, add_weighted_adapter};
    let dir = fixture("lora-arith");
    let versions: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("versions.json")).unwrap()).unwrap();
    let read = |name: &str| {
        let d = dir.join(name);
        LoraAdapter::read(&std::fs::read_to_string(d.join("adapter_config.json")).unwrap(), &std::fs::read(d.join("adapter_model.safetensors")).unwrap(), name)
            .unwrap()
    };
    let values = |t: &burn::tensor::TensorData| t.clone().convert::<f32>().try_into_vec::<f32>().unwrap();
    let sources = versions["sources"].as_object().unwrap();
    assert_eq!(sources.len(), 7, "{sources:?}");
    for (combination, names) in sources {
        let adapters: Vec<LoraAdapter> = names.as_array().unwrap().iter().map(|n| read(n.as_str().unwrap())).collect();
        let opts = Combine {
            combination: combination.clone(),
            weights: versions["weights"].as_array().unwrap().iter().map(|w| w.as_f64().unwrap()).collect(),
            density: versions["density"].as_f64(),
            majority: Majority::Total,
            svd_rank: versions["svd_rank"].as_u64().map(|r| r as usize),
            svd_clamp: None,
            seed: 0,
        };
        let (config, weights) = add_weighted_adapter(&adapters, &opts).unwrap();
        let ours = LoraAdapter::read(&config, &weights, combination).unwrap();
        let peft = read(&format!("out-{combination}"));
        assert_eq!((ours.r, ours.scaling), (peft.r, peft.scaling), "{combination}: rank and scaling");
        let want_config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join(format!("out-{combination}/adapter_config.json"))).unwrap()).unwrap();
        let got_config: serde_json::Value = serde_json::from_str(&config).unwrap();
        for key in ["r", "lora_alpha", "target_modules", "fan_in_fan_out", "use_rslora"] {
            assert_eq!(got_config[key], want_config[key], "{combination}: {key}");
        }
        let deltas = from_safetensors(&std::fs::read(dir.join(format!("deltas-{combination}.safetensors"))).unwrap(), &"deltas".into()).unwrap();
        assert_eq!(ours.modules().count(), deltas.len(), "{combination}");
        for module in ours.modules() {
            let want = values(&deltas[module.strip_prefix("base_model.model.").unwrap()]);
            let got = ours.delta(module).unwrap();
            let scale = want.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            let worst = got.iter().zip(&want).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(worst <= 1e-5 * scale, "{combination} {module}: update off by {worst} (largest entry {scale})");
        }
        if !combination.ends_with("svd") {
            let theirs = from_safetensors(&std::fs::read(dir.join(format!("out-{combination}/adapter_model.safetensors"))).unwrap(), &"peft".into()).unwrap();
            let mine = from_safetensors(&weights, &"ours".into()).unwrap();
            assert_eq!(mine.len(), theirs.len(), "{combination}");
            for (name, t) in &theirs {
                let worst = values(t).iter().zip(values(&mine[name])).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
                assert!(worst <= 1e-6, "{combination} {name}: factor off by {worst}");
            }
        }
    }
}

/// Distillation's divergences against TRL's `GKDTrainer.generalized_jsd_loss` on random
/// logits with masked positions (tests/fixtures/make_distill_reference.py): forward KL
/// (β 0), reverse KL (β 1) and the generalised JSD (β 0.5, 0.3), at temperatures 1 and 2.
/// tinytune's loss with α = 1 is T² times TRL's (Hinton's scaling, which GKD leaves out);
/// with α < 1 it mixes in the next-token loss. Host closed form and device computation both
/// within 1e-5 of TRL.
#[test]
fn distillation_divergences_equal_trls_gkd_loss() {
    use tinytune::train::distill::{Divergence, distill_loss, divergence_f64, logits_tensor};
    let f: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("distill/gkd.json")).unwrap()).unwrap();
    let shape: Vec<usize> = f["shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    let (b, t, v) = (shape[0], shape[1], shape[2]);
    let (student, teacher, counted) = (floats(&f["student"]), floats(&f["teacher"]), floats(&f["counted"]));
    let device = burn::tensor::Device::flex();
    // Targets for the hard loss: any ids; its value is checked against the host's.
    let targets: Vec<i64> = (0..b * t).map(|i| (i * 7 % v) as i64).collect();
    let target_t = || burn::tensor::Tensor::<2, burn::tensor::Int>::from_data(burn::tensor::TensorData::new(targets.clone(), [b, t]), &device);
    let weights = || burn::tensor::Tensor::<2>::from_data(burn::tensor::TensorData::new(counted.clone(), [b, t]), &device);
    let n: f32 = counted.iter().sum();
    let row = |x: &[f32], i: usize| x[i * v..(i + 1) * v].iter().map(|&a| a as f64).collect::<Vec<f64>>();
    // The next-token loss on the host: mean over counted positions of −log softmax(target).
    let hard: f64 = (0..b * t)
        .filter(|&i| counted[i] > 0.0)
        .map(|i| {
            let s = row(&student, i);
            let z = s.iter().map(|x| x.exp()).sum::<f64>().ln();
            z - s[targets[i] as usize]
        })
        .sum::<f64>()
        / n as f64;
    let cases = f["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 8);
    for case in cases {
        let (beta, temperature, want) = (case["beta"].as_f64().unwrap(), case["temperature"].as_f64().unwrap(), case["loss"].as_f64().unwrap());
        let divergence = match beta {
            0.0 => Divergence::ForwardKl,
            1.0 => Divergence::ReverseKl,
            _ => Divergence::Jsd,
        };
        let host: f64 =
            (0..b * t).filter(|&i| counted[i] > 0.0).map(|i| divergence_f64(&row(&student, i), &row(&teacher, i), divergence, beta, temperature)).sum::<f64>()
                / n as f64;
        assert!((host - want).abs() < 1e-5, "{divergence:?} β {beta} T {temperature}: host {host} vs TRL {want}");
        for alpha in [1.0, 0.25] {
            let s = logits_tensor(student.clone(), [b, t, v], &device);
            let q = logits_tensor(teacher.clone(), [b, t, v], &device);
            let (loss, soft, _) = distill_loss(s, q, target_t(), weights(), n, (divergence, beta, temperature, alpha));
            let read = |x: burn::tensor::Tensor<1>| x.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()[0] as f64;
            let (loss, soft) = (read(loss), read(soft));
            assert!((soft - want).abs() < 1e-5, "{divergence:?} β {beta} T {temperature}: device {soft} vs TRL {want}");
            let expected = alpha * temperature * temperature * want + (1.0 - alpha) * hard;
            assert!((loss - expected).abs() < 1e-5 * expected.abs().max(1.0), "α {alpha} T {temperature}: loss {loss} vs {expected}");
        }
    }
}
