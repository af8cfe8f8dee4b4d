"""`baton verify DIR`: check an export offline, with no server and nothing but the bundle (and a pinned key).

It checks every checkpoint's signature, recomputes the Merkle tree from the events at every checkpoint,
compares every event with the leaf the notary recorded for it (so it can name the first altered, missing
or reordered position), replays the scoring of every finalised assessment and recounts every finalised monthly
ranking (its figures' digest).

Exit codes:
  0  the bundle is intact
  2  the bundle is unreadable or incomplete (a file is missing or malformed)
  3  a checkpoint's signature does not verify with the key (or the key is not the pinned one)
  4  the events do not match the signed tree: an event altered, missing, reordered or unsigned
  5  a finalised score does not match the scoring replayed from the events, a finalised ranking's figures do not
     match a recount, or a voiding names no finalisation

A voided finalisation is replayed like any other (it was recorded, so it must be true of its history); a
standing one made before its year could be finalised is named in the report's notes.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from audit import canonical
from audit.merkle import EMPTY_ROOT, leaf_hash, node_hash
from audit.note import Checkpoint, NoteError, Verifier
from audit.ranking import rank
from audit.scoring import score
from domain.assessment import Assessment, AssessmentScheme, Scheme
from domain.common import digest
from domain.errors import DomainError
from domain.events import name_of
from domain.ranking import MonthlyRanking
from infra.envelope import EventTypes

FINALISED, VOIDED, PUBLISHED = (
    name_of(e) for e in (Assessment.Finalised, Assessment.FinalisationVoided, AssessmentScheme.Published)
)
RANKED = name_of(MonthlyRanking.Finalised)
ASSESSED = frozenset({FINALISED, VOIDED, PUBLISHED, RANKED})
OK, UNREADABLE, SIGNATURE, EVENTS, SCORES = 0, 2, 3, 4, 5


class Failed(Exception):
    """Verification stops here."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Report:
    """What verification found."""

    code: int = OK
    events: int = 0
    checkpoints: int = 0
    finalised: int = 0
    voided: int = 0
    rankings: int = 0
    key: str = ""
    pinned: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.code == OK


class Roots:
    """Merkle roots at chosen tree sizes, from leaf hashes added one at a time, in O(log n) memory."""

    def __init__(self, sizes: set[int]) -> None:
        self.sizes = sizes
        self.count = 0
        self.stack: list[tuple[int, bytes]] = []  # (height, hash) of full subtrees along the right border
        self.roots: dict[int, bytes] = {0: EMPTY_ROOT} if 0 in sizes else {}

    def add(self, leaf: bytes) -> None:
        self.count += 1
        height, h = 0, leaf
        stack = self.stack
        while stack and stack[-1][0] == height:
            _, left = stack.pop()
            h, height = node_hash(left, h), height + 1
        stack.append((height, h))
        if self.count in self.sizes:
            root = stack[-1][1]
            for _, left in reversed(stack[:-1]):
                root = node_hash(left, root)
            self.roots[self.count] = root


def roots_at(leaves: Iterable[bytes], sizes: set[int]) -> dict[int, bytes]:
    """Merkle roots at the given tree sizes, from a stream of leaf hashes, in O(log n) memory."""
    roots = Roots(sizes)
    for leaf in leaves:
        roots.add(leaf)
    return roots.roots


class Leaves:
    """leaves.bin: 32-byte leaf hashes read in pages as they are needed, never all at once."""

    PAGE = 32 * 4096

    def __init__(self, path: Path) -> None:
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise Failed(UNREADABLE, "leaves.bin is missing") from None
        if size % 32:
            raise Failed(UNREADABLE, "leaves.bin is not a whole number of 32-byte hashes")
        self.path = path
        self.count = size // 32

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[bytes]:
        with self.path.open("rb") as f:
            while page := f.read(self.PAGE):
                for i in range(0, len(page), 32):
                    yield page[i : i + 32]

    def __getitem__(self, index: int) -> bytes:
        if not 0 <= index < self.count:
            raise IndexError(index)
        with self.path.open("rb") as f:
            f.seek(index * 32)
            return f.read(32)


def verify(bundle: Path, key: str | None = None, progress: Callable[[int, int], None] | None = None) -> Report:
    """Check the bundle; the report's code is the exit code."""
    report = Report()
    try:
        _verify(bundle, key, report, progress)
    except Failed as failure:
        report.code = failure.code
        report.notes.append(failure.message)
    return report


