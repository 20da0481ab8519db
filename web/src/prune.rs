//! Settings of the `prune` widget, the plan and the `tinytune prune` command each of its
//! rows stands for, and the heat maps' data. The worker prunes the shipped micro model with
//! `tinytune::prune` at every sparsity of the sweep and measures each result exactly as
//! `tinytune prune` does: the same held-out stories, batches of [`ROWS`], calibration data
//! and seed, so the printed command gives the row's held-out loss.

use crate::settings::{Field, Settings, assign, float, int, one_of};
use serde::{Deserialize, Serialize};
use tinytune::ModelConfig;
use tinytune::prune::structured::LayerReport;
use tinytune::prune::{Criterion, MatrixReport, Pattern, Plan, Scope, Structured, Target, Unstructured};

/// The widget's methods: single weights by magnitude or Wanda, the 2:4 pattern with either
/// score, and structured pruning of MLP neurons.
pub const METHODS: [&str; 5] = ["magnitude", "wanda", "2:4", "2:4-wanda", "structured"];
/// Where magnitude's threshold applies.
pub const SCOPES: [&str; 2] = ["layer", "global"];
/// Held-out stories (`--examples`): their token stream fills two batches of [`ROWS`]
/// windows of 128 tokens.
pub const EXAMPLES: usize = 100;
/// Batches of [`ROWS`] rows the activations are measured on (`--calibration-batches`).
pub const CALIBRATION_BATCHES: usize = 1;
/// Rows per held-out and calibration batch, as `tinytune prune` takes them.
pub const ROWS: usize = 16;
/// Tokens of each row's greedy sample.
pub const SAMPLE_TOKENS: usize = 32;
/// The most sparsities one sweep may list.
pub const MAX_SWEEP: usize = 6;
/// MLP neurons per cell of the structured heat map.
pub const NEURON_BIN: usize = 8;

/// Settings of the `prune` widget.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PruneParams {
    /// One of [`METHODS`].
    pub method: String,
    /// The row the heat map and the command show (the 2:4 pattern is always 0.5).
    pub sparsity: f64,
    /// One of [`SCOPES`]; magnitude only.
    pub scope: String,
    /// Sparsities to compare, comma-separated (the chosen one is always among them).
    pub sweep: String,
    /// The start of every row's greedy sample.
    pub prompt: String,
    /// Seed of the calibration data (Wanda and structured).
    pub seed: u64,
}

impl Default for PruneParams {
    fn default() -> Self {
        Self {
            method: "magnitude".into(),
            sparsity: 0.5,
            scope: "layer".into(),
            sweep: "0.25,0.5,0.75,0.9".into(),
            prompt: "one day, lily went to the park.".into(),
            seed: 0,
        }
    }
}

/// micro's MLP width: what the structured rows' shares are of.
pub fn micro_inner() -> usize {
    ModelConfig::micro().inner()
}

/// The values of a sweep, each a sparsity the widget accepts; at least one, at most
/// [`MAX_SWEEP`].
pub fn parse_sweep(text: &str) -> Result<Vec<f64>, String> {
    let values = text.split(',').map(|v| float(v.trim(), 0.01, 0.95)).collect::<Result<Vec<f64>, String>>()?;
    if values.len() > MAX_SWEEP {
        return Err(format!("list at most {MAX_SWEEP} sparsities (each row prunes and evaluates the model once)"));
    }
    Ok(values)
}

impl PruneParams {
    /// An N:M pattern: its sparsity is fixed at 0.5.
    pub fn is_pattern(&self) -> bool {
        self.method.starts_with("2:4")
    }

    /// Whether the method reads activations on calibration batches.
    pub fn calibrates(&self) -> bool {
        self.method.contains("wanda") || self.method == "structured"
    }

    /// Whether `scope` applies (magnitude alone has a global threshold).
    pub fn scoped(&self) -> bool {
        self.method == "magnitude"
    }

    /// The sparsity of the row the heat map and the command show.
    pub fn chosen(&self) -> f64 {
        if self.is_pattern() { 0.5 } else { self.sparsity }
    }

    /// The pruned rows, in rising order: the sweep with the chosen sparsity, each once (a
    /// pattern's one row is 0.5).
    pub fn sparsities(&self) -> Vec<f64> {
        if self.is_pattern() {
            return vec![0.5];
        }
        let mut v = parse_sweep(&self.sweep).unwrap_or_default();
        v.push(self.sparsity);
        v.sort_by(f64::total_cmp);
        v.dedup();
        v
    }

    /// MLP neurons kept per block when structured pruning removes the share `sparsity`.
    pub fn neurons_kept(sparsity: f64) -> usize {
        ((1.0 - sparsity) * micro_inner() as f64).round().max(1.0) as usize
    }

