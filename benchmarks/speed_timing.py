"""How every GPU speed benchmark here times: CUDA events around single calls, CUDA graphs for the GPU's work alone,
rows taking turns so that they share the GPU's clocks and the host's load."""

from __future__ import annotations

import statistics
import time

import torch
from torch._dynamo.utils import counters


TURN_ROUNDS = 7


def cuda_ms(fn, repeats: int, warmup: int = 3) -> float:
    """Median milliseconds of ``fn`` over ``repeats`` CUDA-event timings after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def compile_s(fn) -> float:
    """Wall time of the first two calls: the first compiles; a second compile would follow where SAM2's first call
    fills its position tables (a dict dynamo guards on), but at 1024² on CUDA sam2 fills them ahead
    (``qsam2_ext.sam2.warm_position_encodings`` does it elsewhere)."""
    torch.cuda.synchronize()
    started = time.perf_counter()
    fn()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - started


def capture_graph(call, calls: int = 1) -> torch.cuda.CUDAGraph:
    """``calls`` calls recorded as one CUDA graph: a replay costs no Python, dispatch or launches, so its time is the
    GPU's work alone (what bounds latency once launch overhead is removed)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture stream, as torch.cuda.graphs asks
        for _ in range(2):
            call()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            call()
    return graph


def graph_ms(call, calls: int = 10, repeats: int = 10) -> float:
    """GPU milliseconds of one call: ``calls`` calls captured as a CUDA graph, the median replay over ``calls``."""
    graph = capture_graph(call, calls)
    return cuda_ms(graph.replay, repeats, warmup=2) / calls


def time_in_turns(calls: dict, repeats: int, rounds: int = TURN_ROUNDS) -> dict:
    """Median time of each call, the calls taking turns over ``rounds`` rounds: rows measured minutes apart differ
    with the GPU's clocks, the host's load and the process's warm-up (the first predictor calls of a process ran
    about 3-5x slower for dozens of calls), rows measured in turns share them. With each median, the frames dynamo
    compiled for the call after its first round: a compiled row recompiles once when it is called again after later
    rows reset dynamo (absorbed by the first round's warm-up); nonzero means its timing was not steady."""
    times: dict = {key: [] for key in calls}
    recompiled = dict.fromkeys(calls, 0)
    for turn in range(rounds):
        for key, call in calls.items():
            before = counters["frames"]["total"]
            times[key].append(cuda_ms(call, repeats, warmup=2))
            recompiled[key] += (counters["frames"]["total"] - before) if turn else 0
    return {key: (statistics.median(t), recompiled[key]) for key, t in times.items()}
