//! The `tinytune` binary end to end: a tiny run produces every promised file, a killed and
//! resumed run logs the same losses as an uninterrupted one, and bad input gets one clear
//! line naming the file and field, a non-zero exit, and never a panic.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn tinytune(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tinytune")).args(args).output().expect("the binary runs")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tinytune-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn ok(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "failed: {stderr}");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Asserts a clean failure: exit code 1, a final `error:` line, every needle mentioned, no panic.
fn fails_with(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "expected exit 1, stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panicked: {stderr}");
    let last = stderr.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
    assert!(last.starts_with("error: "), "the last line should be the error: {stderr}");
    for n in needles {
        assert!(stderr.contains(n), "{stderr:?} should mention {n:?}");
    }
}

const TINY: &[&str] = &["--preset", "nano", "--batch", "4", "--seq-len", "32", "--train-examples", "100", "--eval-examples", "20", "--eval-batches", "2"];

fn pretrain(out: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["pretrain", "--out", out.to_str().unwrap()];
    args.extend_from_slice(TINY);
    args.extend_from_slice(extra);
    tinytune(&args)
}

fn step_losses(run: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["event"] == "step")
        .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap()))
        .collect()
}

#[test]
fn a_run_writes_checkpoint_metrics_and_plot_then_generates_evals_and_reports() {
    let run = tmp("run");
    ok(&pretrain(&run, &["--steps", "6", "--eval-every", "3"]));
    for f in ["config.json", "model.safetensors", "tokenizer.json", "optimizer.safetensors", "trainer_state.json", "train.json"] {
        assert!(run.join("checkpoint").join(f).exists(), "{f} missing");
    }
    assert_eq!(step_losses(&run).len(), 6);
    assert!(std::fs::read_to_string(run.join("loss.svg")).unwrap().contains("<polyline"));
    // The config's special token ids are the tokenizer's end-of-text, inside the vocabulary
    // (a GPT-2 config without them would read as GPT-2's 50256 in transformers).
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("checkpoint/config.json")).unwrap()).unwrap();
    let vocab = config["vocab_size"].as_u64().unwrap();
    for key in ["bos_token_id", "eos_token_id"] {
        assert_eq!(config[key].as_u64(), Some(vocab - 1), "{key}: the character tokenizer's end-of-text is its last id: {config}");
    }
    let r = run.to_str().unwrap();
    let text = ok(&tinytune(&["generate", "--model", r, "--prompt", "one day", "--max-tokens", "20", "--seed", "1"]));
    assert!(text.starts_with("one day") && text.len() > "one day".len(), "{text:?}");
    // Same seed, same text.
    assert_eq!(text, ok(&tinytune(&["generate", "--model", r, "--prompt", "one day", "--max-tokens", "20", "--seed", "1"])));
    let eval = ok(&tinytune(&["eval", "--model", r, "--data", "sentiment", "--examples", "20", "--accuracy-examples", "2", "--seq-len", "64", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&eval).unwrap();
    assert!(v["eval_loss"].as_f64().unwrap() > 0.0 && v["accuracy"].is_number());
    let info = ok(&tinytune(&["info", "--model", r]));
    assert!(info.contains("h.1.attn.c_attn.weight") && info.contains("closed form"));
    std::fs::remove_dir_all(&run).unwrap();
}

/// `--data-parallel 2` (two replicas; on the CPU they share its one device) trains to the
/// one-replica run's losses, with and without `--zero 1`, which reports each replica's share
/// of the optimizer state; a batch the replicas cannot share equally, and a ZeRO stage
/// tinytune does not run, are refused by flag.
#[test]
fn data_parallel_runs_match_one_device() {
    let (a, b, z) = (tmp("dp1"), tmp("dp2"), tmp("dp2-zero1"));
    ok(&pretrain(&a, &["--steps", "4"]));
    let whole = pretrain(&b, &["--steps", "4", "--data-parallel", "2"]);
    let sharded = pretrain(&z, &["--steps", "4", "--data-parallel", "2", "--zero", "1"]);
    ok(&whole);
    ok(&sharded);
    let one = step_losses(&a);
    assert_eq!(one.len(), 4);
    for run in [&b, &z] {
        let other = step_losses(run);
        for ((_, x), (_, y)) in one.iter().zip(&other) {
            assert!((x - y).abs() <= 1e-4, "{}: {one:?} vs {other:?}", run.display());
        }
    }
    let line = |out: &Output, start: &str| String::from_utf8_lossy(&out.stderr).lines().find(|l| l.starts_with(start)).map(str::to_string);
    let all = line(&whole, "optimizer state: ").expect("an unsharded run says where its optimizer state is");
    assert!(all.contains("on the first device"), "{all}");
    let shares = line(&sharded, "optimizer state by replica (ZeRO-1): ").expect("a ZeRO-1 run reports each replica's share");
    let list = shares.split(": ").nth(1).unwrap().split(';').next().unwrap();
    assert_eq!(list.split(", ").count(), 2, "{shares}");
    fails_with(&pretrain(&tmp("dp3"), &["--data-parallel", "3"]), &["--data-parallel", "3 replicas", "--batch"]);
    fails_with(&pretrain(&tmp("zero2"), &["--data-parallel", "2", "--zero", "2"]), &["--zero", "stage 2", "use 0 or 1"]);
    for dir in [a, b, z] {
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn a_killed_run_resumes_to_the_same_losses() {
    let (a, b) = (tmp("straight"), tmp("resumed"));
    ok(&pretrain(&a, &["--steps", "8", "--checkpoint-every", "100"]));
    ok(&pretrain(&b, &["--steps", "8", "--checkpoint-every", "100", "--stop-after", "3"]));
    assert_eq!(step_losses(&b).len(), 3);
    // Flags are not needed on resume: the run's own train.json is used.
    ok(&tinytune(&["pretrain", "--out", b.to_str().unwrap(), "--resume"]));
    assert_eq!(step_losses(&a), step_losses(&b));
    // Starting over a finished run without --resume is refused rather than overwriting it.
    fails_with(&pretrain(&b, &["--steps", "2"]), &["--resume"]);
    // Settings a resumed run would ignore are refused, naming each flag and train.json.
    fails_with(&tinytune(&["pretrain", "--out", b.to_str().unwrap(), "--resume", "--steps", "20", "--lr=0.1"]), &["--steps, --lr", "train.json"]);
    // A fresh run into a folder with a log but no checkpoint (a run ended by a second
    // Ctrl-C) starts a fresh log instead of appending to the old one.
    let c = tmp("fresh-log");
    std::fs::create_dir_all(&c).unwrap();
    std::fs::write(c.join("metrics.jsonl"), "{\"event\":\"step\",\"step\":1,\"loss\":9.0}\n{\"event\":\"step\",\"step\":2,\"loss\":9.0}\n").unwrap();
    ok(&pretrain(&c, &["--steps", "3"]));
    assert_eq!(step_losses(&c).iter().map(|s| s.0).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert!(step_losses(&c).iter().all(|s| s.1 != 9.0), "the old lines are gone");
    std::fs::remove_dir_all(&c).unwrap();
    std::fs::remove_dir_all(&a).unwrap();
    std::fs::remove_dir_all(&b).unwrap();
}

#[test]
fn bad_model_folders_name_the_file_and_field() {
    let run = tmp("bad");
    ok(&pretrain(&run, &["--steps", "1"]));
    let ck = run.join("checkpoint");
    let r = run.to_str().unwrap();
    let generate = |dir: &str| tinytune(&["generate", "--model", dir, "--max-tokens", "2"]);

    let cfg = std::fs::read_to_string(ck.join("config.json")).unwrap();
    std::fs::write(ck.join("config.json"), cfg.replace("\"n_head\": 4", "\"n_head\": 0")).unwrap();
    fails_with(&generate(r), &["config.json", "n_head"]);
    std::fs::write(ck.join("config.json"), "{ \"n_embd\": 64 ").unwrap();
    fails_with(&generate(r), &["config.json"]);
    std::fs::remove_file(ck.join("config.json")).unwrap();
    fails_with(&generate(r), &["config.json", "cannot read"]);
    std::fs::write(ck.join("config.json"), &cfg).unwrap();

    let tok = std::fs::read_to_string(ck.join("tokenizer.json")).unwrap();
    std::fs::write(ck.join("tokenizer.json"), "{\"model\": 1}").unwrap();
    fails_with(&generate(r), &["tokenizer.json"]);
    // The tokenizers crate panics on a bad SentencePiece map; that is one error line, with
    // no panic message before it.
    assert!(tok.contains("\"normalizer\": null"));
    let precompiled = tok.replace("\"normalizer\": null", "\"normalizer\": {\"type\": \"Precompiled\", \"precompiled_charsmap\": \"AAAA\"}");
    std::fs::write(ck.join("tokenizer.json"), precompiled).unwrap();
    fails_with(&generate(r), &["tokenizer.json", "could not read one of its parts"]);
    std::fs::write(ck.join("tokenizer.json"), &tok).unwrap();

    std::fs::write(ck.join("model.safetensors"), b"\x08\x00\x00\x00\x00\x00\x00\x00garbage!").unwrap();
    fails_with(&generate(r), &["model.safetensors", "safetensors"]);

    fails_with(&generate(run.join("nowhere").to_str().unwrap()), &["no such folder"]);
    std::fs::remove_dir_all(&run).unwrap();
}

/// Hostile model folders are refused before anything is allocated or unpickled: a config
/// whose sizes do not describe its weights (or are past any real model's) names the field,
/// pickle checkpoints are refused with the conversion, and an --out that cannot be written
/// stops the run before its first step.
#[test]
fn hostile_folders_are_refused_before_allocation_and_pickles_never_opened() {
    let dir = tmp("hostile");
    std::fs::create_dir_all(&dir).unwrap();
    let micro = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../assets/micro");
    for f in ["config.json", "tokenizer.json", "model.safetensors"] {
        std::fs::copy(micro.join(f), dir.join(f)).unwrap();
    }
    let d = dir.to_str().unwrap();
    let original: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let with = |key: &str, value: serde_json::Value| {
        let mut c = original.clone();
        c[key] = value;
        std::fs::write(dir.join("config.json"), c.to_string()).unwrap();
        tinytune(&["eval", "--model", d, "--data", "stories", "--examples", "10"])
    };
    // Believed, these would ask for terabytes (the process used to abort).
    fails_with(&with("n_layer", serde_json::json!(1_000_000_000u64)), &["config.json", "n_layer", "16777216"]);
    fails_with(&with("n_layer", serde_json::json!(3)), &["config.json", "n_layer", "4 blocks"]);
    fails_with(&with("n_embd", serde_json::json!(100_000)), &["config.json", "n_embd", "[512, 100000]", "[512, 128]"]);
    fails_with(&with("vocab_size", serde_json::json!(u64::MAX)), &["config.json", "vocab_size", "largest size"]);
    fails_with(&with("n_inner", serde_json::json!(1_000_000)), &["config.json", "n_inner", "h.0.mlp.c_fc.weight"]);
    std::fs::write(dir.join("config.json"), original.to_string()).unwrap();

    // Pickles: a folder holding only pytorch_model.bin, the file itself, an adapter's .bin.
    std::fs::rename(dir.join("model.safetensors"), dir.join("kept.safetensors.away")).unwrap();
    std::fs::write(dir.join("pytorch_model.bin"), b"not opened").unwrap();
    for model in [d.to_string(), dir.join("pytorch_model.bin").display().to_string()] {
        fails_with(&tinytune(&["eval", "--model", &model, "--data", "stories"]), &["pytorch_model.bin", "pickle", "save_pretrained"]);
    }
    std::fs::rename(dir.join("kept.safetensors.away"), dir.join("model.safetensors")).unwrap();
    let adapter = dir.join("adapter");
    std::fs::create_dir_all(&adapter).unwrap();
    std::fs::copy(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/peft-lora/adapter_config.json"), adapter.join("adapter_config.json"))
        .unwrap();
    std::fs::write(adapter.join("adapter_model.bin"), b"not opened").unwrap();
    fails_with(
        &tinytune(&["logits", "--model", d, "--adapter", adapter.to_str().unwrap(), "--prompt", "a"]),
        &["adapter_model.bin", "pickle", "weights_only=True"],
    );

    // An --out under a file cannot be created: refused before the first step.
    std::fs::write(dir.join("a-file"), b"x").unwrap();
    let out = dir.join("a-file/run");
    let o = tinytune(&["finetune", "--model", d, "--out", out.to_str().unwrap(), "--data", "sentiment", "--steps", "2", "--batch", "2", "--seq-len", "32"]);
    fails_with(&o, &["a-file/run", "cannot create run folder", "--out"]);
    assert!(!String::from_utf8_lossy(&o.stdout).contains("step "), "trained before failing");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A full disk while saving (a write failing with ENOSPC once the process has written 2 MB,
/// through `TINYTUNE_FAULT_WRITE_LIMIT`; a nano checkpoint is 1.3 MB) stops the run with
/// what happened, leaves the previous checkpoint whole and no half-written copy, and the
/// resumed run's losses equal an uninterrupted run's bit for bit.
#[test]
fn a_full_disk_while_saving_keeps_the_last_checkpoint_and_the_run_resumes_exactly() {
    let (whole, full) = (tmp("disk-whole"), tmp("disk-full"));
    ok(&pretrain(&whole, &["--steps", "6", "--checkpoint-every", "2"]));
    let mut args = vec!["pretrain", "--out", full.to_str().unwrap()];
    args.extend_from_slice(TINY);
    args.extend_from_slice(&["--steps", "6", "--checkpoint-every", "2"]);
    let o = Command::new(env!("CARGO_BIN_EXE_tinytune")).args(&args).env("TINYTUNE_FAULT_WRITE_LIMIT", "2000000").output().unwrap();
    fails_with(&o, &["saving the checkpoint failed", "No space left on device", "is intact", "--resume"]);
    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(full.join("checkpoint/trainer_state.json")).unwrap()).unwrap();
    assert_eq!(state["step"], 2, "the step-2 checkpoint is the one kept");
    let left: Vec<String> = std::fs::read_dir(&full).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(left.iter().all(|n| !n.contains("tmp")), "a half-written checkpoint was left: {left:?}");
    ok(&tinytune(&["pretrain", "--out", full.to_str().unwrap(), "--resume"]));
    assert_eq!(step_losses(&full), step_losses(&whole), "the resumed run's losses");
    std::fs::remove_dir_all(&whole).unwrap();
    std::fs::remove_dir_all(&full).unwrap();
}

#[test]
fn bad_flags_and_diverging_runs_fail_cleanly() {
    let run = tmp("flags");
    fails_with(&tinytune(&["pretrain", "--out", run.to_str().unwrap(), "--preset", "huge"]), &["--preset", "unknown preset 'huge'", "micro"]);
    fails_with(&tinytune(&["pretrain", "--out", run.to_str().unwrap(), "--data", "poems"]), &["--data", "story-qa"]);
    fails_with(&tinytune(&["pretrain", "--out", run.to_str().unwrap(), "--preset", "nano", "--seq-len", "4096"]), &["--seq-len", "n_positions"]);
    fails_with(&pretrain(&run, &["--steps", "40", "--lr", "1e35", "--clip", "0", "--warmup", "0"]), &["loss became", "--lr"]);
    fails_with(&tinytune(&["pretrain", "--out", run.to_str().unwrap(), "--resume"]), &["no checkpoint to resume"]);
    fails_with(&pretrain(&run, &["--min-lr-ratio", "2"]), &["--min-lr-ratio", "[0, 1]"]);
    fails_with(&pretrain(&run, &["--weight-decay=-1"]), &["--weight-decay"]);
    fails_with(&tinytune(&["info", "--preset", "nano", "--backend", "cuda"]), &["cuda"]);
    fails_with(&tinytune(&["generate", "--model", "assets/micro", "--temperature=-1"]), &["--temperature", "0 for greedy"]);
    fails_with(&tinytune(&["bench", "--steps", "0"]), &["--steps", "at least 1"]);
    let _ = std::fs::remove_dir_all(&run);
}

#[test]
fn bench_prints_tokens_per_second_as_json() {
    let out =
        ok(&tinytune(&["bench", "--d-model", "32", "--layers", "1", "--heads", "2", "--ctx", "16", "--batch", "2", "--vocab", "50", "--steps", "2", "--json"]));
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let tps = v["tokens_per_s"].as_f64().unwrap();
    assert!(tps > 0.0);
    // PaLM's count for this shape: N = 32·50 (tied output layer) + one block's 12·32²
    // weights and 9·32 biases + two LayerNorms of 2·32 each and the final one; 16 learned positions
    // are lookups. Per token: 6·N + 12·1·32·16.
    let n = 32.0 * 50.0 + 12.0 * 32.0 * 32.0 + 9.0 * 32.0 + 6.0 * 32.0;
    let want = (6.0 * n + 12.0 * 32.0 * 16.0) * tps / 1e12;
    assert!((v["tflops"].as_f64().unwrap() - want).abs() <= 1e-9 * want.max(1.0), "{v}");
    // On the CPU the peak is the heap's: at least the weights, their gradients and AdamW's two moments.
    assert_eq!(v["peak_source"], "heap");
    assert!(v["peak_bytes"].as_f64().unwrap() >= 4.0 * 4.0 * (n + 16.0 * 32.0), "{v}");
    // Between steps: at least the weights and AdamW's two moments, and less than the peak.
    let resting = v["resting_bytes"].as_f64().unwrap();
    assert!(resting >= 3.0 * 4.0 * (n + 16.0 * 32.0) && resting < v["peak_bytes"].as_f64().unwrap(), "{v}");
    assert_eq!(v["precision"], "fp32");
    let bf16 = ok(&tinytune(&["bench", "--preset", "nano", "--ctx", "16", "--batch", "2", "--steps", "1", "--precision", "bf16", "--json"]));
    assert_eq!(serde_json::from_str::<serde_json::Value>(bf16.trim()).unwrap()["precision"], "bf16");
    fails_with(&tinytune(&["bench", "--steps", "1", "--backend", "ndarray", "--precision", "bf16"]), &["--precision", "no bf16"]);
    fails_with(&tinytune(&["bench", "--steps", "1", "--precision", "fp8"]), &["--precision", "fp32, fp16 or bf16"]);
    fails_with(&tinytune(&["bench", "--d-model", "30", "--heads", "4", "--steps", "1"]), &["--heads"]);
}

#[test]
fn a_closed_output_pipe_ends_the_program_quietly() {
    use std::io::Read;
    use std::process::Stdio;
    let mut child =
        Command::new(env!("CARGO_BIN_EXE_tinytune")).args(["info", "--preset", "gpt2"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    // Read a few bytes and close the pipe, as `| head -c 10` would.
    let mut first = [0u8; 10];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    child.wait().unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn ctrl_c_saves_the_current_step_and_the_run_resumes() {
    let run = tmp("interrupt");
    let mut args = vec!["pretrain", "--out", run.to_str().unwrap(), "--steps", "300", "--checkpoint-every", "0", "--eval-every", "0"];
    args.extend_from_slice(TINY);
    let child = Command::new(env!("CARGO_BIN_EXE_tinytune")).args(&args).stderr(std::process::Stdio::piped()).spawn().unwrap();
    // Wait until a few steps are logged, then press Ctrl-C.
    let metrics = run.join("metrics.jsonl");
    let start = std::time::Instant::now();
    while std::fs::read_to_string(&metrics).map(|t| t.lines().count()).unwrap_or(0) < 3 {
        assert!(start.elapsed().as_secs() < 120, "training never started");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(130), "128 + SIGINT, as the shell reports an interrupted command: {stderr}");
    assert!(stderr.contains("interrupted after step") && !stderr.contains("panicked"), "{stderr}");
    // The hint is a command that works as printed.
    let hint = stderr.split('`').nth(1).unwrap_or_else(|| panic!("no command in {stderr}"));
    let words: Vec<&str> = hint.split_whitespace().collect();
    assert_eq!(words[..2], ["tinytune", "pretrain"], "{hint}");
    // The checkpoint holds exactly the steps that were logged: no finished step is lost.
    let logged = step_losses(&run).len();
    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("checkpoint/trainer_state.json")).unwrap()).unwrap();
    assert_eq!(state["step"].as_u64().unwrap() as usize, logged);
    assert!(logged < 300, "interrupted before the end");
    // Resuming, with the printed command, finishes the run with every step logged once.
    ok(&tinytune(&words[1..]));
    let steps: Vec<u64> = step_losses(&run).iter().map(|s| s.0).collect();
    assert_eq!(steps, (1..=300).collect::<Vec<u64>>());
    std::fs::remove_dir_all(&run).unwrap();
}

fn memory_json(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["memory", "--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&ok(&tinytune(&all))).expect("memory --json prints JSON")
}

#[test]
fn memory_prints_the_breakdown_and_deepspeeds_rows() {
    let v = memory_json(&["--model", "llama-2-7b", "--precision", "fp32", "--batch", "1", "--seq", "512"]);
    let gpu = &v["estimate"]["gpu"];
    let p = 6_738_415_616u64;
    assert_eq!(gpu["params"].as_u64(), Some(4 * p));
    assert_eq!(gpu["gradients"].as_u64(), Some(4 * p));
    assert_eq!(gpu["optimizer"].as_u64(), Some(8 * p));
    // 16 bytes per parameter is 100 GiB before activations: only the 141 and 192 GB cards.
    let fits: Vec<&str> = v["estimate"]["fits"].as_array().unwrap().iter().map(|g| g.as_str().unwrap()).collect();
    assert_eq!(fits, ["H200 141 GB", "B200 192 GB"]);
    let qlora = memory_json(&["--model", "llama-2-7b", "--method", "qlora", "--batch", "1", "--seq", "512"]);
    assert_eq!(qlora["estimate"]["trainable_params"].as_u64(), Some(4_194_304));
    assert!(qlora["estimate"]["peak"].as_u64().unwrap() < 16 << 30);
    let z3 = memory_json(&["--model", "gpt2-medium", "--zero", "3", "--offload", "optimizer"]);
    let rows = z3["deepspeed"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[1][1]["gpu"].as_u64(), Some(4 * 51_463_168 + 2 * 354_823_168));
    let text = ok(&tinytune(&["memory", "--model", "gpt2-medium", "--zero", "3"]));
    assert!(text.contains("6.14 GB") && text.contains("0.85 GB") && text.contains("8.92 GB"), "{text}");
    // Beside DeepSpeed's rows, the ZeRO paper's stages, where stage 2 shards the gradients.
    let text = ok(&tinytune(&["memory", "--model", "llama-2-7b", "--zero", "2", "--gpus", "4"]));
    assert!(text.contains("stage 0 100.41 GB, 1 43.93 GB, 2 34.52 GB, 3 25.10 GB") && text.contains("GPU  40.79 GB"), "{text}");
    // The total says what it includes: the model's weights and what LoRA adds.
    let text = ok(&tinytune(&["memory", "--model", "llama-2-7b", "--method", "lora"]));
    assert!(text.starts_with("llama-2-7b: 6742.6 M parameters (6738.4 M of the model + 4.19 M added by the method), 4.19 M trainable"), "{text}");
    // --seq defaults to the model's context when it is shorter than 1024 (micro: 128).
    let text = ok(&tinytune(&["memory", "--model", "micro"]));
    assert!(text.contains("batch 1 × seq 128"), "{text}");
}

#[test]
fn memory_measures_a_real_step_of_a_tiny_model() {
    let v = memory_json(&[
        "--model",
        "nano",
        "--precision",
        "fp32",
        "--activations",
        "tinytune",
        "--overhead-gib",
        "0",
        "--batch",
        "4",
        "--seq",
        "64",
        "--measure",
    ]);
    let measured = v["measured"]["peak"].as_u64().unwrap();
    let estimated = v["measured_estimate"]["first_step_peak"].as_u64().unwrap();
    assert!(measured > 0, "the binary counts its allocations");
    let err = (estimated as f64 / measured as f64 - 1.0).abs();
    assert!(err < 0.10, "estimate {estimated} vs measured {measured}");
    assert_eq!(v["measured"]["params"], v["measured_estimate"]["gpu"]["params"]);
}

#[test]
fn memory_rejects_bad_configs_and_settings_by_name() {
    let dir = tmp("memcfg");
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("config.json");
    std::fs::write(
        &cfg,
        r#"{"model_type":"llama","vocab_size":32000,"hidden_size":4096,"num_hidden_layers":32,"num_attention_heads":0,"intermediate_size":11008}"#,
    )
    .unwrap();
    fails_with(&tinytune(&["memory", "--model", cfg.to_str().unwrap()]), &["config.json", "num_attention_heads", "is 0"]);
    std::fs::write(&cfg, r#"{"model_type":"gpt2","vocab_size":50257,"n_positions":1024,"n_embd":1000,"n_layer":2,"n_head":16}"#).unwrap();
    fails_with(&tinytune(&["memory", "--model", cfg.to_str().unwrap()]), &["n_embd", "divide evenly"]);
    std::fs::write(&cfg, r#"{"model_type":"mistral","vocab_size":32000,"num_hidden_layers":32,"num_attention_heads":32,"intermediate_size":14336}"#).unwrap();
    fails_with(&tinytune(&["memory", "--model", cfg.to_str().unwrap()]), &["hidden_size", "missing"]);
    fails_with(&tinytune(&["memory", "--model", "llama-9b"]), &["--model", "llama-2-7b"]);
    fails_with(&tinytune(&["memory", "--offload", "all", "--zero", "2"]), &["offload", "--zero 3"]);
    fails_with(&tinytune(&["memory", "--optimizer", "adam9"]), &["--optimizer", "adamw8bit"]);
    fails_with(&tinytune(&["memory", "--model", "gpt2", "--seq", "4096"]), &["--seq", "1024"]);
    fails_with(&tinytune(&["memory", "--model", "llama-2-7b", "--method", "lora", "--targets", "c_attn"]), &["targets", "q_proj"]);
}

#[test]
fn a_run_that_will_not_fit_is_refused_before_it_starts() {
    let run = tmp("toobig");
    fails_with(&pretrain(&run, &["--steps", "2", "--device-memory-gib", "0.001"]), &["needs about", "--ignore-memory-check"]);
    assert!(!run.join("checkpoint").exists(), "nothing was written");
    ok(&pretrain(&run, &["--steps", "2", "--device-memory-gib", "0.001", "--ignore-memory-check"]));
    // finetune checks from config.json before reading the weights: a GPT-2 XL-sized folder
    // with no weights file at all is refused for its size, not for the missing file.
    let xl = tmp("xl-sized");
    std::fs::create_dir_all(&xl).unwrap();
    let micro = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../assets/micro");
    std::fs::copy(micro.join("tokenizer.json"), xl.join("tokenizer.json")).unwrap();
    std::fs::write(xl.join("config.json"), r#"{"model_type":"gpt2","vocab_size":512,"n_positions":1024,"n_embd":1600,"n_layer":48,"n_head":25}"#).unwrap();
    let out = tinytune(&["finetune", "--model", xl.to_str().unwrap(), "--out", run.join("ft").to_str().unwrap(), "--device-memory-gib", "2"]);
    fails_with(&out, &["needs about", "more than --device-memory-gib 2"]);
    // A distillation counts its teacher beside the student.
    let m = micro.to_str().unwrap();
    let out = tinytune(&["distill", "--teacher", m, "--student-layers", "2", "--out", run.join("d").to_str().unwrap(), "--device-memory-gib", "0.001"]);
    fails_with(&out, &["needs about", "with the teacher's weights and logits"]);
    let _ = std::fs::remove_dir_all(&xl);
    // Rows cut before their answers: refused by flag before training, and the hint is to
    // raise --seq-len, not lower it.
    let cut = run.join("cut");
    let args = ["finetune", "--model", m, "--out", cut.to_str().unwrap(), "--steps", "1", "--batch", "4", "--seq-len", "48", "--eval-batches", "1"];
    fails_with(&tinytune(&args), &["error: --seq-len: is 48 tokens", "raise it"]);
    // At 64 some training rows keep their answers, but the first held-out batch's do not:
    // refused before any step, by finetune and by compare (before its first run).
    let mut args = args.to_vec();
    args[10] = "64";
    let out = tinytune(&args);
    fails_with(&out, &["--seq-len 64", "answers are cut off", "raise --seq-len"]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("step "), "{out:?}");
    let out = tinytune(&[
        "compare",
        "--model",
        m,
        "--methods",
        "full,lora",
        "--out",
        cut.to_str().unwrap(),
        "--steps",
        "1",
        "--batch",
        "4",
        "--seq-len",
        "64",
        "--eval-batches",
        "1",
    ]);
    fails_with(&out, &["--seq-len 64", "answers are cut off"]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("steps in"), "{out:?}");
}

fn with_stdin(args: &[&str], input: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_tinytune"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A command that fails before reading its input closes the pipe early; what it printed
    // is what the test checks, so a broken pipe here is not an error.
    if let Err(e) = child.stdin.take().unwrap().write_all(input.as_bytes()) {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "writing the child's input: {e}");
    }
    child.wait_with_output().unwrap()
}

#[test]
fn formats_show_and_roundtrip() {
    let v: serde_json::Value = serde_json::from_str(&ok(&tinytune(&["formats", "show", "0.1", "--json"]))).unwrap();
    let row = |f: &str| v["formats"].as_array().unwrap().iter().find(|r| r["format"] == f).unwrap().clone();
    assert_eq!(row("fp16")["stored"].as_f64(), Some(0.0999755859375));
    assert_eq!(row("fp16")["bits"], "0 01011 1001100110");
    assert_eq!(row("bf16")["stored"].as_f64(), Some(0.10009765625));
    assert_eq!(row("fp8-e4m3")["max"].as_f64(), Some(448.0));
    let big: serde_json::Value = serde_json::from_str(&ok(&tinytune(&["formats", "show", "-1e6", "--json"]))).unwrap();
    let brow = |f: &str| big["formats"].as_array().unwrap().iter().find(|r| r["format"] == f).unwrap().clone();
    assert_eq!(brow("fp16")["stored"], "-inf");
    assert_eq!(brow("fp8-e4m3")["stored"], "NaN");
    assert!(brow("int8")["note"].as_str().unwrap().contains("saturated"));

    let out = with_stdin(&["formats", "roundtrip", "--format", "fp16"], "[0.1, 65520, -2.5]");
    assert_eq!(ok(&out).trim(), "[0.0999755859375,null,-2.5]");
    assert!(String::from_utf8_lossy(&out.stderr).contains("became NaN or infinity"));
    // 4-bit: values on the code grid of their block come back exactly; bytes per value
    // include the scales.
    let out = with_stdin(&["formats", "roundtrip", "--format", "nf4", "--block", "4"], "[1.0, -1.0, 0.0, 0.5626170039176941]");
    let got: Vec<f64> = serde_json::from_str(&ok(&out)).unwrap();
    // One of NF4's levels, written as bitsandbytes prints it (more digits than an f32 holds).
    #[allow(clippy::excessive_precision)]
    let level = 0.5626170039176941f32 as f64;
    assert_eq!(got, vec![1.0, -1.0, 0.0, level]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("1.5000 bytes per value"), "{}", String::from_utf8_lossy(&out.stderr));
    fails_with(&with_stdin(&["formats", "roundtrip", "--format", "nf5"], "[1]"), &["--format", "nf4"]);
    fails_with(&with_stdin(&["formats", "roundtrip", "--format", "nf4"], "{\"a\": 1}"), &["stdin", "JSON array"]);
    fails_with(&with_stdin(&["formats", "roundtrip", "--format", "int8", "--double-quant"], "[1]"), &["--double-quant"]);
    fails_with(&tinytune(&["formats", "show", "abc"]), &["not a number"]);
}

#[test]
fn quantize_reports_size_error_and_loss_for_the_shipped_model() {
    let micro = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../assets/micro");
    let out =
        ok(&tinytune(&["quantize", "--model", micro.to_str().unwrap(), "--format", "nf4", "--double-quant", "--examples", "60", "--batch", "4", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let r = &v[0]["report"];
    let per_param = r["linear_bytes"].as_f64().unwrap() / r["linear_params"].as_f64().unwrap();
    assert!((per_param - 0.516).abs() < 0.002, "NF4 with double quantization: {per_param} bytes per weight");
    let (before, after) = (v[0]["eval_loss_before"].as_f64().unwrap(), v[0]["eval_loss_after"].as_f64().unwrap());
    assert!(after >= before - 0.01 && after < before + 0.5, "{before} → {after}");
    assert!(r["relative_rms_error"].as_f64().unwrap() > 0.01);
    fails_with(&tinytune(&["quantize", "--model", micro.to_str().unwrap(), "--format", "int3"]), &["--format", "nf4"]);
}

/// A six-step sentiment fine-tune of the model in `base` into `out`, small enough for tests,
/// with `extra` flags appended.
fn small_finetune(base: &str, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["finetune", "--model", base, "--out", out.to_str().unwrap(), "--data", "sentiment", "--batch", "4", "--seq-len", "48"];
    args.extend_from_slice(&["--train-examples", "100", "--eval-examples", "20", "--eval-batches", "2", "--steps", "6", "--checkpoint-every", "100"]);
    args.extend_from_slice(extra);
    tinytune(&args)
}

/// LoRA and QLoRA fine-tuning of a fresh nano run: the trainable share is printed, the NF4
/// base is reported, a killed QLoRA run resumes to the same losses (its base is saved
/// packed and reloaded bit for bit), the checkpoint generates and evaluates, and bad method
/// flags are named.
#[test]
fn lora_and_qlora_fine_tune_resume_and_reject_bad_flags() {
    let base = tmp("qbase");
    ok(&pretrain(&base, &["--steps", "2"]));
    let b = base.to_str().unwrap();
    let finetune = |out: &Path, extra: &[&str]| small_finetune(b, out, extra);
    let qlora = ["--method", "qlora", "--rank", "4", "--alpha", "8", "--targets", "c_attn,mlp.c_proj", "--lr", "0.01"];
    let (a, r) = (tmp("qlora-straight"), tmp("qlora-resumed"));
    let out = finetune(&a, &qlora);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    ok(&out);
    assert!(stderr.contains("qlora: ") && stderr.contains("parameters train"), "{stderr}");
    assert!(stderr.contains("NF4 base: ") && stderr.contains("bytes/weight"), "{stderr}");
    let mut killed = qlora.to_vec();
    killed.extend_from_slice(&["--stop-after", "3"]);
    ok(&finetune(&r, &killed));
    ok(&tinytune(&["finetune", "--model", b, "--out", r.to_str().unwrap(), "--resume"]));
    assert_eq!(step_losses(&a), step_losses(&r));
    assert!(step_losses(&a).iter().all(|(_, l)| l.is_finite()));
    // The checkpoint loads with its adapters and NF4 base for the other commands.
    let text = ok(&tinytune(&["generate", "--model", a.to_str().unwrap(), "--prompt", "review:", "--max-tokens", "5"]));
    assert!(text.starts_with("review:"));
    ok(&tinytune(&["eval", "--model", a.to_str().unwrap(), "--data", "sentiment", "--examples", "20", "--accuracy-examples", "2", "--seq-len", "48"]));
    // merge-adapter writes a plain model folder whose logits equal the adapted run's (1e-4),
    // as do `logits --merge`'s; a full run has nothing to merge; --out is never overwritten.
    let merged = tmp("qlora-merged");
    ok(&tinytune(&["merge-adapter", "--model", a.to_str().unwrap(), "--out", merged.to_str().unwrap()]));
    assert!(!merged.join("train.json").exists() && merged.join("model.safetensors").exists());
    let logits = |dir: &Path, extra: &[&str]| -> Vec<f64> {
        let mut args = vec!["logits", "--model", dir.to_str().unwrap(), "--prompt", "review: a fine day.\nsentiment:"];
        args.extend_from_slice(extra);
        let v: serde_json::Value = serde_json::from_str(&ok(&tinytune(&args))).unwrap();
        v["logits"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
    };
    let (adapted, folded, on_the_fly) = (logits(&a, &[]), logits(&merged, &[]), logits(&a, &["--merge"]));
    let worst = |x: &[f64], y: &[f64]| x.iter().zip(y).map(|(p, q)| (p - q).abs()).fold(0.0, f64::max);
    assert!(
        !adapted.is_empty() && worst(&adapted, &folded) < 1e-4 && worst(&adapted, &on_the_fly) < 1e-4,
        "merged logits differ: {} / {}",
        worst(&adapted, &folded),
        worst(&adapted, &on_the_fly)
    );
    fails_with(&tinytune(&["merge-adapter", "--model", a.to_str().unwrap(), "--out", merged.to_str().unwrap()]), &["already exists"]);
    fails_with(&tinytune(&["merge-adapter", "--model", b, "--out", tmp("nothing").to_str().unwrap()]), &["full", "no adapter to merge"]);
    std::fs::remove_dir_all(&merged).unwrap();

    let l = tmp("lora");
    let out = finetune(
        &l,
        &["--method", "lora", "--rank", "2", "--targets", "all-linear", "--lora-bias", "lora_only", "--lora-init", "gaussian", "--loraplus-ratio", "16"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    ok(&out);
    // all-linear r2 on nano (C 64, MLP 256, 2 blocks): 2·2·(256+128+320+320) LoRA weights plus
    // the adapted projections' biases, 2·(192+64+256+64).
    assert!(stderr.contains("lora: 5248 of "), "{stderr}");
    fails_with(&finetune(&tmp("bad5"), &["--loraplus-ratio", "16"]), &["--loraplus-ratio", "full method has none"]);
    // DoRA on c_attn r2: 2·(64+192) + 192 magnitudes per block, 2 blocks.
    let d = tmp("dora");
    let out = finetune(&d, &["--method", "lora", "--rank", "2", "--dora", "--lr", "0.01"]);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    ok(&out);
    assert!(stderr.contains("lora: 1408 of "), "{stderr}");
    let merged = tmp("dora-merged");
    ok(&tinytune(&["merge-adapter", "--model", d.to_str().unwrap(), "--out", merged.to_str().unwrap()]));
    for dir in [d, merged] {
        std::fs::remove_dir_all(&dir).unwrap();
    }
    fails_with(&finetune(&tmp("bad6"), &["--method", "lora", "--lora-bias", "some"]), &["--lora-bias", "lora_only"]);
    fails_with(&finetune(&tmp("bad1"), &["--method", "lora", "--rank", "0"]), &["--rank", "at least 1"]);
    fails_with(&finetune(&tmp("bad2"), &["--method", "dora"]), &["--method", "bitfit", "qlora"]);
    fails_with(&finetune(&tmp("bad4"), &["--method", "last-layers", "--last-n", "5"]), &["--last-n", "between 1 and the model's 2 blocks"]);
    // Selective methods: only their parameters train, and the share is printed.
    let s = tmp("bitfit");
    let out = finetune(&s, &["--method", "bitfit", "--lr", "0.01"]);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    ok(&out);
    assert!(stderr.contains("bitfit: ") && stderr.contains("parameters train"), "{stderr}");
    std::fs::remove_dir_all(&s).unwrap();
    fails_with(&finetune(&tmp("bad3"), &["--method", "qlora", "--qlora-block", "1"]), &["--qlora-block"]);
    for d in [base, a, r, l] {
        std::fs::remove_dir_all(&d).unwrap();
    }
}

/// Optimizers and techniques from the command line: an Adafactor run with accumulation,
/// checkpointing and a warmup ratio records them in train.json, is killed and resumes to
/// the same losses (its factored state saved and restored by name); 8-bit AdamW resumes
/// too; `compare` prints one row per optimizer and writes its plot; bad values are named.
#[test]
fn optimizers_and_techniques_run_resume_compare_and_reject_bad_flags() {
    let base = tmp("obase");
    ok(&pretrain(&base, &["--steps", "2"]));
    let b = base.to_str().unwrap();
    let finetune = |out: &Path, extra: &[&str]| small_finetune(b, out, extra);
    for (name, flags) in [
        ("adafactor", &["--optimizer", "adafactor", "--accumulate", "2", "--checkpointing", "--warmup", "50%", "--schedule", "linear"][..]),
        ("adamw8bit", &["--optimizer", "adamw8bit", "--lr", "0.003"][..]),
    ] {
        let (a, r) = (tmp(&format!("{name}-straight")), tmp(&format!("{name}-resumed")));
        let out = finetune(&a, flags);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        ok(&out);
        assert!(stderr.contains(&format!("optimizer {name}")), "{stderr}");
        let train: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(a.join("checkpoint/train.json")).unwrap()).unwrap();
        assert_eq!(train["optimizer"]["kind"], name);
        if name == "adafactor" {
            assert_eq!((train["accumulate"].as_u64(), train["checkpointing"].as_bool(), train["warmup_ratio"].as_f64()), (Some(2), Some(true), Some(0.5)));
        }
        let mut killed = flags.to_vec();
        killed.extend_from_slice(&["--stop-after", "3"]);
        ok(&finetune(&r, &killed));
        ok(&tinytune(&["finetune", "--model", b, "--out", r.to_str().unwrap(), "--resume"]));
        assert_eq!(step_losses(&a), step_losses(&r), "{name}");
        for d in [a, r] {
            std::fs::remove_dir_all(&d).unwrap();
        }
    }
    let c = tmp("compare");
    let out = ok(&tinytune(&[
        "compare",
        "--model",
        b,
        "--optimizers",
        "adamw,adafactor,mezo",
        "--out",
        c.to_str().unwrap(),
        "--data",
        "sentiment",
        "--batch",
        "4",
        "--seq-len",
        "48",
        "--train-examples",
        "100",
        "--eval-examples",
        "20",
        "--eval-batches",
        "2",
        "--steps",
        "4",
        "--json",
    ]));
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.iter().map(|r| r["optimizer"].as_str().unwrap()).collect::<Vec<_>>(), ["adamw", "adafactor", "mezo"]);
    assert_eq!(rows[0]["state_bytes_per_param"].as_f64(), Some(8.0));
    assert_eq!(rows[2]["state_bytes"].as_u64(), Some(0));
    assert!(rows[1]["state_bytes_per_param"].as_f64().unwrap() < 1.0, "Adafactor factors its second moment");
    assert!(rows.iter().all(|r| r["eval_loss"].as_f64().unwrap().is_finite() && r["peak_bytes"].as_u64().unwrap() > 0));
    assert!(std::fs::read_to_string(c.join("compare.svg")).unwrap().contains("adafactor"));
    // --methods: one row per method, with its trainable count.
    let out = ok(&tinytune(&[
        "compare",
        "--model",
        b,
        "--methods",
        "full,bitfit,lora",
        "--rank",
        "2",
        "--out",
        c.to_str().unwrap(),
        "--data",
        "sentiment",
        "--batch",
        "4",
        "--seq-len",
        "48",
        "--train-examples",
        "100",
        "--eval-examples",
        "20",
        "--eval-batches",
        "2",
        "--steps",
        "3",
        "--json",
    ]));
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.iter().map(|r| r["method"].as_str().unwrap()).collect::<Vec<_>>(), ["full", "bitfit", "lora"]);
    let total = rows[0]["total"].as_u64().unwrap();
    assert_eq!(rows[0]["trainable"].as_u64(), Some(total));
    assert!(rows[1]["trainable"].as_u64().unwrap() < total / 50 && rows[2]["trainable"].as_u64().unwrap() < total / 5);
    fails_with(&tinytune(&["compare", "--model", b, "--methods", "dora", "--out", c.to_str().unwrap()]), &["--methods", "bitfit"]);
    // A bad name later in the list fails before the first run trains (nothing is written).
    let early = tmp("compare-early");
    fails_with(&tinytune(&["compare", "--model", b, "--methods", "full,lorra", "--out", early.to_str().unwrap()]), &["--methods", "lorra"]);
    assert!(!early.join("compare.json").exists(), "no run was kept");
    fails_with(&tinytune(&["compare", "--model", b, "--out", c.to_str().unwrap()]), &["--optimizers", "--methods"]);
    fails_with(&finetune(&tmp("obad1"), &["--optimizer", "adam"]), &["--optimizer", "adafactor", "mezo"]);
    fails_with(&finetune(&tmp("obad2"), &["--accumulate", "3"]), &["--accumulate", "divisor"]);
    fails_with(&finetune(&tmp("obad3"), &["--optimizer", "mezo", "--checkpointing"]), &["--checkpointing", "MeZO"]);
    fails_with(&finetune(&tmp("obad4"), &["--warmup", "150%"]), &["--warmup", "between 0 and 100%"]);
    fails_with(&finetune(&tmp("obad5"), &["--optimizer", "adamw", "--momentum", "0.9"]), &["--momentum", "only SGD"]);
    for d in [base, c] {
        std::fs::remove_dir_all(&d).unwrap();
    }
}

/// Additive methods and JSON Lines data from the command line: an adapter run on a .jsonl
/// file of the user's is killed and resumes to the same losses (the file is re-read and
/// split the same way); prompt tuning starts from a text; IA³ merges to the same logits
/// while adapters and prompts refuse to merge and say why; bad lines and flags are named.
#[test]
fn adapters_prompts_ia3_and_jsonl_data() {
    let base = tmp("abase");
    ok(&pretrain(&base, &["--steps", "2"]));
    let b = base.to_str().unwrap();
    let data = tmp("sft.jsonl");
    let mut lines = String::new();
    for i in 0..40 {
        let (p, c) = if i % 2 == 0 {
            (format!("the cat saw {i} birds. how many?\nanswer:"), format!(" {i}\n"))
        } else {
            (format!("count to {}", i % 7), format!("{}", i % 7))
        };
        lines += &if i % 3 == 0 {
            serde_json::json!({"instruction": p, "input": "", "output": c}).to_string()
        } else {
            serde_json::json!({"prompt": p, "completion": c}).to_string()
        };
        lines += "\n";
    }
    std::fs::write(&data, &lines).unwrap();
    let d = data.to_str().unwrap();
    let finetune = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "finetune",
            "--model",
            b,
            "--out",
            out.to_str().unwrap(),
            "--batch",
            "4",
            "--seq-len",
            "64",
            "--eval-batches",
            "2",
            "--steps",
            "6",
            "--checkpoint-every",
            "100",
        ];
        args.extend_from_slice(extra);
        tinytune(&args)
    };
    let adapter = ["--data", d, "--method", "adapter", "--bottleneck", "4", "--lr", "0.01", "--prompt-loss-weight", "0.1"];
    let (a, r) = (tmp("adapter-straight"), tmp("adapter-resumed"));
    let out = finetune(&a, &adapter);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    ok(&out);
    // 32 training and 8 held-out lines; Houlsby on nano: 2 blocks × 2 adapters × (2·64·4 + 4 + 64).
    assert!(stderr.contains("32 training and 8 held-out examples"), "{stderr}");
    assert!(stderr.contains("adapter: 2320 of "), "{stderr}");
    let mut killed = adapter.to_vec();
    killed.extend_from_slice(&["--stop-after", "3"]);
    ok(&finetune(&r, &killed));
    // train.json records the file and its SHA-256 (as sha256sum prints it); a resumed run
    // refuses a file that changed under it.
    let train: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(r.join("checkpoint/train.json")).unwrap()).unwrap();
    let sum = std::process::Command::new("sha256sum").arg(&data).output().unwrap();
    let sum = String::from_utf8_lossy(&sum.stdout).split_whitespace().next().unwrap().to_string();
    assert_eq!((train["data_file"].as_str(), train["data_sha256"].as_str()), (Some(d), Some(sum.as_str())), "{train}");
    std::fs::write(&data, lines.replacen("birds", "dogs", 1)).unwrap();
    fails_with(&tinytune(&["finetune", "--out", r.to_str().unwrap(), "--resume"]), &["sft.jsonl", "changed since the run started", "data_sha256"]);
    std::fs::write(&data, &lines).unwrap();
    ok(&tinytune(&["finetune", "--model", b, "--out", r.to_str().unwrap(), "--resume"]));
    assert_eq!(step_losses(&a), step_losses(&r));
    fails_with(
        &tinytune(&["merge-adapter", "--model", a.to_str().unwrap(), "--out", tmp("no-merge").to_str().unwrap()]),
        &["adapter", "cannot be merged", "non-linearity"],
    );

    let p = tmp("prompt");
    let out = finetune(
        &p,
        &["--data", "sentiment", "--method", "prompt", "--virtual-tokens", "4", "--prompt-init", "text", "--prompt-text", "review:", "--lr", "0.03"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    ok(&out);
    assert!(stderr.contains("prompt: 256 of "), "{stderr}");
    let text = ok(&tinytune(&["generate", "--model", p.to_str().unwrap(), "--prompt", "review:", "--max-tokens", "5"]));
    assert!(text.starts_with("review:"));
    // Evaluation leaves the prompt's 4 positions free by default, and refuses rows that
    // would not fit beside it.
    ok(&tinytune(&["eval", "--model", p.to_str().unwrap(), "--data", "sentiment", "--examples", "20", "--accuracy-examples", "2"]));
    fails_with(&tinytune(&["eval", "--model", p.to_str().unwrap(), "--data", "sentiment", "--seq-len", "128"]), &["--seq-len", "124 tokens"]);
    fails_with(
        &tinytune(&["merge-adapter", "--model", p.to_str().unwrap(), "--out", tmp("no-merge").to_str().unwrap()]),
        &["cannot be merged", "virtual tokens"],
    );

    let i = tmp("ia3");
    let out = finetune(&i, &["--data", "sentiment", "--method", "ia3", "--lr", "0.05"]);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    ok(&out);
    // c_attn's 192 outputs and mlp.c_proj's 256 inputs, in each of 2 blocks.
    assert!(stderr.contains("ia3: 896 of "), "{stderr}");
    // `info` marks what trains, per layer, and checks the total against the closed form.
    let info = ok(&tinytune(&["info", "--model", i.to_str().unwrap()]));
    assert!(
        info.contains("h.0.attn.c_attn.ia3.ia3_l") && info.contains("448 train") && info.contains("ia3: 896 trainable") && info.contains("closed form 896"),
        "{info}"
    );
    let merged = tmp("ia3-merged");
    ok(&tinytune(&["merge-adapter", "--model", i.to_str().unwrap(), "--out", merged.to_str().unwrap()]));
    let logits = |dir: &Path| -> Vec<f64> {
        let v: serde_json::Value =
            serde_json::from_str(&ok(&tinytune(&["logits", "--model", dir.to_str().unwrap(), "--prompt", "review: a fine day.\nsentiment:"]))).unwrap();
        v["logits"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
    };
    let (x, y) = (logits(&i), logits(&merged));
    assert!(!x.is_empty() && x.iter().zip(&y).all(|(p, q)| (p - q).abs() < 1e-4), "IA³ merged logits differ");
    ok(&finetune(&tmp("prefix"), &["--data", "sentiment", "--method", "prefix", "--virtual-tokens", "2", "--prefix-projection", "--encoder-hidden", "8"]));

    std::fs::write(tmp("bad.jsonl"), "{\"prompt\": \"a\", \"completion\": \"b\"}\n{\"prompt\": \"a\", \"answer\": \"b\"}\n").unwrap();
    fails_with(&finetune(&tmp("bad1"), &["--data", tmp("bad.jsonl").to_str().unwrap()]), &["bad.jsonl", "line 2: completion", "missing"]);
    fails_with(&finetune(&tmp("bad2"), &["--data", "missing.jsonl"]), &["--data", "missing.jsonl"]);
    fails_with(&finetune(&tmp("bad3"), &["--method", "prompt", "--prompt-init", "text"]), &["--prompt-text"]);
    fails_with(&finetune(&tmp("bad4"), &["--method", "adapter", "--adapter", "serial"]), &["--adapter", "houlsby"]);
    fails_with(&finetune(&tmp("bad5"), &["--method", "adapter", "--bottleneck", "0"]), &["--bottleneck", "at least 1"]);
    fails_with(&finetune(&tmp("bad6"), &["--method", "ia3", "--ia3-targets", "q_proj", "--ia3-feedforward", "q_proj"]), &["--ia3-targets", "q_proj"]);
    fails_with(&finetune(&tmp("bad7"), &["--method", "prompt", "--virtual-tokens", "128"]), &["--virtual-tokens", "no room"]);
    // 100 virtual tokens leave 28 of nano's 128 positions for the 64-token rows.
    fails_with(&finetune(&tmp("bad8"), &["--method", "prompt", "--virtual-tokens", "100"]), &["seq", "28 tokens"]);
    for dir in [base, a, r, p, i, merged, tmp("prefix")] {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let _ = std::fs::remove_file(&data);
}

/// A LoRA run on the transformers-made GPT-2 fixture exports as a PEFT adapter folder; that
/// folder loaded onto the plain base with `logits --adapter` gives the run's own logits
/// (PEFT itself loads every method's export: tests/tests/fixtures.rs,
/// `tinytunes_exported_adapters_load_in_peft_with_the_runs_logits`). Methods
/// without a PEFT format are refused.
#[test]
fn export_adapter_writes_peft_folders_that_load_back() {
    let base = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/hf-gpt2");
    let b = base.to_str().unwrap();
    let run = tmp("peft-run");
    let out = tmp("peft-out");
    let small = [
        "--data",
        "sentiment",
        "--steps",
        "3",
        "--batch",
        "4",
        "--seq-len",
        "48",
        "--lr",
        "0.01",
        "--train-examples",
        "50",
        "--eval-examples",
        "20",
        "--eval-batches",
        "1",
    ];
    let mut args = vec![
        "finetune",
        "--model",
        b,
        "--out",
        run.to_str().unwrap(),
        "--method",
        "lora",
        "--rank",
        "2",
        "--targets",
        "c_attn,c_fc",
        "--lora-bias",
        "lora_only",
    ];
    args.extend_from_slice(&small);
    ok(&tinytune(&args));
    ok(&tinytune(&["export-adapter", "--model", run.to_str().unwrap(), "--out", out.to_str().unwrap()]));
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!((config["peft_type"].as_str(), config["r"].as_u64(), config["bias"].as_str()), (Some("LORA"), Some(2), Some("lora_only")));
    let logits = |extra: &[&str]| -> Vec<f64> {
        let mut args = vec!["logits", "--prompt", "review: a kind robot."];
        args.extend_from_slice(extra);
        let v: serde_json::Value = serde_json::from_str(&ok(&tinytune(&args))).unwrap();
        v["logits"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
    };
    let own = logits(&["--model", run.to_str().unwrap()]);
    let via_peft = logits(&["--model", b, "--adapter", out.to_str().unwrap()]);
    let plain = logits(&["--model", b]);
    assert_eq!(own, via_peft, "the exported adapter gives other logits");
    assert_ne!(own, plain, "the run's adapter changes nothing");
    fails_with(
        &tinytune(&["logits", "--model", run.to_str().unwrap(), "--adapter", out.to_str().unwrap(), "--prompt", "x"]),
        &["--adapter", "already adapted"],
    );
    let full = tmp("peft-full");
    let mut args = vec!["finetune", "--model", b, "--out", full.to_str().unwrap(), "--method", "bitfit"];
    args.extend_from_slice(&small);
    ok(&tinytune(&args));
    fails_with(
        &tinytune(&["export-adapter", "--model", full.to_str().unwrap(), "--out", tmp("peft-none").to_str().unwrap()]),
        &["bitfit", "no PEFT adapter format"],
    );
    for dir in [run, out, full] {
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// A Llama-layout model with a chat template (the transformers 5 folder of
/// tests/fixtures/chat-tokenizer: tokenizer_config.json + chat_template.jinja) fine-tunes
/// with LoRA on conversations (loss on assistant turns), keeps its template in every
/// checkpoint, and answers with `generate --chat`; a model without a template says so.
#[test]
fn a_llama_with_a_chat_template_trains_on_conversations_and_chats() {
    use tinytune::checkpoint::save_model;
    use tinytune::{Gpt, ModelConfig, TextTokenizer};
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/chat-tokenizer");
    let model = tmp("chat-model");
    std::fs::create_dir_all(&model).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"] {
        std::fs::copy(fixture.join(f), model.join(f)).unwrap();
    }
    let tok = TextTokenizer::from_json(&std::fs::read_to_string(fixture.join("tokenizer.json")).unwrap(), "tokenizer.json").unwrap();
    let config = ModelConfig { vocab_size: tok.vocab_size(), ..ModelConfig::nano_llama() };
    std::fs::write(model.join("config.json"), config.to_json()).unwrap();
    std::fs::write(model.join("model.safetensors"), save_model(&Gpt::init(&config, 0, &burn::tensor::Device::flex()))).unwrap();

    let data = tmp("chat.jsonl");
    let lines: String = (0..30)
        .map(|i| {
            let m = serde_json::json!({"messages": [
                {"role": "user", "content": format!("how many cats? {i}")},
                {"role": "assistant", "content": format!("{i} cats")},
                {"role": "user", "content": "and dogs?"},
                {"role": "assistant", "content": format!("{} dogs", i + 1)},
            ]});
            format!("{m}\n")
        })
        .collect();
    std::fs::write(&data, lines).unwrap();
    let run = tmp("chat-run");
    let (m, d, r) = (model.to_str().unwrap(), data.to_str().unwrap(), run.to_str().unwrap());
    let out = tinytune(&[
        "finetune",
        "--model",
        m,
        "--out",
        r,
        "--data",
        d,
        "--method",
        "lora",
        "--steps",
        "3",
        "--batch",
        "4",
        "--seq-len",
        "100",
        "--eval-batches",
        "1",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    ok(&out);
    // 30 conversations: 24 train and 6 held out, two assistant turns each.
    assert!(stderr.contains("48 training and 12 held-out examples"), "{stderr}");
    // PEFT's Llama default targets.
    assert!(std::fs::read_to_string(run.join("checkpoint/train.json")).unwrap().contains("q_proj"));
    for f in ["chat_template.jinja", "tokenizer_config.json"] {
        assert!(run.join("checkpoint").join(f).exists(), "{f} travels with the checkpoint");
    }
    ok(&tinytune(&["generate", "--model", r, "--chat", "--prompt", "how many cats?", "--max-tokens", "4", "--temperature", "0"]));

    // Without a template: --chat and conversational data are refused, naming what is missing.
    std::fs::remove_file(model.join("chat_template.jinja")).unwrap();
    fails_with(&tinytune(&["generate", "--model", m, "--chat", "--prompt", "hi"]), &["--chat", "no chat template"]);
    let out = tinytune(&["finetune", "--model", m, "--out", tmp("chat-run-2").to_str().unwrap(), "--data", d, "--steps", "1", "--seq-len", "100"]);
    fails_with(&out, &["chat.jsonl", "line 1: messages", "chat template"]);
}

/// `long-context` on a Llama-layout model: one row per way of stretching RoPE and one for
/// the interpolated fine-tune, a table by span, the plot and the JSON; a GPT-2 model,
/// whose positions are a learned table, is refused with the reason.
#[test]
fn long_context_compares_rope_scalings_on_a_llama_and_refuses_gpt2() {
    let base = tmp("lc-base");
    ok(&tinytune(&[
        "pretrain",
        "--preset",
        "nano-llama",
        "--out",
        base.to_str().unwrap(),
        "--steps",
        "2",
        "--batch",
        "4",
        "--seq-len",
        "32",
        "--train-examples",
        "100",
        "--eval-examples",
        "20",
        "--eval-batches",
        "1",
    ]));
    let out = tmp("lc-out");
    let args = [
        "long-context",
        "--model",
        base.to_str().unwrap(),
        "--length",
        "256",
        "--windows",
        "2",
        "--finetune-steps",
        "2",
        "--finetune-length",
        "160",
        "--batch",
        "2",
        "--out",
        out.to_str().unwrap(),
    ];
    let table = ok(&tinytune(&args));
    for row in ["none (plain RoPE)", "linear ×2", "ntk (dynamic) ×2", "llama3 ×2", "yarn ×2", "linear ×1.25 + 2 steps at 160"] {
        assert!(table.contains(&format!("| {row} |")), "{row} missing from {table}");
    }
    assert!(table.contains("| 0–127 | 128–255 |"), "{table}");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("long-context.json")).unwrap()).unwrap();
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 6);
    assert!(rows.iter().all(|r| r["loss_by_position"].as_array().unwrap().len() == 256));
    assert!(std::fs::read_to_string(out.join("long-context.svg")).unwrap().starts_with("<svg"));

    let gpt2 = tmp("lc-gpt2");
    ok(&pretrain(&gpt2, &["--steps", "1"]));
    fails_with(&tinytune(&["long-context", "--model", gpt2.to_str().unwrap()]), &["--model", "GPT-2", "rotary"]);
}

/// A GGUF file works wherever a model folder does, and `import gguf` turns it into a
/// Hugging Face folder that generates the same text; its chat template drives --chat; a
/// truncated file is one clear error; a fine-tune on the GGUF saves a complete folder.
#[test]
fn a_gguf_model_imports_generates_chats_and_fine_tunes() {
    let gguf = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/gguf/tiny-llama.gguf");
    let out = tmp("gguf-import");
    let folder = out.to_str().unwrap();
    let said = String::from_utf8_lossy(&tinytune(&["import", "gguf", gguf, "--out", folder]).stderr).to_string();
    assert!(said.contains("2 layers") && said.contains("320 tokens") && said.contains("chat template"), "{said}");
    for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!((config["model_type"].as_str(), config["num_key_value_heads"].as_u64(), config["eos_token_id"].as_u64()), (Some("llama"), Some(2), Some(2)));
    fails_with(&tinytune(&["import", "gguf", gguf, "--out", folder]), &["already exists"]);
    let info = ok(&tinytune(&["info", "--model", gguf]));
    // Layer 0's seven projections in Q4_1 (5 bits per weight with its scale and minimum).
    assert!(info.contains("stored in") && info.contains("Q4_1      7 tensors") && info.contains("5.00 bits/weight"), "{info}");

    let greedy = |model: &str| ok(&tinytune(&["generate", "--model", model, "--prompt", "The quick", "--temperature", "0", "--max-tokens", "8"]));
    assert_eq!(greedy(gguf), greedy(folder));
    let reply = |model: &str| ok(&tinytune(&["generate", "--model", model, "--chat", "--prompt", "Hi there", "--temperature", "0", "--max-tokens", "6"]));
    assert_eq!(reply(gguf), reply(folder));

    let bytes = std::fs::read(gguf).unwrap();
    let cut = tmp("gguf-cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    fails_with(&tinytune(&["generate", "--model", cut.to_str().unwrap(), "--prompt", "x"]), &["gguf-cut.gguf", "truncated"]);

    let run = tmp("gguf-run");
    ok(&tinytune(&[
        "finetune",
        "--model",
        gguf,
        "--data",
        "stories",
        "--method",
        "lora",
        "--steps",
        "2",
        "--batch",
        "2",
        "--seq-len",
        "32",
        "--train-examples",
        "40",
        "--eval-examples",
        "8",
        "--out",
        run.to_str().unwrap(),
    ]));
    // The forgetting meter: loss on a held-out chat file, before and after.
    let heldout = concat!(env!("CARGO_MANIFEST_DIR"), "/../assets/chat/general-heldout.jsonl");
    for model in [gguf, run.to_str().unwrap()] {
        let said = ok(&tinytune(&["eval", "--model", model, "--data", heldout, "--seq-len", "64"]));
        assert!(said.contains("(31 examples) response loss"), "{said}");
    }
    let ckpt = run.join("checkpoint");
    for f in ["tokenizer_config.json", "generation_config.json", "config.json", "model.safetensors"] {
        assert!(ckpt.join(f).exists(), "{f} missing from the run's checkpoint");
    }
    ok(&tinytune(&["generate", "--model", run.to_str().unwrap(), "--chat", "--prompt", "Hi", "--temperature", "0", "--max-tokens", "4"]));
    // QLoRA keeps the file's own 4-bit blocks as the frozen base (NF4 only where the file
    // stores plain floats), and its checkpoint loads them back.
    let q = tmp("gguf-qlora");
    let out = tinytune(&[
        "finetune",
        "--model",
        gguf,
        "--data",
        "stories",
        "--method",
        "qlora",
        "--targets",
        "all-linear",
        "--steps",
        "2",
        "--batch",
        "2",
        "--seq-len",
        "32",
        "--train-examples",
        "40",
        "--eval-examples",
        "8",
        "--out",
        q.to_str().unwrap(),
    ]);
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    ok(&out);
    assert!(said.contains("Q4_1, ") && said.contains("Q4_0") && said.contains("NF4 base: "), "{said}");
    ok(&tinytune(&["generate", "--model", q.to_str().unwrap(), "--prompt", "Hi", "--temperature", "0", "--max-tokens", "4"]));
    // The memory calculator reads the file's architecture and says what QLoRA keeps.
    let mem = ok(&tinytune(&["memory", "--model", gguf, "--method", "qlora", "--targets", "all-linear", "--batch", "2", "--seq", "64"]));
    let kept = mem.lines().find(|l| l.contains("QLoRA on this GGUF file keeps its own blocks")).unwrap_or_else(|| panic!("{mem}"));
    assert!(kept.contains("Q4_1") && kept.contains("Q4_0") && kept.contains("NF4"), "{kept}");
    // The adapter in PEFT's format, naming the hub model it goes on.
    let peft = tmp("gguf-peft");
    let base = "HuggingFaceTB/SmolLM2-135M-Instruct";
    ok(&tinytune(&["export-adapter", "--model", run.to_str().unwrap(), "--out", peft.to_str().unwrap(), "--base-model", base]));
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(peft.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!((config["peft_type"].as_str(), config["base_model_name_or_path"].as_str()), (Some("LORA"), Some(base)));
}

/// `tinytune merge` reads mergekit's YAML: task arithmetic with one LoRA run at weight 1 over
/// its base is exactly that run's folded model (the same logits as merge-adapter's), the
/// merged folder loads everywhere, and a bad config or an existing --out is refused by name.
#[test]
fn merge_reads_mergekit_yaml_and_folds_lora_runs() {
    let base = tmp("merge-base");
    ok(&pretrain(&base, &["--steps", "2"]));
    let b = base.to_str().unwrap();
    let run = tmp("merge-lora");
    ok(&small_finetune(b, &run, &["--method", "lora", "--rank", "4", "--targets", "c_attn", "--lr", "0.05"]));
    let folded = tmp("merge-folded");
    ok(&tinytune(&["merge-adapter", "--model", run.to_str().unwrap(), "--out", folded.to_str().unwrap()]));
    let yaml = tmp("merge.yml");
    std::fs::write(
        &yaml,
        format!("models:\n  - model: {}\n    parameters: {{weight: 1.0}}\nmerge_method: task_arithmetic\nbase_model: {b}\ndtype: float32\n", run.display()),
    )
    .unwrap();
    let merged = tmp("merge-out");
    let said = String::from_utf8_lossy(&tinytune(&["merge", yaml.to_str().unwrap(), "--out", merged.to_str().unwrap()]).stderr).to_string();
    assert!(said.contains("merged 2 models with task_arithmetic"), "{said}");
    let logits = |m: &Path| -> Vec<f64> {
        let out = ok(&tinytune(&["logits", "--model", m.to_str().unwrap(), "--prompt", "review: great"]));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["logits"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
    };
    let (a, m, base_logits) = (logits(&folded), logits(&merged), logits(&base));
    let worst = a.iter().zip(&m).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    let moved = a.iter().zip(&base_logits).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    assert!(worst < 1e-5 && moved > 1e-3, "merged vs folded {worst}, folded vs base {moved}");
    fails_with(&tinytune(&["merge", yaml.to_str().unwrap(), "--out", merged.to_str().unwrap()]), &["already exists"]);
    // Layer stacking: two copies of the base's layers, a model twice as deep that loads.
    std::fs::write(
        &yaml,
        format!("slices:\n  - sources: [{{model: {b}, layer_range: [0, 2]}}]\n  - sources: [{{model: {b}, layer_range: [0, 2]}}]\nmerge_method: passthrough\n"),
    )
    .unwrap();
    let deep = tmp("merge-deep");
    ok(&tinytune(&["merge", yaml.to_str().unwrap(), "--out", deep.to_str().unwrap()]));
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(deep.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["n_layer"].as_u64().or(config["num_hidden_layers"].as_u64()), Some(4), "{config}");
    ok(&tinytune(&["generate", "--model", deep.to_str().unwrap(), "--prompt", "review:", "--max-tokens", "3"]));
    std::fs::write(&yaml, "merge_method: ties\nmodels:\n  - model: x\n    parameters: {weight: 1, densty: 0.5}\nbase_model: x\n").unwrap();
    fails_with(
        &tinytune(&["merge", yaml.to_str().unwrap(), "--out", tmp("merge-bad").to_str().unwrap()]),
        &["merge.yml", "densty", "weight, density or gamma"],
    );
}

#[test]
fn merge_study_scores_every_method_and_its_saved_yaml_rebuilds_a_row() {
    let micro = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../assets/micro");
    let dir = tmp("merge-study");
    let out = ok(&tinytune(&[
        "merge-study",
        "--model",
        micro.to_str().unwrap(),
        "--steps",
        "2",
        "--examples",
        "8",
        "--accuracy-examples",
        "1",
        "--curve",
        "slerp",
        "--save-dir",
        dir.to_str().unwrap(),
        "--json",
    ]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let labels = |k: &str| v[k].as_array().unwrap().iter().map(|r| r["label"].as_str().unwrap().to_string()).collect::<Vec<_>>();
    assert_eq!(labels("endpoints"), ["base", "task-a", "task-b"]);
    assert_eq!(labels("methods"), tinytune::merging::study::METHODS);
    assert_eq!(labels("curve").len(), 5);
    // SLERP's ends are the fine-tunes themselves.
    let loss = |k: &str, i: usize, task: &str| v[k][i][task]["loss"].as_f64().unwrap();
    assert!((loss("curve", 0, "a") - loss("endpoints", 1, "a")).abs() < 1e-4, "{v}");
    assert!((loss("curve", 4, "b") - loss("endpoints", 2, "b")).abs() < 1e-4, "{v}");
    // The saved YAML rebuilds the ties row with `tinytune merge`, and eval scores it the same.
    let merged = tmp("merge-study-ties");
    ok(&tinytune(&["merge", dir.join("ties.yml").to_str().unwrap(), "--out", merged.to_str().unwrap()]));
    let eval = ok(&tinytune(&[
        "eval",
        "--model",
        merged.to_str().unwrap(),
        "--data",
        "sentiment",
        "--examples",
        "8",
        "--batch",
        "8",
        "--seq-len",
        "64",
        "--accuracy-examples",
        "0",
        "--json",
    ]));
    let e: serde_json::Value = serde_json::from_str(&eval).unwrap();
    let ties = v["methods"].as_array().unwrap().iter().position(|r| r["label"] == "ties").unwrap();
    assert!((e["eval_loss"].as_f64().unwrap() - loss("methods", ties, "a")).abs() < 1e-4, "{e} vs {v}");
    fails_with(&tinytune(&["merge-study", "--model", micro.to_str().unwrap(), "--curve", "soup"]), &["--curve", "linear, slerp"]);
    fails_with(&tinytune(&["merge-study", "--model", micro.to_str().unwrap(), "--task-b", "sentiment"]), &["both tasks are sentiment"]);
}

#[test]
fn combine_adapters_writes_a_peft_folder_that_loads_onto_the_base() {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
    let base = fixtures.join("hf-gpt2");
    let (a, b) = (fixtures.join("lora-arith/a"), fixtures.join("lora-arith/b"));
    let logits = |adapter: &Path| -> Vec<f64> {
        let out = ok(&tinytune(&["logits", "--model", base.to_str().unwrap(), "--adapter", adapter.to_str().unwrap(), "--prompt", "hello world"]));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["logits"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
    };
    // One adapter at weight 1 is itself (PEFT combines a single source linearly).
    let alone = tmp("combine-alone");
    ok(&tinytune(&["combine-adapters", a.to_str().unwrap(), "--weights", "1", "--combination", "ties", "--out", alone.to_str().unwrap()]));
    let (x, y) = (logits(&a), logits(&alone));
    let worst = x.iter().zip(&y).map(|(p, q)| (p - q).abs()).fold(0.0, f64::max);
    assert!(worst < 1e-4, "{worst}");
    // Unequal ranks: cat and the SVD types combine them, and the result loads.
    let both = |settings: &[&str], out: &Path| {
        let mut args = vec!["combine-adapters", a.to_str().unwrap(), b.to_str().unwrap()];
        args.extend_from_slice(settings);
        args.extend(["--out", out.to_str().unwrap()]);
        tinytune(&args)
    };
    let svd = tmp("combine-svd");
    let said = both(&["--weights", "0.7,0.4", "--combination", "ties_svd", "--density", "0.5", "--svd-rank", "3"], &svd);
    assert!(String::from_utf8_lossy(&said.stderr).contains("rank 3, lora_alpha 3"), "{said:?}");
    let moved = logits(&svd).iter().zip(&x).map(|(p, q)| (p - q).abs()).fold(0.0, f64::max);
    assert!(moved > 1e-4 && moved.is_finite(), "{moved}");
    fails_with(&both(&["--weights", "0.7,0.4", "--combination", "linear"], &tmp("combine-bad")), &["--combination", "use cat or an _svd type"]);
    fails_with(&both(&["--weights", "0.7"], &tmp("combine-bad2")), &["--weights", "one weight per adapter"]);
    fails_with(&both(&["--weights", "1,1", "--combination", "ties"], &tmp("combine-bad3")), &["--combination"]);
}

/// One HTTP/1.1 request over a fresh connection: the status and the body (de-chunked).
fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    if !head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        return (status, rest.to_string());
    }
    let (mut body, mut rest) = (String::new(), rest);
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        if n == 0 {
            break;
        }
        body.push_str(&after[..n]);
        rest = &after[n + 2..];
    }
    (status, body)
}

#[test]
fn serve_answers_openai_style_requests_for_several_adapters_batched_together() {
    use std::io::BufRead;
    use tinytune::methods::peft;
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
    let base_dir = fixtures.join("hf-gpt2");
    let adapter = |n: &str| fixtures.join("lora-arith").join(n);
    /// The server, killed if the test fails before stopping it (an orphan would hold the
    /// test's output open).
    struct Server(std::process::Child);
    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut server = Server(
        Command::new(env!("CARGO_BIN_EXE_tinytune"))
            .args(["serve", "--model", base_dir.to_str().unwrap(), "--port", "0", "--max-tokens-limit", "64"])
            .args(["--adapter", &format!("a={}", adapter("a").display()), "--adapter", &format!("b={}", adapter("b").display())])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stderr = std::io::BufReader::new(server.0.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let addr = line.split("http://").nth(1).and_then(|r| r.split('/').next()).unwrap_or_else(|| panic!("{line}")).to_string();
    assert!(addr.starts_with("127.0.0.1:"), "{line}");

    // The greedy continuation of each model, generated in-process with the adapter loaded.
    let device = burn::tensor::Device::flex();
    let read = |f: &str| std::fs::read_to_string(base_dir.join(f)).unwrap();
    let parts = tinytune::checkpoint::load_parts(
        "hf-gpt2",
        &read("config.json"),
        &read("tokenizer.json"),
        &std::fs::read(base_dir.join("model.safetensors")).unwrap(),
        &device,
    )
    .unwrap();
    let with = |n: &str| {
        let d = adapter(n);
        peft::load(parts.model.clone(), &std::fs::read_to_string(d.join(peft::CONFIG)).unwrap(), &std::fs::read(d.join(peft::WEIGHTS)).unwrap(), n, &device)
            .unwrap()
            .0
    };
    let prompt = "hello world";
    let ids = parts.tokenizer.encode(prompt).unwrap();
    let config = tinytune::sample::SampleConfig {
        max_new_tokens: 6,
        temperature: 0.0,
        top_k: None,
        seed: 0,
        stop_ids: parts.tokenizer.eot().into_iter().collect(),
        cache: true,
    };
    let expected = |m: &tinytune::Gpt| tinytune::sample::generate(m, &ids, &config);
    let want = [("hf-gpt2", expected(&parts.model)), ("a", expected(&with("a"))), ("b", expected(&with("b")))];
    assert_ne!(want[1].1, want[2].1, "the two adapters should continue differently");

    let (status, body) = http(&addr, "GET", "/v1/models", "");
    assert_eq!(status, 200, "{body}");
    let models: serde_json::Value = serde_json::from_str(&body).unwrap();
    let listed: Vec<&str> = models["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(listed, ["hf-gpt2", "a", "b"]);

    // All three at once, so the engine batches them (mixed adapters in one forward pass).
    let request = |model: &str| format!(r#"{{"model": "{model}", "prompt": "{prompt}", "max_tokens": 6, "temperature": 0}}"#);
    let answers: Vec<(u16, String)> = std::thread::scope(|s| {
        let addr = addr.as_str();
        let handles: Vec<_> = want.iter().map(|(m, _)| s.spawn(move || http(addr, "POST", "/v1/completions", &request(m)))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for ((model, tokens), (status, body)) in want.iter().zip(&answers) {
        assert_eq!(*status, 200, "{model}: {body}");
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        let got: Vec<u32> = v["choices"][0]["token_ids"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect();
        assert_eq!(&got, tokens, "{model}: {body}");
        assert_eq!(v["model"], *model);
        assert_eq!(v["usage"]["prompt_tokens"].as_u64(), Some(ids.len() as u64));
    }
    // Streamed: the chunks add up to the same text, and the last carries the token ids.
    let whole: serde_json::Value = serde_json::from_str(&answers[1].1).unwrap();
    let (status, sse) = http(&addr, "POST", "/v1/completions", &request("a").replace("\"temperature\": 0", "\"temperature\": 0, \"stream\": true"));
    assert_eq!(status, 200, "{sse}");
    assert!(sse.trim_end().ends_with("data: [DONE]"), "{sse}");
    let chunks: Vec<serde_json::Value> =
        sse.lines().filter_map(|l| l.strip_prefix("data: ")).filter(|d| *d != "[DONE]").map(|d| serde_json::from_str(d).unwrap()).collect();
    let text: String = chunks.iter().map(|c| c["choices"][0]["text"].as_str().unwrap()).collect();
    assert_eq!(text, whole["choices"][0]["text"].as_str().unwrap());
    assert_eq!(chunks.last().unwrap()["choices"][0]["token_ids"], whole["choices"][0]["token_ids"]);

    // Bad requests: a 4xx and a JSON error naming the field.
    let (status, body) = http(&addr, "POST", "/v1/completions", r#"{"model": "a", "prompt": "#);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("not JSON"), "{body}");
    let (status, body) = http(&addr, "POST", "/v1/completions", r#"{"model": "c", "prompt": "hi"}"#);
    assert_eq!(status, 404, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["param"], "model");
    assert!(v["error"]["message"].as_str().unwrap().contains("hf-gpt2, a, b"), "{body}");
    let (status, body) = http(&addr, "POST", "/v1/completions", r#"{"model": "a", "prompt": "hi", "max_tokens": 65}"#);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains(r#""param":"max_tokens""#), "{body}");
    // A body past 1 MiB: a 413 in the same JSON shape.
    let huge = format!(r#"{{"model": "a", "prompt": "{}"}}"#, "a".repeat(2 << 20));
    let (status, body) = http(&addr, "POST", "/v1/completions", &huge);
    assert_eq!(status, 413, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    assert!(v["error"]["message"].as_str().unwrap().contains("1024 KiB"), "{body}");

    // Ctrl-C stops it cleanly.
    #[cfg(unix)]
    {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(server.0.id() as i32, libc::SIGINT) };
        let status = server.0.wait().unwrap();
        assert!(status.success(), "{status:?}");
    }
}

/// `tinytune eval --objective …` on TRL's fixture (tests/fixtures/make_dpo_reference.py):
/// the tiny GPT-2 with a PEFT LoRA adapter as the policy and the plain model as the
/// reference, six pairs in one batch; every loss type's metrics equal
/// `DPOTrainer.evaluate()`'s (TRL 1.16) within 1e-4, log-probabilities within 1e-3.
/// ORPO (no reference model) against TRL 1.16's `ORPOTrainer.evaluate()` on the same policy
/// and pairs (tests/fixtures/make_orpo_reference.py): the loss (the chosen rows' NLL over
/// prompt and completion, minus β times the mean log-sigmoid of the log-odds ratio) and its
/// metrics, within 1e-4 (average log-probabilities within 1e-3). TRL's `logits/*` average the
/// padded logits tensor and are not reproduced.
#[test]
fn orpo_metrics_equal_trls_evaluate_on_the_fixture() {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
    let reference: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixtures.join("dpo/orpo.json")).unwrap()).unwrap();
    let (base, adapter, pairs) = (fixtures.join("hf-gpt2"), fixtures.join("peft-lora"), fixtures.join("dpo/pairs.jsonl"));
    let (b, a, p) = (base.to_str().unwrap(), adapter.to_str().unwrap(), pairs.to_str().unwrap());
    let beta = reference["beta"].to_string();
    let out = ok(&tinytune(&["eval", "--model", b, "--adapter", a, "--data", p, "--objective", "orpo", "--beta", &beta, "--json"]));
    let got: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(got["pairs"], 6);
    let mut compared = 0;
    for (name, value) in reference["metrics"].as_object().unwrap() {
        if name.starts_with("logits/") {
            continue;
        }
        let (w, g) = (value.as_f64().unwrap(), got[name].as_f64().unwrap_or_else(|| panic!("no {name} in {out}")));
        let tolerance = if name.starts_with("logps/") { 1e-3 } else { 1e-4 };
        assert!((w - g).abs() <= tolerance, "orpo {name}: tinytune {g}, TRL {w}");
        compared += 1;
    }
    assert_eq!(compared, 10, "loss, four rewards, two logps, nll_loss, log_odds_ratio, log_odds_chosen");
    // ORPO has no reference model to pass.
    fails_with(&tinytune(&["eval", "--model", b, "--reference", b, "--data", p, "--objective", "orpo"]), &["--reference", "orpo has no reference"]);
}

/// `tinytune eval --objective kto` equals TRL 1.16's `KTOTrainer.evaluate()` on the DPO
/// fixture's policy (tests/fixtures/make_kto_reference.py) in two cases: the pairs, which
/// KTO takes apart (chosen then rejected) with the KL completions rotating over all twelve
/// examples; and an unpaired prompt/completion/label file with unequal weights and a
/// rotation within chunks of 4 (`--batch`, TRL's per_device_train_batch_size). Loss, `kl`,
/// rewards and logits within 1e-4, log-probabilities within 1e-3.
#[test]
fn kto_metrics_equal_trls_evaluate_on_the_fixture() {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
    let reference: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixtures.join("dpo/kto.json")).unwrap()).unwrap();
    let (base, adapter) = (fixtures.join("hf-gpt2"), fixtures.join("peft-lora"));
    let (b, a) = (base.to_str().unwrap(), adapter.to_str().unwrap());
    let cases = reference["cases"].as_object().unwrap();
    assert_eq!(cases.len(), 2, "paired and unpaired");
    for (name, case) in cases {
        let data = fixtures.join("../..").join(case["data"].as_str().unwrap()).display().to_string();
        let s = |k: &str| case[k].to_string();
        let (beta, dw, uw, batch) = (s("beta"), s("desirable_weight"), s("undesirable_weight"), s("batch"));
        let out = ok(&tinytune(&[
            "eval",
            "--model",
            b,
            "--adapter",
            a,
            "--reference",
            b,
            "--data",
            &data,
            "--objective",
            "kto",
            "--beta",
            &beta,
            "--desirable-weight",
            &dw,
            "--undesirable-weight",
            &uw,
            "--batch",
            &batch,
            "--json",
        ]));
        let got: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(got["examples"], case["examples"], "{name}");
        let metrics = case["metrics"].as_object().unwrap();
        assert_eq!(metrics.len(), 9, "{name}: loss, kl and seven metrics");
        for (metric, value) in metrics {
            let (w, g) = (value.as_f64().unwrap(), got[metric].as_f64().unwrap_or_else(|| panic!("{name}: no {metric} in {out}")));
            let tolerance = if metric.starts_with("logps/") { 1e-3 } else { 1e-4 };
            assert!((w - g).abs() <= tolerance, "kto {name} {metric}: tinytune {g}, TRL {w}");
        }
    }
    // A mixed file is refused, naming the line.
    let mixed = tmp("kto-mixed").join("mixed.jsonl");
    std::fs::create_dir_all(mixed.parent().unwrap()).unwrap();
    std::fs::write(&mixed, "{\"prompt\": \"a\", \"completion\": \" b\", \"label\": true}\n{\"prompt\": \"a\", \"chosen\": \" b\", \"rejected\": \" c\"}\n")
        .unwrap();
    let m = mixed.to_str().unwrap();
    fails_with(&tinytune(&["eval", "--model", b, "--reference", b, "--data", m, "--objective", "kto"]), &["mixed.jsonl", "line 2", "one format"]);
    let label = mixed.with_file_name("label.jsonl");
    std::fs::write(&label, "{\"prompt\": \"a\", \"completion\": \" b\", \"label\": \"yes\"}\n").unwrap();
    fails_with(&tinytune(&["eval", "--model", b, "--reference", b, "--data", label.to_str().unwrap(), "--objective", "kto"]), &["line 1", "label", "true"]);
}

/// `tinytune eval --objective reward` on a transformers GPT2ForSequenceClassification
/// (tests/fixtures/hf-gpt2-reward, num_labels 1, pad = end-of-text) equals TRL 1.16's
/// `RewardTrainer.evaluate()` on the DPO fixture's pairs (make_reward_reference.py): the
/// Bradley–Terry loss, accuracy, margin and min/mean/max reward within 1e-4, which holds
/// the score head, the pooling at the rightmost non-pad token and the tokenisation to
/// transformers'. A language model is refused for a reward evaluation, and a reward model
/// for any other.
#[test]
fn reward_model_metrics_equal_trls_evaluate_on_the_fixture() {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
    let reference: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixtures.join("dpo/reward.json")).unwrap()).unwrap();
    let (model, pairs) = (fixtures.join("hf-gpt2-reward"), fixtures.join("dpo/pairs.jsonl"));
    let (m, p) = (model.to_str().unwrap(), pairs.to_str().unwrap());
    let out = ok(&tinytune(&["eval", "--model", m, "--data", p, "--objective", "reward", "--json"]));
    let got: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(got["pairs"], 6);
    let metrics = reference["metrics"].as_object().unwrap();
    assert_eq!(metrics.len(), 6, "loss, accuracy, margin, min/mean/max reward");
    for (name, value) in metrics {
        let (w, g) = (value.as_f64().unwrap(), got[name].as_f64().unwrap_or_else(|| panic!("no {name} in {out}")));
        assert!((w - g).abs() <= 1e-4, "reward {name}: tinytune {g}, TRL {w}");
    }
    let lm = fixtures.join("hf-gpt2");
    fails_with(
        &tinytune(&["eval", "--model", lm.to_str().unwrap(), "--data", p, "--objective", "reward"]),
        &["--model", "is a language model", "ForSequenceClassification"],
    );
    fails_with(&tinytune(&["eval", "--model", m, "--reference", m, "--data", p, "--objective", "dpo"]), &["--model", "is a reward model"]);
}

#[test]
fn dpo_metrics_equal_trls_evaluate_on_the_fixture() {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
    let reference: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixtures.join("dpo/reference.json")).unwrap()).unwrap();
    let (base, adapter, pairs) = (fixtures.join("hf-gpt2"), fixtures.join("peft-lora"), fixtures.join("dpo/pairs.jsonl"));
    let (b, a, p) = (base.to_str().unwrap(), adapter.to_str().unwrap(), pairs.to_str().unwrap());
    let losses = reference["losses"].as_object().unwrap();
    assert_eq!(losses.len(), 4, "sigmoid, ipo, hinge and robust");
    for (loss_type, want) in losses {
        let objective = if loss_type == "sigmoid" { "dpo" } else { loss_type.as_str() };
        let (beta, smoothing) = (want["beta"].to_string(), want["label_smoothing"].to_string());
        let out = ok(&tinytune(&[
            "eval",
            "--model",
            b,
            "--adapter",
            a,
            "--reference",
            b,
            "--data",
            p,
            "--objective",
            objective,
            "--beta",
            &beta,
            "--label-smoothing",
            &smoothing,
            "--json",
        ]));
        let got: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(got["pairs"], 6, "{loss_type}");
        let metrics = want["metrics"].as_object().unwrap();
        assert_eq!(metrics.len(), 9, "{loss_type}: loss and eight metrics");
        for (name, value) in metrics {
            let (w, g) = (value.as_f64().unwrap(), got[name].as_f64().unwrap_or_else(|| panic!("{loss_type}: no {name} in {out}")));
            let tolerance = if name.starts_with("logps/") { 1e-3 } else { 1e-4 };
            assert!((w - g).abs() <= tolerance, "{loss_type} {name}: tinytune {g}, TRL {w}");
        }
    }
    // The reference is required, and the data must be pairs.
    fails_with(&tinytune(&["eval", "--model", b, "--adapter", a, "--data", p, "--objective", "dpo"]), &["--reference"]);
    fails_with(&tinytune(&["eval", "--model", b, "--reference", b, "--data", "story-qa", "--objective", "dpo"]), &["--data", "story-qa-pairs"]);
    fails_with(&tinytune(&["eval", "--model", b, "--reference", b, "--data", p, "--objective", "dpo2"]), &["--objective", "orpo, kto, reward or grpo"]);
    fails_with(
        &tinytune(&["eval", "--model", b, "--reference", b, "--data", p, "--objective", "dpo", "--label-smoothing", "0.2"]),
        &["label_smoothing", "robust"],
    );
}

/// DPO fine-tuning from the command line: LoRA on nano over generated pairs and over a TRL
/// pairs file, TRL's metrics in metrics.jsonl, a killed run resumes to the same losses (the
/// reference log-probabilities travel in the checkpoint), and mismatched data is refused.
/// `finetune --objective orpo` (LoRA) trains without a reference (none is scored or saved;
/// `--reference` is refused by name), logs ORPO's metrics on every step, and a run stopped
/// after 4 steps resumes to the same losses.
#[test]
fn orpo_fine_tunes_without_a_reference_and_resumes() {
    let base = tmp("orpo-base");
    ok(&pretrain(&base, &["--steps", "2"]));
    let b = base.to_str().unwrap();
    let orpo = |out: &Path, extra: &[&str]| {
        let mut args = vec!["finetune", "--model", b, "--out", out.to_str().unwrap(), "--method", "lora", "--lr", "0.01", "--objective", "orpo"];
        args.extend_from_slice(&["--data", "sentiment-pairs", "--batch", "2", "--seq-len", "64", "--train-examples", "40", "--eval-examples", "8"]);
        args.extend_from_slice(&["--eval-batches", "2", "--steps", "6", "--eval-every", "3", "--checkpoint-every", "100"]);
        args.extend_from_slice(extra);
        tinytune(&args)
    };
    let (a, r) = (tmp("orpo-straight"), tmp("orpo-resumed"));
    let out = orpo(&a, &[]);
    ok(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("objective orpo (beta 0.1, no reference model)"));
    let events: Vec<serde_json::Value> = std::fs::read_to_string(a.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let step = events.iter().find(|v| v["event"] == "step").unwrap();
    let eval = events.iter().rfind(|v| v["event"] == "eval").unwrap();
    for key in ["rewards/accuracies", "rewards/margins", "logps/chosen", "nll_loss", "log_odds_ratio", "log_odds_chosen"] {
        assert!(step["metrics"][key].is_number() && eval["metrics"][key].is_number(), "{key}: {step} {eval}");
    }
    // The loss is the NLL minus β times the mean log-sigmoid of the log-odds.
    let m = &step["metrics"];
    let want = m["nll_loss"].as_f64().unwrap() - 0.1 * m["log_odds_ratio"].as_f64().unwrap();
    assert!((step["loss"].as_f64().unwrap() - want).abs() < 1e-4, "{step}");
    ok(&orpo(&r, &["--stop-after", "4"]));
    let state = std::fs::read_to_string(r.join("checkpoint/trainer_state.json")).unwrap();
    let state: serde_json::Value = serde_json::from_str(&state).unwrap();
    assert!(state.get("reference").is_none_or(|r| r.is_null()), "no reference log-probabilities: {state}");
    ok(&tinytune(&["finetune", "--model", b, "--out", r.to_str().unwrap(), "--resume"]));
    let (x, y) = (step_losses(&a), step_losses(&r));
    assert_eq!(x.len(), 6);
    assert_eq!(x.len(), y.len());
    for (p, q) in x.iter().zip(&y) {
        assert!((p.1 - q.1).abs() < 1e-5, "step {}: {} vs {}", p.0, p.1, q.1);
    }
    fails_with(&orpo(&tmp("orpo-ref"), &["--reference", b]), &["--reference", "the orpo objective has no reference model"]);
}

/// `finetune --objective kto` on a file of TRL's unpaired feedback (more desirable lines
/// than undesirable ones, weighted as the KTO paper advises): TRL's KTO metrics on every
/// step and evaluation, the reference log-probabilities (each example's row and its
/// mismatched row) kept in the checkpoint, and a run stopped after 3 steps resumes to the
/// same losses. A weight of 0 is refused by its flag.
#[test]
fn kto_fine_tunes_on_unpaired_feedback_and_resumes() {
    let base = tmp("kto-base");
    ok(&pretrain(&base, &["--steps", "2"]));
    let b = base.to_str().unwrap();
    let file = base.join("feedback.jsonl");
    let mut lines = String::new();
    for (i, (text, feeling)) in
        [("the zoo was fun", "happy"), ("my kite broke", "sad"), ("we won the game", "happy"), ("the rain came", "sad")].iter().cycle().take(12).enumerate()
    {
        let wrong = if *feeling == "happy" { "sad" } else { "happy" };
        let (completion, label) = if i % 3 == 2 { (wrong, false) } else { (*feeling, true) };
        lines += &format!("{{\"prompt\": \"text: {text} {i}\\nfeeling:\", \"completion\": \" {completion}\\n\", \"label\": {label}}}\n");
    }
    std::fs::write(&file, lines).unwrap();
    let f = file.to_str().unwrap();
    let kto = |out: &Path, extra: &[&str]| {
        let mut args = vec!["finetune", "--model", b, "--out", out.to_str().unwrap(), "--method", "lora", "--lr", "0.01", "--objective", "kto"];
        args.extend_from_slice(&["--data", f, "--batch", "2", "--seq-len", "64", "--eval-examples", "2", "--undesirable-weight", "1.5"]);
        args.extend_from_slice(&["--steps", "5", "--eval-every", "5", "--checkpoint-every", "100"]);
        args.extend_from_slice(extra);
        tinytune(&args)
    };
    let (a, r) = (tmp("kto-straight"), tmp("kto-resumed"));
    let out = kto(&a, &[]);
    ok(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("objective kto (beta 0.1, desirable weight 1, undesirable weight 1.5)"));
    let events: Vec<serde_json::Value> = std::fs::read_to_string(a.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let step = events.iter().find(|v| v["event"] == "step").unwrap();
    let eval = events.iter().rfind(|v| v["event"] == "eval").unwrap();
    for key in ["kl", "logps/chosen"] {
        assert!(step["metrics"][key].is_number() && eval["metrics"][key].is_number(), "{key}: {step} {eval}");
    }
    assert!(eval["metrics"]["rewards/margins"].is_number(), "{eval}");
    assert!((step["loss"].as_f64().unwrap() - 0.5 * step_weight(step)).abs() < 1e-5, "the first step's loss: 1 − σ(0) times the weights: {step}");
    ok(&kto(&r, &["--stop-after", "3"]));
    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(r.join("checkpoint/trainer_state.json")).unwrap()).unwrap();
    assert!(state["reference"]["train"].as_array().is_some_and(|t| t.len() == 2 * 10), "two rows an example: {state}");
    // --model is not needed to resume: the run's checkpoint is the model.
    ok(&tinytune(&["finetune", "--out", r.to_str().unwrap(), "--resume"]));
    let (x, y) = (step_losses(&a), step_losses(&r));
    assert_eq!(x.len(), 5);
    assert_eq!(x.len(), y.len());
    for (p, q) in x.iter().zip(&y) {
        assert!((p.1 - q.1).abs() < 1e-5, "step {}: {} vs {}", p.0, p.1, q.1);
    }
    fails_with(&kto(&tmp("kto-bad"), &["--desirable-weight", "0"]), &["--desirable-weight", "positive weight"]);
}

/// The mean example weight of a KTO step's batch of two, from its metrics (desirable
/// examples weigh 1, undesirable 1.5 in `kto_fine_tunes_on_unpaired_feedback_and_resumes`):
/// which kinds a step drew shows in which rewards it reports.
fn step_weight(step: &serde_json::Value) -> f64 {
    match (step["metrics"]["rewards/chosen"].is_number(), step["metrics"]["rewards/rejected"].is_number()) {
        (true, false) => 1.0,
        (false, true) => 1.5,
        _ => 1.25,
    }
}

/// `finetune --objective reward` turns the model into transformers' sequence classifier
/// (one label, pad = end-of-text, a score head and no LM head) and trains it on pairs:
/// the checkpoint is a GPT2ForSequenceClassification folder, `eval --objective reward` on
/// it gives the run's last evaluation, a stopped run resumes to the same losses, and a
/// reward model is refused by generate.
#[test]
fn a_reward_model_fine_tunes_saves_as_a_classifier_and_resumes() {
    let base = tmp("reward-base");
    ok(&pretrain(&base, &["--steps", "2"]));
    let b = base.to_str().unwrap();
    let reward = |out: &Path, extra: &[&str]| {
        let mut args = vec!["finetune", "--model", b, "--out", out.to_str().unwrap(), "--method", "full", "--lr", "0.003", "--objective", "reward"];
        args.extend_from_slice(&["--data", "sentiment-pairs", "--batch", "2", "--seq-len", "64", "--train-examples", "40", "--eval-examples", "8"]);
        args.extend_from_slice(&["--eval-batches", "4", "--steps", "5", "--eval-every", "5", "--checkpoint-every", "100"]);
        args.extend_from_slice(extra);
        tinytune(&args)
    };
    let (a, r) = (tmp("reward-straight"), tmp("reward-resumed"));
    let out = reward(&a, &[]);
    ok(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("objective reward (a Bradley–Terry reward model)"));
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(a.join("checkpoint/config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"], serde_json::json!(["GPT2ForSequenceClassification"]), "{config}");
    // The end-of-text token pads: the character tokenizer's last id.
    assert_eq!(
        (config["id2label"].as_object().map(|m| m.len()), config["pad_token_id"].as_u64()),
        (Some(1), Some(config["vocab_size"].as_u64().unwrap() - 1)),
        "{config}"
    );
    let header = std::fs::read(a.join("checkpoint/model.safetensors")).unwrap();
    let n = u64::from_le_bytes(header[..8].try_into().unwrap()) as usize;
    let names: serde_json::Value = serde_json::from_slice(&header[8..8 + n]).unwrap();
    assert_eq!(names["score.weight"]["shape"], serde_json::json!([1, 64]), "{names}");
    assert!(names.get("lm_head.weight").is_none());
    let events: Vec<serde_json::Value> = std::fs::read_to_string(a.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let step = events.iter().find(|v| v["event"] == "step").unwrap();
    let eval = events.iter().rfind(|v| v["event"] == "eval").unwrap();
    for key in ["accuracy", "margin", "min_reward", "mean_reward", "max_reward"] {
        assert!(step["metrics"][key].is_number() && eval["metrics"][key].is_number(), "{key}: {step} {eval}");
    }
    // The saved model, evaluated on its own, gives the run's last evaluation.
    let got = ok(&tinytune(&[
        "eval",
        "--model",
        a.to_str().unwrap(),
        "--data",
        "sentiment-pairs",
        "--objective",
        "reward",
        "--examples",
        "8",
        "--batch",
        "2",
        "--seq-len",
        "64",
        "--json",
    ]));
    let got: serde_json::Value = serde_json::from_str(&got).unwrap();
    for key in ["accuracy", "margin", "mean_reward"] {
        let (w, g) = (eval["metrics"][key].as_f64().unwrap(), got[key].as_f64().unwrap());
        assert!((w - g).abs() < 1e-4, "{key}: run {w}, eval {g}");
    }
    ok(&reward(&r, &["--stop-after", "3"]));
    ok(&tinytune(&["finetune", "--model", b, "--out", r.to_str().unwrap(), "--resume"]));
    let (x, y) = (step_losses(&a), step_losses(&r));
    assert_eq!(x.len(), 5);
    for (p, q) in x.iter().zip(&y) {
        assert!((p.1 - q.1).abs() < 1e-5, "step {}: {} vs {}", p.0, p.1, q.1);
    }
    fails_with(&tinytune(&["generate", "--model", a.to_str().unwrap(), "--prompt", "text: fun\nfeeling:"]), &["is a reward model", "eval --objective reward"]);
}

/// `finetune --objective grpo` samples groups, logs TRL's rollout metrics on every step and
/// the held-out rewards at each evaluation; with a KL term (beta > 0) it keeps its
/// reference in the checkpoint, and a run stopped after 3 steps resumes to the same losses
/// (the rollouts are a function of the seed, the step and the weights). Bad settings are
/// refused by name.
#[test]
fn grpo_fine_tunes_logs_rewards_and_resumes_with_its_reference() {
    let base = tmp("grpo-base");
    ok(&pretrain(&base, &["--steps", "2"]));
    let b = base.to_str().unwrap();
    let grpo = |out: &Path, extra: &[&str]| {
        let mut args = vec!["finetune", "--model", b, "--out", out.to_str().unwrap(), "--method", "lora", "--lr", "0.01", "--objective", "grpo"];
        let data = if extra.contains(&"--data") { &[][..] } else { &["--data", "sentiment"][..] };
        let batch = if extra.contains(&"--batch") { &[][..] } else { &["--batch", "8"][..] };
        args.extend_from_slice(data);
        args.extend_from_slice(batch);
        args.extend_from_slice(&["--group-size", "4", "--seq-len", "64", "--max-completion-len", "6"]);
        args.extend_from_slice(&["--train-examples", "40", "--eval-examples", "4", "--steps", "5", "--eval-every", "5", "--checkpoint-every", "100"]);
        args.extend_from_slice(extra);
        tinytune(&args)
    };
    let (a, r) = (tmp("grpo-straight"), tmp("grpo-resumed"));
    let out = grpo(&a, &["--beta", "0.04"]);
    ok(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("objective grpo (2 prompts × 4 completions a step"));
    let events: Vec<serde_json::Value> = std::fs::read_to_string(a.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let step = events.iter().find(|v| v["event"] == "step").unwrap();
    for key in ["reward", "reward_std", "frac_reward_zero_std", "completions/mean_length", "kl"] {
        assert!(step["metrics"][key].is_number(), "{key}: {step}");
    }
    let eval = events.iter().rfind(|v| v["event"] == "eval").unwrap();
    assert!(eval["metrics"]["reward"].is_number() && eval["metrics"]["greedy_reward"].is_number(), "{eval}");
    ok(&grpo(&r, &["--beta", "0.04", "--stop-after", "3"]));
    assert!(r.join("checkpoint/reference.safetensors").exists(), "the KL term's reference is saved");
    ok(&tinytune(&["finetune", "--model", b, "--out", r.to_str().unwrap(), "--resume"]));
    let (x, y) = (step_losses(&a), step_losses(&r));
    assert_eq!((x.len(), y.len()), (5, 5));
    for (p, q) in x.iter().zip(&y) {
        assert!((p.1 - q.1).abs() < 1e-6, "step {}: {} vs {}", p.0, p.1, q.1);
    }
    fails_with(&grpo(&tmp("grpo-pairs"), &["--data", "sentiment-pairs"]), &["data", "the task itself"]);
    fails_with(&grpo(&tmp("grpo-batch"), &["--batch", "6"]), &["--batch", "multiple of the group size"]);
    fails_with(&grpo(&tmp("grpo-loss"), &["--grpo-loss", "ppo"]), &["--grpo-loss", "dapo"]);
}

#[test]
fn dpo_fine_tunes_with_lora_logs_trls_metrics_and_resumes() {
    let base = tmp("dpo-base");
    ok(&pretrain(&base, &["--steps", "2"]));
    let b = base.to_str().unwrap();
    let dpo = |out: &Path, extra: &[&str]| {
        let mut args = vec!["finetune", "--model", b, "--out", out.to_str().unwrap(), "--method", "lora", "--lr", "0.01"];
        for (flag, default) in [("--objective", "dpo"), ("--beta", "0.5")] {
            if !extra.contains(&flag) {
                args.extend_from_slice(&[flag, default]);
            }
        }
        args.extend_from_slice(&[
            "--batch",
            "2",
            "--seq-len",
            "64",
            "--train-examples",
            "40",
            "--eval-examples",
            "8",
            "--eval-batches",
            "2",
            "--steps",
            "6",
            "--eval-every",
            "3",
        ]);
        args.extend_from_slice(&["--checkpoint-every", "100"]);
        args.extend_from_slice(extra);
        tinytune(&args)
    };
    let (a, r) = (tmp("dpo-straight"), tmp("dpo-resumed"));
    let out = dpo(&a, &["--data", "sentiment-pairs"]);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    ok(&out);
    assert!(stderr.contains("objective dpo (beta 0.5)"), "{stderr}");
    let evals: Vec<serde_json::Value> = std::fs::read_to_string(a.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["event"] == "eval")
        .collect();
    assert_eq!(evals.len(), 2);
    for key in ["rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected", "logits/chosen"] {
        assert!(evals[1]["metrics"][key].is_number(), "{key} missing: {}", evals[1]);
    }
    // Training steps carry TRL's training metrics; at step 1 policy and reference agree.
    let first_step: serde_json::Value = std::fs::read_to_string(a.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .find(|v: &serde_json::Value| v["event"] == "step")
        .unwrap();
    assert!(first_step["metrics"]["rewards/margins"].as_f64().unwrap().abs() < 1e-4, "{first_step}");
    assert!(first_step["metrics"]["rewards/accuracies"].is_number() && first_step["metrics"]["logps/chosen"].as_f64().unwrap() < 0.0, "{first_step}");
    // Step 1 starts at the reference: every loss is ln 2 before the first update.
    assert!((step_losses(&a)[0].1 - std::f64::consts::LN_2).abs() < 1e-5, "{:?}", step_losses(&a)[0]);
    // Killed after 4 steps (a checkpoint at 3 would do too) and resumed: the same losses.
    ok(&dpo(&r, &["--data", "sentiment-pairs", "--stop-after", "4"]));
    let state = std::fs::read_to_string(r.join("checkpoint/trainer_state.json")).unwrap();
    assert!(state.contains("\"reference\""), "{state}");
    ok(&tinytune(&["finetune", "--model", b, "--out", r.to_str().unwrap(), "--resume"]));
    let (x, y) = (step_losses(&a), step_losses(&r));
    assert_eq!(x.len(), y.len());
    for (p, q) in x.iter().zip(&y) {
        assert!((p.1 - q.1).abs() < 1e-5, "step {}: {} vs {}", p.0, p.1, q.1);
    }
    // A TRL pairs file, with an explicit reference.
    let file = tmp("dpo-pairs.jsonl");
    let lines: Vec<String> = tinytune::data::Task::Sentiment
        .pairs(tinytune::data::PairKind::Correct, 3, tinytune::data::Split::Train, 12)
        .iter()
        .map(|p| serde_json::json!({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}).to_string())
        .collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    let f = tmp("dpo-file");
    ok(&dpo(&f, &["--data", file.to_str().unwrap(), "--reference", b, "--objective", "ipo"]));
    // Pairs need a preference objective, and a preference objective needs pairs.
    fails_with(&dpo(&tmp("dpo-bad1"), &["--data", "sentiment-pairs", "--objective", "next-token"]), &["data", "preference"]);
    fails_with(&dpo(&tmp("dpo-bad2"), &["--data", "sentiment"]), &["data", "sentiment-pairs"]);
    fails_with(&dpo(&tmp("dpo-bad3"), &["--data", "sentiment-pairs", "--beta", "0"]), &["beta"]);
    for d in [&base, &a, &r, &f, &file] {
        let _ = std::fs::remove_dir_all(d);
        let _ = std::fs::remove_file(d);
    }
}

/// `tinytune distill`: a student of micro's shape with two of its layers (initialised from
/// them) trains on micro's distributions, logs the divergence and the next-token loss,
/// records its teacher in train.json, resumes to the same losses (reloading the teacher),
/// and saves a folder the other commands load; bad students are refused by flag.
#[test]
fn distill_trains_a_student_from_a_teacher_and_resumes() {
    let micro = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../assets/micro");
    let m = micro.to_str().unwrap();
    let (a, b) = (tmp("distill-straight"), tmp("distill-resumed"));
    let run = |out: &Path, extra: &[&str]| {
        let mut args = vec!["distill", "--teacher", m, "--student-layers", "2", "--init-from-teacher", "--out", out.to_str().unwrap()];
        args.extend_from_slice(&["--steps", "4", "--batch", "4", "--seq-len", "64", "--train-examples", "100", "--eval-examples", "20", "--eval-batches", "2"]);
        args.extend_from_slice(&["--divergence", "jsd", "--temperature", "1.5", "--alpha", "0.7", "--lmbda", "0.5"]);
        args.extend_from_slice(extra);
        tinytune(&args)
    };
    let out = run(&a, &[]);
    ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("objective distill (jsd beta 0.5, temperature 1.5, alpha 0.7, on the student's own samples with probability 0.5, teacher"),
        "{stderr}"
    );
    assert!(stderr.contains("(initialised from the teacher)"), "{stderr}");
    // loss = α·T²·divergence + (1 − α)·nll, without the nll on the student's own samples
    // (--lmbda: on-policy steps); with --lmbda 0.5 the steps are a mix of both.
    let mut on_policy = vec![];
    for line in std::fs::read_to_string(a.join("metrics.jsonl")).unwrap().lines().filter(|l| l.contains("\"event\":\"step\"")) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let m = &v["metrics"];
        let (loss, div, nll, on) =
            (v["loss"].as_f64().unwrap(), m["divergence"].as_f64().unwrap(), m["nll_loss"].as_f64().unwrap(), m["on_policy"].as_f64().unwrap());
        let expected = 0.7 * 2.25 * div + if on == 1.0 { 0.0 } else { 0.3 * nll };
        assert!((loss - expected).abs() < 1e-4, "{line}");
        on_policy.push(on);
    }
    assert!(on_policy.contains(&0.0) && on_policy.contains(&1.0), "{on_policy:?}");
    let train: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(a.join("checkpoint/train.json")).unwrap()).unwrap();
    assert_eq!(train["objective"]["kind"], "distill");
    assert!(train["teacher"].as_str().unwrap().ends_with("assets/micro"), "{train}");
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(a.join("checkpoint/config.json")).unwrap()).unwrap();
    assert_eq!(config["n_layer"], 2);
    ok(&run(&b, &["--stop-after", "2"]));
    ok(&tinytune(&["distill", "--out", b.to_str().unwrap(), "--resume"]));
    assert_eq!(step_losses(&a), step_losses(&b));
    ok(&tinytune(&["eval", "--model", a.to_str().unwrap(), "--data", "story-qa", "--examples", "8"]));
    // Without --data, eval takes the data the run trained on.
    let out = tinytune(&["eval", "--model", a.to_str().unwrap(), "--examples", "8"]);
    ok(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("evaluating on story-qa, the data the run trained on"), "{out:?}");
    // A student that cannot start from the teacher, or is not named, is refused by flag.
    let c = tmp("distill-bad");
    let bad = |extra: &[&str]| {
        let mut args = vec!["distill", "--teacher", m, "--out", c.to_str().unwrap(), "--steps", "1"];
        args.extend_from_slice(extra);
        tinytune(&args)
    };
    fails_with(&bad(&["--student-preset", "nano", "--init-from-teacher"]), &["--init-from-teacher", "n_embd"]);
    fails_with(&bad(&[]), &["--student"]);
    fails_with(&bad(&["--student-layers", "9"]), &["--student-layers", "1 to 4"]);
    fails_with(&bad(&["--student-layers", "2", "--divergence", "kl"]), &["--divergence", "forward-kl"]);
    fails_with(&bad(&["--student-layers", "2", "--alpha", "1.5"]), &["--alpha"]);
    fails_with(&bad(&["--student-layers", "2", "--lmbda", "0.5", "--data", "stories"]), &["--lmbda", "prompts"]);
    // --teacher-cache: the first run fills the file, the second reads every row from it
    // (and its losses are the first's); a cache made with another teacher is refused.
    let (d, e, cache) = (tmp("distill-cache-1"), tmp("distill-cache-2"), tmp("distill-cache").join("teacher.safetensors"));
    let cached = |out: &Path, teacher: &str| {
        let args =
            ["distill", "--teacher", teacher, "--student-layers", "2", "--out", out.to_str().unwrap(), "--steps", "3", "--batch", "4", "--seq-len", "128"];
        let mut args = args.to_vec();
        args.extend_from_slice(&["--train-examples", "100", "--eval-examples", "8", "--eval-batches", "1", "--teacher-cache", cache.to_str().unwrap()]);
        tinytune(&args)
    };
    ok(&cached(&d, m));
    let out = cached(&e, m);
    ok(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("this run read 12 rows from it and added 0"), "{out:?}");
    let served = |dir: &Path| -> Vec<f64> {
        let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
        text.lines()
            .filter(|l| l.contains("\"event\":\"step\""))
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["metrics"]["teacher_cached"].as_f64().unwrap())
            .collect()
    };
    assert_eq!(served(&e), vec![1.0; 3]);
    assert!(served(&d)[0] == 0.0);
    assert_eq!(step_losses(&d), step_losses(&e));
    let train: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(e.join("checkpoint/train.json")).unwrap()).unwrap();
    assert!(train["teacher_cache"].as_str().unwrap().ends_with("teacher.safetensors"), "{train}");
    fails_with(&cached(&c, a.to_str().unwrap()), &["--teacher-cache", "teacher_sha256", "another teacher"]);
    for d in [&a, &b, &c, &d, &e, &cache.parent().unwrap().to_path_buf()] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// `tinytune prune` on the shipped micro: half of every linear weight zeroed by magnitude,
/// then a structured cut (256 of 512 MLP neurons, 3 of 4 blocks). Each reports counts and
/// held-out losses; the folders load with `eval` and `info` (the eval equals the report),
/// the smaller one fine-tunes, a LoRA run on it is refused until merged, and bad flags are
/// named.
#[test]
fn prune_sparsifies_and_shrinks_micro_and_the_result_loads_and_fine_tunes() {
    let micro = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../assets/micro");
    let m = micro.to_str().unwrap();
    let (sparse, small, run) = (tmp("prune-sparse"), tmp("prune-small"), tmp("prune-run"));
    let (sp, sm) = (sparse.to_str().unwrap(), small.to_str().unwrap());
    let v: serde_json::Value =
        serde_json::from_str(&ok(&tinytune(&["prune", "--model", m, "--out", sp, "--sparsity", "0.5", "--examples", "40", "--json"]))).unwrap();
    let count = |side: &str, key: &str| v[side][key].as_u64().unwrap();
    // micro's blocks: 4 × (c_attn 128×384 + c_proj 128×128 + c_fc 128×512 + c_proj 512×128).
    let linear = 4 * (128 * 384 + 128 * 128 + 2 * 128 * 512);
    assert_eq!(count("before", "parameters"), count("after", "parameters"));
    assert_eq!(count("before", "nonzero") - count("after", "nonzero"), linear / 2, "{v}");
    let after = v["after"]["eval_loss"].as_f64().unwrap();
    let eval = ok(&tinytune(&["eval", "--model", sp, "--data", "story-qa", "--examples", "40", "--accuracy-examples", "0", "--json"]));
    let eval: serde_json::Value = serde_json::from_str(&eval).unwrap();
    assert!((eval["eval_loss"].as_f64().unwrap() - after).abs() < 1e-4, "{eval} vs {after}");

    let text = ok(&tinytune(&["prune", "--model", m, "--out", sm, "--neurons", "256", "--layers", "3", "--examples", "40", "--calibration-batches", "2"]));
    assert!(text.contains("4 → 3 blocks") && text.contains("512 → 256 neurons") && text.contains("held-out story-qa loss"), "{text}");
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(small.join("config.json")).unwrap()).unwrap();
    assert_eq!((config["n_layer"].as_u64(), config["n_inner"].as_u64(), config["n_head"].as_u64()), (Some(3), Some(256), Some(4)), "{config}");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(small.join("prune.json")).unwrap()).unwrap();
    let s = &report["structured"];
    assert_eq!(s["layers_removed"].as_array().unwrap().len(), 1);
    for l in s["layers"].as_array().unwrap() {
        assert_eq!(l["neurons"].as_array().unwrap().len(), 512, "an importance per neuron, for the heat map");
        assert_eq!(l["neurons_removed"].as_array().unwrap().len(), 256);
        assert!(l["block_influence"].as_f64().unwrap() > 0.0);
    }
    let info: serde_json::Value = serde_json::from_str(&ok(&tinytune(&["info", "--model", sm, "--json"]))).unwrap();
    assert_eq!(info["total"], report["after"]["parameters"]);
    let args = ["--data", "sentiment", "--batch", "4", "--seq-len", "48", "--train-examples", "40", "--eval-examples", "8", "--eval-batches", "1"];
    let mut finetune = vec!["finetune", "--model", sm, "--out", run.to_str().unwrap(), "--steps", "2", "--method", "lora"];
    finetune.extend_from_slice(&args);
    ok(&tinytune(&finetune));
    assert_eq!(step_losses(&run).len(), 2);

    let bad = |extra: &[&str]| {
        let mut a = vec!["prune", "--model", m, "--out", "/nonexistent/prune-bad"];
        a.extend_from_slice(extra);
        tinytune(&a)
    };
    fails_with(&tinytune(&["prune", "--model", run.to_str().unwrap(), "--out", "/nonexistent/x", "--sparsity", "0.5"]), &["lora", "merge-adapter"]);
    fails_with(&bad(&["--sparsity", "0.5", "--layers", "3"]), &["--sparsity", "--layers"]);
    fails_with(&bad(&["--heads", "2"]), &["--heads", "head_dim", "GPT-2"]);
    fails_with(&bad(&["--pattern", "4:4"]), &["--pattern", "smaller than M"]);
    fails_with(&bad(&["--sparsity", "1.5"]), &["--sparsity", "[0, 1)"]);
    fails_with(&bad(&["--neurons", "600"]), &["--neurons", "512"]);
    fails_with(&tinytune(&["prune", "--model", m, "--out", sp, "--sparsity", "0.5"]), &["--out", "not empty"]);
    for d in [&sparse, &small, &run] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// A PiSSA run's adapter exports as PEFT's conversion: an ordinary rank-2r LoRA of the
/// original base (refused, with the reason, without --pissa-base), which on that base gives
/// the run's own logits (PEFT 0.21 agrees: checked by hand with check_peft_adapter.py, 2.4e-7);
/// a QLoRA export carries a README saying it was trained against an NF4 base.
#[test]
fn a_pissa_run_exports_as_a_lora_of_the_original_base() {
    let (base, run, out, q, qout) = (tmp("pissa-base"), tmp("pissa-run"), tmp("pissa-peft"), tmp("qlora-run"), tmp("qlora-peft"));
    ok(&pretrain(&base, &["--steps", "2"]));
    let small =
        ["--data", "stories", "--batch", "4", "--seq-len", "32", "--train-examples", "100", "--eval-examples", "20", "--eval-batches", "2", "--steps", "4"];
    let (b, r, o) = (base.to_str().unwrap(), run.to_str().unwrap(), out.to_str().unwrap());
    let mut args =
        vec!["finetune", "--model", b, "--out", r, "--method", "lora", "--lora-init", "pissa", "--rank", "4", "--targets", "all-linear", "--lr", "1e-2"];
    args.extend_from_slice(&small);
    ok(&tinytune(&args));
    fails_with(&tinytune(&["export-adapter", "--model", r, "--out", o]), &["PiSSA", "--pissa-base", "rank-8"]);
    ok(&tinytune(&["export-adapter", "--model", r, "--out", o, "--pissa-base", b]));
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!((config["r"].as_u64(), config["lora_alpha"].as_f64()), (Some(8), Some(16.0)), "{config}");
    let logits = |extra: &[&str]| -> Vec<f64> {
        let mut args = vec!["logits", "--prompt", "the cat sat"];
        args.extend_from_slice(extra);
        let v: serde_json::Value = serde_json::from_str(&ok(&tinytune(&args))).unwrap();
        v["logits"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
    };
    let (trained, converted, plain) = (logits(&["--model", r]), logits(&["--model", b, "--adapter", o]), logits(&["--model", b]));
    let worst = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    assert!(worst(&trained, &converted) < 1e-4, "converted adapter differs by {}", worst(&trained, &converted));
    assert!(worst(&trained, &plain) > 1e-2, "the run changed nothing, so the check proves nothing");
    fails_with(&tinytune(&["export-adapter", "--model", b, "--out", qout.to_str().unwrap(), "--pissa-base", b]), &["--pissa-base", "not a PiSSA"]);
    let mut args = vec!["finetune", "--model", b, "--out", q.to_str().unwrap(), "--method", "qlora", "--rank", "4"];
    args.extend_from_slice(&small);
    ok(&tinytune(&args));
    ok(&tinytune(&["export-adapter", "--model", q.to_str().unwrap(), "--out", qout.to_str().unwrap()]));
    assert!(std::fs::read_to_string(qout.join("README.md")).unwrap().contains("NF4"));
    for d in [&base, &run, &out, &q, &qout] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// Prune, then distill (the Minitron recipe): micro cut to 3 layers and 256 MLP neurons
/// (55% of its parameters) loses held-out loss on stories, and 12 steps distilled from the
/// unpruned micro win most of it back (measured 0.6365 → 0.7159 → 0.6464). Also: one
/// calibration batch of stories is enough (the stories drawn fill it).
#[test]
fn prune_then_distill_recovers_the_loss() {
    let micro = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../assets/micro");
    let m = micro.to_str().unwrap();
    let (pruned, student) = (tmp("pd-pruned"), tmp("pd-student"));
    let (p, s) = (pruned.to_str().unwrap(), student.to_str().unwrap());
    ok(&tinytune(&[
        "prune",
        "--model",
        m,
        "--out",
        p,
        "--neurons",
        "256",
        "--layers",
        "3",
        "--data",
        "stories",
        "--calibration-batches",
        "1",
        "--examples",
        "100",
    ]));
    ok(&tinytune(&[
        "distill",
        "--teacher",
        m,
        "--student",
        p,
        "--data",
        "stories",
        "--steps",
        "12",
        "--batch",
        "8",
        "--seq-len",
        "64",
        "--train-examples",
        "200",
        "--eval-examples",
        "100",
        "--eval-batches",
        "2",
        "--eval-every",
        "0",
        "--alpha",
        "0.5",
        "--out",
        s,
    ]));
    let loss = |dir: &str| -> f64 {
        let v: serde_json::Value = serde_json::from_str(&ok(&tinytune(&["eval", "--model", dir, "--data", "stories", "--examples", "100", "--json"]))).unwrap();
        v["eval_loss"].as_f64().unwrap()
    };
    let (teacher, cut, recovered) = (loss(m), loss(p), loss(s));
    assert!(cut > teacher + 0.03, "pruning cost little: {teacher} → {cut}");
    assert!(recovered < cut - 0.03, "distillation did not recover: {cut} → {recovered} (teacher {teacher})");
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(student.join("checkpoint/config.json")).unwrap()).unwrap();
    assert_eq!((config["n_layer"].as_u64(), config["n_inner"].as_u64()), (Some(3), Some(256)), "the student keeps the pruned shape");
    for d in [&pruned, &student] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// With --lr left out, finetune and compare take the method's suggested rate with AdamW
/// (`MethodKind::suggested_lr`, scripts/lr-sweep.sh) and another optimizer's own, and
/// record it in train.json and compare's rows; --lr still wins.
#[test]
fn the_default_learning_rate_follows_the_method_and_the_optimizer() {
    let micro = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../assets/micro");
    let m = micro.to_str().unwrap();
    let cases: [(&[&str], f64); 5] = [
        (&[], 3e-4),
        (&["--method", "lora"], 3e-3),
        (&["--method", "ia3"], 3e-1),
        (&["--optimizer", "sgd"], 0.1),
        (&["--method", "lora", "--lr", "5e-4"], 5e-4),
    ];
    for (i, (extra, lr)) in cases.into_iter().enumerate() {
        let out = tmp(&format!("default-lr-{i}"));
        let mut args = vec!["finetune", "--model", m, "--out", out.to_str().unwrap(), "--steps", "1", "--batch", "4", "--eval-batches", "1"];
        args.extend_from_slice(extra);
        ok(&tinytune(&args));
        let train: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("checkpoint/train.json")).unwrap()).unwrap();
        assert_eq!(train["lr"].as_f64(), Some(lr), "{extra:?}");
        let _ = std::fs::remove_dir_all(&out);
    }
    let out = tmp("default-lr-compare");
    let rows = ok(&tinytune(&[
        "compare",
        "--model",
        m,
        "--methods",
        "full,prompt,lora@1e-3",
        "--out",
        out.to_str().unwrap(),
        "--steps",
        "1",
        "--batch",
        "4",
        "--eval-batches",
        "1",
        "--json",
    ]));
    let rows: serde_json::Value = serde_json::from_str(&rows).unwrap();
    let lrs: Vec<f64> = rows.as_array().unwrap().iter().map(|r| r["lr"].as_f64().unwrap()).collect();
    assert_eq!(lrs, vec![3e-4, 1e-1, 1e-3]);
    let _ = std::fs::remove_dir_all(&out);
}

/// Copies a folder tree (the fixtures) so a test can alter one file.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// `tinytune verify` runs the registry's reference checks and prints one row each; a
/// fixture altered in one value makes exactly that check fail, naming it, with exit 1; a
/// missing fixture file is named; --json carries every outcome; an unknown --check is
/// refused with the groups.
#[test]
fn verify_runs_the_reference_checks_and_fails_on_an_altered_fixture() {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
    let f = fixtures.to_str().unwrap();
    let text = ok(&tinytune(&["verify", "--fixtures", f, "--check", "transformers/gpt2", "--check", "deepspeed"]));
    assert!(text.contains("transformers/gpt2") && text.contains("transformers 5.23.0") && text.contains("deepspeed/zero3"), "{text}");
    assert!(text.contains("3 of 3 checks passed on flex"), "{text}");
    let listed = ok(&tinytune(&["verify", "--list"]));
    assert!(listed.lines().count() >= 50 && listed.contains("bitsandbytes/nf4-b64-dq") && listed.contains("bnb-4bit/cases.safetensors"), "{listed}");
    // The README's table (`tinytune verify --markdown`) lists every check.
    let readme = std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../README.md")).unwrap();
    for name in listed.lines().filter_map(|l| l.split_whitespace().next()) {
        assert!(readme.contains(&format!("| `{name}` |")), "README.md's reference-check table lacks {name}: rerun tinytune verify --markdown");
    }

    // One logit of transformers' GPT-2 reference moved by 0.01.
    let copy = tmp("verify-fixtures");
    copy_tree(&fixtures, &copy);
    let reference = copy.join("hf-reference.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&reference).unwrap()).unwrap();
    let first = &mut v["cases"][0]["variants"]["base"]["logits"][0];
    *first = serde_json::json!(first.as_f64().unwrap() + 0.01);
    std::fs::write(&reference, v.to_string()).unwrap();
    let c = copy.to_str().unwrap();
    let out = tinytune(&["verify", "--fixtures", c, "--check", "transformers/gpt2", "--check", "peft/lora", "--check", "bitsandbytes/nf4-b64-plain"]);
    fails_with(&out, &["1 of 3 reference checks failed: transformers/gpt2"]);
    let table = String::from_utf8_lossy(&out.stdout);
    let row = |name: &str| table.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("no row {name}: {table}")).to_string();
    assert!(row("transformers/gpt2").contains("FAIL") && row("transformers/gpt2").contains("1.0e-2"), "{table}");
    assert!(row("peft/lora").contains("pass") && row("bitsandbytes/nf4-b64-plain").contains("pass"), "{table}");

    // A missing file is named in the check's row and the check fails.
    std::fs::remove_file(copy.join("bnb-4bit/cases.safetensors")).unwrap();
    let out = tinytune(&["verify", "--fixtures", c, "--check", "bitsandbytes/nf4-b64-plain", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((v["passed"].as_u64(), v["failed"].as_u64()), (Some(0), Some(1)));
    assert!(v["checks"][0]["detail"].as_str().unwrap().contains("bnb-4bit/cases.safetensors: cannot read the fixture"), "{v}");
    fails_with(&tinytune(&["verify", "--check", "nope"]), &["--check nope", "bitsandbytes", "peft"]);
    fails_with(&tinytune(&["verify", "--fixtures", "/no/such/folder"]), &["--fixtures /no/such/folder"]);
    let _ = std::fs::remove_dir_all(&copy);
}
