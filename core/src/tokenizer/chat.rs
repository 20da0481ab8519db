//! Chat templates: the Jinja template in a model's `tokenizer_config.json`
//! (`chat_template`) that turns a conversation into the text the model was trained on,
//! rendered as transformers renders it (`apply_chat_template`: blocks trimmed, loop
//! controls, `raise_exception`, Python's string methods), with minijinja.
//!
//! Conversational data (`{"messages": [{"role": …, "content": …}, …]}`, TRL's format)
//! becomes one example per assistant turn: the conversation up to that turn, rendered
//! with the generation prompt, is the prompt; what the full render adds is the response,
//! so the loss falls on assistant turns only, including each turn's end-of-turn marker
//! (which is what teaches the model to stop).

use minijinja::{Environment, Error as JinjaError, ErrorKind, context};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::data::Example;
use crate::error::{Error, Origin, Result};

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// A model's chat template and the special tokens it refers to.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatTemplate {
    pub source: String,
    pub bos_token: String,
    pub eos_token: String,
    origin: Origin,
}

/// A special token in `tokenizer_config.json`: a string, or an `AddedToken` object.
fn token_text(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Object(o)) => o.get("content").and_then(Value::as_str).unwrap_or_default().to_string(),
        _ => String::new(),
    }
}

impl ChatTemplate {
    /// The template of a `tokenizer_config.json` (None when it has no `chat_template`).
    /// A list of named templates (`[{"name": "default", "template": …}, …]`) gives the
    /// one named `default`. The template is compiled here, so a broken one is refused
    /// when the model loads, not when the data is read.
    pub fn from_tokenizer_config(text: &str, origin: impl Into<Origin>) -> Result<Option<Self>> {
        let origin = origin.into();
        let v: Value = serde_json::from_str(text).map_err(|e| Error::parse(origin.clone(), format!("not valid JSON ({e})")))?;
        let source = match v.get("chat_template") {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(named)) => named
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .and_then(|t| t.get("template").and_then(Value::as_str))
                .ok_or_else(|| Error::config(origin.clone(), "chat_template", "lists named templates but none called \"default\""))?
                .to_string(),
            Some(other) => return Err(Error::config(origin, "chat_template", format!("is {other}; expected a Jinja template string"))),
        };
        let template = Self { source, bos_token: token_text(v.get("bos_token")), eos_token: token_text(v.get("eos_token")), origin };
        template.env().map_err(|e| template.error(e))?;
        Ok(Some(template))
    }

    /// The template of a model folder: `chat_template.jinja` (where transformers 5 writes
    /// it) when given, else `tokenizer_config.json`'s `chat_template`; the special tokens
    /// come from `tokenizer_config.json`. Each file comes as `(text, name for errors)`.
    pub fn from_files(tokenizer_config: Option<(&str, &str)>, jinja: Option<(&str, &str)>) -> Result<Option<Self>> {
        let from_config = match tokenizer_config {
            Some((text, origin)) => Self::from_tokenizer_config(text, origin)?,
            None => None,
        };
        let Some((source, origin)) = jinja else { return Ok(from_config) };
        let (bos, eos) = match tokenizer_config {
            Some((text, _)) => {
                let v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
                (token_text(v.get("bos_token")), token_text(v.get("eos_token")))
            }
            None => Default::default(),
        };
        let template = Self { source: source.to_string(), bos_token: bos, eos_token: eos, origin: Origin::from(origin) };
        template.env().map_err(|e| template.error(e))?;
        Ok(Some(template))
    }

    /// A template given directly (tests, and models whose template lives elsewhere).
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let template = Self { source: source.into(), bos_token: bos_token.into(), eos_token: eos_token.into(), origin: Origin::from("chat template") };
        template.env().map_err(|e| template.error(e))?;
        Ok(template)
    }

    fn error(&self, e: JinjaError) -> Error {
        Error::config(self.origin.clone(), "chat_template", format!("{e}"))
    }

    fn env(&self) -> std::result::Result<Environment<'static>, JinjaError> {
        let mut env = Environment::new();
        // transformers compiles templates with trim_blocks and lstrip_blocks.
        env.set_syntax(minijinja::syntax::SyntaxConfig::builder().trim_blocks(true).lstrip_blocks(true).build()?);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |message: String| -> std::result::Result<String, JinjaError> {
            Err(JinjaError::new(ErrorKind::InvalidOperation, message))
        });
        env.add_template_owned("chat", self.source.clone())?;
        Ok(env)
    }

    /// The text for `messages`, ending with the assistant's turn opening when
    /// `add_generation_prompt` (what generation continues from).
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let env = self.env().map_err(|e| self.error(e))?;
        let template = env.get_template("chat").map_err(|e| self.error(e))?;
        template
            .render(context! {
                messages => messages.iter().map(|m| minijinja::Value::from_pairs([("role", m.role.clone()), ("content", m.content.clone())])).collect::<Vec<_>>(),
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos_token.clone(),
                eos_token => self.eos_token.clone(),
            })
            .map_err(|e| self.error(e))
    }

    /// One user message rendered with the generation prompt: what a chat reply continues.
    pub fn user_prompt(&self, user: &str) -> Result<String> {
        self.render(&[Message { role: "user".into(), content: user.into() }], true)
    }

    /// The ids a chat reply stops at: the tokenizer's end of text and the template's
    /// end-of-turn token (`eos_token`, e.g. ChatML's `<|im_end|>`), where each exists.
    pub fn stop_ids(&self, tok: &crate::TextTokenizer) -> Vec<u32> {
        let mut ids: Vec<u32> = tok.eot().into_iter().chain(tok.token_id(&self.eos_token)).collect();
        ids.dedup();
        ids
    }

    /// One training example per assistant turn of `messages` (see the module docs).
    pub fn examples(&self, messages: &[Message]) -> Result<Vec<Example>> {
        let mut out = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            if m.role != "assistant" {
                continue;
            }
            let prompt = self.render(&messages[..i], true)?;
            let full = self.render(&messages[..=i], false)?;
            let Some(response) = full.strip_prefix(&prompt) else {
                return Err(self.error(JinjaError::new(
                    ErrorKind::InvalidOperation,
                    "renders the conversation before an assistant turn differently once the turn is added, so the assistant's text cannot be told apart; tinytune needs a template whose render of a longer conversation extends the shorter one",
                )));
            };
            out.push(Example { prompt, response: response.to_string(), chat: true });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ChatML as SmolLM2 and Qwen2.5 write it (shortened: no default system prompt).
    pub const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

    fn msgs(pairs: &[(&str, &str)]) -> Vec<Message> {
        pairs.iter().map(|(r, c)| Message { role: r.to_string(), content: c.to_string() }).collect()
    }

    #[test]
    fn chatml_renders_as_transformers_does() {
        let t = ChatTemplate::new(CHATML, "<|im_start|>", "<|im_end|>").unwrap();
        let m = msgs(&[("user", "Hi"), ("assistant", "Hello!")]);
        assert_eq!(t.render(&m, false).unwrap(), "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n");
        assert_eq!(t.render(&m[..1], true).unwrap(), "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    }

    #[test]
    fn each_assistant_turn_is_an_example_ending_with_its_end_of_turn() {
        let t = ChatTemplate::new(CHATML, "", "<|im_end|>").unwrap();
        let ex = t.examples(&msgs(&[("system", "Be brief."), ("user", "2+2?"), ("assistant", "4"), ("user", "and 3+3?"), ("assistant", "6")])).unwrap();
        assert_eq!(ex.len(), 2);
        assert_eq!(ex[0].response, "4<|im_end|>\n");
        assert!(ex[1].prompt.ends_with("and 3+3?<|im_end|>\n<|im_start|>assistant\n") && ex[1].prompt.contains("4<|im_end|>"));
        assert_eq!(ex[1].response, "6<|im_end|>\n");
        assert!(ex.iter().all(|e| e.chat));
    }

    #[test]
    fn python_methods_raise_exception_and_bad_templates_are_named() {
        let t = ChatTemplate::new(
            "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first must be user') }}{% endif %}{{ messages[0]['content'].strip() }}",
            "",
            "",
        )
        .unwrap();
        assert_eq!(t.render(&msgs(&[("user", "  hi  ")]), false).unwrap(), "hi");
        let e = t.render(&msgs(&[("assistant", "x")]), false).unwrap_err().to_string();
        assert!(e.contains("chat_template") && e.contains("first must be user"), "{e}");
        let e = ChatTemplate::from_tokenizer_config(r#"{"chat_template": "{% for m in messages %}"}"#, "tokenizer_config.json").unwrap_err().to_string();
        assert!(e.starts_with("tokenizer_config.json") && e.contains("chat_template"), "{e}");
        assert_eq!(ChatTemplate::from_tokenizer_config(r#"{"eos_token": "x"}"#, "t").unwrap(), None);
        let named = r#"{"chat_template": [{"name": "default", "template": "{{ bos_token }}ok"}], "bos_token": {"content": "<s>", "special": true}}"#;
        assert_eq!(ChatTemplate::from_tokenizer_config(named, "t").unwrap().unwrap().render(&[], false).unwrap(), "<s>ok");
    }
}
