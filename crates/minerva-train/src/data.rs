//! Training data: JSONL of chat conversations (`{"messages": [{"role", "content"}…]}`)
//! or prompt/completion pairs (`{"prompt", "completion"}`), tokenized the way the server
//! will see them, with the loss on what the model should say and nothing else.
//!
//! A conversation is rendered by the model's own chat template. Each assistant turn's
//! prompt is tokenized exactly as the server tokenizes a chat request
//! ([`chat_prompt_tokens`]), and the turn's text (what the template writes after the
//! prompt: the reply and its end-of-turn marker) is the target. Turns of one conversation
//! share one sequence when each prompt extends the previous turn's tokens. A
//! prompt/completion pair is plain text, as `/v1/completions` sees it: BOS, the prompt,
//! then the completion and EOS as the target.

use std::path::Path;

use minerva_engine::chat::{ChatMessage, ChatTemplate, chat_prompt_tokens};
use minerva_engine::{LanguageModel, TokenId};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::Deserialize;

use crate::{Result, TrainError};

/// One line of the data file.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Record {
    Chat { messages: Vec<ChatMessage> },
    Text { prompt: String, completion: String },
}

/// A tokenized training sequence: `mask[i]` says whether `tokens[i]` is a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub tokens: Vec<u32>,
    pub mask: Vec<bool>,
}

impl Example {
    fn push(&mut self, tokens: &[TokenId], target: bool) {
        self.tokens.extend(tokens.iter().map(|&t| t as u32));
        self.mask.extend(std::iter::repeat_n(target, tokens.len()));
    }

    /// Tokens the loss is computed on.
    pub fn targets(&self) -> usize {
        self.mask.iter().skip(1).filter(|m| **m).count()
    }
}

/// Reads a JSONL file; an unreadable line is an error naming it.
pub fn read_jsonl(path: &Path) -> Result<Vec<Record>> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::Io {
        path: path.to_owned(),
        source: e,
    })?;
    let mut records = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let record: Record = serde_json::from_str(line).map_err(|_| {
            TrainError::Data(format!(
                "{} line {}: not a {{\"messages\": […]}} or {{\"prompt\", \"completion\"}} object",
                path.display(),
                i + 1
            ))
        })?;
        if let Record::Chat { messages } = &record
            && !messages.iter().any(|m| m.role == "assistant")
        {
            return Err(TrainError::Data(format!(
                "{} line {}: the conversation has no assistant message to learn",
                path.display(),
                i + 1
            )));
        }
        records.push(record);
    }
    if records.is_empty() {
        return Err(TrainError::Data(format!("{} has no examples", path.display())));
    }
    Ok(records)
}

/// Tokenizes one record for `model` (whose chat template is `template`).
pub fn tokenize(model: &dyn LanguageModel, template: &ChatTemplate, record: &Record) -> Result<Vec<Example>> {
    match record {
        Record::Text { prompt, completion } => {
            let mut example = Example {
                tokens: Vec::new(),
                mask: Vec::new(),
            };
            example.push(&model.tokenize(prompt, true, false)?, false);
            let mut reply = model.tokenize(completion, false, false)?;
            reply.extend(model.metadata().eos_token);
            example.push(&reply, true);
            Ok(vec![example])
        }
        Record::Chat { messages } => {
            let mut done = Vec::new();
            let mut current: Option<Example> = None;
            for (i, message) in messages.iter().enumerate() {
                if message.role != "assistant" {
                    continue;
                }
                let prompt = chat_prompt_tokens(model, template, &messages[..i])?;
                let prompt_ids: Vec<u32> = prompt.iter().map(|&t| t as u32).collect();
                let opened = template.render(&messages[..i], true)?;
                let closed = template.render(&messages[..=i], false)?;
                let turn = closed.strip_prefix(opened.as_str()).ok_or_else(|| {
                    TrainError::Data(
                        "the model's chat template does not render a reply as a continuation of its prompt".into(),
                    )
                })?;
                let reply = model.tokenize(turn, false, true)?;
                let example = match current.take() {
                    Some(mut example) if prompt_ids.starts_with(&example.tokens) => {
                        let len = example.tokens.len();
                        example.push(&prompt[len..], false);
                        example
                    }
                    other => {
                        done.extend(other);
                        let mut example = Example {
                            tokens: Vec::new(),
                            mask: Vec::new(),
                        };
                        example.push(&prompt, false);
                        example
                    }
                };
                let mut example = example;
                example.push(&reply, true);
                current = Some(example);
            }
            done.extend(current);
            Ok(done)
        }
    }
}

/// The examples of a run, split into training and held-out sets.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub train: Vec<Example>,
    pub held_out: Vec<Example>,
    /// Sequences longer than the run's sequence length, left out.
    pub too_long: usize,
}

impl Dataset {
    /// Tokenizes `records`, holds out `eval_share` of them (at least one record when the
    /// share is above 0 and there are two or more), chosen by `seed`, and leaves out
    /// sequences over `seq_len` tokens.
    pub fn prepare(
        model: &dyn LanguageModel,
        template: &ChatTemplate,
        records: &[Record],
        eval_share: f64,
        seq_len: usize,
        seed: u64,
    ) -> Result<Self> {
        if !(0.0..1.0).contains(&eval_share) {
            return Err(TrainError::Options(format!(
                "the held-out share must be in [0, 1), not {eval_share}"
            )));
        }
        let mut order: Vec<usize> = (0..records.len()).collect();
        order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
        let held = if eval_share > 0.0 && records.len() >= 2 {
            ((records.len() as f64 * eval_share).round() as usize).clamp(1, records.len() - 1)
        } else {
            0
        };
        let mut too_long = 0;
        let mut collect = |indices: &[usize]| -> Result<Vec<Example>> {
            let mut out = Vec::new();
            for &i in indices {
                for example in tokenize(model, template, &records[i])? {
                    if example.tokens.len() > seq_len {
                        too_long += 1;
                    } else if example.targets() > 0 {
                        out.push(example);
                    }
                }
            }
            Ok(out)
        };
        let held_out = collect(&order[..held])?;
        let train = collect(&order[held..])?;
        if train.is_empty() {
            return Err(TrainError::Data(format!(
                "no training example fits in {seq_len} tokens ({too_long} are longer)"
            )));
        }
        Ok(Self {
            train,
            held_out,
            too_long,
        })
    }

    /// Target tokens of the training set.
    pub fn train_targets(&self) -> usize {
        self.train.iter().map(Example::targets).sum()
    }

    /// A digest of the examples (what a checkpoint must have been trained on to resume).
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut hash = Sha256::new();
        for set in [&self.train, &self.held_out] {
            hash.update((set.len() as u64).to_le_bytes());
            for e in set {
                hash.update((e.tokens.len() as u64).to_le_bytes());
                for (t, m) in e.tokens.iter().zip(&e.mask) {
                    hash.update(t.to_le_bytes());
                    hash.update([u8::from(*m)]);
                }
            }
        }
        format!("{:x}", hash.finalize())
    }
}
