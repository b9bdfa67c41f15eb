"""A recurrent language model: Embedding -> stacked RNN/LSTM/GRU -> Linear, next-token logits.

    ids (N, T) -> embedding (N, T, E) -> dropout -> rnn (N, T, H) -> dropout -> decoder (N, T, V)

The recipe of Zaremba et al. (2014) and pytorch/examples' word_language_model: dropout on the
embeddings, between recurrent layers and before the decoder; optional weight tying (the decoder
reuses the embedding matrix, Press & Wolf 2017; needs ``embedding_size == hidden_size``).

Where the embeddings get no dropout (none configured, or in eval) the recurrent layer is given
the embedding matrix and the ids (``rnn(weight, ids=ids)``) and looks the rows up itself: for a
character-level vocabulary its first layer then projects the matrix's ``V`` rows instead of
``N T`` looked-up ones, and backward sums the gate gradients by token (``nn/recurrent.py``).

The recurrent layer is stateful: its final state carries into the next batch (truncated BPTT);
``reset_state()`` clears it, ``get_state()`` / ``set_state()`` save and restore it (a checkpoint
keeps it, so a resumed run continues exactly). ``Stepper`` runs the model one token at a time for
sampling, with its own state.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np

from ..blas import for_model, get_blas
from ..nn import GRU, LSTM, RNN, Dropout, Embedding, Linear, Module, SoftmaxCrossEntropy
from ..nn.basic import check_ids

CELLS = {"lstm": LSTM, "gru": GRU, "rnn": RNN}


@dataclass(frozen=True)
class LMConfig:
    """Everything needed to rebuild a LanguageModel (saved with every checkpoint)."""
    vocab_size: int
    cell: str = "lstm"                 # lstm | gru | rnn (tanh)
    embedding_size: int = 128
    hidden_size: int = 512
    num_layers: int = 2
    dropout: float = 0.2
    tie_weights: bool = False
    init_range: float = 0.0            # > 0: every weight ~ U(-r, r) (Zaremba: 0.1); 0: PyTorch's
    dtype: str = "float32"

    def __post_init__(self):
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {sorted(CELLS)}, got {self.cell!r}")
        for name in ("vocab_size", "embedding_size", "hidden_size", "num_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.tie_weights and self.embedding_size != self.hidden_size:
            raise ValueError(f"tie_weights needs embedding_size == hidden_size, got "
                             f"{self.embedding_size} and {self.hidden_size}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LMConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config fields: {sorted(unknown)}")
        return cls(**d)


class LanguageModel(Module):
    """Next-token model; the Module contract plus ``loss``/``backward`` for the Trainer.

    ``forward(ids (N, T)) -> logits (N, T, V)``; ``loss(ids, targets) -> mean cross-entropy``
    (nats per token); ``backward()`` after ``loss`` fills every gradient.
    """

    def __init__(self, config: LMConfig, *, rng=None, device: str = "cpu", blas: str = "auto"):
        """``blas``: which library does the matrix products (``rnnkit.blas``: ``auto`` takes MKL
        when it is installed on an Intel processor, or rnnkit's packed kernel where
        ``blas.for_model`` says it pays); a choice of speed, not part of the model, so not in
        ``config``."""
        super().__init__(config.dtype, device)
        blas = for_model(blas, config.hidden_size, CELLS[config.cell].cell_class.gates, device,
                         self.dtype)
        rng = np.random.default_rng() if rng is None else rng
        c = self.config = config
        kw = dict(dtype=config.dtype, device=device)
        self.embedding = self.add_module("embedding", Embedding(c.vocab_size, c.embedding_size,
                                                                rng=rng, **kw))
        self.drop_in = self.add_module("drop_in", Dropout(c.dropout, rng=rng, **kw))
        self.rnn = self.add_module("rnn", CELLS[c.cell](
            c.embedding_size, c.hidden_size, c.num_layers, dropout=c.dropout if c.num_layers > 1
            else 0.0, stateful=True, rng=rng, blas=blas, **kw))
        self.drop_out = self.add_module("drop_out", Dropout(c.dropout, rng=rng, **kw))
        self.decoder = self.add_module("decoder", Linear(c.hidden_size, c.vocab_size, rng=rng,
                                                         blas=blas, **kw))
        if c.tie_weights:
            # the decoder multiplies by the embedding matrix itself; its gradient is added to
            # the embedding's in backward, and the parameter is listed once
            self.decoder.weight = self.embedding.weight
            self.decoder.share_param("weight", self.embedding.weight, self.decoder.grads[0])
        if c.init_range > 0:
            for p in self.params:
                p[...] = self.xp.asarray(rng.uniform(-c.init_range, c.init_range, p.shape),
                                         dtype=self.dtype)
        self.criterion = SoftmaxCrossEntropy(dtype=config.dtype, device=device)

    # -- the recurrent state carried between batches ---------------------------------------------
    def reset_state(self) -> None:
        self.rnn.reset_state()

    def get_state(self):
        """The carried state: a list of ``(L, N, H)`` arrays (copies), or None."""
        s = self.rnn._state
        return None if s is None else [a.copy() for a in s]

    def set_state(self, state) -> None:
        self.rnn._state = None if state is None else [self.xp.asarray(a, dtype=self.dtype)
                                                      for a in state]

    # -- forward / loss / backward ----------------------------------------------------------------
    def forward(self, ids):
        """``ids (N, T)`` integers -> ``logits (N, T, V)``."""
        if getattr(ids, "ndim", None) != 2:
            raise ValueError(f"LanguageModel: expected ids of shape (N, T), got "
                             f"{getattr(ids, 'shape', type(ids).__name__)}")
        ids = self.xp.asarray(ids)
        # the recurrent output goes into a buffer the model keeps (a fresh 2 MB a step at the
        # H=256 benchmark's size cost ~500 page faults, ~1 ms there); it never leaves the
        # model: the decoder reads it, and backward writes the decoder's input gradient over it
        self._h = self._buffer("h", (*ids.shape, self.config.hidden_size))
        # without dropout on the embeddings, the recurrent layer looks its input up itself
        # (``forward(table, ids=)``): for a small vocabulary its first layer then projects the
        # table's V rows rather than N T looked-up ones, and backward sums by token
        self._lookup = not (self.drop_in.training and self.drop_in.p > 0)
        if self._lookup:
            h, _ = self.rnn(self.embedding.weight, ids=ids, out=self._h)   # (N, T, H)
        else:
            e = self.drop_in(self.embedding(ids))                  # (N, T, E)
            h, _ = self.rnn(e, out=self._h)
        return self.decoder(self.drop_out(h))                      # (N, T, V)

    def loss(self, ids, targets) -> float:
        """Mean cross-entropy of ``targets (N, T)`` under ``forward(ids)``, in nats per token."""
        return self.criterion(self.forward(ids), self.xp.asarray(targets))

    def backward(self) -> None:
        d = self.criterion.backward()                              # (N, T, V)
        d = self.decoder.backward(d, out=self._h)                  # (N, T, H), over the states
        d = self.drop_out.backward(d)
        d, _ = self.rnn.backward(d)                # (N, T, E), or the table's (V, E)
        if self._lookup:
            self.embedding.backward_table(d)
        else:
            self.embedding.backward(self.drop_in.backward(d))
        if self.config.tie_weights:
            self.embedding.grads[0] += self.decoder.grads[0]


class Stepper:
    """The model one token at a time, ``B`` streams at once, for sampling.

    ``step(ids (B,)) -> logits (B, V)``. Built for the cost of one step at batch 1, where every
    call counts:

    - the first layer's input projection of every vocabulary entry, ``E W_ih^T (V, G)``, is
      computed once, so that a step starts with a row lookup instead of a matrix product;
    - every later layer does one matrix product, ``[x, h] [W_ih, W_hh]^T``: its input and its
      state sit side by side in one buffer ``xh (B, D + H)`` (a GRU layer adds a second,
      ``h W_hn^T``, which its candidate needs apart);
    - at batch 1 the weights are kept output-major, ``(G, K)``, so that each product is a
      matrix-vector product in the layout BLAS streams fastest (2x the other way here);
    - the buffers are time-major as the cells' kernels want them (a state is ``(2, B, H)``, slot
      0 the previous state and slot 1 the new one) and reused at every step.

    Weights are fused once at construction; the model itself is left alone (its carried
    training state included).
    """

    def __init__(self, model: LanguageModel, batch_size: int = 1):
        self.model, self.B = model, batch_size
        xp, dt, H = model.xp, model.dtype, model.config.hidden_size
        self._vec = batch_size == 1
        self.cells = [row[0] for row in model.rnn.cells]
        self.fused = [c.fused() for c in self.cells]
        self.S = [[xp.zeros((2, batch_size, H), dtype=dt) for _ in range(c.num_states)]
                  for c in self.cells]
        self._cache = [[xp.empty((1, batch_size, H), dtype=dt) for _ in range(c.cache_slots)]
                       for c in self.cells]
        self._tmp = [c.new_tmp(batch_size) for c in self.cells]
        self._A = [xp.empty((1, batch_size, f.WxT.shape[1]), dtype=dt) for f in self.fused]
        self._blas = self.cells[0].blas                                   # the model's products
        if getattr(self._blas, "packs", False):   # blas='packed' would pack the weights again
            self._blas = get_blas("numpy", xp)    # at every step: NumPy's products here
        self._emb_proj = self._blas.matmul(model.embedding.weight, self.fused[0].WxT)   # (V, G)
        self._Wh0 = self._weight(self.fused[0].WhT)
        # layers >= 1: one product [x, h] [W_ih^T; W_hh^T] (D + H, G) into A, and R = 0; the
        # GRU's candidate needs h W_hn^T apart (r multiplies it), so its columns stay in R
        self._Wcat, self._Whn, self._xh, self._rn = [None], [None], [None], [None]
        for cell, f, tmp in zip(self.cells[1:], self.fused[1:], self._tmp[1:]):
            WhT = f.WhT.copy()
            if cell.gates == 3:
                WhT[:, 2 * H:] = 0
            self._Wcat.append(self._weight(xp.concatenate([f.WxT, WhT])))
            self._Whn.append(self._weight(f.WhT[:, 2 * H:]) if cell.gates == 3 else None)
            self._xh.append(xp.zeros((batch_size, f.WxT.shape[0] + H), dtype=dt))
            self._rn.append(xp.empty((batch_size, H), dtype=dt))
            tmp[0][...] = 0
        self._Wd = self._weight(model.decoder.weight.T)                   # (H, V) or (V, H)
        self._bd = None if model.decoder.bias is None else model.decoder.bias.copy()

    def _weight(self, WT):
        """A copy of ``W^T (K, G)`` stored for ``_mul``: as ``(G, K)`` at batch 1, else as it is."""
        xp = self.model.xp
        return xp.array(WT.T if self._vec else WT, order="C")

    def _mul(self, W, x, out):
        """``out (B, G) = x (B, K) W^T`` for a weight stored by ``_weight``."""
        if self._vec:
            self.model.xp.matmul(W, x[0], out=out[0])              # (G, K) @ (K,): a GEMV
        else:
            self._blas.matmul(x, W, out=out)

    def step(self, ids):
        """Feed one token per stream; return the next-token logits ``(B, V)``."""
        xp, B = self.model.xp, self.B
        if getattr(ids, "shape", None) != (B,):
            raise ValueError(f"Stepper.step: ids must have shape ({B},), got "
                             f"{getattr(ids, 'shape', type(ids).__name__)}")
        # the lookup below would take a negative id from the end (NumPy and CuPy alike) and
        # wrap one past the end round (CuPy): refused here, for about 1 us a step at batch 1
        check_ids(ids, len(self._emb_proj), "Stepper.step")
        L = len(self.cells)
        for k in range(L):
            cell, f, A, S, tmp = self.cells[k], self.fused[k], self._A[k], self.S[k], self._tmp[k]
            if k == 0:
                xp.take(self._emb_proj, ids, axis=0, out=A[0])         # x W_ih^T by lookup
                self._mul(self._Wh0, S[0][0], tmp[0])                  # h W_hh^T
            else:
                xh = self._xh[k]
                self._mul(self._Wcat[k], xh, A[0])                     # [x, h] [W_ih; W_hh]^T
                if cell.gates == 3:                                    # the GRU's h W_hn^T
                    H = cell.hidden_size
                    self._mul(self._Whn[k], S[0][0], self._rn[k])
                    tmp[0][:, 2 * H:] = self._rn[k]
            cell.step_elementwise(f, A, 0, S, 0, self._cache[k], tmp, B)
            h = S[0][1]                                            # (B, H), the new state
            if k + 1 < L:
                self._xh[k + 1][:, :h.shape[1]] = h                # the next layer's input
            if k > 0:
                self._xh[k][:, -h.shape[1]:] = h                   # this layer's next state
            for Sj in S:
                Sj[0] = Sj[1]                                      # the new state becomes the old
        logits = xp.empty((B, self.model.config.vocab_size), dtype=h.dtype)
        self._mul(self._Wd, h, logits)                             # (B, V)
        if self._bd is not None:
            logits += self._bd
        return logits
