//! The compute worker. It owns the Burn device, loads models, trains and samples, and
//! answers the page with [`FromWorker`] messages. Work is cooperative: after every training
//! step the loop yields to the worker's event loop, which is when pause, resume and cancel
//! messages arrive.
//!
//! Backend choice: `tinytune_web::adapter::choose`, WebGPU when the browser offers a
//! hardware adapter, else Burn's flex CPU backend. The page applies the same rule to load
//! this code's WebGPU build (`worker`) or its CPU-only build (`worker-cpu`).

use crate::js;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use burn::module::Module;
use burn::tensor::Device;
use tinytune::checkpoint::load_parts;
use tinytune::data::{CHARSET, Split};
use tinytune::sample::{SampleConfig, generate_async};
use tinytune::train::{Control, DataSource, Outcome, Run, RunHost, TrainEvent, Trainer, eval_loss_async};
use tinytune::{Gpt, ModelConfig, TextTokenizer};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::spawn_local;
use web_sys::MessageEvent;

use tinytune_web::protocol::{BackendInfo, BackendPref, CompareRow, FromWorker, RunState, Samples, ToWorker};
use tinytune_web::run::EVAL_EXAMPLES;
use tinytune_web::widgets::{Compute, GenerateParams, ModelChoice, TrainParams};

/// A shipped checkpoint's files, fetched once.
struct ShippedFiles {
    config: String,
    tokenizer: String,
    weights: Vec<u8>,
}

#[derive(Default)]
struct State {
    /// The device new work runs on (None until the page's first `Init`).
    device: Option<Device>,
    /// WebGPU can be initialised once per worker; the result is kept for switching back.
    gpu: Option<Result<Device, String>>,
    /// The shipped checkpoints fetched so far, by folder.
    shipped: HashMap<&'static str, Rc<ShippedFiles>>,
    runs: HashMap<u32, Rc<Cell<Control>>>,
    /// The GGUF file the page posted last, until a `RealOpen` reads it.
    posted_file: Option<web_sys::File>,
    /// rayon's pool: its threads, and why not more.
    threads: (u32, Option<String>),
}

/// The real-model widget's model: the GGUF file's model on the autodiff device, its
/// tokenizer and chat template, and the last finished LoRA fine-tune of it.
struct RealSession {
    base: Gpt,
    tokenizer: TextTokenizer,
    chat: Option<tinytune::tokenizer::chat::ChatTemplate>,
    /// The fine-tuned model (LoRA unmerged) and how many steps trained it.
    tuned: Option<(Gpt, usize)>,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
    /// The lora-rank widget's last full fine-tune: (steps and lr, base, tuned, held-out
    /// data), so moving the rank slider does not train again.
    static RANK_RUN: RefCell<Option<(String, Gpt, Gpt, tinytune::train::Dataset)>> = const { RefCell::new(None) };
    static REAL: RefCell<Option<RealSession>> = const { RefCell::new(None) };
    static MERGE_STUDY: RefCell<Option<MergeSession>> = const { RefCell::new(None) };
    /// The reference checks' fixture files fetched so far, by path under `fixtures/`.
    static FIXTURES: RefCell<HashMap<String, Rc<Vec<u8>>>> = RefCell::new(HashMap::new());
}

/// The merge widget's two fine-tunes (for one steps/lr setting), the tokenizer, the
/// endpoints' scores, the training time, and every merge scored so far by its settings.
struct MergeSession {
    key: String,
    study: tinytune::merging::study::Study,
    tokenizer: TextTokenizer,
    endpoints: Vec<tinytune::merging::study::Scored>,
    train_seconds: f64,
    scored: HashMap<String, tinytune::merging::study::Scored>,
}

/// Sends `msg` to the page; error text names core's fields as the page's controls.
fn post(msg: &FromWorker) {
    let json = match msg {
        FromWorker::Error { id, message } => FromWorker::Error { id: *id, message: tinytune_web::fields::render(message) }.to_json(),
        FromWorker::Status { run, state: RunState::Failed, message } => {
            FromWorker::Status { run: *run, state: RunState::Failed, message: tinytune_web::fields::render(message) }.to_json()
        }
        other => other.to_json(),
    };
    js::post(&json);
}

fn status(run: u32, state: RunState, message: &str) {
    post(&FromWorker::Status { run, state, message: message.to_string() });
}

/// Entry point of the worker binary.
pub fn start() {
    console_error_panic_hook::set_once();
    #[cfg(feature = "threads")]
    if crate::threads::is_pool_thread() {
        return;
    }
    let onmessage = Closure::<dyn FnMut(MessageEvent)>::new(|ev: MessageEvent| {
        let data = ev.data();
        if let Some(file) = js::posted_file(&data) {
            STATE.with_borrow_mut(|s| s.posted_file = Some(file));
            return;
        }
        let Some(text) = data.as_string() else { return };
        match serde_json::from_str::<ToWorker>(&text) {
            Ok(msg) => handle(msg),
            Err(e) => post(&FromWorker::Error { id: 0, message: format!("worker: unreadable message: {e}") }),
        }
    });
    js::set_onmessage(&onmessage);
    onmessage.forget();
    // The page sends nothing before `Ready`, so no tensor work starts before rayon's pool,
    // which flex needs from its first operation.
    spawn_local(async {
        #[cfg(feature = "threads")]
        let (threads, limit) = {
            let pool = crate::threads::start_pool().await;
            (pool.threads as u32, pool.limit)
        };
        #[cfg(not(feature = "threads"))]
        let (threads, limit) = (1, tinytune_web::adapter::threads(false, false, 1).1.to_string());
        STATE.with_borrow_mut(|s| s.threads = (threads, Some(limit).filter(|l| !l.is_empty())));
        post(&FromWorker::Ready);
    });
}

fn handle(msg: ToWorker) {
    let control = |run: u32, c: Control| STATE.with_borrow(|s| s.runs.get(&run).map(|cell| cell.set(c)));
    match msg {
        ToWorker::Init { prefer } => spawn_local(async move {
            let info = init(prefer).await;
            post(&FromWorker::Backend(info));
        }),
        ToWorker::Train { run, params } => spawn_run(run, move |cell| async move { train(run, &params, &cell).await }),
        ToWorker::Pause { run } => {
            control(run, Control::Pause);
        }
        ToWorker::Resume { run } => {
            control(run, Control::Run);
        }
        ToWorker::Cancel { run } => {
            control(run, Control::Cancel);
        }
        ToWorker::Crash => panic!("crash requested by the page (ToWorker::Crash)"),
        ToWorker::RealOpen { id } => spawn_local(async move {
            post(&match real_open().await {
                Ok(info) => FromWorker::RealOpened { id, info },
                Err(message) => FromWorker::Error { id, message },
            });
        }),
        ToWorker::RealChat { id, prompt, max_tokens } => spawn_local(async move {
            if let Err(message) = real_chat(id, &prompt, max_tokens).await {
                post(&FromWorker::Error { id, message });
            }
        }),
        ToWorker::RealTrain { run, params } => spawn_run(run, move |cell| async move { real_train(run, &params, &cell).await }),
        ToWorker::Preference { run, sft, params } => spawn_run(run, move |cell| async move { preference(run, sft, &params, &cell).await }),
        ToWorker::Grpo { run, sft, params } => spawn_run(run, move |cell| async move { grpo(run, sft, &params, &cell).await }),
        ToWorker::Distill { run, teacher, students, params } => {
            spawn_run(run, move |cell| async move { distill(run, teacher, students, &params, &cell).await })
        }
        ToWorker::Request { id, req } => spawn_local(async move {
            post(&match tinytune_web::widgets::answer::<Here>(req).await {
                Ok(reply) => FromWorker::Reply { id, reply },
                Err(message) => FromWorker::Error { id, message },
            });
        }),
    }
}

