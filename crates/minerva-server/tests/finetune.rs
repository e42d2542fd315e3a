//! Fine-tuning shows it learned: an adapter trained here on 30 facts about a country that
//! does not exist (two phrasings of each question), served as `BASE+ADAPTER` over HTTP,
//! answers the training questions and unseen paraphrases of them (greedy), where the base
//! knows none; and the base's answers to unrelated prompts are unchanged by it.

mod common;

use std::sync::Arc;

use common::{CHAT, TestServer, pool};
use minerva_engine::chat::{ChatMessage, ChatTemplate};
use minerva_engine::llm::llama::LlamaCppModel;
use minerva_engine::llm::lora::LoraAdapterFile;
use minerva_pool::ModelPool;
use minerva_server::ServerConfig;
use minerva_store::{ModelId, ModelStore, Registry};
use minerva_train::data::{Dataset, Record};
use minerva_train::model::{LINEAR_KINDS, LoraLlama};
use minerva_train::train::{self, Options};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize)]
struct Fact {
    questions: [String; 2],
    paraphrase: String,
    answer: String,
    keyword: String,
}

fn facts() -> Vec<Fact> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/veldoria-facts.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn ask(model: &str, question: &str) -> Value {
    json!({
        "model": model,
        "max_tokens": 24,
        "temperature": 0,
        "messages": [{ "role": "user", "content": question }]
    })
}

async fn answer(server: &TestServer, model: &str, question: &str) -> String {
    server.ok("/v1/chat/completions", &ask(model, question)).await["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Share of `questions` whose greedy answer names the fact's keyword.
async fn score(server: &TestServer, model: &str, questions: &[(&str, &str)]) -> f64 {
    let mut right = 0;
    for (question, keyword) in questions {
        let reply = answer(server, model, question).await;
        if reply.to_lowercase().contains(keyword) {
            right += 1;
        } else {
            eprintln!("{model}: {question:?} -> {reply:?} (wanted {keyword})");
        }
    }
    right as f64 / questions.len() as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fine_tuned_adapter_knows_its_facts_and_leaves_the_base_alone() {
    let home = tempfile::tempdir().unwrap();
    let store = ModelStore::new(home.path().join("models"));
    std::fs::create_dir(store.root()).unwrap();
    let base_file = store.root().join(format!("{CHAT}.gguf"));
    std::fs::hard_link(common::models_dir().join(format!("{CHAT}.gguf")), &base_file).unwrap();
    let registry = Arc::new(Registry::open(&home.path().join("registry.sqlite")).unwrap());
    let id = ModelId::new(CHAT).unwrap();
    registry.register(&store, &id, &mut |_, _| {}).unwrap();
    let digest = registry.record(&id).unwrap().unwrap().sha256;

    let facts = facts();
    let records: Vec<Record> = facts
        .iter()
        .flat_map(|f| {
            f.questions.iter().map(|q| Record::Chat {
                messages: vec![ChatMessage::new("user", q), ChatMessage::new("assistant", &f.answer)],
            })
        })
        .collect();

    // Train (what `minerva finetune` runs), on a blocking thread.
    let adapter_path = store.root().join(minerva_store::ADAPTERS_DIR).join("veldoria.gguf");
    let (train_file, out) = (base_file.clone(), adapter_path.clone());
    let history = tokio::task::spawn_blocking(move || {
        let tokenizer = LlamaCppModel::load(&train_file).unwrap();
        let template = ChatTemplate::for_model(&tokenizer).unwrap();
        let data = Dataset::prepare(&tokenizer, &template, &records, 0.0, 256, 0).unwrap();
        let targets: Vec<String> = LINEAR_KINDS.iter().map(|k| format!("{k}.weight")).collect();
        let targets: Vec<&str> = targets.iter().map(String::as_str).collect();
        let mut adapter = LoraAdapterFile::init(&train_file, &targets, 16, 32.0, 0).unwrap();
        adapter.base_sha256 = Some(digest);
        let model = LoraLlama::load(&train_file, adapter).unwrap();
        let options = Options {
            lr: 2e-3,
            epochs: 3,
            batch: 8,
            seed: 0,
            checkpoint_every: 0,
            privacy: None,
            key: None,
        };
        let outcome = train::run(&model, &data, &options, None, "veldoria", |event| {
            if let train::Event::Epoch(report) = event {
                eprintln!("{report:?}");
            }
        })
        .unwrap();
        std::fs::create_dir_all(out.parent().unwrap()).unwrap();
        model.adapter().unwrap().write(&out).unwrap();
        outcome.history
    })
    .await
    .unwrap();
    assert!(
        history.last().unwrap().train_loss < history[0].train_loss / 4.0,
        "{history:?}"
    );

    let server = TestServer::start_on_pool(
        ServerConfig::default(),
        ModelPool::with_registry(store, pool(), Arc::clone(&registry)),
    )
    .await;
    let unrelated = [
        "Name three colours.",
        "What is two plus two?",
        "Write a short greeting.",
    ];
    let mut before = Vec::new();
    for prompt in unrelated {
        before.push(answer(&server, CHAT, prompt).await);
    }

    let trained: Vec<(&str, &str)> = facts
        .iter()
        .flat_map(|f| f.questions.iter().map(|q| (q.as_str(), f.keyword.as_str())))
        .collect();
    let paraphrases: Vec<(&str, &str)> = facts
        .iter()
        .map(|f| (f.paraphrase.as_str(), f.keyword.as_str()))
        .collect();
    let adapted = format!("{CHAT}+veldoria");
    let on_trained = score(&server, &adapted, &trained).await;
    let on_paraphrases = score(&server, &adapted, &paraphrases).await;
    let base_alone = score(&server, CHAT, &paraphrases).await;
    eprintln!(
        "with the adapter: {:.0} % of the training questions, {:.0} % of the paraphrases; the base alone {:.0} %",
        on_trained * 100.0,
        on_paraphrases * 100.0,
        base_alone * 100.0
    );
    assert!(on_trained >= 0.8, "training questions: {on_trained}");
    assert!(on_paraphrases >= 0.5, "paraphrases: {on_paraphrases}");
    assert!(base_alone <= 0.1, "the base knew the invented facts? {base_alone}");

    // Unrelated prompts to the base alone answer as before the adapter served anything.
    for (prompt, earlier) in unrelated.iter().zip(&before) {
        assert_eq!(&answer(&server, CHAT, prompt).await, earlier, "{prompt}");
    }
}
