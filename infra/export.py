"""`baton export`: an auditor's bundle of the whole history, verifiable offline with `baton verify`.

Layout of the bundle (format baton-export/1):
  events.jsonl        one event per line: its canonical bytes (RFC 8785 of the public body), in store order
  leaves.bin          the notary's leaf hash of every event, 32 bytes each, in the same order
  checkpoints/N.txt   every signed checkpoint (C2SP signed note), N = tree size; the last covers every event
  key.vkey            the checkpoint verifier key (C2SP vkey); pin it with `baton verify --key`
  schemes/V.json      assessment schemes and branch standards as published (copies; the events are the record)
  finalised.json      every AssessmentFinalised record (a copy; the events are the record)
  manifest.json       origin, sizes, and the SHA-256 of every file
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from infra.envelope import EnvelopeCodec, canonical
from infra.helpers import DOCUMENTED, helped, helper_lines
from infra.notary import HELP_FROM, Notary
from infra.store import Store

FORMAT = "baton-export/1"


class Exported(Protocol):
    """What an export reads (infra.bootstrap.Baton has it): the store, its codec and the notary's tree."""

    @property
    def store(self) -> Store: ...
    @property
    def codec(self) -> EnvelopeCodec: ...
    @property
    def notary(self) -> Notary: ...


def export(baton: Exported, out: Path, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Write the bundle; return its manifest."""
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; export into a new directory")
    notary = baton.notary
    size = notary.catch_up(helpers=True)
    notary.sign(size)
    (out / "checkpoints").mkdir()
    (out / "schemes").mkdir()
    finalised: list[dict[str, Any]] = []
    written = 0
    with (out / "events.jsonl").open("wb") as events, (out / "leaves.bin").open("wb") as leaves:
        if size >= HELP_FROM:
            written = _write_helped(baton, out, size, events, leaves, finalised, progress)
        after = notary.view.leaves(written - 1, written)[0][0] if written else 0
        while written < size:
            batch = baton.store.select(after, min(2000, size - written))
            stored = notary.view.leaves(written, written + len(batch))
            for notification, (position, leaf) in zip(batch, stored, strict=True):
                if notification.id != position:
                    raise RuntimeError(f"tree leaf {written} is position {position}; the store has {notification.id}")
                envelope = baton.codec.recorded(notification)
                events.write(canonical(envelope) + b"\n")
                leaves.write(leaf)
                written += 1
                if envelope.name in DOCUMENTED:
                    _copy_documents(out, envelope.body(), finalised)
            after = batch[-1].id
            if progress:
                progress(written, size)
    for checkpoint in notary.view.checkpoints():
        if checkpoint["size"] <= size:
            (out / "checkpoints" / f"{checkpoint['size']}.txt").write_text(checkpoint["note"])
    (out / "key.vkey").write_text(notary.signer.verifier.vkey() + "\n")
    (out / "finalised.json").write_text(json.dumps(finalised, indent=1, ensure_ascii=False) + "\n")
    manifest = {
        "format": FORMAT,
        "origin": notary.origin,
        "tree_size": size,
        "root": notary.view.root(size).hex(),
        "files": {str(p.relative_to(out)): _sha256(p) for p in sorted(out.rglob("*")) if p.is_file()},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def _write_helped(
    baton: Exported,
    out: Path,
    size: int,
    events: BinaryIO,
    leaves: BinaryIO,
    finalised: list[dict[str, Any]],
    progress: Callable[[int, int], None] | None,
) -> int:
    """Write the lines of the tree's events with helper processes on both cores making the canonical bytes (this
    one writes them, with the notary's leaves, in order); return how many were written."""
    notary, written = baton.notary, 0
    top = notary.view.leaves(size - 1, size)[0][0]
    for _, (positions, lines, documents) in helped(baton.store.settings, 0, top, helper_lines):
        stored = notary.view.leaves(written, written + len(positions))
        if [p for p, _ in stored] != positions:
            raise RuntimeError(f"tree leaves from {written} are not the store's positions {positions[:1]}...")
        events.write(lines)
        leaves.write(b"".join(h for _, h in stored))
        written += len(positions)
        for body in documents:
            _copy_documents(out, body, finalised)
        if progress:
            progress(written, size)
    return written


def _sha256(path: Path) -> str:
    """The file's SHA-256, read in 1 MiB pages (events.jsonl runs to gigabytes)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while page := f.read(1 << 20):
            digest.update(page)
    return digest.hexdigest()


def _copy_documents(out: Path, body: dict[str, Any], finalised: list[dict[str, Any]]) -> None:
    kind = f"{body['aggregate']}.{body['type']}"
    if kind in ("assessment_scheme.published", "branch_standard.published"):
        prefix = "assessment" if kind.startswith("assessment") else "branch-standard"
        path = out / "schemes" / f"{prefix}-{body['data']['version']}.json"
        path.write_text(json.dumps(body["data"]["document"], indent=1, ensure_ascii=False) + "\n")
    elif kind == "assessment.finalised":
        finalised.append({"position": body["position"], **body["data"]})
