//! Names clients use that are not models of the store: aliases (`"model": "chat"` served
//! by `smollm2-135m-instruct`) and fallback chains (the first model; when it is
//! overloaded, cannot load, fails its integrity check, errs or times out, the next).
//!
//! The table comes from the server's configuration file (`[aliases]` and
//! `[routes.NAME]`), is checked against the store when it is read (an unknown key or a
//! route to a model that does not exist is an error naming the line), and is swapped
//! whole on a reload (`SIGHUP`, `POST /v1/admin/reload`): a request in flight keeps the
//! table it started with, and a bad file keeps the old table.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::http::HeaderValue;
use axum::response::Response;
use minerva_store::{ModelId, ModelStore};
use serde::Deserialize;

use crate::error::ApiError;
use crate::experiment::{Experiment, ExperimentSpec, Outcome};
use crate::remote::{Backend, BackendSpec};

tokio::task_local! {
    /// The models a fallback attempt must not evict: the first model of every route.
    static PROTECTED: Vec<ModelId>;
}

/// The models the current request must not evict to make room for its model: the
/// routes' first models when it is a route's fallback (see [`serve`]), else none.
pub fn protected() -> Vec<ModelId> {
    PROTECTED.try_with(Clone::clone).unwrap_or_default()
}

/// The header that names a request's user for an experiment's sticky assignment, when
/// its body has no `user`.
pub const USER_HEADER: &str = "x-minerva-user";

/// The user an experiment assigns a request by: the body's `user`, else [`USER_HEADER`].
pub fn user_of(body: &serde_json::Value, headers: &axum::http::HeaderMap) -> Option<String> {
    body.get("user")
        .and_then(|u| u.as_str())
        .map(str::to_owned)
        .or_else(|| headers.get(USER_HEADER)?.to_str().ok().map(str::to_owned))
}

/// The response header that says which model served a routed request, and why.
pub const ROUTE_HEADER: &str = "x-minerva-route";

/// What serves a request: a model of the store, or a remote backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Local(ModelId),
    Remote(String),
}

impl Target {
    /// The name the route lists it by.
    pub fn name(&self) -> &str {
        match self {
            Self::Local(id) => id.as_str(),
            Self::Remote(name) => name,
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl serde::Serialize for Target {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// One route: the models (or remote backends) that may serve it, in order.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Route {
    pub name: String,
    pub models: Vec<Target>,
    /// Longest one attempt may take (a whole non-streaming answer, or a stream's first
    /// byte) before the next model is tried.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "seconds")]
    pub timeout: Option<Duration>,
    /// The models are interchangeable: one already loaded serves first (warm routing),
    /// the listed order decides among the loaded and among the rest.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub prefer_loaded: bool,
}

fn seconds<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.map_or(0.0, |d| d.as_secs_f64()))
}

/// Every route and remote backend by name.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: BTreeMap<String, Route>,
    backends: BTreeMap<String, Arc<Backend>>,
    experiments: BTreeMap<String, Arc<Experiment>>,
    /// The LoRA adapters an alias names with its model (`alias = "BASE+A"`, or `"BASE+A+B"`).
    alias_adapters: BTreeMap<String, String>,
}

