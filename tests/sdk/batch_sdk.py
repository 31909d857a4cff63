"""The official `openai` SDK runs batches against a running anya (strict response validation,
no retries): files.create -> batches.create -> poll batches.retrieve -> files.content, on the
embedding and the chat model; every output must equal the same request made directly.

  python batch_sdk.py BASE_URL [READ_URL] [--embeddings-only]

With READ_URL (another replica of a fleet sharing its jobs through Redis) the batches are
created on BASE_URL and polled, listed and read back on READ_URL.

Run by tests/jobs.rs; exits non-zero naming the first check that failed.
"""

import io
import json
import sys
import time

import openai

CHAT = "smollm2-135m-instruct"
EMBED = "all-minilm-l6-v2"


def client(base):
    return openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0,
                         _strict_response_validation=True, timeout=120)


def check(cond, what):
    if not cond:
        print("FAILED:", what)
        sys.exit(1)


def run_batch(c, endpoint, bodies, r=None):
    r = r or c
    lines = [json.dumps({"custom_id": f"req-{i}", "method": "POST", "url": endpoint, "body": b})
             for i, b in enumerate(bodies)]
    f = c.files.create(file=("batch.jsonl", io.BytesIO("\n".join(lines).encode())), purpose="batch")
    check(f.purpose == "batch" and f.bytes > 0, f"files.create: {f}")
    check(r.files.retrieve(f.id).id == f.id, "files.retrieve")
    back = r.files.content(f.id).read().decode()
    check(back == "\n".join(lines), "the uploaded file's content comes back unchanged")
    b = c.batches.create(input_file_id=f.id, endpoint=endpoint, completion_window="24h",
                         metadata={"test": "sdk"})
    check(b.status in ("validating", "in_progress", "completed"), f"batches.create: {b.status}")
    check(b.request_counts is not None and b.request_counts.total == len(bodies),
          f"request_counts.total: {b.request_counts}")
    deadline = time.time() + 600
    while b.status not in ("completed", "failed", "cancelled"):
        check(time.time() < deadline, f"batch {b.id} still {b.status}")
        time.sleep(0.5)
        b = r.batches.retrieve(b.id)
    check(b.status == "completed", f"batch ended {b.status}: {b.errors}")
    check(b.request_counts.completed == len(bodies) and b.request_counts.failed == 0,
          f"counts {b.request_counts}")
    check(b.metadata == {"test": "sdk"}, f"metadata {b.metadata}")
    check(b.error_file_id is None, "no error file when nothing failed")
    ids = [x.id for x in r.batches.list(limit=100).data]
    check(b.id in ids, "batches.list shows the batch")
    out = r.files.content(b.output_file_id).read().decode().splitlines()
    check(len(out) == len(bodies), f"{len(out)} output lines for {len(bodies)} requests")
    by_id = {}
    for line in out:
        o = json.loads(line)
        check(o["response"]["status_code"] == 200, f"line status: {o}")
        check(o["error"] is None, "error is null on success")
        by_id[o["custom_id"]] = o["response"]["body"]
    check(sorted(by_id) == sorted(f"req-{i}" for i in range(len(bodies))), "every custom_id once")
    meta = r.files.retrieve(b.output_file_id)
    check(meta.purpose == "batch_output" and meta.bytes == sum(len(l.encode()) + 1 for l in out),
          f"output file object {meta}")
    return [by_id[f"req-{i}"] for i in range(len(bodies))]


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    embeddings_only = "--embeddings-only" in sys.argv
    c = client(args[0])
    r = client(args[1]) if len(args) > 1 else c

    # Embeddings: the batch's vectors equal the direct request's.
    texts = [f"Sentence number {i} is about {w}." for i, w in
             enumerate(["cats", "the sea", "taxes", "music", "rain", "trains", "bread", "chess"] * 3)]
    bodies = [{"model": EMBED, "input": t} for t in texts[:12]] + \
             [{"model": EMBED, "input": texts[12:16]}, {"model": EMBED, "input": texts[16:], "dimensions": 64}]
    got = run_batch(c, "/v1/embeddings", bodies, r)
    for body, batch in zip(bodies, got):
        kwargs = {k: v for k, v in body.items() if k not in ("model", "input")}
        direct = c.embeddings.create(model=EMBED, input=body["input"], encoding_format="float", **kwargs)
        check(len(batch["data"]) == len(direct.data), "as many vectors as the direct request")
        for a, d in zip(batch["data"], direct.data):
            check(len(a["embedding"]) == len(d.embedding), "same dimensions")
            diff = max(abs(x - y) for x, y in zip(a["embedding"], d.embedding))
            check(diff <= 1e-5, f"vector differs from the direct answer by {diff}")
        check(batch["usage"]["prompt_tokens"] == direct.usage.prompt_tokens, "same token count")
    print(f"embeddings batch: {len(bodies)} requests equal the direct answers")
    if embeddings_only:
        print("checks passed")
        return

    # Chat: greedy completions equal the direct ones.
    prompts = ["The capital of France is", "Name three colours.", "What is 2 + 2?",
               "Write a haiku about rain."]
    bodies = [{"model": CHAT, "messages": [{"role": "user", "content": p}],
               "temperature": 0, "max_tokens": 24} for p in prompts]
    got = run_batch(c, "/v1/chat/completions", bodies)
    for body, batch in zip(bodies, got):
        direct = c.chat.completions.create(**body)
        check(batch["choices"][0]["message"]["content"] == direct.choices[0].message.content,
              f"chat differs: {batch['choices'][0]['message']['content']!r} vs "
              f"{direct.choices[0].message.content!r}")
        check(batch["usage"]["completion_tokens"] == direct.usage.completion_tokens, "same usage")
    print(f"chat batch: {len(bodies)} requests equal the direct answers")

    # A bad line is refused whole, naming it; a line whose request fails lands in the error file.
    bad = "\n".join([json.dumps({"custom_id": "a", "method": "POST", "url": "/v1/embeddings",
                                 "body": {"model": EMBED, "input": "x"}}),
                     json.dumps({"custom_id": "b", "method": "GET", "url": "/v1/embeddings",
                                 "body": {"model": EMBED, "input": "x"}})])
    f = c.files.create(file=("bad.jsonl", io.BytesIO(bad.encode())), purpose="batch")
    try:
        c.batches.create(input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h")
        check(False, "a batch with a bad line was accepted")
    except openai.BadRequestError as e:
        check("line 2" in str(e), f"the error names the line: {e}")
    mixed = "\n".join([json.dumps({"custom_id": "ok", "method": "POST", "url": "/v1/embeddings",
                                   "body": {"model": EMBED, "input": "fine"}}),
                       json.dumps({"custom_id": "missing", "method": "POST", "url": "/v1/embeddings",
                                   "body": {"model": "no-such-model", "input": "x"}})])
    f = c.files.create(file=("mixed.jsonl", io.BytesIO(mixed.encode())), purpose="batch")
    b = c.batches.create(input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h")
    while b.status not in ("completed", "failed", "cancelled"):
        time.sleep(0.3)
        b = c.batches.retrieve(b.id)
    check(b.status == "completed" and b.request_counts.failed == 1 and b.request_counts.completed == 1,
          f"mixed batch {b.status} {b.request_counts}")
    err = [json.loads(l) for l in c.files.content(b.error_file_id).read().decode().splitlines()]
    check(len(err) == 1 and err[0]["custom_id"] == "missing"
          and err[0]["response"]["status_code"] == 404
          and err[0]["response"]["body"]["error"]["code"] == "model_not_found", f"error file {err}")
    try:
        c.batches.retrieve("batch_0000")
        check(False, "an unknown batch was found")
    except openai.NotFoundError:
        pass
    print("checks passed")


if __name__ == "__main__":
    main()
