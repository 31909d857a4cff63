"""The real KServe v2 clients against a running anya: tritonclient.http (binary tensors by
default, and JSON with binary_data=False), tritonclient.grpc (unary and ModelStreamInfer),
and kserve's REST and gRPC clients; then their error types, and 1,000 random byte strings as
gRPC ModelInfer messages.

  python kserve_clients.py BASE_URL GRPC_ADDR GOOD NO_MODEL TINY NO_SCOPE

(The kserve checks run in a child process: see main.)

Tokens: GOOD may use every model; NO_MODEL only the generation model; TINY is in a tier of
2 requests per minute; NO_SCOPE has no `predict` scope. Run by tests/kserve.rs; exits
non-zero naming the first check that failed.
"""

import asyncio
import json
import queue
import random
import subprocess
import sys
import urllib.request

import grpc
import numpy as np
if "--kserve" not in sys.argv:  # (see main)
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

EMBED = "all-minilm-l6-v2"
CHAT = "smollm2-135m-instruct"
TEXTS = ["The cat sat on the mat.", "Rust is a systems language.", "héllo wörld"]
PROMPT = "The capital of France is"
MAX_TOKENS = 12


def native(base, token, model, inputs, parameters=None):
    req = urllib.request.Request(
        base + f"/models/{model}/predict",
        data=json.dumps({"inputs": inputs, "parameters": parameters or {}}).encode(),
        headers={"content-type": "application/json", "authorization": "Bearer " + token})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.load(r)["outputs"]


def close(a, b, tol=1e-5):
    a, b = np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)
    return a.shape == b.shape and float(np.max(np.abs(a - b))) <= tol


def expect(fn, exc, *needles):
    try:
        fn()
    except exc as e:
        text = str(e)
        for n in needles:
            assert n in text, f"{exc.__name__}: {n!r} not in {text!r}"
        return e
    raise AssertionError(f"expected {exc.__name__} with {needles}")


def texts_input(mod, name, texts, binary=None):
    i = mod.InferInput(name, [len(texts)], "BYTES")
    arr = np.array([t.encode() for t in texts], dtype=np.object_)
    if binary is None:
        i.set_data_from_numpy(arr)
    else:
        i.set_data_from_numpy(arr, binary_data=binary)
    return i


def triton_http(base, hdr, want_vectors, want_text):
    # (tritonclient.http writes Inference-Header-Content-Length into the headers dict it is
    # given: each call gets its own copy.)
    url = base.removeprefix("http://")
    c = httpclient.InferenceServerClient(url=url, network_timeout=120.0)
    checks = 0
    assert c.is_server_live(headers=dict(hdr)) and c.is_server_ready(headers=dict(hdr))
    assert c.is_model_ready(EMBED, headers=dict(hdr)) and c.is_model_ready(CHAT, "1.0.0", headers=dict(hdr))
    meta = c.get_server_metadata(headers=dict(hdr))
    assert meta["name"] == "anya" and "binary_tensor_data" in meta["extensions"], meta
    m = c.get_model_metadata(EMBED, headers=dict(hdr))
    assert m["inputs"][0] == {"name": "text", "datatype": "BYTES", "shape": [-1]}, m
    assert m["outputs"][0]["datatype"] == "FP32" and m["outputs"][0]["shape"] == [-1, 384], m
    checks += 1

    # Default: binary tensors in and out.
    r = c.infer(EMBED, [texts_input(httpclient, "text", TEXTS)], headers=dict(hdr), request_id="req-1")
    assert r.get_response()["id"] == "req-1"
    out = r.as_numpy("embedding")
    assert out.dtype == np.float32 and close(out, want_vectors), out
    assert "parameters" in r.get_output("embedding")  # binary_data_size: it was binary
    checks += 1
    # JSON both ways (binary_data=False).
    r = c.infer(EMBED, [texts_input(httpclient, "text", TEXTS, binary=False)],
                outputs=[httpclient.InferRequestedOutput("embedding", binary_data=False)],
                headers=dict(hdr))
    assert "data" in r.get_output("embedding")
    assert close(r.as_numpy("embedding"), want_vectors)
    checks += 1
    # Generation, greedy, parameters in the request.
    r = c.infer(CHAT, [texts_input(httpclient, "text_input", [PROMPT])], headers=dict(hdr),
                parameters={"temperature": 0, "max_tokens": MAX_TOKENS})
    got = r.as_numpy("text_output")[0].decode()
    assert got == want_text, (got, want_text)
    checks += 1

    # Errors: the client's exception, our message, the status.
    e = expect(lambda: c.infer("nope", [texts_input(httpclient, "text", ["x"])], headers=dict(hdr)),
               InferenceServerException, "model `nope` not found")
    assert e.status() == "404", e.status()
    bad = httpclient.InferInput("text", [1], "FP32")
    bad.set_data_from_numpy(np.array([1.0], dtype=np.float32))
    e = expect(lambda: c.infer(EMBED, [bad], headers=dict(hdr)), InferenceServerException, "BYTES")
    assert e.status() == "400"
    expect(lambda: c.infer(CHAT, [texts_input(httpclient, "text_input", [PROMPT])], headers=dict(hdr),
                           parameters={"temperature": 9}),
           InferenceServerException, "parameters.temperature")
    expect(lambda: c.infer(EMBED, [texts_input(httpclient, "text", ["x"])]),
           InferenceServerException, "token")
    checks += 1
    c.close()
    return checks