def _verify(bundle: Path, key: str | None, report: Report, progress: Callable[[int, int], None] | None) -> None:
    manifest = _json(bundle / "manifest.json")
    if manifest.get("format") != "baton-export/1":
        raise Failed(UNREADABLE, "manifest.json is not a baton-export/1 manifest")
    origin = manifest.get("origin")
    verifier = _verifier(bundle, key, report)
    checkpoints = _checkpoints(bundle, verifier, origin, report)
    leaves = Leaves(bundle / "leaves.bin")
    last = max(checkpoints)
    if last != len(leaves):
        raise Failed(EVENTS, f"the bundle holds {len(leaves)} leaves but its last signed checkpoint covers {last}")
    signed_roots = roots_at(leaves, set(checkpoints))
    trusted = all(signed_roots[size] == cp.root for size, cp in checkpoints.items())
    history = None
    if trusted and len(leaves) >= HELP_FROM:
        history = _check_events_helped(bundle, leaves, report, progress)
    if history is None:  # not helped, or something is wrong: the one-process pass finds and names it
        history = _check_events(bundle, leaves, checkpoints, trusted, report, progress)
    _check_scores(bundle, leaves, history.finalised, history.schemes, report)
    _check_voidings(history, report)
    _check_rankings(bundle, leaves, history.rankings, report)


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise Failed(UNREADABLE, f"{path.name} is missing") from None
    except ValueError:
        raise Failed(UNREADABLE, f"{path.name} is not JSON") from None


def _verifier(bundle: Path, key: str | None, report: Report) -> Verifier:
    try:
        bundled = Verifier.parse((bundle / "key.vkey").read_text())
    except FileNotFoundError:
        raise Failed(UNREADABLE, "key.vkey is missing") from None
    except NoteError as exc:
        raise Failed(UNREADABLE, f"key.vkey: {exc}") from None
    if key is None:
        report.key = bundled.vkey()
        report.notes.append(
            "the key is the bundle's own; pin the log's key with --key (GET /v1/audit/key) "
            "to rule out a re-signed bundle"
        )
        return bundled
    try:
        pinned = Verifier.parse(Path(key).read_text() if Path(key).is_file() else key)
    except NoteError as exc:
        raise Failed(UNREADABLE, f"--key: {exc}") from None
    report.key, report.pinned = pinned.vkey(), True
    if pinned != bundled:
        report.notes.append("the bundle carries another key than the pinned one; checking with the pinned key")
    return pinned


def _checkpoints(bundle: Path, verifier: Verifier, origin: str | None, report: Report) -> dict[int, Checkpoint]:
    files = sorted((bundle / "checkpoints").glob("*.txt"), key=lambda p: int(p.stem) if p.stem.isdigit() else -1)
    if not files:
        raise Failed(UNREADABLE, "the bundle has no checkpoints")
    found: dict[int, Checkpoint] = {}
    for path in files:
        try:
            checkpoint = Checkpoint.verified(path.read_text(), verifier, origin)
        except NoteError as exc:
            raise Failed(SIGNATURE, f"checkpoints/{path.name}: {exc}") from None
        if str(checkpoint.size) != path.stem:
            raise Failed(SIGNATURE, f"checkpoints/{path.name} is signed for tree size {checkpoint.size}")
        found[checkpoint.size] = checkpoint
    report.checkpoints = len(found)
    return found


def _lines(bundle: Path) -> Iterator[bytes]:
    try:
        with (bundle / "events.jsonl").open("rb") as f:
            for line in f:
                yield line[:-1] if line.endswith(b"\n") else line
    except FileNotFoundError:
        raise Failed(UNREADABLE, "events.jsonl is missing") from None


@dataclass
class Assessments:
    """What the history says of the baton: schemes, finalisations (with when they were made) and voidings."""

    schemes: dict[str, dict[str, Any]] = field(default_factory=dict)
    finalised: list[dict[str, Any]] = field(default_factory=list)
    finalised_at: dict[int, str] = field(default_factory=dict)
    voidings: list[dict[str, Any]] = field(default_factory=list)
    rankings: list[dict[str, Any]] = field(default_factory=list)


