//! DeepSpeed's model-state memory estimates, reproduced so the playground's figures can be
//! checked against the tool practitioners use.
//!
//! These follow `estimate_zero2_model_states_mem_needs` (deepspeed/runtime/zero/
//! stage_1_and_2.py) and `estimate_zero3_model_states_mem_needs` (deepspeed/runtime/zero/
//! stage3.py) line by line. They assume mixed-precision Adam: 16-bit parameters and
//! gradients on the GPU and 12 bytes of FP32 state (master copy and two moments) per
//! parameter, and they multiply CPU figures by `additional_buffer_factor` (1.5 by default)
//! as head-room. They cover model states only: no activations, no framework overhead.
//! DeepSpeed prints bytes / 2^30 and calls it "GB".

use serde::{Deserialize, Serialize};

/// Bytes per GPU and per CPU (per node) that DeepSpeed's estimator prints for one row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelStates {
    pub gpu: u64,
    pub cpu: u64,
}

/// DeepSpeed's default head-room factor on CPU memory.
pub const ADDITIONAL_BUFFER_FACTOR: f64 = 1.5;

/// ZeRO stage 2, after `estimate_zero2_model_states_mem_needs(total_params,
/// num_gpus_per_node, num_nodes, cpu_offload, additional_buffer_factor)`.
pub fn zero2(total_params: u64, gpus_per_node: u64, nodes: u64, cpu_offload: bool) -> ModelStates {
    let p = total_params as f64;
    let total_gpus = gpus_per_node * nodes;
    let f = ADDITIONAL_BUFFER_FACTOR;
    if cpu_offload {
        // gpu_mem = 2 * total_params; cpu_mem = total_params * max(4 * total_gpus, 16) * factor
        ModelStates { gpu: 2 * total_params, cpu: (p * (4 * total_gpus).max(16) as f64 * f) as u64 }
    } else {
        // gpu_mem = 2 * total_params + int(18 * total_params / total_gpus): 16-bit parameters
        // whole, and a 1/N share of 16- and 32-bit gradients, 32-bit master parameters and
        // the two moments (DeepSpeed 0.19; releases before it counted 4Ψ + 16Ψ/N, which
        // agrees on one GPU only)
        // cpu_mem = total_params * 4 * num_gpus_per_node * factor
        ModelStates { gpu: 2 * total_params + (18.0 * p / total_gpus as f64) as u64, cpu: (p * 4.0 * gpus_per_node as f64 * f) as u64 }
    }
}

/// ZeRO stage 3, after `estimate_zero3_model_states_mem_needs(total_params,
/// largest_layer_params, num_gpus_per_node, num_nodes, cpu_offload, cpu_offload_params,
/// zero_init, additional_buffer_factor)`.
pub fn zero3(
    total_params: u64,
    largest_layer_params: u64,
    gpus_per_node: u64,
    nodes: u64,
    offload_optimizer: bool,
    offload_params: bool,
    zero_init: bool,
) -> ModelStates {
    let p = total_params as f64;
    let total_gpus = (gpus_per_node * nodes) as f64;
    let gpus_factor = 1.0 / nodes as f64;
    let f = ADDITIONAL_BUFFER_FACTOR;
    // The largest layer is gathered whole on each GPU: its 16-bit parameters and gradients.
    let largest_layer_memory = 4 * largest_layer_params;
    let per_node = |bytes_per_param: f64| -> u64 {
        if zero_init {
            (p * bytes_per_param * gpus_factor * f) as u64
        } else {
            (p * (4.0 * gpus_per_node as f64).max(bytes_per_param * gpus_factor) * f) as u64
        }
    };
    if offload_optimizer && offload_params {
        ModelStates { gpu: largest_layer_memory, cpu: per_node(18.0) }
    } else if offload_optimizer {
        ModelStates { gpu: largest_layer_memory + (2.0 * p / total_gpus) as u64, cpu: per_node(16.0) }
    } else {
        let cpu = if zero_init { largest_layer_params as f64 * 4.0 * gpus_per_node as f64 * f } else { p * 4.0 * gpus_per_node as f64 * f };
        ModelStates { gpu: largest_layer_memory + (18.0 * p / total_gpus) as u64, cpu: cpu as u64 }
    }
}

/// DeepSpeed's rows for a ZeRO-2 or ZeRO-3 run on `gpus` GPUs of one node, labelled with
/// its offload settings (as its `..._all_cold` helpers print them); None for stages 0–1.
pub fn rows(total_params: u64, largest_layer_params: u64, zero: u8, gpus: u64) -> Option<Vec<(&'static str, ModelStates)>> {
    let (p, ll, g) = (total_params, largest_layer_params, gpus);
    match zero {
        2 => Some(vec![("offload_optimizer=none", zero2(p, g, 1, false)), ("offload_optimizer=cpu", zero2(p, g, 1, true))]),
        3 => Some(vec![
            ("offload_param=none, optimizer=none", zero3(p, ll, g, 1, false, false, true)),
            ("offload_param=none, optimizer=cpu", zero3(p, ll, g, 1, true, false, true)),
            ("offload_param=cpu, optimizer=cpu", zero3(p, ll, g, 1, true, true, true)),
        ]),
        _ => None,
    }
}

