//! Preference data: a prompt with a preferred (`chosen`) and a dispreferred (`rejected`)
//! completion, the input of DPO and its relatives.
//!
//! Two sources:
//!
//! - **TRL's preference format** in JSON Lines, one pair per line: the standard form
//!   `{"prompt": …, "chosen": …, "rejected": …}` with strings, and the conversational
//!   form where `prompt` is a list of messages and `chosen`/`rejected` are lists holding
//!   the assistant's reply (rendered with the model's chat template). As in TRL, the
//!   completion is what is scored, and a plain-text completion ends with the end-of-text
//!   token (TRL appends EOS).
//! - **Generated pairs** on the built-in tasks ([`Task::pairs`]), on the task's own
//!   examples (same prompts, same train/held-out split), of two kinds ([`PairKind`]):
//!   - `{task}-pairs`, a *correctness* preference: the reference response chosen, a
//!     plausible wrong one rejected — another name, place, colour or feeling for
//!     story-qa, the opposite label for sentiment, one field changed for json-extract;
//!   - `{task}-sentence-pairs`, a *style* preference: the answer as a whole sentence
//!     ("lily went to the park.") chosen over the task's bare answer ("the park.");
//!     both are right, only the form differs (story-qa and sentiment).
//!
//! KTO learns from **unpaired** feedback instead: one completion a line with a `label`
//! (TRL's unpaired preference format, [`parse_feedback`]), or pairs taken apart
//! ([`unpair`]) as TRL's `KTOTrainer` does with paired data.

use serde_json::Value;

use super::stories::{COLORS, FEELINGS, NAMES, OBJECTS, PLACES};
use super::{Example, Rng, Split, Task};
use crate::error::{Error, Origin, Result};
use crate::tokenizer::chat::{ChatTemplate, Message};

/// One preference pair: both completions continue the same prompt.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Pair {
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
    /// The completions are assistant turns rendered by a chat template (which ends them
    /// with its end-of-turn text; no end-of-text token is appended).
    #[serde(default)]
    pub chat: bool,
}

/// What a generated pair prefers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PairKind {
    /// The right answer over a plausible wrong one (`{task}-pairs`).
    Correct,
    /// The answer as a whole sentence over the bare answer (`{task}-sentence-pairs`).
    Sentence,
}

impl PairKind {
    /// The data name's suffix: `-pairs` or `-sentence-pairs`.
    pub fn suffix(&self) -> &'static str {
        match self {
            PairKind::Correct => "-pairs",
            PairKind::Sentence => "-sentence-pairs",
        }
    }

    /// Whether `task` has pairs of this kind (a JSON record has no sentence form).
    pub fn fits(&self, task: Task) -> bool {
        !(*self == PairKind::Sentence && task == Task::JsonExtract)
    }
}

impl Task {
    /// `n` preference pairs of `split` of the given kind: the task's examples (the very
    /// prompts of [`Task::examples`], so the held-out pairs are held out of SFT too). A
    /// wrong response is drawn from a stream of its own, seeded by the prompt, so the
    /// examples themselves are exactly the task's.
    pub fn pairs(&self, kind: PairKind, seed: u64, split: Split, n: usize) -> Vec<Pair> {
        assert!(kind.fits(*self), "{self} has no {kind:?} pairs");
        self.examples(seed, split, n)
            .into_iter()
            .map(|ex| match kind {
                PairKind::Correct => {
                    let mut rng = Rng::derive(seed, &format!("rejected/{}/{}", self.name(), ex.prompt));
                    let rejected = self.wrong_response(&ex, &mut rng);
                    Pair { prompt: ex.prompt, chosen: ex.response, rejected, chat: false }
                }
                PairKind::Sentence => Pair { chosen: self.sentence_response(&ex), prompt: ex.prompt, rejected: ex.response, chat: false },
            })
            .collect()
    }

    /// The right answer of `ex` as a whole sentence, e.g. " lily went to the park.\n".
    fn sentence_response(&self, ex: &Example) -> String {
        let answer = ex.response.trim().trim_end_matches('.');
        let sentence = match self {
            Task::StoryQa => {
                let question = ex.prompt.rsplit("question: ").next().unwrap_or("").split('\n').next().unwrap_or("");
                let words: Vec<&str> = question.trim_end_matches('?').split(' ').collect();
                let subject = words.get(2).copied().unwrap_or("");
                match words.as_slice() {
                    ["where", "did", ..] => format!("{subject} went to {answer}"),
                    ["who", "did", ..] => format!("{subject} met {answer}"),
                    ["what", "did", ..] => format!("{subject} had {answer}"),
                    ["what", "color", "was", "the", object] => format!("the {object} was {answer}"),
                    _ => format!("{subject} felt {answer}"),
                }
            }
            Task::Sentiment => format!("the text sounds {answer}"),
            Task::JsonExtract => unreachable!("no sentence form"),
        };
        format!(" {sentence}.\n")
    }