/// A configuration file that cannot become a route table.
#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// The routing part of the configuration file.
#[derive(Deserialize)]
struct File {
    #[serde(default)]
    aliases: BTreeMap<String, toml::Spanned<String>>,
    #[serde(default)]
    routes: BTreeMap<String, toml::Spanned<RouteSpec>>,
    #[serde(default)]
    backends: BTreeMap<String, toml::Spanned<BackendSpec>>,
    #[serde(default)]
    experiments: BTreeMap<String, toml::Spanned<ExperimentSpec>>,
    /// The server's other settings, which `minerva serve` reads and checks.
    #[serde(flatten)]
    _settings: BTreeMap<String, toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteSpec {
    models: Vec<toml::Spanned<String>>,
    timeout_secs: Option<f64>,
    #[serde(default)]
    prefer_loaded: bool,
}

impl RouteTable {
    /// The routes of the configuration `text` (read from `path`), every model checked
    /// against `store`.
    pub fn parse(text: &str, path: &Path, store: &ModelStore) -> Result<Self, RoutingError> {
        let invalid = |message: String| RoutingError::Invalid {
            path: path.to_owned(),
            message,
        };
        let file: File = toml::from_str(text).map_err(|e| invalid(e.to_string().trim_end().to_owned()))?;
        let line = |span: std::ops::Range<usize>| text[..span.start.min(text.len())].matches('\n').count() + 1;
        let mut routes = BTreeMap::new();
        let mut backends = BTreeMap::new();
        if !file.backends.is_empty() {
            let client = minerva_pull::http_client(None).map_err(|e| invalid(e.to_string()))?;
            for (name, spec) in &file.backends {
                let at = line(spec.span());
                let id = ModelId::new(name).map_err(|e| invalid(format!("line {at}: backend name {name:?}: {e}")))?;
                if store.resolve(&store.canonical(&id)).is_ok() {
                    return Err(invalid(format!(
                        "line {at}: backend name {name:?} is a model of the store; give the backend another name"
                    )));
                }
                let backend = Backend::new(name, spec.get_ref(), client.clone())
                    .map_err(|e| invalid(format!("line {at}: backend {name}: {e}")))?;
                backends.insert(name.to_owned(), Arc::new(backend));
            }
        }
        let model = |name: &toml::Spanned<String>, route: &str| -> Result<Target, RoutingError> {
            if backends.contains_key(name.get_ref().as_str()) {
                return Ok(Target::Remote(name.get_ref().clone()));
            }
            let at = line(name.span());
            let id = ModelId::new(name.get_ref()).map_err(|e| invalid(format!("line {at}: route {route}: {e}")))?;
            let id = store.canonical(&id);
            store.resolve(&id).map_err(|_| {
                invalid(format!(
                    "line {at}: route {route}: no model or backend {:?}",
                    name.get_ref()
                ))
            })?;
            Ok(Target::Local(id))
        };
        let name_ok = |name: &str, at: usize| -> Result<(), RoutingError> {
            if backends.contains_key(name) {
                return Err(invalid(format!("line {at}: {name:?} is a backend already")));
            }
            let id = ModelId::new(name).map_err(|e| invalid(format!("line {at}: route name {name:?}: {e}")))?;
            if store.resolve(&store.canonical(&id)).is_ok() {
                return Err(invalid(format!(
                    "line {at}: route name {name:?} is a model of the store; give the route another name"
                )));
            }
            Ok(())
        };
        let mut alias_adapters = BTreeMap::new();
        for (name, target) in &file.aliases {
            let at = line(target.span());
            name_ok(name, at)?;
            // `BASE+ADAPTER` (or `BASE+A+B`): the base model with adapters of the store.
            let (base, adapter) = split_adapter(target.get_ref());
            if let Some(adapters) = adapter {
                for adapter in adapters.split('+') {
                    let adapter_id =
                        ModelId::new(adapter).map_err(|e| invalid(format!("line {at}: alias {name}: adapter: {e}")))?;
                    store
                        .resolve_adapter(&adapter_id)
                        .map_err(|e| invalid(format!("line {at}: alias {name}: {e}")))?;
                }
                alias_adapters.insert(name.to_owned(), adapters.to_owned());
            }
            let target = toml::Spanned::new(target.span(), base.to_owned());
            let route = Route {
                name: name.to_owned(),
                models: vec![model(&target, name)?],
                timeout: None,
                prefer_loaded: false,
            };
            routes.insert(name.to_owned(), route);
        }
        for (name, spec) in &file.routes {
            let at = line(spec.span());
            name_ok(name, at)?;
            if routes.contains_key(name) {
                return Err(invalid(format!("line {at}: {name:?} is an alias already")));
            }
            let spec = spec.get_ref();
            if spec.models.is_empty() {
                return Err(invalid(format!("line {at}: route {name}: models is empty")));
            }
            let timeout = match spec.timeout_secs {
                None => None,
                Some(s) if s > 0.0 && s.is_finite() => Some(Duration::from_secs_f64(s)),
                Some(s) => {
                    return Err(invalid(format!(
                        "line {at}: route {name}: timeout_secs {s} must be positive"
                    )));
                }
            };
            let models = spec.models.iter().map(|m| model(m, name)).collect::<Result<_, _>>()?;
            routes.insert(
                name.to_owned(),
                Route {
                    name: name.to_owned(),
                    models,
                    timeout,
                    prefer_loaded: spec.prefer_loaded,
                },
            );
        }
        let mut experiments = BTreeMap::new();
        for (name, spec) in &file.experiments {
            let at = line(spec.span());
            name_ok(name, at)?;
            if routes.contains_key(name) {
                return Err(invalid(format!("line {at}: {name:?} is a route already")));
            }
            let mut variants = Vec::new();
            for variant in &spec.get_ref().variants {
                let target = model(
                    &toml::Spanned::new(variant.span(), variant.get_ref().model.clone()),
                    name,
                )?;
                variants.push((target, variant.get_ref().weight));
            }
            if variants.len() < 2 {
                return Err(invalid(format!(
                    "line {at}: experiment {name}: give it two variants or more"
                )));
            }
            let experiment =
                Experiment::new(name, variants).map_err(|e| invalid(format!("line {at}: experiment {name}: {e}")))?;
            experiments.insert(name.to_owned(), Arc::new(experiment));
        }
        Ok(Self {
            routes,
            backends,
            experiments,
            alias_adapters,
        })
    }

