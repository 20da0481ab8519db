//! Instruction data sets from JSON Lines, one example per line, in either of the two
//! layouts people bring:
//!
//! - **Alpaca**: `{"instruction": …, "input": …, "output": …}` (`input` may be absent or
//!   empty), laid out with the Alpaca template (Taori et al., 2023): the instruction, the
//!   input if any, then `### Response:`; the output is the response;
//! - **prompt/completion**: `{"prompt": …, "completion": …}`, used as they are;
//! - **conversational** (TRL's format): `{"messages": [{"role": …, "content": …}, …]}`,
//!   rendered with the model's chat template, one example per assistant turn
//!   (`tokenizer::chat`), so the loss falls on the assistant's turns only.
//!
//! The caller reads the file (core never touches the file system) and passes its text and
//! name; every error names the file, the line and the field, and says how to fix it.

use serde_json::Value;

use super::Example;
use crate::error::{Error, Origin, Result};
use crate::tokenizer::chat::{ChatTemplate, Message};

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

/// The longest record a JSON Lines file may hold: 4 MiB, about a million tokens of text,
/// past any model's context. A longer line is a damaged file or not JSON Lines at all.
pub const MAX_LINE_BYTES: usize = 4 << 20;

/// Refuses a line longer than [`MAX_LINE_BYTES`] before it is parsed.
pub(crate) fn check_line_length(line: &str, at: &dyn Fn(String) -> Error) -> Result<()> {
    if line.len() > MAX_LINE_BYTES {
        return Err(at(format!(
            "is {} bytes long, past the {} MiB a record may hold (no model's context holds that much text); is this a JSON Lines file, one record per line?",
            line.len(),
            MAX_LINE_BYTES >> 20
        )));
    }
    Ok(())
}

/// Parses JSON Lines `text` into examples, grouped by line (a conversation gives one
/// example per assistant turn; the other layouts one per line). Blank lines are skipped.
/// Conversations need the model's `chat` template.
pub fn parse(text: &str, origin: impl Into<Origin>, chat: Option<&ChatTemplate>) -> Result<Vec<Vec<Example>>> {
    let origin = origin.into();
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let at = |field: &str, problem: String| Error::config(origin.clone(), format!("line {n}: {field}"), problem);
        check_line_length(line, &|p| at("json", p))?;
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
        if let Some(messages) = obj.get("messages") {
            out.push(conversation(messages, chat, &at)?);
            continue;
        }
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
            return Err(at("keys", format!("has {keys:?}; use Alpaca's instruction/input/output, prompt/completion or messages")));
        };
        if example.response.is_empty() {
            return Err(at(
                if obj.contains_key("instruction") { "output" } else { "completion" },
                "is empty; there is nothing to learn from this example".into(),
            ));
        }
        out.push(vec![example]);
    }
    if out.is_empty() {
        return Err(Error::config(origin, "lines", "the file has no examples; write one JSON object per line"));
    }
    Ok(out)
}

/// A line's `messages` as examples, one per assistant turn.
fn conversation(messages: &Value, chat: Option<&ChatTemplate>, at: &dyn Fn(&str, String) -> Error) -> Result<Vec<Example>> {
    let Value::Array(items) = messages else {
        return Err(at("messages", format!("is {messages}; expected a list of {{\"role\": …, \"content\": …}} objects")));
    };
    let mut parsed = Vec::new();
    for (i, m) in items.iter().enumerate() {
        let field = |name: &str| -> Result<String> {
            match m.get(name) {
                Some(Value::String(s)) => Ok(s.clone()),
                other => Err(at(&format!("messages[{i}].{name}"), format!("is {}; expected a string", other.map_or("missing".to_string(), |v| v.to_string())))),
            }
        };
        parsed.push(Message { role: field("role")?, content: field("content")? });
    }
    if !parsed.iter().any(|m| m.role == "assistant") {
        return Err(at("messages", "has no assistant turn, so there is nothing to learn; add a {\"role\": \"assistant\", …} message".into()));
    }
    let Some(chat) = chat else {
        return Err(at(
            "messages",
            "is a conversation, which needs the model's chat template (chat_template.jinja, or chat_template in tokenizer_config.json), and this model has none; use prompt/completion lines or a model with a template".into(),
        ));
    };
    chat.examples(&parsed).map_err(|e| at("messages", e.to_string()))
}

