"""The assessment context: schemes, two-way evaluation, scores computed from the log, and finalisation."""

from __future__ import annotations

import base64
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.utils import get_topic

from audit.ranking import check_month, rank
from audit.scoring import SCORED, schemes_in, score
from domain.assessment import (
    SCHEME_ID,
    UNIT_TYPES,
    Assessment,
    AssessmentScheme,
    MutualEvaluation,
    Scheme,
    assessment_id,
    evaluation_id,
)
from domain.common import digest
from domain.errors import (
    Conflict,
    DuplicateEntry,
    InvalidCommand,
    NotFinal,
    NotFound,
    OutOfScope,
    Thing,
)
from domain.ranking import UNIT_TYPES as RANKED_TYPES
from domain.ranking import MonthlyRanking, ranking_id
from infra.clock import Clock
from infra.envelope import EnvelopeCodec
from infra.store import Store
from services.access import Context, Role, require_role
from services.base import BatonApplication, Decision, Receipt
from services.organisation import OrganisationApp

Tree = Callable[[int], tuple[int, bytes]]
"""Given a cut-off position: (tree size, root) of the Merkle tree over the events up to it."""


# Events count in the year of their scheme's timezone, so a year is in the history if any zone puts the first event
# in it or an earlier one, and the clock's now in it or a later one.
EARLIEST_ZONE, LATEST_ZONE = timedelta(hours=-12), timedelta(hours=14)


