//! The built-in closed-loop load generator (`anya bench`, and `examples/loadgen` for the
//! harness): the one client every server in `scripts/bench/` is measured with (anya, the
//! FastAPI + sentence-transformers peer, llama-cpp-python's and llama.cpp's servers, a bare axum
//! handler), so the client side costs the same for all of them; and what users point at any
//! anya or any OpenAI-compatible server.
//!
//! It reads what the server says about each request where it can (anya's `metadata.batch_size`,
//! `tokens_generated`, `queue_ms`; OpenAI `usage`), and it can read an OpenAI-style completion
//! stream (server-sent events) for time to first token and tokens per second, which oha and wrk
//! cannot: time to first token, inter-token latency (the gaps between streamed tokens, pooled),
//! tokens per second. A progress bar runs on a terminal.
//!
//! ```text
//! loadgen URL CONCURRENCY REQUESTS [BODY_JSON]          (the original form; still works)
//! loadgen URL -c 8 -d 10 --warmup 2                      8 clients for 10 s after a 2 s warm-up
//! loadgen URL -c 4 -n 40 --body '{"inputs": "$SENTENCES"}' --batch 32
//! loadgen URL -c 1 -n 4 --stream --expect-tokens 128 \
//!   --body '{"prompt": "$PROMPT", "max_tokens": 128, "temperature": 0, "stream": true}'
//! loadgen --print-prompt 0                               the generation prompt number 0
//! ```
//!
//! The body is a JSON template; these string values are replaced per request `i` (every input
//! is deterministic, so every server sees the same requests in the same order):
//! - `"$SENTENCE"`: sentence `i`, 8 to 40 English words from a fixed vocabulary;
//! - `"$SENTENCES"`: a list of `--batch` sentences (`i * batch ..`);
//! - `"$PROMPT"`: prompt `i`, `--prompt-words` words (default 64) of which each is one token for
//!   SmolLM2's tokenizer; its first word changes with `i`, so consecutive prompts share no prefix
//!   (llama-cpp-python reuses the previous prompt's KV cache on a shared prefix; anya does not).
//!
//! Without a body, each request embeds one sentence: `{"inputs": ["$SENTENCE"]}`.
//! Prints one JSON line: requests/s, inputs/s, latency percentiles, errors, and for generation
//! tokens generated, aggregate tokens/s and (streaming) time to first token and inter-token
//! latency.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    #[error("{0}")]
    Usage(String),
    #[error("the body is not JSON: {0}")]
    Body(serde_json::Error),
    #[error("http client: {0}")]
    Client(String),
}

const WORDS: &[&str] = &[
    "the", "model", "serves", "quick", "brown", "fox", "batch", "queue", "token", "vector",
    "server", "request", "latency", "river", "mountain", "city", "music", "garden", "window",
    "engine", "cloud", "signal", "paper", "light", "story", "ocean", "market", "bridge",
];

/// A deterministic word stream for seed `i` (splitmix-style mixing).
fn words(i: usize) -> impl FnMut() -> &'static str {
    let mut x = (i as u64)
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    move || {
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51afd7ed558ccd);
        x ^= x >> 33;
        WORDS[(x % WORDS.len() as u64) as usize]
    }
}

/// A deterministic pseudo-random sentence of 8 to 40 words.
fn sentence(i: usize) -> String {
    let mut x = (i as u64)
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = || {
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51afd7ed558ccd);
        x ^= x >> 33;
        x
    };
    let n = 8 + (next() % 33) as usize;
    (0..n)
        .map(|_| WORDS[(next() % WORDS.len() as u64) as usize])
        .collect::<Vec<_>>()
        .join(" ")
}

/// Prompt `i`: `n` words, each with a leading space (" the", " model", …: one SmolLM2 token
/// each, so `n` words are `n` prompt tokens). The first word is `WORDS[i % len]`, so two
/// consecutive prompts differ from their first token on. Greedy decoding of these prompts runs
/// to the token budget without an end-of-sequence token (the harness checks it).
pub fn prompt(i: usize, n: usize) -> String {
    let mut next = words(i);
    let mut out = String::new();
    for k in 0..n {
        out.push(' ');
        out.push_str(if k == 0 {
            WORDS[i % WORDS.len()]
        } else {
            next()
        });
    }
    out
}

