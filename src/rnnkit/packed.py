"""rnnkit's own float32 matrix product: the right operand packed in panels, a micro-kernel in
LLVM IR (through numba, an optional extra), the work shared by two threads.

    C (M, N) = A (M, K) B (K, N)        (+ C, with accumulate=True)

Why: a recurrent layer's per-step products are small (``h (32, 256) x W_hh^T (256, 1024)``),
and a general BLAS re-packs ``W_hh^T`` at every call and splits such a product badly between
threads. Packed once per sequence, the same product ran at 109-114 GFLOP/s on one core of a
2-core AMD EPYC (Zen 4), as fast as NumPy's OpenBLAS on both cores, and at 185-220 GFLOP/s on
two (``benchmarks/bench_gemm.py``).

- *Panels*: ``pack(B)`` lays ``B`` out as ``(P, K, NR)``, ``P = ceil(N / NR)`` panels of
  ``NR = 32`` columns, each ``K`` rows of 32 contiguous floats (the last panel padded with zero
  columns). A panel's row ``k`` is two 16-float vector loads.
- *The tile*: 8 rows of ``C`` by one panel, accumulated in 16 vector registers (two a row); at
  each ``k``, two vector loads of the panel, and for each row one broadcast of ``A[r, k]`` and two
  fused multiply-adds. Rows left over (``M`` not a multiple of 8) go one at a time. ``A`` may have
  any strides (a transposed view included): its item ``(r, k)`` sits at ``r * rs + k * ks``.
- *Threads*: ``matmul`` cuts the panels (or, with one panel, the rows) in two and runs one half
  on a helper thread (numba releases the GIL), the other on the caller's.

The products round differently from OpenBLAS's (another order of the sums), well within rnnkit's
float32 tolerances; ``tests/test_packed.py`` checks them against NumPy.
"""
from __future__ import annotations

import os
import queue
import threading

import numpy as np

from . import spin as _spin

try:
    import numba
    from llvmlite import ir
    from numba.core import cgutils, types
    from numba.extending import intrinsic
except ImportError:                                   # pragma: no cover - numba is optional
    numba = None

NR, MR = 32, 8                                        # a tile: MR rows by NR columns
SMALL = 1 << 16                                       # fewer multiply-adds: one thread
MC_BYTES = 1 << 16                                    # a block of A's rows: about this much
MC_ROWS = 128                                         # ... and at most this many rows


def available() -> bool:
    """Whether numba (and with it llvmlite) imports."""
    return numba is not None


