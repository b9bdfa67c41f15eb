"""rnnkit.packed (the packed-weights float32 GEMM) and blas="packed", against NumPy."""
from __future__ import annotations

import time

import numpy as np
import pytest

from rnnkit import blas, packed

pytestmark = pytest.mark.skipif(not packed.available(), reason="needs numba (rnnkit[fast])")


def _pair(M, K, N, transposed=False, seed=0):
    rng = np.random.default_rng(seed)
    a = (rng.standard_normal((K, M)).T if transposed else rng.standard_normal((M, K)))
    return a.astype(np.float32), rng.standard_normal((K, N)).astype(np.float32)


def _close(got, want, K):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * max(1.0, np.sqrt(K)))


@pytest.mark.parametrize("M,K,N", [(32, 256, 1024), (13, 7, 45), (1, 1, 1), (8, 33, 32),
                                   (17, 64, 96), (9, 0, 40), (0, 5, 7), (5, 6, 0)])
@pytest.mark.parametrize("transposed", [False, True])
def test_gemm_whole_product(M, K, N, transposed):
    a, b = _pair(M, K, N)
    if transposed:
        a = np.asfortranarray(a)                         # columns contiguous: a view's strides
    panels = packed.pack(b)
    assert panels.shape == (packed.panel_count(N), K, packed.NR)
    out = np.full((M, N), np.nan, dtype=np.float32)
    packed.gemm(a, panels, out, 0, panels.shape[0], 0, M, False,
                np.empty((packed.MR, packed.NR), np.float32))
    _close(out, a @ b, K)


def test_gemm_accumulates_into_a_block_of_rows_and_panels_of_a_strided_output():
    a, b = _pair(21, 19, 100, seed=1)
    big = np.ones((25, 130), dtype=np.float32)
    out = big[2:23, 10:110]                             # rows 130 items apart
    panels = packed.pack(b)
    edge = np.empty((packed.MR, packed.NR), np.float32)
    packed.gemm(a, panels, out, 1, 4, 3, 18, True, edge)   # panels 1-3, rows 3-17
    want = np.ones((21, 100), dtype=np.float32)
    want[3:18, 32:100] += (a @ b)[3:18, 32:100]
    _close(out, want, 19)
    assert np.all(big[:2] == 1) and np.all(big[23:] == 1)
    assert np.all(big[:, :10] == 1) and np.all(big[:, 110:] == 1)


