//! The request side of `tinytune serve`'s OpenAI-style completions API, kept free of any
//! HTTP crate so the fuzzer (`fuzz/targets.rs`, target `serve_request`) drives exactly the
//! code the server runs: a request body in, a checked [`Completion`] or a [`Refusal`]
//! (status, field, message) out.

use serde_json::Value;

use crate::TextTokenizer;
use crate::sample::SampleConfig;

/// What the server offers: the base model's id, the adapters' ids and its limits.
pub struct Served {
    pub base: String,
    pub adapters: Vec<String>,
    /// The longest prompt, in tokens (`--max-prompt-tokens`, default the context).
    pub max_prompt_tokens: usize,
    /// The most tokens one request may ask for (`--max-tokens-limit`).
    pub max_tokens: usize,
}

/// A parsed, checked completion request.
#[derive(Debug)]
pub struct Completion {
    /// The id the request named (the base's or an adapter's).
    pub model: String,
    /// Which adapter, by position in [`Served::adapters`]; `None` for the base model.
    pub adapter: Option<usize>,
    pub prompt: Vec<u32>,
    pub config: SampleConfig,
    pub stop: Vec<String>,
    pub stream: bool,
}

/// A refused request: the HTTP status, the field at fault, what is wrong and what to send.
#[derive(Debug)]
pub struct Refusal {
    pub status: u16,
    pub param: Option<&'static str>,
    pub message: String,
}

fn bad(param: &'static str, message: String) -> Refusal {
    Refusal { status: 400, param: Some(param), message: format!("{param} {message}") }
}

