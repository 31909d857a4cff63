// anya's web console: four pages (models, live figures, playground, API document) over the
// server's own routes. No dependencies. The token, when the server asks for one, lives in the
// `token` variable below only: never in storage or cookies.
"use strict";

let token = null;
const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function toast(text) {
  const t = $("toast");
  t.textContent = text;
  t.classList.remove("hidden");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => t.classList.add("hidden"), 5000);
}

class Unauthorized extends Error {}

// Every data call: the token as a Bearer header; 401 asks for a (new) token.
async function api(path, opts = {}) {
  const headers = Object.assign({}, opts.headers || {});
  if (token) headers["Authorization"] = "Bearer " + token;
  if (opts.json !== undefined) {
    headers["Content-Type"] = "application/json";
    opts = Object.assign({}, opts, { body: JSON.stringify(opts.json) });
  }
  const r = await fetch(path, Object.assign({}, opts, { headers, cache: "no-store" }));
  if (r.status === 401) {
    askToken(token ? "The token was refused." : "");
    throw new Unauthorized("401 on " + path);
  }
  return r;
}

async function apiJson(path, opts) {
  const r = await api(path, opts);
  const text = await r.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (_) { body = text; }
  if (!r.ok) {
    const msg = (body && body.error && (body.error.message || body.error)) || r.statusText;
    throw new Error(r.status + ": " + msg);
  }
  return body;
}

function askToken(message) {
  $("auth").classList.remove("hidden");
  $("auth-error").textContent = message || "";
  document.body.dataset.auth = "needed";
  $("models-status").textContent = "waiting for a token";
  $("live-status").textContent = "waiting for a token";
}

// The token's scopes, read from its claims for display only (the server decides).
function scopes() {
  if (!token) return null;
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(part + "===".slice((part.length + 3) % 4)));
    const list = [].concat(claims.scopes || [], (claims.scope || "").split(" "));
    return list.filter(Boolean);
  } catch (_) {
    return [];
  }
}

function isAdmin() {
  const s = scopes();
  return s === null || s.includes("admin");
}

// ---------------------------------------------------------------- navigation

const pages = ["models", "live", "playground", "api"];
let current = null;

function show() {
  const name = pages.includes(location.hash.slice(1)) ? location.hash.slice(1) : "models";
  current = name;
  for (const p of pages) {
    $("page-" + p).classList.toggle("hidden", p !== name);
    $("nav-" + p).classList.toggle("active", p === name);
  }
  document.body.dataset.page = name;
  load(name);
}

function load(name) {
  const run = { models: loadModels, live: startLive, playground: loadPlayground, api: loadApi }[name];
  run().catch((e) => { if (!(e instanceof Unauthorized)) toast(String(e.message || e)); });
}

// ---------------------------------------------------------------- models

const COLORS = ["#1f6feb", "#12b76a", "#f79009", "#7a5af8", "#f04438", "#0ba5ec", "#ee46bc"];

async function loadModels() {
  $("models-status").textContent = "loading…";
  const list = await apiJson("/models");
  const admin = isAdmin();
  const cards = [];
  for (const m of list.models) {
    const [versions, traffic] = await Promise.all([
      apiJson("/models/" + encodeURIComponent(m.id) + "/versions"),
      apiJson("/models/" + encodeURIComponent(m.id) + "/traffic").catch(() => null),
    ]);
    cards.push(modelCard(m, versions.versions, traffic, admin));
  }
  $("models").replaceChildren(...cards);
  $("models").dataset.loaded = String(list.models.length);
  $("models-status").textContent = list.models.length + " models · " + new Date().toLocaleTimeString();
  $("who").textContent = token ? "token scopes: " + (scopes().join(" ") || "none") : "";
}

function stateBadge(state) {
  return el("span", { class: "state state-" + state }, state);
}