/// Model-state bytes per GPU at ZeRO stages 0–3 as the ZeRO paper counts them
/// (Rajbhandari et al., 2020, "ZeRO: Memory Optimizations Toward Training Trillion Parameter
/// Models", Figure 1): mixed-precision Adam holds 2Ψ bytes of 16-bit weights, 2Ψ of 16-bit
/// gradients and KΨ = 12Ψ of FP32 state; stage 1 shards the optimizer state over N GPUs
/// (`4Ψ + 12Ψ/N`), stage 2 the gradients too (`2Ψ + 14Ψ/N`), stage 3 everything
/// (`16Ψ/N`). DeepSpeed's estimator ([`zero2`], 0.19) shards the 16-bit gradients as the
/// paper's stage 2 does and adds an FP32 gradient partition: `2Ψ + 18Ψ/N`, 4Ψ/N above the
/// paper's figure.
pub fn zero_paper(total_params: u64, gpus: u64) -> [u64; 4] {
    let (p, n) = (total_params, gpus.max(1));
    [16 * p, 4 * p + (12 * p).div_ceil(n), 2 * p + (14 * p).div_ceil(n), (16 * p).div_ceil(n)]
}

/// DeepSpeed's "GB" (bytes / 2^30), rounded to two decimals as it prints.
pub fn gib2(bytes: u64) -> f64 {
    (bytes as f64 / (1u64 << 30) as f64 * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The paper's own example (Figure 1): Ψ = 7.5 B parameters on N = 64 GPUs needs 120 GB
    /// per GPU without ZeRO, 31.4 GB with P_os, 16.6 GB with P_os+g and 1.9 GB with
    /// P_os+g+p (GB = 10^9 bytes there).
    #[test]
    fn the_zero_papers_figure_1() {
        let gb = |b: u64| (b as f64 / 1e9 * 10.0).round() / 10.0;
        assert_eq!(zero_paper(7_500_000_000, 64).map(gb), [120.0, 31.4, 16.6, 1.9]);
    }

    const GPT2_MEDIUM: u64 = 354_823_168;
    const LARGEST: u64 = 51_463_168; // the token embedding, 50257 × 1024

    /// The three rows DeepSpeed's ZeRO-3 estimator prints for a 354 M-parameter model on one
    /// GPU (no offload, optimizer offload, everything offloaded), as the curriculum's topic 5
    /// quotes them (the team's shared CURRICULUM.md, kept beside the repository).
    #[test]
    fn zero3_rows_for_gpt2_medium_on_one_gpu() {
        let none = zero3(GPT2_MEDIUM, LARGEST, 1, 1, false, false, true);
        assert_eq!(gib2(none.gpu), 6.14);
        let opt = zero3(GPT2_MEDIUM, LARGEST, 1, 1, true, false, true);
        assert_eq!((gib2(opt.gpu), gib2(opt.cpu)), (0.85, 7.93));
        let all = zero3(GPT2_MEDIUM, LARGEST, 1, 1, true, true, true);
        assert_eq!((gib2(all.gpu), gib2(all.cpu)), (0.19, 8.92));
    }

    /// Further rows computed by hand from the published formulas.
    #[test]
    fn zero3_and_zero2_rows_from_the_formulas() {
        // ZeRO-3 without offload on 8 GPUs: 4·LL + 18·P/8.
        let r = zero3(GPT2_MEDIUM, LARGEST, 8, 1, false, false, true);
        assert_eq!(r.gpu, 4 * LARGEST + 18 * GPT2_MEDIUM / 8);
        assert_eq!(r.cpu, (LARGEST as f64 * 4.0 * 8.0 * 1.5) as u64);
        // Two nodes of 4: the CPU figure is per node.
        let r = zero3(GPT2_MEDIUM, LARGEST, 4, 2, true, true, true);
        assert_eq!(r.cpu, (GPT2_MEDIUM as f64 * 18.0 * 0.5 * 1.5) as u64);
        // Without zero_init the CPU must hold 4 bytes per parameter per GPU at load time.
        let r = zero3(GPT2_MEDIUM, LARGEST, 8, 1, true, false, false);
        assert_eq!(r.cpu, (GPT2_MEDIUM as f64 * 32.0 * 1.5) as u64);
        // ZeRO-2, 1 GPU: 2P + 18P = 20 bytes per parameter; with offload 2P on the GPU.
        assert_eq!(zero2(GPT2_MEDIUM, 1, 1, false).gpu, 20 * GPT2_MEDIUM);
        assert_eq!(gib2(zero2(GPT2_MEDIUM, 1, 1, false).gpu), 6.61);
        let off = zero2(GPT2_MEDIUM, 1, 1, true);
        assert_eq!((off.gpu, gib2(off.cpu)), (2 * GPT2_MEDIUM, 7.93));
        // 8 GPUs with offload: max(4·8, 16) = 32 bytes per parameter on the CPU.
        assert_eq!(zero2(GPT2_MEDIUM, 8, 1, true).cpu, (GPT2_MEDIUM as f64 * 32.0 * 1.5) as u64);
    }
}