/// Splits examples (or groups of them: a conversation's turns stay together) into
/// training and held-out sets: a seeded shuffle, then the last `eval` (at most a fifth of
/// the file, at least one when there are two or more) are held out.
pub fn split<T>(mut examples: Vec<T>, eval: usize, seed: u64) -> (Vec<T>, Vec<T>) {
    super::Rng::derive(seed, "jsonl-split").shuffle(&mut examples);
    let n = examples.len();
    let held = if n < 2 { 0 } else { eval.clamp(1, (n / 5).max(1)) };
    let eval_set = examples.split_off(examples.len() - held);
    (examples, eval_set)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record past the limit is refused by line before parsing, in SFT and preference
    /// files alike; deep nesting is serde_json's error, not a stack overflow.
    #[test]
    fn an_overlong_or_deeply_nested_line_is_refused_by_line() {
        let long = format!("{{\"prompt\": \"a\", \"completion\": \"{}\"}}", "x".repeat(MAX_LINE_BYTES));
        let text = format!("{{\"prompt\": \"a\", \"completion\": \"b\"}}\n{long}\n");
        let e = parse(&text, "big.jsonl", None).unwrap_err().to_string();
        assert!(e.starts_with("big.jsonl: line 2: json: is 4194337 bytes long, past the 4 MiB"), "{e}");
        let pairs = format!("{{\"prompt\": \"a\", \"chosen\": \"{}\", \"rejected\": \"c\"}}", "x".repeat(MAX_LINE_BYTES));
        let e = crate::data::preference::parse(&pairs, "pairs.jsonl", None).unwrap_err().to_string();
        assert!(e.starts_with("pairs.jsonl: line 1: json:") && e.contains("4 MiB"), "{e}");
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let e = parse(&deep, "deep.jsonl", None).unwrap_err().to_string();
        assert!(e.contains("line 1: json") && e.contains("recursion limit"), "{e}");
    }

    #[test]
    fn both_layouts_parse_and_bad_lines_are_named() {
        let text = r#"{"instruction": "Say hi.", "input": "", "output": "hi"}

{"instruction": "Add.", "input": "2 and 3", "output": "5"}
{"prompt": "q: sky colour?\na:", "completion": " blue"}"#;
        let ex: Vec<Example> = parse(text, "data.jsonl", None).unwrap().into_iter().flatten().collect();
        assert_eq!(ex.len(), 3);
        assert!(ex[0].prompt.contains("### Instruction:\nSay hi.\n\n### Response:\n") && !ex[0].prompt.contains("### Input"));
        assert!(ex[1].prompt.contains("### Input:\n2 and 3\n"));
        assert_eq!((ex[2].prompt.as_str(), ex[2].response.as_str()), ("q: sky colour?\na:", " blue"));

        let err = |t: &str| parse(t, "data.jsonl", None).unwrap_err().to_string();
        let e = err("{\"prompt\": \"a\", \"completion\": \"b\"}\n{\"prompt\": \"a\"}");
        assert!(e.contains("data.jsonl") && e.contains("line 2: completion") && e.contains("missing"), "{e}");
        let e = err("{\"instruction\": \"x\", \"output\": 5}");
        assert!(e.contains("line 1: output") && e.contains("not a string"), "{e}");
        let e = err("{\"question\": \"x\"}");
        assert!(e.contains("line 1: keys") && e.contains("question"), "{e}");
        let e = err("not json");
        assert!(e.contains("line 1: json"), "{e}");
        assert!(err("\n\n").contains("no examples"));
        let chat = r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}"#;
        assert!(err(chat).contains("line 1: messages") && err(chat).contains("chat template"));
        let e = err(r#"{"messages": [{"role": "user"}]}"#);
        assert!(e.contains("line 1: messages[0].content") && e.contains("missing"), "{e}");
    }

    #[test]
    fn conversations_become_one_example_per_assistant_turn() {
        let t = ChatTemplate::new(
            "{% for m in messages %}<{{ m.role }}>{{ m.content }}</s>{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}",
            "",
            "</s>",
        )
        .unwrap();
        let text = r#"{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]}
{"prompt": "x", "completion": "y"}"#;
        let groups = parse(text, "chat.jsonl", Some(&t)).unwrap();
        assert_eq!(groups.iter().map(Vec::len).collect::<Vec<_>>(), vec![2, 1]);
        assert_eq!((groups[0][1].prompt.as_str(), groups[0][1].response.as_str()), ("<user>a</s><assistant>b</s><user>c</s><assistant>", "d</s>"));
        let e = parse(r#"{"messages": [{"role": "user", "content": "a"}]}"#, "chat.jsonl", Some(&t)).unwrap_err().to_string();
        assert!(e.contains("no assistant turn"), "{e}");
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
