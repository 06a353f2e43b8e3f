// The playground: base and steered output streamed side by side (two concurrent requests that the
// server batches together), tokens coloured by their projection on the vector, and a small
// strength x layer sweep; the tokens the steering covered (span positions) are underlined. Plain JS, no build step, nothing fetched from outside this server.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { model: null, vectors: [], runs: [], sweepAbort: null };

// -- HTTP ------------------------------------------------------------------------------------
function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value || localStorage.getItem("mlx-steer-key") || "";
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

async function getJSON(path) {
  const r = await fetch(path, { headers: headers() });
  const body = await r.json();
  if (!r.ok) throw Object.assign(new Error(body.error ? body.error.message : r.statusText), { status: r.status });
  return body;
}

// POST a streaming completion; calls onChunk(parsed) for every SSE data line until [DONE].
async function stream(path, body, onChunk, signal) {
  const r = await fetch(path, { method: "POST", headers: headers(), body: JSON.stringify(body), signal });
  if (!r.ok) {
    const err = await r.json().catch(() => ({}));
    throw new Error(err.error ? err.error.message : r.status + " " + r.statusText);
  }
  const reader = r.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, cut).replace(/\r$/, "");
      buf = buf.slice(cut + 1);
      if (!line.startsWith("data:")) continue;
      const data = line.slice(5).trim();
      if (data === "[DONE]") return;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      onChunk(chunk);
    }
  }
}

// -- the request ---------------------------------------------------------------------------
function mode() { return document.querySelector("input[name=mode]:checked").value; }
function strength() { const s = parseFloat($("strength").value); return Number.isFinite(s) ? s : 0; }
function chosenLayer() { const v = $("layer").value; return v === "" ? null : parseInt(v, 10); }
// a positions option is a name ("generated", "reasoning") or a span object written as JSON
function chosenPositions() { const v = $("positions").value; return v.startsWith("{") ? JSON.parse(v) : v; }

function requestBody(steered, opts = {}) {
  const body = {
    model: state.model.id,
    max_tokens: opts.maxTokens || Math.max(1, parseInt($("max-tokens").value, 10) || 48),
    temperature: Math.max(0, parseFloat($("temperature").value) || 0),
    stream: opts.stream !== false,
  };
  const prompt = $("prompt").value;
  if (mode() === "chat") {
    body.messages = [];
    if ($("system").value.trim()) body.messages.push({ role: "system", content: $("system").value });
    body.messages.push({ role: "user", content: prompt });
  } else {
    body.prompt = prompt;
  }
  const vector = $("vector").value;
  const layer = opts.layer !== undefined ? opts.layer : chosenLayer();
  if (vector) {
    body.monitor = [layer === null ? vector : { vector: vector, layer: layer }];
    if (steered) {
      const s = { vector: vector, scale: opts.scale !== undefined ? opts.scale : strength(), positions: chosenPositions() };
      if (layer !== null) s.layers = [layer];
      body.steering = [s];
    }
  }
  return body;
}

function path() { return mode() === "chat" ? "/v1/chat/completions" : "/v1/completions"; }

function textOf(choice) {
  if (choice.delta) return choice.delta.content || "";
  return choice.text || "";
}

// -- panes -----------------------------------------------------------------------------------
class Pane {
  constructor(name) {
    this.el = $(name + "-output");
    this.status = $(name + "-status");
    this.tokens = [];  // {span, value}: one per generated token
  }
  reset() {
    this.el.textContent = "";
    this.tokens = [];
    this.el.dataset.state = "running";
    this.status.textContent = "";
  }
  // a token's text (a token chunk always makes a span, even while its text is held back);
  // the text of the first and last chunks is no token of its own
  add(text, value, isToken) {
    if (!text && !isToken) return;
    const span = document.createElement("span");
    span.textContent = text;
    if (value !== undefined) span.title = "projection " + value.toFixed(3);
    this.el.appendChild(span);
    if (isToken) this.tokens.push({ span, value });
  }
  // the last chunk's steered_tokens: one flag per generated token
  markSteered(flags) {
    flags.forEach((steered, i) => {
      const t = this.tokens[i];
      if (!t || !steered) return;
      t.span.classList.add("steered");
      t.span.title = (t.span.title ? t.span.title + " · " : "") + "steered";
    });
  }
  finish(reason, n, seconds) {
    this.el.dataset.state = "done";
    this.status.textContent = `${n} tokens, ${reason}, ${(n / Math.max(seconds, 1e-3)).toFixed(1)} tok/s`;
  }
  fail(message) {
    this.el.dataset.state = "error";
    this.status.textContent = "error";
    showError(message);
  }
}