class AssessmentApp(BatonApplication):
    """Computes the baton from the history itself, never from read models, so nothing but the log decides it."""

    def __init__(self, store: Store, clock: Clock, org: OrganisationApp, codec: EnvelopeCodec, tree: Tree) -> None:
        super().__init__(store, clock)
        self.org, self.codec, self.tree = org, codec, tree
        self._cache: OrderedDict[tuple[Any, ...], dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    # The scheme ------------------------------------------------------------------------------

    def publish_scheme(self, ctx: Context, document: dict[str, Any]) -> Receipt:
        """Publish a scheme version into the history; scores use the newest one published before their cut-off."""
        require_role(ctx.actor, Role.ADMIN, action="publish the assessment scheme")

        def decide(now: datetime) -> Decision:
            try:
                published = self.repository.get(SCHEME_ID)
            except AggregateNotFoundError:
                published = AssessmentScheme(timestamp=now, meta=ctx.meta())
            version = published.publish(document, timestamp=now, meta=ctx.meta())
            return [published], {"version": version}

        return self.execute(ctx, decide)

    # Two-way evaluation ----------------------------------------------------------------------

    def rate(self, ctx: Context, *, year: int, ratee: str, rating: str, comment: str | None) -> Receipt:
        """双向评价: a community rates a department, or a department rates a community, once a year."""
        actor = ctx.actor
        org = self.org.current()
        if actor.role is Role.COMMUNITY and actor.unit:
            org.community(actor.unit)
            org.check_departments_exist([ratee])
            rater_type, ratee_type = "community", "department"
        elif actor.role is Role.DEPARTMENT and actor.unit:
            org.community(ratee)
            rater_type, ratee_type = "department", "community"
        else:
            require_role(actor, Role.COMMUNITY, Role.DEPARTMENT, action="rate in the two-way evaluation")
            raise InvalidCommand("the token names no unit")
        assert actor.unit is not None
        rater = actor.unit

        def decide(now: datetime) -> Decision:
            if evaluation_id(year, rater, ratee) in self.repository:
                raise DuplicateEntry(f"{rater} already rated {ratee} for {year}")
            evaluation = MutualEvaluation.rate(
                year=year,
                rater_type=rater_type,
                rater=rater,
                ratee_type=ratee_type,
                ratee=ratee,
                rating=rating,
                comment=comment,
                timestamp=now,
                meta=ctx.meta(),
            )
            return [evaluation], {"year": year, "rater": rater, "ratee": ratee}

        return self.execute(ctx, decide)

    # Scores ----------------------------------------------------------------------------------

    def envelopes(self, stop: int, batch: int = 5000, reads: frozenset[str] | None = None) -> Iterator[dict[str, Any]]:
        """The public bodies of the stored events up to position stop, in store order; with READS, the events not
        named there only as their position, aggregate and type (with empty data), not decoded."""
        after = 0
        while True:
            notifications = self.store.select(after, batch, stop=stop)
            if not notifications:
                return
            for n in notifications:
                if reads is not None:
                    aggregate, type_ = self.codec.name(n.topic)
                    if f"{aggregate}.{type_}" not in reads:
                        yield {"position": n.id, "aggregate": aggregate, "type": type_, "data": {}}
                        continue
                yield self.codec.envelope(n).body()
            after = notifications[-1].id

    def recorded(self, position: int) -> dict[str, Any] | None:
        """The event at a position, as recorded (its body's canonical bytes are its Merkle leaf)."""
        found = self.store.select(position - 1, 1, stop=position)
        return self.codec.recorded(found[0]).body() if found else None

    def years(self) -> tuple[int, int] | None:
        """The first and last year the history reaches in any timezone (UTC-12 to UTC+14); None before any event."""
        first = self.store.select(0, 1)
        if not first:
            return None
        since = (datetime.fromisoformat(self.codec.envelope(first[0]).occurred_at) + EARLIEST_ZONE).year
        return since, (self.clock.now() + LATEST_ZONE).year

    def cutoff(self, as_of: datetime | None) -> int:
        """The position of the last event at or before as_of (default: the last event)."""
        top = self.store.max_position()
        if as_of is None:
            return top
        if as_of > (now := self.clock.now()):
            raise InvalidCommand(
                f"as_of {as_of.isoformat()} is in the future (it is now {now.isoformat()}); "
                "give a past cut-off, or none for now"
            )
        last = 0
        for body in self.envelopes(top):
            if datetime.fromisoformat(body["occurred_at"]) > as_of:
                break
            last = body["position"]
        return last

    def schemes(self, cutoff: int) -> dict[str, dict[str, Any]]:
        topic = get_topic(AssessmentScheme.Published)
        found = self.store.recorder.select_notifications(start=1, limit=10_000, stop=cutoff, topics=[topic])
        return schemes_in(self.codec.envelope(n).body() for n in found)

    def compute(
        self,
        year: int,
        unit_type: str,
        *,
        cutoff: int | None = None,
        as_of: datetime | None = None,
        scheme_version: str | None = None,
    ) -> dict[str, Any]:
        """Scores of a unit type for a year, from the events up to the cut-off; the same cut-off, the same bytes."""
        if unit_type not in UNIT_TYPES:
            raise InvalidCommand(f"unit_type must be one of: {', '.join(UNIT_TYPES)}")
        position = cutoff if cutoff is not None else self.cutoff(as_of)
        schemes = self.schemes(position)
        version, _ = self.scheme_at(position, scheme_version, schemes)
        key = (year, unit_type, position, version)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        result = score(self.envelopes(position, reads=SCORED), schemes[version], year, unit_type, position)
        with self._lock:
            self._cache[key] = result
            while len(self._cache) > 32:
                self._cache.popitem(last=False)
        return result

    def known_month(self, month: str) -> str:
        """The month, if it is YYYY-MM and the history reaches its year; else NotFound naming it."""
        try:
            year, _ = check_month(month)
        except InvalidCommand as exc:
            raise NotFound(f"month {month}: {exc.message}", Thing.MONTH, month) from None
        years = self.years()
        if years is None or not years[0] <= year <= years[1]:
            raise NotFound(f"month {month} is outside the history", Thing.MONTH, month)
        return month

    def ranking(self, month: str, unit_type: str) -> dict[str, Any]:
        """The month's ranking (接诉即办) of a unit type: as finalised if it is, else from every event stored now."""
        final = self.ranking_finalisations(self.known_month(month)).get(unit_type)
        position = final["cutoff_position"] if final else self.store.max_position()
        return {**self._ranked(month, unit_type, position), "final": final}

    def _ranked(self, month: str, unit_type: str, position: int) -> dict[str, Any]:
        key = ("ranking", month, unit_type, position)
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        result = rank(self.envelopes(position), month, unit_type, position)
        with self._lock:
            self._cache[key] = result
            while len(self._cache) > 32:
                self._cache.popitem(last=False)
        return result

    def scheme_at(
        self, position: int, version: str | None = None, schemes: dict[str, dict[str, Any]] | None = None
    ) -> tuple[str, dict[str, Any]]:
        """The scheme version (default: the newest) published by a position, and its document."""
        schemes = self.schemes(position) if schemes is None else schemes
        if not schemes:
            raise Conflict("no assessment scheme is published yet; publish one with `baton scheme publish`")
        version = version or list(schemes)[-1]
        if version not in schemes:
            raise InvalidCommand(f"scheme version {version} is not published by position {position}")
        return version, schemes[version]

    def ranking_finalisations(self, month: str) -> dict[str, dict[str, Any]]:
        """The month's finalised rankings by unit type, as recorded (empty while none is)."""
        try:
            found: MonthlyRanking = self.repository.get(ranking_id(month))
        except AggregateNotFoundError:
            return {}
        return {t: dict(record) for t, record in found.finalised.items()}

    def finalise_ranking(self, ctx: Context, month: str, *, unit_types: list[str] | None = None) -> Receipt:
        """Fix the month's figures (their digest) for good, tied to the tree size and root they were counted from.

        Default: every unit type not final yet. Refused until the month has ended (Asia/Shanghai) and for a unit
        type already final; `baton verify` recounts every finalised month from an export and compares the digest.
        """
        self.known_month(month)
        self._check_finaliser(ctx, "finalise a month's ranking")
        for unit_type in unit_types or ():
            if unit_type not in RANKED_TYPES:
                raise InvalidCommand(f"unit_type must be one of: {', '.join(RANKED_TYPES)}, got {unit_type!r}")
        MonthlyRanking.check_month_over(month, self.clock.now())  # before the costly count
        final = self.ranking_finalisations(month)
        wanted = list(dict.fromkeys(unit_types or [t for t in RANKED_TYPES if t not in final]))
        if not wanted:
            raise Conflict(f"the {month} ranking is already final for every unit type ({', '.join(RANKED_TYPES)})")
        position = self.store.max_position()
        size, root = self.tree(position)
        results = [self._ranked(month, t, position) for t in wanted]
        encoded_root = base64.b64encode(root).decode()

        def decide(now: datetime) -> Decision:
            try:
                ranking: MonthlyRanking = self.repository.get(ranking_id(month))
            except AggregateNotFoundError:
                ranking = MonthlyRanking(month=month, timestamp=now, meta=ctx.meta())
            for result in results:
                ranking.finalise(result, digest(result), size, encoded_root, timestamp=now, meta=ctx.meta())
            return [ranking], {
                "month": month,
                "unit_types": wanted,
                "digests": {r["unit_type"]: digest(r) for r in results},
                "cutoff_position": position,
                "tree_size": size,
                "root": encoded_root,
            }

        return self.execute(ctx, decide)

    # Finalisation ----------------------------------------------------------------------------

    def finalised(self, year: int) -> list[dict[str, Any]]:
        """The year's final scores that stand (a voided finalisation's are left out), as recorded."""
        assessment = self._assessment(year)
        if assessment is None:
            return []
        return [
            {"unit_type": key.split(":", 1)[0], "unit": key.split(":", 1)[1], **record}
            for key, record in sorted(assessment.finalised.items())
        ]

    def finalisations(self, year: int) -> list[dict[str, Any]]:
        """Every finalisation of the year, oldest first, each with its voiding if it was voided."""
        assessment = self._assessment(year)
        return [] if assessment is None else [dict(record) for record in assessment.history]

    def _assessment(self, year: int) -> Assessment | None:
        try:
            return self.repository.get(assessment_id(year))  # type: ignore[no-any-return]
        except AggregateNotFoundError:
            return None

    def _check_finaliser(self, ctx: Context, action: str) -> None:
        """An admin, or the district that every assessed unit lies within."""
        require_role(ctx.actor, Role.ADMIN, Role.DISTRICT, action=action)
        if ctx.actor.role is Role.DISTRICT:
            org = self.org.current()
            outside = sorted(
                u
                for u, unit in org.units.items()
                if unit["kind"] in ("street", "community") and not org.is_within(u, str(ctx.actor.unit))
            )
            if outside:
                raise OutOfScope(
                    f"district {ctx.actor.unit} may {action} only for an assessment whose units all lie within it; "
                    f"{len(outside)} do not (e.g. {outside[0]}): ask an admin"
                )

    def finalise(
        self, ctx: Context, year: int, *, unit_types: list[str] | None = None, as_of: datetime | None = None
    ) -> Receipt:
        """Record the final score of every unit, with the tree size and root of the history it comes from.

        Refused while the year has not ended in the scheme's timezone (unless the scheme opens it earlier), and
        for a cut-off before then: a finalisation fixes the year's baton for good, short of a voiding.
        """
        self._check_finaliser(ctx, "finalise an assessment")
        now = self.clock.now()
        position = self.cutoff(as_of)
        opens = Scheme.parse(self.scheme_at(position)[1]).opens_at(year)
        Assessment.check_year_over(year, opens, as_of or now, now)  # before the costly scoring
        size, root = self.tree(position)
        results = [self.compute(year, t, cutoff=position) for t in (unit_types or list(UNIT_TYPES))]
        encoded_root = base64.b64encode(root).decode()

        def decide(now: datetime) -> Decision:
            assessment = self._assessment(year) or Assessment(year=year, timestamp=now, meta=ctx.meta())
            units = sum(
                assessment.finalise(
                    r, size, encoded_root, opens=opens, as_of=as_of or now, timestamp=now, meta=ctx.meta()
                )
                for r in results
            )
            return [assessment], {
                "year": year,
                "units": units,
                "cutoff_position": position,
                "tree_size": size,
                "root": encoded_root,
            }

        return self.execute(ctx, decide)

    def void(self, ctx: Context, year: int, *, reason: str, unit_types: list[str] | None = None) -> Receipt:
        """Void the year's standing finalisation (of these unit types; default all) with a reason, for all to see."""
        self._check_finaliser(ctx, "void a finalisation")
        for unit_type in unit_types or ():
            if unit_type not in UNIT_TYPES:
                raise InvalidCommand(f"unit_type must be one of: {', '.join(UNIT_TYPES)}, got {unit_type!r}")

        def decide(now: datetime) -> Decision:
            assessment = self._assessment(year)
            if assessment is None:
                raise NotFinal(f"no part of the {year} assessment is final; there is nothing to void")
            voided = assessment.void(unit_types, reason, timestamp=now, meta=ctx.meta())
            return [assessment], {"year": year, "voided": voided}

        return self.execute(ctx, decide)