/// Starts training run `run`: its control cell is registered for pause, resume and cancel
/// while `work` runs, and its end (or failure) is posted as the run's final status.
fn spawn_run<Fut: std::future::Future<Output = Result<RunState, String>> + 'static>(run: u32, work: impl FnOnce(Rc<Cell<Control>>) -> Fut) {
    let cell = Rc::new(Cell::new(Control::Run));
    STATE.with_borrow_mut(|s| s.runs.insert(run, cell.clone()));
    let work = work(cell);
    spawn_local(async move {
        match work.await {
            Ok(state) => status(run, state, ""),
            Err(e) => status(run, RunState::Failed, &e),
        }
        STATE.with_borrow_mut(|s| s.runs.remove(&run));
    });
}

/// This worker, as the `W` of [`Compute<W>`]: the page's library declares the trait (one
/// implementation per widget whose `widgets!` line names an answer) and this crate
/// implements it here, where the Burn device lives.
pub struct Here;

impl Compute<Here> for GenerateParams {
    type Answer = Samples;
    async fn compute(self) -> Result<Samples, String> {
        generate(&self).await
    }
}

impl Compute<Here> for tinytune_web::memory::TimelineParams {
    type Answer = tinytune_web::memory::TimelineResult;
    /// Synchronous, without yielding: no other run's step interleaves with the measurement.
    async fn compute(self) -> Result<Self::Answer, String> {
        measure_memory(&self)
    }
}

impl Compute<Here> for tinytune_web::quantize::QuantizeParams {
    type Answer = tinytune_web::quantize::QuantizeResult;
    async fn compute(self) -> Result<Self::Answer, String> {
        quantize(&self).await
    }
}

impl Compute<Here> for tinytune_web::precision::LossScalingParams {
    type Answer = tinytune_web::precision::LossScalingResult;
    async fn compute(self) -> Result<Self::Answer, String> {
        loss_scaling(&self).await
    }
}

impl Compute<Here> for tinytune_web::optimizers::OptimizerStateParams {
    type Answer = tinytune::optim::report::StateReport;
    async fn compute(self) -> Result<Self::Answer, String> {
        optimizer_state(&self).await
    }
}

impl Compute<Here> for tinytune_web::rope::RopeParams {
    type Answer = tinytune_web::rope::RopeResult;
    async fn compute(self) -> Result<Self::Answer, String> {
        rope_losses(&self).await
    }
}

impl Compute<Here> for tinytune_web::merge::MergeParams {
    type Answer = tinytune_web::merge::MergeResult;
    async fn compute(self) -> Result<Self::Answer, String> {
        merge_study(&self).await
    }
}

impl Compute<Here> for tinytune_web::federated::FederatedParams {
    type Answer = tinytune_web::federated::FederatedResult;
    async fn compute(self) -> Result<Self::Answer, String> {
        federated(&self).await
    }
}

impl Compute<Here> for tinytune_web::prune::PruneParams {
    type Answer = tinytune_web::prune::PruneResult;
    async fn compute(self) -> Result<Self::Answer, String> {
        prune_sweep(&self).await
    }
}

impl Compute<Here> for tinytune_web::rank::RankParams {
    type Answer = tinytune::methods::rank::RankReport;
    async fn compute(self) -> Result<Self::Answer, String> {
        lora_rank(&self).await
    }
}

impl Compute<Here> for tinytune_web::verify::VerifyParams {
    type Answer = tinytune::verify::Outcome;
    async fn compute(self) -> Result<Self::Answer, String> {
        verify_one(&self).await
    }
}

/// One reference check on the current device, its fixture files fetched (once per worker)
/// from the site's copy of `tests/fixtures`. The parts that save files run on the CPU
/// backend, which reads back synchronously.
async fn verify_one(p: &tinytune_web::verify::VerifyParams) -> Result<tinytune::verify::Outcome, String> {
    let name = p.run.as_deref().ok_or("the page names the check to run")?;
    let check = tinytune::verify::checks().into_iter().find(|c| c.name == name).ok_or_else(|| format!("no reference check is called {name}"))?;
    let mut files = tinytune::verify::Files::default();
    for f in &check.files {
        let cached = FIXTURES.with_borrow(|m| m.get(f).cloned());
        let bytes = match cached {
            Some(b) => b,
            None => {
                let b = Rc::new(js::fetch_bytes(&format!("{}/{f}", tinytune_web::verify::FIXTURES_URL)).await?);
                FIXTURES.with_borrow_mut(|m| m.insert(f.clone(), b.clone()));
                b
            }
        };
        files.0.insert(f.clone(), bytes.to_vec());
    }
    let target = tinytune::verify::Target { device: device().await, host: Device::flex() };
    Ok(tinytune::verify::run_async(&check, &files, &target).await)
}

/// One measured training step of the micro model's shape, always on the CPU (flex): the
/// counting allocator sees CPU memory only. It runs to completion without yielding, so no
/// other run's step interleaves with the measurement.
fn measure_memory(params: &tinytune_web::memory::TimelineParams) -> Result<tinytune_web::memory::TimelineResult, String> {
    let config = tinytune::ModelConfig::micro();
    let batch = tinytune::memory::measure::synthetic_batch(params.batch, params.seq, config.vocab_size);
    let measured = tinytune::memory::measure_step(&config, &params.tinytune_method(), &batch, &Device::flex().autodiff()).map_err(|e| e.to_string())?;
    Ok(tinytune_web::memory::TimelineResult { measured, estimate: params.estimate() })
}

/// Picks the backend for `prefer` and makes it current.
async fn init(prefer: BackendPref) -> BackendInfo {
    let adapter = tinytune_web::adapter::probe().await;
    let describe = adapter.as_ref().map(|a| a.describe());
    let cpu = |reason: String| {
        STATE.with_borrow_mut(|s| s.device = Some(Device::flex()));
        let (threads, threads_limit) = STATE.with_borrow(|s| s.threads.clone());
        BackendInfo { name: "CPU".into(), reason, adapter: describe.clone(), threads, threads_limit }
    };
    let (webgpu, reason) = tinytune_web::adapter::choose(prefer, adapter.as_ref());
    if !webgpu {
        return cpu(reason.into());
    }
    let cached = STATE.with_borrow(|s| s.gpu.clone());
    let gpu = match cached {
        Some(r) => r,
        None => {
            let r = start_webgpu().await;
            STATE.with_borrow_mut(|s| s.gpu = Some(r.clone()));
            r
        }
    };
    match gpu {
        Ok(device) => {
            STATE.with_borrow_mut(|s| s.device = Some(device));
            BackendInfo { name: "WebGPU".into(), reason: reason.into(), adapter: describe, threads: 1, threads_limit: None }
        }
        Err(e) => cpu(format!("WebGPU failed to start ({e}), so training runs on the CPU")),
    }
}

#[cfg(feature = "webgpu")]
async fn start_webgpu() -> Result<Device, String> {
    Device::wgpu_options().init_async().await.map_err(|e| format!("{e:?}"))
}

/// The CPU-only build (`worker-cpu`) has no WebGPU backend. The page loads the other build
/// whenever this one would need it, so this is only reached if the page's adapter probe
/// and the worker's disagree.
#[cfg(not(feature = "webgpu"))]
async fn start_webgpu() -> Result<Device, String> {
    Err("this is the CPU-only build of the worker; reload the page to load the WebGPU one".into())
}

/// The current device, waiting for the page's first `Init` if it has not finished.
async fn device() -> Device {
    loop {
        if let Some(d) = STATE.with_borrow(|s| s.device.clone()) {
            return d;
        }
        js::sleep(20).await;
    }
}

