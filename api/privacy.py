"""Personal-data routes: what Baton holds about a person, and erasing it on request (PIPL art. 47)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from api.common import ERRORS, IdempotencyKey, PersonId, actor_dependency, answer, command_context
from api.schemas import EraseIn, PersonOut
from api.tokens import Tokens
from infra.bootstrap import Baton
from services.access import Actor


def privacy_router(baton: Baton, tokens: Tokens) -> APIRouter:
    router = APIRouter(prefix="/v1/people", tags=["personal data"], responses=ERRORS)
    actor_dep = Depends(actor_dependency(tokens))

    @router.get("/{person_id}", response_model=PersonOut, summary="Whether a person's data is held or erased")
    def person(person_id: PersonId, actor: Actor = actor_dep) -> dict[str, Any]:
        return baton.privacy.person(actor, person_id)

    @router.post(
        "/{person_id}/erase",
        response_model=PersonOut,
        summary="Erase a resident's personal data: their key is destroyed, the history stays verifiable",
    )
    def erase(
        person_id: PersonId,
        body: EraseIn,
        request: Request,
        response: Response,
        actor: Actor = actor_dep,
        idempotency_key: IdempotencyKey = None,
    ) -> dict[str, Any]:
        ctx = command_context(request, actor, idempotency_key, body)
        return answer(response, baton.privacy.erase(ctx, person_id, reason=body.reason))

    return router
