// Minerva's dashboard: a live view of /v1/monitor/events (one snapshot a second) and a
// playground over the OpenAI API. No framework; uPlot draws the charts.
"use strict";

const HISTORY = 300; // points kept per chart (five minutes)
const COLORS = ["#3b5bdb", "#2f9e44", "#e8590c", "#ae3ec9", "#f59f00", "#0c8599", "#c2255c"];
const $ = (id) => document.getElementById(id);

// ---------- the API key, when the server asks for one ----------
let apiKey = sessionStorage.getItem("minerva-key") || "";
function headers(extra = {}) {
  const h = { ...extra };
  if (apiKey) h.Authorization = `Bearer ${apiKey}`;
  return h;
}
function askForKey() {
  $("key-form").hidden = false;
}
$("key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  apiKey = $("key").value.trim();
  sessionStorage.setItem("minerva-key", apiKey);
  $("key-form").hidden = true;
  connect();
  loadModels();
});

// ---------- tabs ----------
for (const tab of document.querySelectorAll(".tab")) {
  tab.addEventListener("click", () => {
    for (const t of document.querySelectorAll(".tab")) t.classList.toggle("active", t === tab);
    for (const p of document.querySelectorAll(".panel")) p.hidden = p.id !== tab.dataset.tab;
    resizeCharts();
  });
}

// ---------- formatting ----------
const mib = (b) => (b == null ? "–" : `${(b / 1048576).toFixed(b < 10485760 ? 1 : 0)} MiB`);
const ms = (v) => (v == null ? "–" : v < 1000 ? `${v.toFixed(v < 10 ? 1 : 0)} ms` : `${(v / 1000).toFixed(2)} s`);
const pct = (v) => (v == null ? "–" : `${(v * 100).toFixed(0)}%`);
const escapeHtml = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

// ---------- charts ----------
function chart(id, series, opts = {}) {
  const el = $(id);
  const data = [[], ...series.map(() => [])];
  const plot = new uPlot(
    {
      width: el.clientWidth || 400,
      height: 200,
      legend: { live: false },
      scales: { x: { time: true }, y: { range: opts.range || ((u, min, max) => [0, Math.max(max, opts.min || 1) * 1.1]) } },
      axes: [{}, { size: 60 }],
      series: [{}, ...series.map((label, i) => ({ label, stroke: COLORS[i % COLORS.length], width: 2, spanGaps: true }))],
    },
    data,
    el,
  );
  return { plot, data, el };
}

const charts = {
  memory: chart("chart-memory", ["models", "process RSS", "system used"]),
  throughput: chart("chart-throughput", ["requests/s", "generated tokens/s", "embedded inputs/s"]),
  latency: chart("chart-latency", ["TTFT p50", "TTFT p95", "total p95", "queue p95"]),
  queue: chart("chart-queue", ["running", "waiting in models", "waiting for a slot"]),
  pool: chart("chart-pool", ["loads/min", "evictions/min"]),
  cache: chart("chart-cache", ["prefix cache", "embedding cache"], { range: () => [0, 1] }),
};

// The series, for a look from the browser's console (and the browser test).
window.minervaCharts = charts;

function push(c, t, values) {
  c.data[0].push(t);
  values.forEach((v, i) => c.data[i + 1].push(v));
  if (c.data[0].length > HISTORY) for (const col of c.data) col.shift();
  if (!c.el.offsetParent) return; // hidden tab: drawn when shown
  c.plot.setData(c.data);
}

function resizeCharts() {
  for (const c of Object.values(charts)) {
    if (!c.el.offsetParent) continue;
    c.plot.setSize({ width: c.el.clientWidth, height: 200 });
    c.plot.setData(c.data);
  }
}
window.addEventListener("resize", resizeCharts);

// ---------- snapshots ----------
let previous = null;
let poolEvents = []; // [time, loads, evictions] for per-minute rates