    /// The core's plan for the row at `sparsity`.
    pub fn plan(&self, sparsity: f64) -> Plan {
        let criterion = if self.method.contains("wanda") { Criterion::Wanda } else { Criterion::Magnitude };
        let scope = if self.scoped() && self.scope == "global" { Scope::Global } else { Scope::Layer };
        match self.method.as_str() {
            "structured" => Plan::Structured(Structured { neurons: Some(Self::neurons_kept(sparsity)), ..Structured::default() }),
            _ if self.is_pattern() => Plan::Unstructured(Unstructured { criterion, target: Target::Pattern(Pattern { n: 2, m: 4 }), scope }),
            _ => Plan::Unstructured(Unstructured { criterion, target: Target::Sparsity(sparsity), scope }),
        }
    }

    /// The native command that prunes the row at `sparsity` and reports its held-out loss
    /// as the widget measures it.
    pub fn command(&self, sparsity: f64) -> String {
        let mut c = format!("tinytune prune --model {} --data stories --examples {EXAMPLES}", crate::run::MICRO_DIR);
        let pct = (sparsity * 100.0).round();
        let out = match self.method.as_str() {
            "magnitude" => {
                c += &format!(" --sparsity {sparsity}");
                if self.scope == "global" {
                    c += " --scope global";
                    format!("magnitude-global-{pct}")
                } else {
                    format!("magnitude-{pct}")
                }
            }
            "wanda" => {
                c += &format!(" --method wanda --sparsity {sparsity}");
                format!("wanda-{pct}")
            }
            "2:4" => {
                c += " --pattern 2:4";
                "2of4".into()
            }
            "2:4-wanda" => {
                c += " --method wanda --pattern 2:4";
                "2of4-wanda".into()
            }
            _ => {
                let kept = Self::neurons_kept(sparsity);
                c += &format!(" --neurons {kept}");
                format!("neurons-{kept}")
            }
        };
        if self.calibrates() {
            c += &format!(" --calibration-batches {CALIBRATION_BATCHES} --seed {}", self.seed);
        }
        format!("{c} --out runs/prune-{out}")
    }
}

/// One row of the answer: the model at one sparsity (0: unpruned).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PruneRow {
    pub sparsity: f64,
    pub parameters: usize,
    pub nonzero: usize,
    /// Single-weight pruning: zeros among the blocks' linear weights, and how many there are.
    pub zeros: Option<(usize, usize)>,
    /// Structured pruning: MLP neurons kept per block.
    pub neurons: Option<usize>,
    pub loss: f32,
    pub sample: String,
    /// What was removed where (None for the unpruned model).
    pub map: Option<PruneMap>,
}

/// Where a pruning removed weights, per block.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum PruneMap {
    /// The share of each linear weight matrix set to zero: `shares[layer][k]` for the matrix
    /// `kinds[k]` (`attn.c_attn`, ...).
    Matrices { kinds: Vec<String>, shares: Vec<Vec<f64>> },
    /// Heads and neurons, block by block.
    Structured(Vec<LayerMap>),
}

/// One block after structured pruning.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerMap {
    /// Each head's importance (mean L2 norm of its output) and the heads removed.
    pub heads: Vec<f64>,
    pub heads_removed: Vec<usize>,
    /// The share of each run of [`NEURON_BIN`] MLP neurons that was removed.
    pub neuron_bins: Vec<f64>,
    pub neurons_removed: usize,
    pub neurons: usize,
    /// 1 − cos(input, output) over the calibration tokens.
    pub block_influence: f64,
}

/// The removed share of each run of `bin` indices of `0..n`.
pub fn bin_removed(removed: &[usize], n: usize, bin: usize) -> Vec<f64> {
    let mut counts = vec![0usize; n.div_ceil(bin)];
    for &i in removed.iter().filter(|&&i| i < n) {
        counts[i / bin] += 1;
    }
    counts.iter().enumerate().map(|(b, &c)| c as f64 / (bin.min(n - b * bin)) as f64).collect()
}

/// A structured pruning's report as the heat map draws it.
pub fn layer_map(l: &LayerReport) -> LayerMap {
    LayerMap {
        heads: l.heads.clone(),
        heads_removed: l.heads_removed.clone(),
        neuron_bins: bin_removed(&l.neurons_removed, l.neurons.len(), NEURON_BIN),
        neurons_removed: l.neurons_removed.len(),
        neurons: l.neurons.len(),
        block_influence: l.block_influence,
    }
}

