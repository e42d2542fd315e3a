//! A loaded language model's worker: one thread that owns the llama.cpp session and runs
//! generation jobs in arrival order. Callers talk to it through channels, never a lock.

use std::sync::Arc;
use std::sync::mpsc;

use minerva_engine::generate::{GenerateOptions, Generation, TokenSink, generate};
use minerva_engine::llm::llama::LlamaCppModel;
use minerva_engine::{EngineError, LanguageModel, SeqId, SessionParams, TokenId};
use tokio::sync::mpsc as async_mpsc;

/// What a generation job reports, in order: text pieces, then one final result.
#[derive(Debug)]
pub enum GenerationEvent {
    /// A piece of final text.
    Text(String),
    /// The generation ended (successfully or not).
    Done(Result<Generation, EngineError>),
}

struct Job {
    prompt: Vec<TokenId>,
    options: GenerateOptions,
    events: async_mpsc::UnboundedSender<GenerationEvent>,
}

/// Handle to a language model and its worker thread; the thread ends when the last
/// handle is dropped.
pub struct LlmWorker {
    model: Arc<LlamaCppModel>,
    jobs: mpsc::Sender<Job>,
    n_ctx: u32,
}

impl LlmWorker {
    /// Creates the model's session and starts its worker thread.
    pub fn start(model: LlamaCppModel, params: SessionParams, name: &str) -> Result<Self, EngineError> {
        let model = Arc::new(model);
        let mut session = model.new_session(params)?;
        let (jobs, inbox) = mpsc::channel::<Job>();
        let worker_model = Arc::clone(&model);
        std::thread::Builder::new()
            .name(format!("llm-{name}"))
            .spawn(move || {
                for job in inbox {
                    let mut sink = ChannelSink { events: &job.events };
                    let result = generate(
                        worker_model.as_ref(),
                        session.as_mut(),
                        SeqId(0),
                        &job.prompt,
                        &job.options,
                        &mut sink,
                    );
                    // The receiver may be gone (client disconnected): nothing left to tell.
                    let _ = job.events.send(GenerationEvent::Done(result));
                }
            })
            .map_err(|e| EngineError::Decode(format!("cannot start the model's worker thread: {e}")))?;
        Ok(Self {
            model,
            jobs,
            n_ctx: params.n_ctx,
        })
    }

    /// The model, for tokenizing and metadata.
    pub fn model(&self) -> &LlamaCppModel {
        &self.model
    }

    /// Context size of the worker's session.
    pub fn n_ctx(&self) -> u32 {
        self.n_ctx
    }

    /// Queues a generation; its events arrive on the returned channel. Dropping the
    /// receiver cancels the generation before its next token.
    pub fn submit(
        &self,
        prompt: Vec<TokenId>,
        options: GenerateOptions,
    ) -> async_mpsc::UnboundedReceiver<GenerationEvent> {
        let (events, receiver) = async_mpsc::unbounded_channel();
        if let Err(mpsc::SendError(job)) = self.jobs.send(Job {
            prompt,
            options,
            events,
        }) {
            let _ = job.events.send(GenerationEvent::Done(Err(EngineError::Decode(
                "the model's worker has stopped".into(),
            ))));
        }
        receiver
    }
}

struct ChannelSink<'a> {
    events: &'a async_mpsc::UnboundedSender<GenerationEvent>,
}

impl TokenSink for ChannelSink<'_> {
    fn text(&mut self, text: &str) {
        let _ = self.events.send(GenerationEvent::Text(text.to_owned()));
    }

    fn cancelled(&self) -> bool {
        self.events.is_closed()
    }
}
