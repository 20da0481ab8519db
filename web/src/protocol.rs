//! Messages between the page and the compute worker, as serde enums sent as JSON strings.
//! The page never touches a tensor: it asks, and the worker streams answers back, one
//! message per training step, so the page stays responsive and a run can be paused,
//! resumed or cancelled between steps.

use serde::{Deserialize, Serialize};
use tinytune::train::TrainEvent;

use crate::widgets::TrainParams;
pub use crate::widgets::{Ask, Reply, Request, Samples};

/// Which compute backend the reader asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BackendPref {
    /// WebGPU when the browser has a real (hardware) adapter, else the CPU.
    Auto,
    Cpu,
    WebGpu,
}

/// Page → worker.
// A message is built, serialised and dropped at once: boxing a variant would save nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ToWorker {
    /// Choose (or switch) the backend; answered by `FromWorker::Backend`.
    Init {
        prefer: BackendPref,
    },
    Train {
        run: u32,
        params: TrainParams,
    },
    Pause {
        run: u32,
    },
    Resume {
        run: u32,
    },
    Cancel {
        run: u32,
    },
    /// A widget's one-shot request, answered by `FromWorker::Reply` with the same id (or
    /// `FromWorker::Error`).
    Request {
        id: u32,
        req: Request,
    },
    /// Makes the worker panic: how the end-to-end tests check that the page notices a
    /// crashed worker and recovers.
    Crash,
    /// Load the GGUF file the page posted just before (as a `File`, outside JSON: the
    /// worker reads it itself); answered by `RealOpened` or `Error`.
    RealOpen {
        id: u32,
    },
    /// Chat with the opened model (fine-tuned, once a run has finished); answered by a
    /// stream of `RealText`, the last with `done`.
    RealChat {
        id: u32,
        prompt: String,
        max_tokens: usize,
    },
    /// LoRA-fine-tune the opened model on the shipped chat set; answered like `Train`.
    RealTrain {
        run: u32,
        params: crate::real::RealModelParams,
    },
    /// The preference widget's run, answered like `Train` (its events under `run`, with
    /// `FromWorker::Preference` news), then its SFT comparison's events under `sft` (pause,
    /// resume and cancel go to `run` for both).
    Preference {
        run: u32,
        sft: u32,
        params: crate::preference::PreferenceParams,
    },
    /// The grpo widget's run: stage 1 (SFT) answered like `Train` under `sft`, then stage 2
    /// (GRPO) under `run`, with `FromWorker::Grpo` news (pause, resume and cancel go to `run`
    /// for both).
    Grpo {
        run: u32,
        sft: u32,
        params: crate::grpo::GrpoParams,
    },
    /// The distill widget's runs: the teacher answered like `Train` under `teacher`, then
    /// each student in `Student::ALL`'s order under its id in `students`, with
    /// `FromWorker::Distill` news and the end under `run` (pause, resume and cancel go to
    /// `run` for every stage).
    Distill {
        run: u32,
        teacher: u32,
        students: [u32; 3],
        params: crate::distill::DistillParams,
    },
}

/// The backend the worker runs on, and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackendInfo {
    /// "WebGPU" or "CPU".
    pub name: String,
    /// One sentence: why this backend (e.g. "only a software (fallback) WebGPU adapter").
    pub reason: String,
    /// What `navigator.gpu.requestAdapter()` reported, if anything.
    pub adapter: Option<String>,
    /// The CPU backend's threads (rayon's pool in the worker; 1 without WebAssembly threads
    /// or cross-origin isolation).
    #[serde(default = "one")]
    pub threads: u32,
    /// Why the CPU backend has fewer threads than the browser's cores, if it does.
    #[serde(default)]
    pub threads_limit: Option<String>,
}

fn one() -> u32 {
    1
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunState {
    Preparing,
    Running,
    Paused,
    Done,
    Cancelled,
    Failed,
}

/// One held-out prompt answered before and after fine-tuning.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CompareRow {
    pub prompt: String,
    pub expected: String,
    pub before: String,
    pub after: String,
}