#[derive(clap::Args, Debug, Clone, Default)]
pub struct Args {
    /// URL to POST to.
    pub url: Option<String>,
    /// Clients (the original positional form; same as -c).
    pub concurrency_pos: Option<usize>,
    /// Requests to measure (the original positional form; same as -n).
    pub requests_pos: Option<usize>,
    /// Body template (the original positional form; same as --body).
    pub body_pos: Option<String>,
    /// Clients, each with one request in flight at a time.
    #[arg(short = 'c', long)]
    pub concurrency: Option<usize>,
    /// Requests to measure (after the warm-up).
    #[arg(short = 'n', long)]
    pub requests: Option<usize>,
    /// Or: measure for this many seconds (requests started before the end are waited for).
    #[arg(short = 'd', long)]
    pub duration: Option<f64>,
    /// Seconds of load at the same concurrency before measuring (not counted).
    #[arg(long, default_value_t = 0.0)]
    pub warmup: f64,
    /// Or: requests before measuring (not counted).
    #[arg(long, default_value_t = 0)]
    pub warmup_requests: usize,
    /// JSON body template (see the module docs for `$SENTENCE`, `$SENTENCES`, `$PROMPT`).
    #[arg(long)]
    pub body: Option<String>,
    /// Sentences in `$SENTENCES`.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Words (= SmolLM2 tokens) in `$PROMPT`.
    #[arg(long, default_value_t = 64)]
    pub prompt_words: usize,
    /// Read the response as an OpenAI completion stream (server-sent events).
    #[arg(long)]
    pub stream: bool,
    /// Count responses that generated a different number of tokens as `short`.
    #[arg(long)]
    pub expect_tokens: Option<u64>,
    /// First request index (inputs are a function of the index).
    #[arg(long, default_value_t = 0)]
    pub seed: usize,
    /// Extra request header `NAME: VALUE` (repeatable), e.g. `authorization: Bearer …`.
    #[arg(long = "header")]
    pub headers: Vec<String>,
    /// Client runtime threads (1: a single-threaded runtime, leaving the cores to the server).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Per-request timeout, seconds.
    #[arg(long, default_value_t = 300.0)]
    pub timeout: f64,
    /// A label copied into the output.
    #[arg(long)]
    pub label: Option<String>,
    /// Print prompt number N (as a JSON string) and exit.
    #[arg(long, value_name = "N")]
    pub print_prompt: Option<usize>,
    /// No progress bar (it is drawn on standard error, only when that is a terminal).
    #[arg(long)]
    pub quiet: bool,
    /// A new connection for every request (no keep-alive reuse): for servers that close a
    /// connection after a streamed answer without saying so (llama.cpp's `llama-server`), where
    /// reusing it would lose the next request.
    #[arg(long)]
    pub fresh_connections: bool,
}

/// What one request gave back.
#[derive(Default)]
struct Sample {
    latency: Duration,
    status: u16,
    ttft: Option<Duration>,
    /// Gaps between consecutive streamed tokens (ms).
    itl: Vec<f64>,
    tokens: Option<u64>,
    prompt_tokens: Option<u64>,
    queue_ms: Option<f64>,
    batch_size: Option<u64>,
    /// anya's response cache answered (all or some of) the inputs.
    cache_hit: bool,
    error: Option<String>,
}

fn fill(template: &Value, i: usize, args: &Args) -> Value {
    match template {
        Value::String(s) if s == "$SENTENCE" => Value::String(sentence(i)),
        Value::String(s) if s == "$SENTENCES" => Value::Array(
            (0..args.batch)
                .map(|k| Value::String(sentence(i * args.batch + k)))
                .collect(),
        ),
        Value::String(s) if s == "$PROMPT" => Value::String(prompt(i, args.prompt_words)),
        Value::Array(a) => Value::Array(a.iter().map(|v| fill(v, i, args)).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| (k.clone(), fill(v, i, args)))
                .collect(),
        ),
        v => v.clone(),
    }
}