async fn shipped_files(dir: &'static str) -> Result<Rc<ShippedFiles>, String> {
    if let Some(m) = STATE.with_borrow(|s| s.shipped.get(dir).cloned()) {
        return Ok(m);
    }
    let files = Rc::new(ShippedFiles {
        config: js::fetch_text(&format!("{dir}/config.json")).await?,
        tokenizer: js::fetch_text(&format!("{dir}/tokenizer.json")).await?,
        weights: js::fetch_bytes(&format!("{dir}/model.safetensors")).await?,
    });
    STATE.with_borrow_mut(|s| s.shipped.insert(dir, files.clone()));
    Ok(files)
}

/// The model a widget asked for, on `device`: a shipped checkpoint, or a fresh nano model
/// exactly as `tinytune pretrain --preset nano --tokenizer char` builds it.
async fn load(choice: ModelChoice, seed: u64, device: &Device) -> Result<(Gpt, TextTokenizer), String> {
    match choice.shipped() {
        Some(dir) => {
            let f = shipped_files(dir).await?;
            let loaded = load_parts(dir, &f.config, &f.tokenizer, &f.weights, device).map_err(|e| e.to_string())?;
            Ok((loaded.model, loaded.tokenizer))
        }
        None => {
            let tokenizer = TextTokenizer::char_level(CHARSET);
            let mut config = ModelConfig::nano();
            config.vocab_size = tokenizer.vocab_size();
            Ok((Gpt::init(&config, seed, device), tokenizer))
        }
    }
}

async fn train(run: u32, p: &TrainParams, control: &Cell<Control>) -> Result<RunState, String> {
    let config = p.train_config();
    // QLoRA dequantizes its base on the host every step, 8-bit AdamW updates on the host,
    // and paged optimizers copy their state to the host: each reads tensors back
    // synchronously, which WebGPU cannot do, so these always run on the CPU.
    let qlora = matches!(config.method, tinytune::methods::Method::Qlora(_));
    let kind = config.optimizer.kind;
    let host_only = qlora || kind.eight_bit() || kind.paged();
    let ad = if host_only { Device::flex().autodiff() } else { device().await.autodiff() };
    let on_cpu = tinytune::optim::optimizer::host_memory_device(&ad);
    let device_name = match (on_cpu, host_only) {
        (false, _) => "WebGPU".to_string(),
        (true, true) => format!("CPU ({} reads tensors back synchronously, which WebGPU cannot)", if qlora { "QLoRA" } else { kind.name() }),
        (true, false) => "CPU".to_string(),
    };
    status(run, RunState::Preparing, "loading the model");
    let (model, tokenizer) = load(p.model, p.seed, &ad).await?;
    let model = config.method.apply(model, config.seed, &ad).map_err(|e| e.to_string())?;
    status(run, RunState::Preparing, "generating and tokenising the data");
    js::yield_now().await;
    let trainer = Trainer::new(model, &tokenizer, config, &ad).map_err(|e| e.to_string())?;
    let before = match p.compare {
        true => {
            status(run, RunState::Preparing, "measuring the model before fine-tuning");
            Some(measure(&trainer.model.valid(), &tokenizer, p).await?)
        }
        false => None,
    };
    let mut host = WorkerHost {
        run,
        control,
        paused: false,
        summary: String::new(),
        host_only,
        stats: tinytune_web::protocol::RunStats { optimizer: kind.name().into(), device: device_name, ..Default::default() },
        on_cpu,
        // Peak memory of the run: everything the worker allocates from here on, above this level.
        base: tinytune::memory::measure::current(),
        step_secs: 0.0,
    };
    tinytune::memory::measure::reset_peak();
    let mut driven = Run::new(trainer, tokenizer.clone());
    if driven.drive_async(&mut host).await? == Outcome::Cancelled {
        return Ok(RunState::Cancelled);
    }
    let trainer = driven.trainer;
    if let Some((answers_before, stories_before)) = before {
        status(run, RunState::Preparing, "measuring the model after fine-tuning");
        let (answers_after, stories_after) = measure(&trainer.model.valid(), &tokenizer, p).await?;
        let rows = answers_before
            .into_iter()
            .zip(answers_after)
            .map(|((prompt, expected, before), (_, _, after))| CompareRow { prompt, expected, before, after })
            .collect();
        post(&FromWorker::Compare { run, rows, stories_before, stories_after });
    }
    Ok(RunState::Done)
}

/// The worker's side of a run: the page's pause/resume/cancel, and every event posted to
/// the page unchanged, with the run's cost after each step.
struct WorkerHost<'a> {
    run: u32,
    control: &'a Cell<Control>,
    paused: bool,
    /// The status line while running: the method summary, and where the run is.
    summary: String,
    host_only: bool,
    stats: tinytune_web::protocol::RunStats,
    on_cpu: bool,
    base: usize,
    /// Seconds spent in training steps alone (not evaluations or pauses).
    step_secs: f64,
}

impl<'a> WorkerHost<'a> {
    /// A host for run `run` that trains with `optimizer` on the CPU (`on_cpu`) or WebGPU,
    /// its peak memory counted from what the worker holds now.
    fn new(run: u32, control: &'a Cell<Control>, optimizer: &str, on_cpu: bool) -> Self {
        WorkerHost {
            run,
            control,
            paused: false,
            summary: String::new(),
            host_only: false,
            stats: tinytune_web::protocol::RunStats {
                optimizer: optimizer.into(),
                device: if on_cpu { "CPU".into() } else { "WebGPU".into() },
                ..Default::default()
            },
            on_cpu,
            base: tinytune::memory::measure::current(),
            step_secs: 0.0,
        }
    }
}

impl RunHost for WorkerHost<'_> {
    type Error = String;

    /// The page's last word for this run (pause, resume or cancel), with the status line
    /// changed when the run pauses or resumes.
    fn control(&mut self) -> Control {
        let c = self.control.get();
        match c {
            Control::Pause if !self.paused => {
                self.paused = true;
                status(self.run, RunState::Paused, "");
            }
            Control::Run if self.paused => {
                self.paused = false;
                status(self.run, RunState::Running, &self.summary);
            }
            _ => {}
        }
        c
    }

    fn event(&mut self, trainer: &Trainer, event: &TrainEvent) -> Result<(), String> {
        if let TrainEvent::Start(s) = event {
            self.summary = s.summary.clone();
            if self.host_only {
                self.summary += if self.summary.is_empty() { "on the CPU" } else { " · on the CPU" };
            }
            self.stats.trainable = s.trainable as u64;
            status(self.run, RunState::Running, &self.summary);
        }
        post(&FromWorker::Run { run: self.run, event: event.clone() });
        if let TrainEvent::Step(e) = event {
            self.step_secs += e.tokens as f64 / e.tokens_per_s.max(1e-9);
            self.stats.state_bytes = trainer.optim.state_bytes() as u64;
            self.stats.state_bytes_by_replica = trainer.optim.state_bytes_by_replica().into_iter().map(|b| b as u64).collect();
            self.stats.peak_bytes = self.on_cpu.then(|| tinytune::memory::measure::peak().saturating_sub(self.base) as u64);
            self.stats.step_seconds = self.step_secs / trainer.step.max(1) as f64;
            post(&FromWorker::RunStats { run: self.run, stats: self.stats.clone() });
        }
        Ok(())
    }

    async fn wait_async(&mut self) {
        js::sleep(50).await;
    }

    async fn yield_now(&mut self) {
        // Let pause/cancel messages (and the page's other requests) in.
        js::yield_now().await;
    }
}

