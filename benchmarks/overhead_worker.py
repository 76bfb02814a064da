"""An experiment of the overhead scenario (``benchmarks/overhead.py``): the real worker, with its
embedded engine's threads for batch (prompt) work set to ``COCOON_BENCH_THREADS_BATCH`` after it
loads, where llama-cpp-python's default is the machine's CPU count.

``COCOON_BENCH_THREADS_BATCH=1 cocoon bench --only overhead`` runs every configuration so; the
worker then runs as ``python -m benchmarks.overhead_worker worker --config …``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cocoon.engine.llama_cpp import LlamaCppEngine
from tests.integration.network import Network, Node

ENV = "COCOON_BENCH_THREADS_BATCH"
REPO = Path(__file__).resolve().parents[1]


def threads_batch() -> int | None:
    value = os.environ.get(ENV, "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def set_threads_batch(engine: LlamaCppEngine, n: int) -> None:
    for llama in engine._instances:
        llama._ctx.set_n_threads(llama.n_threads, n)
        llama.n_threads_batch = n
        llama.context_params.n_threads_batch = n


def patch_engine(n: int) -> None:
    start = LlamaCppEngine.start

    async def patched(self: LlamaCppEngine, progress: Any = None) -> None:
        await start(self, progress)
        set_threads_batch(self, n)

    LlamaCppEngine.start = patched  # type: ignore[method-assign]


class ExperimentNetwork(Network):
    """``Network`` whose workers run through this module."""

    def start_worker(self, i: int, extra: Iterable[str] = (), fault: str = "") -> Node:
        name = f"worker-{i}"
        if self.chain is not None:
            extra = [*extra, "--wallet-key", str(self.root / "keys" / f"{name}-wallet.key")]
            extra = [*extra, "--payments-db", str(self.root / f"{name}-payments.db")]
        args = ["worker", "--config", str(self.config), "--name", name, "--key-file", str(self.root / f"{name}.key")]
        env = {
            ENV: os.environ[ENV],
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        }
        node = Node(name, [*args, *extra], self.root, env=env, module="benchmarks.overhead_worker")
        self.nodes[name] = node
        return node


if __name__ == "__main__":
    if (n := threads_batch()) is not None:
        patch_engine(n)
    from cocoon.cli import main

    main()
