"""The baton over HTTP: schemes, two-way evaluation, scores with drill-down, finalisation, and the audit trail."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Annotated, Any, Literal

import rfc8785
from fastapi import APIRouter, Body, Depends, Query, Request, Response
from pydantic import AwareDatetime, BaseModel, Field

from api.common import (
    ERRORS,
    MAX_POSITION,
    UNKNOWN_IN_QUERY,
    Commands,
    Router,
    When,
    actor_dependency,
    document,
    path_id,
)
from api.schemas import Accepted
from api.tokens import Tokens
from domain.errors import InvalidCommand, NotFound, Thing
from infra.notary import Notary
from services.access import ASSESSMENT_READERS, AUDIT_READERS, SEE_EVERYTHING, Actor, Context, check_reads
from services.assessment import AssessmentApp
from services.base import Receipt
from services.schemas import Strict


class EvaluationIn(Strict):
    year: int = Field(ge=2000, le=2100)
    ratee: str = Field(max_length=63, description="A department code (rated by a community) or a community id.")
    rating: Literal["excellent", "good", "fair", "poor", "bad"] = Field(description="5 to 1.")
    comment: str | None = Field(None, max_length=2000)


UnitType = Literal["department", "community", "street"]


class FinaliseIn(Strict):
    unit_types: list[UnitType] | None = Field(None, description="Default: department, community and street.")
    as_of: AwareDatetime | None = Field(
        None,
        description="Cut-off time; default: now. Not in the future, and not before the year may be finalised "
        "(its end in the scheme's timezone, unless the scheme's finalisation_opens says otherwise).",
    )


RankingUnitType = Literal["community", "street", "department"]


class FinaliseRankingIn(Strict):
    unit_types: list[RankingUnitType] | None = Field(
        None, description="Default: each of community, street and department not final yet."
    )


class RankingFinalisation(BaseModel):
    """One unit type's finalised ranking of a month: its figures' digest and the tree it was counted from."""

    month: str
    unit_type: str
    digest: str = Field(
        description="SHA-256 of the figures' canonical JSON (sorted keys), as GET /v1/rankings gives them"
    )
    units: int
    ranked: int
    cutoff_position: int
    tree_size: int
    root: str = Field(description="base64 Merkle root of the history up to tree_size")
    finalised_at: datetime
    finalised_by: dict[str, Any] | None


class VoidIn(Strict):
    reason: str = Field(min_length=1, max_length=2000, description="Why; it stays in the history for all to see.")
    unit_types: list[UnitType] | None = Field(None, description="Default: every unit type whose finalisation stands.")


class Voiding(BaseModel):
    reason: str
    voided_at: datetime
    voided_by: dict[str, Any] | None


class Finalisation(BaseModel):
    """One finalisation of a unit type's scores, and its voiding if it was voided."""

    unit_type: str
    scheme_version: str
    cutoff_position: int
    tree_size: int
    root: str = Field(description="base64 Merkle root of the history up to tree_size")
    units: int
    finalised_at: datetime
    finalised_by: dict[str, Any] | None
    voided: Voiding | None


class Proof(BaseModel):
    position: int
    index: int
    tree_size: int
    leaf_hash: str = Field(description="base64 SHA-256(0x00 || the event's canonical bytes)")
    proof: list[str]
    root: str
    checkpoint: str = Field(description="The signed checkpoint of this tree size (C2SP signed note).")


class Consistency(BaseModel):
    size1: int
    size2: int
    root1: str
    root2: str
    proof: list[str]


class AuditKey(BaseModel):
    origin: str
    vkey: str = Field(description="C2SP verifier key: pin it with `baton verify --key`.")


Position = path_id(Thing.POSITION, int, ge=1, le=MAX_POSITION)
TreeSize = path_id(Thing.TREE_SIZE, int, ge=1, le=MAX_POSITION)
YearInPath = path_id(Thing.YEAR, int, ge=2000, le=2100)
MonthInPath = path_id(Thing.MONTH, max_length=40)


