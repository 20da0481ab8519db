//! `tinytune serve`: one base model and any number of named LoRA adapters behind an
//! OpenAI-style HTTP API (`GET /v1/models`, `POST /v1/completions`, streaming as server-sent
//! events).
//!
//! One engine thread owns the model (`tinytune::methods::multi::MultiLora`). Requests queue
//! to it; at every step it takes the waiting and running requests into one batch, whatever
//! adapter each uses, and gives each its next token from one forward pass
//! (`MultiLora::step`). `--batching per-adapter` batches only requests of one adapter at a
//! time, as a server without multi-adapter batching must: the baseline the throughput
//! benchmark (`scripts/bench-serve.py`) compares against.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use burn::tensor::Device;
use serde_json::{Value, json};
use tinytune::TextTokenizer;
use tinytune::methods::Method;
use tinytune::methods::multi::{Finish, MultiLora, Stream};
use tinytune::sample::SampleConfig;
use tinytune::serving::{Served, parse_completion};

use crate::cli::{Batching, ServeArgs};

/// What the engine tells a request's handler.
enum Event {
    /// New text (already clear of any stop string).
    Text(String),
    Done {
        text: String,
        token_ids: Vec<u32>,
        prompt_tokens: usize,
        finish: Finish,
    },
    Failed(String),
}

/// One queued request.
struct Job {
    prompt: Vec<u32>,
    adapter: Option<usize>,
    config: SampleConfig,
    stop: Vec<String>,
    events: tokio::sync::mpsc::UnboundedSender<Event>,
}

/// A request the engine is generating: its stream and how much text it has sent.
struct Running {
    job: Job,
    stream: Stream,
    sent: usize,
}

impl Running {
    fn new(job: Job) -> Self {
        Self { stream: Stream::new(&job.prompt, job.adapter, job.config.clone()), job, sent: 0 }
    }
}

/// The time since the Unix epoch.
fn since_epoch() -> std::time::Duration {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default()
}

/// The text of `out` up to (not including) an end-of-text token or a stop string, and
/// whether a stop string ended it.
fn visible_text(tok: &TextTokenizer, out: &[u32], stop: &[String]) -> (String, bool) {
    let ids: Vec<u32> = out.iter().copied().take_while(|id| Some(*id) != tok.eot()).collect();
    let text = tok.decode(&ids);
    match stop.iter().filter_map(|s| text.find(s.as_str())).min() {
        Some(at) => (text[..at].to_string(), true),
        None => (text, false),
    }
}

/// The engine: admits queued jobs, steps batches, reports tokens, until the queue closes.
fn engine(mut multi: MultiLora, tok: Arc<TextTokenizer>, jobs: mpsc::Receiver<Job>, batching: Batching, max_batch: usize) {
    let mut running: Vec<Running> = Vec::new();
    loop {
        if running.is_empty() {
            match jobs.recv() {
                Ok(job) => running.push(Running::new(job)),
                Err(_) => return,
            }
        }
        while let Ok(job) = jobs.try_recv() {
            running.push(Running::new(job));
        }
        // The batch: the oldest requests, of any adapter or of the oldest one's only.
        let first = running[0].job.adapter;
        let chosen: Vec<usize> =
            (0..running.len()).filter(|&i| batching == Batching::Mixed || running[i].job.adapter == first).take(max_batch.max(1)).collect();
        let mut batch: Vec<Stream> = chosen.iter().map(|&i| running[i].stream.clone()).collect();
        if let Err(e) = multi.step(&mut batch) {
            for &i in &chosen {
                let _ = running[i].job.events.send(Event::Failed(e.to_string()));
            }
            running = running.into_iter().enumerate().filter(|(i, _)| !chosen.contains(i)).map(|(_, r)| r).collect();
            continue;
        }
        for (&i, stream) in chosen.iter().zip(batch) {
            running[i].stream = stream;
        }
        let mut keep = Vec::with_capacity(running.len());
        for (i, mut r) in running.into_iter().enumerate() {
            // A request outside this batch took no token: nothing to send or check.
            if !chosen.contains(&i) {
                keep.push(r);
                continue;
            }
            let (text, stopped) = visible_text(&tok, &r.stream.out, &r.job.stop);
            if stopped {
                r.stream.finish(Finish::Stop);
            }
            let done = r.stream.finished.is_some();
            // Text is sent once it cannot still turn into a stop string or a split character.
            let hold = if done { 0 } else { r.job.stop.iter().map(|s| s.len().saturating_sub(1)).max().unwrap_or(0) };
            let mut upto = text.len().saturating_sub(hold);
            while !text.is_char_boundary(upto) {
                upto -= 1;
            }
            let mut ready = &text[..upto];
            if !done {
                ready = ready.trim_end_matches('\u{FFFD}');
            }
            let mut alive = true;
            if ready.len() > r.sent {
                alive = r.job.events.send(Event::Text(ready[r.sent..].to_string())).is_ok();
                r.sent = ready.len();
            }
            if done {
                let _ = r.job.events.send(Event::Done {
                    text,
                    token_ids: r.stream.out.clone(),
                    prompt_tokens: r.job.prompt.len(),
                    finish: r.stream.finished.unwrap_or(Finish::Length),
                });
            } else if alive {
                keep.push(r);
            }
        }
        running = keep;
    }
}

