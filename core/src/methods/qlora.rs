//! QLoRA (Dettmers et al., 2023): LoRA on a frozen base whose linear weights are stored in
//! 4-bit NormalFloat, block-wise, with double quantization of the block maxima, exactly as
//! bitsandbytes' `Linear4bit` stores them (`formats::blockwise`, tested bit-exact against
//! bitsandbytes).
//!
//! The base stays packed at rest, two codes per byte on the host, and is dequantized to
//! FP32 on every forward pass; only the LoRA matrices train. A model loaded from a GGUF
//! file keeps the file's own blocks instead (Q4_1, Q8_0, … as `Projection::source` holds
//! them), dequantized the same way: QLoRA over the 4-bit model people actually download. Autodiff keeps the
//! dequantized weight of each layer until the backward pass has used it (bitsandbytes
//! instead dequantizes a second time in the backward pass), so the saving is in the weights
//! held between steps, which is what QLoRA's memory figures count.

use std::sync::Arc;

use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Origin, Result};
use crate::formats::blockwise::{DQ_BLOCK, FourBit, Quantized4, Scales, quantize_4bit};

use super::lora::LoraConfig;

/// QLoRA's settings: LoRA's, plus how the base is quantized (QLoRA's paper: NF4, blocks of
/// 64, double quantization).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QloraConfig {
    #[serde(flatten)]
    pub lora: LoraConfig,
    /// Weights per block of the base's 4-bit quantization (`bnb_4bit_blocksize`, 64).
    pub block: usize,
    /// Quantize the block maxima too (`bnb_4bit_use_double_quant`).
    pub double_quant: bool,
}

impl Default for QloraConfig {
    fn default() -> Self {
        Self { lora: LoraConfig::default(), block: 64, double_quant: true }
    }
}

impl QloraConfig {
    pub fn validate(&self, origin: impl Into<Origin>) -> Result<()> {
        let origin = origin.into();
        self.lora.validate(origin.clone())?;
        if self.block < 2 {
            return Err(Error::config(origin, "block", format!("{} weights per block; use at least 2 (QLoRA uses 64)", self.block)));
        }
        Ok(())
    }
}

/// How a frozen base weight is held: NF4 (QLoRA's own quantization), or the blocks a GGUF
/// file stored it in (Q4_1, Q8_0, …), kept as they are rather than rounded a second time.
#[derive(Debug)]
pub enum Stored {
    /// Quantized in `torch.nn.Linear`'s `[d_out, d_in]` order, as bitsandbytes quantizes a
    /// `Linear4bit`.
    Nf4(Quantized4),
    /// ggml blocks of a `[d_out, d_in]` matrix, rows in transformers' order (llama.cpp's
    /// query/key row permutation undone on whole rows of blocks when it was loaded).
    Ggml { ty: crate::gguf::GgmlType, raw: Vec<u8> },
}

/// A frozen linear weight, `[d_in, d_out]` when dequantized, held quantized at rest.
#[derive(Clone, Debug)]
pub struct FrozenWeight {
    pub stored: Arc<Stored>,
    pub d_in: usize,
    pub d_out: usize,
    /// Where the dequantized weight is made.
    pub device: Device,
}

impl FrozenWeight {
    /// Quantizes a `[d_in, d_out]` weight to NF4.
    pub fn quantize(w: Tensor<2>, block: usize, double_quant: bool) -> Self {
        let [d_in, d_out] = w.dims();
        let device = w.device();
        let linear: Vec<f32> = w.transpose().into_data().convert::<f32>().try_to_vec::<f32>().expect("f32 weights");
        Self { stored: Arc::new(Stored::Nf4(quantize_4bit(&linear, FourBit::Nf4, block, double_quant))), d_in, d_out, device }
    }

