"""Fixes to third-party libraries, each applied explicitly at start-up and only to the version it was written for."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

import structlog

log = structlog.get_logger("baton.patches")


class UnexpectedVersion(RuntimeError):
    """A patch was asked for on a version of its library it was not written (and tested) for."""


def installed(distribution: str) -> str | None:
    """The installed version of a distribution, None when it is not installed."""
    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def require_version(distribution: str, written_for: str, patch: str, *, strict: bool = True) -> bool:
    """Whether `distribution` is the version `patch` was written for; if not, UnexpectedVersion (strict) or a
    warning and False (the caller then leaves the library as it is)."""
    found = installed(distribution)
    if found == written_for:
        return True
    message = (
        f"{patch} was written for {distribution} {written_for} (pinned in pyproject.toml); {found or 'none'} is "
        f"installed: check the patch against that version, then update the version it names"
    )
    if strict:
        raise UnexpectedVersion(message)
    log.warning(
        "patch_version_mismatch", distribution=distribution, written_for=written_for, installed=found, patch=patch
    )
    return False
