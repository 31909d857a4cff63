#!/usr/bin/env python3
"""The embeddings peer: FastAPI + uvicorn around sentence-transformers, written the way teams
write it by hand.

    python embed_server.py --model-dir models/all-minilm-l6-v2/1.0.0 --port 8001 [--endpoint async|sync]

POST /embed {"inputs": ["...", ...]} -> {"outputs": [[...384 floats...], ...]}  (anya's shape)
GET /health -> 200 once the model is loaded (it loads before the server listens).

The endpoint is `async def` calling `model.encode` directly (the form most tutorials and
hand-written services use; it runs the encode on the event loop, so requests are served one
at a time). `--endpoint sync` makes it a plain `def` endpoint instead, which FastAPI runs in its
thread pool (up to 40 concurrent encodes competing for the same cores).

The model folder is anya's (config.json, model.safetensors, tokenizer.json, 1_Pooling); it has
no modules.json, so sentence-transformers builds Transformer + mean pooling itself, and the
L2 normalisation is asked for in encode (normalize_embeddings=True), matching anya's output.
Sequences are capped at 256 tokens, like anya's manifest.
"""

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import uvicorn  # noqa: E402
from fastapi import FastAPI  # noqa: E402
from pydantic import BaseModel  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--model-dir", required=True)
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--endpoint", choices=["async", "sync"], default="async")
args = parser.parse_args()

model = SentenceTransformer(args.model_dir, device="cpu")
model.max_seq_length = 256
model.encode(["warm up"], normalize_embeddings=True)

app = FastAPI()


class EmbedRequest(BaseModel):
    inputs: list[str]


if args.endpoint == "async":

    @app.post("/embed")
    async def embed(req: EmbedRequest):
        vectors = model.encode(req.inputs, normalize_embeddings=True)
        return {"outputs": vectors.tolist()}

else:

    @app.post("/embed")
    def embed(req: EmbedRequest):
        vectors = model.encode(req.inputs, normalize_embeddings=True)
        return {"outputs": vectors.tolist()}


@app.get("/health")
def health():
    return {"status": "ok", "torch_threads": torch.get_num_threads(), "endpoint": args.endpoint}


if __name__ == "__main__":
    uvicorn.run(app, host=args.host, port=args.port)
