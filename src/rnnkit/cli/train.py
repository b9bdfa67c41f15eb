"""``rnnkit train``: train a language model on a text file (or the built-in corpus), or resume one."""
from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from .. import checkpoint
from ..data import DataError, UnknownSymbolsError, build_tokenizer, default_corpus, read_text
from ..models.language_model import LanguageModel, LMConfig
from ..tasks.lm import LMTask, lm_from_tree
from ..train import Trainer, TrainConfig
from .args import HelpFormatter, float_in, int_at_least, note, shown

# The recommended CPU configuration (README, "Tiny Shakespeare"): the defaults of `rnnkit train`.
MODEL_DEFAULTS = dict(cell="lstm", embedding_size=128, hidden_size=512, num_layers=2, dropout=0.2,
                      tie_weights=False, init_range=0.0)
TRAIN_DEFAULTS = TrainConfig().to_dict()
RUN_DEFAULTS = dict(tokenizer="char", val_fraction=0.1, min_freq=1, max_vocab=0, dtype="float32",
                    device="cpu", skip_unknown=False)
DEMO_MAX_TIME = 180.0           # the built-in corpus, no --max-time: a few minutes' demo
RESUMABLE = {"epochs", "max_steps", "max_time", "eval_interval", "log_interval", "sample_length"}
EXIT_INTERRUPTED = 130         # Ctrl-C, after last.npz is saved (128 + SIGINT, as shells say)


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a language model on a text file",
                       description="Train a character- (or word-) level language model. With no "
                       "--data, trains for a few minutes on a built-in corpus (the Python standard "
                       "library's own source code).",
                       epilog="Ctrl-C finishes the current step, saves last.npz and exits with "
                       "status 130; 'rnnkit train --resume DIR' continues from there (a second "
                       "Ctrl-C stops at once, keeping the last saved checkpoint). Exit status 3: "
                       "the loss turned NaN or exploded (the last good checkpoint is kept).",
                       formatter_class=HelpFormatter)
    d = {**MODEL_DEFAULTS, **TRAIN_DEFAULTS, **RUN_DEFAULTS}

    def opt(*flags, **kw):
        dest = kw.get("dest") or flags[0].lstrip("-").replace("-", "_")
        kw.setdefault("default", None)
        if dest in d and "help" in kw and kw.get("action") != "store_true":
            kw["help"] += f" (default: {d[dest]})"
        return g.add_argument(*flags, **kw)

    g = p.add_argument_group("data")
    opt("--data", metavar="FILE", help="training text (UTF-8; any file with --tokenizer byte); "
        "default: a few MB of the Python standard library's source")
    opt("--val-data", metavar="FILE", help="validation text; default: the last --val-fraction of "
        "--data. A char model refuses one with characters the training text lacks, unless "
        "--skip-unknown")
    opt("--val-fraction", type=float_in(0, 1, high_open=True), help="share of the text held out "
        "for validation, 0 <= f < 1 (characters of it that the training part lacks are left out, "
        "with a note)")
    opt("--skip-unknown", action="store_true", help="char: leave out of validation the "
        "characters of --val-data that the training text lacks (reported), instead of refusing")
    opt("--tokenizer", choices=["char", "byte", "word", "jieba"], help="char: one token per "
        "character; byte: UTF-8 bytes (any file); word: whitespace words, newline as <eos>, "
        "unseen words as <unk>; jieba: Chinese words (pip install jieba)")
    opt("--min-freq", type=int_at_least(1), help="word/jieba: words seen fewer times become <unk>")
    opt("--max-vocab", type=int_at_least(0), help="word/jieba: keep the most frequent words only, "
        "<unk> and <eos> included (0: all; else at least 2)")
    g = p.add_argument_group("model")
    opt("--model", dest="cell", choices=["lstm", "gru", "rnn"], help="recurrent cell")
    opt("--embedding-size", type=int_at_least(1), help="size of the token embeddings")
    opt("--hidden-size", type=int_at_least(1), help="units per recurrent layer")
    opt("--layers", dest="num_layers", type=int_at_least(1), help="stacked recurrent layers")
    opt("--dropout", type=float_in(0, 1, high_open=True), help="dropout on embeddings, between "
        "layers and before the output, 0 <= p < 1")
    opt("--tie-weights", action="store_true", help="share the embedding and output matrices "
        "(needs --embedding-size equal to --hidden-size)")
    opt("--init-range", type=float_in(0), help="initialise every weight from U(-r, r) "
        "(0: PyTorch's defaults)")
    opt("--dtype", choices=["float32", "float64"], help="floating-point precision")
    opt("--device", choices=["cpu", "cuda"], help="where to compute (cuda needs CuPy)")
    g = p.add_argument_group("optimisation")
    opt("--batch-size", type=int_at_least(1), help="parallel streams per batch")
    opt("--bptt", type=int_at_least(1), help="steps of backpropagation through time per batch")
    opt("--optimizer", choices=["sgd", "adagrad", "rmsprop", "adam", "adamw"], help="optimiser")
    opt("--lr", type=float_in(0, low_open=True), help="learning rate, > 0")
    opt("--momentum", type=float_in(0, 1, high_open=True), help="momentum (sgd, rmsprop), "
        "0 <= m < 1")
    opt("--weight-decay", type=float_in(0), help="weight decay, >= 0")
    opt("--schedule", choices=["none", "step", "exp", "plateau"], help="learning-rate schedule: "
        "step (x gamma every --lr-step epochs), exp (x gamma every epoch after --lr-hold), "
        "plateau (x gamma when validation stops improving)")
    opt("--lr-gamma", type=float_in(0, low_open=True), help="factor of the schedule, > 0")
    opt("--lr-step", type=int_at_least(1), help="epochs between decays of 'step'")
    opt("--lr-hold", type=int_at_least(1), help="epochs at the full rate before 'exp' decays")
    opt("--lr-patience", type=int_at_least(0), help="evaluations without improvement before "
        "'plateau' decays")
    opt("--clip-norm", type=float_in(0), help="clip the global gradient norm (0: off)")
    opt("--clip-value", type=float_in(0), help="clip each gradient entry to +-value (0: off)")
    g = p.add_argument_group("run")
    opt("--out", metavar="DIR", help="where checkpoints (last.npz, best.npz), metrics.jsonl and "
        "loss.png go; default: runs/NAME-OF-DATA")
    opt("--resume", metavar="DIR", help="continue the run in DIR exactly where it stopped (limits "
        "such as --max-steps, --max-time, --epochs may be raised; --data may name the training "
        "text's new place if it moved)")
    opt("--force", action="store_true", help="start over in an --out that already holds a run "
        "(its checkpoints and metrics are replaced)")
    opt("--epochs", type=int_at_least(1), help="passes over the training text")
    opt("--max-steps", type=int_at_least(0), help="stop after this many steps in all (0: no limit)")
    opt("--max-time", type=float_in(0), help="stop after this many seconds of training in all, "
        f"evaluation excluded; at least one step is taken (0: no limit; {DEMO_MAX_TIME:.0f} s "
        "with the built-in corpus)")
    opt("--eval-interval", type=int_at_least(0), help="steps between evaluations and "
        "checkpoints; there is always one at the end of each epoch (0: only those)")
    opt("--log-interval", type=int_at_least(1), help="steps between lines of metrics.jsonl")
    opt("--sample-length", type=int_at_least(0), help="tokens of the sample shown at each "
        "evaluation (0: none)")
    opt("--seed", type=int_at_least(0), help="random seed (initialisation, dropout, batches)")
    opt("--no-progress", action="store_true", help="no progress bar (log lines only)")
    p.set_defaults(run=run)