/// What a training run has cost so far.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunStats {
    pub optimizer: String,
    /// Bytes of optimizer state, measured from the optimizer.
    pub state_bytes: u64,
    /// The same by data-parallel replica: several entries under ZeRO-1, one otherwise.
    #[serde(default)]
    pub state_bytes_by_replica: Vec<u64>,
    pub trainable: u64,
    /// Peak bytes allocated in the worker above the level when training began; None when
    /// the run is on WebGPU, whose memory the worker cannot count.
    pub peak_bytes: Option<u64>,
    /// Seconds per training step, averaged (evaluations and pauses excluded).
    pub step_seconds: f64,
    /// "CPU" or "WebGPU", and why when the run was moved to the CPU.
    pub device: String,
}

/// Worker → page.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum FromWorker {
    /// The worker is listening. A worker loads its wasm asynchronously and messages posted
    /// before it listens are lost, so the page queues until this arrives.
    Ready,
    Backend(BackendInfo),
    Status {
        run: u32,
        state: RunState,
        message: String,
    },
    /// An event of a training run, exactly as the core's run driver produced it (start,
    /// step, held-out evaluation, a soft prompt's nearest tokens), forwarded unchanged.
    Run {
        run: u32,
        event: TrainEvent,
    },
    /// Before/after answers and the loss on held-out pre-training text (stories).
    Compare {
        run: u32,
        rows: Vec<CompareRow>,
        stories_before: f32,
        stories_after: f32,
    },
    /// The answer to `ToWorker::Request` number `id`.
    Reply {
        id: u32,
        reply: Reply,
    },
    /// A run's cost so far: optimizer state and (on the CPU) peak memory.
    RunStats {
        run: u32,
        stats: RunStats,
    },
    Error {
        id: u32,
        message: String,
    },
    RealOpened {
        id: u32,
        info: crate::real::RealInfo,
    },
    RealText {
        id: u32,
        reply: crate::real::ChatReply,
    },
    /// What a preference run reports besides its events: the sampled prompts, each model's
    /// greedy completions, the SFT comparison scored on the held-out pairs.
    Preference {
        run: u32,
        news: crate::preference::PreferenceNews,
    },
    /// What a GRPO run reports besides its events: the SFT model's held-out reward before
    /// GRPO, and each step's first sampled groups with their rewards and advantages.
    Grpo {
        run: u32,
        news: crate::grpo::GrpoNews,
    },
    /// What a distillation reports besides its runs' events: the final table.
    Distill {
        run: u32,
        news: crate::distill::DistillNews,
    },
}

impl ToWorker {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("messages always serialise")
    }
}