function render(s) {
  const t = s.time_ms / 1000;
  const rate = (key) => {
    if (!previous) return 0;
    const dt = (s.time_ms - previous.time_ms) / 1000;
    return dt > 0 ? Math.max(0, s.totals[key] - previous.totals[key]) / dt : 0;
  };
  const rps = rate("requests");
  const tps = rate("generated_tokens");
  const eps = rate("embedded_inputs");
  const llms = s.models.filter((m) => m.kind === "llm");
  const running = llms.reduce((a, m) => a + m.running, 0);
  const waiting = llms.reduce((a, m) => a + m.waiting, 0);
  const prefix = llms.length ? llms.reduce((a, m) => a + m.prefix_cache_hit_ratio, 0) / llms.length : null;
  const lat = s.latency_ms;

  $("card-models").textContent = s.models.length;
  $("card-memory").textContent = `${mib(s.memory.in_use_bytes)} / ${mib(s.memory.budget_bytes)}`;
  $("card-rps").textContent = rps.toFixed(1);
  $("card-tps").textContent = tps.toFixed(1);
  $("card-load").textContent = `${running} · ${waiting + s.queue_depth}`;
  $("card-ttft").textContent = `${ms(lat.ttft.p50)} · ${ms(lat.ttft.p95)}`;
  $("card-cache").textContent = `${pct(prefix)} · ${pct(s.caches.embedding_hit_ratio)}`;

  renderMemory(s);
  renderModels(s);
  renderRecent(s);

  const systemUsed = s.memory.system_total_bytes ? s.memory.system_total_bytes - s.memory.system_available_bytes : null;
  push(charts.memory, t, [s.memory.in_use_bytes / 1048576, s.memory.process_rss_bytes / 1048576, systemUsed == null ? null : systemUsed / 1048576]);
  push(charts.throughput, t, [rps, tps, eps]);
  push(charts.latency, t, [lat.ttft.p50, lat.ttft.p95, lat.total.p95, lat.queue.p95]);
  push(charts.queue, t, [running, waiting, s.queue_depth]);
  poolEvents.push([s.time_ms, s.totals.loads, s.totals.evictions]);
  while (poolEvents.length && s.time_ms - poolEvents[0][0] > 60000) poolEvents.shift();
  const first = poolEvents[0];
  push(charts.pool, t, [s.totals.loads - first[1], s.totals.evictions - first[2]]);
  push(charts.cache, t, [prefix, s.caches.embedding_hit_ratio]);
  previous = s;
  document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
}

function renderMemory(s) {
  const bar = $("memory-bar");
  const budget = s.memory.budget_bytes || 1;
  bar.innerHTML = s.models
    .map((m, i) => {
      const width = (100 * m.bytes) / budget;
      return `<div style="width:${width}%;background:${COLORS[i % COLORS.length]}" title="${escapeHtml(m.id)}: ${mib(m.bytes)}">${escapeHtml(m.id)}</div>`;
    })
    .join("");
  const system = s.memory.system_total_bytes;
  $("memory-legend").innerHTML = [
    ...s.models.map((m, i) => `<span class="swatch" style="background:${COLORS[i % COLORS.length]}"></span>${escapeHtml(m.id)} ${mib(m.bytes)}`),
    `budget ${mib(s.memory.budget_bytes)}`,
    `in use ${mib(s.memory.in_use_bytes)}`,
    `process RSS ${mib(s.memory.process_rss_bytes)}`,
    system ? `system ${mib(system - s.memory.system_available_bytes)} used of ${mib(system)}` : "",
    s.memory.waiting_loads ? `${s.memory.waiting_loads} load(s) waiting for room` : "",
  ]
    .filter(Boolean)
    .map((x) => `<span>${x}</span>`)
    .join("");
}