def _explicit(args) -> dict:
    return {k: v for k, v in vars(args).items()
            if v is not None and v is not False and k not in ("run", "command")}


def _fingerprint(text) -> str:
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    return hashlib.sha256(data).hexdigest()[:16]


def _read_source(run: dict, key: str, moved_to=None):
    """The text of ``run[key]`` ("data" or "val_data"), or of ``moved_to`` (a resumed run's file
    given a new place), checked against the fingerprint saved with the run (when there is one)."""
    flag = "--" + key.replace("_", "-")
    path = moved_to or run[key]
    if moved_to is None and not Path(path).exists() and "fingerprint" in run:
        raise DataError(f"{flag} of this run, {path}, is not there any more; if it moved, "
                        f"pass its new place with {flag}")
    text = read_text(path, run["tokenizer"])
    fp_key = "fingerprint" if key == "data" else "val_fingerprint"
    fingerprint = _fingerprint(text)
    if run.setdefault(fp_key, fingerprint) != fingerprint:
        if moved_to is not None:
            raise DataError(f"{flag} {moved_to} is not the text this run was trained with (its "
                            f"contents differ); a resumed run continues on the same data")
        raise DataError(f"{path} has changed since this run started; resuming would not "
                        f"continue the same run")
    if moved_to is not None:
        run[key] = str(Path(moved_to).resolve())
    return text


