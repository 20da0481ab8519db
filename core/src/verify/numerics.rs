//! Number formats and optimizers: bitsandbytes' 4-bit quantization, PyTorch's and
//! bitsandbytes' optimizer steps, DeepSpeed's memory estimators.

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor, TensorData};
use safetensors::SafeTensors;

use super::families::files;
use super::{Check, Fixtures, Measured, Source, Tolerance, ensure, json, s};

const BNB: &str = "bnb-4bit/cases.safetensors";
const OPTIM: &str = "optim/trajectories.safetensors";
const DEEPSPEED: &str = "deepspeed/estimates.json";

pub(super) fn checks<const MEASURE: bool>() -> Vec<Check> {
    let mut all = Vec::new();
    for kind in ["nf4", "fp4"] {
        for block in [64, 128] {
            for dq in [false, true] {
                let case = format!("{kind}-b{block}-{}", if dq { "dq" } else { "plain" });
                let about = format!(
                    "{} in blocks of {block}{}: codes, scales and dequantized values (on the host, and by QLoRA's tensor operations on the device)",
                    kind.to_uppercase(),
                    if dq { " with double quantization" } else { "" }
                );
                let c = case.clone();
                all.push(Check::new::<MEASURE, _>(
                    format!("bitsandbytes/{case}"),
                    about,
                    "bitsandbytes",
                    Source::metadata(BNB),
                    files(&[BNB], vec![]),
                    Tolerance::exact("|Δ dequantized|"),
                    "tests/fixtures/make_bnb_4bit.py",
                    move |fx, t| {
                        let c = c.clone();
                        let device = t.device.clone();
                        Box::pin(async move { four_bit(fx, &c, &device).await })
                    },
                ));
            }
        }
    }
    for (case, about, library) in [
        ("sgd", "SGD", "torch"),
        ("sgd_momentum", "SGD with momentum 0.9", "torch"),
        ("adamw", "AdamW", "torch"),
        ("adafactor", "Adafactor", "torch"),
        ("lion", "Lion", "bitsandbytes"),
        ("adamw8bit", "8-bit AdamW (block maxima and nearest codes)", "bitsandbytes"),
    ] {
        // bitsandbytes' 8-bit AdamW runs on the host, as in the browser (it reads the
        // gradient back synchronously); the others on the device.
        let host = case == "adamw8bit";
        let check = Check::new::<MEASURE, _>(
            format!("optimizers/{case}"),
            format!("{about}: five steps on a decayed 48×100 matrix and an undecayed vector, parameters after each step"),
            library,
            Source::metadata(OPTIM),
            files(&[OPTIM], vec![]),
            Tolerance::abs(1e-5, "|Δ p| / max |p|"),
            "tests/fixtures/make_optim_reference.py",
            move |fx, t| Box::pin(optimizer(fx, case, if host { &t.host } else { &t.device })),
        );
        all.push(if host { check.on_host() } else { check });
    }
    for stage in [2u8, 3] {
        all.push(
            Check::new::<MEASURE, _>(
                format!("deepspeed/zero{stage}"),
                format!("estimate_zero{stage}_model_states_mem_needs: GPU and CPU bytes on a grid of models, GPUs, nodes and offload settings"),
                "deepspeed",
                Source::json(DEEPSPEED, "/versions"),
                files(&[DEEPSPEED], vec![]),
                Tolerance::exact("bytes"),
                "tests/fixtures/make_deepspeed_reference.py",
                move |fx, _| Box::pin(async move { deepspeed(fx, stage) }),
            )
            .on_host(),
        );
    }
    all
}