/// Greedy answers to three held-out prompts of the task (none for stories) and the loss on
/// held-out pre-training text: what the "before / after" comparison shows.
async fn measure(model: &Gpt, tok: &TextTokenizer, p: &TrainParams) -> Result<(Vec<(String, String, String)>, f32), String> {
    let err = |e: tinytune::Error| e.to_string();
    let stories = DataSource::Stories.dataset(tok, 0, Split::Eval, EVAL_EXAMPLES, p.seq, 0.0).map_err(err)?;
    let stories_loss = eval_loss_async(model, &stories, p.batch, p.seq, tinytune_web::run::EVAL_BATCHES).await.map_err(err)?;
    let mut answers = Vec::new();
    if let DataSource::Task(task) = p.task {
        let config = SampleConfig { max_new_tokens: 60, temperature: 0.0, top_k: None, seed: 0, stop_ids: tok.line_stop_ids(), cache: true };
        for ex in task.examples(0, Split::Eval, 3) {
            let ids = tok.encode(&ex.prompt).map_err(err)?;
            let out = generate_async(model, &ids, &config).await.map_err(err)?;
            answers.push((ex.prompt.clone(), ex.response.trim().to_string(), tok.decode(&out).trim().to_string()));
        }
    }
    Ok((answers, stories_loss))
}

/// Post-training quantization of the shipped micro model: held-out story loss and a greedy
/// sample before and after, and the chosen layer's weights before and after.
async fn quantize(p: &tinytune_web::quantize::QuantizeParams) -> Result<tinytune_web::quantize::QuantizeResult, String> {
    let err = |e: tinytune::Error| e.to_string();
    let device = device().await;
    let (model, tok) = load(ModelChoice::Micro, 0, &device).await?;
    // The chosen weight in torch.nn.Linear's [out, in] layout, where the quantizer's blocks run.
    let weights = |m: &Gpt| -> Vec<f32> {
        let w = tinytune::model::params::param_data(m).into_iter().find(|(n, _)| *n == format!("{}.weight", p.layer)).map(|(_, d)| d);
        w.map(|d| {
            let dims = d.shape().dims::<2>();
            let (d_in, d_out) = (dims[0], dims[1]);
            tinytune_web::quantize::to_linear_layout(&d.convert::<f32>().try_to_vec::<f32>().unwrap_or_default(), d_in, d_out)
        })
        .unwrap_or_default()
    };
    let before_w = weights(&model);
    let (quantized, report) = tinytune::formats::ptq::quantize_model(model.clone(), &p.format, p.block, p.double_quant).map_err(err)?;
    let after_w = weights(&quantized);
    if before_w.is_empty() {
        return Err(format!("the micro model has no weight named {}", p.layer));
    }
    let seq = 128;
    let stories = DataSource::Stories.dataset(&tok, 0, Split::Eval, EVAL_EXAMPLES, seq, 0.0).map_err(err)?;
    let loss_before = eval_loss_async(&model, &stories, 8, seq, tinytune_web::run::EVAL_BATCHES).await.map_err(err)?;
    let loss_after = eval_loss_async(&quantized, &stories, 8, seq, tinytune_web::run::EVAL_BATCHES).await.map_err(err)?;
    let prompt = "one day, lily went to the park.";
    let ids = tok.encode(prompt).map_err(err)?;
    let config = SampleConfig { max_new_tokens: 40, temperature: 0.0, top_k: None, seed: 0, stop_ids: tok.eot().into_iter().collect(), cache: true };
    let sample = |out: Vec<u32>| format!("{prompt}{}", tok.decode(&out));
    let sample_before = sample(generate_async(&model, &ids, &config).await.map_err(err)?);
    let sample_after = sample(generate_async(&quantized, &ids, &config).await.map_err(err)?);
    let histogram = tinytune_web::quantize::histogram(&before_w, &after_w, 60, p.block);
    Ok(tinytune_web::quantize::QuantizeResult { report, loss_before, loss_after, histogram, sample_before, sample_after })
}

/// The prune widget: micro, then micro pruned at each of the widget's sparsities, each
/// measured as `tinytune prune --data stories` measures it (the same held-out stories in
/// batches of `ROWS` windows, the same calibration batches and seed), with a greedy sample.
/// On the CPU: pruning reads the weights back synchronously.
async fn prune_sweep(p: &tinytune_web::prune::PruneParams) -> Result<tinytune_web::prune::PruneResult, String> {
    use tinytune::prune::{calibration_batches, counts, prune};
    use tinytune_web::prune::{CALIBRATION_BATCHES, EXAMPLES, PruneMap, PruneRow, ROWS, SAMPLE_TOKENS, layer_map, matrix_map};
    let err = |e: tinytune::Error| e.to_string();
    let started = web_time::Instant::now();
    let device = Device::flex();
    let (model, tok) = load(ModelChoice::Micro, 0, &device).await?;
    let seq = model.context_len().min(128);
    let held_out = DataSource::Stories.dataset(&tok, 0, Split::Eval, EXAMPLES, seq, 0.0).map_err(err)?;
    let windows = held_out.sequential(ROWS, seq, usize::MAX).len() * ROWS;
    let calibration =
        if p.calibrates() { calibration_batches(&DataSource::Stories, &tok, p.seed, CALIBRATION_BATCHES, ROWS, seq).map_err(err)? } else { Vec::new() };
    let calibration_tokens = calibration.iter().map(|b| b.weight_sum() as usize).sum();
    let ids = tok.encode(&p.prompt).map_err(err)?;
    if ids.is_empty() {
        return Err("type a prompt first: each row's sample continues it".into());
    }
    let config = SampleConfig { max_new_tokens: SAMPLE_TOKENS, temperature: 0.0, top_k: None, seed: 0, stop_ids: tok.eot().into_iter().collect(), cache: true };
    // Held-out loss and a greedy sample (ending at <|endoftext|>, without it).
    let measure = async |m: &Gpt| -> Result<(f32, String), String> {
        let loss = eval_loss_async(m, &held_out, ROWS, seq, usize::MAX).await.map_err(err)?;
        let mut out = generate_async(m, &ids, &config).await.map_err(err)?;
        if out.last().is_some_and(|id| config.stop_ids.contains(id)) {
            out.pop();
        }
        Ok((loss, format!("{}{}", p.prompt, tok.decode(&out))))
    };
    let before = counts(&model);
    let (loss, sample) = measure(&model).await?;
    let mut rows = vec![PruneRow { sparsity: 0.0, parameters: before.total, nonzero: before.nonzero, zeros: None, neurons: None, loss, sample, map: None }];
    for sparsity in p.sparsities() {
        js::yield_now().await;
        let (pruned, report) = prune(model.clone(), &p.plan(sparsity), &calibration).map_err(err)?;
        let (loss, sample) = measure(&pruned).await?;
        let (zeros, map) = match (&report.unstructured, &report.structured) {
            (Some(u), _) => (Some(u.zeros()), Some(matrix_map(&u.matrices))),
            (None, Some(s)) => (None, Some(PruneMap::Structured(s.layers.iter().map(layer_map).collect()))),
            (None, None) => (None, None),
        };
        let neurons = report.structured.as_ref().map(|s| s.shape_after.inner);
        rows.push(PruneRow { sparsity, parameters: report.after.total, nonzero: report.after.nonzero, zeros, neurons, loss, sample, map });
    }
    Ok(tinytune_web::prune::PruneResult { params: p.clone(), rows, windows, calibration_tokens, seconds: started.elapsed().as_secs_f64() })
}

