//! `tinytune prune`: a smaller or sparser model folder from a model folder (issue 18).
//! The rules are `tinytune::prune`'s; this file turns flags into a `Plan`, builds the
//! calibration and held-out data, and writes the folder with `prune.json` beside the weights.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use clap::Args;
use serde_json::json;
use tinytune::data::Split;
use tinytune::methods::Method;
use tinytune::prune::{Criterion, Pattern, Plan, Report, Scope, Structured, Target, Unstructured, calibration_batches, prune};
use tinytune::train::{DataSource, eval_loss};

use crate::flags::flag_error;
use crate::model_dir;

/// Flags of `tinytune prune`.
#[derive(Args, Debug)]
pub struct PruneArgs {
    /// The model to prune (a model or run folder; a LoRA run is merged first with
    /// `tinytune merge-adapter`).
    #[arg(long)]
    pub model: PathBuf,
    /// Where the pruned model folder goes (new, or an empty folder).
    #[arg(long)]
    pub out: PathBuf,
    /// How single weights are scored: magnitude (|w|) or wanda (|w|·‖x‖ over calibration
    /// tokens, per output row). Goes with --sparsity or --pattern.
    #[arg(long)]
    pub method: Option<String>,
    /// Share of each linear weight matrix of the blocks set to zero, in [0, 1).
    #[arg(long)]
    pub sparsity: Option<f64>,
    /// Where --sparsity's threshold applies with --method magnitude: layer (each matrix
    /// alike, the default) or global (one threshold over all of them).
    #[arg(long)]
    pub scope: Option<String>,
    /// N:M semi-structured sparsity instead of --sparsity: N zeros in every M consecutive
    /// inputs of each output (2:4, what sparse tensor cores run).
    #[arg(long)]
    pub pattern: Option<String>,
    /// Structured: attention heads to keep per block (Llama family; whole key/value groups).
    #[arg(long)]
    pub heads: Option<usize>,
    /// Structured: MLP hidden neurons to keep per block.
    #[arg(long)]
    pub neurons: Option<usize>,
    /// Structured: transformer blocks to keep.
    #[arg(long)]
    pub layers: Option<usize>,
    /// Data the activations are measured on (training split) and the held-out loss on:
    /// stories or a task (story-qa, sentiment, json-extract).
    #[arg(long, default_value = "story-qa")]
    pub data: String,
    /// Batches of 16 rows the activations are measured on (Wanda, structured).
    #[arg(long, default_value_t = 4)]
    pub calibration_batches: usize,
    /// Held-out examples the loss before and after is measured on.
    #[arg(long, default_value_t = 200)]
    pub examples: usize,
    /// Seed of the calibration data.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Rows per calibration batch, and per held-out batch (as `tinytune eval`).
const ROWS: usize = 16;

/// The plan the flags ask for; every conflict named by its flags.
fn plan(a: &PruneArgs) -> Result<Plan, String> {
    let unstructured = a.sparsity.is_some() || a.pattern.is_some();
    let structured = a.heads.is_some() || a.neurons.is_some() || a.layers.is_some();
    if unstructured && structured {
        return Err("--sparsity/--pattern and --heads/--neurons/--layers: one kind of pruning per call; prune structurally first, then run \
                    `tinytune prune` on its output with --sparsity or --pattern"
            .into());
    }
    if structured {
        if a.method.is_some() || a.scope.is_some() {
            return Err(format!(
                "--{}: structured pruning ranks heads, neurons and layers by their activations (Minitron); --method and --scope go with --sparsity or --pattern",
                if a.method.is_some() { "method" } else { "scope" }
            ));
        }
        return Ok(Plan::Structured(Structured { heads: a.heads, neurons: a.neurons, layers: a.layers }));
    }
    let target = match (a.sparsity, &a.pattern) {
        (Some(_), Some(_)) => return Err("--pattern: an N:M pattern sets the sparsity itself (2:4 is 50%); leave out --sparsity".into()),
        (Some(s), None) => Target::Sparsity(s),
        (None, Some(p)) => Target::Pattern(p.parse::<Pattern>().map_err(flag_error)?),
        (None, None) => {
            return Err("nothing to prune: pass --sparsity F or --pattern N:M (single weights), or --heads K, --neurons N, --layers L (structured)".into());
        }
    };
    let criterion = a.method.as_deref().unwrap_or("magnitude").parse::<Criterion>().map_err(flag_error)?;
    let scope = a.scope.as_deref().unwrap_or("layer").parse::<Scope>().map_err(flag_error)?;
    Ok(Plan::Unstructured(Unstructured { criterion, target, scope }))
}

/// Refuses a run whose weights are not a plain model: adapters first get folded in.
fn check_method(model: &Path) -> Result<(), String> {
    let method = model_dir::method_of(model)?;
    if method == Method::Full || method.selection().is_some() {
        return Ok(());
    }
    Err(match method.merge_blocker() {
        None => format!(
            "--model: {} is a {} run, whose adapters sit beside the base weights; fold them in first with `tinytune merge-adapter --model {} --out MERGED`, then prune MERGED",
            model.display(),
            method.name(),
            model.display()
        ),
        Some(why) => format!(
            "--model: {} is a {} run, which cannot be folded into the weights ({why}); prune the base model, then train the method on the pruned one",
            model.display(),
            method.name()
        ),
    })
}

/// Whether `out` may be written: absent, or an empty folder.
fn check_out(out: &Path) -> Result<(), String> {
    if out.is_file() || std::fs::read_dir(out).is_ok_and(|mut d| d.next().is_some()) {
        return Err(format!("--out: {} already exists and is not empty; choose a new folder", out.display()));
    }
    Ok(())
}

pub fn prune_cmd(args: PruneArgs, device: &Device) -> Result<(), String> {
    let plan = plan(&args)?;
    check_out(&args.out)?;
    let data: DataSource = args.data.parse().map_err(|e| format!("--data: {e}"))?;
    if let DataSource::Pairs(..) = data {
        return Err(format!("--data: {data} is preference pairs; pruning measures text: stories or a task (story-qa, sentiment, json-extract)"));
    }
    if plan.needs_calibration() && args.calibration_batches == 0 {
        return Err("--calibration-batches: must be at least 1; Wanda and structured pruning read activations on these batches".into());
    }
    check_method(&args.model)?;
    let loaded = model_dir::load_language_model(&args.model, device)?;
    plan.validate(&loaded.config).map_err(flag_error)?;
    tinytune::prune::check_prunable(&loaded.model).map_err(|e| format!("--model: {}: {e}", args.model.display()))?;

    let seq = loaded.model.context_len().min(128);
    let held_out = data.dataset(&loaded.tokenizer, 0, Split::Eval, args.examples, seq, 0.0).map_err(|e| format!("--examples: {e}"))?;
    let loss_before = eval_loss(&loaded.model, &held_out, ROWS, seq, usize::MAX).map_err(|e| e.to_string())?;
    let calibration = if plan.needs_calibration() {
        calibration_batches(&data, &loaded.tokenizer, args.seed, args.calibration_batches, ROWS, seq).map_err(flag_error)?
    } else {
        Vec::new()
    };
    let (pruned, report) = prune(loaded.model, &plan, &calibration).map_err(flag_error)?;
    let loss_after = eval_loss(&pruned, &held_out, ROWS, seq, usize::MAX).map_err(|e| e.to_string())?;

    let summary = json!({
        "model": args.model,
        "out": args.out,
        "data": data.to_string(),
        "before": {"parameters": report.before.total, "nonzero": report.before.nonzero, "eval_loss": loss_before},
        "after": {"parameters": report.after.total, "nonzero": report.after.nonzero, "eval_loss": loss_after},
        "config_after": {"n_layer": pruned.config.n_layer, "n_head": pruned.config.n_head, "n_kv_head": pruned.config.n_kv_head,
                         "head_dim": pruned.config.head_dim(), "inner": pruned.config.inner()},
        "unstructured": report.unstructured,
        "structured": report.structured,
    });
    let prune_json = serde_json::to_vec_pretty(&summary).expect("plain data");
    let mut companions = loaded.companions.clone();
    companions.push(("prune.json", prune_json));
    model_dir::write_model_folder(&args.out, &companions, pruned.config(), &loaded.tokenizer, &pruned)?;
    if args.json {
        let mut brief = summary;
        // The per-layer importance lists are in prune.json; stdout keeps to the summary.
        if let Some(s) = brief.get_mut("structured").and_then(|s| s.as_object_mut()) {
            s.remove("layers");
        }
        if let Some(u) = brief.get_mut("unstructured").and_then(|u| u.as_object_mut()) {
            u.remove("matrices");
        }
        println!("{}", serde_json::to_string_pretty(&brief).expect("plain data"));
        return Ok(());
    }
    print_report(&args, &data, &report, (loss_before, loss_after));
    Ok(())
}

fn print_report(a: &PruneArgs, data: &DataSource, r: &Report, (before, after): (f32, f32)) {
    let pct = |x: usize, of: usize| 100.0 * x as f64 / of.max(1) as f64;
    println!("{} → {}", a.model.display(), a.out.display());
    if let Some(u) = &r.unstructured {
        let name = match u.criterion {
            Criterion::Magnitude => "magnitude",
            Criterion::Wanda => "Wanda",
        };
        let rule = match (&u.pattern, u.sparsity) {
            (Some(p), _) => format!("{name} {p} (N:M: the N lowest of every M consecutive inputs of each output zeroed)"),
            (None, Some(s)) if u.criterion == Criterion::Wanda => format!("Wanda, the lowest {:.0}% of each output row by |w|·‖x‖", s * 100.0),
            (None, Some(s)) => {
                format!("magnitude, the lowest {:.0}% {}", s * 100.0, if u.scope == Scope::Global { "under one global threshold" } else { "of each matrix" })
            }
            (None, None) => name.to_string(),
        };
        let calibrated = u.calibration_tokens.map_or(String::new(), |t| format!(", calibrated on {t:.0} tokens"));
        let (zeros, n) = u.zeros();
        println!("{rule}{calibrated}; the blocks' {n} linear weights are now {:.1}% zero", pct(zeros, n));
        let mut by_kind: Vec<(String, usize, usize)> = Vec::new();
        for m in &u.matrices {
            let kind = m.path.splitn(3, '.').nth(2).unwrap_or(&m.path).to_string();
            match by_kind.iter_mut().find(|(k, ..)| *k == kind) {
                Some(e) => {
                    e.1 += m.zeros;
                    e.2 += m.shape[0] * m.shape[1];
                }
                None => by_kind.push((kind, m.zeros, m.shape[0] * m.shape[1])),
            }
        }
        for (kind, z, n) in by_kind {
            println!("  {kind:<16} {:>5.1}% zero", pct(z, n));
        }
    }
    if let Some(s) = &r.structured {
        let (b, f) = (s.shape_before, s.shape_after);
        println!(
            "structured (Minitron importance over {:.0} calibration tokens): {} → {} blocks, {} → {} heads ({} key/value), MLP {} → {} neurons",
            s.calibration_tokens, b.n_layer, f.n_layer, b.n_head, f.n_head, f.n_kv_head, b.inner, f.inner
        );
        if !s.layers_removed.is_empty() {
            let bi: Vec<String> = s.layers.iter().map(|l| format!("{}:{:.4}", l.layer, l.block_influence)).collect();
            println!("  removed blocks {:?} (block influence 1 − cos: {})", s.layers_removed, bi.join(" "));
        }
        for l in s.layers.iter().filter(|l| l.new_index.is_some() && !l.heads_removed.is_empty()) {
            let scores: Vec<String> = l.heads.iter().map(|h| format!("{h:.3}")).collect();
            println!("  block {}: removed heads {:?} (mean output norm per head: {})", l.layer, l.heads_removed, scores.join(" "));
        }
    }
    let (b, f) = (r.before, r.after);
    println!("parameters: {} ({} non-zero) → {} ({} non-zero, {:.1}% of before)", b.total, b.nonzero, f.total, f.nonzero, pct(f.nonzero, b.nonzero));
    println!("held-out {data} loss: {before:.4} → {after:.4} ({:+.4})", after - before);
    if r.unstructured.is_some() {
        println!("the zeros are stored as ordinary FP32 weights: the file is as large and runs as fast as before (see docs/pruning.md)");
    }
    println!("wrote {} (prune.json holds the scores and what was removed)", a.out.display());
}