def _check_events(
    bundle: Path,
    leaves: Leaves,
    checkpoints: dict[int, Checkpoint],
    trusted: bool,
    report: Report,
    progress: Callable[[int, int], None] | None,
) -> Assessments:
    """Every event is canonical, matches its leaf, follows its predecessor; collect the assessments' events.

    One pass over events.jsonl and leaves.bin together, holding one event (and the next, to name a mismatch),
    the version of each aggregate and O(log n) hashes for the roots: never the whole history.
    """
    ours = Roots(set(checkpoints))
    types = EventTypes()
    versions: dict[str, int] = {}
    history = Assessments()
    previous_position = 0
    lines = _lines(bundle)
    signed = iter(leaves)
    index, line = 0, next(lines, None)
    while line is not None:
        following = next(lines, None)
        where = f"tree index {index}"
        try:
            body = canonical.loads(line)
            position = int(body["position"])
        except (ValueError, KeyError, TypeError):
            raise Failed(EVENTS, f"the event at {where} (after position {previous_position}) is not readable") from None
        where = f"position {position} (tree index {index})"
        if canonical.dumps(body) != line:
            raise Failed(EVENTS, f"the event at {where} is altered: it is not in canonical form")
        leaf = leaf_hash(line)
        ours.add(leaf)
        expected = next(signed, None)
        if trusted and expected is not None and leaf != expected:
            raise Failed(EVENTS, _mismatch(line, following, leaves, index, previous_position))
        if position <= previous_position:
            raise Failed(EVENTS, f"the events are reordered at {where}: it follows position {previous_position}")
        version = versions.get(body["aggregate_id"], 0) + 1
        if body["version"] != version:
            raise Failed(
                EVENTS,
                f"an event is missing before {where}: {body['aggregate']} {body['aggregate_id']} jumps to version "
                f"{body['version']} from {version - 1}",
            )
        versions[body["aggregate_id"]] = body["version"]
        previous_position = position
        _assessed(history, position, types.current_body(body))  # signed as recorded; read as the code reads it now
        if progress and index % 5000 == 0:
            progress(index, len(leaves))
        index, line = index + 1, following
    report.events = index
    if index != len(leaves):
        kind = "missing" if index < len(leaves) else "not covered by a signature"
        raise Failed(EVENTS, f"{abs(len(leaves) - index)} events are {kind} after position {previous_position}")
    if not trusted:
        previous = 0
        for size in sorted(checkpoints):
            if ours.roots[size] != checkpoints[size].root:
                raise Failed(
                    EVENTS,
                    f"the events do not match signed checkpoint {size}: the first altered, missing or reordered "
                    f"event is between tree indexes {previous} and {size - 1} (leaves.bin was rewritten to match)",
                )
            previous = size
        raise Failed(EVENTS, "leaves.bin does not match the signed checkpoints, though the events do")
    finalised_copy = _json(bundle / "finalised.json")
    if finalised_copy != history.finalised:
        raise Failed(SCORES, "finalised.json differs from the AssessmentFinalised events in the history")
    return history


HELP_FROM = 100_000
"""Events from which helper processes on both cores check the lines (each costs ~1 s to start)."""
CHUNK = 4 << 20
"""Bytes of events.jsonl one helper task checks."""
_types: EventTypes | None = None


@dataclass
class Chunk:
    """What a helper found in a run of whole lines, all of them canonical JSON events in increasing positions."""

    lines: int
    leaves: bytes
    first_position: int
    last_position: int
    versions: dict[Any, tuple[Any, Any]]
    """Each aggregate's first and last version in the chunk (consecutive in between)."""
    assessments: list[tuple[int, dict[str, Any]]]
    """(position, current body) of each finalisation, voiding and published scheme."""


def _check_chunk(chunk: bytes) -> Chunk | None:
    """In a helper process: the facts of a run of lines, or None if any line is not as it must be (then the
    one-process pass finds the first such line and names it, as it always did)."""
    global _types
    if _types is None:
        _types = EventTypes()
    lines = chunk.split(b"\n")
    if chunk.endswith(b"\n"):
        lines.pop()
    hashes, versions, assessments = bytearray(), {}, []
    first = previous = 0
    try:
        for line in lines:
            body = canonical.loads(line)
            position = int(body["position"])
            if canonical.dumps(body) != line or position <= previous:
                return None
            first, previous = first or position, position
            hashes += leaf_hash(line)
            aggregate, version = body["aggregate_id"], body["version"]
            seen = versions.get(aggregate)
            if seen is not None and version != seen[1] + 1:
                return None
            versions[aggregate] = (version if seen is None else seen[0], version)
            name = f"{body['aggregate']}.{body['type']}"
            if name in ASSESSED:
                assessments.append((position, _types.current_body(body)))
    except Exception:  # whatever it is, the one-process pass meets it again and reports it
        return None
    return Chunk(len(lines), bytes(hashes), first, previous, versions, assessments)


