//! A loaded language model's worker: one thread that owns the llama.cpp session and runs
//! generation jobs in arrival order. Callers talk to it through channels, never a lock.

use std::path::Path;
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
    /// Starts the worker thread, which loads the model from `path` and creates its
    /// session (its context capped at the model's training length), and waits until it
    /// is ready.
    ///
    /// Loading on the worker thread matters: llama.cpp's OpenMP thread team belongs to
    /// the thread that first runs a parallel region (the load's weight repacking). Loading
    /// elsewhere leaves a second team whose spinning threads slow every decode down.
    pub fn start(path: &Path, params: SessionParams, name: &str) -> Result<Self, EngineError> {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (jobs, inbox) = mpsc::channel::<Job>();
        let path = path.to_owned();
        std::thread::Builder::new()
            .name(format!("llm-{name}"))
            .spawn(move || {
                let loaded = LlamaCppModel::load(&path).map(Arc::new).and_then(|model| {
                    let n_ctx = params.n_ctx.min(model.metadata().n_ctx_train.max(1));
                    let session = model.new_session(SessionParams {
                        n_ctx,
                        n_batch: params.n_batch.min(n_ctx),
                        ..params
                    })?;
                    Ok((model, session))
                });
                let (model, mut session) = match loaded {
                    Ok(loaded) => loaded,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                if ready_tx.send(Ok((Arc::clone(&model), session.params().n_ctx))).is_err() {
                    return;
                }
                for job in inbox {
                    let mut sink = ChannelSink { events: &job.events };
                    let result = generate(
                        model.as_ref(),
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
        let (model, n_ctx) = ready_rx
            .recv()
            .map_err(|_| EngineError::Decode("the model's worker thread died while loading".into()))??;
        Ok(Self { model, jobs, n_ctx })
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
