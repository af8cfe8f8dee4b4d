"""Starting the projector process beside `baton serve`'s HTTP and command side, and keeping it running.

One interpreter cannot run HTTP requests, the intake and every consumer at once on more than one core; the
read models and the notary follow BATON_EVENTS and the store, share nothing in memory with the command side,
and so run in a second process (infra/projector.py). `baton serve` starts it (`baton projector`), restarts it
if it dies, and stops it with itself; the projector stops when its stdin closes, so it never outlives a killed
server.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from pathlib import Path
from typing import Any

import structlog

from infra.settings import Settings

log = structlog.get_logger("baton.projector")

RESTART_DELAY = 1.0
STOP_TIMEOUT = 15.0


def child_environment(settings: Settings, nats_url: str, login: dict[str, Any]) -> dict[str, str]:
    """The projector's environment: this process's, with every setting spelled out and NATS pointed at ours."""
    env = dict(os.environ)
    for name, value in settings.model_dump().items():
        key = f"BATON_{name.upper()}"
        if value is None:
            env.pop(key, None)
        else:
            env[key] = str(value)
    env["BATON_NATS_URL"] = nats_url
    if login:
        env["BATON_NATS_USER"], env["BATON_NATS_PASSWORD"] = login["user"], login["password"]
    env["BATON_DATA_DIR"] = str(settings.data_dir.resolve())
    return env


class ProjectorProcess:
    """Starts `baton projector` beside this process, restarts it when it exits, stops it on stop().

    Its output goes where this process's goes, or appended to `log`.
    """

    def __init__(self, settings: Settings, nats_url: str, login: dict[str, Any], log: Path | None = None) -> None:
        self.env = child_environment(settings, nats_url, login)
        self.log = log
        self.process: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name="projector")

    async def _supervise(self) -> None:
        while not self._stopping:
            with contextlib.ExitStack() as files:
                output = files.enter_context(self.log.open("ab")) if self.log is not None else None
                self.process = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "infra.cli",
                    "projector",
                    stdin=asyncio.subprocess.PIPE,
                    stdout=output,
                    stderr=output,
                    env=self.env,
                )
            log.info("projector_started", pid=self.process.pid)
            code = await self.process.wait()
            if self._stopping:
                return
            self.restarts += 1
            log.warning("projector_exited", returncode=code, restarts=self.restarts)
            await asyncio.sleep(RESTART_DELAY)

    async def stop(self) -> None:
        """Close the projector's stdin (it stops and exits), waiting up to STOP_TIMEOUT before killing it."""
        self._stopping = True
        process = self.process
        if process is not None and process.returncode is None:
            assert process.stdin is not None
            process.stdin.close()
            try:
                async with asyncio.timeout(STOP_TIMEOUT):
                    await process.wait()
            except TimeoutError:
                log.warning("projector_killed", pid=process.pid)
                process.kill()
                await process.wait()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def health(self) -> dict[str, Any]:
        return {"running": self.running, "pid": self.process.pid if self.process else None, "restarts": self.restarts}
