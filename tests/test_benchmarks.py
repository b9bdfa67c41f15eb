"""The benchmarks' bookkeeping, on a tiny model and without PyTorch: the figures a row carries,
the shares of the GEMM peak, and the report's table. Nothing here is timed against anything: a
run of ``run_all.py`` takes ten minutes, and a report that breaks at its end loses all of it."""
import pytest

MACHINE = {"cpu": "test cpu", "cores": 2, "python": "3", "numpy": "2", "torch": "none",
           "numba": True, "blas": "numpy", "blas_large_lm": "packed",
           "packed_min_weights": 1 << 16, "mkl": "not installed", "date": "today"}


@pytest.fixture(scope="module")
def bench_train(import_benchmark):
    return import_benchmark("bench_train")


@pytest.fixture(scope="module")
def run_all(import_benchmark):
    return import_benchmark("run_all")


@pytest.fixture(scope="module")
def row(bench_train):
    r = bench_train.compare("lstm", V=11, E=4, H=8, L=1, B=2, T=3, reps=1, warmup=1,
                            with_torch=False, peak_n=64)
    bench_train.add_shares(r, highest=r["gemm_peak_best_gflops"])
    return r


def test_a_row_has_its_peak_timed_in_turns(row):
    assert row["gemm_peak_best_gflops"] >= row["gemm_peak_gflops"] > 0
    assert row["rnnkit_tok_s"] == pytest.approx(2 * 3 / (row["rnnkit_ms"] / 1e3))


def test_a_row_can_leave_the_peak_out(bench_train):
    r = bench_train.compare("rnn", V=5, E=2, H=4, L=1, B=2, T=2, reps=1, warmup=1,
                            with_torch=False, peak_n=0)
    assert "gemm_peak_gflops" not in r and r["rnnkit_gflops"] > 0


def test_shares_are_the_rates_over_the_peaks(row):
    assert row["peak_share"] == pytest.approx(row["rnnkit_gflops"] / row["gemm_peak_gflops"])
    assert row["done_peak_share"] == pytest.approx(
        row["rnnkit_done_gflops"] / row["gemm_peak_gflops"])
    assert row["peak_share_vs_highest"] == pytest.approx(
        row["rnnkit_gflops"] / row["gemm_peak_best_gflops"])
    assert row["peak_share_vs_highest"] <= row["peak_share"]
    assert "torch_peak_share" not in row                  # no PyTorch in this row


def test_products_done_count_the_lookup(bench_train):
    """A folded first layer does its input products on the V rows of the table."""
    class Rnn:
        def _folds(self, V, N, T):
            return True

    class Model:
        rnn = Rnn()

    full = bench_train.matmul_flops("lstm", 65, 64, 256, 2, 32, 64)
    done = bench_train.performed_flops("lstm", 65, 64, 256, 2, 32, 64, Model())
    assert full - done == 6 * (32 * 64 - 65) * 64 * 4 * 256


def test_the_report_fills_every_column_it_has_figures_for(row, run_all):
    theirs = dict(row, torch_tok_s=1.0, ratio=1.0, ratio_best=1.0, numpy_blas_ratio=1.0,
                  packed_ratio=1.0, torch_peak_share=0.5)
    res = {"machine": MACHINE, "train": [theirs],
           "gemm_peak_highest_gflops": row["gemm_peak_best_gflops"]}
    md = run_all.markdown(res)
    header = next(line for line in md.splitlines() if line.startswith("| cell | H |"))
    cells = next(line for line in md.splitlines() if line.startswith("| lstm | 8 |"))
    named = dict(zip(_fields(header), _fields(cells)))
    assert named["share of GEMM peak: rnnkit"] == f"{row['peak_share']:.0%}"
    assert named["rnnkit, of the highest peak"] == f"{row['peak_share_vs_highest']:.0%}"
    assert named["on MKL"] == "n/a"             # a ratio the row was given no figure for
    assert "timed in turns" in md and "not measured" not in md


def _fields(line):
    return [c.strip() for c in line.strip().strip("|").split("|")]