const panes = { base: new Pane("base"), steered: new Pane("steered") };

function recolor() {
  const base = panes.base.tokens.map((t) => t.value).filter((v) => v !== undefined);
  const all = [...base, ...panes.steered.tokens.map((t) => t.value).filter((v) => v !== undefined)];
  if (!all.length) { $("legend-scale").textContent = ""; return; }
  const center = base.length ? base.reduce((a, b) => a + b, 0) / base.length : 0;
  const scale = Math.max(1e-6, ...all.map((v) => Math.abs(v - center)));
  for (const pane of Object.values(panes)) {
    for (const t of pane.tokens) {
      if (t.value === undefined) continue;
      const x = Math.max(-1, Math.min(1, (t.value - center) / scale));
      const rgb = x >= 0 ? "var(--high)" : "var(--low)";
      t.span.style.background = `rgba(${rgb}, ${(Math.abs(x) * 0.55).toFixed(3)})`;
    }
  }
  $("legend-scale").textContent = `(mean ${center.toFixed(2)}, ±${scale.toFixed(2)})`;
}

async function run(name, steered, signal) {
  const pane = panes[name];
  pane.reset();
  const started = performance.now();
  let chunks = 0, reason = "";
  try {
    await stream(path(), requestBody(steered), (chunk) => {
      const choice = chunk.choices[0];
      if (!choice) return;
      chunks += 1;  // the first chunk opens the reply, the last one ends it: the rest are tokens
      const values = Object.values(choice.projections || {});
      const isToken = chunks > 1 && !choice.finish_reason;
      pane.add(textOf(choice), values.length ? values[0] : undefined, isToken);
      if (choice.steered_tokens) pane.markSteered(choice.steered_tokens);
      if (choice.finish_reason) reason = choice.finish_reason;
      recolor();
    }, signal);
    pane.finish(reason || "stopped", Math.max(0, chunks - 2), (performance.now() - started) / 1000);
  } catch (err) {
    if (err.name === "AbortError") { pane.el.dataset.state = "done"; pane.status.textContent = "stopped"; }
    else pane.fail(err.message);
  }
}

async function generate() {
  showError("");
  if (!state.model) return;
  const abort = new AbortController();
  state.runs.push(abort);
  $("generate").disabled = true;
  $("stop").disabled = false;
  try {
    await Promise.all([run("base", false, abort.signal), run("steered", true, abort.signal)]);
  } finally {
    $("generate").disabled = false;
    $("stop").disabled = true;
    state.runs = state.runs.filter((a) => a !== abort);
  }
}

function stop() {
  for (const a of state.runs) a.abort();
  if (state.sweepAbort) state.sweepAbort.abort();
}

// -- sweep -------------------------------------------------------------------------------------
function numbers(text) {
  return text.split(/[\s,]+/).filter(Boolean).map(Number).filter(Number.isFinite);
}

async function sweep() {
  showError("");
  const vector = currentVector();
  if (!vector) { showError("pick a vector first"); return; }
  const strengths = numbers($("sweep-strengths").value).slice(0, 9);
  const layers = sweepLayers();
  // only the vector's own layers can be steered: refuse anything else before any request goes out
  const absent = layers.filter((layer) => !vector.layers.includes(layer));
  if (absent.length) {
    showError(`vector ${vector.id} has no direction at layer ${absent.join(", ")}; its layers: ${vector.layers.join(", ")}`);
    return;
  }
  if (!layers.length) {
    showError(vector.layers.length ? "tick at least one of the vector's layers" : `vector ${vector.id} has no decoder-layer direction to sweep`);
    return;
  }
  const tokens = Math.max(1, parseInt($("sweep-tokens").value, 10) || 16);
  const table = $("sweep-table");
  table.textContent = "";
  const head = table.insertRow();
  head.appendChild(Object.assign(document.createElement("th"), { textContent: "layer \\ strength" }));
  for (const s of strengths) head.appendChild(Object.assign(document.createElement("th"), { textContent: String(s) }));
  const cells = [];
  for (const layer of layers) {
    const row = table.insertRow();
    row.appendChild(Object.assign(document.createElement("th"), { textContent: "layer " + layer }));
    for (const s of strengths) {
      const td = row.insertCell();
      td.textContent = "…";
      cells.push({ td, layer, scale: s });
    }
  }
  state.sweepAbort = new AbortController();
  const signal = state.sweepAbort.signal;
  let done = 0;
  $("sweep-status").textContent = `0 / ${cells.length}`;
  const worker = async () => {
    while (cells.length) {
      const cell = cells.shift();
      const body = requestBody(cell.scale !== 0, { stream: false, layer: cell.layer, scale: cell.scale, maxTokens: tokens });
      try {
        const r = await fetch(path(), { method: "POST", headers: headers(), body: JSON.stringify(body), signal });
        const out = await r.json();
        if (!r.ok) throw new Error(out.error ? out.error.message : r.statusText);
        const choice = out.choices[0];
        const values = Object.values(choice.projections || {})[0] || [];
        const mean = values.length ? values.reduce((a, b) => a + b, 0) / values.length : NaN;
        cell.td.textContent = choice.message ? choice.message.content : choice.text;
        const proj = document.createElement("span");
        proj.className = "proj";
        proj.textContent = Number.isFinite(mean) ? `mean projection ${mean.toFixed(2)}` : "";
        cell.td.appendChild(proj);
      } catch (err) {
        cell.td.textContent = err.name === "AbortError" ? "stopped" : "error: " + err.message;
      }
      done += 1;
      $("sweep-status").textContent = `${done} / ${done + cells.length}`;
    }
  };
  // a few at a time: they run together in the server's batch without filling its queue
  await Promise.all(Array.from({ length: 4 }, worker));
  state.sweepAbort = null;
}