function renderModels(s) {
  const now = s.time_ms / 1000;
  $("models").tBodies[0].innerHTML = s.models
    .map((m) => {
      const expires = m.expires_at == null ? (m.leases ? "in use" : "never") : `in ${Math.max(0, m.expires_at - now).toFixed(0)} s`;
      const kv = m.kind === "llm" ? `<span class="meter"><span style="width:${(m.kv_usage * 100).toFixed(1)}%"></span></span> ${pct(m.kv_usage)}` : "";
      return `<tr><td>${escapeHtml(m.id)}</td><td>${m.kind}</td><td>${mib(m.bytes)}</td><td>${m.leases}</td>` +
        `<td>${m.running ?? ""}</td><td>${m.waiting ?? ""}</td><td>${kv}</td><td>${expires}</td></tr>`;
    })
    .join("");
}

function renderRecent(s) {
  $("recent").tBodies[0].innerHTML = s.recent
    .map((r) => {
      const parts = [["model", r.model_ms], ["prepare", r.prepare_ms], ["queue", r.queue_ms], ["prefill", r.prefill_ms], ["decode", r.decode_ms]];
      const total = parts.reduce((a, [, v]) => a + v, 0) || 1;
      const bar = parts
        .map(([name, v]) => `<span class="${name}" style="width:${(100 * v) / total}%" title="${name} ${ms(v)}"></span>`)
        .join("");
      const when = new Date(r.at_ms).toLocaleTimeString();
      return `<tr><td>${when}</td><td>${escapeHtml(r.model)}</td><td>${r.api}</td>` +
        `<td>${r.prompt_tokens} · ${r.cached_tokens} · ${r.generated_tokens}</td><td>${ms(r.ttft_ms)}</td><td>${ms(r.total_ms)}</td>` +
        `<td><div class="stages">${bar}</div></td></tr>`;
    })
    .join("");
}

// ---------- the live stream: SSE read through fetch (so that it can carry the key) ----------
let stream = null;
async function connect() {
  if (stream) stream.abort();
  stream = new AbortController();
  const live = $("live");
  try {
    const res = await fetch("/v1/monitor/events", { headers: headers(), signal: stream.signal });
    if (res.status === 401) {
      live.className = "live off";
      live.textContent = "API key needed";
      askForKey();
      return;
    }
    if (!res.ok || !res.body) throw new Error(`status ${res.status}`);
    live.className = "live on";
    live.textContent = "live";
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = event.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
        if (data) render(JSON.parse(data));
      }
    }
    throw new Error("the stream ended");
  } catch (e) {
    if (e.name === "AbortError") return;
    live.className = "live off";
    live.textContent = "reconnecting…";
    setTimeout(connect, 2000);
  }
}

// ---------- playground ----------
async function loadModels() {
  const res = await fetch("/v1/models", { headers: headers() });
  if (!res.ok) return;
  const list = await res.json();
  const select = $("play-model");
  const models = list.data.filter((m) => m.format === "gguf" || m.object === "route");
  select.innerHTML = models.map((m) => `<option>${escapeHtml(m.id)}</option>`).join("");
}

const tooltip = $("tooltip");
function showTip(e, html) {
  tooltip.innerHTML = html;
  tooltip.hidden = false;
  tooltip.style.left = `${e.clientX + 12}px`;
  tooltip.style.top = `${e.clientY + 12}px`;
}
document.addEventListener("mouseover", (e) => {
  const el = e.target.closest("[data-tip]");
  if (el) showTip(e, el.dataset.tip);
  else tooltip.hidden = true;
});
document.addEventListener("mousemove", (e) => {
  if (!tooltip.hidden) {
    tooltip.style.left = `${e.clientX + 12}px`;
    tooltip.style.top = `${e.clientY + 12}px`;
  }
});

// The probability of a token as a colour: green when sure, red when a guess.
const probColor = (p) => `hsla(${Math.round(120 * p)}, 70%, 50%, 0.35)`;

// Tokens of either API's logprobs as [{text, p, alternatives: [[text, p]]}].
function tokensOf(choice, mode) {
  if (mode === "chat") {
    return (choice.logprobs?.content || []).map((t) => ({
      text: t.token,
      p: Math.exp(t.logprob),
      alternatives: (t.top_logprobs || []).map((a) => [a.token, Math.exp(a.logprob)]),
    }));
  }
  const lp = choice.logprobs || {};
  return (lp.tokens || []).map((text, i) => ({
    text,
    p: Math.exp(lp.token_logprobs[i]),
    alternatives: Object.entries((lp.top_logprobs || [])[i] || {}).map(([k, v]) => [k, Math.exp(v)]),
  }));
}

