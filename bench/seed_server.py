"""A reproduction of the seed project's server, kept only as a benchmark baseline.

FastAPI + transformers: the model is loaded with ``from_pretrained`` at every start, the app
binds 0.0.0.0 by default (as the seed did; pass --host 127.0.0.1 to keep it local), and the
only route is ``POST /complete`` ({prompt, max_tokens, temperature} -> {completion}), answered
after the whole completion is generated. One difference, for measuring: ``"min_tokens": N`` in
the body forces N new tokens (``min_new_tokens``), so timings compare equal lengths.

    python bench/seed_server.py runs/default/base --port 8001 --threads 2
"""

from __future__ import annotations

import argparse

import torch
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel
from transformers import AutoModelForCausalLM, AutoTokenizer


class CompleteRequest(BaseModel):
    prompt: str
    max_tokens: int = 128
    temperature: float = 0.7
    min_tokens: int = 0


def make_app(model_dir: str) -> FastAPI:
    app = FastAPI()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    model.eval()

    @app.post("/complete")
    def complete(req: CompleteRequest):
        inputs = tokenizer(req.prompt, return_tensors="pt")
        sample = req.temperature > 0
        with torch.inference_mode():
            out = model.generate(
                **inputs, max_new_tokens=req.max_tokens, min_new_tokens=req.min_tokens,
                do_sample=sample, temperature=req.temperature if sample else None,
                top_p=None, top_k=None, pad_token_id=tokenizer.eos_token_id)
        new = out[0, inputs["input_ids"].shape[1]:]
        return {"completion": tokenizer.decode(new, skip_special_tokens=True)}

    return app


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    uvicorn.run(make_app(args.model_dir), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