function modelCard(m, versions, traffic, admin) {
  const id = m.id;
  const rows = versions.map((v) => el("tr", { "data-version": v.version },
    el("td", {}, v.version, v.default ? " (default)" : ""),
    el("td", {}, stateBadge(v.state), v.error ? el("div", { class: "error" }, v.error) : null),
    el("td", {}, v.load_ms != null ? (v.load_ms / 1000).toFixed(2) + " s" : "–"),
    el("td", {}, v.device || "–"),
    el("td", {}, String(v.queue_size)),
    el("td", {}, v.weight.toFixed(1) + "%"),
    admin ? el("td", { class: "actions" },
      v.state === "ready" || v.state === "draining"
        ? el("button", { class: "danger", onclick: () => act("DELETE", `/models/${enc(id)}/versions/${enc(v.version)}`) }, "Unload")
        : el("button", { onclick: () => act("POST", `/models/${enc(id)}/versions/${enc(v.version)}/load`) }, "Load"),
      v.state === "ready" && !v.default
        ? el("button", { onclick: () => act("POST", `/models/${enc(id)}/traffic/promote`, { version: v.version }) }, "Promote")
        : null) : null));
  const table = el("table", {},
    el("thead", {}, el("tr", {}, ["Version", "State", "Load time", "Device", "Queue", "Weight"].map((h) => el("th", {}, h)),
      admin ? el("th", {}, "Actions") : null)),
    el("tbody", {}, rows));
  return el("div", { class: "card model", "data-model": id, "data-state": m.state },
    el("div", { class: "card-head" }, el("h3", {}, id), el("span", { class: "muted" }, m.task + " · " + m.framework),
      stateBadge(m.state), m.description ? el("span", { class: "muted" }, m.description) : null),
    table,
    traffic ? trafficView(id, traffic, versions, admin) : null);
}

const enc = encodeURIComponent;

function trafficView(id, t, versions, admin) {
  const effective = t.effective || [];
  const bar = el("div", { class: "split" });
  const legend = el("div", { class: "legend" });
  effective.forEach((e, i) => {
    const name = (e.model && e.model !== id ? e.model + " " : "") + (e.version || "default");
    const seg = el("span", { title: name + ": " + e.weight + "%" });
    seg.style.width = e.weight + "%";
    seg.style.background = COLORS[i % COLORS.length];
    bar.append(seg);
    const sw = el("span", { class: "swatch" });
    sw.style.background = COLORS[i % COLORS.length];
    legend.append(el("span", {}, sw, name + " " + e.weight + "%"));
  });
  const p = t.policy || {};
  const kind = [(p.routes || []).length > 1 ? "weighted split" : "single route",
    p.sticky ? "sticky on " + p.sticky : null,
    p.shadow ? `shadow ${p.shadow.version} (${p.shadow.percent}%)` : null,
    p.canary ? "canary " + p.canary.version : null].filter(Boolean).join(", ");
  const parts = [el("div", { class: "muted" }, "Traffic: ", el("b", {}, kind),
    t.stored ? " (stored in traffic.yaml)" : ""), bar, legend];
  if (t.canary) {
    const c = t.canary;
    parts.push(el("div", { class: "muted" }, `Canary ${c.version}: ${c.status}, weight ${c.weight}%`,
      c.failed_checks ? `, ${c.failed_checks} failed checks` : ""));
  }
  if (admin) {
    const ready = versions.filter((v) => v.state === "ready");
    const inputs = ready.map((v) => el("input", { type: "number", min: "0", max: "100", step: "1", value: String(Math.round(v.weight)), "data-version": v.version }));
    parts.push(el("div", { class: "bar weights" },
      ready.map((v, i) => el("label", {}, v.version + " ", inputs[i])),
      el("button", { onclick: () => act("PUT", `/models/${enc(id)}/traffic`, {
        routes: inputs.map((i) => ({ version: i.dataset.version, weight: Number(i.value) })),
      }) }, "Set weights"),
      t.can_roll_back ? el("button", { onclick: () => act("POST", `/models/${enc(id)}/traffic/rollback`) }, "Roll back") : null));
  }
  return el("div", { class: "traffic" }, parts);
}

async function act(method, path, json) {
  try {
    await apiJson(path, { method, json });
    toast(method + " " + path + ": done");
  } catch (e) {
    if (!(e instanceof Unauthorized)) toast(method + " " + path + ": " + e.message);
  }
  loadModels().catch(() => {});
}

// ---------------------------------------------------------------- live

const HISTORY = 60;
const series = {};
let previous = null;
let liveTimer = null;