    /// A response in the task's format that is wrong for `ex`.
    fn wrong_response(&self, ex: &Example, rng: &mut Rng) -> String {
        let answer = ex.response.trim();
        match self {
            Task::StoryQa => {
                let answer = answer.trim_end_matches('.');
                let question = ex.prompt.rsplit("question: ").next().unwrap_or("");
                let other = |rng: &mut Rng, words: &[&str], not: &str| -> String {
                    let choices: Vec<&str> = words.iter().copied().filter(|w| *w != not).collect();
                    rng.choose(&choices).to_string()
                };
                let names: Vec<&str> = NAMES.iter().map(|(n, _)| *n).collect();
                let wrong = if question.starts_with("where") {
                    format!("the {}", other(rng, &PLACES, answer.trim_start_matches("the ")))
                } else if question.starts_with("who") {
                    // Neither the friend nor the hero (the hero is the question's subject).
                    let hero = question.trim_start_matches("who did ").split(' ').next().unwrap_or("");
                    let choices: Vec<&str> = names.iter().copied().filter(|n| *n != answer && *n != hero).collect();
                    rng.choose(&choices).to_string()
                } else if question.starts_with("what did") {
                    // "a {color} {object}": change one of the two.
                    let mut words = answer.split(' ').skip(1);
                    let (color, object) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
                    if rng.chance(0.5) { format!("a {} {object}", other(rng, &COLORS, color)) } else { format!("a {color} {}", other(rng, &OBJECTS, object)) }
                } else if question.starts_with("what color") {
                    other(rng, &COLORS, answer)
                } else {
                    other(rng, &FEELINGS, answer)
                };
                format!(" {wrong}.\n")
            }
            Task::Sentiment => format!(" {}\n", if answer == "happy" { "sad" } else { "happy" }),
            Task::JsonExtract => {
                // Change one field's value to another word of its kind.
                let fields: [(&str, Vec<&str>); 4] =
                    [("name", NAMES.iter().map(|(n, _)| *n).collect()), ("object", OBJECTS.to_vec()), ("color", COLORS.to_vec()), ("place", PLACES.to_vec())];
                let (key, words) = &fields[rng.below(fields.len())];
                let marker = format!("\"{key}\": \"");
                let start = answer.find(&marker).map(|i| i + marker.len()).unwrap_or(0);
                let end = start + answer[start..].find('"').unwrap_or(0);
                let value = &answer[start..end];
                let choices: Vec<&str> = words.iter().copied().filter(|w| *w != value).collect();
                format!(" {}{}{}\n", &answer[..start], rng.choose(&choices), &answer[end..])
            }
        }
    }
}

/// Parses TRL's preference format from JSON Lines `text`: one pair per line, standard
/// (strings) or conversational (message lists, rendered with `chat`). Blank lines are
/// skipped; every error names the file, the line and the field.
pub fn parse(text: &str, origin: impl Into<Origin>, chat: Option<&ChatTemplate>) -> Result<Vec<Pair>> {
    let origin = origin.into();
    let mut out = Vec::new();
    for (n, obj) in objects(text, &origin, "{\"prompt\": …, \"chosen\": …, \"rejected\": …}")? {
        let at = |field: &str, problem: String| Error::config(origin.clone(), format!("line {n}: {field}"), problem);
        for field in ["chosen", "rejected"] {
            if !obj.contains_key(field) {
                let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
                return Err(at(
                    field,
                    format!("is missing (the line has {keys:?}); a preference pair needs prompt, chosen and rejected, as TRL's DPOTrainer reads them"),
                ));
            }
        }
        let (prompt, mut completions, chat) = completions(&obj, &["chosen", "rejected"], &at, chat)?;
        let rejected = completions.pop().expect("two");
        let chosen = completions.pop().expect("two");
        out.push(Pair { prompt, chosen, rejected, chat });
    }
    if out.is_empty() {
        return Err(Error::config(origin, "lines", "holds no preference pairs; write one {\"prompt\", \"chosen\", \"rejected\"} object per line"));
    }
    Ok(out)
}