/// Reads a `POST /v1/completions` body: every field checked, every refusal a 4xx naming
/// the field.
pub fn parse_completion(body: &[u8], served: &Served, tok: &TextTokenizer) -> Result<Completion, Refusal> {
    let v: Value = serde_json::from_slice(body).map_err(|e| Refusal { status: 400, param: None, message: format!("the request body is not JSON: {e}") })?;
    let Value::Object(o) = v else {
        return Err(Refusal { status: 400, param: None, message: "the request body must be a JSON object".into() });
    };
    let model = match o.get("model") {
        Some(Value::String(m)) => m.clone(),
        None => return Err(bad("model", "is required: one of the ids GET /v1/models lists".into())),
        Some(other) => return Err(bad("model", format!("must be a string, not {other}"))),
    };
    let adapter = if model == served.base {
        None
    } else {
        match served.adapters.iter().position(|a| *a == model) {
            Some(k) => Some(k),
            None => {
                let known: Vec<&str> = std::iter::once(served.base.as_str()).chain(served.adapters.iter().map(String::as_str)).collect();
                return Err(Refusal {
                    status: 404,
                    param: Some("model"),
                    message: format!("the model `{model}` is not served here; use one of {}", known.join(", ")),
                });
            }
        }
    };
    let prompt = match o.get("prompt") {
        Some(Value::String(p)) => p.clone(),
        Some(Value::Array(_)) => return Err(bad("prompt", "send one prompt (a string) per request".into())),
        None => return Err(bad("prompt", "is required (a string)".into())),
        Some(other) => return Err(bad("prompt", format!("must be a string, not {other}"))),
    };
    let ids = tok.encode(&prompt).map_err(|e| bad("prompt", e.to_string()))?;
    if ids.is_empty() {
        return Err(bad("prompt", "has no tokens; send some text to continue".into()));
    }
    if ids.len() > served.max_prompt_tokens {
        return Err(bad("prompt", format!("is {} tokens; this server takes at most {} (--max-prompt-tokens)", ids.len(), served.max_prompt_tokens)));
    }
    let int = |key: &'static str, default: u64| -> Result<u64, Refusal> {
        match o.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v.as_u64().ok_or_else(|| bad(key, format!("must be a whole number of 0 or more, not {v}"))),
        }
    };
    let max_tokens = usize::try_from(int("max_tokens", 16)?).unwrap_or(usize::MAX);
    if max_tokens > served.max_tokens {
        return Err(bad("max_tokens", format!("is {max_tokens}; this server generates at most {} tokens per request (--max-tokens-limit)", served.max_tokens)));
    }
    let temperature = match o.get("temperature") {
        None | Some(Value::Null) => 1.0,
        Some(v) => v.as_f64().filter(|t| (0.0..=2.0).contains(t)).ok_or_else(|| bad("temperature", format!("must be a number from 0 to 2, not {v}")))?,
    };
    let top_k = match o.get("top_k") {
        None | Some(Value::Null) => None,
        // vLLM's convention: -1 (or 0) keeps every token.
        Some(v) if v.as_i64().is_some_and(|k| k <= 0) => None,
        Some(v) => Some(usize::try_from(v.as_u64().ok_or_else(|| bad("top_k", format!("must be a whole number, not {v}")))?).unwrap_or(usize::MAX)),
    };
    let seed = int("seed", 0)?;
    let stop = match o.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) if a.len() <= 4 && a.iter().all(|s| s.as_str().is_some_and(|s| !s.is_empty())) => {
            a.iter().filter_map(Value::as_str).map(str::to_string).collect()
        }
        Some(other) => return Err(bad("stop", format!("must be a string or up to 4 non-empty strings, not {other}"))),
    };
    let stream = match o.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => return Err(bad("stream", format!("must be true or false, not {other}"))),
    };
    for (key, ok) in [("n", Value::from(1)), ("best_of", Value::from(1))] {
        if let Some(v) = o.get(key).filter(|v| !v.is_null() && **v != ok) {
            return Err(bad(key, format!("is {v}; this server returns one choice per request")));
        }
    }
    if o.get("echo").and_then(Value::as_bool) == Some(true) {
        return Err(bad("echo", "is not supported; the prompt is not repeated in the reply".into()));
    }
    let config = SampleConfig { max_new_tokens: max_tokens, temperature, top_k, seed, stop_ids: tok.eot().into_iter().collect(), cache: false };
    Ok(Completion { model, adapter, prompt: ids, config, stop, stream })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served() -> (Served, TextTokenizer) {
        let s = Served { base: "micro".into(), adapters: vec!["cats".into()], max_prompt_tokens: 8, max_tokens: 32 };
        (s, TextTokenizer::char_level("abcdefgh "))
    }

    #[test]
    fn a_good_request_is_read_field_by_field() {
        let (s, tok) = served();
        let c = parse_completion(br#"{"model":"cats","prompt":"abc","max_tokens":4,"temperature":0,"top_k":-1,"stop":["h"],"stream":true,"seed":7}"#, &s, &tok)
            .unwrap();
        assert_eq!((c.model.as_str(), c.adapter, c.prompt.len(), c.stream), ("cats", Some(0), 3, true));
        assert_eq!((c.config.max_new_tokens, c.config.temperature, c.config.top_k, c.config.seed), (4, 0.0, None, 7));
        assert_eq!(c.stop, vec!["h".to_string()]);
    }

    #[test]
    fn each_bad_field_is_refused_by_name_with_its_status() {
        let (s, tok) = served();
        for (body, status, param) in [
            (&br#"not json"#[..], 400, None),
            (br#"[1]"#, 400, None),
            (br#"{"prompt":"a"}"#, 400, Some("model")),
            (br#"{"model":"dogs","prompt":"a"}"#, 404, Some("model")),
            (br#"{"model":"micro","prompt":["a"]}"#, 400, Some("prompt")),
            (br#"{"model":"micro","prompt":"abcdefgha"}"#, 400, Some("prompt")),
            (br#"{"model":"micro","prompt":"a","max_tokens":33}"#, 400, Some("max_tokens")),
            (br#"{"model":"micro","prompt":"a","max_tokens":18446744073709551615}"#, 400, Some("max_tokens")),
            (br#"{"model":"micro","prompt":"a","temperature":3}"#, 400, Some("temperature")),
            (br#"{"model":"micro","prompt":"a","top_k":1.5}"#, 400, Some("top_k")),
            (br#"{"model":"micro","prompt":"a","stop":["", "b"]}"#, 400, Some("stop")),
            (br#"{"model":"micro","prompt":"a","stream":"yes"}"#, 400, Some("stream")),
            (br#"{"model":"micro","prompt":"a","n":2}"#, 400, Some("n")),
            (br#"{"model":"micro","prompt":"a","echo":true}"#, 400, Some("echo")),
        ] {
            let r = parse_completion(body, &s, &tok).unwrap_err();
            assert_eq!((r.status, r.param), (status, param), "{}: {}", String::from_utf8_lossy(body), r.message);
            if let Some(p) = param {
                assert!(r.message.contains(p), "{}", r.message);
            }
        }
    }
}