let lastRun = null;
$("play-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const mode = $("play-mode").value;
  const model = $("play-model").value;
  const prompt = $("play-prompt").value;
  const body = { model, max_tokens: Number($("play-max").value), temperature: Number($("play-temperature").value) };
  let url;
  if (mode === "chat") {
    url = "/v1/chat/completions";
    Object.assign(body, { messages: [{ role: "user", content: prompt }], logprobs: true, top_logprobs: 5 });
  } else {
    url = "/v1/completions";
    Object.assign(body, { prompt, logprobs: 5 });
  }
  $("play-status").textContent = "generating…";
  $("play-send").disabled = true;
  try {
    const res = await fetch(url, { method: "POST", headers: headers({ "Content-Type": "application/json" }), body: JSON.stringify(body) });
    const reply = await res.json();
    if (!res.ok) throw new Error(reply.error?.message || `status ${res.status}`);
    const choice = reply.choices[0];
    const tokens = tokensOf(choice, mode);
    $("play-output").innerHTML = tokens
      .map((t) => {
        const rows = t.alternatives.map(([text, p]) => `<tr><td>${escapeHtml(JSON.stringify(text))}</td><td>${(p * 100).toFixed(1)}%</td></tr>`).join("");
        const tip = `<b>${escapeHtml(JSON.stringify(t.text))}</b> ${(t.p * 100).toFixed(1)}%<table>${rows}</table>`;
        return `<span class="token" style="background:${probColor(t.p)}" data-p="${t.p.toFixed(4)}" data-tip="${escapeHtml(tip)}">${escapeHtml(t.text)}</span>`;
      })
      .join("");
    const text = mode === "chat" ? choice.message.content : choice.text;
    const timings = reply.timings ? ` · TTFT ${ms(reply.timings.total_ms - reply.timings.predicted_ms)}, ${reply.timings.predicted_per_second.toFixed(1)} tok/s` : "";
    $("play-status").textContent = `${tokens.length} tokens${timings}`;
    lastRun = { model, prompt, completion: text };
    $("play-explain").disabled = false;
  } catch (err) {
    $("play-status").textContent = `error: ${err.message}`;
  } finally {
    $("play-send").disabled = false;
  }
});

$("play-explain").addEventListener("click", async () => {
  if (!lastRun) return;
  $("play-status").textContent = "explaining…";
  $("play-explain").disabled = true;
  try {
    const res = await fetch("/v1/explain", {
      method: "POST",
      headers: headers({ "Content-Type": "application/json" }),
      body: JSON.stringify({ model: lastRun.model, prompt: lastRun.prompt, completion: lastRun.completion }),
    });
    const reply = await res.json();
    if (!res.ok) throw new Error(reply.error?.message || `status ${res.status}`);
    const top = Math.max(...reply.prompt.map((u) => Math.max(0, u.importance)), 1e-9);
    $("play-heat").innerHTML = reply.prompt
      .map((u) => {
        const share = Math.max(0, u.importance) / top;
        const tip = `importance ${u.importance.toFixed(3)} (rank ${u.rank})`;
        return `<span class="token word" data-importance="${u.importance}" data-rank="${u.rank}" style="background:rgba(224,49,49,${(0.05 + 0.75 * share).toFixed(2)})" data-tip="${escapeHtml(tip)}">${escapeHtml(u.text)}</span>`;
      })
      .join("");
    $("play-status").textContent = `completion log-probability ${reply.completion.logprob.toFixed(2)}`;
  } catch (err) {
    $("play-status").textContent = `error: ${err.message}`;
  } finally {
    $("play-explain").disabled = false;
  }
});

connect();
loadModels();