def _encode_val(tokenizer, val_text, run: dict):
    """Validation ids. Symbols the training text lacks: a word model scores them as <unk> (noted);
    a char model leaves them out of a split of --data (noted), and for --val-data refuses them
    unless --skip-unknown (noted)."""
    if tokenizer.kind == "char":
        try:
            return tokenizer.encode(val_text)
        except UnknownSymbolsError as e:
            if run.get("val_data") and not run.get("skip_unknown"):
                raise DataError(f"--val-data {run['val_data']} has {e.count} occurrence(s) of "
                                f"{len(e.symbols)} character(s) that the training text lacks "
                                f"({shown(e.symbols)}); the model could never predict them: "
                                f"pass --skip-unknown to leave them out of validation") from None
            note("train", f"{e.count} validation character(s) that the training text lacks are "
                 f"left out of validation: {shown(e.symbols)}")
            return tokenizer.encode(val_text, unknown="skip")
    ids = tokenizer.encode(val_text)
    if tokenizer.kind in ("word", "jieba"):
        unknown = len(ids) - len(tokenizer.encode(val_text, unknown="skip"))
        if unknown:
            note("train", f"{unknown} of {len(ids)} validation words are not in the vocabulary "
                 f"and are scored as <unk>")
    return ids


def _prepare_data(run: dict, cfg: TrainConfig, tokenizer=None, moved: dict | None = None):
    """Read the text of ``run`` (settings), split it, and encode it with ``tokenizer`` (built from
    the training split when None); ``moved`` maps "data" / "val_data" to new places of a resumed
    run's files; the training ids must fill one batch of ``cfg``. Returns
    ``(tokenizer, train_ids, val_ids, description)``."""
    moved = moved or {}
    kind = run["tokenizer"]
    if run.get("data"):
        text = _read_source(run, "data", moved.get("data"))
        what = str(run["data"])
    else:
        text, what = default_corpus()
        if kind == "byte":
            text = text.encode("utf-8")
        fingerprint = _fingerprint(text)
        if run.setdefault("fingerprint", fingerprint) != fingerprint:
            raise DataError("the built-in corpus (this Python's standard library) has changed "
                            "since this run started; resuming would not continue the same run")
    if run.get("val_data"):
        train_text, val_text = text, _read_source(run, "val_data", moved.get("val_data"))
    elif run["val_fraction"] > 0:
        cut = int(len(text) * (1 - run["val_fraction"]))
        train_text, val_text = text[:cut], text[cut:]
    else:
        train_text, val_text = text, None
    if tokenizer is None:
        opts = {}
        if kind in ("word", "jieba"):
            opts = {"min_freq": run["min_freq"], "max_size": run["max_vocab"] or None}
        tokenizer = build_tokenizer(kind, train_text, **opts)
    # a new run's vocabulary holds every training symbol; a resumed run's was built from this text
    train_ids = tokenizer.encode(train_text, **({"unknown": "skip"} if kind == "char" else {}))
    _check_batch_fits(len(train_ids), cfg.batch_size, cfg.bptt)
    val_ids = _encode_val(tokenizer, val_text, run) if val_text else None
    if run.get("val_data") and (val_ids is None or len(val_ids) < 2):
        n = 0 if val_ids is None else len(val_ids)
        raise DataError(f"--val-data {run['val_data']} holds {n} usable token(s); validation "
                        f"needs at least 2")
    return tokenizer, train_ids, val_ids, what