/// One example of unpaired feedback (KTO's data): a completion of a prompt, marked
/// desirable (`label` true) or undesirable.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Unpaired {
    pub prompt: String,
    pub completion: String,
    pub label: bool,
    /// As [`Pair::chat`].
    #[serde(default)]
    pub chat: bool,
}

/// What KTO reads from a file: TRL's unpaired preference format, or preference pairs, which
/// it unpairs ([`unpair`]).
#[derive(Clone, Debug, PartialEq)]
pub enum Feedback {
    Pairs(Vec<Pair>),
    Unpaired(Vec<Unpaired>),
}

/// Parses KTO's data from JSON Lines `text`: TRL's unpaired preference format,
/// `{"prompt": …, "completion": …, "label": true|false}` (strings, or message lists rendered
/// with `chat`), or its preference format (prompt/chosen/rejected), as TRL's `KTOTrainer`
/// takes either, deciding by the first line. Every error names the file, the line and the
/// field.
pub fn parse_feedback(text: &str, origin: impl Into<Origin>, chat: Option<&ChatTemplate>) -> Result<Feedback> {
    let origin = origin.into();
    let lines = objects(text, &origin, "{\"prompt\": …, \"completion\": …, \"label\": true}")?;
    let Some((_, first)) = lines.first() else {
        return Err(Error::config(origin, "lines", "holds no examples; write one {\"prompt\", \"completion\", \"label\"} object per line"));
    };
    if first.contains_key("chosen") || first.contains_key("rejected") {
        return Ok(Feedback::Pairs(parse(text, origin, chat)?));
    }
    let mut out = Vec::new();
    for (n, obj) in lines {
        let at = |field: &str, problem: String| Error::config(origin.clone(), format!("line {n}: {field}"), problem);
        if obj.contains_key("chosen") || obj.contains_key("rejected") {
            return Err(at("chosen", "is a preference pair, but line 1 is unpaired; write every line in one format".into()));
        }
        let label = match obj.get("label") {
            Some(Value::Bool(b)) => *b,
            Some(other) => return Err(at("label", format!("is {other}; write true (a desirable completion) or false (an undesirable one)"))),
            None => {
                let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
                return Err(at(
                    "label",
                    format!("is missing (the line has {keys:?}); unpaired feedback needs prompt, completion and label, as TRL's KTOTrainer reads them"),
                ));
            }
        };
        if !obj.contains_key("completion") {
            return Err(at("completion", "is missing; write the completion the label judges".into()));
        }
        let (prompt, mut completion, chat) = completions(&obj, &["completion"], &at, chat)?;
        out.push(Unpaired { prompt, completion: completion.pop().expect("one"), label, chat });
    }
    Ok(Feedback::Unpaired(out))
}

/// Pairs as unpaired examples, in TRL's order (`unpair_preference_dataset`): the chosen
/// completions of up to 1,000 pairs (TRL's map batch), desirable, then their rejected ones.
pub fn unpair(pairs: &[Pair]) -> Vec<Unpaired> {
    let mut out = Vec::with_capacity(2 * pairs.len());
    for chunk in pairs.chunks(1000) {
        for (label, pick) in [(true, 0), (false, 1)] {
            out.extend(chunk.iter().map(|p| Unpaired { prompt: p.prompt.clone(), completion: [&p.chosen, &p.rejected][pick].clone(), label, chat: p.chat }));
        }
    }
    out
}

/// The JSON objects of a JSON Lines text with their line numbers; blank lines skipped.
fn objects(text: &str, origin: &Origin, shape: &str) -> Result<Vec<(usize, serde_json::Map<String, Value>)>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let at = |problem: String| Error::config(origin.clone(), format!("line {n}: json"), problem);
        super::jsonl::check_line_length(line, &at)?;
        let value: Value = serde_json::from_str(line).map_err(|e| at(format!("is not valid JSON ({e}); write one JSON object per line")))?;
        let Value::Object(obj) = value else {
            return Err(at(format!("is not a JSON object; write {shape}")));
        };
        out.push((n, obj));
    }
    Ok(out)
}

