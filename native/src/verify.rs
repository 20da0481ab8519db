//! `tinytune verify`: every reference check of `tinytune::verify` on the chosen backend, as
//! one table (or JSON, or Markdown for the README); exit 1 when any fails.

use std::path::PathBuf;

use burn::tensor::Device;
use clap::Args;
use tinytune::verify::{self, Fixtures, Outcome, Target};

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The fixtures folder [default: tests/fixtures under the current folder, else the
    /// source tree's].
    #[arg(long)]
    pub fixtures: Option<PathBuf>,
    /// Run only this check or group (repeatable): `peft`, `peft/lora`, `deepspeed`.
    #[arg(long = "check", value_name = "NAME")]
    pub checks: Vec<String>,
    /// List the checks and their fixtures without running them.
    #[arg(long)]
    pub list: bool,
    /// Print one JSON object (every check's outcome) instead of the table.
    #[arg(long, conflicts_with = "markdown")]
    pub json: bool,
    /// Print the table as Markdown (the README's "How we know" section).
    #[arg(long)]
    pub markdown: bool,
}

/// A fixtures folder on disk (the repository's `tests/fixtures`, or a copy).
struct Dir(PathBuf);

impl Fixtures for Dir {
    fn read(&self, path: &str) -> Result<Vec<u8>, String> {
        let full = self.0.join(path);
        std::fs::read(&full).map_err(|e| {
            format!(
                "{}: cannot read the fixture ({e}); point --fixtures at a copy of the repository's tests/fixtures, or remake it with the script named in README.md",
                full.display()
            )
        })
    }
}

/// The fixtures folder: the one given, else ./tests/fixtures, else the source tree's.
fn fixtures_dir(given: Option<PathBuf>) -> Result<PathBuf, String> {
    if let Some(dir) = given {
        return if dir.is_dir() { Ok(dir) } else { Err(format!("--fixtures {}: no such folder", dir.display())) };
    }
    let here = PathBuf::from("tests/fixtures");
    let source = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures"));
    [here, source].into_iter().find(|d| d.is_dir()).ok_or_else(|| {
        "tests/fixtures: not found here or in the source tree this binary was built from; run tinytune verify from the repository root, or pass --fixtures DIR (a copy of the repository's tests/fixtures)".to_string()
    })
}

pub fn verify_cmd(a: VerifyArgs, backend: crate::backend::Backend, device: &Device) -> Result<(), String> {
    let checks = verify::select(&a.checks)?;
    if a.list {
        for c in &checks {
            println!("{:<36} {:<13} {:<34} {}", c.name, c.library, c.tolerance.to_string(), c.files.join(" "));
        }
        return Ok(());
    }
    let dir = fixtures_dir(a.fixtures)?;
    let fixtures = Dir(dir.clone());
    // Natively every backend can read back synchronously; the host parts run on the CPU
    // backend when it is built in, as they do in the page.
    let host = crate::backend::device(crate::backend::Backend::Flex).unwrap_or_else(|_| device.clone());
    let target = Target { device: device.clone(), host };
    let table = !a.json && !a.markdown;
    if table {
        println!("Reference checks on {backend}, fixtures from {}:\n", dir.display());
        println!("{:<36} {:<22} {:<34} {:>10}  {:<6} detail", "check", "reference", "tolerance", "measured", "result");
    }
    let bar = (table && crate::progress::on_terminal()).then(|| crate::progress::bar(checks.len() as u64, "verify"));
    let start = std::time::Instant::now();
    let mut outcomes = Vec::new();
    for c in &checks {
        if let Some(bar) = &bar {
            bar.set_message(c.name.clone());
        }
        let o = verify::run(c, &fixtures, &target);
        if table {
            let line = row(&o);
            match &bar {
                Some(bar) => bar.println(line),
                None => println!("{line}"),
            }
        }
        if let Some(bar) = &bar {
            bar.inc(1);
        }
        outcomes.push(o);
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| !o.passed).collect();
    let seconds = start.elapsed().as_secs_f64();
    if a.json {
        let v = serde_json::json!({
            "backend": backend.to_string(),
            "fixtures": dir.display().to_string(),
            "passed": outcomes.len() - failed.len(),
            "failed": failed.len(),
            "seconds": seconds,
            "checks": outcomes,
        });
        println!("{}", serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?);
    } else if a.markdown {
        print!("{}", markdown(&outcomes, &backend.to_string()));
    } else {
        println!("\n{} of {} checks passed on {backend} in {seconds:.1} s.", outcomes.len() - failed.len(), outcomes.len());
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} of {} reference checks failed: {}",
            failed.len(),
            outcomes.len(),
            failed.iter().map(|o| o.name.as_str()).collect::<Vec<_>>().join(", ")
        ))
    }
}

fn row(o: &Outcome) -> String {
    let result = if o.passed { "pass" } else { "FAIL" };
    format!("{:<36} {:<22} {:<34} {:>10}  {:<6} {}", o.name, o.reference, o.tolerance_text, o.measured(), result, o.detail)
}

/// The README's table: one row per check, then how to regenerate the fixtures.
fn markdown(outcomes: &[Outcome], backend: &str) -> String {
    let mut s = format!("`tinytune verify` on {backend}:\n\n| check | reference | tolerance | measured | result |\n|---|---|---|---|---|\n");
    for o in outcomes {
        s.push_str(&format!(
            "| `{}` | {} | {} | {} | {} |\n",
            o.name,
            o.reference,
            o.tolerance_text.replace('|', "\\|"),
            o.measured(),
            if o.passed { "pass" } else { "**FAIL**" }
        ));
    }
    // One line per fixture script: the libraries it recorded and the checks it feeds.
    let mut scripts: std::collections::BTreeMap<&str, (String, Vec<&str>)> = std::collections::BTreeMap::new();
    for o in outcomes {
        let versions = o.versions.iter().map(|(lib, v)| format!("{lib} {v}")).collect::<Vec<_>>().join(", ");
        let entry = scripts.entry(o.script.as_str()).or_insert((versions, Vec::new()));
        entry.1.push(o.name.as_str());
    }
    s.push_str("\nTo regenerate a fixture, run its script with those library versions (e.g. in a venv: `pip install torch transformers peft trl bitsandbytes mergekit deepspeed`):\n\n");
    for (script, (versions, names)) in scripts {
        let shown = if names.len() > 3 { format!("{} and {} more", names[..2].join(", "), names.len() - 2) } else { names.join(", ") };
        s.push_str(&format!("- `python {script}` — {versions} ({shown})\n"));
    }
    s
}