def triton_grpc(addr, hdr, want_vectors, want_text, tokens):
    c = grpcclient.InferenceServerClient(url=addr)
    checks = 0
    assert c.is_server_live(headers=dict(hdr)) and c.is_server_ready(headers=dict(hdr))
    assert c.is_model_ready(EMBED, headers=dict(hdr))
    meta = c.get_server_metadata(headers=dict(hdr), as_json=True)
    assert meta["name"] == "anya" and "binary_tensor_data" in meta["extensions"], meta
    m = c.get_model_metadata(CHAT, headers=dict(hdr), as_json=True)
    assert m["inputs"][0]["name"] == "text_input" and m["outputs"][0]["datatype"] == "BYTES", m
    checks += 1

    r = c.infer(EMBED, [texts_input(grpcclient, "text", TEXTS)], headers=dict(hdr), request_id="g-1")
    assert r.get_response().id == "g-1"
    assert close(r.as_numpy("embedding"), want_vectors)
    checks += 1
    r = c.infer(CHAT, [texts_input(grpcclient, "text_input", [PROMPT])], headers=dict(hdr),
                parameters={"temperature": 0, "max_tokens": MAX_TOKENS})
    assert r.as_numpy("text_output")[0].decode() == want_text
    checks += 1

    # ModelStreamInfer: deltas, then the final flag; the deltas add up to the text.
    got = queue.Queue()
    c.start_stream(callback=lambda result, error: got.put((result, error)), headers=dict(hdr))
    c.async_stream_infer(CHAT, [texts_input(grpcclient, "text_input", [PROMPT])],
                         request_id="s-1",
                         parameters={"temperature": 0, "max_tokens": MAX_TOKENS, "cache": False})
    deltas = []
    while True:
        result, error = got.get(timeout=120)
        assert error is None, error
        resp = result.get_response()
        assert resp.id == "s-1"
        if resp.parameters["triton_final_response"].bool_param:
            break
        deltas.append(result.as_numpy("text_output")[0].decode())
    assert len(deltas) > 1 and "".join(deltas) == want_text, deltas
    # A failed request on the stream: an error for it, and the stream goes on.
    c.async_stream_infer("nope", [texts_input(grpcclient, "text", ["x"])])
    result, error = got.get(timeout=60)
    assert result is None and "model `nope` not found" in str(error), (result, error)
    c.async_stream_infer(EMBED, [texts_input(grpcclient, "text", TEXTS[:1])])
    result, error = got.get(timeout=60)
    assert error is None and close(result.as_numpy("embedding"), want_vectors[:1])
    c.stop_stream()
    checks += 1

    def status_of(fn):
        try:
            fn()
        except InferenceServerException as e:
            return e.status(), e.message()
        raise AssertionError("expected an InferenceServerException")

    cases = [
        (lambda: c.infer("nope", [texts_input(grpcclient, "text", ["x"])], headers=dict(hdr)),
         "StatusCode.NOT_FOUND", "not found"),
        (lambda: c.infer(EMBED, [texts_input(grpcclient, "wrong", ["x"])], headers=dict(hdr)),
         "StatusCode.INVALID_ARGUMENT", "unknown input `wrong`"),
        (lambda: c.infer(EMBED, [texts_input(grpcclient, "text", ["x"])]),
         "StatusCode.UNAUTHENTICATED", "token"),
        (lambda: c.infer(EMBED, [texts_input(grpcclient, "text", ["x"])],
                         headers={"authorization": "Bearer " + tokens["no_model"]}),
         "StatusCode.PERMISSION_DENIED", EMBED),
        (lambda: c.infer(EMBED, [texts_input(grpcclient, "text", ["x"])],
                         headers={"authorization": "Bearer " + tokens["no_scope"]}),
         "StatusCode.PERMISSION_DENIED", "predict"),
    ]
    for fn, code, needle in cases:
        status, message = status_of(fn)
        assert status == code and needle in message, (status, message, code)
    tiny = {"authorization": "Bearer " + tokens["tiny"]}
    limited = None
    for _ in range(4):
        try:
            c.infer(EMBED, [texts_input(grpcclient, "text", ["x"])], headers=tiny)
        except InferenceServerException as e:
            limited = e
            break
    assert limited is not None and limited.status() == "StatusCode.RESOURCE_EXHAUSTED", limited
    checks += 1
    c.close()
    return checks