    /// The name a request gives (`NAME` or `NAME+ADAPTER`) as the route or model it names
    /// and the adapters to apply: its alias's, if any, then the request's own
    /// (`ALIAS+MORE` adds adapters to those the alias names).
    pub fn name_and_adapter<'a>(&self, name: &'a str) -> (&'a str, Option<String>) {
        let (name, adapter) = split_adapter(name);
        let aliased = self
            .alias_adapters
            .get(name)
            .or_else(|| self.alias_adapters.get(name.strip_suffix(":latest")?));
        let adapters = match (aliased, adapter) {
            (Some(aliased), Some(asked)) => Some(format!("{aliased}+{asked}")),
            (aliased, asked) => aliased.cloned().or_else(|| asked.map(str::to_owned)),
        };
        (name, adapters)
    }

    /// The experiment called `name`.
    pub fn experiment(&self, name: &str) -> Option<&Arc<Experiment>> {
        self.experiments
            .get(name)
            .or_else(|| self.experiments.get(name.strip_suffix(":latest")?))
    }

    /// Every experiment, by name.
    pub fn experiments(&self) -> impl Iterator<Item = &Arc<Experiment>> {
        self.experiments.values()
    }

    /// The route called `name`, if there is one; a backend's name is a route of itself.
    pub fn get(&self, name: &str) -> Option<Route> {
        let route = self
            .routes
            .get(name)
            .or_else(|| self.routes.get(name.strip_suffix(":latest")?));
        if let Some(route) = route {
            return Some(route.clone());
        }
        let (name, _) = self.backends.get_key_value(name)?;
        Some(Route {
            name: name.clone(),
            models: vec![Target::Remote(name.clone())],
            timeout: None,
            prefer_loaded: false,
        })
    }

    /// Every route, by name.
    pub fn routes(&self) -> impl Iterator<Item = &Route> {
        self.routes.values()
    }

    /// The remote backend called `name`.
    pub fn backend(&self, name: &str) -> Option<&Arc<Backend>> {
        self.backends.get(name)
    }

    /// Every remote backend, by name.
    pub fn backends(&self) -> impl Iterator<Item = &Arc<Backend>> {
        self.backends.values()
    }
}

/// The live route table and the file it is read from.
pub struct Routing {
    path: Option<PathBuf>,
    store: ModelStore,
    table: RwLock<Arc<RouteTable>>,
}

impl Routing {
    /// Routing read from `path` (none: no routes).
    pub fn load(path: Option<PathBuf>, store: ModelStore) -> Result<Self, RoutingError> {
        let table = match &path {
            Some(path) => read(path, &store)?,
            None => RouteTable::default(),
        };
        Ok(Self {
            path,
            store,
            table: RwLock::new(Arc::new(table)),
        })
    }

    /// No routes.
    pub fn none(store: ModelStore) -> Self {
        Self {
            path: None,
            store,
            table: RwLock::new(Arc::new(RouteTable::default())),
        }
    }