def _chunks(path: Path) -> Iterator[bytes]:
    """events.jsonl in runs of whole lines of about CHUNK bytes."""
    with path.open("rb") as f:
        rest = b""
        while page := f.read(CHUNK):
            page = rest + page
            cut = page.rfind(b"\n") + 1
            if cut:
                rest = page[cut:]
                yield page[:cut]
            else:
                rest = page
        if rest:
            yield rest


def _check_events_helped(
    bundle: Path, leaves: Leaves, report: Report, progress: Callable[[int, int], None] | None
) -> Assessments | None:
    """_check_events with helper processes on both cores parsing, canonicalising and hashing chunks of lines while
    this one compares their leaves with leaves.bin and their versions across chunks; None on any doubt."""
    import multiprocessing
    import os
    from collections import deque
    from concurrent.futures import Future, ProcessPoolExecutor

    path = bundle / "events.jsonl"
    if not path.exists():
        return None
    workers = max(1, min(2, os.cpu_count() or 1))
    versions: dict[Any, Any] = {}
    history = Assessments()
    index = previous = 0
    with ProcessPoolExecutor(workers, multiprocessing.get_context("spawn")) as pool, leaves.path.open("rb") as signed:
        chunks = _chunks(path)
        pending: deque[Future[Chunk | None]] = deque()
        try:
            for chunk in chunks:
                pending.append(pool.submit(_check_chunk, chunk))
                if len(pending) >= 2 * workers:
                    break
            while pending:
                found = pending.popleft().result()
                following = next(chunks, None)
                if following is not None:
                    pending.append(pool.submit(_check_chunk, following))
                if found is None or found.first_position <= previous:
                    return None
                if signed.read(len(found.leaves)) != found.leaves:
                    return None
                for aggregate, (first, last) in found.versions.items():
                    if first != versions.get(aggregate, 0) + 1:
                        return None
                    versions[aggregate] = last
                for position, body in found.assessments:
                    _assessed(history, position, body)
                index, previous = index + found.lines, found.last_position
                if progress:
                    progress(index, len(leaves))
        finally:
            for left in pending:
                left.cancel()
    if index != len(leaves):
        return None
    report.events = index
    finalised_copy = _json(bundle / "finalised.json")
    if finalised_copy != history.finalised:
        raise Failed(SCORES, "finalised.json differs from the AssessmentFinalised events in the history")
    return history


def _assessed(history: Assessments, position: int, body: dict[str, Any]) -> None:
    """Keep a finalisation, voiding, published scheme or finalised ranking (a body as the code reads it now)."""
    name = f"{body['aggregate']}.{body['type']}"
    if name == FINALISED:
        history.finalised.append({"position": position, **body["data"]})
        history.finalised_at[position] = body["occurred_at"]
    elif name == VOIDED:
        history.voidings.append({"position": position, **body["data"]})
    elif name == PUBLISHED:
        history.schemes[body["data"]["version"]] = body["data"]["document"]
    elif name == RANKED:
        history.rankings.append({"position": position, **body["data"]})


def _mismatch(line: bytes, following: bytes | None, leaves: Leaves, index: int, previous_position: int) -> str:
    """Name what happened at the first event whose leaf differs from the notary's."""
    here = leaf_hash(line)
    position = json.loads(line)["position"]
    if index + 1 < len(leaves) and here == leaves[index + 1]:
        if following is not None and leaf_hash(following) == leaves[index]:
            return f"the events are reordered at tree index {index}: position {position} and the next are swapped"
        return f"an event is missing at tree index {index}: between positions {previous_position} and {position}"
    if index > 0 and here == leaves[index - 1]:
        return f"an event is repeated at tree index {index} (position {position})"
    return f"the event at position {position} (tree index {index}) is altered: it does not match its signed leaf"