// -- setup -------------------------------------------------------------------------------------
function showError(message) { $("error").textContent = message || ""; }
function currentVector() { return state.vectors.find((v) => v.id === $("vector").value) || null; }

function fillLayers() {
  const v = currentVector();
  const select = $("layer");
  select.textContent = "";
  $("sweep-layers").textContent = "";
  if (!v) return;
  if (v.layers.length > 1) select.appendChild(new Option(`all ${v.layers.length} of the vector's layers`, ""));
  for (const layer of v.layers) select.appendChild(new Option("layer " + layer, String(layer)));
  if (v.layers.length > 1) select.value = String(v.layers[Math.floor(v.layers.length / 2)]);
  $("vector-info").textContent = [v.method, v.hook_point !== "output" ? v.hook_point : "", v.file || ""]
    .filter(Boolean).join(" · ");
  fillSweepLayers(v);
}

// the sweep's layer choices are the vector's layers (the first four ticked)
function fillSweepLayers(v) {
  const box = $("sweep-layers");
  box.textContent = "";
  v.layers.forEach((layer, i) => {
    const tick = Object.assign(document.createElement("input"), { type: "checkbox", value: String(layer), checked: i < 4 });
    const label = document.createElement("label");
    label.append(tick, String(layer));
    box.appendChild(label);
  });
}

function sweepLayers() {
  return [...document.querySelectorAll("#sweep-layers input:checked")].map((el) => parseInt(el.value, 10));
}

function syncStrength(from) {
  if (from === "range") $("strength").value = $("strength-range").value;
  else $("strength-range").value = $("strength").value;
  $("strength-shown").textContent = $("strength").value;
}

function syncMode() {
  for (const el of document.querySelectorAll(".chat-only")) el.hidden = mode() !== "chat";
}

async function connect() {
  try {
    const models = await getJSON("/v1/models");
    state.model = models.data[0];
    const vectors = await getJSON("/v1/vectors");
    state.vectors = vectors.data;
  } catch (err) {
    if (err.status === 401) {
      $("key-row").hidden = false;
      $("model-info").textContent = "this server needs an API key";
      showError(err.message);
      return;
    }
    $("model-info").textContent = "cannot reach the server";
    showError(err.message);
    return;
  }
  if ($("api-key").value) localStorage.setItem("mlx-steer-key", $("api-key").value);
  const m = state.model;
  $("model-info").textContent = `${m.id} · ${m.backend} · ${m.num_layers} layers · hidden ${m.hidden_size} · ${m.batching} batching`;
  const select = $("vector");
  select.textContent = "";
  for (const v of state.vectors) select.appendChild(new Option(v.id, v.id));
  if (!state.vectors.length) {
    select.appendChild(new Option("(no vectors: start the server with --vector NAME=FILE)", ""));
  }
  if (!m.chat_template) {
    document.querySelector("input[name=mode][value=completion]").checked = true;
    syncMode();
  }
  fillLayers();
}

$("generate").addEventListener("click", generate);
$("stop").addEventListener("click", stop);
$("sweep").addEventListener("click", sweep);
$("vector").addEventListener("change", fillLayers);
$("strength-range").addEventListener("input", () => syncStrength("range"));
$("strength").addEventListener("input", () => syncStrength("number"));
$("api-key").addEventListener("change", connect);
for (const el of document.querySelectorAll("input[name=mode]")) el.addEventListener("change", syncMode);
$("prompt").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.metaKey || e.ctrlKey)) generate(); });
syncMode();
connect();
