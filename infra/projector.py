"""`baton projector`: the read models and the notary in a process of their own, beside `baton serve`.

An entry point: it builds everything with the composition root (infra.bootstrap) and runs its projector part.
`baton serve` starts it through infra.supervisor.ProjectorProcess and stops it by closing its stdin.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from infra.bootstrap import PROJECTOR, Runtime, bootstrap
from infra.heap import freeze_startup_heap, log_long_pauses
from infra.settings import Settings


async def run_projector(settings: Settings) -> None:
    """Run the read models and the notary until stdin closes or SIGTERM comes (as `baton projector`)."""
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    stdin = sys.stdin.fileno()

    def read_stdin() -> None:
        try:
            closed = not os.read(stdin, 4096)
        except OSError:
            closed = True
        if closed:  # serve closed it, or died
            loop.remove_reader(stdin)
            done.set()

    loop.add_reader(stdin, read_stdin)
    for stop in (signal.SIGTERM, signal.SIGINT):  # SIGINT: a terminal's Ctrl-C reaches the whole process group
        loop.add_signal_handler(stop, done.set)
    baton = bootstrap(settings)
    runtime = Runtime(baton, part=PROJECTOR, watch=False)
    log_long_pauses()
    try:
        await runtime.start()
        freeze_startup_heap()
        await done.wait()
    finally:
        await runtime.stop()
        baton.close()
