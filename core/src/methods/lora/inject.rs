//! Putting LoRA into a model: the targets and the rank checked against its projections,
//! the base frozen, a path added to each targeted projection (PiSSA's residual and DoRA's
//! magnitude set from the base weight), and the trainable count in closed form.

use burn::module::Module;
use burn::tensor::Device;

use super::{Lora, LoraBias, LoraConfig, LoraInit, column_norms};
use crate::data::rng::Rng;
use crate::error::Result;
use crate::methods::selective::{self, Selection};
use crate::methods::{check_known, for_each_projection, for_each_projection_ref};
use crate::model::Gpt;

/// `model` with LoRA paths on the projections `config` targets, the rest frozen; `origin`
/// names the config in errors.
pub(crate) fn inject(model: Gpt, config: &LoraConfig, seed: u64, device: &Device, origin: &str) -> Result<Gpt> {
    config.validate(origin)?;
    check_targets(&model, config, origin)?;
    Ok(add_lora(model, config, seed, device))
}

/// Parameters LoRA trains on `model` (the adapted or the base one), by closed form:
/// r·(d_in + d_out) per targeted projection, DoRA's magnitude and `lora_only` biases
/// d_out each, and every bias with `bias: all`.
pub(crate) fn trainable(model: &Gpt, config: &LoraConfig) -> usize {
    let mut n = 0;
    for_each_projection_ref(model, |path, p| {
        if config.targets(path) {
            n += config.r * (p.d_in() + p.d_out());
            if config.use_dora {
                n += p.d_out();
            }
            if config.bias == LoraBias::LoraOnly && p.bias.is_some() {
                n += p.d_out();
            }
        }
    });
    if config.bias == LoraBias::All {
        n += Selection::Biases.count(model.config());
    }
    n
}

/// Checks a LoRA config's targets against `model`: every target names at least one
/// projection, and the rank fits every targeted matrix.
pub(crate) fn check_targets(model: &Gpt, config: &LoraConfig, origin: &str) -> Result<()> {
    check_known(model, &config.target_modules, origin, "target_modules")?;
    if config.init == LoraInit::Pissa && config.use_dora {
        return Err(crate::error::Error::config(
            origin,
            "init",
            "PiSSA with DoRA is not built: DoRA's magnitude would start from the residual, not W; use one of them",
        ));
    }
    let mut paths = Vec::new();
    for_each_projection_ref(model, |path, p| paths.push((path.to_string(), p.d_in(), p.d_out())));
    if let Some((path, d_in, d_out)) = paths.iter().find(|(path, d_in, d_out)| config.targets(path) && config.r > (*d_in).min(*d_out)) {
        return Err(crate::error::Error::config(
            origin,
            "r",
            format!("rank {} is larger than {path} ({d_in}×{d_out}) can use: a rank-r update of a matrix needs r ≤ {}", config.r, d_in.min(d_out)),
        ));
    }
    Ok(())
}

/// Freezes `model` and adds LoRA paths (trainable) to the projections `config` targets.
pub(crate) fn add_lora(model: Gpt, config: &LoraConfig, seed: u64, device: &Device) -> Gpt {
    let mut rng = Rng::derive(seed, "lora-init");
    // Freeze everything first; LoRA's own parameters are created trainable.
    let mut model = model.no_grad();
    let mut targeted = Vec::new();
    for_each_projection(&mut model, |path, p| {
        if config.targets(path) {
            let mut lora = Lora::init(p.d_in(), p.d_out(), config, &mut rng, device);
            if config.init == LoraInit::Pissa {
                // PiSSA: A·B starts as W's top-r singular part and W keeps the rest.
                let residual = lora.pissa_from(p.base_weight(), seed, device);
                p.weight = p.weight.take().map(|w| w.map(|_| residual));
            }
            if config.use_dora {
                // DoRA's magnitude starts at W's column norms, so the model starts unchanged.
                lora.magnitude = Some(burn::module::Param::from_tensor(column_norms(p.base_weight()).detach()));
            }
            p.lora = Some(lora);
            targeted.push(format!("{path}.bias"));
        }
    });
    match config.bias {
        LoraBias::None => model,
        LoraBias::All => selective::unfreeze(model, &|name| name.ends_with(".bias")),
        LoraBias::LoraOnly => selective::unfreeze(model, &|name| targeted.iter().any(|t| t == name)),
    }
}