def _check_scores(
    bundle: Path,
    leaves: Leaves,
    finalised: list[dict[str, Any]],
    schemes: dict[str, dict[str, Any]],
    report: Report,
) -> None:
    """Replay the scoring of every finalised assessment from the events and compare, unit by unit."""
    groups: dict[tuple[int, str, int, int, str], list[dict[str, Any]]] = {}
    for record in finalised:
        key = (
            record["year"],
            record["unit_type"],
            record["cutoff_position"],
            record["tree_size"],
            record["scheme_version"],
        )
        groups.setdefault(key, []).append(record)
    roots = roots_at(leaves, {size for _, _, _, size, _ in groups}) if groups else {}
    for (year, unit_type, cutoff, size, version), records in groups.items():
        if base64.b64encode(roots[size]).decode() != records[0]["root"]:
            raise Failed(
                SCORES, f"the {year} {unit_type} assessment names a root the tree of size {size} does not have"
            )
        if version not in schemes:
            raise Failed(
                SCORES, f"the {year} {unit_type} assessment uses scheme {version}, which is not in the history"
            )
        types = EventTypes()
        events = (
            types.current_body(canonical.loads(line)) for _, line in zip(range(size), _lines(bundle), strict=False)
        )
        try:
            replayed = score(events, schemes[version], year, unit_type, cutoff)
        except DomainError as exc:
            raise Failed(SCORES, f"the {year} {unit_type} assessment cannot be replayed: {exc.message}") from None
        if replayed["events"] != size:
            raise Failed(
                SCORES,
                f"the {year} {unit_type} assessment's cut-off covers {replayed['events']} events, "
                f"not its tree size {size}",
            )
        by_unit = {u["unit"]: u for u in replayed["units"]}
        for record in records:
            unit = by_unit.get(record["unit"])
            got = None if unit is None else (unit["total"], unit["grade"], unit["rank"])
            if got != (record["score"], record["grade"], record["rank"]):
                raise Failed(
                    SCORES,
                    f"the finalised {year} score of {unit_type} {record['unit']} at position {record['position']} is "
                    f"{record['score']} ({record['grade']}, rank {record['rank']}); replaying the events gives "
                    f"{got[0] if got else None} ({got[1] if got else None}, rank {got[2] if got else None})",
                )
        report.finalised += len(records)


def _check_rankings(bundle: Path, leaves: Leaves, rankings: list[dict[str, Any]], report: Report) -> None:
    """Recount every finalised month's ranking from the events up to its cut-off and compare the figures' digest."""
    roots = roots_at(leaves, {r["tree_size"] for r in rankings}) if rankings else {}
    for record in rankings:
        month, unit_type, size = record["month"], record["unit_type"], record["tree_size"]
        what = f"the {month} {unit_type} ranking finalised at position {record['position']}"
        if base64.b64encode(roots[size]).decode() != record["root"]:
            raise Failed(SCORES, f"{what} names a root the tree of size {size} does not have")
        types = EventTypes()
        events = (types.current_body(json.loads(line)) for _, line in zip(range(size), _lines(bundle), strict=False))
        try:
            recounted = rank(events, month, unit_type, record["cutoff_position"])
        except DomainError as exc:
            raise Failed(SCORES, f"{what} cannot be recounted: {exc.message}") from None
        if recounted["events"] != size:
            raise Failed(SCORES, f"{what} covers {recounted['events']} events, not its tree size {size}")
        if digest(recounted) != record["digest"]:
            raise Failed(
                SCORES,
                f"{what} has figures of digest {record['digest']}; recounting the events gives {digest(recounted)}",
            )
        report.rankings += 1


def _finalisation(record: dict[str, Any]) -> tuple[Any, ...]:
    """What names one finalisation of a year's unit type (each of its units' events carries it)."""
    return tuple(record[k] for k in ("scheme_version", "cutoff_position", "tree_size", "root"))


def _check_voidings(history: Assessments, report: Report) -> None:
    """Finalisations and voidings take turns per year and unit type; note standing finalisations made early."""
    standing: dict[tuple[int, str], tuple[tuple[Any, ...], int]] = {}  # -> (finalisation, its first position)
    steps = sorted([*history.finalised, *history.voidings], key=lambda r: r["position"])
    voidings = {id(v) for v in history.voidings}
    for step in steps:
        part, key, position = (step["year"], step["unit_type"]), _finalisation(step), step["position"]
        current = standing.get(part)
        if id(step) in voidings:
            if current is None or current[0] != key:
                raise Failed(
                    SCORES,
                    f"the voiding at position {position} names a {part[0]} {part[1]} finalisation (cut-off "
                    f"{step['cutoff_position']}, tree size {step['tree_size']}) that does not stand there",
                )
            del standing[part]
            report.voided += 1
        elif current is None:
            standing[part] = (key, position)
        elif current[0] != key:
            raise Failed(
                SCORES,
                f"the {part[0]} {part[1]} finalisation at position {position} was made while the one at position "
                f"{current[1]} stood",
            )
    for (year, unit_type), (key, position) in sorted(standing.items()):
        version = key[0]
        if version not in history.schemes:
            continue  # _check_scores has failed the bundle already
        opens = Scheme.parse(history.schemes[version]).opens_at(year)
        at = datetime.fromisoformat(history.finalised_at[position])
        if at < opens:
            report.notes.append(
                f"the {year} {unit_type} finalisation at position {position} was made on {at.isoformat()}, before "
                f"the year could be finalised ({opens.isoformat()}); it stands until voided"
            )
