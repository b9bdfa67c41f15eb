"""``rnnkit sample``: stream text from a trained language model."""
from __future__ import annotations

import argparse
import sys

import numpy as np

from ..data import UnknownSymbolsError
from ..generate import SampleSettings, generate_batch
from ..tasks.lm import load_lm


def add_parser(sub) -> None:
    p = sub.add_parser("sample", help="generate text from a trained model",
                       description="Generate text from a checkpoint (a run directory means its "
                       "best.npz, else last.npz), streaming it to stdout as it comes.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoint", metavar="DIR_OR_CHECKPOINT", help="run directory or .npz file")
    p.add_argument("--prime", default="\n", help="text to start from (printed first, unless it "
                   "is the default newline)")
    p.add_argument("--length", type=int, default=500, help="tokens to generate")
    p.add_argument("--temperature", type=float, default=0.8, help="< 1 safer, > 1 wilder")
    p.add_argument("--top-k", type=int, default=0, help="draw from the k most likely tokens only (0: all)")
    p.add_argument("--top-p", type=float, default=1.0, help="draw from the smallest set of tokens "
                   "whose probability reaches p (1: all)")
    p.add_argument("--greedy", action="store_true", help="always take the most likely token")
    p.add_argument("--num-samples", type=int, default=1, help="independent samples, drawn together")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: a fresh one)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where to compute")
    p.set_defaults(run=run)


def run(args) -> int:
    settings = SampleSettings(length=args.length, temperature=args.temperature, top_k=args.top_k,
                              top_p=args.top_p, greedy=args.greedy)
    if args.num_samples < 1:
        raise ValueError(f"--num-samples must be >= 1, got {args.num_samples}")
    model, tokenizer, _ = load_lm(args.checkpoint, device=args.device)
    try:
        prompt = tokenizer.encode(args.prime)
    except UnknownSymbolsError as e:
        shown = ", ".join(repr(c) for c in e.symbols[:10])
        raise ValueError(f"--prime has {len(e.symbols)} character(s) this model never saw: "
                         f"{shown}") from None
    rng = np.random.default_rng(args.seed)
    out = sys.stdout
    if args.num_samples == 1:
        if args.prime != "\n":
            out.write(args.prime)
        decoder = tokenizer.stream_decoder()
        for row in generate_batch(model, prompt, settings, rng, stream=True):
            out.write(decoder.feed(int(row[0])))
            out.flush()
        out.write(decoder.flush() + "\n")
        return 0
    samples = generate_batch(model, prompt, settings, rng, num_samples=args.num_samples)
    for i, ids in enumerate(samples):
        prime = "" if args.prime == "\n" else args.prime
        out.write(f"--- sample {i + 1} ---\n{prime}{tokenizer.decode(ids)}\n")
    return 0
