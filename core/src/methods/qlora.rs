//! QLoRA (Dettmers et al., 2023): LoRA on a frozen base whose linear weights are stored in
//! 4-bit NormalFloat, block-wise, with double quantization of the block maxima, exactly as
//! bitsandbytes' `Linear4bit` stores them (`formats::blockwise`, tested bit-exact against
//! bitsandbytes).
//!
//! The base stays packed at rest and is dequantized to FP32 on every forward pass; only the
//! LoRA matrices train. An NF4 base lives on the model's device as it is stored (eight
//! codes per 32-bit word, the block maxima as 8-bit codes with their scales) and is
//! dequantized there by tensor operations (`FourBitOnDevice`), so a GPU holds the NF4 bytes and
//! the host does no work per step; the host keeps the packed form too, for checkpoints. A model loaded from a GGUF
//! file keeps the file's own blocks instead (Q4_1, Q8_0, … as `Projection::source` holds
//! them), dequantized the same way: QLoRA over the 4-bit model people actually download. Autodiff keeps the
//! dequantized weight of each layer until the backward pass has used it (bitsandbytes
//! instead dequantizes a second time in the backward pass), so the saving is in the weights
//! held between steps, which is what QLoRA's memory figures count.

use std::sync::Arc;

use burn::tensor::{DType, Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Origin, Result};
use crate::formats::blockwise::{DQ_BLOCK, FourBit, Quantized4, Scales, dynamic_map, quantize_4bit};

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

/// Bytes as little-endian 32-bit words on `device` (the last one zero-padded): byte `k`
/// of a word is its bits `8k..8k + 8`.
fn words(bytes: &[u8], device: &Device) -> Tensor<1, Int> {
    let w: Vec<i32> = bytes.chunks(4).map(|c| c.iter().rev().fold(0u32, |w, &b| (w << 8) | u32::from(b)) as i32).collect();
    let n = w.len();
    Tensor::from_data(TensorData::new(w, [n]), (device, DType::I32))
}

/// `n` codes of `bits` bits out of 32-bit words, in the order `shifts` reads each word.
fn unpack(words: Tensor<1, Int>, shifts: &[i32], mask: i32, n: usize) -> Tensor<1, Int> {
    let device = words.device();
    let [w] = words.dims();
    let per = shifts.len();
    let shifts = Tensor::<1, Int>::from_data(TensorData::new(shifts.to_vec(), [per]), (&device, DType::I32)).reshape([1, per]);
    let codes = words.reshape([w, 1]).expand([w, per]).bitwise_right_shift(shifts.expand([w, per])).bitwise_and_scalar(mask);
    codes.reshape([w * per]).slice(0..n)
}

/// A 4-bit (NF4 or FP4) weight held on its device as stored, dequantized there by tensor operations:
/// the same products (and, under double quantization, the same product and sum per block
/// maximum) in f32 as `Quantized4::dequantize` on the host, so the same bits.
#[derive(Debug)]
pub struct FourBitOnDevice {
    /// Eight 4-bit codes per word: byte `k` holds elements `2k` (high nibble) and `2k + 1`.
    codes: Tensor<1, Int>,
    code: Tensor<1>,
    absmax: AbsmaxOnDevice,
    len: usize,
    blocksize: usize,
}

#[derive(Debug)]
enum AbsmaxOnDevice {
    Plain(Box<Tensor<1>>),
    Double(Box<DoubleMaxima>),
}

/// Double-quantized block maxima on the device: 8-bit codes, four per word, into
/// bitsandbytes' dynamic map, one scale per 256 codes, and the offset.
#[derive(Debug)]
struct DoubleMaxima {
    codes: Tensor<1, Int>,
    n: usize,
    map: Tensor<1>,
    scales: Tensor<1>,
    offset: f32,
}

