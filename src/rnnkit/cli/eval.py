"""``rnnkit eval``: loss, perplexity and bits per token of a model on a held-out text."""
from __future__ import annotations

import json

from ..data import UnknownSymbolsError, read_text
from ..tasks.lm import evaluate_lm, load_lm, resolve_checkpoint
from .args import HelpFormatter, int_at_least, note, shown


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a trained model on a text file",
                       description="Loss (nats per token), perplexity and bits per character (or "
                       "per word, or per byte) of a checkpoint on a held-out text.",
                       epilog="Symbols the model never saw: a character model refuses the file "
                       "and names them, since leaving them out would flatter the score; with "
                       "--skip-unknown it leaves them out and reports how many. A word model "
                       "scores unseen words as <unk> and reports how many. A byte model has no "
                       "unknown symbols.",
                       formatter_class=HelpFormatter)
    p.add_argument("checkpoint", metavar="DIR_OR_CHECKPOINT", help="run directory (its best.npz, "
                   "else last.npz) or .npz file")
    p.add_argument("--data", metavar="FILE", required=True, help="the text to evaluate on "
                   "(required)")
    p.add_argument("--batch-size", type=int_at_least(1), default=16, help="parallel streams")
    p.add_argument("--bptt", type=int_at_least(1), default=128,
                   help="steps per window (state carried across)")
    p.add_argument("--skip-unknown", action="store_true", help="character models: leave out "
                   "characters the model never saw (reported) instead of refusing the file")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a line")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where to compute")
    p.set_defaults(run=run)


def run(args) -> int:
    path = resolve_checkpoint(args.checkpoint)
    model, tokenizer, _ = load_lm(path, device=args.device)
    text = read_text(args.data, tokenizer.kind, hint=f"this {tokenizer.kind} model reads UTF-8 "
                     f"text; only a model trained with --tokenizer byte reads any file")
    skipped = unknown_words = 0
    if tokenizer.kind == "char":
        try:
            ids = tokenizer.encode(text)
        except UnknownSymbolsError as e:
            if not args.skip_unknown:
                raise ValueError(f"{args.data} has {e.count} occurrence(s) of {len(e.symbols)} "
                                 f"character(s) this model never saw ({shown(e.symbols)}); pass "
                                 f"--skip-unknown to leave them out") from None
            ids = tokenizer.encode(text, unknown="skip")
            skipped = e.count
            note("eval", f"left out {skipped} occurrence(s) of {len(e.symbols)} character(s) "
                 f"this model never saw: {shown(e.symbols)}")
    else:
        ids = tokenizer.encode(text)
        if tokenizer.kind in ("word", "jieba"):
            known = tokenizer.encode(text, unknown="skip")
            unknown_words = len(ids) - len(known)
            if unknown_words:
                note("eval", f"{unknown_words} of {len(ids)} words are not in the vocabulary and "
                     f"are scored as <unk>")
    if len(ids) < 2:
        raise ValueError(f"{args.data}: too short to evaluate ({len(ids)} token(s) after "
                         f"tokenizing; at least 2 are needed)")
    batch = max(1, min(args.batch_size, (len(ids) - 1) // 2))
    r = evaluate_lm(model, ids, batch, args.bptt)
    unit = {"char": "char", "byte": "byte"}.get(tokenizer.kind, "word")
    result = {"checkpoint": str(path), "data": str(args.data),
              "tokens": r["tokens"], "loss": r["loss"], "perplexity": r["perplexity"],
              f"bits_per_{unit}": r["bits"], "unit": unit}
    if tokenizer.kind == "char":
        result["skipped_unknown"] = skipped
    elif tokenizer.kind in ("word", "jieba"):
        result["unknown_words"] = unknown_words
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.data}: loss {r['loss']:.4f} nats/{unit} | perplexity {r['perplexity']:.3f} | "
              f"{r['bits']:.4f} bits/{unit} | {r['tokens']:,} {unit}s scored")
    return 0