def _check_batch_fits(n: int, batch_size: int, bptt: int) -> None:
    """The training text must fill one batch: ``batch_size`` streams of ``bptt + 1`` tokens."""
    need = batch_size * (bptt + 1)
    if n >= need:
        return
    hint = ""
    if n // batch_size - 1 >= 1:
        hint = f" (e.g. --bptt {n // batch_size - 1} with this batch size)"
    elif n // (bptt + 1) >= 1:
        hint = f" (e.g. --batch-size {n // (bptt + 1)} with this --bptt)"
    raise DataError(f"the training text is {n:,} tokens, shorter than one batch: --batch-size "
                    f"{batch_size} x (--bptt {bptt} + 1) needs {need:,}; use a smaller "
                    f"--batch-size or --bptt{hint}, or more text")


def _progress(no_progress: bool):
    if no_progress or not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return lambda total, initial: tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)


def _check_out_path(out: Path) -> None:
    """Refuse an --out that cannot become a writable directory, before anything is read."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a directory")
    parent = out
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"--out {out}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out}: cannot write into {parent} (permission denied)")


def _make_out(out: Path) -> None:
    """Create --out and prove that a file can be written there."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise ValueError(f"cannot write into --out {out}: {e.strerror or e}") from None


def run(args) -> int:
    given = _explicit(args)
    if args.resume:
        return _resume(args, given)
    run = {**RUN_DEFAULTS, **{k: given[k] for k in list(RUN_DEFAULTS) + ["data", "val_data"]
                              if k in given}}
    if run["tokenizer"] in ("char", "byte") and any(k in given for k in ("min_freq", "max_vocab")):
        raise ValueError("--min-freq and --max-vocab apply to --tokenizer word or jieba")
    if run["max_vocab"] == 1:
        raise ValueError("--max-vocab must be 0 (no limit) or at least 2 (<unk> and <eos>)")
    if run.get("skip_unknown") and (run["tokenizer"] != "char" or not run.get("val_data")):
        raise ValueError("--skip-unknown applies to --tokenizer char with --val-data")
    model_kw = {k: given.get(k, v) for k, v in MODEL_DEFAULTS.items()}
    if model_kw["tie_weights"] and model_kw["embedding_size"] != model_kw["hidden_size"]:
        raise ValueError(f"--tie-weights needs --embedding-size equal to --hidden-size, got "
                         f"{model_kw['embedding_size']} and {model_kw['hidden_size']}")
    train_cfg = TrainConfig.from_dict({**TRAIN_DEFAULTS, **{k: v for k, v in given.items()
                                                              if k in TRAIN_DEFAULTS}})
    if not run.get("data") and "max_time" not in given:
        train_cfg = replace(train_cfg, max_time=DEMO_MAX_TIME)
    _check_train_config(train_cfg)
    out = Path(given.get("out") or f"runs/{Path(run['data']).stem if run.get('data') else 'stdlib'}")
    _check_out_path(out)
    if not args.force and ((out / "last.npz").exists() or (out / "best.npz").exists()):
        how = f"continue it with --resume {out}, or " if (out / "last.npz").exists() else ""
        raise ValueError(f"{out} already holds a run: {how}choose another --out, or pass --force "
                         f"to start over")
    for key in ("data", "val_data"):           # absolute, so that --resume works from anywhere
        if run.get(key):
            run[key] = str(Path(run[key]).resolve())

    tokenizer, train_ids, val_ids, what = _prepare_data(run, train_cfg)
    print(f"data: {what} | {len(train_ids):,} training and {0 if val_ids is None else len(val_ids):,} "
          f"validation tokens | {run['tokenizer']} tokenizer, vocabulary {tokenizer.vocab_size}")

    rng = np.random.default_rng(train_cfg.seed)
    config = LMConfig(vocab_size=tokenizer.vocab_size, dtype=run["dtype"], **model_kw)
    model = LanguageModel(config, rng=rng, device=run["device"])
    task = LMTask(model, tokenizer, train_ids, val_ids, train_cfg.batch_size, train_cfg.bptt,
                  source=run)
    print(f"model: {config.num_layers} x {config.hidden_size} {config.cell.upper()}, embedding "
          f"{config.embedding_size}, {model.num_parameters():,} parameters | {_compute(model)} "
          f"| out: {out}")
    if train_cfg.max_time and not run.get("data") and "max_time" not in given:
        print(f"no --data: training on the built-in corpus for {DEMO_MAX_TIME:.0f} s")
    _make_out(out)
    for stale in ("metrics.jsonl", "best.npz", "loss.png"):
        (out / stale).unlink(missing_ok=True)
    (out / "run.json").write_text(json.dumps({"data": run, "model": config.to_dict(),
                                              "train": train_cfg.to_dict()}, indent=2) + "\n")
    trainer = Trainer(task, train_cfg, out, rng=rng, progress=_progress(args.no_progress))
    return _fit(trainer, task, out)


