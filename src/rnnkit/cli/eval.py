"""``rnnkit eval``: loss, perplexity and bits per token of a model on a held-out text."""
from __future__ import annotations

import argparse
import json

from ..data import UnknownSymbolsError, read_text
from ..tasks.lm import evaluate_lm, load_lm, resolve_checkpoint


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a trained model on a text file",
                       description="Loss (nats per token), perplexity and bits per character (or "
                       "per word) of a checkpoint on a held-out text.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoint", metavar="DIR_OR_CHECKPOINT", help="run directory or .npz file")
    p.add_argument("--data", metavar="FILE", required=True, help="the text to evaluate on")
    p.add_argument("--batch-size", type=int, default=16, help="parallel streams")
    p.add_argument("--bptt", type=int, default=128, help="steps per window (state carried across)")
    p.add_argument("--skip-unknown", action="store_true", help="char models: leave out characters "
                   "the model never saw instead of refusing the file")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where to compute")
    p.set_defaults(run=run)


def run(args) -> int:
    if args.batch_size < 1 or args.bptt < 1:
        raise ValueError("--batch-size and --bptt must be >= 1")
    model, tokenizer, _ = load_lm(args.checkpoint, device=args.device)
    text = read_text(args.data, tokenizer.kind)
    try:
        ids = tokenizer.encode(text, unknown="skip") if args.skip_unknown and tokenizer.kind == "char" \
            else tokenizer.encode(text)
    except UnknownSymbolsError as e:
        shown = ", ".join(repr(c) for c in e.symbols[:10])
        raise ValueError(f"{args.data} has {len(e.symbols)} character(s) this model never saw "
                         f"({shown}); pass --skip-unknown to leave them out") from None
    if len(ids) < 2:
        raise ValueError(f"{args.data}: too short to evaluate ({len(ids)} tokens)")
    batch = max(1, min(args.batch_size, (len(ids) - 1) // 2))
    r = evaluate_lm(model, ids, batch, args.bptt)
    unit = {"char": "char", "byte": "byte"}.get(tokenizer.kind, "word")
    result = {"checkpoint": str(resolve_checkpoint(args.checkpoint)), "data": args.data,
              "tokens": r["tokens"], "loss": r["loss"], "perplexity": r["perplexity"],
              f"bits_per_{unit}": r["bits"], "unit": unit}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.data}: loss {r['loss']:.4f} nats/{unit} | perplexity {r['perplexity']:.3f} | "
              f"{r['bits']:.4f} bits/{unit} | {r['tokens']:,} {unit}s scored")
    return 0