fn f32s(st: &SafeTensors, name: &str) -> Result<Vec<f32>, String> {
    let t = st.tensor(name).map_err(|e| format!("{name}: {e}"))?;
    Ok(t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
}

fn u8s(st: &SafeTensors, name: &str) -> Result<Vec<u8>, String> {
    Ok(st.tensor(name).map_err(|e| format!("{name}: {e}"))?.data().to_vec())
}

/// bitsandbytes' block-wise 4-bit quantization of one case, reproduced: the same codes,
/// the same (double-quantized) scales, and dequantized values equal bit for bit, both on
/// the host and by the tensor operations QLoRA dequantizes its base with on the device.
///
/// One input is not reproducible by anyone bit for bit: double quantization subtracts the
/// mean of the block maxima, which bitsandbytes takes with `torch.mean`, whose f32
/// summation order depends on PyTorch's kernels. Ours must be within one ulp; given
/// bitsandbytes' offset, everything downstream must be identical.
async fn four_bit(fx: &dyn Fixtures, case: &str, device: &Device) -> Result<Measured, String> {
    use crate::formats::blockwise::{FourBit, Scales, double_quantize, dynamic_map, quantize_4bit};
    let bytes = fx.read(BNB)?;
    let st = SafeTensors::deserialize(&bytes).map_err(s)?;
    let kind = if case.starts_with("nf4") { FourBit::Nf4 } else { FourBit::Fp4 };
    let blocksize = if case.contains("-b64-") { 64 } else { 128 };
    let double = case.ends_with("-dq");
    let input = f32s(&st, &format!("{case}.input"))?;
    let mut q = quantize_4bit(&input, kind, blocksize, double);
    let want_packed = u8s(&st, &format!("{case}.packed"))?;
    ensure(q.packed.len() == want_packed.len(), || format!("{case}: {} packed bytes, bitsandbytes {}", q.packed.len(), want_packed.len()))?;
    // FP4 has two zeros (+0 is code 0, −0 code 8); both dequantize to a zero.
    let same_code = |a: u8, b: u8| a == b || (kind == FourBit::Fp4 && (a & 7) == 0 && (b & 7) == 0);
    if let Some(i) = q.packed.iter().zip(&want_packed).position(|(a, b)| !(same_code(a >> 4, b >> 4) && same_code(a & 15, b & 15))) {
        return Err(format!("{case}: packed byte {i} is {:#04x}, bitsandbytes' {:#04x}", q.packed[i], want_packed[i]));
    }
    let mut detail = format!("{} values, codes equal", input.len());
    match &q.scales {
        Scales::Plain(absmax) => ensure(absmax == &f32s(&st, &format!("{case}.absmax"))?, || format!("{case}: block maxima differ"))?,
        Scales::Double { offset, .. } => {
            ensure(dynamic_map().to_vec() == f32s(&st, &format!("{case}.code8"))?, || format!("{case}: the 8-bit dynamic map differs"))?;
            let theirs = f32s(&st, &format!("{case}.offset"))?[0];
            let ulps = offset.to_bits().abs_diff(theirs.to_bits());
            ensure(ulps <= 1, || format!("{case}: the mean of the block maxima is {offset:e} here, {theirs:e} in bitsandbytes ({ulps} ulps)"))?;
            detail.push_str(&format!("; offset {ulps} ulp from torch.mean's"));
        }
    }
    if double {
        let plain = quantize_4bit(&input, kind, blocksize, false);
        let Scales::Plain(absmax) = &plain.scales else { return Err("plain quantization gave double scales".into()) };
        q.scales = double_quantize(absmax, f32s(&st, &format!("{case}.offset"))?[0]);
        let Scales::Double { codes, scales, .. } = &q.scales else { return Err("double quantization gave plain scales".into()) };
        ensure(scales == &f32s(&st, &format!("{case}.absmax_scales"))?, || format!("{case}: second-level scales differ"))?;
        ensure(codes == &u8s(&st, &format!("{case}.absmax_codes"))?, || format!("{case}: 8-bit block-maximum codes differ"))?;
    }
    let want = f32s(&st, &format!("{case}.dequantized"))?;
    let host = q.dequantize();
    let on_device = super::read(crate::methods::qlora::FourBitOnDevice::new(&q, device).dequantize()).await?;
    let mut d = 0f64;
    for (got, place) in [(&host, "on the host"), (&on_device, "on the device")] {
        ensure(got.len() == want.len(), || format!("{case}: {} dequantized values {place}, bitsandbytes {}", got.len(), want.len()))?;
        d = got.iter().zip(&want).map(|(a, b)| if a == b { 0.0 } else { (a - b).abs() as f64 }).fold(d, f64::max);
    }
    detail.push_str(&format!("; {} dequantized on the device", on_device.len()));
    Ok(Measured::new(d, detail))
}

#[derive(Module, Debug)]
struct Two {
    w: Param<Tensor<2>>,
    b: Param<Tensor<1>>,
}

/// tinytune's optimizer against PyTorch's (or bitsandbytes') on the fixture's recorded
/// gradients, step by step: the largest |Δ parameter| relative to the largest parameter.
///
/// For 8-bit AdamW: bitsandbytes' maps are ours bit for bit; after each step our block
/// maxima equal its and every code is the nearest code of the map, as bitsandbytes' PyTorch
/// quantizer picks it (its C++ CPU path misses the nearest code among tightly packed small
/// codes for a few elements, so at most 5% may differ from its stored codes); each step
/// continues from bitsandbytes' own state.
async fn optimizer(fx: &dyn Fixtures, case: &str, device: &Device) -> Result<Measured, String> {
    use crate::formats::blockwise::{dynamic_map, dynamic_map_unsigned};
    use crate::optim::{NamedGrads, OptimConfig, OptimKind, Optimizer, Quant8, Slot};
    let bytes = fx.read(OPTIM)?;
    let st = SafeTensors::deserialize(&bytes).map_err(s)?;
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(s)?;
    let meta = meta.metadata().clone().unwrap_or_default();
    let cases: serde_json::Value = serde_json::from_str(meta.get("cases").ok_or("optim: no `cases` metadata")?).map_err(s)?;
    let steps: usize = meta.get("steps").and_then(|v| v.parse().ok()).ok_or("optim: no `steps` metadata")?;
    let hp = cases.get(case).ok_or(format!("{OPTIM}: no case {case}"))?;
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let kind: OptimKind = case.replace("sgd_momentum", "sgd").parse().map_err(s)?;
    if kind == OptimKind::AdamW8bit {
        ensure(bits(&f32s(&st, "adamw8bit.1.w.qmap1")?) == bits(&dynamic_map()), || "the signed dynamic map differs from bitsandbytes'".into())?;
        ensure(bits(&f32s(&st, "adamw8bit.1.w.qmap2")?) == bits(&dynamic_map_unsigned()), || "the unsigned dynamic map differs from bitsandbytes'".into())?;
    }
    let device = device.clone().autodiff();
    let config = OptimConfig {
        weight_decay: 0.01,
        clip_grad_norm: None,
        momentum: hp.get("momentum").and_then(|m| m.as_f64()).unwrap_or(0.0),
        ..OptimConfig::for_kind(kind)
    };
    let lr = hp["lr"].as_f64().ok_or(format!("{OPTIM}: {case}: no lr"))?;
    let mut optim = Optimizer::new(config);
    let tensor2 = |v: Vec<f32>| Tensor::<2>::from_data(TensorData::new(v, [48, 100]), &device);
    let tensor1 = |v: Vec<f32>| {
        let n = v.len();
        Tensor::<1>::from_data(TensorData::new(v, [n]), &device)
    };
    let mut model = Two { w: Param::from_tensor(tensor2(f32s(&st, "init.w")?)), b: Param::from_tensor(tensor1(f32s(&st, "init.b")?)) };
    let mut d = 0.0f64;
    let mut codes_off = 0usize;
    for k in 1..=steps {
        let grads =
            NamedGrads(vec![("w".to_string(), tensor1(f32s(&st, &format!("grad.{k}.w"))?)), ("b".to_string(), tensor1(f32s(&st, &format!("grad.{k}.b"))?))]);
        model = optim.step(lr, model, grads);
        for (name, got) in [("w", model.w.val().reshape([4800])), ("b", model.b.val())] {
            let got = super::read(got).await?;
            let want = f32s(&st, &format!("{case}.{k}.{name}"))?;
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
            let worst = super::worst(&got, &want, name)? as f64;
            d = d.max(if worst.is_nan() { f64::NAN } else { worst / scale });
        }
        if kind == OptimKind::AdamW8bit {
            for (slot, key, absmax) in [("exp_avg", "state1", "absmax1"), ("exp_avg_sq", "state2", "absmax2")] {
                let Some(Slot::Quant(q)) = optim.state.get(&format!("w.{slot}")) else { return Err(format!("w.{slot} is not 8-bit")) };
                let want_codes = u8s(&st, &format!("{case}.{k}.w.{key}"))?;
                let want_absmax = f32s(&st, &format!("{case}.{k}.w.{absmax}"))?;
                // Dequantizing bitsandbytes' own codes and maxima gives its moments bit for bit.
                let theirs = Quant8 { codes: want_codes.clone(), absmax: want_absmax.clone(), signed: slot == "exp_avg" };
                ensure(bits(&theirs.dequantize()) == bits(&f32s(&st, &format!("{case}.{k}.w.{slot}"))?), || {
                    format!("step {k} {slot}: dequantized moments differ")
                })?;
                ensure(bits(&q.absmax) == bits(&want_absmax), || format!("step {k} {slot}: block maxima differ"))?;
                let nearest = u8s(&st, &format!("{case}.{k}.w.{key}_nearest"))?;
                let wrong = q.codes.iter().zip(&nearest).filter(|(a, b)| a != b).count();
                ensure(wrong == 0, || format!("step {k} {slot}: {wrong} codes are not the nearest"))?;
                let differ = q.codes.iter().zip(&want_codes).filter(|(a, b)| a != b).count();
                ensure(differ * 20 <= want_codes.len(), || {
                    format!("step {k} {slot}: {differ} of {} codes differ from bitsandbytes' C++ path", want_codes.len())
                })?;
                codes_off = codes_off.max(differ);
            }
            // Continue from bitsandbytes' exact state, so each step is compared on its own.
            for (slot, key, absmax) in [("exp_avg", "state1", "absmax1"), ("exp_avg_sq", "state2", "absmax2")] {
                let q = Quant8 {
                    codes: u8s(&st, &format!("{case}.{k}.w.{key}"))?,
                    absmax: f32s(&st, &format!("{case}.{k}.w.{absmax}"))?,
                    signed: slot == "exp_avg",
                };
                optim.state.insert(format!("w.{slot}"), Slot::Quant(q));
            }
            // Under 4,096 elements the moments stay FP32, as in bitsandbytes.
            ensure(matches!(optim.state.get("b.exp_avg"), Some(Slot::Dense(_))), || "the 100-vector's moments are not FP32".into())?;
        }
    }
    let detail = if kind == OptimKind::AdamW8bit {
        format!("{steps} steps; codes nearest in the map; at most {codes_off} of 4800 differ from bitsandbytes' C++ search")
    } else {
        format!("{steps} steps")
    };
    Ok(Measured::new(d, detail))
}

/// DeepSpeed's estimators' bytes against `memory::deepspeed` on every row of one stage.
fn deepspeed(fx: &dyn Fixtures, stage: u8) -> Result<Measured, String> {
    use crate::memory::deepspeed::{zero2, zero3};
    let v = json(fx, DEEPSPEED)?;
    let rows: Vec<&serde_json::Value> =
        v["rows"].as_array().ok_or(format!("{DEEPSPEED}: no rows"))?.iter().filter(|r| r["stage"].as_u64() == Some(stage as u64)).collect();
    ensure(!rows.is_empty(), || format!("{DEEPSPEED}: no stage-{stage} rows"))?;
    let u = |r: &serde_json::Value, k: &str| r[k].as_u64().ok_or(format!("{DEEPSPEED}: a row without `{k}`"));
    let b = |r: &serde_json::Value, k: &str| r[k].as_bool().ok_or(format!("{DEEPSPEED}: a row without `{k}`"));
    let mut d = 0u64;
    for r in &rows {
        let ours = if stage == 2 {
            zero2(u(r, "total_params")?, u(r, "gpus_per_node")?, u(r, "nodes")?, b(r, "offload_optimizer")?)
        } else {
            zero3(
                u(r, "total_params")?,
                u(r, "largest_layer_params")?,
                u(r, "gpus_per_node")?,
                u(r, "nodes")?,
                b(r, "offload_optimizer")?,
                b(r, "offload_params")?,
                b(r, "zero_init")?,
            )
        };
        d = d.max(ours.gpu.abs_diff(u(r, "gpu")?)).max(ours.cpu.abs_diff(u(r, "cpu")?));
    }
    Ok(Measured::new(d as f64, format!("{} rows, GPU and CPU bytes", rows.len())))
}