/// One batch of the shipped micro model's story-qa task, its gradients computed in FP32 and
/// in FP16/BF16 unscaled and at the chosen scale. Always on the CPU (flex): it has both
/// half types, and the comparison reads every gradient back synchronously.
async fn loss_scaling(p: &tinytune_web::precision::LossScalingParams) -> Result<tinytune_web::precision::LossScalingResult, String> {
    use tinytune::train::precision::underflow_reports;
    use tinytune::train::{Precision, TrainConfig, Trainer};
    let precision: Precision = p.precision.parse()?;
    let device = Device::flex().autodiff();
    let (model, tok) = load(ModelChoice::Micro, 0, &device).await?;
    let config = TrainConfig {
        data: DataSource::Task(tinytune::data::Task::StoryQa),
        batch_size: p.batch,
        seq_len: p.seq,
        train_examples: 200,
        eval_examples: 20,
        ..TrainConfig::default()
    };
    let trainer = Trainer::new(model, &tok, config, &device).map_err(|e| e.to_string())?;
    let batch = trainer.batch_for(0);
    if batch.weight_sum() == 0.0 {
        return Err(format!("at {} tokens per row every answer is cut off, so no token counts in the loss; use a longer seq", p.seq));
    }
    let [unscaled, scaled]: [_; 2] = underflow_reports(&trainer, &batch, precision, &[1.0, p.scale()]).try_into().expect("one report per scale");
    Ok(tinytune_web::precision::LossScalingResult { unscaled, scaled })
}

/// One step of every optimizer on a batch of micro's story-qa gradients, on the CPU (the
/// report reads state back synchronously).
async fn optimizer_state(p: &tinytune_web::optimizers::OptimizerStateParams) -> Result<tinytune::optim::report::StateReport, String> {
    use tinytune::train::TrainConfig;
    let device = Device::flex().autodiff();
    let (model, tok) = load(ModelChoice::Micro, 0, &device).await?;
    let config = TrainConfig {
        data: DataSource::Task(tinytune::data::Task::StoryQa),
        batch_size: 8,
        seq_len: 128,
        train_examples: 100,
        eval_examples: 10,
        ..TrainConfig::default()
    };
    let trainer = Trainer::new(model, &tok, config, &device).map_err(|e| e.to_string())?;
    tinytune::optim::report::state_report(&trainer, &trainer.batch_for(0), &p.layer).map_err(|e| e.to_string())
}

/// Full fine-tuning of micro on the CPU (the report reads weights back synchronously),
/// exactly as `tinytune lora-rank` runs it, then the rank report for the chosen matrix.
async fn lora_rank(p: &tinytune_web::rank::RankParams) -> Result<tinytune::methods::rank::RankReport, String> {
    let device = Device::flex();
    let key = format!("{}:{}", p.steps, p.lr);
    if RANK_RUN.with_borrow(|r| r.as_ref().map(|(k, ..)| k != &key).unwrap_or(true)) {
        let ad = device.clone().autodiff();
        let (model, tok) = load(ModelChoice::Micro, 0, &ad).await?;
        let config = tinytune::methods::rank::finetune_config(DataSource::Task(tinytune::data::Task::Sentiment), p.steps, p.lr, 8, 64, 0);
        let mut trainer = Trainer::new(model.clone(), &tok, config, &ad).map_err(|e| e.to_string())?;
        for _ in 0..p.steps {
            trainer.step().map_err(|e| e.to_string())?;
            js::yield_now().await;
        }
        RANK_RUN.with_borrow_mut(|r| *r = Some((key, model.valid(), trainer.model.valid(), trainer.eval.clone())));
    }
    RANK_RUN.with_borrow(|r| {
        let (_, base, tuned, eval) = r.as_ref().expect("a run was just stored");
        tinytune::methods::rank::rank_report(base, tuned, &p.matrix, p.rank, eval, 8, 64, 4, &device).map_err(|e| e.to_string())
    })
}

/// The merge widget: two full fine-tunes of micro (once per steps/lr, on the CPU: scoring
/// reads tensors back synchronously), then every method at `t` and the chosen method along
/// the curve, each merge scored once and remembered.
async fn merge_study(p: &tinytune_web::merge::MergeParams) -> Result<tinytune_web::merge::MergeResult, String> {
    use tinytune::data::Task;
    use tinytune::merging::study::{Knobs, METHODS, Study, finetune_config, study_yaml};
    let device = Device::flex();
    let key = format!("{}:{}", p.steps, p.lr);
    if MERGE_STUDY.with_borrow(|s| s.as_ref().map(|s| s.key != key).unwrap_or(true)) {
        MERGE_STUDY.with_borrow_mut(|s| *s = None);
        let started = web_time::Instant::now();
        let ad = device.clone().autodiff();
        let (model, tok) = load(ModelChoice::Micro, 0, &ad).await?;
        let tasks = [Task::Sentiment, Task::JsonExtract];
        let mut tuned = Vec::new();
        for task in tasks {
            let mut trainer = Trainer::new(model.clone(), &tok, finetune_config(task, p.steps, p.lr, 0), &ad).map_err(|e| e.to_string())?;
            for _ in 0..p.steps {
                trainer.step().map_err(|e| e.to_string())?;
                js::yield_now().await;
            }
            tuned.push(trainer.model.valid());
        }
        let train_seconds = started.elapsed().as_secs_f64();
        let b = tuned.pop().expect("two fine-tunes");
        let study = Study::new(
            model.valid(),
            tuned.pop().expect("two fine-tunes"),
            b,
            tasks,
            &tok,
            tinytune_web::merge::EXAMPLES,
            tinytune_web::merge::ACCURACY_EXAMPLES,
        )
        .map_err(|e| e.to_string())?;
        let endpoints = study.endpoints(&tok).map_err(|e| e.to_string())?;
        MERGE_STUDY.with_borrow_mut(|s| *s = Some(MergeSession { key, study, tokenizer: tok, endpoints, train_seconds, scored: HashMap::new() }));
    }
    let started = web_time::Instant::now();
    let knobs = p.knobs();
    let mut wanted: Vec<Knobs> = METHODS.iter().map(|m| Knobs { method: m.to_string(), ..knobs.clone() }).collect();
    wanted.extend(tinytune_web::merge::CURVE.iter().map(|&t| Knobs { t, ..knobs.clone() }));
    let mut methods = Vec::new();
    let mut curve = Vec::new();
    for (i, k) in wanted.iter().enumerate() {
        let id = serde_json::to_string(k).map_err(|e| e.to_string())?;
        let known = MERGE_STUDY.with_borrow(|s| s.as_ref().and_then(|s| s.scored.get(&id).cloned()));
        let scored = match known {
            Some(s) => s,
            None => {
                js::yield_now().await;
                let s = MERGE_STUDY.with_borrow(|s| {
                    let s = s.as_ref().expect("the study was just stored");
                    s.study.score(&k.method, k.t, &s.study.merge(k, &device)?, &s.tokenizer)
                });
                let s = s.map_err(|e| e.to_string())?;
                MERGE_STUDY.with_borrow_mut(|m| m.as_mut().map(|m| m.scored.insert(id, s.clone())));
                s
            }
        };
        if i < METHODS.len() { methods.push(scored) } else { curve.push(scored) }
    }
    let (endpoints, train_seconds) = MERGE_STUDY.with_borrow(|s| s.as_ref().map(|s| (s.endpoints.clone(), s.train_seconds)).expect("stored"));
    let names = ["assets/micro", "runs/merge-study/task-a", "runs/merge-study/task-b"];
    Ok(tinytune_web::merge::MergeResult {
        endpoints,
        methods,
        curve,
        yaml: study_yaml(&knobs, names),
        train_seconds,
        score_seconds: started.elapsed().as_secs_f64(),
    })
}

