"""The official `openai` SDK against anya serving Gemma 3 270M Q4_K_M (strict validation).

  python openai_gemma.py BASE_URL MODEL PROMPT_TOKENS

Chat completion of one user turn, streamed and not, greedy: both must give the same text, the
prompt must count PROMPT_TOKENS tokens (llama.cpp's count for the same turn), and the model's
page must describe the GGUF. Prints `checks passed` and the answer.
"""

import json
import sys
import urllib.request

import openai

base, model, prompt_tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
client = openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0,
                       _strict_response_validation=True, timeout=300)
messages = [{"role": "user", "content": "Write a haiku about the sea."}]

r = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=24)
text = r.choices[0].message.content
assert r.usage.prompt_tokens == prompt_tokens, (r.usage, prompt_tokens)
assert r.usage.completion_tokens >= 1 and text, r
assert r.choices[0].finish_reason in ("stop", "length"), r

stream = client.chat.completions.create(model=model, messages=messages, temperature=0,
                                        max_tokens=24, stream=True,
                                        stream_options={"include_usage": True})
parts, usage, finish = [], None, None
for chunk in stream:
    if chunk.usage:
        usage = chunk.usage
    for c in chunk.choices:
        if c.delta.content:
            parts.append(c.delta.content)
        finish = c.finish_reason or finish
assert "".join(parts) == text, ("".join(parts), text)
assert usage and usage.prompt_tokens == prompt_tokens, usage
assert finish == r.choices[0].finish_reason, finish

with urllib.request.urlopen(f"{base}/models/{model}", timeout=60) as resp:
    page = json.load(resp)
weights = page["versions"][0]["weights"]
assert weights["architecture"] == "gemma3", weights
assert weights["engine"] == "anya-cpu", weights
assert {"Q4_K", "Q6_K", "Q5_0", "Q8_0", "F32"} <= set(weights["quantization"]), weights
assert 250_000_000 < weights["parameters"] < 300_000_000, weights
assert weights["context_length"] == 32768, weights
print("checks passed:", json.dumps(text))
