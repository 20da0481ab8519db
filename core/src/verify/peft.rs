//! PEFT: adapter folders PEFT saved, loaded here; adapters tinytune exported, loaded in PEFT.

use burn::module::Module;
use burn::tensor::Device;

use super::families::{files, hf_cases, llama_family_error, model_files};
use super::{Check, Fixtures, Measured, Source, Target, Tolerance, all_logits, ensure, floats, ids, json, load, s, text, values, worst};
use crate::methods::peft;

const HF_REF: &str = "hf-reference.json";
const EXPORT_REF: &str = "peft-export/reference.json";

fn adapter_files(dir: &str) -> Vec<String> {
    vec![format!("{dir}/{}", peft::CONFIG), format!("{dir}/{}", peft::WEIGHTS)]
}

pub(super) fn checks<const MEASURE: bool>() -> Vec<Check> {
    let logit = Tolerance::abs(1e-4, "|Δ logit|");
    let mut all = Vec::new();
    for (name, about) in
        [("lora", "LoRA on c_attn"), ("lora-rslora", "rsLoRA on three module names"), ("dora", "DoRA"), ("ia3", "IA³"), ("prompt", "prompt tuning")]
    {
        let dir = format!("peft-{name}");
        let mut f = files(&[HF_REF], model_files("hf-gpt2"));
        f.extend(adapter_files(&dir));
        all.push(Check::new::<MEASURE, _>(
            format!("peft/{name}"),
            format!(
                "PEFT's {about} adapter folder on GPT-2: logits (and merge_and_unload's where PEFT merges); saved again with PEFT's tensor names and shapes"
            ),
            "peft",
            Source::json(HF_REF, "/versions"),
            f,
            logit,
            "tests/fixtures/make_hf_reference.py",
            move |fx, t| {
                let dir = dir.clone();
                Box::pin(async move { peft_folder(fx, &dir, t).await })
            },
        ));
    }
    for (case, about) in [
        ("lora-all-linear-bias-all", "LoRA on every linear layer with bias all"),
        ("rslora-bias", "rsLoRA with lora_only biases"),
        ("dora", "DoRA"),
        ("ia3", "IA³"),
        ("prompt", "prompt tuning"),
        ("pissa", "PiSSA, exported as a plain LoRA"),
    ] {
        let dir = format!("peft-export/{case}");
        let mut f = files(&[EXPORT_REF], model_files("hf-gpt2"));
        f.extend(adapter_files(&dir));
        all.push(Check::new::<MEASURE, _>(
            format!("peft/export-{case}"),
            format!("tinytune's export of a {about} run, loaded by PEFT: PEFT's logits; exporting again writes the same files"),
            "peft",
            Source::json(EXPORT_REF, "/versions"),
            f,
            logit,
            "tests/fixtures/make_peft_export_reference.py",
            move |fx, t| Box::pin(exported(fx, case, t)),
        ));
    }
    for (name, about) in [("lora", "LoRA on all seven projections"), ("ia3", "IA³ with its Llama defaults")] {
        let dir = format!("peft-llama-{name}");
        let mut f = files(&["llama-reference.json"], model_files("hf-llama"));
        f.extend(adapter_files(&dir));
        all.push(Check::new::<MEASURE, _>(
            format!("peft/llama-{name}"),
            format!("PEFT's {about} on a Llama: logits at the recorded positions"),
            "peft",
            Source::json("llama-reference.json", "/made_with"),
            f,
            logit,
            "tests/fixtures/make_llama_reference.py",
            move |fx, t| {
                let dir = dir.clone();
                Box::pin(async move {
                    let base = load(fx, "hf-llama", &t.host)?.model;
                    let (model, _, _) = read_adapter(fx, &dir, base.clone(), &t.host)?;
                    let (base, model) = (base.to_device(&t.device), model.to_device(&t.device));
                    let d = llama_family_error(fx, &model, &dir, &t.device).await?;
                    let base_error = llama_family_error(fx, &base, &dir, &t.device).await?;
                    ensure(base_error > 1e-3, || format!("{dir}: the adapter does not change the logits"))?;
                    Ok(Measured::new(d, format!("the base alone is off by {base_error:.2e}")))
                })
            },
        ));
    }
    all
}

/// The adapter folder `dir` loaded onto `base`: (model, method, weights bytes).
fn read_adapter(fx: &dyn Fixtures, dir: &str, base: crate::Gpt, device: &Device) -> Result<(crate::Gpt, crate::methods::Method, Vec<u8>), String> {
    let config = text(fx, &format!("{dir}/{}", peft::CONFIG))?;
    let weights = fx.read(&format!("{dir}/{}", peft::WEIGHTS))?;
    let (model, method) = peft::load(base, &config, &weights, dir, device).map_err(s)?;
    Ok((model, method, weights))
}

/// A tensor of a file: name, shape, values.
type NamedTensor = (String, Vec<usize>, Vec<f32>);