const CHARTS = [
  ["rps", "requests/s", (v) => v.toFixed(1)],
  ["errors", "errors/s (4xx+5xx)", (v) => v.toFixed(2)],
  ["p50", "latency p50 (ms)", (v) => v.toFixed(1)],
  ["p99", "latency p99 (ms)", (v) => v.toFixed(1)],
  ["batch", "mean batch size", (v) => v.toFixed(2)],
  ["queue", "queued requests", (v) => v.toFixed(0)],
  ["tps", "tokens/s generated", (v) => v.toFixed(1)],
  ["ttft", "time to first token (ms)", (v) => v.toFixed(1)],
  ["cache", "cache hit ratio (%)", (v) => v.toFixed(0)],
];

function buildCharts() {
  if ($("charts").children.length) return;
  for (const [key, title] of CHARTS) {
    series[key] = [];
    $("charts").append(el("div", { class: "chart", id: "chart-" + key },
      el("div", { class: "chart-head" }, el("span", {}, title), el("b", { id: "value-" + key }, "–")),
      el("canvas", { id: "canvas-" + key, width: "300", height: "90", "data-points": "0" })));
  }
}

async function startLive() {
  buildCharts();
  if (!liveTimer) {
    liveTimer = setInterval(() => {
      if (current !== "live") { clearInterval(liveTimer); liveTimer = null; return; }
      pollStats().catch((e) => { if (!(e instanceof Unauthorized)) $("live-status").textContent = e.message; });
    }, 1000);
  }
  await pollStats();
}

// The `q` quantile of the observations between two cumulative histograms (linear within a bucket).
function quantile(now, before, q) {
  const total = now.count - (before ? before.count : 0);
  if (total <= 0) return null;
  const rank = q * total;
  let lower = 0, below = 0;
  for (let i = 0; i < now.buckets.length; i++) {
    const c = now.buckets[i].count - (before && before.buckets[i] ? before.buckets[i].count : 0);
    if (c >= rank) {
      const inBucket = c - below;
      return lower + (now.buckets[i].le - lower) * (inBucket > 0 ? (rank - below) / inBucket : 1);
    }
    lower = now.buckets[i].le;
    below = c;
  }
  return lower;
}

function delta(now, before, key) {
  return Math.max(0, now[key] - before[key]);
}

async function pollStats() {
  const s = await apiJson("/stats");
  if (previous) {
    const dt = Math.max(0.001, s.at - previous.at);
    const hits = delta(s, previous, "cache_hits"), misses = delta(s, previous, "cache_misses");
    const batches = s.batch_size.count - previous.batch_size.count;
    const ttfts = s.time_to_first_token_seconds.count - previous.time_to_first_token_seconds.count;
    const p50 = quantile(s.latency_seconds, previous.latency_seconds, 0.5);
    const p99 = quantile(s.latency_seconds, previous.latency_seconds, 0.99);
    const point = {
      rps: delta(s, previous, "requests") / dt,
      errors: (delta(s, previous, "client_errors") + delta(s, previous, "server_errors")) / dt,
      p50: p50 === null ? null : p50 * 1000,
      p99: p99 === null ? null : p99 * 1000,
      batch: batches > 0 ? (s.batch_size.sum - previous.batch_size.sum) / batches : null,
      queue: s.queue_size,
      tps: delta(s, previous, "tokens_output") / dt,
      ttft: ttfts > 0 ? 1000 * (s.time_to_first_token_seconds.sum - previous.time_to_first_token_seconds.sum) / ttfts : null,
      cache: hits + misses > 0 ? (100 * hits) / (hits + misses) : null,
    };
    for (const [key, , fmt] of CHARTS) {
      const list = series[key];
      list.push(point[key]);
      if (list.length > HISTORY) list.shift();
      const last = [...list].reverse().find((v) => v !== null);
      $("value-" + key).textContent = last === undefined ? "–" : fmt(last);
      draw($("canvas-" + key), list);
    }
  }
  previous = s;
  $("live-status").textContent = `${s.models_ready} ready · ${s.in_flight} in flight · ${s.requests} requests since start`;
  $("charts").dataset.requests = String(s.requests);
}

