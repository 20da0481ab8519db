//! Number formats: how a value is stored in FP32, TF32, FP16, BF16, FP8, INT8, INT4, NF4 and
//! FP4, what it becomes, and the error. `float` holds the floating-point codecs (bit-exact
//! IEEE round-to-nearest-even), `int` the integer ones, `blockwise` bitsandbytes' block-wise
//! 4-bit quantization with double quantization, and `show` one value in every format.

pub mod blockwise;
pub mod float;
pub mod int;
pub mod ptq;
pub mod show;
