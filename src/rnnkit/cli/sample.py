"""``rnnkit sample``: stream text from a trained language model."""
from __future__ import annotations

import sys

import numpy as np

from ..data import UnknownSymbolsError
from ..generate import SampleSettings, generate_batch
from ..tasks.lm import load_lm
from .args import HelpFormatter, float_in, int_at_least, note, shown


def add_parser(sub) -> None:
    p = sub.add_parser("sample", help="generate text from a trained model",
                       description="Generate text from a checkpoint (a run directory means its "
                       "best.npz, else last.npz), streaming it to stdout as it comes. Bytes of a "
                       "byte-level model that are not valid UTF-8 print as U+FFFD.",
                       epilog="Priming: a character model refuses --prime text with characters "
                       "it never saw (and names them); a word model reads unknown words as <unk> "
                       "and says so on stderr.",
                       formatter_class=HelpFormatter)
    p.add_argument("checkpoint", metavar="DIR_OR_CHECKPOINT", help="run directory or .npz file")
    p.add_argument("--prime", default=None, help="text to start from, printed first (default: "
                   "a newline, not printed, or a random first token if the model knows no newline)")
    p.add_argument("--length", type=int_at_least(0), default=500, help="tokens to generate")
    p.add_argument("--temperature", type=float_in(0, low_open=True), default=0.8,
                   help="> 0; below 1 safer, above 1 wilder")
    p.add_argument("--top-k", type=int_at_least(0), default=0,
                   help="draw from the k most likely tokens only (0: all)")
    p.add_argument("--top-p", type=float_in(0, 1, low_open=True), default=1.0,
                   help="draw from the smallest set of tokens whose probability reaches p, "
                   "0 < p <= 1 (1: all)")
    p.add_argument("--greedy", action="store_true", help="always take the most likely token "
                   "(--temperature, --top-k and --top-p then do nothing)")
    p.add_argument("--num-samples", type=int_at_least(1), default=1,
                   help="independent samples, drawn together")
    p.add_argument("--seed", type=int_at_least(0), default=None,
                   help="random seed, for a repeatable sample (default: a fresh one)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where to compute")
    p.set_defaults(run=run)


def _prompt(tokenizer, prime: str):
    """``(ids, echo)``: the prime as token ids, and the text to print before the sample."""
    if tokenizer.kind == "byte":
        # bytes that were not UTF-8 on the command line reach Python as lone surrogates
        # (surrogateescape); give the model those bytes back
        return tokenizer.encode(prime.encode("utf-8", "surrogateescape")), prime
    try:
        ids = tokenizer.encode(prime)
    except UnknownSymbolsError as e:
        raise ValueError(f"--prime has {len(e.symbols)} character(s) this model never saw: "
                         f"{shown(e.symbols)}") from None
    if tokenizer.kind in ("word", "jieba"):
        unknown = tokenizer.encode(prime, unknown="skip")
        if len(unknown) != len(ids):
            words = [w for w in tokenizer._segment(prime) if w not in tokenizer.stoi]
            words = list(dict.fromkeys(words))
            note("sample", f"{len(words)} word(s) of --prime are not in the vocabulary and are "
                 f"read as <unk>: {shown(words)}")
    return ids, prime


def _decoder_after(tokenizer, prompt):
    """A stream decoder that has read ``prompt``: a word model then spaces its first word."""
    decoder = tokenizer.stream_decoder()
    for i in prompt:
        decoder.feed(i)
    decoder.flush()
    return decoder


def run(args) -> int:
    settings = SampleSettings(length=args.length, temperature=args.temperature, top_k=args.top_k,
                              top_p=args.top_p, greedy=args.greedy)
    model, tokenizer, _ = load_lm(args.checkpoint, device=args.device)
    if args.prime is None:                       # start after a newline when the model knows one
        if tokenizer.kind in ("word", "jieba"):   # <eos>; no segmenter needed (jieba may be absent)
            prompt = [tokenizer.eos_id]
        else:
            prompt = tokenizer.encode("\n", unknown="skip")[-1:].tolist()
        echo = ""
    else:
        prompt, echo = _prompt(tokenizer, args.prime)
        prompt = prompt.tolist()
        if tokenizer.kind == "word":
            echo = echo.rstrip(" \t")             # the decoder puts a space before the next word
    rng = np.random.default_rng(args.seed)
    out = sys.stdout                             # main() made it replace what it cannot encode
    if args.num_samples > 1:
        samples = generate_batch(model, prompt, settings, rng, num_samples=args.num_samples)
        for i, ids in enumerate(samples):
            decoder = _decoder_after(tokenizer, prompt)
            text = "".join([decoder.feed(t) for t in ids.tolist()]) + decoder.flush()
            out.write(f"--- sample {i + 1} ---\n{echo}{text}\n")
        return 0
    out.write(echo)
    out.flush()
    decoder = _decoder_after(tokenizer, prompt)
    try:
        for row in generate_batch(model, prompt, settings, rng, stream=True):
            out.write(decoder.feed(int(row[0])))
            out.flush()
    finally:
        out.write(decoder.flush() + "\n")        # end the line, also after Ctrl-C
        out.flush()
    return 0
