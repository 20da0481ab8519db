//! Parity with the Python ecosystem on committed fixtures (each made by the script beside
//! it in tests/fixtures).

use std::path::PathBuf;

use tinytune::TextTokenizer;

fn fixture(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(path)
}

/// A tokenizer.json in GPT-2's format written by Python `tokenizers` loads here and gives
/// exactly the ids Python gave, including for text and bytes it never saw in training.
#[test]
fn gpt2_style_tokenizer_json_from_python_gives_the_same_ids() {
    let json = std::fs::read_to_string(fixture("gpt2-style-tokenizer/tokenizer.json")).unwrap();
    let tok = TextTokenizer::from_json(&json, "gpt2-style-tokenizer/tokenizer.json").unwrap();
    let expected: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("gpt2-style-tokenizer/expected.json")).unwrap()).unwrap();
    assert_eq!(tok.kind(), "bpe");
    assert_eq!(tok.vocab_size() as u64, expected["vocab_size"].as_u64().unwrap());
    assert_eq!(tok.eot(), Some(0), "<|endoftext|> is the first special token");
    let probes = expected["probes"].as_array().unwrap();
    assert_eq!(probes.len(), 4);
    for p in probes {
        let text = p["text"].as_str().unwrap();
        let want: Vec<u32> = p["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let ids = tok.encode(text).unwrap();
        assert_eq!(ids, want, "ids of {text:?}");
        assert_eq!(tok.decode(&ids), p["decoded"].as_str().unwrap());
    }
    // Saving it again keeps the same behaviour.
    let again = TextTokenizer::from_json(&tok.to_json(), "resaved").unwrap();
    assert_eq!(again.encode("the robot counted pebbles.").unwrap(), tok.encode("the robot counted pebbles.").unwrap());
}

/// bitsandbytes' block-wise 4-bit quantization (NF4 and FP4; blocks of 64 and 128; with and
/// without double quantization), made on the CPU by tests/fixtures/make_bnb_4bit.py:
/// tinytune produces the same codes, the same (double-quantized) scales, and dequantized
/// values equal bit for bit.
///
/// One input is not reproducible bit for bit by anyone: double quantization subtracts the
/// mean of the block maxima, which bitsandbytes takes with `torch.mean`, and PyTorch's f32
/// summation order depends on its kernels and the CPU's vector width. tinytune's correctly
/// rounded mean must be within one ulp of it; given bitsandbytes' offset, everything
/// downstream (8-bit codes, scales, dequantized values) must be identical.
#[test]
fn bitsandbytes_4bit_quantization_is_reproduced_bit_for_bit() {
    use tinytune::formats::blockwise::{FourBit, Scales, double_quantize, dynamic_map, quantize_4bit};
    let bytes = std::fs::read(fixture("bnb-4bit/cases.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let f32s = |name: &str| -> Vec<f32> { st.tensor(name).unwrap().data().chunks(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect() };
    let u8s = |name: &str| -> Vec<u8> { st.tensor(name).unwrap().data().to_vec() };
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let cases: Vec<String> = meta.metadata().as_ref().unwrap()["cases"].split(',').map(String::from).collect();
    assert_eq!(cases.len(), 8);
    for case in &cases {
        let kind = if case.starts_with("nf4") { FourBit::Nf4 } else { FourBit::Fp4 };
        let blocksize = if case.contains("-b64-") { 64 } else { 128 };
        let double = case.ends_with("-dq");
        let input = f32s(&format!("{case}.input"));
        let q = quantize_4bit(&input, kind, blocksize, double);
        let want_packed = u8s(&format!("{case}.packed"));
        // FP4 has two zeros (+0 is code 0, −0 code 8); both dequantize to a zero.
        let same_code = |a: u8, b: u8| a == b || (kind == FourBit::Fp4 && (a & 7) == 0 && (b & 7) == 0);
        for (i, (a, b)) in q.packed.iter().zip(&want_packed).enumerate() {
            assert!(same_code(a >> 4, b >> 4) && same_code(a & 15, b & 15), "{case}: byte {i}: {a:#04x} vs bitsandbytes {b:#04x}");
        }
        assert_eq!(q.packed.len(), want_packed.len(), "{case}");
        match &q.scales {
            Scales::Plain(absmax) => assert_eq!(absmax, &f32s(&format!("{case}.absmax")), "{case}: absmax"),
            Scales::Double { offset, .. } => {
                assert_eq!(dynamic_map().to_vec(), f32s(&format!("{case}.code8")), "{case}: the 8-bit dynamic map");
                let theirs = f32s(&format!("{case}.offset"))[0];
                assert!(offset.to_bits().abs_diff(theirs.to_bits()) <= 1, "{case}: offset {offset:e} vs {theirs:e}");
            }
        }
        let mut q = q;
        if double {
            let plain = quantize_4bit(&input, kind, blocksize, false);
            let Scales::Plain(absmax) = &plain.scales else { unreachable!() };
            q.scales = double_quantize(absmax, f32s(&format!("{case}.offset"))[0]);
            let Scales::Double { codes, scales, .. } = &q.scales else { unreachable!() };
            assert_eq!(scales, &f32s(&format!("{case}.absmax_scales")), "{case}: second-level scales");
            assert_eq!(codes, &u8s(&format!("{case}.absmax_codes")), "{case}: 8-bit absmax codes");
        }
        let got = q.dequantize();
        let want = f32s(&format!("{case}.dequantized"));
        assert_eq!(got.len(), want.len());
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!(a == b, "{case}: element {i}: {a:e} vs bitsandbytes {b:e}");
        }
    }
}
