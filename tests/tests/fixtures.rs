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