impl FourBitOnDevice {
    pub fn new(q: &Quantized4, device: &Device) -> Self {
        let floats = |v: &[f32]| Tensor::<1>::from_data(TensorData::new(v.to_vec(), [v.len()]), device);
        let absmax = match &q.scales {
            Scales::Plain(a) => AbsmaxOnDevice::Plain(Box::new(floats(a))),
            Scales::Double { codes, scales, offset } => AbsmaxOnDevice::Double(Box::new(DoubleMaxima {
                codes: words(codes, device),
                n: codes.len(),
                map: floats(&dynamic_map()),
                scales: floats(scales),
                offset: *offset,
            })),
        };
        Self { codes: words(&q.packed, device), code: floats(&q.kind.code()), absmax, len: q.len, blocksize: q.blocksize }
    }

    /// The block maxima in f32, `[blocks]`.
    fn absmax(&self) -> Tensor<1> {
        match &self.absmax {
            AbsmaxOnDevice::Plain(a) => (**a).clone(),
            AbsmaxOnDevice::Double(d) => {
                let DoubleMaxima { codes, n, map, scales, offset } = &**d;
                let device = codes.device();
                let c = unpack(codes.clone(), &[0, 8, 16, 24], 0xff, *n);
                let which = Tensor::<1, Int>::arange(0..*n as i64, (&device, DType::I32)).div_scalar(DQ_BLOCK as i32);
                map.clone().select(0, c).mul(scales.clone().select(0, which)).add_scalar(*offset)
            }
        }
    }

    /// The dequantized values in stored order (`[d_out · d_in]`, row-major `[d_out, d_in]`).
    pub fn dequantize(&self) -> Tensor<1> {
        let device = self.codes.device();
        let c = unpack(self.codes.clone(), &[4, 0, 12, 8, 20, 16, 28, 24], 0xf, self.len);
        let values = self.code.clone().select(0, c);
        let absmax = self.absmax();
        if self.len.is_multiple_of(self.blocksize) {
            let blocks = self.len / self.blocksize;
            (values.reshape([blocks, self.blocksize]) * absmax.reshape([blocks, 1])).reshape([self.len])
        } else {
            let which = Tensor::<1, Int>::arange(0..self.len as i64, (&device, DType::I32)).div_scalar(self.blocksize as i32);
            values * absmax.select(0, which)
        }
    }
}

/// A frozen linear weight, `[d_in, d_out]` when dequantized, held quantized at rest.
#[derive(Clone, Debug)]
pub struct FrozenWeight {
    pub stored: Arc<Stored>,
    pub d_in: usize,
    pub d_out: usize,
    /// Where the dequantized weight is made.
    pub device: Device,
    /// An NF4 weight's codes and scales on `device`, where it is dequantized.
    pub on_device: Option<Arc<FourBitOnDevice>>,
}

impl FrozenWeight {
    /// Quantizes a `[d_in, d_out]` weight to NF4.
    pub fn quantize(w: Tensor<2>, block: usize, double_quant: bool) -> Self {
        #[cfg(test)]
        tests::QUANTIZED.with(|n| n.set(n.get() + 1));
        let [d_in, d_out] = w.dims();
        let device = w.device();
        let linear: Vec<f32> = w.transpose().into_data().convert::<f32>().try_to_vec::<f32>().expect("f32 weights");
        Self::nf4(quantize_4bit(&linear, FourBit::Nf4, block, double_quant), d_in, d_out, &device)
    }

    /// A `[d_in, d_out]` weight from its NF4 form (of the `[d_out, d_in]` matrix), placed on
    /// `device`.
    pub fn nf4(q: Quantized4, d_in: usize, d_out: usize, device: &Device) -> Self {
        let on_device = Some(Arc::new(FourBitOnDevice::new(&q, device)));
        Self { stored: Arc::new(Stored::Nf4(q)), d_in, d_out, device: device.clone(), on_device }
    }

    /// A `[d_in, d_out]` weight from a GGUF file's blocks of its `[d_out, d_in]` matrix;
    /// checked to hold exactly that many weights.
    pub fn ggml(ty: crate::gguf::GgmlType, raw: Vec<u8>, d_in: usize, d_out: usize, device: &Device) -> Result<Self> {
        let (block, size) = ty.block();
        if !d_in.is_multiple_of(block) || raw.len() != d_in / block * size * d_out {
            return Err(Error::Invalid(format!("{} blocks of {} bytes do not hold a {d_out}×{d_in} matrix", ty.name(), raw.len())));
        }
        Ok(Self { stored: Arc::new(Stored::Ggml { ty, raw }), d_in, d_out, device: device.clone(), on_device: None })
    }

