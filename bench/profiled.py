"""``python -m bench.profiled SESSION serve --config ...``: the ``admitd`` command with a
pyinstrument profiler that SIGUSR1 switches on and SIGUSR2 switches off (writing the
session to SESSION), so a profile holds the steady state only, not start-up or shutdown.

The profiler samples the main thread's Python stack (every 0.5 ms), where the asyncio loop,
the gRPC handlers and the engine run; gRPC's C-core threads are not in it (their CPU time
is measured apart, per thread, from /proc).
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType

from pyinstrument import Profiler

from admitd._cli import main as admitd_main


def run(session_path: str, argv: list[str]) -> int:
    profiler = Profiler(interval=0.0005, async_mode="disabled")

    def start(signum: int, frame: FrameType | None) -> None:
        if not profiler.is_running:
            profiler.start()

    def stop(signum: int, frame: FrameType | None) -> None:
        if profiler.is_running:
            profiler.stop().save(session_path + ".part")
            os.replace(session_path + ".part", session_path)  # complete once it exists

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    return admitd_main(argv)


if __name__ == "__main__":
    sys.exit(run(sys.argv[1], sys.argv[2:]))