/// What the handlers share.
struct App {
    jobs: std::sync::Mutex<mpsc::Sender<Job>>,
    tok: Arc<TextTokenizer>,
    served: Served,
    created: u64,
}

/// An OpenAI-style error: `{"error": {"message", "type", "param", "code"}}`.
fn error(status: StatusCode, param: Option<&str>, message: impl Into<String>) -> Response {
    let kind = if status == StatusCode::NOT_FOUND { "not_found_error" } else { "invalid_request_error" };
    let code = if status == StatusCode::NOT_FOUND && param == Some("model") { Value::from("model_not_found") } else { Value::Null };
    (status, axum::Json(json!({"error": {"message": message.into(), "type": kind, "param": param, "code": code}}))).into_response()
}

async fn models(State(app): State<Arc<App>>) -> Response {
    let entry = |id: &str, parent: Option<&str>| json!({"id": id, "object": "model", "created": app.created, "owned_by": "tinytune", "parent": parent});
    let mut data = vec![entry(&app.served.base, None)];
    data.extend(app.served.adapters.iter().map(|a| entry(a, Some(&app.served.base))));
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

/// The largest request body the server reads: 1 MiB, far more than any prompt its model's
/// context holds.
const MAX_BODY: usize = 1 << 20;

async fn completions(State(app): State<Arc<App>>, body: Result<Bytes, axum::extract::rejection::BytesRejection>) -> Response {
    // A body past the limit (or one that fails to arrive) is refused in the API's JSON
    // error shape like every other bad request.
    let body = match body {
        Ok(b) => b,
        Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return error(StatusCode::PAYLOAD_TOO_LARGE, None, format!("the request body is larger than {} KiB; send a shorter prompt", MAX_BODY >> 10));
        }
        Err(r) => return error(r.status(), None, format!("the request body could not be read: {}", r.body_text())),
    };
    let req = match parse_completion(&body, &app.served, &app.tok) {
        Ok(r) => r,
        Err(r) => return error(StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_REQUEST), r.param, r.message),
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let job = Job { prompt: req.prompt, adapter: req.adapter, config: req.config, stop: req.stop, events: tx };
    if app.jobs.lock().unwrap_or_else(|e| e.into_inner()).send(job).is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, None, "the server is shutting down");
    }
    let now = since_epoch();
    let id = format!("cmpl-{}", now.as_nanos());
    let created = now.as_secs();
    if !req.stream {
        loop {
            match rx.recv().await {
                Some(Event::Text(_)) => continue,
                Some(Event::Done { text, token_ids, prompt_tokens, finish }) => {
                    let completion = token_ids.len();
                    return axum::Json(json!({
                        "id": id, "object": "text_completion", "created": created, "model": req.model,
                        "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": finish, "token_ids": token_ids}],
                        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion},
                    }))
                    .into_response();
                }
                Some(Event::Failed(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, None, e),
                None => return error(StatusCode::SERVICE_UNAVAILABLE, None, "the engine stopped"),
            }
        }
    }
    let model = req.model.clone();
    let chunk = move |text: &str, finish: Option<Finish>, ids: Option<&[u32]>| {
        let mut choice = json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish});
        if let Some(ids) = ids {
            choice["token_ids"] = json!(ids);
        }
        let c = json!({"id": id, "object": "text_completion", "created": created, "model": model, "choices": [choice]});
        Bytes::from(format!("data: {c}\n\n"))
    };
    let events = futures_util::stream::unfold((rx, false), move |(mut rx, ended)| {
        let chunk = chunk.clone();
        async move {
            if ended {
                return None;
            }
            let item = match rx.recv().await {
                Some(Event::Text(t)) => (chunk(&t, None, None), false),
                Some(Event::Done { finish, token_ids, .. }) => {
                    let mut last = chunk("", Some(finish), Some(&token_ids)).to_vec();
                    last.extend_from_slice(b"data: [DONE]\n\n");
                    (Bytes::from(last), true)
                }
                Some(Event::Failed(e)) => (Bytes::from(format!("data: {}\n\n", json!({"error": {"message": e, "type": "server_error"}}))), true),
                None => return None,
            };
            Some((Ok::<Bytes, std::convert::Infallible>(item.0), (rx, item.1)))
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(events))
        .unwrap_or_else(|_| error(StatusCode::INTERNAL_SERVER_ERROR, None, "could not start the stream"))
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, None, "no such endpoint; use GET /v1/models or POST /v1/completions")
}