    /// The table as it is now.
    pub fn table(&self) -> Arc<RouteTable> {
        Arc::clone(&self.table.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Reads the file again and swaps the table in; on an error the old table stays.
    pub fn reload(&self) -> Result<Arc<RouteTable>, RoutingError> {
        let Some(path) = &self.path else {
            return Ok(self.table());
        };
        let table = Arc::new(read(path, &self.store)?);
        // An experiment the file left as it was keeps its live weights and figures.
        let old = self.table();
        for experiment in table.experiments() {
            if let Some(before) = old.experiment(&experiment.name) {
                experiment.adopt(before);
            }
        }
        *self.table.write().unwrap_or_else(|p| p.into_inner()) = Arc::clone(&table);
        tracing::info!(path = %path.display(), routes = table.routes.len(), "routes reloaded");
        Ok(table)
    }

    /// The file the routes come from.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
}

/// An OpenAI route's request (`raw`, as the client sent it, to `path` under `/v1`)
/// through the routing: `local(model)` runs it on a model of the store, a remote backend
/// gets `raw` (chats keep their replica by affinity), an experiment picks the variant by
/// the request's user.
pub async fn serve_openai<F, Fut>(
    state: &crate::state::AppState,
    headers: &axum::http::HeaderMap,
    raw: serde_json::Value,
    name: &str,
    path: &'static str,
    mut local: F,
) -> Result<Response, ApiError>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Result<Response, ApiError>>,
{
    let table = state.routing.table();
    let user = user_of(&raw, headers);
    let affinity = (path == "/chat/completions")
        .then(|| crate::remote::chat_affinity(&raw))
        .flatten();
    let (name, adapter) = table.name_and_adapter(name);
    let adapter = adapter.as_deref();
    serve(&table, name, user.as_deref(), is_loaded(state), |target| {
        let run_local = match &target {
            Target::Local(model) => Some(local(with_adapter(model, adapter))),
            Target::Remote(_) => None,
        };
        let (table, raw) = (Arc::clone(&table), raw.clone());
        async move {
            match (run_local, target) {
                (Some(run), _) => run.await,
                (None, target) => {
                    let backend = table
                        .backend(target.name())
                        .ok_or_else(|| ApiError::ModelNotFound(format!("backend {target} is gone")))?;
                    backend.forward(path, raw, affinity).await
                }
            }
        }
    })
    .await
}

/// `NAME+ADAPTER` as `NAME` (a model or a route) and `ADAPTER`, the one place that reads
/// the convention: a LoRA adapter applies to whichever model of the store serves the name.
pub(crate) fn split_adapter(name: &str) -> (&str, Option<&str>) {
    match name.split_once('+') {
        Some((base, adapter)) => (base, Some(adapter)),
        None => (name, None),
    }
}

/// The name a model of the store is asked for: `MODEL`, or `MODEL+ADAPTER`.
pub(crate) fn with_adapter(model: &ModelId, adapter: Option<&str>) -> String {
    match adapter {
        Some(adapter) => format!("{model}+{adapter}"),
        None => model.to_string(),
    }
}

/// A request of a route that only models of the store can serve (Ollama's API) through
/// the routing: a remote backend is refused, as it speaks the OpenAI API only.
pub async fn serve_local<F, Fut>(state: &crate::state::AppState, name: &str, mut local: F) -> Result<Response, ApiError>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Result<Response, ApiError>>,
{
    if name.is_empty() {
        return Err(ApiError::invalid("model", "model is required"));
    }
    let table = state.routing.table();
    let (name, adapter) = table.name_and_adapter(name);
    let adapter = adapter.as_deref();
    serve(&table, name, None, is_loaded(state), |target| {
        let run_local = match &target {
            Target::Local(model) => Some(local(with_adapter(model, adapter))),
            Target::Remote(_) => None,
        };
        async move {
            match run_local {
                Some(run) => run.await,
                None => Err(ApiError::invalid(
                    "model",
                    format!("{target} is a remote backend, which serves the OpenAI API (/v1) only"),
                )),
            }
        }
    })
    .await
}

/// Whether a model of the store is loaded now (for routes that prefer loaded models).
fn is_loaded(state: &crate::state::AppState) -> impl Fn(&ModelId) -> bool + use<> {
    let loaded: Vec<ModelId> = state.pool.loaded().iter().map(|l| l.id.clone()).collect();
    move |id| loaded.contains(id)
}

/// One request of an experiment: the user's variant serves it; whether it failed, its
/// latency, time to first token and tokens/s (read from the answer as it passes to the
/// client) and its response id (for feedback) are counted for the variant.
async fn run_experiment<F, Fut>(
    experiment: &Arc<Experiment>,
    user: Option<&str>,
    mut attempt: F,
) -> Result<Response, ApiError>
where
    F: FnMut(Target) -> Fut,
    Fut: Future<Output = Result<Response, ApiError>>,
{
    let index = experiment.assign(user);
    let variant = &experiment.variants[index];
    let started = std::time::Instant::now();
    let result = attempt(variant.clone()).await;
    let labels = [
        ("experiment", experiment.name.clone()),
        ("variant", variant.to_string()),
    ];
    metrics::counter!("minerva_experiment_requests_total", &labels).increment(1);
    let mut response = match result {
        Ok(response) => response,
        Err(e) => {
            let failed = Outcome {
                failed: true,
                ..Outcome::default()
            };
            record_variant(experiment, index, &labels, failed);
            return Err(e);
        }
    };
    if let Ok(value) = HeaderValue::from_str(&format!("{}; variant={variant}", experiment.name)) {
        response.headers_mut().insert(ROUTE_HEADER, value);
    }
    let status_failed = !response.status().is_success();
    let experiment = Arc::clone(experiment);
    crate::tally::watch(response, move |tally, ended| {
        let outcome = Outcome {
            failed: status_failed || tally.failed,
            complete: ended.is_some(),
            latency: ended
                .unwrap_or_else(std::time::Instant::now)
                .duration_since(started)
                .as_secs_f64(),
            ttft: tally.first_token.map(|t| t.duration_since(started).as_secs_f64()),
            tokens: tally.tokens(),
            response_id: tally.id.clone(),
        };
        record_variant(&experiment, index, &labels, outcome);
    })
    .await
    .map_err(|e| ApiError::Internal(format!("reading the answer: {e}")))
}

/// Counts an outcome for a variant and in `/metrics`.
fn record_variant(experiment: &Experiment, index: usize, labels: &[(&'static str, String); 2], outcome: Outcome) {
    if outcome.failed {
        metrics::counter!("minerva_experiment_errors_total", labels).increment(1);
    } else if outcome.complete {
        metrics::histogram!("minerva_experiment_latency_seconds", labels).record(outcome.latency);
        if let Some(ttft) = outcome.ttft {
            metrics::histogram!("minerva_experiment_ttft_seconds", labels).record(ttft);
        }
        if let Some(tokens) = outcome.tokens.filter(|_| outcome.latency > 0.0) {
            metrics::histogram!("minerva_experiment_tokens_per_second", labels).record(tokens as f64 / outcome.latency);
        }
    }
    experiment.record(index, outcome);
}

/// Checks the remote backends' replicas on their intervals, for as long as the process
/// runs (each round reads the table anew, so a reload's backends are checked too).
pub fn spawn_health_checks(routing: Arc<Routing>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let table = routing.table();
            for backend in table.backends() {
                backend.check_health().await;
            }
        }
    });
}

fn read(path: &Path, store: &ModelStore) -> Result<RouteTable, RoutingError> {
    let text = std::fs::read_to_string(path).map_err(|source| RoutingError::Read {
        path: path.to_owned(),
        source,
    })?;
    RouteTable::parse(&text, path, store)
}

/// Why a route went past one of its models.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// The model's own queue was full (an embedding model's), or no memory was free for it
    /// while other models ran.
    Overloaded,
    /// The model can never fit in the memory budget.
    TooLarge,
    /// Its files failed their integrity check.
    Integrity,
    /// It is no longer in the store.
    Missing,
    /// The attempt took longer than the route's timeout.
    Timeout,
    /// A remote backend failed.
    Upstream,
    /// Loading or running it failed.
    Error,
}