/// Inputs in one request (for inputs/s): the length of `inputs` (or `prompt`) when it is a list.
fn inputs_in(body: &Value) -> usize {
    match body.get("inputs").or_else(|| body.get("prompt")) {
        Some(Value::Array(a)) => a.len(),
        _ => 1,
    }
}

/// An error with its causes (reqwest's own message leaves them out).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

async fn one(client: &reqwest::Client, url: &str, body: &Value, stream: bool) -> Sample {
    let t = Instant::now();
    let mut s = Sample::default();
    let mut r = match client.post(url).json(body).send().await {
        Ok(r) => r,
        Err(e) => {
            s.latency = t.elapsed();
            s.error = Some(format!("send: {}", chain(&e)));
            return s;
        }
    };
    s.status = r.status().as_u16();
    s.cache_hit = r
        .headers()
        .get("x-cache")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"hit"));
    if stream && s.status == 200 {
        // OpenAI completion stream: `data: {json}` events, one per generated token (llama-cpp-
        // python sends one per token, then one with `finish_reason` and empty text), `[DONE]`.
        let mut buf: Vec<u8> = Vec::new();
        let mut tokens = 0u64;
        let mut usage: Option<u64> = None;
        let mut last_token: Option<Duration> = None;
        loop {
            match r.chunk().await {
                Ok(Some(bytes)) => {
                    buf.extend_from_slice(&bytes);
                    while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
                        let line: Vec<u8> = buf.drain(..=pos).collect();
                        let line = String::from_utf8_lossy(&line);
                        let Some(data) = line.trim().strip_prefix("data:") else {
                            continue;
                        };
                        let data = data.trim();
                        if data == "[DONE]" || data.is_empty() {
                            continue;
                        }
                        let Ok(v) = serde_json::from_str::<Value>(data) else {
                            continue;
                        };
                        if let Some(e) = v.get("error") {
                            s.error = Some(e.to_string());
                        }
                        if let Some(u) = v["usage"]["completion_tokens"].as_u64() {
                            usage = Some(u);
                        }
                        if let Some(u) = v["usage"]["prompt_tokens"].as_u64() {
                            s.prompt_tokens = Some(u);
                        }
                        let choice = &v["choices"][0];
                        if choice.is_object() && choice["finish_reason"].is_null() {
                            tokens += 1;
                            let now = t.elapsed();
                            match last_token {
                                Some(prev) => s.itl.push((now - prev).as_secs_f64() * 1e3),
                                None => s.ttft = Some(now),
                            }
                            last_token = Some(now);
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    s.error = Some(format!("stream: {}", chain(&e)));
                    break;
                }
            }
        }
        s.tokens = Some(usage.unwrap_or(tokens));
        s.latency = t.elapsed();
        return s;
    }
    let text = r.text().await.unwrap_or_default();
    s.latency = t.elapsed();
    let v: Value = serde_json::from_str(&text).unwrap_or_default();
    if s.status != 200 {
        s.error = Some(text.chars().take(300).collect());
        return s;
    }
    let md = &v["metadata"];
    s.cache_hit |= md["cached"].as_bool() == Some(true) || md["cache_hits"].as_u64() > Some(0);
    s.batch_size = md["batch_size"].as_u64();
    s.queue_ms = md["queue_ms"].as_f64();
    s.tokens = md["tokens_generated"]
        .as_u64()
        .or_else(|| v["usage"]["completion_tokens"].as_u64());
    s.prompt_tokens = md["tokens_processed"]
        .as_u64()
        .or_else(|| v["usage"]["prompt_tokens"].as_u64());
    s
}

/// What every client shares.
#[derive(Clone)]
struct Load {
    client: reqwest::Client,
    args: Arc<Args>,
    template: Arc<Value>,
    url: Arc<str>,
    concurrency: usize,
    /// The index of the next request (inputs are a function of it).
    next: Arc<AtomicUsize>,
    /// Requests done in the measured phase (for the progress bar).
    done: Arc<AtomicUsize>,
}

