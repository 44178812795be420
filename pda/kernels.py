"""Jupyter kernels kept warm across the notebooks of a study, so each run skips kernel start and imports.

Starting a kernel and importing torch, transformers and pda cost about 9 s per run here, a tenth of a
short run. ``WarmKernel`` starts one kernel (in ``notebooks/``, like papermill would) and hands its
manager to papermill for every notebook; nbclient leaves a kernel it does not own running. Before each
notebook the kernel's namespace is cleared (``%reset -f``) and its execution counter restarts at 1, so
no variable of one run is seen by the next and the executed notebook reads as if from a fresh kernel;
imported modules stay loaded, which is the point. A kernel that died (e.g. out of memory) is replaced.
A serial study holds one ``WarmKernel``; each Dask worker of a parallel study holds a ``KernelPool``
(``pda.scaleout.WarmKernelPlugin``), one kernel per run it executes at once.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


# Dask's nanny sets this for its workers (give freed memory back to the OS at once, see
# ``distributed.nanny.pre-spawn-environ``); a kernel started from a worker would inherit it, and torch
# then pays page faults on every step: a training step took 0.74 s instead of 0.50 s here.
NOT_FOR_KERNELS = ("MALLOC_TRIM_THRESHOLD_",)

# glibc malloc settings for the kernels that train: keep freed memory in the process's heap for the
# next step instead of returning it to the OS and page-faulting fresh zeroed pages back in. The
# word-embedding gradient alone (30522 x 384 fp32, 47 MB, made anew by every backward) is above the
# largest mmap threshold glibc allows (32 MB), so only ``MALLOC_MMAP_MAX_=0`` keeps it off mmap.
# Measured here (1 thread, bf16, MRPC): a teacher's training step 7 % faster, a 90 %-pruned model's
# 16 %, a whole run 6-9 %; the numbers it computes are the same. Other C libraries ignore these.
KERNEL_MALLOC = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(16 << 30), "MALLOC_TOP_PAD_": str(256 << 20)}


def kernel_environment() -> dict[str, str]:
    """This process's environment for a kernel it starts, less what only suits a Dask worker itself, plus
    ``KERNEL_MALLOC`` where the environment does not set those variables itself."""
    env = {k: v for k, v in os.environ.items() if k not in NOT_FOR_KERNELS}
    return {**KERNEL_MALLOC, **env}


class WarmKernel:
    """One kernel of ``kernel_name`` started in ``cwd``, reused until ``close``."""

    def __init__(self, kernel_name: str, cwd: Path) -> None:
        self.kernel_name, self.cwd = kernel_name, Path(cwd)
        self._km: Any = None

    def manager(self) -> Any:
        """The kernel manager to pass to papermill (``km=``): started, and alive."""
        from jupyter_client.manager import KernelManager

        if self._km is not None and not self._km.is_alive():
            self.close()
        if self._km is None:
            # encrypted kernel traffic where the kernel supports it (ours does); else ipykernel warns at each start
            km = KernelManager(kernel_name=self.kernel_name, transport_encryption="auto")
            km.start_kernel(cwd=str(self.cwd), env=kernel_environment())
            self._km = km
        self._clear()
        return self._km

    def _clear(self) -> None:
        """Forget the previous notebook's variables, start a new history session and restart the execution counter
        (silently: no count used)."""
        kc = self._km.client()
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=60)
            # A new history session too: a restarted counter in the old one collides with the lines
            # already stored there ("Session/line number was not unique", printed to the notebook).
            reply = kc.execute_interactive("get_ipython().run_line_magic('reset', '-f')\n"
                                           "get_ipython().history_manager.reset(new_session=True)\n"
                                           "get_ipython().execution_count = 1", silent=True, timeout=60)
            if reply["content"]["status"] != "ok":
                raise RuntimeError(f"could not clear the warm kernel: {reply['content']}")
        finally:
            kc.stop_channels()

    def close(self) -> None:
        if self._km is not None:
            try:
                self._km.shutdown_kernel(now=True)
            finally:
                self._km = None

    def __enter__(self) -> "WarmKernel":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class KernelPool:
    """Warm kernels for a process that executes several notebooks at once (a Dask worker with more than one
    thread): each notebook borrows an idle kernel, or a new one if all are busy, and returns it when done.

    A worker that runs one notebook at a time keeps one kernel, warm across all its runs.
    """

    def __init__(self, kernel_name: str, cwd: Path, factory: Callable[[str, Path], WarmKernel] = WarmKernel) -> None:
        self.kernel_name, self.cwd, self._factory = kernel_name, Path(cwd), factory
        self._idle: list[WarmKernel] = []
        self._all: list[WarmKernel] = []
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def borrow(self) -> Iterator[WarmKernel]:
        with self._lock:
            if self._idle:
                kernel = self._idle.pop()
            else:
                kernel = self._factory(self.kernel_name, self.cwd)
                self._all.append(kernel)
        try:
            yield kernel
        finally:
            with self._lock:
                self._idle.append(kernel)

    def close(self) -> None:
        with self._lock:
            kernels, self._all, self._idle = self._all, [], []
        for kernel in kernels:
            kernel.close()
