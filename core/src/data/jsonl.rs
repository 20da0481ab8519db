//! Instruction data sets from JSON Lines, one example per line, in either of the two
//! layouts people bring:
//!
//! - **Alpaca**: `{"instruction": …, "input": …, "output": …}` (`input` may be absent or
//!   empty), laid out with the Alpaca template (Taori et al., 2023): the instruction, the
//!   input if any, then `### Response:`; the output is the response;
//! - **prompt/completion**: `{"prompt": …, "completion": …}`, used as they are.
//!
//! The caller reads the file (core never touches the file system) and passes its text and
//! name; every error names the file, the line and the field, and says how to fix it.

use serde_json::Value;

use super::Example;
use crate::error::{Error, Origin, Result};

/// The Alpaca prompt for an instruction and an optional input.
pub fn alpaca_prompt(instruction: &str, input: &str) -> String {
    if input.trim().is_empty() {
        format!(
            "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
        )
    } else {
        format!(
            "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
        )
    }
}

/// Parses JSON Lines `text` into examples. Blank lines are skipped.
pub fn parse(text: &str, origin: impl Into<Origin>) -> Result<Vec<Example>> {
    let origin = origin.into();
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let at = |field: &str, problem: String| Error::config(origin.clone(), format!("line {n}: {field}"), problem);
        let value: Value = serde_json::from_str(line).map_err(|e| at("json", format!("is not valid JSON ({e}); write one JSON object per line")))?;
        let Value::Object(obj) = value else {
            return Err(at("json", "is not a JSON object; write {\"prompt\": …, \"completion\": …} or {\"instruction\": …, \"output\": …}".into()));
        };
        let text_of = |field: &str| -> Result<Option<String>> {
            match obj.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => Err(at(field, format!("is {other}, not a string; quote it"))),
            }
        };
        let example = if obj.contains_key("instruction") {
            let instruction = text_of("instruction")?.unwrap_or_default();
            let output =
                text_of("output")?.ok_or_else(|| at("output", "is missing; an Alpaca example needs instruction and output (input is optional)".into()))?;
            Example { prompt: alpaca_prompt(&instruction, &text_of("input")?.unwrap_or_default()), response: output, chat: false }
        } else if obj.contains_key("prompt") {
            let prompt = text_of("prompt")?.unwrap_or_default();
            let completion = text_of("completion")?.ok_or_else(|| at("completion", "is missing; a prompt/completion example needs both".into()))?;
            Example { prompt, response: completion, chat: false }
        } else {
            let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
            return Err(at("keys", format!("has {keys:?}; use Alpaca's instruction/input/output or prompt/completion")));
        };
        if example.response.is_empty() {
            return Err(at(
                if obj.contains_key("instruction") { "output" } else { "completion" },
                "is empty; there is nothing to learn from this example".into(),
            ));
        }
        out.push(example);
    }
    if out.is_empty() {
        return Err(Error::config(origin, "lines", "the file has no examples; write one JSON object per line"));
    }
    Ok(out)
}

/// Splits examples into training and held-out sets: a seeded shuffle, then the last
/// `eval` (at most a fifth of the file, at least one when there are two or more) are held
/// out.
pub fn split(mut examples: Vec<Example>, eval: usize, seed: u64) -> (Vec<Example>, Vec<Example>) {
    super::Rng::derive(seed, "jsonl-split").shuffle(&mut examples);
    let n = examples.len();
    let held = if n < 2 { 0 } else { eval.clamp(1, (n / 5).max(1)) };
    let eval_set = examples.split_off(examples.len() - held);
    (examples, eval_set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_layouts_parse_and_bad_lines_are_named() {
        let text = r#"{"instruction": "Say hi.", "input": "", "output": "hi"}

{"instruction": "Add.", "input": "2 and 3", "output": "5"}
{"prompt": "q: sky colour?\na:", "completion": " blue"}"#;
        let ex = parse(text, "data.jsonl").unwrap();
        assert_eq!(ex.len(), 3);
        assert!(ex[0].prompt.contains("### Instruction:\nSay hi.\n\n### Response:\n") && !ex[0].prompt.contains("### Input"));
        assert!(ex[1].prompt.contains("### Input:\n2 and 3\n"));
        assert_eq!((ex[2].prompt.as_str(), ex[2].response.as_str()), ("q: sky colour?\na:", " blue"));

        let err = |t: &str| parse(t, "data.jsonl").unwrap_err().to_string();
        let e = err("{\"prompt\": \"a\", \"completion\": \"b\"}\n{\"prompt\": \"a\"}");
        assert!(e.contains("data.jsonl") && e.contains("line 2: completion") && e.contains("missing"), "{e}");
        let e = err("{\"instruction\": \"x\", \"output\": 5}");
        assert!(e.contains("line 1: output") && e.contains("not a string"), "{e}");
        let e = err("{\"question\": \"x\"}");
        assert!(e.contains("line 1: keys") && e.contains("question"), "{e}");
        let e = err("not json");
        assert!(e.contains("line 1: json"), "{e}");
        assert!(err("\n\n").contains("no examples"));
    }

    #[test]
    fn the_split_holds_out_a_fifth_at_most() {
        let ex: Vec<Example> = (0..10).map(|i| Example { prompt: format!("p{i}"), response: "r".into(), chat: false }).collect();
        let (train, eval) = split(ex.clone(), 100, 0);
        assert_eq!((train.len(), eval.len()), (8, 2));
        let (train, eval) = split(ex.clone(), 1, 0);
        assert_eq!((train.len(), eval.len()), (9, 1));
        assert_eq!(split(ex, 1, 0).1, eval, "seeded");
    }
}
