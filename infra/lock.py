"""One Baton process per data dir: serve, demo and rebuild hold an exclusive lock on it."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType


class DataDirBusy(RuntimeError):
    """Another Baton process holds the data dir."""


class DataDirLock:
    """An exclusive, non-blocking flock on DATA_DIR/baton.lock, released when the process ends."""

    def __init__(self, data_dir: Path, purpose: str) -> None:
        self.path = data_dir / "baton.lock"
        self.purpose = purpose
        self._fd: int | None = None

    def __enter__(self) -> DataDirLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
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