function draw(canvas, values) {
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 300, h = canvas.clientHeight || 90;
  if (canvas.width !== Math.round(w * ratio)) { canvas.width = Math.round(w * ratio); canvas.height = Math.round(h * ratio); }
  const g = canvas.getContext("2d");
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, w, h);
  const known = values.filter((v) => v !== null);
  const max = Math.max(1, ...known) * 1.15;
  g.strokeStyle = "#edf0f5";
  g.lineWidth = 1;
  for (let i = 1; i < 4; i++) { g.beginPath(); g.moveTo(0, (h * i) / 4); g.lineTo(w, (h * i) / 4); g.stroke(); }
  g.fillStyle = "#98a2b3";
  g.font = "10px sans-serif";
  g.fillText(max >= 10 ? max.toFixed(0) : max.toPrecision(2), 2, 10);
  const x = (i) => w - (values.length - 1 - i) * (w / (HISTORY - 1));
  const y = (v) => h - 2 - (v / max) * (h - 14);
  g.beginPath();
  let started = false;
  values.forEach((v, i) => {
    if (v === null) { started = false; return; }
    if (!started) { g.moveTo(x(i), y(v)); started = true; } else g.lineTo(x(i), y(v));
  });
  g.strokeStyle = "#1f6feb";
  g.lineWidth = 1.8;
  g.stroke();
  g.fillStyle = "#1f6feb";
  values.forEach((v, i) => {
    if (v !== null) { g.beginPath(); g.arc(x(i), y(v), 1.8, 0, 2 * Math.PI); g.fill(); }
  });
  canvas.dataset.points = String(known.length);
  canvas.dataset.nonzero = String(known.filter((v) => v > 0).length);
}

// ---------------------------------------------------------------- playground

let playgroundReady = false;

async function loadPlayground() {
  if (playgroundReady) return;
  const list = await apiJson("/models");
  const fill = (select, task) => {
    const ids = list.models.filter((m) => m.task === task).map((m) => m.id);
    select.replaceChildren(...ids.map((id) => el("option", { value: id }, id)));
  };
  fill($("chat-model"), "text-generation");
  fill($("embed-model"), "embedding");
  playgroundReady = true;
}

const history = [];
let controller = null;

async function sendChat(ev) {
  ev.preventDefault();
  const text = $("chat-input").value.trim();
  const model = $("chat-model").value;
  if (!text || !model) return;
  $("chat-input").value = "";
  history.push({ role: "user", content: text });
  $("chat-log").append(el("div", { class: "msg user" }, el("span", { class: "role" }, "you"), text));
  const out = el("span", { class: "text" });
  const msg = el("div", { class: "msg assistant", "data-done": "false" }, el("span", { class: "role" }, model), out);
  $("chat-log").append(msg);
  $("chat-send").disabled = true;
  $("chat-stop").disabled = false;
  $("chat-ttft").textContent = "…";
  $("chat-tps").textContent = "…";
  controller = new AbortController();
  const started = performance.now();
  let first = null, tokens = 0, reply = "", usage = null;
  try {
    const r = await api("/v1/chat/completions", {
      method: "POST",
      signal: controller.signal,
      json: {
        model, messages: history, stream: true, stream_options: { include_usage: true },
        max_tokens: Number($("chat-max").value) || 64, temperature: Number($("chat-temp").value),
      },
    });
    if (!r.ok) throw new Error(r.status + ": " + (await r.text()));
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data:")) continue;
          const data = line.slice(5).trim();
          if (data === "[DONE]") continue;
          const chunk = JSON.parse(data);
          if (chunk.usage) usage = chunk.usage;
          const piece = chunk.choices && chunk.choices[0] && chunk.choices[0].delta && chunk.choices[0].delta.content;
          if (piece) {
            if (first === null) {
              first = performance.now() - started;
              $("chat-ttft").textContent = first.toFixed(0) + " ms";
            }
            tokens++;
            reply += piece;
            out.textContent = reply;
            $("chat-log").scrollTop = $("chat-log").scrollHeight;
            const secs = (performance.now() - started - first) / 1000;
            if (secs > 0 && tokens > 1) $("chat-tps").textContent = ((tokens - 1) / secs).toFixed(1);
            $("chat-tokens").textContent = String(tokens);
          }
        }
      }
    }
    if (usage) {
      $("chat-tokens").textContent = String(usage.completion_tokens);
      const secs = (performance.now() - started - (first || 0)) / 1000;
      if (secs > 0 && usage.completion_tokens > 1) $("chat-tps").textContent = ((usage.completion_tokens - 1) / secs).toFixed(1);
    }
    history.push({ role: "assistant", content: reply });
  } catch (e) {
    if (e.name !== "AbortError" && !(e instanceof Unauthorized)) out.append(el("span", { class: "error" }, " [" + e.message + "]"));
    history.pop();
  } finally {
    msg.dataset.done = "true";
    $("chat-send").disabled = false;
    $("chat-stop").disabled = true;
    controller = null;
  }
}