def kserve_clients(base, addr, hdr, want_vectors):
    import httpx
    from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig

    async def go():
        checks = 0
        rest = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=120))
        assert await rest.is_server_live(base, headers=dict(hdr))
        assert await rest.is_server_ready(base, headers=dict(hdr))
        assert await rest.is_model_ready(base, EMBED, headers=dict(hdr))
        inp = InferInput("text", [len(TEXTS)], "BYTES", data=TEXTS)
        r = await rest.infer(base, InferRequest(EMBED, [inp], request_id="k-1"), model_name=EMBED,
                             headers=dict(hdr))
        assert close(r.outputs[0].as_numpy(), want_vectors)
        checks += 1
        try:
            await rest.infer(base, InferRequest("nope", [inp]), model_name="nope", headers=dict(hdr))
            raise AssertionError("expected HTTPStatusError")
        except httpx.HTTPStatusError as e:
            assert "model `nope` not found" in str(e) and e.response.status_code == 404, e
        checks += 1
        await rest.close()

        g = InferenceGRPCClient(addr, timeout=120, retries=0)
        meta = tuple(hdr.items())
        assert await g.is_server_ready(headers=meta)
        assert await g.is_model_ready(EMBED, headers=meta)
        inp = InferInput("text", [len(TEXTS)], "BYTES", data=TEXTS)
        r = await g.infer(InferRequest(EMBED, [inp]), headers=meta)
        assert close(r.outputs[0].as_numpy(), want_vectors)
        checks += 1
        try:
            await g.infer(InferRequest("nope", [inp]), headers=meta)
            raise AssertionError("expected RpcError")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.NOT_FOUND and "not found" in e.details(), e
        checks += 1
        await g.close()
        return checks

    return asyncio.run(go())


def grpc_garbage(addr, hdr, n=1000):
    """Random bytes as ModelInfer messages: each INVALID_ARGUMENT, the server stays up."""
    rng = random.Random(16)
    channel = grpc.insecure_channel(addr)
    call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    codes = {}
    for _ in range(n):
        body = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 200)))
        try:
            call(body, metadata=tuple(hdr.items()), timeout=30)
            code = "OK"
        except grpc.RpcError as e:
            code = e.code().name
        codes[code] = codes.get(code, 0) + 1
    assert set(codes) == {"INVALID_ARGUMENT"}, codes
    # A message over server.max_body_bytes (2 MiB): INVALID_ARGUMENT, as documented (tonic's
    # own answer is OUT_OF_RANGE), unary and on a stream.
    big = b"\x00" * (3 * 1024 * 1024)
    try:
        call(big, metadata=tuple(hdr.items()), timeout=30)
        raise AssertionError("an oversized message was accepted")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, (e.code(), e.details())
    stream = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")
    try:
        list(stream(iter([big]), metadata=tuple(hdr.items()), timeout=30))
        raise AssertionError("an oversized stream message was accepted")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, (e.code(), e.details())
    live = channel.unary_unary("/inference.GRPCInferenceService/ServerLive")
    assert live(b"", timeout=10) == b"\x08\x01"  # live: true
    channel.close()
    return codes


def main():
    if sys.argv[1] == "--kserve":
        # kserve's and tritonclient's generated protobuf modules both define `inference.*`
        # in the default descriptor pool: they cannot be imported into one process.
        base, addr, good = sys.argv[2:5]
        hdr = {"authorization": "Bearer " + good}
        print(kserve_clients(base, addr, hdr, native(base, good, EMBED, TEXTS)))
        return
    base, addr, good, no_model, tiny, no_scope = sys.argv[1:7]
    tokens = {"no_model": no_model, "tiny": tiny, "no_scope": no_scope}
    hdr = {"authorization": "Bearer " + good}
    want_vectors = native(base, good, EMBED, TEXTS)
    want_text = native(base, good, CHAT, [PROMPT],
                       {"temperature": 0, "max_tokens": MAX_TOKENS, "cache": False})[0]
    checks = triton_http(base, hdr, want_vectors, want_text)
    checks += triton_grpc(addr, hdr, want_vectors, want_text, tokens)
    out = subprocess.run([sys.executable, __file__, "--kserve", base, addr, good],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"the kserve clients failed:\n{out.stdout}\n{out.stderr}"
    checks += int(out.stdout.strip().splitlines()[-1])
    codes = grpc_garbage(addr, hdr)
    checks += 1
    print(f"garbage ModelInfer messages: {codes}")
    print(f"{checks} checks passed")


if __name__ == "__main__":
    main()