@pytest.mark.parametrize("K", [1, 64, 513])
def test_gemm_in_blocks_of_rows_each_through_every_panel(K):
    """Many rows: blocks of rows go through all panels in turn (a ragged last panel too), and
    a part of the rows starts and ends inside blocks; accumulating or not."""
    M, N = 1000, 70
    a, b = _pair(M, K, N, seed=3)
    mc = max(packed.MR, min(packed.MC_ROWS, packed.MC_BYTES // (4 * K) // packed.MR * packed.MR))
    assert M > 3 * mc                                   # several blocks
    panels = packed.pack(b)
    edge = np.empty((packed.MR, packed.NR), np.float32)
    out = np.full((M, N), np.nan, dtype=np.float32)
    packed.gemm(a, panels, out, 0, panels.shape[0], 0, M, False, edge)
    _close(out, a @ b, K)
    r0, r1 = mc // 2 + 3, M - mc // 2 - 5
    out2 = np.ones((M, N), dtype=np.float32)
    packed.gemm(a, panels, out2, 0, panels.shape[0], r0, r1, True, edge)
    want = np.ones((M, N), dtype=np.float32)
    want[r0:r1] += (a @ b)[r0:r1]
    _close(out2, want, K)


def test_pack_rows_t_is_pack_of_the_scaled_rows_transposed():
    rng = np.random.default_rng(4)
    W = rng.standard_normal((90, 37)).astype(np.float32)
    rows = rng.permutation(90)[:70]
    scale = rng.choice(np.array([0.5, 1.0], np.float32), 70)
    panels = np.full((packed.panel_count(70), 37, packed.NR), np.nan, dtype=np.float32)
    packed.pack_rows_t(W, rows, scale, panels)
    np.testing.assert_array_equal(panels, packed.pack((W[rows] * scale[:, None]).T))
    with pytest.raises(ValueError, match="wrong shape"):
        packed.pack_rows_t(W, rows, scale, panels[:, :36])


def test_pack_rows_is_pack_of_a_block_of_the_rows():
    rng = np.random.default_rng(5)
    W = rng.standard_normal((80, 100)).astype(np.float32)
    rows = rng.permutation(80)
    panels = np.full((packed.panel_count(45), 80, packed.NR), np.nan, dtype=np.float32)
    packed.pack_rows(W, rows, 30, 75, panels)
    np.testing.assert_array_equal(panels, packed.pack(W[rows][:, 30:75]))
    with pytest.raises(ValueError, match="wrong shape"):
        packed.pack_rows(W, rows[:79], 30, 75, panels)


@pytest.mark.parametrize("M,K,N", [(300, 70, 1000), (300, 70, 65), (5, 3, 7), (40, 33, 96)])
def test_matmul_of_rows_packed_straight_from_the_weights(M, K, N):
    """matmul_rows_t: A (W[rows] * scale)^T (a layer's X W_ih^T); matmul_rows: A W[rows] (its
    dZ W_ih); by panels, by rows (65 columns: 3 panels) and on one thread (small), into a
    larger kept buffer of panels."""
    rng = np.random.default_rng(8)
    A = rng.standard_normal((M, K)).astype(np.float32)
    W = rng.standard_normal((N + 5, K)).astype(np.float32)
    rows = rng.permutation(N + 5)[:N]
    scale = rng.choice(np.array([0.5, 1.0], np.float32), N)
    panels = np.full((packed.panel_count(N) + 2, K, packed.NR), np.nan, np.float32)
    out = np.full((M, N), np.nan, np.float32)
    packed.matmul_rows_t(A, W, rows, scale, out, packed.Pool(), panels)
    _close(out, A @ (W[rows] * scale[:, None]).T, K)
    A2 = rng.standard_normal((M, N)).astype(np.float32)                  # (M, N) x W[rows]
    out2 = np.full((M, K), np.nan, np.float32)
    panels2 = np.full((packed.panel_count(K), N, packed.NR), np.nan, np.float32)
    packed.matmul_rows(A2, W, rows, out2, packed.Pool(), panels2)
    _close(out2, A2 @ W[rows], N)


@pytest.mark.parametrize("M,N", [(300, 200), (12, 500), (300, 20)])
def test_matmul_on_two_threads(M, N):
    """Split by panels, and by rows where there is one panel."""
    a, b = _pair(M, 150, N, seed=2)
    out = np.empty((M, N), dtype=np.float32)
    packed.matmul(a, b, out, packed.Pool())
    _close(out, a @ b, 150)


def test_split_covers_the_work_once():
    for M, P in ((300, 7), (300, 1), (5, 1), (16, 2)):
        jobs = packed.split(M, P)
        cells = np.zeros((M, P), dtype=int)
        for p0, p1, r0, r1 in jobs:
            cells[r0:r1, p0:p1] += 1
        assert np.all(cells == 1), (M, P, jobs)


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("with_out", [False, True])
def test_packed_blas_equals_numpy(transposed, with_out):
    """Row-major A by the packed kernel; a transposed A (a weight gradient) as two halves on
    OpenBLAS held at one thread, whose thread count is put back afterwards."""
    pb = blas.get_blas("packed")
    assert isinstance(pb, blas.PackedBlas) and pb.name == "packed"
    a, b = _pair(200, 300, 70, transposed=transposed, seed=3)
    set_threads, get_threads = blas._openblas_functions()
    before = get_threads() if get_threads else None
    out = np.empty((200, 70), dtype=np.float32) if with_out else None
    got = pb.matmul(a, b, out=out)
    _close(got, a @ b, 300)
    if with_out:
        assert got is out
    if get_threads:
        assert get_threads() == before


def test_packed_blas_leaves_what_it_does_not_take_to_numpy():
    pb = blas.get_blas("packed")
    a64, b64 = (x.astype(np.float64) for x in _pair(100, 100, 100))
    np.testing.assert_allclose(pb.matmul(a64, b64), a64 @ b64)
    a, b = _pair(4, 4, 4)
    np.testing.assert_allclose(pb.matmul(a, b), a @ b, rtol=1e-6)
    a, b = _pair(100, 100, 100)
    c = np.zeros((100, 100), dtype=np.float32)
    np.testing.assert_allclose(pb.matmul(c, b, out=c), np.zeros((100, 100)))   # out is a


def test_packed_blas_needs_numba_and_the_cpu(monkeypatch):
    monkeypatch.setattr(packed, "available", lambda: False)
    with pytest.raises(ValueError, match="numba"):
        blas.get_blas("packed")
    monkeypatch.setenv("RNNKIT_BLAS", "packed")
    with pytest.raises(ValueError, match="numba"):
        blas.get_blas("auto")


def test_few_rows_go_to_halves_of_the_columns():
    """ones @ dZ, a bias gradient: two halves of the columns, on OpenBLAS at one thread."""
    pb = blas.get_blas("packed")
    a, b = _pair(1, 2048, 1024, seed=4)
    _close(pb.matmul(a, b), a @ b, 2048)
    a, b = _pair(15, 1000, 300, seed=5)
    _close(pb.matmul(a, b), a @ b, 1000)


@pytest.mark.parametrize("N,kernel", [(65, False), (64, True), (100, True), (130, True)])
def test_a_few_panels_shared_unevenly_go_to_halves_of_the_rows(monkeypatch, N, kernel):
    """A decoder's 65 columns are 2 + 1 panels, the last one mostly padding: OpenBLAS's halves;
    an even count of panels, or more than four, stays on the packed kernel."""
    if blas._openblas_functions()[0] is None:
        pytest.skip("NumPy's OpenBLAS thread count cannot be reached here")
    used = []
    real = packed.matmul
    monkeypatch.setattr(packed, "matmul", lambda *a, **k: used.append(1) or real(*a, **k))
    a, b = _pair(300, 70, N, seed=6)
    _close(blas.get_blas("packed").matmul(a, b), a @ b, 70)
    assert bool(used) == kernel


def _thread_count_functions():
    set_threads, get_threads = blas._openblas_functions()
    if set_threads is None:
        pytest.skip("NumPy's OpenBLAS thread count cannot be reached here")
    return set_threads, get_threads


def test_openblas_held_at_one_thread_during_the_halves_and_put_back(monkeypatch):
    set_threads, get_threads = _thread_count_functions()
    set_threads(2)
    seen = []
    real = np.matmul

    def spy(x, y, out=None):
        seen.append(get_threads())
        return real(x, y, out=out)
    pb = blas.get_blas("packed")
    a, b = _pair(300, 200, 100, transposed=True, seed=6)
    monkeypatch.setattr(np, "matmul", spy)
    pb.matmul(a, b)
    monkeypatch.setattr(np, "matmul", real)
    assert seen == [1, 1] and get_threads() == 2

    def fails(x, y, out=None):
        raise RuntimeError("boom")
    monkeypatch.setattr(np, "matmul", fails)
    with pytest.raises(RuntimeError, match="boom"):
        pb.matmul(a, b)
    monkeypatch.setattr(np, "matmul", real)
    assert get_threads() == 2


def test_thread_count_put_back_when_two_python_threads_multiply_at_once():
    import threading
    set_threads, get_threads = _thread_count_functions()
    set_threads(2)
    pb = blas.get_blas("packed")
    a, b = _pair(300, 200, 100, transposed=True, seed=7)
    errors = []

    def work():
        try:
            for _ in range(50):
                _close(pb.matmul(a, b), a @ b, 200)
        except Exception as e:                                    # pragma: no cover - a bug
            errors.append(e)
    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and get_threads() == 2


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
def test_a_forked_child_gets_its_own_helper_thread():
    """The parent's helper thread does not exist in a forked child (multiprocessing's default
    on Linux): the child must start its own rather than wait for it forever."""
    import os
    pb = blas.get_blas("packed")
    a, b = _pair(300, 200, 300, seed=8)
    pb.matmul(a, b)                                        # the parent's helper exists now
    pid = os.fork()
    if pid == 0:                                           # the child: exit 0 when right
        ok = False
        try:
            ok = np.allclose(pb.matmul(a, b), a @ b, rtol=1e-4, atol=1e-3)
        finally:
            os._exit(0 if ok else 1)
    import time
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, 9)
    pytest.fail("the forked child hung")


def test_pool_takes_at_most_two_jobs():
    with pytest.raises(ValueError, match="two"):
        packed.Pool().run(lambda k: None, [(0,), (1,), (2,)])


@pytest.mark.parametrize("spinning", [True, False])
def test_pool_runs_two_jobs_on_two_threads_and_raises_their_errors(monkeypatch, spinning):
    """The helper takes the first job, this thread the second; both finish before ``run``
    returns; this thread's error comes first, the helper's next, and neither is left over for
    the next run. Also without numba's spin (the threads then wait on queues), and after the
    helper has stopped spinning and gone to sleep."""
    import threading
    from rnnkit import spin
    if not spinning:
        monkeypatch.setattr(spin, "available", lambda: False)
    monkeypatch.setattr(packed, "IDLE_SPINS", 1 << 10)
    pool = packed.Pool()
    seen = {}

    def job(k, fail=()):
        time.sleep(0.01)                                  # the other job runs meanwhile
        seen[k] = threading.get_ident()
        if k in fail:
            raise RuntimeError(f"job {k}")
    for _ in range(3):
        seen.clear()
        pool.run(job, [(0,), (1,)])
        assert set(seen) == {0, 1} and seen[0] != seen[1] == threading.get_ident()
        time.sleep(0.02)                                  # the helper sleeps on its queue
    with pytest.raises(RuntimeError, match="job 1"):
        pool.run(job, [(0, (0, 1)), (1, (0, 1))])
    with pytest.raises(RuntimeError, match="job 0"):
        pool.run(job, [(0, (0,)), (1, ())])
    seen.clear()
    pool.run(job, [(0,), (1,)])                           # nothing left over
    assert set(seen) == {0, 1}


def test_spin_waits_until_a_flag_comes_or_its_spins_run_out():
    from rnnkit import spin
    if not spin.available():
        pytest.skip("needs numba")
    flags = np.zeros(2, dtype=np.int64)
    assert not spin.wait_for(flags, 0, 1, 1000, spin.sched_yield())
    assert spin.post_and_wait(flags, 0, 5, 0, 5, 10, 10, 0)          # its own post: at once
    assert flags[0] == 5
    assert spin.wait_for(flags, 0, 3, -1, 0)


def test_gemm_refuses_operands_of_the_wrong_shape():
    a, b = _pair(16, 8, 40)
    panels = packed.pack(b)
    edge = np.empty((packed.MR, packed.NR), np.float32)
    out = np.empty((16, 40), np.float32)
    with pytest.raises(ValueError, match="wrong"):
        packed.gemm(a[:, :7], panels, out, 0, 2, 0, 16, False, edge)       # K differs
    with pytest.raises(ValueError, match="wrong"):
        packed.gemm(a, panels, out, 0, 3, 0, 16, False, edge)              # past the panels
    with pytest.raises(ValueError, match="wrong"):
        packed.gemm(a, panels, out[:, ::2], 0, 1, 0, 16, False, edge)      # strided columns