    /// A `[d_in, d_out]` weight from a GGUF file's blocks of its `[d_out, d_in]` matrix;
    /// checked to hold exactly that many weights.
    pub fn ggml(ty: crate::gguf::GgmlType, raw: Vec<u8>, d_in: usize, d_out: usize, device: &Device) -> Result<Self> {
        let (block, size) = ty.block();
        if !d_in.is_multiple_of(block) || raw.len() != d_in / block * size * d_out {
            return Err(Error::Invalid(format!("{} blocks of {} bytes do not hold a {d_out}×{d_in} matrix", ty.name(), raw.len())));
        }
        Ok(Self { stored: Arc::new(Stored::Ggml { ty, raw }), d_in, d_out, device: device.clone() })
    }

    /// The dequantized weight, `[d_in, d_out]`.
    pub fn weight(&self) -> Tensor<2> {
        let values = match &*self.stored {
            Stored::Nf4(q) => q.dequantize(),
            // Checked when it was made: the blocks hold exactly d_out × d_in weights.
            Stored::Ggml { ty, raw } => crate::gguf::quants::dequantize(*ty, raw, self.d_in * self.d_out).expect("blocks checked when loaded"),
        };
        Tensor::<2>::from_data(TensorData::new(values, [self.d_out, self.d_in]), &self.device).transpose()
    }

    /// Bytes held at rest: packed codes and (quantized) block scales.
    pub fn bytes(&self) -> usize {
        match &*self.stored {
            Stored::Nf4(q) => q.bytes(),
            Stored::Ggml { raw, .. } => raw.len(),
        }
    }