/// Single-weight pruning's matrices as a grid: blocks by matrix kind (in the order they
/// first appear), each cell the share set to zero.
pub fn matrix_map(matrices: &[MatrixReport]) -> PruneMap {
    let mut kinds: Vec<String> = Vec::new();
    let mut shares: Vec<Vec<f64>> = Vec::new();
    for m in matrices {
        // `h.{layer}.{kind}`
        let mut parts = m.path.splitn(3, '.');
        let (Some(layer), Some(kind)) = (parts.nth(1).and_then(|l| l.parse::<usize>().ok()), parts.next()) else { continue };
        let k = kinds.iter().position(|x| x == kind).unwrap_or_else(|| {
            kinds.push(kind.to_string());
            kinds.len() - 1
        });
        if shares.len() <= layer {
            shares.resize(layer + 1, Vec::new());
        }
        if shares[layer].len() <= k {
            shares[layer].resize(k + 1, 0.0);
        }
        shares[layer][k] = m.zeros as f64 / (m.shape[0] * m.shape[1]).max(1) as f64;
    }
    PruneMap::Matrices { kinds, shares }
}

/// The worker's answer: the unpruned model, then one row per sparsity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PruneResult {
    /// The settings the rows were computed with.
    pub params: PruneParams,
    pub rows: Vec<PruneRow>,
    /// Held-out windows (of 128 tokens) each loss is the mean over.
    pub windows: usize,
    /// Calibration tokens the activations were measured on (0: none read).
    pub calibration_tokens: usize,
    pub seconds: f64,
}

impl PruneResult {
    /// The row at `sparsity`, if the answer has one.
    pub fn row(&self, sparsity: f64) -> Option<&PruneRow> {
        self.rows.iter().skip(1).find(|r| (r.sparsity - sparsity).abs() < 1e-9)
    }
}

