//! Merging: mergekit's methods on the same YAML, PEFT's add_weighted_adapter.

use burn::tensor::Device;

use super::families::{files, model_files};
use super::{Check, Fixtures, Measured, Source, Tolerance, ensure, json, load, s, tensors, text, values};
use crate::merging::adapters::{Combine, LoraAdapter, Majority, add_weighted_adapter};

const ARITH: &str = "lora-arith/versions.json";

pub(super) fn checks<const MEASURE: bool>() -> Vec<Check> {
    let mut all = Vec::new();
    for method in ["linear", "slerp", "task_arithmetic", "ties", "breadcrumbs", "breadcrumbs_ties", "model_stock", "passthrough"] {
        let out = format!("merge/out-{method}.safetensors");
        let mut f = files(&[], vec![format!("merge/{method}.yml"), out.clone()]);
        for dir in ["merge/a", "merge/b", "hf-llama"] {
            f.extend(model_files(dir));
        }
        all.push(
            Check::new::<MEASURE, _>(
                format!("mergekit/{method}"),
                format!("mergekit's {method} on the same YAML: three merged tensors"),
                "mergekit",
                Source::metadata(out.clone()),
                f,
                Tolerance::abs(1e-5, "|Δ weight|"),
                "tests/fixtures/make_merge_reference.py",
                move |fx, t| Box::pin(async move { merge(fx, method, &t.host) }),
            )
            .on_host(),
        );
    }
    for (combination, sources) in
        [("linear", "ac"), ("cat", "ab"), ("svd", "ab"), ("ties", "ac"), ("ties_svd", "ab"), ("magnitude_prune", "ac"), ("magnitude_prune_svd", "ab")]
    {
        let mut f = files(&[ARITH], vec![format!("lora-arith/deltas-{combination}.safetensors")]);
        for dir in sources.chars().map(|c| c.to_string()).chain([format!("out-{combination}")]) {
            f.push(format!("lora-arith/{dir}/adapter_config.json"));
            f.push(format!("lora-arith/{dir}/adapter_model.safetensors"));
        }
        let factors = if combination.ends_with("svd") { "" } else { " and the factors (≤ 1e-6)" };
        all.push(
            Check::new::<MEASURE, _>(
                format!("peft/combine-{combination}"),
                format!("add_weighted_adapter({combination}) of two LoRA adapters: each module's update B·A{factors}"),
                "peft",
                Source::json(ARITH, ""),
                f,
                Tolerance::abs(1e-5, "|Δ update| / max |update|"),
                "tests/fixtures/make_lora_arith_reference.py",
                move |fx, _| Box::pin(async move { combine(fx, combination) }),
            )
            .on_host(),
        );
    }
    all
}

/// mergekit's `method`, on the host (merging reads the weights back to save them).
fn merge(fx: &dyn Fixtures, method: &str, device: &Device) -> Result<Measured, String> {
    use crate::merging::{MergeConfig, merge_models};
    let config = MergeConfig::from_yaml(&text(fx, &format!("merge/{method}.yml"))?, format!("{method}.yml")).map_err(s)?;
    let mut models = Vec::new();
    for name in config.model_names() {
        // The YAML names folders from the repository root.
        let dir = name.strip_prefix("tests/fixtures/").ok_or(format!("merge/{method}.yml: {name} is not among the fixtures"))?;
        models.push((name.clone(), load(fx, dir, device)?.model));
    }
    let merged = merge_models(&config, &models, 0, device).map_err(s)?;
    // Passthrough stacks a's two layers and b's second: three.
    let layers = if method == "passthrough" { 3 } else { 2 };
    ensure(merged.config().n_layer == layers, || format!("{method}: {} layers, mergekit {layers}", merged.config().n_layer))?;
    let ours = crate::checkpoint::from_safetensors(&crate::checkpoint::save_model(&merged), &"merged".into()).map_err(s)?;
    let want = tensors(fx, &format!("merge/out-{method}.safetensors"))?;
    ensure(want.len() == 3, || format!("merge/out-{method}.safetensors: three tensors expected"))?;
    let base = tensors(fx, "hf-llama/model.safetensors")?;
    let mut d = 0.0f32;
    for (tensor, expected) in &want {
        let a = values(ours.get(tensor).ok_or(format!("{method}: the merge has no {tensor}"))?)?;
        let b = values(expected)?;
        d = d.max(super::worst(&a, &b, tensor)?);
        // The merge moved the weights (a stacked layer past the base's depth has no base).
        if let Some(before) = base.get(tensor) {
            let moved = super::worst(&values(before)?, &b, tensor)?;
            ensure(moved > 1e-3, || format!("{method}: {tensor} equals the base; the fixture cannot tell"))?;
        }
    }
    Ok(Measured::new(d, format!("{} tensors", want.len())))
}