async function runEmbeddings() {
  const input = $("embed-input").value.split("\n").map((s) => s.trim()).filter(Boolean);
  const model = $("embed-model").value;
  if (!input.length || !model) return;
  $("embed-status").textContent = "embedding…";
  const t0 = performance.now();
  try {
    const r = await apiJson("/v1/embeddings", { method: "POST", json: { model, input } });
    const vectors = r.data.sort((a, b) => a.index - b.index).map((d) => d.embedding);
    const n = vectors.length;
    const norm = vectors.map((v) => Math.sqrt(v.reduce((s, x) => s + x * x, 0)) || 1);
    const sim = vectors.map((a, i) => vectors.map((b, j) => a.reduce((s, x, k) => s + x * b[k], 0) / (norm[i] * norm[j])));
    heatmap($("heatmap"), input, sim);
    $("heatmap").dataset.size = String(n);
    $("embed-status").textContent = `${n} sentences, ${vectors[0].length} dimensions, ${(performance.now() - t0).toFixed(0)} ms`;
  } catch (e) {
    if (!(e instanceof Unauthorized)) $("embed-status").textContent = e.message;
  }
}

function heatColor(v) {
  // -1..1 → white..blue.
  const t = Math.max(0, Math.min(1, (v + 1) / 2)) ** 2;
  const mix = (a, b) => Math.round(a + (b - a) * t);
  return `rgb(${mix(255, 21)},${mix(255, 94)},${mix(255, 239)})`;
}

function heatmap(canvas, labels, sim) {
  const n = labels.length;
  const g = canvas.getContext("2d");
  const labelW = 220, cell = Math.max(24, Math.min(70, Math.floor((canvas.height - 20) / n)));
  g.clearRect(0, 0, canvas.width, canvas.height);
  g.font = "12px sans-serif";
  g.textBaseline = "middle";
  const short = (s) => (s.length > 30 ? s.slice(0, 29) + "…" : s);
  for (let i = 0; i < n; i++) {
    g.fillStyle = "#344054";
    g.textAlign = "right";
    g.fillText(short(labels[i]), labelW - 8, 10 + i * cell + cell / 2);
    for (let j = 0; j < n; j++) {
      const v = sim[i][j];
      g.fillStyle = heatColor(v);
      g.fillRect(labelW + j * cell, 10 + i * cell, cell - 2, cell - 2);
      g.fillStyle = v > 0.55 ? "#fff" : "#101828";
      g.textAlign = "center";
      g.fillText(v.toFixed(2), labelW + j * cell + cell / 2 - 1, 10 + i * cell + cell / 2);
    }
  }
  for (let j = 0; j < n; j++) {
    g.fillStyle = "#667085";
    g.textAlign = "center";
    g.fillText(String(j + 1), labelW + j * cell + cell / 2, 10 + n * cell + 8);
  }
}

// ---------------------------------------------------------------- API document

let apiDoc = null;

async function loadApi() {
  if (!apiDoc) apiDoc = await apiJson("/openapi.json");
  renderApi();
}

function resolve(schema) {
  if (schema && schema.$ref) {
    const name = schema.$ref.split("/").pop();
    return (apiDoc.components && apiDoc.components.schemas && apiDoc.components.schemas[name]) || schema;
  }
  return schema;
}

// A compact, readable type for a schema: `{field: type, ...}`, `[type]`, `a | b`.
function describe(schema, depth = 0) {
  if (!schema) return "any";
  if (schema.$ref) {
    const name = schema.$ref.split("/").pop();
    return depth > 1 ? name : name + " " + describe(resolve(schema), depth + 1);
  }
  if (schema.allOf) {
    // Merge the parts' fields into one object where they are objects.
    const merged = { type: "object", properties: {}, required: [] };
    for (const part of schema.allOf.map(resolve)) {
      Object.assign(merged.properties, part.properties || {});
      merged.required.push(...(part.required || []));
    }
    if (Object.keys(merged.properties).length) return describe(merged, depth);
    return schema.allOf.map((s) => describe(s, depth + 1)).join(" & ");
  }
  const alts = schema.oneOf || schema.anyOf;
  if (alts) return alts.map((s) => describe(s, depth + 1)).join(" | ");
  if (schema.enum) return schema.enum.map((v) => JSON.stringify(v)).join(" | ");
  const type = Array.isArray(schema.type) ? schema.type.join(" | ") : schema.type;
  if (type === "array" || (schema.items && !schema.properties)) return "[" + describe(schema.items, depth + 1) + "]";
  if (schema.properties) {
    if (depth > 3) return "{…}";
    const pad = "  ".repeat(depth + 1);
    const req = new Set(schema.required || []);
    const lines = Object.entries(schema.properties).map(([k, v]) => pad + k + (req.has(k) ? "" : "?") + ": " + describe(v, depth + 1));
    return "{\n" + lines.join(",\n") + "\n" + "  ".repeat(depth) + "}";
  }
  return type || "any";
}

