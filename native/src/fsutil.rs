//! File helpers that never lose work: every file is written to a temporary name in the same
//! folder, synced, then renamed over the target, so a reader sees the old file or the new
//! one and never half of either. Checkpoints are whole folders swapped the same way.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| format!("{}: cannot create folder: {e}", dir.display()))?;
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        fault::before_write(bytes.len())?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        format!("{}: cannot write: {e}", path.display())
    })
}

/// A fault for tests: `TINYTUNE_FAULT_WRITE_LIMIT=N` makes writes fail as a full disk
/// would (ENOSPC) once the process has written N bytes through [`write_atomic`], so the
/// tests can check what a full disk leaves behind without mounting a small file system.
mod fault {
    use std::sync::atomic::{AtomicU64, Ordering};

    static WRITTEN: AtomicU64 = AtomicU64::new(0);

    pub fn before_write(len: usize) -> std::io::Result<()> {
        let Some(limit) = std::env::var("TINYTUNE_FAULT_WRITE_LIMIT").ok().and_then(|v| v.parse::<u64>().ok()) else { return Ok(()) };
        if WRITTEN.fetch_add(len as u64, Ordering::Relaxed) + len as u64 > limit {
            return Err(std::io::Error::from_raw_os_error(28)); // ENOSPC: No space left on device
        }
        Ok(())
    }
}

/// Creates the folder `out` holding `files` (name, bytes): written into a staging folder
/// beside it and renamed, so `out` is either complete or absent.
pub fn write_new_folder(out: &Path, files: &[(&str, &[u8])]) -> Result<(), String> {
    let staging = out.with_extension("tmp");
    let _ = fs::remove_dir_all(&staging);
    for (name, bytes) in files {
        write_atomic(&staging.join(name), bytes)?;
    }
    fs::rename(&staging, out).map_err(|e| format!("{}: cannot create: {e}", out.display()))
}

/// Makes a rename in `dir` durable: without syncing the folder, a power cut can undo it.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    fs::File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Reads a file, naming it in the error.
pub fn read(path: &Path) -> Result<Vec<u8>, String> {
    fs::read(path).map_err(|e| pickle_instead(path).unwrap_or_else(|| format!("{}: cannot read: {e}", path.display())))
}

/// File endings of PyTorch pickle checkpoints, which tinytune never opens.
const PICKLES: [&str; 4] = [".bin", ".pt", ".pth", ".ckpt"];

/// Whether `path` names a pickle checkpoint (`pytorch_model.bin`, `model.pt`, ...).
pub fn is_pickle(path: &Path) -> bool {
    let name = path.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
    PICKLES.iter().any(|end| name.ends_with(end))
}

/// When a wanted `.safetensors` file is missing and its folder holds a pickle checkpoint
/// instead: a message that says pickles are refused, why, and the one-line conversion.
fn pickle_instead(wanted: &Path) -> Option<String> {
    if wanted.extension().is_none_or(|e| e != "safetensors") {
        return None;
    }
    let dir = wanted.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut found: Vec<PathBuf> = fs::read_dir(dir).ok()?.flatten().map(|e| e.path()).filter(|p| p.is_file() && is_pickle(p)).collect();
    found.sort();
    let first = found.first()?;
    Some(refuse_pickle(first))
}

/// The error for a pickle checkpoint at `path`, with the conversion for its kind.
pub fn refuse_pickle(path: &Path) -> String {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")).display().to_string();
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let convert = if name.starts_with("adapter_model") {
        format!(
            "python -c \"import torch; from safetensors.torch import save_file; save_file(torch.load('{dir}/{name}', weights_only=True), '{dir}/adapter_model.safetensors')\""
        )
    } else {
        format!(
            "python -c \"from transformers import AutoModelForCausalLM as M; M.from_pretrained('{dir}').save_pretrained('{dir}')\" (transformers writes model.safetensors)"
        )
    };
    format!(
        "{}: a PyTorch pickle checkpoint; tinytune never opens pickles, because loading one can run any code it contains. Convert it to safetensors once: {convert}",
        path.display()
    )
}

pub fn read_text(path: &Path) -> Result<String, String> {
    fs::read_to_string(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))
}

/// The checkpoint folder of a run, and where it is staged and retired.
pub struct CheckpointDirs {
    pub current: PathBuf,
    pub staging: PathBuf,
    pub retired: PathBuf,
}

impl CheckpointDirs {
    pub fn new(run: &Path) -> Self {
        Self { current: run.join("checkpoint"), staging: run.join(".checkpoint.tmp"), retired: run.join(".checkpoint.old") }
    }

    /// Replaces the checkpoint with the files given, so that at every instant one complete
    /// checkpoint exists on disk: staged folder written and synced, the old one moved
    /// aside, the new one renamed into place, then the old one removed. If the process dies
    /// between the two renames, `existing()` finds the retired one.
    pub fn commit(&self, files: &[(&str, Vec<u8>)]) -> Result<(), String> {
        let _ = fs::remove_dir_all(&self.staging);
        if let Err(e) = files.iter().try_for_each(|(name, bytes)| write_atomic(&self.staging.join(name), bytes)) {
            // A full disk or a failing write: drop the half-written copy (freeing its
            // space) and leave the last complete checkpoint as it was.
            let _ = fs::remove_dir_all(&self.staging);
            let kept = match self.existing() {
                Some(dir) => format!("the last complete checkpoint, {}, is intact", dir.display()),
                None => "no earlier checkpoint existed".to_string(),
            };
            return Err(format!("saving the checkpoint failed ({e}); {kept}"));
        }
        let io = |e: std::io::Error| format!("{}: cannot swap checkpoint folders: {e}", self.current.display());
        if self.current.exists() {
            let _ = fs::remove_dir_all(&self.retired);
            fs::rename(&self.current, &self.retired).map_err(io)?;
        }
        fs::rename(&self.staging, &self.current).map_err(io)?;
        if let Some(run) = self.current.parent() {
            sync_dir(run).map_err(io)?;
        }
        let _ = fs::remove_dir_all(&self.retired);
        Ok(())
    }

    /// The newest complete checkpoint, if any.
    pub fn existing(&self) -> Option<&Path> {
        [&self.current, &self.retired].into_iter().find(|d| d.join("trainer_state.json").exists()).map(|p| p.as_path())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_replaces_whole_folders_and_survives_a_crash_between_renames() {
        let run = std::env::temp_dir().join(format!("tinytune-fsutil-{}", std::process::id()));
        let _ = fs::remove_dir_all(&run);
        let dirs = CheckpointDirs::new(&run);
        assert!(dirs.existing().is_none());
        dirs.commit(&[("trainer_state.json", b"1".to_vec()), ("a", b"one".to_vec())]).unwrap();
        dirs.commit(&[("trainer_state.json", b"2".to_vec())]).unwrap();
        assert_eq!(fs::read(dirs.current.join("trainer_state.json")).unwrap(), b"2");
        assert!(!dirs.current.join("a").exists(), "no file of the old checkpoint survives");
        // Simulate death after `current` was moved aside but before staging was renamed in.
        fs::rename(&dirs.current, &dirs.retired).unwrap();
        assert_eq!(dirs.existing().unwrap(), dirs.retired.as_path());
        dirs.commit(&[("trainer_state.json", b"3".to_vec())]).unwrap();
        assert_eq!(dirs.existing().unwrap(), dirs.current.as_path());
        fs::remove_dir_all(&run).unwrap();
    }
}