fn combine(fx: &dyn Fixtures, combination: &str) -> Result<Measured, String> {
    let versions = json(fx, ARITH)?;
    let read = |name: &str| -> Result<LoraAdapter, String> {
        LoraAdapter::read(
            &text(fx, &format!("lora-arith/{name}/adapter_config.json"))?,
            &fx.read(&format!("lora-arith/{name}/adapter_model.safetensors"))?,
            name,
        )
        .map_err(s)
    };
    let names = versions["sources"][combination].as_array().ok_or(format!("{ARITH}: no sources.{combination}"))?;
    let adapters = names.iter().map(|n| read(n.as_str().unwrap_or_default())).collect::<Result<Vec<_>, _>>()?;
    let opts = Combine {
        combination: combination.to_string(),
        weights: versions["weights"].as_array().ok_or(format!("{ARITH}: no weights"))?.iter().filter_map(|w| w.as_f64()).collect(),
        density: versions["density"].as_f64(),
        majority: Majority::Total,
        svd_rank: versions["svd_rank"].as_u64().map(|r| r as usize),
        svd_clamp: None,
        seed: 0,
    };
    let (config, weights) = add_weighted_adapter(&adapters, &opts).map_err(s)?;
    let ours = LoraAdapter::read(&config, &weights, combination).map_err(s)?;
    let peft = read(&format!("out-{combination}"))?;
    ensure((ours.r, ours.scaling) == (peft.r, peft.scaling), || {
        format!("{combination}: rank and scaling {:?}, PEFT {:?}", (ours.r, ours.scaling), (peft.r, peft.scaling))
    })?;
    let want_config = json(fx, &format!("lora-arith/out-{combination}/adapter_config.json"))?;
    let got_config: serde_json::Value = serde_json::from_str(&config).map_err(s)?;
    for key in ["r", "lora_alpha", "target_modules", "fan_in_fan_out", "use_rslora"] {
        ensure(got_config[key] == want_config[key], || {
            format!("{combination}: adapter_config.json {key} is {}, PEFT's {}", got_config[key], want_config[key])
        })?;
    }
    let deltas = tensors(fx, &format!("lora-arith/deltas-{combination}.safetensors"))?;
    ensure(ours.modules().count() == deltas.len(), || format!("{combination}: {} modules, PEFT {}", ours.modules().count(), deltas.len()))?;
    let mut d = 0.0f64;
    for module in ours.modules() {
        let key = module.strip_prefix("base_model.model.").unwrap_or(module);
        let want = values(deltas.get(key).ok_or(format!("{combination}: PEFT has no update for {key}"))?)?;
        let got = ours.delta(module).ok_or(format!("{combination}: no update for {module}"))?;
        let scale = want.iter().fold(0.0f32, |m, x| m.max(x.abs())) as f64;
        d = d.max(super::worst(&got, &want, module)? as f64 / scale);
    }
    if !combination.ends_with("svd") {
        let theirs = tensors(fx, &format!("lora-arith/out-{combination}/adapter_model.safetensors"))?;
        let mine = crate::checkpoint::from_safetensors(&weights, &"ours".into()).map_err(s)?;
        ensure(mine.len() == theirs.len(), || format!("{combination}: {} tensors, PEFT {}", mine.len(), theirs.len()))?;
        for (name, t) in &theirs {
            let worst = super::worst(&values(t)?, &values(mine.get(name).ok_or(format!("{combination}: no {name}"))?)?, name)?;
            ensure(worst <= 1e-6, || format!("{combination} {name}: factor off by {worst:e}"))?;
        }
    }
    Ok(Measured::new(d, format!("{} modules", deltas.len())))
}