function renderApi() {
  const doc = apiDoc;
  $("api-info").textContent = `${doc.info.title} ${doc.info.version} · OpenAPI ${doc.openapi}`;
  const filter = $("api-filter").value.toLowerCase();
  const byTag = new Map();
  for (const [path, item] of Object.entries(doc.paths || {})) {
    for (const [method, op] of Object.entries(item)) {
      if (!["get", "post", "put", "delete", "patch"].includes(method)) continue;
      const text = (method + " " + path + " " + (op.summary || "") + " " + (op.description || "")).toLowerCase();
      if (filter && !text.includes(filter)) continue;
      const tag = (op.tags && op.tags[0]) || "other";
      if (!byTag.has(tag)) byTag.set(tag, []);
      byTag.get(tag).push([method, path, op]);
    }
  }
  const out = [];
  for (const [tag, ops] of byTag) {
    out.push(el("h3", { class: "tag-title" }, tag));
    for (const [method, path, op] of ops) out.push(operation(method, path, op));
  }
  $("api-ops").replaceChildren(...out);
  $("api-ops").dataset.operations = String(out.length - byTag.size);
}

function operation(method, path, op) {
  const body = el("div", { class: "body" });
  if (op.description) body.append(el("p", {}, op.description));
  const params = op.parameters || [];
  if (params.length) {
    body.append(el("table", {}, el("tr", {}, ["Parameter", "In", "Type", "Description"].map((h) => el("th", {}, h))),
      params.map((p) => el("tr", {}, el("td", {}, el("code", {}, p.name + (p.required ? "" : "?"))), el("td", {}, p.in),
        el("td", {}, el("code", {}, describe(p.schema))), el("td", {}, p.description || "")))));
  }
  const rb = op.requestBody && op.requestBody.content;
  if (rb) {
    for (const [type, c] of Object.entries(rb)) {
      body.append(el("div", {}, el("b", {}, "Request body "), el("code", {}, type)), el("pre", { class: "schema" }, describe(c.schema)));
    }
  }
  for (const [status, r] of Object.entries(op.responses || {})) {
    const resp = resolve(r);
    const content = resp.content ? Object.entries(resp.content) : [];
    body.append(el("div", {}, el("b", {}, status + " "), resp.description || "", content.length ? " · " : "",
      content.map(([t]) => el("code", {}, t + " "))));
    const [, first] = content[0] || [];
    if (first && first.schema && /^2/.test(status)) body.append(el("pre", { class: "schema" }, describe(first.schema)));
  }
  return el("details", { class: "op" },
    el("summary", {}, el("span", { class: "method m-" + method }, method.toUpperCase()), el("span", { class: "path" }, path),
      el("span", { class: "muted" }, op.summary || "")),
    body);
}

// ---------------------------------------------------------------- start

document.addEventListener("DOMContentLoaded", () => {
  $("auth-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    token = $("token").value.trim() || null;
    $("token").value = "";
    $("auth").classList.add("hidden");
    document.body.dataset.auth = token ? "token" : "none";
    playgroundReady = false;
    load(current || "models");
  });
  $("models-refresh").addEventListener("click", () => load("models"));
  $("chat-form").addEventListener("submit", (ev) => { sendChat(ev).catch((e) => toast(e.message)); });
  $("chat-stop").addEventListener("click", () => controller && controller.abort());
  $("embed-run").addEventListener("click", () => { runEmbeddings(); });
  $("api-filter").addEventListener("input", () => apiDoc && renderApi());
  window.addEventListener("hashchange", show);
  show();
});