/// A line's prompt and the completions in `fields`: all plain strings, or a message-list
/// prompt with each field a list holding one assistant message, rendered with `chat`.
/// Returns the prompt, the completions and whether they were rendered by the template.
fn completions(
    obj: &serde_json::Map<String, Value>,
    fields: &[&str],
    at: &dyn Fn(&str, String) -> Error,
    chat: Option<&ChatTemplate>,
) -> Result<(String, Vec<String>, bool)> {
    match obj.get("prompt") {
        Some(Value::String(prompt)) => {
            let text_of = |field: &str| match &obj[field] {
                Value::String(s) if !s.is_empty() => Ok(s.clone()),
                Value::String(_) => Err(at(field, "is empty; there is nothing to score".into())),
                other => Err(at(field, format!("is {other}, but the prompt is a string; make both plain strings or all message lists"))),
            };
            Ok((prompt.clone(), fields.iter().map(|f| text_of(f)).collect::<Result<_>>()?, false))
        }
        Some(Value::Array(prompt)) => {
            let chat = chat.ok_or_else(|| {
                at("prompt", "is a list of messages, and the model has no chat template to render them; use plain strings or a model with a template".into())
            })?;
            let prompt = messages(prompt, "prompt", at)?;
            let mut rendered_prompt: Option<String> = None;
            let mut out = Vec::new();
            for field in fields {
                let Value::Array(list) = &obj[*field] else {
                    return Err(at(field, "is not a list of messages, but the prompt is; make the prompt and every completion message lists".into()));
                };
                let list = messages(list, field, at)?;
                let content = match list.as_slice() {
                    [m] if m.role == "assistant" && !m.content.is_empty() => m.content.clone(),
                    _ => return Err(at(field, "must hold exactly one assistant message with some content".into())),
                };
                let mut conv = prompt.clone();
                conv.push(Message { role: "assistant".into(), content });
                let turns = chat.examples(&conv).map_err(|e| at("prompt", e.to_string()))?;
                let turn = turns.into_iter().last().ok_or_else(|| at("prompt", "rendered to no assistant turn".into()))?;
                if rendered_prompt.as_ref().is_some_and(|p| *p != turn.prompt) {
                    return Err(at("prompt", "renders differently before the two replies; the chat template must not depend on the reply".into()));
                }
                rendered_prompt = Some(turn.prompt);
                out.push(turn.response);
            }
            Ok((rendered_prompt.expect("at least one field"), out, true))
        }
        None => Err(at("prompt", "is missing; write the shared prompt in its own field (TRL's implicit-prompt form is not read)".into())),
        Some(other) => Err(at("prompt", format!("is {other}; write a string or a list of messages"))),
    }
}