/// The federated widget: every round's clients trained one after another (yielding between
/// steps), then averaged; on the CPU, as scoring reads losses back synchronously.
async fn federated(p: &tinytune_web::federated::FederatedParams) -> Result<tinytune_web::federated::FederatedResult, String> {
    use tinytune::merging::federated::Federated;
    let started = web_time::Instant::now();
    let ad = Device::flex().autodiff();
    let (model, tok) = load(ModelChoice::Micro, 0, &ad).await?;
    let config = p.config()?;
    let mut fed = Federated::new(model, &tok, config.clone(), &ad).map_err(|e| e.to_string())?;
    let mut rounds = Vec::new();
    for r in 1..=config.rounds {
        let mut models = Vec::new();
        for i in 0..config.clients {
            let mut t = fed.client(i, &ad).map_err(|e| e.to_string())?;
            for _ in 0..config.local_steps {
                t.step().map_err(|e| e.to_string())?;
                js::yield_now().await;
            }
            models.push(t.model);
        }
        for _ in 0..config.local_steps {
            fed.pooled().step().map_err(|e| e.to_string())?;
            js::yield_now().await;
        }
        rounds.push(fed.average(r, &models, &ad).map_err(|e| e.to_string())?);
    }
    Ok(tinytune_web::federated::FederatedResult { start_loss: fed.start_loss, rounds, seconds: started.elapsed().as_secs_f64() })
}

/// Held-out loss at every position of windows `factor` times micro-llama's context, with
/// each RoPE scaling, as `tinytune long-context --finetune-steps 0` measures it. On the CPU:
/// the loss is read back per position, synchronously.
async fn rope_losses(p: &tinytune_web::rope::RopeParams) -> Result<tinytune_web::rope::RopeResult, String> {
    use tinytune::train::positions::{PositionEval, scalings, with_scaling};
    let err = |e: tinytune::Error| e.to_string();
    let device = Device::flex();
    let (model, tok) = load(ModelChoice::MicroLlama, 0, &device).await?;
    let context = model.config.n_positions;
    let length = context * p.factor;
    let eval = PositionEval::stories(&tok, length, p.windows).map_err(err)?;
    let mut rows = Vec::new();
    for (name, scaling) in scalings(p.factor as f64, context) {
        js::yield_now().await;
        rows.push((name.to_string(), eval.losses(&with_scaling(&model, scaling)).map_err(err)?));
    }
    Ok(tinytune_web::rope::RopeResult { context, length, windows: p.windows, rows })
}

async fn generate(p: &GenerateParams) -> Result<Samples, String> {
    let device = device().await;
    let (model, tok) = load(p.model, p.seed, &device).await?;
    let ids = tok.encode(&p.prompt).map_err(|e| e.to_string())?;
    if ids.is_empty() {
        return Err("type a prompt first: the model needs at least one token to continue".into());
    }
    let started = web_time::Instant::now();
    let mut samples = Vec::new();
    for i in 0..p.samples {
        let config = SampleConfig {
            max_new_tokens: p.max_tokens,
            temperature: p.temperature,
            top_k: (p.top_k > 0).then_some(p.top_k),
            seed: p.seed + i as u64,
            stop_ids: tok.eot().into_iter().collect(),
            cache: true,
        };
        let mut out = generate_async(&model, &ids, &config).await.map_err(|e| e.to_string())?;
        // A sample that ends with <|endoftext|> is shown ending there, without the marker.
        if out.last().is_some_and(|id| config.stop_ids.contains(id)) {
            out.pop();
        }
        samples.push(tok.decode(&out));
        js::yield_now().await;
    }
    Ok(Samples { samples, seconds: started.elapsed().as_secs_f64() })
}

/// Reads, parses and loads the GGUF file the page posted, on the current device (with
/// autodiff, so the same weights fine-tune), replacing any model opened before.
async fn real_open() -> Result<tinytune_web::real::RealInfo, String> {
    use tinytune::gguf::{self, Gguf};
    let err = |e: tinytune::Error| e.to_string();
    let file = STATE.with_borrow_mut(|s| s.posted_file.take()).ok_or("no file reached the worker; choose the .gguf file again")?;
    let name = file.name();
    // The old model goes first: two 135M-parameter models at once is 1 GB of FP32.
    REAL.with_borrow_mut(|r| *r = None);
    let started = web_time::Instant::now();
    let bytes = js::read_file(&file).await?;
    let g = Gguf::parse(&bytes, name.as_str()).map_err(err)?;
    let storage = g.storage().into_iter().map(|(t, n, weights, b)| (format!("{t:?}"), n, weights, b)).collect();
    let ad = device().await.autodiff();
    js::yield_now().await;
    let opened = gguf::llama::open(&g, &ad).map_err(err)?;
    drop(g);
    drop(bytes);
    let c = &opened.config;
    let on_cpu = tinytune::optim::optimizer::host_memory_device(&ad);
    let info = tinytune_web::real::RealInfo {
        name,
        file_bytes: file.size() as u64,
        layers: c.n_layer,
        hidden: c.n_embd,
        heads: c.n_head,
        kv_heads: c.n_kv_head,
        vocab: c.vocab_size,
        context: c.n_positions,
        params: c.num_params() as u64,
        storage,
        chat_template: opened.chat.is_some(),
        load_seconds: started.elapsed().as_secs_f64(),
        worker_bytes: on_cpu.then(|| tinytune::memory::measure::current() as u64),
        device: if on_cpu { "CPU".into() } else { "WebGPU".into() },
    };
    REAL.with_borrow_mut(|r| *r = Some(RealSession { base: opened.model, tokenizer: opened.tokenizer, chat: opened.chat, tuned: None }));
    Ok(info)
}

/// Greedy reply of the opened model (the fine-tuned one once a run has finished) to one
/// user message in its chat template, streamed to the page token by token.
async fn real_chat(id: u32, prompt: &str, max_tokens: usize) -> Result<(), String> {
    use tinytune_web::real::ChatReply;
    let err = |e: tinytune::Error| e.to_string();
    let (model, tok, chat, label) = REAL
        .with_borrow(|r| {
            r.as_ref().map(|s| match &s.tuned {
                Some((m, steps)) => (m.clone(), s.tokenizer.clone(), s.chat.clone(), format!("after {steps} steps of LoRA")),
                None => (s.base.valid(), s.tokenizer.clone(), s.chat.clone(), "base".to_string()),
            })
        })
        .ok_or("open a .gguf file first")?;
    let (text, stop_ids) = match &chat {
        Some(c) => (c.user_prompt(prompt).map_err(err)?, c.stop_ids(&tok)),
        None => (prompt.to_string(), tok.eot().into_iter().collect()),
    };
    let ids = tok.encode(&text).map_err(err)?;
    if ids.is_empty() {
        return Err("type a message first".into());
    }
    let config = SampleConfig { max_new_tokens: max_tokens, temperature: 0.0, top_k: None, seed: 0, stop_ids: stop_ids.clone(), cache: true };
    let started = web_time::Instant::now();
    let reply = |out: &[u32], done: bool| {
        let shown = if out.last().is_some_and(|id| stop_ids.contains(id)) { &out[..out.len() - 1] } else { out };
        ChatReply { text: tok.decode(shown), tokens: out.len(), seconds: started.elapsed().as_secs_f64(), model: label.clone(), done }
    };
    let out = tinytune::sample::generate_stream_async(&model, &ids, &config, |out| post(&FromWorker::RealText { id, reply: reply(out, false) }))
        .await
        .map_err(err)?;
    post(&FromWorker::RealText { id, reply: reply(&out, true) });
    Ok(())
}