/// Sorted (name, shape) of a safetensors file's tensors.
fn shapes(bytes: &[u8]) -> Result<Vec<(String, Vec<usize>)>, String> {
    let mut v: Vec<_> = crate::checkpoint::from_safetensors(bytes, &"adapter".into()).map_err(s)?.into_iter().map(|(k, d)| (k, d.shape().to_vec())).collect();
    v.sort();
    Ok(v)
}

/// PEFT's folder `dir`: logits on the device; saving it again (which reads the weights
/// back) on the host.
async fn peft_folder(fx: &dyn Fixtures, dir: &str, t: &Target) -> Result<Measured, String> {
    let device = &t.device;
    // Adapters load (and merge) on the host, which reads weights back synchronously; the
    // model then moves to the device, where its logits are computed.
    let base = load(fx, "hf-gpt2", &t.host)?.model;
    let (host_model, method, weights) = read_adapter(fx, dir, base.clone(), &t.host)?;
    let model = host_model.clone().to_device(device);
    let mut d = 0.0f32;
    let mut merged_checked = false;
    for (prompt, ids, variants) in hf_cases(fx)? {
        let want = floats(&variants[dir]["logits"], HF_REF)?;
        d = d.max(worst(&all_logits(&model, &ids, device).await?, &want, &prompt)?);
        let base_logits = floats(&variants["base"]["logits"], HF_REF)?;
        ensure(worst(&base_logits, &want, &prompt)? > 1e-2, || format!("{dir}: the fixture's adapter changes nothing"))?;
        if let Some(merged) = variants[dir].get("merged_logits") {
            let m = crate::methods::merge(host_model.clone()).to_device(device);
            d = d.max(worst(&all_logits(&m, &ids, device).await?, &floats(merged, HF_REF)?, "merged")?);
            merged_checked = true;
        }
    }
    // Saved as PEFT saves it (on the host): the same tensor names and shapes, and the same
    // logits loaded back.
    let model = host_model;
    let (config2, weights2) = peft::save(&model, &method, None).map_err(s)?;
    ensure(shapes(&weights2)? == shapes(&weights)?, || format!("{dir}: saved tensor names or shapes differ from PEFT's"))?;
    let (back, method2) = peft::load(base, &config2, &weights2, "resaved", &t.host).map_err(s)?;
    ensure(method2 == method, || format!("{dir}: the config does not round-trip"))?;
    let probe = [5u32, 9, 13, 2];
    ensure(all_logits(&back, &probe, &t.host).await? == all_logits(&model, &probe, &t.host).await?, || format!("{dir}: save and load changed the logits"))?;
    Ok(Measured::new(d, if merged_checked { "merged logits too; round trip exact" } else { "round trip exact" }))
}

/// tinytune's export `case`: PEFT's logits on the device; exporting again on the host.
async fn exported(fx: &dyn Fixtures, case: &str, t: &Target) -> Result<Measured, String> {
    let device = &t.device;
    let reference = json(fx, EXPORT_REF)?;
    let want = &reference["cases"][case];
    let dir = format!("peft-export/{case}");
    let (host_model, method, weights) = read_adapter(fx, &dir, load(fx, "hf-gpt2", &t.host)?.model, &t.host)?;
    let model = host_model.clone().to_device(device);
    let ids = ids(&want["ids"], EXPORT_REF)?;
    let expected: Vec<f32> = want["peft_logits"]
        .as_array()
        .ok_or(format!("{EXPORT_REF}: {case}: no peft_logits"))?
        .iter()
        .map(|r| floats(r, EXPORT_REF))
        .collect::<Result<Vec<_>, _>>()?
        .concat();
    let got = all_logits(&model, &ids, device).await?;
    // A prompt-tuned model's output has its virtual tokens' rows in front.
    ensure(got.len() >= expected.len(), || format!("{case}: fewer logits than PEFT's"))?;
    let d = worst(&got[got.len() - expected.len()..], &expected, case)?;
    ensure(want["base_vs_run"].as_f64().unwrap_or(0.0) > 1e-2, || format!("{case}: the adapter does not change the base's logits"))?;
    // Exporting again (on the host) writes the committed files: the config and every tensor.
    let model = host_model;
    let (config2, weights2) = peft::save(&model, &method, None).map_err(s)?;
    let parse = |t: &str| serde_json::from_str::<serde_json::Value>(t).map_err(s);
    ensure(parse(&config2)? == parse(&text(fx, &format!("{dir}/{}", peft::CONFIG))?)?, || {
        format!("{case}: adapter_config.json differs from the committed export")
    })?;
    let all = |bytes: &[u8]| -> Result<Vec<NamedTensor>, String> {
        let mut v = crate::checkpoint::from_safetensors(bytes, &"adapter".into())
            .map_err(s)?
            .into_iter()
            .map(|(k, d)| Ok((k, d.shape().to_vec(), values(&d)?)))
            .collect::<Result<Vec<_>, String>>()?;
        v.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(v)
    };
    ensure(all(&weights2)? == all(&weights)?, || format!("{case}: adapter_model.safetensors differs from the committed export"))?;
    Ok(Measured::new(d, format!("the run itself against PEFT when exported: {:.1e}", want["run_vs_peft"].as_f64().unwrap_or(f64::NAN))))
}