impl FromWorker {
    /// The run or request a message answers (None for backend-wide messages).
    pub fn id(&self) -> Option<u32> {
        match self {
            FromWorker::Status { run, .. }
            | FromWorker::Run { run, .. }
            | FromWorker::Compare { run, .. }
            | FromWorker::RunStats { run, .. }
            | FromWorker::Preference { run, .. }
            | FromWorker::Grpo { run, .. }
            | FromWorker::Distill { run, .. } => Some(*run),
            FromWorker::Reply { id, .. } | FromWorker::Error { id, .. } | FromWorker::RealOpened { id, .. } | FromWorker::RealText { id, .. } => Some(*id),
            FromWorker::Backend(_) | FromWorker::Ready => None,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("messages always serialise")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::widgets::{GenerateParams, TimelineParams};
    use tinytune::train::StepEvent;

    #[test]
    fn messages_survive_json() {
        let to = [
            ToWorker::Init { prefer: BackendPref::Auto },
            ToWorker::Train { run: 3, params: TrainParams { steps: 7, ..Default::default() } },
            ToWorker::Cancel { run: 3 },
            ToWorker::RealOpen { id: 4 },
            ToWorker::RealChat { id: 5, prompt: "Hi\n".into(), max_tokens: 9 },
            ToWorker::RealTrain { run: 6, params: crate::real::RealModelParams::default() },
            ToWorker::Preference { run: 7, sft: 8, params: crate::preference::PreferenceParams { objective: "ipo".into(), ..Default::default() } },
            ToWorker::Grpo { run: 9, sft: 10, params: crate::grpo::GrpoParams { beta: 0.04, ..Default::default() } },
            ToWorker::Distill { run: 11, teacher: 12, students: [13, 14, 15], params: crate::distill::DistillParams { t2: 2.5, ..Default::default() } },
            ToWorker::Request { id: 2, req: TimelineParams::default().into_request() },
            ToWorker::Request { id: 1, req: GenerateParams { prompt: "a\nb".into(), ..Default::default() }.into_request() },
        ];
        for m in to {
            assert_eq!(serde_json::from_str::<ToWorker>(&m.to_json()).unwrap(), m);
        }
        // A reply reaches only the request type that asked for it.
        let reply = Reply::Generate(Box::new(Samples { samples: vec!["x".into()], seconds: 0.5 }));
        assert_eq!(GenerateParams::answer(reply.clone()).map(|s| s.seconds), Some(0.5));
        assert_eq!(TimelineParams::answer(reply), None);
        let event = StepEvent {
            step: 1,
            loss: 2.5,
            lr: 1e-3,
            grad_norm: 0.5,
            tokens: 512,
            metrics: Default::default(),
            tokens_per_s: 900.0,
            elapsed_s: 0.6,
            loss_scale: 1.0,
            skipped: false,
        };
        let from = FromWorker::Run { run: 3, event: TrainEvent::Step(event.clone()) };
        assert_eq!(serde_json::from_str::<FromWorker>(&from.to_json()).unwrap(), from);
        use crate::preference::{PreferenceNews, SampleModel};
        for news in [
            PreferenceNews::Prompts(crate::preference::sample_pairs(&Default::default())),
            PreferenceNews::Samples { model: SampleModel::Sft, completions: vec![" lily went to the park.".into()] },
            PreferenceNews::SftPairs { step: 10, loss: 0.5, metrics: [("rewards/accuracies".to_string(), 0.75)].into() },
        ] {
            let from = FromWorker::Preference { run: 7, news };
            assert_eq!(from.id(), Some(7));
            assert_eq!(serde_json::from_str::<FromWorker>(&from.to_json()).unwrap(), from);
        }
        use crate::grpo::GrpoNews;
        let group = tinytune::train::grpo::SampledGroup {
            prompt: "text: the kite is fun.\nfeeling:".into(),
            expected: "happy".into(),
            completions: vec![" happy\n".into(), " sad\n".into()],
            rewards: vec![1.0, 0.0],
            advantages: vec![0.7070, -0.7070],
        };
        for news in [
            GrpoNews::Before { eval_loss: 0.4, metrics: [("reward".to_string(), 0.5), ("greedy_reward".to_string(), 0.625)].into() },
            GrpoNews::Groups { step: 3, groups: vec![group] },
        ] {
            let from = FromWorker::Grpo { run: 9, news };
            assert_eq!(from.id(), Some(9));
            assert_eq!(serde_json::from_str::<FromWorker>(&from.to_json()).unwrap(), from);
        }
        use crate::distill::{DistillNews, FinalRow};
        let row = FinalRow { run: "soft targets T=4".into(), parameters: 480_000, settings: "α 0.9 · T 4 · forward-kl".into(), eval_loss: 1.25 };
        let from = FromWorker::Distill { run: 11, news: DistillNews::Finals(vec![row]) };
        assert_eq!(from.id(), Some(11));
        assert_eq!(serde_json::from_str::<FromWorker>(&from.to_json()).unwrap(), from);
        // A step skipped by the loss scaler has an infinite gradient norm, which JSON cannot
        // carry: it travels as null and arrives as NaN, and the message still parses.
        let skipped = FromWorker::Run { run: 3, event: TrainEvent::Step(StepEvent { grad_norm: f32::INFINITY, skipped: true, loss_scale: 65536.0, ..event }) };
        match serde_json::from_str::<FromWorker>(&skipped.to_json()).unwrap() {
            FromWorker::Run { event: TrainEvent::Step(event), .. } => assert!(event.grad_norm.is_nan() && event.skipped),
            other => panic!("{other:?}"),
        }
    }
}