if numba is not None:
    _jit = numba.njit(nogil=True, cache=True, error_model="numpy")

    def _make_tile(rows: int, accumulate: bool):
        """The intrinsic ``tile(a, rs, ks, panel, c, ldc, K)``: ``C[:rows, :NR] (+)= A[:rows, :K]
        panel``, at addresses ``a``, ``panel``, ``c`` (float32); ``rs``, ``ks``, ``ldc`` in
        items."""

        @intrinsic
        def tile(typingctx, a, rs, ks, panel, c, ldc, K):
            sig = types.void(a, rs, ks, panel, c, ldc, K)

            def codegen(context, builder, sig, args):
                f32, i32, i64 = ir.FloatType(), ir.IntType(32), ir.IntType(64)
                vec = ir.VectorType(f32, 16)
                # fmuladd: a fused multiply-add where the CPU has one, else a multiply and an add
                fma = cgutils.get_or_insert_function(
                    builder.module, ir.FunctionType(vec, [vec, vec, vec]), "llvm.fmuladd.v16f32")
                a_, rs_, ks_, w_, c_, ldc_, K_ = args
                pa, pw, pc = (builder.inttoptr(x, f32.as_pointer()) for x in (a_, w_, c_))

                def const(v):
                    return ir.Constant(i64, v)

                def vector_at(base, offset):
                    return builder.bitcast(builder.gep(base, [offset]), vec.as_pointer())

                acc = [[cgutils.alloca_once_value(builder, ir.Constant(vec, [0.0] * 16))
                        for _ in range(2)] for _ in range(rows)]
                splat = ir.Constant(ir.VectorType(i32, 16), [0] * 16)
                with cgutils.for_range(builder, K_) as loop:
                    k = loop.index
                    row_k = builder.mul(k, const(NR))
                    w = [builder.load(vector_at(pw, builder.add(row_k, const(16 * q))), align=4)
                         for q in range(2)]
                    a_k = builder.mul(k, ks_)
                    for r in range(rows):
                        x = builder.load(builder.gep(pa, [builder.add(
                            builder.mul(const(r), rs_), a_k)]))
                        x = builder.insert_element(ir.Constant(vec, ir.Undefined), x,
                                                   ir.Constant(i32, 0))
                        x = builder.shuffle_vector(x, ir.Constant(vec, ir.Undefined), splat)
                        for q in range(2):
                            builder.store(builder.call(fma, [x, w[q], builder.load(acc[r][q])]),
                                          acc[r][q])
                for r in range(rows):
                    row = builder.mul(const(r), ldc_)
                    for q in range(2):
                        dst = vector_at(pc, builder.add(row, const(16 * q)))
                        v = builder.load(acc[r][q])
                        if accumulate:
                            v = builder.fadd(v, builder.load(dst, align=4))
                        builder.store(v, dst, align=4)
                return context.get_dummy_value()
            return sig, codegen
        return tile

    _tile8, _tile1 = _make_tile(MR, False), _make_tile(1, False)
    _tile8_acc, _tile1_acc = _make_tile(MR, True), _make_tile(1, True)

    @_jit
    def _addr(arr, items):
        """The address ``items`` float32 items into ``arr``'s data, as an int64."""
        return np.int64(arr.ctypes.data) + np.int64(items) * 4

    @_jit
    def pack_into(B, panels, p0, p1):
        """``panels[p0:p1] <- B``'s columns ``[p0 * NR, p1 * NR)`` (``B (K, N)``, any strides;
        zero past column ``N``)."""
        K, N = B.shape
        for p in range(p0, p1):
            full = (p + 1) * NR <= N
            for k in range(K):
                row = panels[p, k]
                if full:
                    for q in range(NR):
                        row[q] = B[k, p * NR + q]
                else:
                    for q in range(NR):
                        j = p * NR + q
                        row[q] = B[k, j] if j < N else 0.0


    @_jit
    def pack_rows_t(W, rows, scale, panels):
        """``panels <- (W[rows] * scale[:, None])^T``: column ``c`` of the packed matrix is row
        ``rows[c]`` of ``W (R, K)`` times ``scale[c]`` (zero past ``len(rows)``). A recurrent
        layer's ``W_hh^T`` (or ``W_ih^T``) in the kernels' gate order and scale, packed straight
        from the parameter."""
        C, K = rows.shape[0], W.shape[1]
        if panels.shape[0] * NR < C or panels.shape[1] != K or panels.shape[2] != NR:
            raise ValueError("packed.pack_rows_t: panels of the wrong shape")
        for p in range(panels.shape[0]):
            for q in range(NR):
                c = p * NR + q
                if c < C:
                    w, sc = W[rows[c]], scale[c]
                    for k in range(K):
                        panels[p, k, q] = w[k] * sc
                else:
                    for k in range(K):
                        panels[p, k, q] = 0.0

    @_jit
    def pack_rows(W, rows, c0, c1, panels):
        """``panels <- W[rows, c0:c1]`` (``W (R, N)``; zero past column ``c1``): the backward
        product's ``W_hh`` in the kernels' gate order, a part's columns, packed straight from
        the parameter."""
        K, C = rows.shape[0], c1 - c0
        if panels.shape[0] * NR < C or panels.shape[1] != K or panels.shape[2] != NR:
            raise ValueError("packed.pack_rows: panels of the wrong shape")
        for p in range(panels.shape[0]):
            for k in range(K):
                w, row = W[rows[k]], panels[p, k]
                for q in range(NR):
                    c = p * NR + q
                    row[q] = w[c0 + c] if c < C else 0.0

    @_jit
    def _tiles(a, rs, ks, K, panels, p, c, ldc, r0, r1, accumulate):
        """Rows ``[r0, r1)`` of ``C``'s columns of panel ``p``, whole tiles then single rows."""
        w = _addr(panels, p * K * NR)
        full = r0 + (r1 - r0) // MR * MR
        for i in range(r0, full, MR):
            if accumulate:
                _tile8_acc(a + i * rs * 4, rs, ks, w, c + i * ldc * 4, ldc, K)
            else:
                _tile8(a + i * rs * 4, rs, ks, w, c + i * ldc * 4, ldc, K)
        for i in range(full, r1):
            if accumulate:
                _tile1_acc(a + i * rs * 4, rs, ks, w, c + i * ldc * 4, ldc, K)
            else:
                _tile1(a + i * rs * 4, rs, ks, w, c + i * ldc * 4, ldc, K)

    @_jit
    def gemm(A, panels, C, p0, p1, r0, r1, accumulate, edge):
        """``C[r0:r1, cols of panels p0..p1] (+)= A[r0:r1] B``: ``A (M, K)`` float32 with any
        strides that are whole items, ``C (M, N)`` rows of contiguous items; a last panel
        reaching past ``N`` goes through ``edge (MR, NR)`` scratch. Nothing allocated."""
        M, K = A.shape
        N = C.shape[1]
        if M == 0 or N == 0 or r0 >= r1 or p0 >= p1:
            return
        if (A.itemsize != 4 or C.itemsize != 4 or A.strides[0] % 4 or A.strides[1] % 4
                or (N > 1 and C.strides[1] != 4) or panels.shape[1] != K
                or panels.shape[2] != NR or p1 > panels.shape[0] or r1 > M or C.shape[0] < M
                or edge.shape[0] < MR or edge.shape[1] < NR):
            raise ValueError("packed.gemm: operands of the wrong type or shape")
        rs, ks = np.int64(A.strides[0] // 4), np.int64(A.strides[1] // 4)
        ldc = np.int64(C.strides[0] // 4)
        a, c = _addr(A, 0), _addr(C, 0)
        if ks > rs and p1 * NR <= N:
            # a transposed A (a weight gradient, dZ^T X): a tile's rows share each cache line of
            # A, which is large; so each tile of rows goes through every panel while it is in
            # cache, rather than the whole of A through each panel
            for i0 in range(r0, r1, MR):
                i1 = min(i0 + MR, r1)
                for p in range(p0, p1):
                    _tiles(a, rs, ks, K, panels, p, c + p * NR * 4, ldc, i0, i1, accumulate)
            return
        # blocks of rows, each through every panel: the block of A stays in cache, and C is
        # written a few rows (pages) at a time, not a strip down all of them per panel
        mc = max(MR, min(MC_ROWS, (MC_BYTES // (4 * max(K, 1))) // MR * MR))
        for b0 in range(r0, r1, mc):
            b1 = min(b0 + mc, r1)
            for p in range(p0, p1):
                n0 = p * NR
                if n0 + NR <= N:
                    _tiles(a, rs, ks, K, panels, p, c + n0 * 4, ldc, b0, b1, accumulate)
                    continue
                for i0 in range(b0, b1, MR):                       # the ragged last panel
                    i1 = min(i0 + MR, b1)
                    _tiles(a + i0 * rs * 4, rs, ks, K, panels, p, _addr(edge, 0), np.int64(NR),
                           0, i1 - i0, False)
                    for i in range(i0, i1):
                        for j in range(n0, N):
                            v = edge[i - i0, j - n0]
                            C[i, j] = C[i, j] + v if accumulate else v


    @_jit
    def _pack_and_gemm(A, B, panels, C, p0, p1, r0, r1, accumulate, edge, pack):
        """One thread's share of ``matmul``: pack its panels (when ``pack``), multiply."""
        if pack:
            pack_into(B, panels, p0, p1)
        gemm(A, panels, C, p0, p1, r0, r1, accumulate, edge)

    @_jit
    def _pack_rows_t_and_gemm(A, W, rows, scale, panels, C, p0, p1, r0, r1, edge, pack):
        """One thread's share of ``matmul_rows_t``: pack its panels (when ``pack``), multiply."""
        if pack:
            c1 = min(p1 * NR, rows.shape[0])
            pack_rows_t(W, rows[p0 * NR:c1], scale[p0 * NR:c1], panels[p0:p1])
        gemm(A, panels, C, p0, p1, r0, r1, False, edge)

    @_jit
    def _pack_rows_and_gemm(A, W, rows, panels, C, p0, p1, r0, r1, edge, pack):
        """One thread's share of ``matmul_rows``: pack its panels (when ``pack``), multiply."""
        if pack:
            pack_rows(W, rows, p0 * NR, min(p1 * NR, W.shape[1]), panels[p0:p1])
        gemm(A, panels, C, p0, p1, r0, r1, False, edge)

    @_jit
    def gemm_two(A0, panels0, A1, panels1, C, r0, r1, edge):
        """``C[r0:r1] = A0[r0:r1] B0 + A1[r0:r1] B1``, ``B0``, ``B1`` packed in ``panels0``,
        ``panels1`` (as many panels each, of ``C``'s columns): a product whose depth comes in
        two blocks, as ``dX = dZ W_ih`` where each thread's units have a block of ``dZ``."""
        P = panels0.shape[0]
        gemm(A0, panels0, C, 0, P, r0, r1, False, edge)
        gemm(A1, panels1, C, 0, P, r0, r1, True, edge)


def panel_count(N: int) -> int:
    return -(-N // NR)


def pack(B: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``B (K, N)`` float32 as panels ``(ceil(N / NR), K, NR)`` (into ``out`` when given)."""
    K, N = B.shape
    if out is None:
        out = np.empty((panel_count(N), K, NR), dtype=np.float32)
    pack_into(B, out, 0, out.shape[0])
    return out


def split(M: int, P: int, parts: int = 2, by_panels: bool = True) -> list:
    """``[(p0, p1, r0, r1), ...]``: the work cut in ``parts``, by panels where there are enough
    (and ``by_panels``), else by rows (in whole tiles where the rows allow)."""
    if P >= parts and (by_panels or M < parts * MR):
        cuts = [round(k * P / parts) for k in range(parts + 1)]
        return [(cuts[k], cuts[k + 1], 0, M) for k in range(parts)]
    tiles = -(-M // MR)
    cuts = [min(M, round(k * tiles / parts) * MR) for k in range(parts + 1)]
    cuts[-1] = M
    return [(0, P, cuts[k], cuts[k + 1]) for k in range(parts) if cuts[k] < cuts[k + 1]]


POSTED, DONE = 0, 1                 # a Pool's flags: the last job posted, the last one done
IDLE_SPINS = 1 << 21                # the helper spins this long for the next job (~2 ms here)
GRACE = 1 << 14                     # ... and this much more (~15 us) before it takes the GIL


class Pool:
    """Two threads for two jobs: the caller's and a helper's (one pool per ``PackedBlas``).

    A training step hands the helper fifteen or so jobs, a few milliseconds apart, and handing
    a job to a thread asleep on a queue took 35-200 us each on the 2-core machine of the
    benchmarks. So between jobs the helper spins (``rnnkit.spin``) for about 2 ms before it
    sleeps on its queue, and the handover keeps the two threads from waiting for each other on
    Python's GIL (which puts the waiting one to sleep, as costly to wake): the helper, told of a
    job, spins a little longer while the caller goes into its own job's compiled code, which
    lets the GIL go, and says it is done from inside its next spin, not from Python. A run of
    two 170 us jobs, 0-1 ms of Python apart, took 15-45 us more than one job (medians) this
    way, against 80-160 us on the thread pool it replaced. Without numba the two threads wait
    on queues instead."""

    def __init__(self):
        self._lock = threading.Lock()          # one run at a time
        self._state = None                     # (pid, flags, jobs, done, error), made on use
        self._seq = 0

    def _helper(self):
        """The helper's thread and what it shares, made on first use, and made again in a
        forked child (where the parent's thread does not exist)."""
        if self._state is None or self._state[0] != os.getpid():
            flags = np.zeros(2, dtype=np.int64)
            jobs, done, error = queue.SimpleQueue(), queue.SimpleQueue(), [None]
            threading.Thread(target=_serve, args=(flags, jobs, done, error), daemon=True,
                             name="rnnkit-gemm").start()
            self._state = (os.getpid(), flags, jobs, done, error)
            self._seq = 0
        return self._state

    def __del__(self):
        state = getattr(self, "_state", None)
        try:
            if state is not None and state[0] == os.getpid():
                state[2].put(None)                                # the helper returns
        except (AttributeError, TypeError):   # at the interpreter's exit, with modules gone
            pass

    def run(self, fn, jobs):
        """``fn(*jobs[0])`` on the helper thread and ``fn(*jobs[1])`` on this one, side by side
        (or the one job here); returns when both have. The jobs may wait for each other (the
        loop over time's barrier), so there are never more than two. This thread's error comes
        first, then the helper's."""
        if len(jobs) > 2:
            raise ValueError(f"Pool.run takes at most two jobs, got {len(jobs)}")
        if len(jobs) == 1:
            fn(*jobs[0])
            return
        with self._lock:
            _, flags, queued, done, error = self._helper()
            self._seq += 1
            seq = self._seq
            queued.put((fn, jobs[0], seq))
            flags[POSTED] = seq
            try:
                fn(*jobs[1])
            finally:
                if _spin.available():
                    _spin.wait_for(flags, DONE, seq, -1, _spin.sched_yield())
                else:
                    done.get()
                err, error[0] = error[0], None
            if err is not None:
                raise err


def _serve(flags, jobs, done, error):
    """The helper's thread: take a job, run it, say it is done; between jobs spin a while for
    the next (with numba), then sleep on the queue. Keeps no reference to its ``Pool``, which
    stops it (a ``None`` job) when it goes. (A job posted while the helper sleeps wakes it
    through the queue.)"""
    finished = 0
    while True:
        if _spin.available():               # done, from inside the spin: the GIL is let go
            _spin.post_and_wait(flags, DONE, finished, POSTED, finished + 1, IDLE_SPINS, GRACE,
                                _spin.sched_yield())
        elif finished:
            done.put(finished)
        job = jobs.get()
        if job is None:
            return
        fn, args, seq = job
        try:
            fn(*args)
        except BaseException as e:          # the caller raises it
            error[0] = e
        finished = seq


def matmul(A, B, out, pool: Pool, accumulate: bool = False):
    """``out (+)= A B`` for 2-D float32 arrays (``out`` rows contiguous, apart from ``A`` and
    ``B``): ``B`` packed, then the tiles shared by two threads when the product is not small;
    split by panels, each thread packs its own."""
    M, K = A.shape
    N = B.shape[1]
    panels = np.empty((panel_count(N), K, NR), dtype=np.float32)
    _shared(M, K, N, panels, pool, _pack_and_gemm,
            lambda job, edge, pack: (A, B, panels, out, *job, accumulate, edge, pack))
    return out


def matmul_rows_t(A, W, rows, scale, out, pool: Pool, panels):
    """``out = A (W[rows] * scale[:, None])^T`` (``A (M, K)``, ``W (R, K)``, ``rows``,
    ``scale (N,)``), packing the right operand straight from ``W`` into ``panels`` (at least
    ``(panel_count(N), K, NR)``, a caller's buffer): a recurrent layer's input projection
    ``X W_ih^T``, its weights in the kernels' gate order and scale."""
    M, K = A.shape
    N = rows.shape[0]
    panels = panels[:panel_count(N)]
    _shared(M, K, N, panels, pool, _pack_rows_t_and_gemm,
            lambda job, edge, pack: (A, W, rows, scale, panels, out, *job, edge, pack))
    return out


def matmul_rows(A, W, rows, out, pool: Pool, panels):
    """``out = A W[rows]`` (``A (M, K)``, ``rows (K,)``, ``W (R, N)``), packing ``W[rows]``
    straight from ``W`` into ``panels`` (at least ``(panel_count(N), K, NR)``): a recurrent
    layer's ``dX = dZ W_ih``, ``dZ`` in the kernels' gate order."""
    M, K = A.shape
    N = W.shape[1]
    panels = panels[:panel_count(N)]
    _shared(M, K, N, panels, pool, _pack_rows_and_gemm,
            lambda job, edge, pack: (A, W, rows, panels, out, *job, edge, pack))
    return out


def _shared(M, K, N, panels, pool, job_fn, args):
    """Run ``job_fn(*args((p0, p1, r0, r1), edge, pack))`` on one thread for a small product,
    else on two: by panels, each thread packing its own, where they split evenly enough
    (an even count or more than four); else by rows, the panels packed first, here."""
    P = panel_count(N)
    edges = [np.empty((MR, NR), dtype=np.float32) for _ in range(2)]
    if M * K * N < SMALL:
        job_fn(*args((0, P, 0, M), edges[0], True))
        return
    jobs = split(M, P, by_panels=P % 2 == 0 or P > 4)
    if not jobs:                                          # no rows or no columns
        return
    by_panels = jobs[0][1] < P
    if not by_panels:
        job_fn(*args((0, P, 0, 0), edges[0], True))      # pack every panel, multiply nothing
    pool.run(job_fn, [args(job, e, by_panels) for job, e in zip(jobs, edges)])