/// A LoRA fine-tune of the opened model on the shipped chat set, streamed like the train
/// widget's runs; when it finishes, chats use the fine-tuned model.
async fn real_train(run: u32, p: &tinytune_web::real::RealModelParams, control: &Cell<Control>) -> Result<RunState, String> {
    let err = |e: tinytune::Error| e.to_string();
    let (base, tok, chat) = REAL.with_borrow(|r| r.as_ref().map(|s| (s.base.clone(), s.tokenizer.clone(), s.chat.clone()))).ok_or("open a .gguf file first")?;
    status(run, RunState::Preparing, "fetching the chat set");
    let text = js::fetch_text(tinytune_web::real::CHAT_URL).await?;
    let config = p.train_config();
    let ad = base.device();
    let model = config.method.apply(base, config.seed, &ad).map_err(err)?;
    status(run, RunState::Preparing, "rendering and tokenising the conversations");
    js::yield_now().await;
    let trainer = Trainer::from_jsonl(model, &tok, chat.as_ref(), &text, tinytune_web::real::CHAT_FILE, config, &ad).map_err(err)?;
    let on_cpu = tinytune::optim::optimizer::host_memory_device(&ad);
    let mut host = WorkerHost::new(run, control, "adamw", on_cpu);
    tinytune::memory::measure::reset_peak();
    let mut driven = Run::new(trainer, tok);
    if driven.drive_async(&mut host).await? == Outcome::Cancelled {
        return Ok(RunState::Cancelled);
    }
    let tuned = driven.trainer.model.valid();
    REAL.with_borrow_mut(|r| {
        if let Some(s) = r {
            s.tuned = Some((tuned, p.steps));
        }
    });
    Ok(RunState::Done)
}

/// The preference widget: a LoRA fine-tune of micro with a preference objective on
/// generated pairs, driven through `train::Run` and posted like the train widget's runs
/// (the trainer scores the reference, the model as it starts, before the first step); then
/// the comparison, the same run under the next-token objective on the chosen completions
/// only, paused at each of the preference run's evaluation steps to score its model on the
/// same held-out pairs against the same reference. Greedy completions of a few held-out
/// prompts before, after the run and after the comparison.
async fn preference(run: u32, sft_run: u32, p: &tinytune_web::preference::PreferenceParams, control: &Cell<Control>) -> Result<RunState, String> {
    use tinytune::train::{Dataset, preference_eval_async};
    use tinytune_web::preference::{EVAL_PAIRS, PreferenceNews, SampleModel, TRAIN_PAIRS, sample_pairs, sft_examples};
    let err = |e: tinytune::Error| e.to_string();
    let news = |news: PreferenceNews| post(&FromWorker::Preference { run, news });
    let cancelled = || control.get() == Control::Cancel;
    let config = p.train_config();
    let ad = device().await.autodiff();
    let on_cpu = tinytune::optim::optimizer::host_memory_device(&ad);
    let host = |id: u32| WorkerHost::new(id, control, config.optimizer.kind.name(), on_cpu);
    status(run, RunState::Preparing, "loading the model");
    let (base, tok) = load(ModelChoice::Micro, 0, &ad).await?;
    let model = config.method.apply(base.clone(), config.seed, &ad).map_err(err)?;
    status(run, RunState::Preparing, "generating and tokenising the pairs");
    js::yield_now().await;
    let mut trainer = Trainer::new(model, &tok, config.clone(), &ad).map_err(err)?;
    if config.objective.needs_reference() {
        // What the first step would do: here, so the first step's time is a step's.
        let what = format!("the reference (the model as it starts) scores the {} training and {} held-out pairs", trainer.train.len(), trainer.eval.len());
        status(run, RunState::Preparing, &what);
        trainer.score_references_async(None).await.map_err(err)?;
    }
    let pairs = sample_pairs(p);
    news(PreferenceNews::Prompts(pairs.clone()));
    status(run, RunState::Preparing, "answering held-out prompts before tuning");
    news(PreferenceNews::Samples { model: SampleModel::Reference, completions: greedy(&trainer.model.valid(), &tok, &pairs).await? });
    if cancelled() {
        return Ok(RunState::Cancelled);
    }
    let mut main = host(run);
    tinytune::memory::measure::reset_peak();
    let mut driven = Run::new(trainer, tok.clone());
    if driven.drive_async(&mut main).await? == Outcome::Cancelled {
        return Ok(RunState::Cancelled);
    }
    let tuned = driven.trainer;
    status(run, RunState::Preparing, "answering the held-out prompts after tuning");
    news(PreferenceNews::Samples { model: SampleModel::Preference, completions: greedy(&tuned.model.valid(), &tok, &pairs).await? });
    if !p.sft || cancelled() {
        return Ok(if cancelled() { RunState::Cancelled } else { RunState::Done });
    }

    // The comparison: the same LoRA start (same seed), the same prompts in the same order.
    status(run, RunState::Preparing, "the comparison: SFT on the chosen completions");
    js::yield_now().await;
    let sft_config = p.sft_config();
    let model = sft_config.method.apply(base, sft_config.seed, &ad).map_err(err)?;
    let rows = |split, n| Dataset::from_examples(&tok, &sft_examples(p, split, n), sft_config.seq_len, sft_config.prompt_loss_weight).map_err(err);
    let sft = Trainer::from_datasets(model, sft_config.clone(), rows(Split::Train, TRAIN_PAIRS)?, rows(Split::Eval, EVAL_PAIRS)?, &ad).map_err(err)?;
    let mut sft_host = host(sft_run);
    let mut driven = Run::new(sft, tok.clone());
    let every = config.eval_every.max(1);
    loop {
        let step = driven.trainer.step;
        let mut segment = Until { inner: &mut sft_host, step, stop_at: ((step / every + 1) * every).min(sft_config.steps) };
        if driven.drive_async(&mut segment).await? == Outcome::Cancelled {
            return Ok(RunState::Cancelled);
        }
        // The preference run's own evaluation, on its held-out pairs (their reference
        // log-probabilities included), of the comparison's model.
        let c = &config;
        let m = preference_eval_async(&c.objective, &driven.trainer.model.valid(), &tuned.eval, c.batch_size, c.seq_len, c.eval_batches).await.map_err(err)?;
        news(PreferenceNews::SftPairs { step: driven.trainer.step, loss: m.loss, metrics: m.metrics });
        if driven.trainer.step >= sft_config.steps {
            break;
        }
    }
    status(run, RunState::Preparing, "answering the held-out prompts after SFT");
    news(PreferenceNews::Samples { model: SampleModel::Sft, completions: greedy(&driven.trainer.model.valid(), &tok, &pairs).await? });
    Ok(RunState::Done)
}