impl Fallback {
    /// Whether `e` sends a routed request to the route's next model (a bad request would
    /// be as bad for any model: it does not).
    pub fn of(e: &ApiError) -> Option<Self> {
        Some(match e {
            // The server's admission queue is every model's: another would wait the same.
            ApiError::Overloaded(why)
                if [
                    crate::state::SHUTTING_DOWN,
                    crate::state::NO_SLOT,
                    crate::state::QUEUE_FULL,
                ]
                .contains(why) =>
            {
                return None;
            }
            ApiError::Overloaded(_) | ApiError::MemoryBusy(_) => Self::Overloaded,
            ApiError::InsufficientMemory(_) => Self::TooLarge,
            ApiError::ModelUnavailable(_) => Self::Integrity,
            ApiError::ModelNotFound(_) => Self::Missing,
            ApiError::Timeout(_) => Self::Timeout,
            ApiError::Upstream(_) => Self::Upstream,
            ApiError::Internal(_) => Self::Error,
            _ => return None,
        })
    }

    /// The name in metrics and in the route header.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Overloaded => "overloaded",
            Self::TooLarge => "too_large",
            Self::Integrity => "integrity",
            Self::Missing => "missing",
            Self::Timeout => "timeout",
            Self::Upstream => "upstream",
            Self::Error => "error",
        }
    }
}