impl Settings for PruneParams {
    const NAME: &'static str = "prune";
    fn fields() -> Vec<Field<Self>> {
        vec![
            Field { key: "method", get: |p| p.method.clone(), set: |p, v| assign(&mut p.method, one_of(v, &METHODS)) },
            Field { key: "sparsity", get: |p| p.sparsity.to_string(), set: |p, v| assign(&mut p.sparsity, float(v, 0.01, 0.95)) },
            Field { key: "scope", get: |p| p.scope.clone(), set: |p, v| assign(&mut p.scope, one_of(v, &SCOPES)) },
            Field {
                key: "sweep",
                get: |p| p.sweep.clone(),
                set: |p, v| {
                    parse_sweep(v)?;
                    p.sweep = v.trim().to_string();
                    Ok(())
                },
            },
            // A lesson block is one line per key: a newline in the prompt is written \n.
            Field {
                key: "prompt",
                get: |p| p.prompt.replace('\n', "\\n"),
                set: |p, v| {
                    if v.trim().is_empty() {
                        return Err("type a prompt: each row's sample continues it".into());
                    }
                    p.prompt = v.replace("\\n", "\n");
                    Ok(())
                },
            },
            Field { key: "seed", get: |p| p.seed.to_string(), set: |p, v| assign(&mut p.seed, int(v, 0, u32::MAX as usize).map(|x| x as u64)) },
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::widgets::Widget;

    fn with(method: &str) -> PruneParams {
        PruneParams { method: method.into(), ..PruneParams::default() }
    }

    /// Every method's command: the flags `tinytune prune` takes (see `native/src/prune.rs`),
    /// the held-out data the worker measures on, and calibration only where the method
    /// reads activations.
    #[test]
    fn each_method_prints_the_command_of_its_row() {
        let head = "tinytune prune --model assets/micro --data stories --examples 100";
        let cal = "--calibration-batches 1 --seed 7";
        let cases = [
            ("magnitude", "layer", format!("{head} --sparsity 0.75 --out runs/prune-magnitude-75")),
            ("magnitude", "global", format!("{head} --sparsity 0.75 --scope global --out runs/prune-magnitude-global-75")),
            // Scope goes with magnitude only; the others never print it.
            ("wanda", "global", format!("{head} --method wanda --sparsity 0.75 {cal} --out runs/prune-wanda-75")),
            ("2:4", "layer", format!("{head} --pattern 2:4 --out runs/prune-2of4")),
            ("2:4-wanda", "layer", format!("{head} --method wanda --pattern 2:4 {cal} --out runs/prune-2of4-wanda")),
            ("structured", "layer", format!("{head} --neurons 128 {cal} --out runs/prune-neurons-128")),
        ];
        for (method, scope, want) in cases {
            let p = PruneParams { method: method.into(), scope: scope.into(), seed: 7, ..PruneParams::default() };
            assert_eq!(p.command(0.75), want, "{method} {scope}");
        }
    }

    /// The plans validate on micro's shape, and say what the command says.
    #[test]
    fn plans_match_the_commands_and_fit_micro() {
        let micro = ModelConfig::micro();
        for method in METHODS {
            for scope in SCOPES {
                let p = PruneParams { method: method.into(), scope: scope.into(), ..PruneParams::default() };
                for s in p.sparsities() {
                    let plan = p.plan(s);
                    plan.validate(&micro).unwrap_or_else(|e| panic!("{method} {scope} {s}: {e}"));
                    assert_eq!(plan.needs_calibration(), p.calibrates(), "{method}");
                    let command = p.command(s);
                    match plan {
                        Plan::Unstructured(u) => {
                            assert_eq!(u.criterion == Criterion::Wanda, command.contains("--method wanda"), "{command}");
                            assert_eq!(u.scope == Scope::Global, command.contains("--scope global"), "{command}");
                            match u.target {
                                Target::Sparsity(x) => assert!(command.contains(&format!("--sparsity {x} ")), "{command}"),
                                Target::Pattern(pat) => assert!(command.contains(&format!("--pattern {pat} ")) && s == 0.5, "{command}"),
                            }
                        }
                        Plan::Structured(st) => {
                            assert_eq!((st.heads, st.layers), (None, None));
                            assert!(command.contains(&format!("--neurons {} ", st.neurons.unwrap())), "{command}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn rows_are_the_sweep_with_the_chosen_sparsity_once() {
        let p = PruneParams { sparsity: 0.6, sweep: "0.75, 0.25,0.5,0.25".into(), ..PruneParams::default() };
        assert_eq!(p.sparsities(), vec![0.25, 0.5, 0.6, 0.75]);
        let p = PruneParams { sparsity: 0.5, ..p };
        assert_eq!(p.sparsities(), vec![0.25, 0.5, 0.75]);
        // 2:4 zeroes half of every group: one row, at 0.5, whatever the sweep.
        assert_eq!(PruneParams { sparsity: 0.9, ..with("2:4-wanda") }.sparsities(), vec![0.5]);
        assert_eq!(PruneParams { sparsity: 0.9, ..with("2:4") }.chosen(), 0.5);
    }

    #[test]
    fn structured_rows_keep_the_rounded_share_of_neurons() {
        assert_eq!(micro_inner(), 512);
        assert_eq!([0.25, 0.5, 0.75, 0.9, 0.95].map(PruneParams::neurons_kept), [384, 256, 128, 51, 26]);
    }

    #[test]
    fn heat_maps_bin_neurons_and_grid_matrices() {
        // The last run is 4 neurons long: one removed is a quarter of it.
        assert_eq!(bin_removed(&[0, 1, 9, 19], 20, 8), vec![0.25, 0.125, 0.25]);
        let m = |path: &str, zeros| MatrixReport { path: path.into(), shape: [4, 2], zeros };
        let map = matrix_map(&[m("h.0.attn.c_attn", 2), m("h.0.mlp.c_fc", 4), m("h.1.attn.c_attn", 8), m("h.1.mlp.c_fc", 0)]);
        assert_eq!(map, PruneMap::Matrices { kinds: vec!["attn.c_attn".into(), "mlp.c_fc".into()], shares: vec![vec![0.25, 0.5], vec![1.0, 0.0]] });
    }

    #[test]
    fn lesson_blocks_check_every_value() {
        let w = Widget::from_block("name: prune\nmethod: structured\nsparsity: 0.3\nsweep: 0.1,0.9\nprompt: a\\nb\nseed: 3").unwrap();
        let Widget::Prune(p) = &w else { panic!("{w:?}") };
        assert_eq!((p.method.as_str(), p.sparsity, p.prompt.as_str(), p.seed), ("structured", 0.3, "a\nb", 3));
        assert_eq!(p.sparsities(), vec![0.1, 0.3, 0.9]);
        for (block, needle) in [
            ("method: obd", "choose magnitude, wanda, 2:4, 2:4-wanda, structured"),
            ("sparsity: 1", "must be from 0.01 to 0.95"),
            ("scope: local", "choose layer, global"),
            ("sweep: 0.5,half", "expected a number"),
            ("sweep: 0.1,0.2,0.3,0.4,0.5,0.6,0.7", "at most 6"),
            ("prompt:  ", "type a prompt"),
        ] {
            let e = Widget::from_block(&format!("name: prune\n{block}")).unwrap_err();
            assert!(e.starts_with("prune: ") && e.contains(needle), "{block}: {e}");
        }
    }
}
