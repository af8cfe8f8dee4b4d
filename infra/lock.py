"""One Baton process per data dir: serve, demo and rebuild hold an exclusive lock on it."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from types import TracebackType


class DataDirBusy(RuntimeError):
    """Another Baton process holds the data dir."""


class DataDirLock:
    """An exclusive flock on DATA_DIR/baton.lock (or `name`), waiting up to `wait` s; freed when the process ends."""

    def __init__(self, data_dir: Path, purpose: str, *, name: str = "baton.lock", wait: float = 0.0) -> None:
        self.path = data_dir / name
        self.purpose = purpose
        self.wait = wait
        self._fd: int | None = None

    def __enter__(self) -> DataDirLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:  # e.g. the previous holder is still stopping
                    time.sleep(0.1)
                    continue
                holder = self.path.read_text().strip() or "another process"
                os.close(fd)
                raise DataDirBusy(
                    f"{self.path.parent} is in use by {holder}; stop it first, or use another BATON_DATA_DIR"
                ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"baton {self.purpose} (pid {os.getpid()})".encode())
        self._fd = fd
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None
