//! `tinytune formats show` and `tinytune formats roundtrip`.

use std::io::Read;

use tinytune::formats::show::{FORMATS, show};

use burn::tensor::Device;
use tinytune::data::Split;
use tinytune::formats::ptq::quantize_model;
use tinytune::train::{DataSource, eval_loss};

use crate::cli::{FormatsCommand, FormatsRoundtripArgs, FormatsShowArgs, QuantizeArgs};
use crate::model_dir;

pub fn formats_cmd(c: FormatsCommand) -> Result<(), String> {
    match c {
        FormatsCommand::Show(a) => show_cmd(a),
        FormatsCommand::Roundtrip(a) => roundtrip_cmd(a),
    }
}

fn show_cmd(a: FormatsShowArgs) -> Result<(), String> {
    let x: f32 = a.value.trim().parse().map_err(|_| format!("'{}' is not a number; give e.g. 0.1, -3e5, nan or inf", a.value))?;
    if !(a.range > 0.0 && a.range.is_finite()) {
        return Err(format!("--range: {} must be a positive, finite number (the block's absolute maximum)", a.range));
    }
    let rows = show(x, a.range);
    if a.json {
        // JSON has no NaN or infinity: those become strings.
        let num = |v: f64| if v.is_finite() { serde_json::json!(v) } else { serde_json::json!(v.to_string()) };
        let out: Vec<_> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "format": r.format, "bits": r.bits, "width": r.width, "stored": num(r.stored), "error": num(r.error),
                    "note": r.note, "max": num(r.max), "min_normal": num(r.min_normal), "min_subnormal": num(r.min_subnormal), "epsilon": num(r.epsilon),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "value": a.value, "range": a.range, "formats": out })).expect("plain data"));
        return Ok(());
    }
    println!("{x:e} (as f32: {:.9e}); scaled formats see a block with absmax {}\n", x, a.range);
    println!("{:<10} {:<36} {:>16} {:>12}  {:<10} {:<10} {:<10}  note", "format", "bits", "stored", "error", "max", "min normal", "epsilon");
    for r in rows {
        println!(
            "{:<10} {:<36} {:>16} {:>12}  {:<10} {:<10} {:<10}  {}",
            r.format,
            r.bits,
            fmt(r.stored),
            if r.error.is_nan() { "-".into() } else { format!("{:.3e}", r.error) },
            format!("{:.4e}", r.max),
            format!("{:.3e}", r.min_normal),
            if r.epsilon > 0.0 { format!("{:.3e}", r.epsilon) } else { "-".into() },
            r.note
        );
    }
    println!(
        "\nfloats: sign exponent mantissa, round to nearest even; int8/int4: absmax/127 and /7 steps; int8-asym: 256 steps over -range..range; nf4/fp4: bitsandbytes' 16-value tables times the absmax."
    );
    Ok(())
}

fn fmt(v: f64) -> String {
    if v.is_finite() { format!("{v:.9e}") } else { v.to_string() }
}

fn roundtrip_cmd(a: FormatsRoundtripArgs) -> Result<(), String> {
    if !FORMATS.contains(&a.format.as_str()) {
        return Err(format!("--format: '{}' is not one of {}", a.format, FORMATS.join(", ")));
    }
    if a.block == 0 {
        return Err("--block: must be at least 1".into());
    }
    if a.double_quant && !matches!(a.format.as_str(), "nf4" | "fp4") {
        return Err("--double-quant: only the 4-bit formats nf4 and fp4 quantize their block maxima".into());
    }
    let mut text = String::new();
    std::io::stdin().read_to_string(&mut text).map_err(|e| format!("stdin: {e}"))?;
    let values: Vec<f64> = serde_json::from_str(&text).map_err(|e| format!("stdin: expected a JSON array of numbers, e.g. [0.1, -2.5] ({e})"))?;
    let x: Vec<f32> = values.iter().map(|&v| v as f32).collect();
    let (out, bytes) = tinytune::formats::ptq::roundtrip(&x, &a.format, a.block, a.double_quant).map_err(|e| format!("--format: {e}"))?;
    let out: Vec<f64> = out.into_iter().map(f64::from).collect();
    let max_err = values.iter().zip(&out).filter(|(a, b)| a.is_finite() && b.is_finite()).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    let non_finite = out.iter().filter(|v| !v.is_finite()).count();
    let json: Vec<serde_json::Value> = out.iter().map(|&v| if v.is_finite() { serde_json::json!(v) } else { serde_json::Value::Null }).collect();
    println!("{}", serde_json::to_string(&json).expect("plain data"));
    eprintln!(
        "{}: {} values, {:.4} bytes per value including scales, max abs error {:.3e}{}",
        a.format,
        x.len(),
        bytes / x.len().max(1) as f64,
        max_err,
        if non_finite > 0 { format!("; {non_finite} became NaN or infinity (printed as null)") } else { String::new() }
    );
    Ok(())
}

