"""benchmarks/gpu_timeline.py: the GPU's overlap and the host's waits, from profiler records."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def timeline():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location("gpu_timeline",
                                                      ROOT / "benchmarks" / "gpu_timeline.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return module


def test_overlap_of_kernels_is_the_sweep_by_hand(timeline):
    # 0-5: one; 5-10: two; 10-15: one; 15-20: none; 20-30: one; 22-24: three, 24-26: two.
    intervals = [(0, 10), (5, 15), (20, 30), (22, 26), (22, 24), (7, 7)]
    covered, mean, levels = timeline.overlap(intervals)
    assert covered == 25  # 0-15 and 20-30; the empty interval adds nothing
    assert mean == pytest.approx((5 + 10 + 5 + 2 + 6 + 4 + 4) / 25)
    assert levels == {"1": 5 + 5 + 2 + 4, "2": 5 + 2, "3-4": 2, "5+": 0}
    assert timeline.overlap([]) == (0.0, 0.0, {"1": 0.0, "2": 0.0, "3-4": 0.0, "5+": 0.0})


def test_host_calls_split_waits_from_launches_per_thread(timeline):
    records = [(1, "cudaStreamSynchronize", 5.0), (1, "cudaGraphLaunch", 2.0),
               (2, "cudaMemcpyAsync", 1.0), (2, "cudaMemcpy", 4.0), (1, "aten::mm", 9.0),
               (2, "cudaDeviceSynchronize", 3.0)]
    assert timeline.host_calls(records) == {1: {"wait": 5.0, "launch": 2.0},
                                            2: {"wait": 7.0, "launch": 1.0}}