    /// The dequantized weight, `[d_in, d_out]`.
    pub fn weight(&self) -> Tensor<2> {
        if let Some(q) = &self.on_device {
            return q.dequantize().reshape([self.d_out, self.d_in]).transpose();
        }
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
        Ok(Self::nf4(Quantized4 { kind: FourBit::Nf4, blocksize: block, len, packed, scales }, d_in, d_out, device))
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

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        /// Weights this thread has quantized.
        pub(super) static QUANTIZED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    /// Loading a QLoRA checkpoint takes the stored NF4 base as it is: nothing is quantized,
    /// and the loaded model's logits are the saved one's.
    #[test]
    fn loading_a_qlora_checkpoint_quantizes_nothing() {
        use crate::checkpoint::{from_safetensors, load_model_for, save_model};
        let device = Device::default();
        let config = crate::ModelConfig::nano();
        let method = crate::methods::Method::Qlora(QloraConfig::default());
        let model = method.apply(crate::Gpt::init(&config, 3, &device), 5, &device).unwrap();
        let projections = QUANTIZED.with(std::cell::Cell::get);
        assert!(projections >= 4 * config.n_layer, "QLoRA quantized {projections} weights");
        let bytes = save_model(&model);
        assert!(from_safetensors(&bytes, &"model.safetensors".into()).unwrap().keys().any(|k| k.ends_with("nf4.packed")));
        let loaded = load_model_for(&config, &method, &bytes, &device, "model.safetensors").unwrap();
        assert_eq!(QUANTIZED.with(std::cell::Cell::get), projections, "loading quantized a weight");
        let ids = Tensor::<2, Int>::from_data(TensorData::new(vec![1i64, 2, 3, 4], [1, 4]), &device);
        let (a, b) = (model.forward(ids.clone()).into_data(), loaded.forward(ids).into_data());
        assert_eq!(a.try_to_vec::<f32>().unwrap(), b.try_to_vec::<f32>().unwrap());
    }

    /// The device's tensor operations give the host's dequantized values bit for bit: NF4
    /// and FP4, plain and double-quantized maxima (past one 256-block of them), lengths
    /// that fill their last block and ones that do not, an odd number of codes.
    #[test]
    fn dequantizing_on_the_device_gives_the_hosts_bits() {
        let device = Device::default();
        let mut state = 7u64;
        for (len, block) in [(64 * 300, 64), (128 * 5 + 3, 128), (9, 4), (1, 2)] {
            let x: Vec<f32> = (0..len)
                .map(|_| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
                })
                .collect();
            for kind in [FourBit::Nf4, FourBit::Fp4] {
                for double in [false, true] {
                    let q = quantize_4bit(&x, kind, block, double);
                    let host: Vec<u32> = q.dequantize().iter().map(|v| v.to_bits()).collect();
                    let data = FourBitOnDevice::new(&q, &device).dequantize().into_data();
                    let dev: Vec<u32> = data.try_to_vec::<f32>().unwrap().iter().map(|v| v.to_bits()).collect();
                    assert_eq!(dev, host, "{kind:?}, {len} values in blocks of {block}, double {double}");
                }
            }
        }
    }

    /// A QLoRA model's projection dequantizes on the device to what it quantized.
    #[test]
    fn a_frozen_weight_is_its_quantized_values_as_d_in_by_d_out() {
        let device = Device::default();
        let w = Tensor::<2>::from_data(TensorData::new((0..6 * 4).map(|i| i as f32 - 11.5).collect::<Vec<f32>>(), [6, 4]), &device);
        let f = FrozenWeight::quantize(w.clone(), 4, false);
        let Stored::Nf4(q) = &*f.stored else { panic!("NF4") };
        let back = f.weight();
        assert_eq!(back.dims(), [6, 4]);
        let host = Tensor::<2>::from_data(TensorData::new(q.dequantize(), [4, 6]), &device).transpose();
        assert_eq!(back.into_data().try_to_vec::<f32>().unwrap(), host.into_data().try_to_vec::<f32>().unwrap());
    }
}