fn messages(list: &[Value], field: &str, at: &dyn Fn(&str, String) -> Error) -> Result<Vec<Message>> {
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let get = |k: &str| m.get(k).and_then(Value::as_str).map(str::to_string);
            match (get("role"), get("content")) {
                (Some(role), Some(content)) => Ok(Message { role, content }),
                _ => Err(at(&format!("{field}[{i}]"), "needs a string role and a string content".into())),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_pairs_keep_the_tasks_examples_and_reject_a_wrong_answer_of_the_same_kind() {
        for task in Task::ALL {
            let examples = task.examples(7, Split::Eval, 40);
            let pairs = task.pairs(PairKind::Correct, 7, Split::Eval, 40);
            for (ex, pair) in examples.iter().zip(&pairs) {
                assert_eq!((&pair.prompt, &pair.chosen), (&ex.prompt, &ex.response), "{task}");
                assert_ne!(pair.rejected, pair.chosen, "{task}");
                assert!(pair.rejected.starts_with(' ') && pair.rejected.ends_with('\n'), "{task}: {:?}", pair.rejected);
                assert!(!task.is_correct(ex, &pair.rejected), "{task}: {:?} scores as correct", pair.rejected);
            }
            assert_eq!(pairs, task.pairs(PairKind::Correct, 7, Split::Eval, 40), "deterministic");
        }
        // Same kind of answer: a place for a place, a feeling for a feeling.
        for pair in Task::StoryQa.pairs(PairKind::Correct, 1, Split::Train, 200) {
            let q = pair.prompt.rsplit("question: ").next().unwrap();
            let (c, r) = (pair.chosen.trim(), pair.rejected.trim());
            if q.starts_with("where") {
                assert!(c.starts_with("the ") && r.starts_with("the "), "{q}: {c} / {r}");
            }
            if q.starts_with("what did") {
                assert!(r.starts_with("a ") && r.split(' ').count() == 3, "{q}: {r}");
            }
            if q.starts_with("how") {
                assert!(FEELINGS.contains(&r.trim_end_matches('.')), "{q}: {r}");
            }
        }
    }

    #[test]
    fn sentence_pairs_prefer_the_whole_sentence_over_the_bare_answer() {
        let pairs = Task::StoryQa.pairs(PairKind::Sentence, 2, Split::Eval, 200);
        let examples = Task::StoryQa.examples(2, Split::Eval, 200);
        let mut seen = std::collections::HashSet::new();
        for (pair, ex) in pairs.iter().zip(&examples) {
            assert_eq!((&pair.prompt, &pair.rejected), (&ex.prompt, &ex.response));
            let answer = ex.response.trim().trim_end_matches('.');
            assert!(pair.chosen.starts_with(' ') && pair.chosen.ends_with(".\n") && pair.chosen.contains(answer), "{:?} / {answer}", pair.chosen);
            let verb = ["went", "met", "had", "was", "felt"].into_iter().find(|v| pair.chosen.contains(&format!(" {v} "))).unwrap();
            seen.insert(verb);
        }
        // went, met, had, was, felt: every question type has its sentence.
        assert_eq!(seen.len(), 5, "{seen:?}");
        assert_eq!(
            Task::Sentiment.pairs(PairKind::Sentence, 0, Split::Train, 1)[0].chosen.trim(),
            format!("the text sounds {}.", Task::Sentiment.examples(0, Split::Train, 1)[0].response.trim())
        );
        assert!(!PairKind::Sentence.fits(Task::JsonExtract));
    }

    /// TRL's conversational form: the prompt's messages rendered with the generation prompt,
    /// each reply the rest of the rendered conversation (its end-of-turn text included), as
    /// TRL's `DPOTrainer` tokenises it; no end-of-text token is appended to a chat reply.
    #[test]
    fn conversational_pairs_render_with_the_chat_template() {
        let chatml = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
        let chat = ChatTemplate::new(chatml, "", "<|im_end|>").unwrap();
        let line = r#"{"prompt": [{"role": "user", "content": "sky?"}], "chosen": [{"role": "assistant", "content": "blue"}], "rejected": [{"role": "assistant", "content": "green"}]}"#;
        let pairs = parse(line, "c.jsonl", Some(&chat)).unwrap();
        assert_eq!(
            pairs,
            vec![Pair {
                prompt: "<|im_start|>user\nsky?<|im_end|>\n<|im_start|>assistant\n".into(),
                chosen: "blue<|im_end|>\n".into(),
                rejected: "green<|im_end|>\n".into(),
                chat: true
            }]
        );
        // Mixed forms and malformed replies are named.
        let mixed = r#"{"prompt": [{"role": "user", "content": "sky?"}], "chosen": "blue", "rejected": [{"role": "assistant", "content": "green"}]}"#;
        let e = parse(mixed, "c.jsonl", Some(&chat)).unwrap_err().to_string();
        assert!(e.contains("line 1: chosen") && e.contains("message lists"), "{e}");
        let two = r#"{"prompt": [{"role": "user", "content": "sky?"}], "chosen": [{"role": "user", "content": "a"}], "rejected": [{"role": "assistant", "content": "green"}]}"#;
        let e = parse(two, "c.jsonl", Some(&chat)).unwrap_err().to_string();
        assert!(e.contains("line 1: chosen") && e.contains("one assistant message"), "{e}");
    }

    #[test]
    fn trl_standard_pairs_parse_and_bad_lines_name_the_line_and_field() {
        let ok = "{\"prompt\": \"q:\", \"chosen\": \" a\", \"rejected\": \" b\"}\n\n{\"prompt\": \"r:\", \"chosen\": \" c\", \"rejected\": \" d\"}\n";
        let pairs = parse(ok, "p.jsonl", None).unwrap();
        assert_eq!(pairs.len(), 2);
        assert_eq!(pairs[1], Pair { prompt: "r:".into(), chosen: " c".into(), rejected: " d".into(), chat: false });
        for (line, field, hint) in [
            ("{\"prompt\": \"q\", \"chosen\": \"a\"}", "line 1: rejected", "is missing"),
            ("{\"chosen\": \"a\", \"rejected\": \"b\"}", "line 1: prompt", "implicit-prompt"),
            ("{\"prompt\": \"q\", \"chosen\": \"\", \"rejected\": \"b\"}", "line 1: chosen", "is empty"),
            ("{\"prompt\": \"q\", \"chosen\": 3, \"rejected\": \"b\"}", "line 1: chosen", "plain strings"),
            ("{\"prompt\": [{\"role\": \"user\", \"content\": \"hi\"}], \"chosen\": [], \"rejected\": []}", "line 1: prompt", "no chat template"),
            ("not json", "line 1: json", "not valid JSON"),
        ] {
            let e = parse(line, "p.jsonl", None).unwrap_err().to_string();
            assert!(e.contains("p.jsonl") && e.contains(field) && e.contains(hint), "{line}: {e}");
        }
        assert!(parse("\n", "p.jsonl", None).unwrap_err().to_string().contains("no preference pairs"));
    }
}