def _resume(args, given) -> int:
    out = Path(args.resume)
    if args.force:
        raise ValueError("--force starts a new run; it cannot be combined with --resume")
    if not out.is_dir():
        raise ValueError(f"--resume {out}: not a run directory"
                         + (" (pass the directory that holds last.npz)" if out.is_file() else ""))
    path = out / "last.npz"
    if not path.is_file():
        raise ValueError(f"{out}: no last.npz to resume from")
    tree = checkpoint.load(path)
    config, tokenizer, task_state = lm_from_tree(tree, path)
    try:
        run = dict(task_state["source"])
        saved_cfg = checkpoint.config_from_dict(TrainConfig, tree["train_config"], str(path))
        progress = tree["progress"]
        int(progress["step"]), int(progress["epoch"]), float(progress["elapsed"])
        for key, kind in (("tokenizer", str), ("val_fraction", (int, float)), ("device", str)):
            if not isinstance(run[key], kind):
                raise ValueError(f"its {key} is {run[key]!r}")
    except (KeyError, TypeError, ValueError) as e:
        what = f"missing {e}" if isinstance(e, KeyError) else str(e)
        raise checkpoint.CheckpointError(f"{path}: damaged checkpoint, cannot resume ({what})") \
            from None
    train_cfg = replace(saved_cfg, **{k: given[k] for k in RESUMABLE if k in given})
    saved = {**run, **config.to_dict(), **saved_cfg.to_dict(), "out": str(out)}
    # the same command again with --resume is fine; a different setting is not (a moved data
    # file may be named again: its contents are checked instead)
    moved = {k: given[k] for k in ("data", "val_data")
             if k in given and k in run and run[k] and not _same(run[k], given[k])}
    changed = sorted(k for k, v in given.items()
                     if k not in RESUMABLE | {"resume", "no_progress"} | set(moved)
                     and not (k in saved and _same(saved[k], v)))
    if changed:
        raise ValueError("a resumed run keeps its settings; these differ from the saved run: "
                         + ", ".join(_flag(k) for k in changed))
    _check_train_config(train_cfg)
    tokenizer, train_ids, val_ids, what = _prepare_data(run, train_cfg, tokenizer, moved)
    rng = np.random.default_rng(train_cfg.seed)
    model = LanguageModel(config, rng=rng, device=run["device"])
    task = LMTask(model, tokenizer, train_ids, val_ids, train_cfg.batch_size, train_cfg.bptt,
                  source=run)
    trainer = Trainer(task, train_cfg, out, rng=rng, progress=_progress(args.no_progress))
    try:
        trainer.load_state(tree)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as e:
        what = f"missing {e}" if isinstance(e, KeyError) else str(e)
        raise checkpoint.CheckpointError(f"{path}: cannot resume from this checkpoint "
                                         f"({what})") from None
    done = trainer.finished()
    if done:
        flag = {"max_steps": "--max-steps", "max_time": "--max-time", "epochs": "--epochs"}[done]
        print(f"rnnkit train: {out} has already finished ({_LIMITS[done]} at step "
              f"{trainer.step}); raise {flag} to train further", file=sys.stderr)
        return 0
    print(f"resuming {out} at step {trainer.step} (epoch {trainer.epoch + 1}), "
          f"{trainer.elapsed:.0f} s trained so far")
    return _fit(trainer, task, out)