/// The grpo widget: stage 1, a short SFT of micro on the task's answers (events under
/// `sft_run`); stage 2, GRPO on that model (events under `run`), both driven through
/// `train::Run` with the same host as every run. Before the first GRPO step the trainer
/// evaluates the SFT model as GRPO's evaluations do (`GrpoNews::Before`); after each step
/// the first sampled groups of its rollout, with their rewards and advantages, go to the
/// page (`GrpoNews::Groups`, from `Trainer::rl`).
async fn grpo(run: u32, sft_run: u32, p: &tinytune_web::grpo::GrpoParams, control: &Cell<Control>) -> Result<RunState, String> {
    use tinytune_web::grpo::GrpoNews;
    let err = |e: tinytune::Error| e.to_string();
    let news = |news: GrpoNews| post(&FromWorker::Grpo { run, news });
    let ad = device().await.autodiff();
    let on_cpu = tinytune::optim::optimizer::host_memory_device(&ad);
    let host = |id: u32| WorkerHost::new(id, control, "adamw", on_cpu);
    status(run, RunState::Preparing, "loading the model");
    let (base, tok) = load(ModelChoice::Micro, 0, &ad).await?;

    // Stage 1: SFT on the task's answers.
    let sft_config = p.sft_config();
    status(run, RunState::Preparing, "stage 1: generating and tokenising the task's examples");
    js::yield_now().await;
    let model = sft_config.method.apply(base, sft_config.seed, &ad).map_err(err)?;
    let sft = Trainer::new(model, &tok, sft_config, &ad).map_err(err)?;
    let mut sft_host = host(sft_run);
    tinytune::memory::measure::reset_peak();
    let mut driven = Run::new(sft, tok.clone());
    if driven.drive_async(&mut sft_host).await? == Outcome::Cancelled {
        return Ok(RunState::Cancelled);
    }

    // Stage 2: GRPO on the SFT model, as `tinytune finetune --model <the SFT run>` starts it.
    let config = p.train_config();
    let model = config.method.apply(driven.trainer.model, config.seed, &ad).map_err(err)?;
    status(run, RunState::Preparing, "stage 2: tokenising the prompts");
    js::yield_now().await;
    let trainer = Trainer::new(model, &tok, config, &ad).map_err(err)?;
    status(run, RunState::Preparing, &format!("the SFT model's held-out reward on {} prompts, before GRPO", tinytune_web::grpo::EVAL_PROMPTS));
    let before = trainer.evaluate_async().await.map_err(err)?;
    news(GrpoNews::Before { eval_loss: before.loss, metrics: before.metrics });
    if control.get() == Control::Cancel {
        return Ok(RunState::Cancelled);
    }
    let mut main = Rollouts { inner: host(run), run };
    let mut driven = Run::new(trainer, tok);
    if driven.drive_async(&mut main).await? == Outcome::Cancelled {
        return Ok(RunState::Cancelled);
    }
    Ok(RunState::Done)
}

/// The distill widget: stage 1, the teacher, micro fully fine-tuned on the task (events
/// under `teacher_run`); stage 2, three students one after another (events under
/// `student_runs`, in `Student::ALL`'s order), each a fresh model of micro's shape with the
/// widget's layers drawn from the same seed, so they differ only by their objective, as
/// `tinytune distill --student-layers` builds it, with the frozen teacher beside it
/// (`Trainer::set_teacher`). Every run goes through `train::Run` with the same host as every
/// run; at the end each run's final held-out loss goes to the page (`DistillNews::Finals`).
async fn distill(
    run: u32,
    teacher_run: u32,
    student_runs: [u32; 3],
    p: &tinytune_web::distill::DistillParams,
    control: &Cell<Control>,
) -> Result<RunState, String> {
    use tinytune_web::distill::{DistillNews, FinalRow, Student};
    let err = |e: tinytune::Error| e.to_string();
    let ad = device().await.autodiff();
    let on_cpu = tinytune::optim::optimizer::host_memory_device(&ad);
    let host = |id: u32| WorkerHost::new(id, control, "adamw", on_cpu);
    status(run, RunState::Preparing, "loading the model");
    let (base, tok) = load(ModelChoice::Micro, 0, &ad).await?;
    let micro = base.config().clone();

    // Stage 1: the teacher.
    let config = p.teacher_config();
    status(run, RunState::Preparing, "the teacher: generating and tokenising the task's examples");
    js::yield_now().await;
    let model = config.method.apply(base, config.seed, &ad).map_err(err)?;
    let trainer = Trainer::new(model, &tok, config, &ad).map_err(err)?;
    tinytune::memory::measure::reset_peak();
    let mut driven = Run::new(trainer, tok.clone());
    if driven.drive_async(&mut host(teacher_run)).await? == Outcome::Cancelled {
        return Ok(RunState::Cancelled);
    }
    let held_out = |r: &Run| r.last_eval().ok_or_else(|| "the run ended without a held-out evaluation".to_string());
    let mut rows = vec![FinalRow {
        run: "teacher".into(),
        parameters: micro.num_params(),
        settings: "micro fine-tuned on the task".into(),
        eval_loss: held_out(&driven)?,
    }];
    let teacher = driven.trainer.model;

    // Stage 2: the students, from the same start.
    for (s, id) in Student::ALL.into_iter().zip(student_runs) {
        let config = p.student_config(s);
        status(run, RunState::Preparing, &format!("student \"{}\": tokenising its {} examples", p.student_label(s), config.train_examples));
        js::yield_now().await;
        let shape = p.student_model_config(&micro);
        let model = config.method.apply(Gpt::init(&shape, config.seed, &ad), config.seed, &ad).map_err(err)?;
        let mut trainer = Trainer::new(model, &tok, config, &ad).map_err(err)?;
        trainer.set_teacher(teacher.clone()).map_err(err)?;
        let mut driven = Run::new(trainer, tok.clone());
        if driven.drive_async(&mut host(id)).await? == Outcome::Cancelled {
            return Ok(RunState::Cancelled);
        }
        rows.push(FinalRow { run: p.student_label(s), parameters: shape.num_params(), settings: p.student_settings(s), eval_loss: held_out(&driven)? });
    }
    post(&FromWorker::Distill { run, news: DistillNews::Finals(rows) });
    Ok(RunState::Done)
}

/// The worker's run host for a GRPO run: everything goes to `inner`, and after each step
/// the first groups of its rollout go to the page.
struct Rollouts<'a> {
    inner: WorkerHost<'a>,
    run: u32,
}

impl RunHost for Rollouts<'_> {
    type Error = String;

    fn control(&mut self) -> Control {
        self.inner.control()
    }

    fn event(&mut self, trainer: &Trainer, event: &TrainEvent) -> Result<(), String> {
        if let (TrainEvent::Step(e), Some(rl)) = (event, &trainer.rl) {
            let groups = rl.last.iter().take(tinytune_web::grpo::GROUPS_SHOWN).cloned().collect();
            post(&FromWorker::Grpo { run: self.run, news: tinytune_web::grpo::GrpoNews::Groups { step: e.step, groups } });
        }
        self.inner.event(trainer, event)
    }

    async fn wait_async(&mut self) {
        self.inner.wait_async().await
    }

    async fn yield_now(&mut self) {
        self.inner.yield_now().await
    }
}

/// Greedy completions of each pair's prompt, to the end of the line.
async fn greedy(model: &Gpt, tok: &TextTokenizer, pairs: &[tinytune::data::Pair]) -> Result<Vec<String>, String> {
    let err = |e: tinytune::Error| e.to_string();
    let config = SampleConfig {
        max_new_tokens: tinytune_web::preference::SAMPLE_TOKENS,
        temperature: 0.0,
        top_k: None,
        seed: 0,
        stop_ids: tok.line_stop_ids(),
        cache: true,
    };
    let mut out = Vec::new();
    for pair in pairs {
        let ids = tok.encode(&pair.prompt).map_err(err)?;
        let mut new = generate_async(model, &ids, &config).await.map_err(err)?;
        if new.last().is_some_and(|id| tok.eot() == Some(*id)) {
            new.pop();
        }
        out.push(tok.decode(&new).trim_end().to_string());
        js::yield_now().await;
    }
    Ok(out)
}

/// A run host that ends the run (`Control::Stop`) once `stop_at` steps are taken and
/// hands everything else to `inner`: how the preference widget's comparison stops at each
/// evaluation step to score its model asynchronously (a host's `event` is synchronous),
/// then drives the same run on.
struct Until<'h, 'a> {
    inner: &'h mut WorkerHost<'a>,
    step: usize,
    stop_at: usize,
}

impl RunHost for Until<'_, '_> {
    type Error = String;

    fn control(&mut self) -> Control {
        if self.step >= self.stop_at { Control::Stop } else { self.inner.control() }
    }

    fn event(&mut self, trainer: &Trainer, event: &TrainEvent) -> Result<(), String> {
        self.step = trainer.step;
        self.inner.event(trainer, event)
    }

    async fn wait_async(&mut self) {
        self.inner.wait_async().await
    }

    async fn yield_now(&mut self) {
        self.inner.yield_now().await
    }
}