/// Run the clients until `total` requests were sent or `until` passed; returns each request's
/// sample with its number of inputs, and the seconds the phase took.
async fn phase(
    load: &Load,
    total: Option<usize>,
    until: Option<Instant>,
) -> (Vec<(Sample, usize)>, f64) {
    let started = Instant::now();
    let first = load.next.load(Ordering::Relaxed);
    let mut tasks = Vec::new();
    for _ in 0..load.concurrency {
        let Load {
            client,
            args,
            template,
            url,
            next,
            done,
            ..
        } = load.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                if until.is_some_and(|u| Instant::now() >= u) {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if total.is_some_and(|n| i - first >= n) {
                    break;
                }
                let body = fill(&template, i, &args);
                let n_inputs = inputs_in(&body);
                out.push((one(&client, &url, &body, args.stream).await, n_inputs));
                done.fetch_add(1, Ordering::Relaxed);
            }
            out
        }));
    }
    let mut samples = Vec::new();
    for t in tasks {
        samples.extend(t.await.unwrap_or_default());
    }
    (samples, started.elapsed().as_secs_f64())
}

fn pct(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    // nearest rank
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

fn summary(mut v: Vec<f64>) -> Value {
    if v.is_empty() {
        return Value::Null;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    json!({"p50": pct(&v, 0.50), "p90": pct(&v, 0.90), "p99": pct(&v, 0.99),
           "mean": mean, "min": v[0], "max": v[v.len() - 1], "n": v.len()})
}

/// Run the load `args` describes (after `--print-prompt`, which callers handle) on a runtime of
/// its own (`--threads`), and answer the summary.
pub fn run_blocking(args: Args) -> Result<Value, LoadgenError> {
    let threads = args.threads.max(1);
    let rt = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
    .map_err(|e| LoadgenError::Client(e.to_string()))?;
    rt.block_on(run(args))
}

/// Merge the original positional form into the flags and check that a load is described.
pub fn normalize(mut args: Args) -> Result<(String, Args), LoadgenError> {
    let Some(url) = args.url.clone() else {
        return Err(LoadgenError::Usage(
            "usage: loadgen URL CONCURRENCY REQUESTS [BODY_JSON]  (or see --help)".into(),
        ));
    };
    args.concurrency = args.concurrency.or(args.concurrency_pos);
    args.requests = args.requests.or(args.requests_pos);
    args.body = args.body.take().or(args.body_pos.take());
    if args.requests.is_none() && args.duration.is_none() {
        return Err(LoadgenError::Usage(
            "give a number of requests (-n) or a duration (-d)".into(),
        ));
    }
    Ok((url, args))
}

/// A progress bar on standard error (hidden when that is not a terminal, or with `--quiet`):
/// requests done against the total, or seconds against the duration.
fn progress(args: &Args, what: &str) -> indicatif::ProgressBar {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    let bar = match (args.requests, args.duration) {
        (Some(n), _) => ProgressBar::new(n as u64).with_style(
            ProgressStyle::with_template(
                "{prefix} [{bar:30}] {pos}/{len} requests {elapsed_precise} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        ),
        (None, d) => ProgressBar::new((d.unwrap_or(0.0) * 10.0) as u64).with_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {elapsed_precise} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        ),
    };
    if args.quiet {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_prefix(what.to_string());
    bar
}

/// Run the load and answer its summary (one JSON object).
pub async fn run(args: Args) -> Result<Value, LoadgenError> {
    let (url, args) = normalize(args)?;
    let concurrency = args.concurrency.unwrap_or(1).max(1);
    let template: Value = match &args.body {
        Some(b) => serde_json::from_str(b).map_err(LoadgenError::Body)?,
        None => json!({"inputs": ["$SENTENCE"]}),
    };
    let client = client(&args, concurrency)?;
    let next = Arc::new(AtomicUsize::new(args.seed));
    let load = Load {
        client,
        args: Arc::new(args),
        template: Arc::new(template),
        url: url.clone().into(),
        concurrency,
        next,
        done: Arc::new(AtomicUsize::new(0)),
    };
    let args = load.args.clone();

    // Warm-up: the same load, not counted.
    let warmup_errors = warm_up(&load).await;
    let (samples, elapsed) = measure(&load).await;
    Ok(report(
        &args,
        &url,
        concurrency,
        &samples,
        elapsed,
        warmup_errors,
    ))
}

/// The HTTP client of a load: `--header`s sent with every request, a connection per worker
/// kept alive (none with `--fresh-connections`), and the request timeout.
fn client(args: &Args, concurrency: usize) -> Result<reqwest::Client, LoadgenError> {
    let mut default_headers = reqwest::header::HeaderMap::new();
    for h in &args.headers {
        let bad = || LoadgenError::Usage(format!("--header {h:?}: give NAME: VALUE"));
        let (k, v) = h.split_once(':').ok_or_else(bad)?;
        default_headers.insert(
            reqwest::header::HeaderName::from_bytes(k.trim().as_bytes()).map_err(|_| bad())?,
            reqwest::header::HeaderValue::from_str(v.trim()).map_err(|_| bad())?,
        );
    }
    reqwest::Client::builder()
        .default_headers(default_headers)
        .pool_max_idle_per_host(if args.fresh_connections {
            0
        } else {
            concurrency
        })
        // Below the servers' keep-alive (uvicorn's is 5 s): a connection the server is about to
        // close is not reused, so no request is lost to that race.
        .pool_idle_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .timeout(Duration::from_secs_f64(args.timeout.max(0.001)))
        .build()
        .map_err(|e| LoadgenError::Client(e.to_string()))
}

/// The warm-up phase (`--warmup` seconds and / or `--warmup-requests`): the same load, not
/// counted. Answers how many of its requests failed.
async fn warm_up(load: &Load) -> usize {
    let args = &load.args;
    if args.warmup > 0.0 || args.warmup_requests > 0 {
        let until =
            (args.warmup > 0.0).then(|| Instant::now() + Duration::from_secs_f64(args.warmup));
        let total = (args.warmup_requests > 0).then_some(args.warmup_requests);
        let (w, _) = phase(load, total, until).await;
        return w
            .iter()
            .filter(|(s, _)| s.status != 200 || s.error.is_some())
            .count();
    }
    0
}

/// The measured phase, with a progress bar: its samples (each with its input count) and the
/// seconds it took.
async fn measure(load: &Load) -> (Vec<(Sample, usize)>, f64) {
    let (args, concurrency) = (&load.args, load.concurrency);
    let until = args
        .duration
        .map(|d| Instant::now() + Duration::from_secs_f64(d));
    let bar = progress(args, &format!("c={concurrency}"));
    let ticker = {
        let (bar, done, started) = (bar.clone(), load.done.clone(), Instant::now());
        let by_time = args.requests.is_none();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let n = done.load(Ordering::Relaxed) as u64;
                if by_time {
                    bar.set_position((started.elapsed().as_secs_f64() * 10.0) as u64);
                    bar.set_message(format!("{n} requests"));
                } else {
                    bar.set_position(n);
                }
            }
        })
    };
    let measured = phase(load, args.requests, until).await;
    ticker.abort();
    bar.finish_and_clear();
    measured
}

/// The summary of the measured samples.
fn report(
    args: &Args,
    url: &str,
    concurrency: usize,
    samples: &[(Sample, usize)],
    elapsed: f64,
    warmup_errors: usize,
) -> Value {
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    let mut first_error: Option<String> = None;
    let mut batches: BTreeMap<u64, usize> = BTreeMap::new();
    let (mut lat, mut ttft, mut queue, mut decode) = (vec![], vec![], vec![], vec![]);
    let mut itl: Vec<f64> = vec![];
    let (mut ok, mut inputs, mut tokens, mut short) = (0usize, 0usize, 0u64, 0usize);
    let mut cache_hits = 0usize;
    let mut prompt_tokens: Vec<f64> = vec![];
    for (s, n_inputs) in samples {
        if s.status != 200 || s.error.is_some() {
            *errors.entry(s.status.to_string()).or_default() += 1;
            if first_error.is_none() {
                first_error = s.error.clone();
            }
            continue;
        }
        ok += 1;
        inputs += n_inputs;
        cache_hits += usize::from(s.cache_hit);
        lat.push(s.latency.as_secs_f64() * 1e3);
        if let Some(b) = s.batch_size {
            *batches.entry(b).or_default() += 1;
        }
        if let Some(q) = s.queue_ms {
            queue.push(q);
        }
        if let Some(p) = s.prompt_tokens {
            prompt_tokens.push(p as f64);
        }
        itl.extend_from_slice(&s.itl);
        if let Some(t) = s.tokens {
            tokens += t;
            if args.expect_tokens.is_some_and(|e| e != t) {
                short += 1;
            }
            if let Some(f) = s.ttft {
                ttft.push(f.as_secs_f64() * 1e3);
                let rest = (s.latency - f).as_secs_f64();
                if t > 1 && rest > 0.0 {
                    decode.push((t - 1) as f64 / rest);
                }
            }
        }
    }
    let batched: usize = batches.values().sum();
    let mean_batch = (batched > 0).then(|| {
        batches
            .iter()
            .map(|(k, v)| *k as f64 * *v as f64)
            .sum::<f64>()
            / batched as f64
    });
    let latency = summary(lat);
    json!({
            "label": args.label, "url": url, "stream": args.stream,
            "concurrency": concurrency, "requests": samples.len(), "ok": ok,
            "errors": errors, "first_error": first_error, "warmup_errors": warmup_errors,
            "short": short, "cache_hits": cache_hits, "seconds": elapsed,
            "rps": ok as f64 / elapsed, "inputs_per_s": inputs as f64 / elapsed,
            // the original field names, kept for existing users
            "p50_ms": latency["p50"], "p90_ms": latency["p90"], "p99_ms": latency["p99"],
            "latency_ms": latency,
            "ttft_ms": summary(ttft),
            "itl_ms": summary(itl),
            "tokens_generated": tokens,
            "tokens_per_s": tokens as f64 / elapsed,
            "decode_tokens_per_s_per_request": summary(decode),
            "prompt_tokens": summary(prompt_tokens),
            "queue_ms": summary(queue),
            "mean_batch_size": mean_batch, "batch_sizes": batches,
    })
}

/// The summary as a few lines for people (`anya bench` prints it before the JSON).
pub fn render(v: &Value) -> String {
    let ms = |x: &Value| x.as_f64().map_or("-".to_string(), |x| format!("{x:.1} ms"));
    let mut out = format!(
        "{} requests ({} ok) at concurrency {} in {:.1} s: {:.1} req/s, {:.1} inputs/s\n",
        v["requests"],
        v["ok"],
        v["concurrency"],
        v["seconds"].as_f64().unwrap_or(0.0),
        v["rps"].as_f64().unwrap_or(0.0),
        v["inputs_per_s"].as_f64().unwrap_or(0.0),
    );
    out.push_str(&format!(
        "latency p50 {} p99 {}\n",
        ms(&v["latency_ms"]["p50"]),
        ms(&v["latency_ms"]["p99"])
    ));
    if v["tokens_generated"].as_u64().unwrap_or(0) > 0 {
        out.push_str(&format!(
            "{} tokens, {:.1} tokens/s\n",
            v["tokens_generated"],
            v["tokens_per_s"].as_f64().unwrap_or(0.0)
        ));
    }
    if !v["ttft_ms"].is_null() {
        out.push_str(&format!(
            "time to first token p50 {} p99 {}; inter-token latency p50 {} p99 {}\n",
            ms(&v["ttft_ms"]["p50"]),
            ms(&v["ttft_ms"]["p99"]),
            ms(&v["itl_ms"]["p50"]),
            ms(&v["itl_ms"]["p99"])
        ));
    }
    if let Some(errors) = v["errors"].as_object().filter(|e| !e.is_empty()) {
        out.push_str(&format!(
            "errors: {} (first: {})\n",
            Value::Object(errors.clone()),
            v["first_error"]
        ));
    }
    out
}