    /// The format's name: "NF4", or the ggml type ("Q4_1", …).
    pub fn format(&self) -> &'static str {
        match &*self.stored {
            Stored::Nf4(_) => "NF4",
            Stored::Ggml { ty, .. } => ty.name(),
        }
    }

    /// The stored form as named tensors (suffixes of the weight's path), for checkpoints.
    pub fn tensors(&self) -> Vec<(&'static str, TensorData)> {
        let q = match &*self.stored {
            Stored::Nf4(q) => q,
            Stored::Ggml { ty, raw } => {
                return vec![("ggml.blocks", TensorData::new(raw.clone(), [raw.len()])), ("ggml.type", TensorData::new(vec![ty.id() as u8], [1]))];
            }
        };
        let mut out = vec![("nf4.packed", TensorData::new(q.packed.clone(), [q.packed.len()]))];
        match &q.scales {
            Scales::Plain(a) => out.push(("nf4.absmax", TensorData::new(a.clone(), [a.len()]))),
            Scales::Double { codes, scales, offset } => {
                out.push(("nf4.absmax_codes", TensorData::new(codes.clone(), [codes.len()])));
                out.push(("nf4.absmax_scales", TensorData::new(scales.clone(), [scales.len()])));
                out.push(("nf4.absmax_offset", TensorData::new(vec![*offset], [1])));
            }
        }
        out
    }

    /// Rebuilds a weight of shape `[d_in, d_out]` from `tensors(...)`'s output; `take`
    /// removes a named part. Errors name the missing or malformed part.
    pub fn from_tensors(
        device: &Device,
        d_in: usize,
        d_out: usize,
        block: usize,
        mut take: impl FnMut(&str) -> Option<TensorData>,
        origin: &Origin,
        path: &str,
    ) -> Result<Self> {
        let len = d_in * d_out;
        let bytes = |d: TensorData, part: &str| -> Result<Vec<u8>> {
            d.try_to_vec::<u8>().map_err(|_| Error::tensor(origin.clone(), format!("{path}.{part}"), "must be a U8 tensor"))
        };
        let floats = |d: TensorData, part: &str| -> Result<Vec<f32>> {
            d.convert::<f32>().try_to_vec::<f32>().map_err(|_| Error::tensor(origin.clone(), format!("{path}.{part}"), "must be a float tensor"))
        };
        let missing = |part: &str| Error::tensor(origin.clone(), format!("{path}.{part}"), "is missing from a QLoRA checkpoint");
        // A base kept in a GGUF file's blocks.
        if let Some(raw) = take("ggml.blocks") {
            let raw = bytes(raw, "ggml.blocks")?;
            let id = bytes(take("ggml.type").ok_or_else(|| missing("ggml.type"))?, "ggml.type")?;
            let ty = match id[..] {
                [id] => crate::gguf::GgmlType::from_id(id as u32),
                _ => Err("must hold one ggml type id".into()),
            }
            .map_err(|e| Error::tensor(origin.clone(), format!("{path}.ggml.type"), e))?;
            return Self::ggml(ty, raw, d_in, d_out, device).map_err(|e| Error::tensor(origin.clone(), format!("{path}.ggml.blocks"), e.to_string()));
        }
        let packed = bytes(take("nf4.packed").ok_or_else(|| missing("nf4.packed"))?, "nf4.packed")?;
        if packed.len() != len.div_ceil(2) {
            return Err(Error::tensor(
                origin.clone(),
                format!("{path}.nf4.packed"),
                format!("has {} bytes; a {d_in}×{d_out} weight packs into {}", packed.len(), len.div_ceil(2)),
            ));
        }
        let blocks = len.div_ceil(block);
        let scales = match take("nf4.absmax") {
            Some(a) => Scales::Plain(floats(a, "nf4.absmax")?),
            None => {
                let codes = bytes(take("nf4.absmax_codes").ok_or_else(|| missing("nf4.absmax or nf4.absmax_codes"))?, "nf4.absmax_codes")?;
                let scales = floats(take("nf4.absmax_scales").ok_or_else(|| missing("nf4.absmax_scales"))?, "nf4.absmax_scales")?;
                let offset = floats(take("nf4.absmax_offset").ok_or_else(|| missing("nf4.absmax_offset"))?, "nf4.absmax_offset")?;
                if scales.len() != codes.len().div_ceil(DQ_BLOCK) || offset.len() != 1 {
                    return Err(Error::tensor(origin.clone(), format!("{path}.nf4.absmax_scales"), "does not match the number of block codes"));
                }
                Scales::Double { codes, scales, offset: offset[0] }
            }
        };
        let n_scales = match &scales {
            Scales::Plain(a) => a.len(),
            Scales::Double { codes, .. } => codes.len(),
        };
        if n_scales != blocks {
            return Err(Error::tensor(
                origin.clone(),
                format!("{path}.nf4"),
                format!(
                    "has {n_scales} block maxima; {len} weights in blocks of {block} need {blocks} (was the checkpoint made with another QLoRA block size?)"
                ),
            ));
        }
        Ok(Self {
            stored: Arc::new(Stored::Nf4(Quantized4 { kind: FourBit::Nf4, blocksize: block, len, packed, scales })),
            d_in,
            d_out,
            device: device.clone(),
        })
    }
}

/// `model` with every projection's weight quantized to NF4 and LoRA paths on the targeted
/// ones, the rest frozen.
pub(crate) fn inject(model: crate::model::Gpt, config: &QloraConfig, seed: u64, device: &Device) -> Result<crate::model::Gpt> {
    config.validate("QLoRA config")?;
    super::lora::check_targets(&model, &config.lora, "QLoRA config")?;
    if config.lora.init == super::LoraInit::Pissa {
        return Err(Error::config(
            "QLoRA config",
            "init",
            "PiSSA on an NF4 base would need the residual quantized after the SVD (QPiSSA), which tinytune does not build; use init default or gaussian",
        ));
    }
    let mut model = model;
    super::for_each_projection(&mut model, |_, p| {
        if let Some(w) = p.weight.take() {
            // A weight loaded from quantized blocks (a GGUF file) keeps them: rounding it to
            // NF4 as well would add a second rounding error on top of the file's.
            p.frozen = Some(p.source.take().unwrap_or_else(|| FrozenWeight::quantize(w.val(), config.block, config.double_quant)));
        }
    });
    Ok(super::lora::add_lora(model, &config.lora, seed, device))
}
