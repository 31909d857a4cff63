"""The official `openai` SDK against a running anya (strict response validation, no retries).

  python openai_sdk.py BASE_URL [AUTH_BASE_URL GOOD_TOKEN NO_MODEL_TOKEN]

Run by tests/openai.rs; exits non-zero naming the first check that failed.
"""

import base64
import json
import struct
import sys
import urllib.request

import openai

CHAT = "smollm2-135m-instruct"
EMBED = "all-minilm-l6-v2"


def client(base, key="none", strict=True):
    return openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0,
                         _strict_response_validation=strict, timeout=120)


def native_vectors(base, texts):
    req = urllib.request.Request(
        base + f"/models/{EMBED}/predict",
        data=json.dumps({"inputs": texts}).encode(),
        headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.load(r)["outputs"]


def close(a, b, tol=1e-6):
    return len(a) == len(b) and all(abs(x - y) <= tol for x, y in zip(a, b))


def expect(exc, fn, param=None):
    try:
        fn()
    except exc as e:
        assert e.type, f"{exc.__name__}: no type"
        if param is not None:
            assert e.param == param, f"{exc.__name__}: param {e.param!r} != {param!r}"
        assert e.code, f"{exc.__name__}: no code"
        return e
    raise AssertionError(f"expected {exc.__name__}")


def main():
    base = sys.argv[1]
    c = client(base)
    checks = 0

    ids = {m.id for m in c.models.list().data}
    assert {CHAT, EMBED} <= ids, ids
    checks += 1

    msgs = [{"role": "user", "content": "Name three colours."}]
    full = c.chat.completions.create(model=CHAT, messages=msgs, temperature=0, max_tokens=24)
    text = full.choices[0].message.content
    assert full.object == "chat.completion" and text, full
    assert full.choices[0].finish_reason in ("stop", "length")
    assert full.usage.completion_tokens > 0 and full.usage.prompt_tokens > 0
    checks += 1

    chunks = list(c.chat.completions.create(model=CHAT, messages=msgs, temperature=0, max_tokens=24,
                                            stream=True, stream_options={"include_usage": True}))
    assert len({k.id for k in chunks}) == 1 and len({k.created for k in chunks}) == 1
    content = [k for k in chunks if k.choices]
    assert content[0].choices[0].delta.role == "assistant"
    streamed = "".join(k.choices[0].delta.content or "" for k in content)
    assert streamed == text, (streamed, text)
    assert content[-1].choices[0].finish_reason == full.choices[0].finish_reason
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == full.usage.completion_tokens, (last.usage, full.usage)
    assert last.usage.prompt_tokens == full.usage.prompt_tokens, (last.usage, full.usage)
    checks += 1

    two = c.chat.completions.create(model=CHAT, messages=msgs, temperature=0, max_tokens=8, n=2,
                                    stop=["\n\n"], seed=3, logprobs=True, top_logprobs=2)
    assert [ch.index for ch in two.choices] == [0, 1]
    lp = two.choices[0].logprobs.content
    assert lp and len(lp[0].top_logprobs) == 2 and lp[0].logprob <= 0
    checks += 1

    comp = c.completions.create(model=CHAT, prompt="The capital of France is", temperature=0,
                                max_tokens=8)
    assert comp.object == "text_completion" and comp.choices[0].text, comp
    checks += 1

    texts = ["The quick brown fox", "A second sentence"]
    native = native_vectors(base, texts)
    # Without encoding_format the SDK asks for base64 and decodes it after parsing; its strict
    # mode validates before decoding (a string is not a list of floats, with any server), so
    # this one call uses the SDK's default, non-strict client.
    b64 = client(base, strict=False).embeddings.create(model=EMBED, input=texts)
    assert all(close(d.embedding, v) for d, v in zip(b64.data, native))
    flt = c.embeddings.create(model=EMBED, input=texts, encoding_format="float")
    assert all(close(d.embedding, v) for d, v in zip(flt.data, native))
    assert flt.usage.prompt_tokens > 0
    short = c.embeddings.create(model=EMBED, input=texts[0], dimensions=64, encoding_format="float")
    assert len(short.data[0].embedding) == 64
    assert abs(sum(x * x for x in short.data[0].embedding) - 1) < 1e-4
    checks += 1

    expect(openai.BadRequestError,
           lambda: c.chat.completions.create(model=CHAT, messages=msgs, temperature=9),
           param="temperature")
    expect(openai.BadRequestError,
           lambda: c.chat.completions.create(model=CHAT, messages=msgs,
                                             tools=[{"type": "function", "function": {"name": "f"}}]),
           param="tools")
    expect(openai.BadRequestError,
           lambda: c.embeddings.create(model=EMBED, input="x", dimensions=4096), param="dimensions")
    expect(openai.NotFoundError,
           lambda: c.chat.completions.create(model="no-such-model", messages=msgs))
    checks += 1

    if len(sys.argv) > 2:
        auth_base, good, no_model = sys.argv[2], sys.argv[3], sys.argv[4]
        expect(openai.AuthenticationError,
               lambda: client(auth_base, "not-a-jwt").embeddings.create(model=EMBED, input="x", encoding_format="float"))
        expect(openai.PermissionDeniedError,
               lambda: client(auth_base, no_model).embeddings.create(model=EMBED, input="x", encoding_format="float"))
        ok = client(auth_base, good)
        ok.embeddings.create(model=EMBED, input="x", encoding_format="float")
        e = expect(openai.RateLimitError,
                   lambda: [ok.embeddings.create(model=EMBED, input="x", encoding_format="float") for _ in range(5)])
        assert e.response.headers.get("retry-after"), "no Retry-After"
        checks += 1

    print(f"openai sdk: {checks} checks passed")


if __name__ == "__main__":
    main()