/// Loads one `NAME=DIR` adapter onto `base`: a PEFT folder, or a tinytune LoRA run.
fn load_adapter(spec: &str, base: &tinytune::Gpt, device: &Device) -> Result<(String, tinytune::Gpt), String> {
    use tinytune::methods::peft;
    let (name, dir) = spec.split_once('=').filter(|(n, d)| !n.is_empty() && !d.is_empty()).ok_or_else(|| format!("--adapter: {spec:?} is not NAME=DIR"))?;
    let dir = Path::new(dir);
    let model = if dir.join(peft::CONFIG).exists() {
        let config = crate::fsutil::read_text(&dir.join(peft::CONFIG))?;
        let weights = crate::fsutil::read(&dir.join(peft::WEIGHTS))?;
        peft::load(base.clone(), &config, &weights, &dir.display().to_string(), device).map_err(|e| format!("--adapter {name}: {e}"))?.0
    } else {
        let method = crate::model_dir::method_of(dir)?;
        if !matches!(method, Method::Lora(_)) {
            return Err(format!("--adapter {name}: {} is a {} run; only LoRA adapters serve side by side", dir.display(), method.name()));
        }
        crate::model_dir::load(dir, device)?.model
    };
    Ok((name.to_string(), model))
}

/// Ctrl-C, or (on Unix) SIGTERM: finish the requests in flight, then stop.
async fn stop_signal() {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(t) => t,
            Err(_) => return std::future::pending::<()>().await,
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

pub fn serve_cmd(a: ServeArgs, device: &Device) -> Result<(), String> {
    let loaded = crate::model_dir::load_language_model(&a.model, device)?;
    let base_id =
        a.model.canonicalize().ok().and_then(|p| p.file_name().map(|n| n.to_string_lossy().to_string())).unwrap_or_else(|| a.model.display().to_string());
    let mut adapters = Vec::new();
    for spec in &a.adapter {
        let (name, model) = load_adapter(spec, &loaded.model, device)?;
        if name == base_id {
            return Err(format!("--adapter {name}: the base model is served under that name; choose another"));
        }
        adapters.push((name, model));
    }
    let context = loaded.model.context_len();
    let multi = MultiLora::new(loaded.model, adapters).map_err(|e| match e {
        tinytune::Error::Config { field, problem, .. } => format!("--adapter {field}: {problem}"),
        other => other.to_string(),
    })?;
    let names = multi.names.clone();
    let tok = Arc::new(loaded.tokenizer);
    let (tx, rx) = mpsc::channel();
    let engine_tok = tok.clone();
    let (batching, max_batch) = (a.batching, a.max_batch);
    let worker = std::thread::spawn(move || engine(multi, engine_tok, rx, batching, max_batch));
    let app = Arc::new(App {
        jobs: std::sync::Mutex::new(tx),
        tok,
        served: Served {
            base: base_id.clone(),
            adapters: names.clone(),
            max_prompt_tokens: a.max_prompt_tokens.unwrap_or(context),
            max_tokens: a.max_tokens_limit,
        },
        created: since_epoch().as_secs(),
    });
    let router = Router::new()
        .route("/v1/models", get(models))
        .route("/v1/completions", post(completions))
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(app.clone());
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().map_err(|e| format!("starting the server's runtime: {e}"))?;
    let addr: SocketAddr = format!("{}:{}", a.host, a.port).parse().map_err(|e| format!("--host/--port: {}:{} is not an address: {e}", a.host, a.port))?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("--port: cannot listen on {addr}: {e}"))?;
        let bound = listener.local_addr().map_err(|e| e.to_string())?;
        eprintln!(
            "serving {} (base) and {} adapter(s) [{}] on http://{bound}/v1 ({} batching); Ctrl-C stops",
            base_id,
            names.len(),
            names.join(", "),
            a.batching.name()
        );
        axum::serve(listener, router).with_graceful_shutdown(stop_signal()).await.map_err(|e| format!("the server failed: {e}"))
    })?;
    // Closing the queue ends the engine once its running requests are done.
    drop(app);
    let _ = worker.join();
    eprintln!("stopped");
    Ok(())
}