_LIMITS = {"interrupt": "interrupted (Ctrl-C)", "max_time": "time limit reached",
           "max_steps": "step limit reached", "epochs": "all epochs done"}


def _flag(dest: str) -> str:
    """The command-line flag of a setting."""
    return {"cell": "--model", "num_layers": "--layers"}.get(dest, "--" + dest.replace("_", "-"))


def _same(saved, given) -> bool:
    """Whether a flag given again with --resume matches the saved setting (paths resolved)."""
    if isinstance(given, (str, Path)) and saved is not None:
        return str(saved) == str(given) or Path(str(saved)).resolve() == Path(str(given)).resolve()
    return saved == given


def _compute(model) -> str:
    """How the model computes: device, the matrix products' library and the cells' kernels."""
    cell = model.rnn.cells[0][0]
    kernels = cell._k.__name__.rsplit(".", 1)[-1] if cell.fused_kernels else "numpy"
    kernels = {"fused": "numba", "fused_cuda": "cupy"}.get(kernels, kernels)
    return f"{model.device}: {cell.blas.name} products, {kernels} kernels"


def _check_train_config(cfg: TrainConfig) -> None:
    """Ranges the flags' types already enforce, checked again for configs read from a checkpoint."""
    if cfg.eval_interval < 0 or cfg.max_steps < 0 or cfg.max_time < 0:
        raise ValueError("--eval-interval, --max-steps and --max-time must be >= 0")
    for name in ("batch_size", "bptt", "epochs", "log_interval"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
    if not cfg.lr > 0:
        raise ValueError(f"--lr must be > 0, got {cfg.lr}")


def _fit(trainer: Trainer, task: LMTask, out: Path) -> int:
    summary = trainer.fit()
    best = summary["best_val_loss"]
    print(f"{_LIMITS[summary['stopped_by']]}: step {summary['step']}, {summary['elapsed']:.0f} s "
          f"of training" + (f", best validation loss {best:.4f}" if best != float("inf") else "")
          + f" | checkpoints in {out}")
    if summary["stopped_by"] == "interrupt":
        print(f"rnnkit train: interrupted; saved {out / 'last.npz'} at step {summary['step']}; "
              f"continue with: rnnkit train --resume {out}", file=sys.stderr)
        return EXIT_INTERRUPTED
    print("\nA sample from the model (rnnkit sample " + str(out) + "):\n")
    print(task.sample(np.random.default_rng(trainer.cfg.seed), 500))
    return 0