def known_year(request: Request, year: YearInPath) -> int:
    """The year in the path, if the history reaches it: from the first recorded event's year to the current one."""
    assessment: AssessmentApp = request.app.state.assessment
    years = assessment.years()
    if years is None:
        raise NotFound(f"year {year} has no history: nothing is recorded yet", Thing.YEAR, year)
    since, until = years
    if not since <= year <= until:
        raise NotFound(f"year {year} is outside the history, which runs from {since} to {until}", Thing.YEAR, year)
    return year


Year = Annotated[int, Depends(known_year)]
SIGNED_SIZE = f"A tree size with a signed checkpoint{UNKNOWN_IN_QUERY}."


SchemeDocument = document(
    "assessment_scheme",
    ["version", "name", "unit_types", "grades", "below_grades", "branch_grade_points"],
    "An assessment scheme, as standards/assessment-scheme-2026.1.json; each unit type's weights add up to 100.",
)


def b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


def assessment_router(app: AssessmentApp, notary: Notary, tokens: Tokens) -> APIRouter:
    actor_dep = Depends(actor_dependency(tokens))
    # On the router too, so the token is checked before a dependency looks up the year in the path.
    router = Router(prefix="/v1", responses=ERRORS, dependencies=[actor_dep])
    command = Commands(router, actor_dep)

    @command.post(
        "/assessment-schemes",
        status_code=201,
        response_model=Accepted,
        tags=["assessment"],
        summary="Publish a version of the assessment scheme (admin)",
    )
    def publish(ctx: Context, document: SchemeDocument) -> Receipt:
        return app.publish_scheme(ctx, document)

    @command.post(
        "/evaluations",
        status_code=201,
        response_model=Accepted,
        tags=["assessment"],
        summary="双向评价: a community rates a department, a department rates a community, once a year",
    )
    def rate(ctx: Context, body: EvaluationIn) -> Receipt:
        return app.rate(ctx, year=body.year, ratee=body.ratee, rating=body.rating, comment=body.comment)

    @router.get(
        "/assessments/{year}",
        tags=["assessment"],
        summary="Scores, grades and ranks of a unit type, each indicator with the events behind it",
        response_description="Canonical JSON (RFC 8785): the same cut-off gives the same bytes.",
    )
    def scores(
        year: Year,
        actor: Actor = actor_dep,
        unit_type: Annotated[str, Query(pattern="^(department|community|street)$")] = "department",
        as_of: Annotated[When | None, Query(description="Cut-off time (default: now).")] = None,
        position: Annotated[
            int | None, Query(ge=0, le=MAX_POSITION, description="Cut-off position (instead of as_of).")
        ] = None,
        scheme: Annotated[str | None, Query(description="Scheme version (default: newest by the cut-off).")] = None,
    ) -> Response:
        check_reads(actor, ASSESSMENT_READERS, "assessments")
        result = app.compute(year, unit_type, cutoff=position, as_of=as_of, scheme_version=scheme)
        return Response(rfc8785.dumps(result), media_type="application/json")

    @command.post(
        "/assessments/{year}/finalise",
        status_code=201,
        response_model=Accepted,
        tags=["assessment"],
        summary="Finalise a year's scores, tied to the tree size and root of the history they come from",
        description="Refused (409 `year_not_over`) until the year has ended in the scheme's timezone (Asia/Shanghai "
        'by default), unless the scheme\'s `finalisation_opens` ("MM-DD" of the assessed year) opens it earlier; '
        "refused (409) while a unit type's finalisation stands. A finalisation made by mistake is voided with "
        "`POST /v1/assessments/{year}/void`, then finalised again.",
    )
    def finalise(ctx: Context, year: Year, body: FinaliseIn = Body(default_factory=FinaliseIn)) -> Receipt:
        unit_types = list(body.unit_types) if body.unit_types else None
        return app.finalise(ctx, year, unit_types=unit_types, as_of=body.as_of)

    @router.get(
        "/rankings/{month}",
        tags=["rankings"],
        summary="接诉即办 The month's ranking: response, resolution, satisfaction, composite, change, class",
        description="Over the cases that arrived in the month (Asia/Shanghai): a community's residents' reports "
        "(unreasonable complaints and duplicates left out), a street's communities', a department's summonses. "
        "Composite = 10 % response + 45 % resolution + 45 % satisfaction; four classes by quarter of the ranked "
        "units (advanced, good, average, lagging). Each unit lists the events behind each rate. A month finalised "
        "for the unit type (POST /v1/rankings/{month}/finalise) is given as finalised: counted up to its cut-off, "
        "with `final` naming the digest, tree size and root; else `final` is null and the count is as of now.",
    )
    def ranking(
        month: MonthInPath,
        actor: Actor = actor_dep,
        unit_type: Annotated[str, Query(pattern="^(community|street|department)$")] = "community",
    ) -> dict[str, Any]:
        check_reads(actor, ASSESSMENT_READERS, "rankings")
        return app.ranking(month, unit_type)

    @command.post(
        "/rankings/{month}/finalise",
        status_code=201,
        response_model=Accepted,
        tags=["rankings"],
        summary="Finalise a month's ranking: its figures' digest, tied to the tree size and root they come from",
        description="Admin, or the district every ranked unit lies within. Refused (409 `month_not_over`) until the "
        "month has ended in Asia/Shanghai, and (409) for a unit type already final. From then on "
        "GET /v1/rankings/{month} gives the figures as finalised, and `baton verify` recounts them from an export.",
    )
    def finalise_ranking(
        ctx: Context, month: MonthInPath, body: FinaliseRankingIn = Body(default_factory=FinaliseRankingIn)
    ) -> Receipt:
        return app.finalise_ranking(ctx, month, unit_types=list(body.unit_types) if body.unit_types else None)

    @router.get(
        "/rankings/{month}/finalisations",
        response_model=list[RankingFinalisation],
        tags=["rankings"],
        summary="A month's finalised rankings, one per unit type finalised (empty while none is)",
    )
    def ranking_finalisations(month: MonthInPath, actor: Actor = actor_dep) -> list[dict[str, Any]]:
        check_reads(actor, ASSESSMENT_READERS, "rankings")
        return list(app.ranking_finalisations(app.known_month(month)).values())

    @command.post(
        "/assessments/{year}/void",
        status_code=201,
        response_model=Accepted,
        tags=["assessment"],
        summary="Void a finalisation made by mistake, with a reason (the same actors as finalise)",
        description="Records `assessment.finalisation_voided` for each unit type: the finalisation and its voiding "
        "both stay in the history (and in an export, where `baton verify` replays both); the unit type may then be "
        "finalised again. 409 `not_final` when nothing of that year stands final.",
    )
    def void(ctx: Context, year: Year, body: VoidIn) -> Receipt:
        unit_types = list(body.unit_types) if body.unit_types else None
        return app.void(ctx, year, reason=body.reason, unit_types=unit_types)

    @router.get(
        "/assessments/{year}/final",
        tags=["assessment"],
        summary="A year's final scores that stand (a voided finalisation's are left out)",
    )
    def final(year: Year, actor: Actor = actor_dep) -> list[dict[str, Any]]:
        check_reads(actor, ASSESSMENT_READERS, "assessments")
        return app.finalised(year)

    @router.get(
        "/assessments/{year}/finalisations",
        response_model=list[Finalisation],
        tags=["assessment"],
        summary="Every finalisation of a year, oldest first, with who made it and, if voided, who voided it and why",
    )
    def finalisations(year: Year, actor: Actor = actor_dep) -> list[dict[str, Any]]:
        check_reads(actor, ASSESSMENT_READERS, "assessments")
        return app.finalisations(year)

    # The audit trail ---------------------------------------------------------------------------

    @router.get("/audit/key", response_model=AuditKey, tags=["audit"], summary="The checkpoint verifier key")
    def key(actor: Actor = actor_dep) -> dict[str, Any]:
        check_reads(actor, AUDIT_READERS, "the audit trail")
        return {"origin": notary.origin, "vkey": notary.signer.verifier.vkey()}

    @router.get(
        "/audit/checkpoint",
        tags=["audit"],
        summary="The latest signed checkpoint (a C2SP signed note)",
        response_class=Response,
    )
    def latest(actor: Actor = actor_dep) -> Response:
        check_reads(actor, AUDIT_READERS, "the audit trail")
        checkpoint = notary.view.checkpoint()
        if checkpoint is None:
            raise NotFound("no checkpoint is signed yet")
        return Response(checkpoint["note"], media_type="text/plain; charset=utf-8")

    @router.get(
        "/audit/checkpoints/{size}",
        tags=["audit"],
        summary="The signed checkpoint of a tree size",
        response_class=Response,
    )
    def checkpoint(size: TreeSize, actor: Actor = actor_dep) -> Response:
        check_reads(actor, AUDIT_READERS, "the audit trail")
        found = notary.view.checkpoint(size)
        if found is None:
            raise NotFound(f"no checkpoint is signed for tree size {size}", Thing.TREE_SIZE, size)
        return Response(found["note"], media_type="text/plain; charset=utf-8")

    @router.get(
        "/audit/proof/{position}",
        response_model=Proof,
        tags=["audit"],
        summary="Inclusion proof of an event in a signed tree (default: the latest checkpoint)",
    )
    def proof(
        position: Position,
        actor: Actor = actor_dep,
        size: Annotated[
            int | None,
            Query(
                ge=1,
                le=MAX_POSITION,
                description=f"A checkpointed tree size (default: the latest){UNKNOWN_IN_QUERY}.",
            ),
        ] = None,
    ) -> dict[str, Any]:
        check_reads(actor, AUDIT_READERS, "the audit trail")
        cp = notary.view.checkpoint(size)
        if cp is None and size is not None:
            raise NotFound(f"no checkpoint is signed for tree size {size}", Thing.TREE_SIZE, size)
        if cp is None:
            raise NotFound("no checkpoint is signed yet")
        index = notary.view.index_of(position)
        if index is None or index >= cp["size"]:
            raise NotFound(f"position {position} is not in the tree of size {cp['size']}", Thing.POSITION, position)
        leaf = notary.view.leaves(index, index + 1)[0][1]
        return {
            "position": position,
            "index": index,
            "tree_size": cp["size"],
            "leaf_hash": b64(leaf),
            "proof": [b64(p) for p in notary.inclusion(index, cp["size"])],
            "root": b64(cp["root"]),
            "checkpoint": cp["note"],
        }

    @router.get(
        "/audit/consistency",
        response_model=Consistency,
        tags=["audit"],
        summary="Consistency proof between two signed tree sizes",
    )
    def consistency(
        actor: Actor = actor_dep,
        first: Annotated[int, Query(alias="from", ge=1, le=MAX_POSITION, description=SIGNED_SIZE)] = 1,
        second: Annotated[int, Query(alias="to", ge=1, le=MAX_POSITION, description=SIGNED_SIZE)] = 1,
    ) -> dict[str, Any]:
        check_reads(actor, AUDIT_READERS, "the audit trail")
        one, two = notary.view.checkpoint(first), notary.view.checkpoint(second)
        for size, found in ((first, one), (second, two)):
            if found is None:
                raise NotFound(f"no checkpoint is signed for tree size {size}", Thing.TREE_SIZE, size)
        if first > second:
            raise InvalidCommand("from must not be larger than to: ask for the smaller tree size first")
        return {
            "size1": first,
            "size2": second,
            "root1": b64(one["root"]),
            "root2": b64(two["root"]),
            "proof": [b64(p) for p in notary.consistency(first, second)],
        }

    @router.get(
        "/audit/events/{position}",
        tags=["audit"],
        response_class=Response,
        summary="An event's canonical bytes (RFC 8785), whose SHA-256(0x00 || bytes) is its leaf",
    )
    def canonical_event(position: Position, actor: Actor = actor_dep) -> Response:
        check_reads(actor, SEE_EVERYTHING, "events one by one (their text reaches beyond a district)")
        body = app.recorded(position)
        if body is None:
            raise NotFound(f"no event at position {position}", Thing.POSITION, position)
        return Response(rfc8785.dumps(body), media_type="application/json")

    return router
