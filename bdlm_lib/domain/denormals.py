"""Flush denormal floats to zero on every thread torch computes with on the CPU.

Why: as SASRec's and BERT4Rec's attention sharpens during training, its small probabilities
underflow into denormals, which x86 cores compute far more slowly (the epochs keep getting slower
as training goes on). `torch.set_flush_denormal` sets the flag of the calling thread only.
torch's OpenMP worker threads already exist and keep their own flag, so with it alone the epochs
still slow down. Training in a fresh thread that sets the flag first would give that thread a
flushing worker team, but a second team means more OpenMP threads than cores, which makes every
epoch slower from the start (libgomp cutting its spin-waiting, it seems: with
OMP_WAIT_POLICY=PASSIVE the main thread is as slow). So `denormals_flushed` sets
the flag on the calling thread's existing team instead: it opens one OpenMP parallel region through
libgomp's own entry point, whose body (a ctypes callback) sets each thread's flag. On the way out
each thread gets back the setting it had. benchmarks/bench_denormals.py times each way.
"""
from __future__ import annotations

import ctypes
import os
import threading
from contextlib import contextmanager
from functools import lru_cache
from typing import Callable

import torch

_TINY = 5e-324          # the smallest double denormal: doubled, it is 0 exactly when the thread flushes
_BODY = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


def flushing() -> bool:
    """Whether the calling thread flushes denormals (torch has no getter for the flag)."""
    return _TINY * 2 == 0.0


@lru_cache(maxsize=1)
def _libgomp():
    """The GNU OpenMP runtime torch computes with, or None (another runtime, no /proc). Other
    packages may load their own libgomp (scikit-learn does), so torch's own copy comes first."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as f:
            paths = {line.split()[-1] for line in f if "/libgomp" in line}
    except OSError:
        return None
    torch_dir = os.path.dirname(torch.__file__) + os.sep
    paths = {p for p in paths if p.startswith(torch_dir)} or paths
    if len(paths) != 1:
        return None
    lib = ctypes.CDLL(paths.pop())
    lib.GOMP_parallel.argtypes = [_BODY, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
    lib.GOMP_parallel.restype = None
    return lib


def on_each_thread(fn: Callable[[], object]) -> dict[int, object]:
    """Run `fn()` once on each thread of the calling thread's OpenMP team, the caller included
    (the team torch's parallel ops use: libgomp keeps one pool per calling thread). Returns
    {native thread id: result}. Without GNU OpenMP it runs on the caller only."""
    out: dict[int, object] = {}

    def body(_):
        # each thread holds the GIL here (ctypes takes it for the callback), so no lock is needed;
        # exceptions would be lost in a callback: fn must not raise
        out[threading.get_native_id()] = fn()

    lib = _libgomp()
    if lib is None:
        body(None)
    else:
        cb = _BODY(body)                           # kept alive until the region ends
        lib.GOMP_parallel(cb, None, torch.get_num_threads(), 0)
    return out


def _set(on: bool) -> bool:
    before = flushing()
    torch.set_flush_denormal(on)                   # False (and no change) where the CPU cannot
    return before


@contextmanager
def denormals_flushed(on: bool = True):
    """Within the block, the calling thread and its OpenMP workers flush denormals to zero;
    afterwards each has its own setting back. `on=False` changes nothing."""
    if not on:
        yield
        return
    before = on_each_thread(lambda: _set(True))
    caller = before.get(threading.get_native_id(), False)
    try:
        yield
    finally:
        on_each_thread(lambda: _set(bool(before.get(threading.get_native_id(), caller))))