pub fn quantize_cmd(a: QuantizeArgs, device: &Device) -> Result<(), String> {
    let formats: Vec<&str> = if a.format == "all" {
        vec!["fp32", "bf16", "fp16", "fp8-e4m3", "fp8-e5m2", "int8", "int8-asym", "int4", "nf4", "fp4"]
    } else if FORMATS.contains(&a.format.as_str()) {
        vec![a.format.as_str()]
    } else {
        return Err(format!("--format: '{}' is not one of {} or all", a.format, FORMATS.join(", ")));
    };
    if a.block == 0 {
        return Err("--block: must be at least 1".into());
    }
    let data: DataSource = a.data.parse().map_err(|e| format!("--data: {e}"))?;
    let loaded = model_dir::load(&a.model, device)?;
    let seq = loaded.model.context_len().min(128);
    let ds = data.dataset(&loaded.tokenizer, 0, Split::Eval, a.examples, seq, 0.0).map_err(|e| e.to_string())?;
    let bar = crate::progress::bar(formats.len() as u64 + 1, "quantize");
    bar.set_message("held-out loss in FP32");
    let before = eval_loss(&loaded.model, &ds, a.batch, seq, usize::MAX).map_err(|e| e.to_string())?;
    bar.inc(1);
    let mut rows = Vec::new();
    for f in formats {
        bar.set_message(f.to_string());
        let (model, report) =
            quantize_model(loaded.model.clone(), f, a.block, a.double_quant && matches!(f, "nf4" | "fp4")).map_err(|e| format!("--format: {e}"))?;
        let after = eval_loss(&model, &ds, a.batch, seq, usize::MAX).map_err(|e| e.to_string())?;
        rows.push((report, after));
        bar.inc(1);
    }
    bar.finish_and_clear();
    if a.json {
        let out: Vec<_> = rows.iter().map(|(r, after)| serde_json::json!({ "report": r, "eval_loss_before": before, "eval_loss_after": after })).collect();
        println!("{}", serde_json::to_string_pretty(&out).expect("plain data"));
        return Ok(());
    }
    println!(
        "{}: held-out {data} loss {before:.4} in FP32; linear weights quantized in blocks of {} (Linear [out, in] layout), everything else kept FP32\n",
        a.model.display(),
        a.block
    );
    println!("{:<10} {:>12} {:>12} {:>11} {:>12} {:>10} {:>10}", "format", "bytes/param", "model size", "max |err|", "rel. RMS err", "eval loss", "change");
    for (r, after) in rows {
        println!(
            "{:<10} {:>12.4} {:>10.2} MB {:>11.2e} {:>11.2}% {:>10.4} {:>+10.4}",
            format!("{}{}", r.format, if r.double_quant { "+dq" } else { "" }),
            r.bytes_per_linear_param(),
            r.bytes_after / 1e6,
            r.max_abs_error,
            r.relative_rms_error * 100.0,
            after,
            after - before
        );
    }
    println!(
        "\nbytes/param: of the quantized linear weights, scales included; model size: all parameters (FP32 before: {:.2} MB).",
        rows_first_size(&loaded.model)
    );
    Ok(())
}

fn rows_first_size(model: &tinytune::Gpt) -> f64 {
    tinytune::model::named_params(model).iter().map(|p| p.numel).sum::<usize>() as f64 * 4.0 / 1e6
}
