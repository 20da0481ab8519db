//! The `tinytune` command. Parses flags, picks the backend once, runs a command, and turns
//! every error into one clear line on stderr and a non-zero exit code.

mod backend;
mod cli;
mod commands;
mod compare;
mod devmem;
mod flags;
mod formats;
mod fsutil;
mod interrupt;
mod long_context;
mod memory;
mod model_dir;
mod plot;
mod precision;
mod progress;
mod prune;
mod serve;
mod train;
mod verify;

use std::process::ExitCode;

/// Counts heap bytes so `tinytune memory --measure` can report a real step's allocations.
#[global_allocator]
static ALLOC: tinytune::memory::CountingAlloc = tinytune::memory::CountingAlloc;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    restore_sigpipe();
    keep_freed_memory();
    // TINYTUNE_FUSED=0 runs the plain compositions instead of the fused CPU kernels (for
    // comparing the two; tinytune::kernels).
    if std::env::var_os("TINYTUNE_FUSED").is_some_and(|v| v == "0") {
        tinytune::kernels::set_enabled(false);
    }
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    let mut cli = <Cli as clap::FromArgMatches>::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // What a resumed run was given besides --out and --resume (its train.json wins).
    if let (Some((_, sub)), Some(train)) = (matches.subcommand(), cli.command.train_args_mut()) {
        train.given = cli::given_on_command_line(sub);
    }
    backend::select(cli.backend);
    let device = match backend::device(cli.backend) {
        Ok(d) => d,
        Err(e) => return fail(&e),
    };
    let result = match cli.command {
        Command::Pretrain(a) => train::pretrain(a, &device),
        Command::Finetune(a) => train::finetune(a, &device),
        Command::Generate(a) => commands::generate_cmd(a, &device),
        Command::Eval(a) => commands::eval_cmd(a, &device),
        Command::Info(a) => commands::info_cmd(a, &device),
        Command::Bench(a) => commands::bench_cmd(a, &device),
        Command::Demo(a) => commands::demo_cmd(a, &device),
        Command::Memory(a) => memory::memory_cmd(a, &device),
        Command::Formats(c) => formats::formats_cmd(c),
        Command::Quantize(a) => formats::quantize_cmd(a, &device),
        Command::LossScale(a) => precision::loss_scale_cmd(a, &device),
        Command::Compare(a) => compare::compare_cmd(a, &device),
        Command::MergeAdapter(a) => commands::merge_adapter_cmd(a, &device),
        Command::ExportAdapter(a) => commands::export_adapter_cmd(a, &device),
        Command::Logits(a) => commands::logits_cmd(a, &device),
        Command::LoraRank(a) => commands::lora_rank_cmd(a, &device),
        Command::LongContext(a) => long_context::long_context_cmd(a, &device),
        Command::Import(cli::ImportCommand::Gguf(a)) => model_dir::import_gguf(&a.file, &a.out, &device),
        Command::Merge(a) => commands::merge_cmd(a, &device),
        Command::MergeStudy(a) => commands::merge_study_cmd(a, &device),
        Command::CombineAdapters(a) => commands::combine_adapters_cmd(a, &device),
        Command::Serve(a) => serve::serve_cmd(a, &device),
        Command::Federated(a) => commands::federated_cmd(a, &device),
        Command::Prune(a) => prune::prune_cmd(a, &device),
        Command::Distill(a) => train::distill(a, &device),
        Command::Verify(a) => verify::verify_cmd(a, cli.backend, &device),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // Stopped by Ctrl-C (after saving): 130 = 128 + SIGINT, the shell's convention.
        Err(e) if interrupt::requested() => {
            fail(&e);
            ExitCode::from(130)
        }
        Err(e) => fail(&e),
    }
}

/// Rust ignores SIGPIPE, so `tinytune info | head` would panic when `head` closes the pipe.
/// Restoring the default makes the process end quietly instead, as Unix tools do.
fn restore_sigpipe() {
    #[cfg(unix)]
    // SAFETY: called first thing in main, before any thread exists; SIG_DFL is always valid.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// glibc serves every buffer past 128 KiB with its own `mmap` and returns it with `munmap`,
/// so each matmul result (megabytes) page-faults its whole output anew; and it gives the
/// heap's top back to the system past a trim threshold, with the same effect. Serving
/// buffers up to 32 MiB (the most glibc 2.35+ accepts on 64-bit) from the heap and never
/// trimming it makes training on the CPU much faster (`scripts/bench-cpu.sh` measures it).
/// `TINYTUNE_MALLOC=system` keeps glibc's defaults (for comparing the two).
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("TINYTUNE_MALLOC").is_none_or(|v| v != "system") {
        // SAFETY: mallopt only changes glibc's thresholds; called before any thread exists.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        }
    }
}

/// Every error ends here: core's field names become flags (`flags::render`).
fn fail(message: &str) -> ExitCode {
    eprintln!("error: {}", flags::render(message));
    ExitCode::FAILURE
}