/// Serves a request for `name`: straight to `attempt(name)` when `name` is no route;
/// else `attempt(model)` for the route's models in order until one answers or fails for
/// a reason no other model would change. The answer carries [`ROUTE_HEADER`]
/// (`ROUTE; model=MODEL`, then `; skipped=MODEL:REASON` for each model passed over), and
/// `/metrics` counts requests per route and model and fallbacks per reason. A route that
/// prefers loaded models tries those `loaded` says are first.
pub async fn serve<F, Fut>(
    table: &RouteTable,
    name: &str,
    user: Option<&str>,
    loaded: impl Fn(&ModelId) -> bool,
    mut attempt: F,
) -> Result<Response, ApiError>
where
    F: FnMut(Target) -> Fut,
    Fut: Future<Output = Result<Response, ApiError>>,
{
    if let Some(experiment) = table.experiment(name) {
        return run_experiment(experiment, user, attempt).await;
    }
    let Some(mut route) = table.get(name) else {
        return attempt(Target::Local(
            ModelId::new(name).map_err(|_| ApiError::ModelNotFound(format!("model {name:?} does not exist")))?,
        ))
        .await;
    };
    if route.prefer_loaded {
        // A stable sort: the loaded models first, each group in the listed order.
        route
            .models
            .sort_by_key(|t| !matches!(t, Target::Local(id) if loaded(id)));
    }
    let mut skipped: Vec<(&Target, Fallback)> = Vec::new();
    let last = route.models.len() - 1;
    // A fallback never evicts what routes serve first (warm routing): the memory it
    // would take is for the primaries coming back.
    let primaries: Vec<ModelId> = table
        .routes()
        .filter_map(|r| match r.models.first() {
            Some(Target::Local(id)) => Some(id.clone()),
            _ => None,
        })
        .collect();
    for (i, model) in route.models.iter().enumerate() {
        let protect: Vec<ModelId> = match (i, model) {
            (0, _) => Vec::new(),
            (_, Target::Local(own)) => primaries.iter().filter(|p| *p != own).cloned().collect(),
            (_, Target::Remote(_)) => Vec::new(),
        };
        let run = PROTECTED.scope(protect, attempt(model.clone()));
        let result = match route.timeout {
            Some(limit) => tokio::time::timeout(limit, run)
                .await
                .unwrap_or_else(|_| Err(ApiError::Timeout(limit.as_secs()))),
            None => run.await,
        };
        let labels = [("route", route.name.clone()), ("model", model.to_string())];
        match result {
            Ok(mut response) => {
                metrics::counter!("minerva_route_requests_total", &labels).increment(1);
                let mut header = format!("{}; model={model}", route.name);
                for (model, why) in &skipped {
                    header.push_str(&format!("; skipped={model}:{}", why.as_str()));
                }
                if let Ok(value) = HeaderValue::from_str(&header) {
                    response.headers_mut().insert(ROUTE_HEADER, value);
                }
                return Ok(response);
            }
            Err(e) => match Fallback::of(&e) {
                Some(why) if i < last => {
                    tracing::info!(route = %route.name, %model, reason = why.as_str(), error = %e, "route falls back");
                    metrics::counter!(
                        "minerva_route_fallbacks_total",
                        "route" => route.name.clone(),
                        "model" => model.to_string(),
                        "reason" => why.as_str()
                    )
                    .increment(1);
                    skipped.push((model, why));
                }
                _ => return Err(e),
            },
        }
    }
    unreachable!("a route has at least one model, and its last one answers or fails above")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with(models: &[&str]) -> (tempfile::TempDir, ModelStore) {
        let dir = tempfile::tempdir().unwrap();
        for m in models {
            std::fs::write(dir.path().join(format!("{m}.gguf")), b"GGUF").unwrap();
        }
        let store = ModelStore::new(dir.path().to_owned());
        (dir, store)
    }

    #[test]
    fn aliases_and_routes_parse_and_bad_ones_name_their_line() {
        let (_dir, store) = store_with(&["small", "big"]);
        let path = Path::new("minerva.toml");
        let text = "addr = \"127.0.0.1:8080\"\n[aliases]\nchat = \"small:latest\"\n[routes.assistant]\nmodels = [\"big\", \"small\"]\ntimeout_secs = 2.5\n";
        let table = RouteTable::parse(text, path, &store).unwrap();
        assert_eq!(table.get("chat").unwrap().models[0].name(), "small");
        let assistant = table.get("assistant:latest").unwrap();
        assert_eq!(
            assistant.models.iter().map(Target::name).collect::<Vec<_>>(),
            ["big", "small"]
        );
        assert_eq!(assistant.timeout, Some(Duration::from_millis(2500)));
        for (text, needle) in [
            ("[aliases]\nchat = \"small\"\nother = \"nothing\"\n", "line 3"),
            ("[routes.r]\nmodels = [\"small\",\n  \"gone\"]\n", "line 3"),
            ("[routes.r]\nmodels = [\"small\"]\ncolour = 1\n", "colour"),
            ("[routes.r]\nmodels = []\n", "empty"),
            ("[aliases]\nsmall = \"big\"\n", "is a model"),
            (
                "[aliases]\nr = \"big\"\n[routes.r]\nmodels = [\"small\"]\n",
                "alias already",
            ),
            ("[routes.r]\nmodels = [\"small\"]\ntimeout_secs = -1\n", "positive"),
        ] {
            let e = RouteTable::parse(text, path, &store).unwrap_err().to_string();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }

    #[test]
    fn an_alias_names_its_adapters_and_a_request_may_add_more() {
        let (dir, store) = store_with(&["small"]);
        let adapters = dir.path().join(minerva_store::ADAPTERS_DIR);
        std::fs::create_dir(&adapters).unwrap();
        for a in ["tone", "style", "extra"] {
            std::fs::write(adapters.join(format!("{a}.gguf")), b"GGUF").unwrap();
        }
        let path = Path::new("minerva.toml");
        let text = "[aliases]\nsupport = \"small+tone\"\nboth = \"small+tone+style\"\nplain = \"small\"\n";
        let table = RouteTable::parse(text, path, &store).unwrap();
        assert_eq!(table.get("support").unwrap().models[0].name(), "small");
        assert_eq!(table.name_and_adapter("support"), ("support", Some("tone".to_owned())));
        assert_eq!(
            table.name_and_adapter("both:latest"),
            ("both:latest", Some("tone+style".to_owned()))
        );
        assert_eq!(
            table.name_and_adapter("support+extra"),
            ("support", Some("tone+extra".to_owned()))
        );
        assert_eq!(
            table.name_and_adapter("plain+extra"),
            ("plain", Some("extra".to_owned()))
        );
        assert_eq!(table.name_and_adapter("small"), ("small", None));
        let missing = RouteTable::parse("[aliases]\nx = \"small+tone+gone\"\n", path, &store)
            .unwrap_err()
            .to_string();
        assert!(missing.contains("line 2") && missing.contains("gone"), "{missing}");
    }
}
