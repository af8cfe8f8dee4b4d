"""Personal-data routes: what Baton holds about a person, and erasing it on request (PIPL art. 47)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from api.common import ERRORS, Commands, PersonId, Router, actor_dependency
from api.schemas import EraseIn, PersonOut
from api.tokens import Tokens
from services.access import Actor, Context
from services.base import Receipt
from services.privacy import PrivacyApp


def privacy_router(privacy: PrivacyApp, tokens: Tokens) -> APIRouter:
    router = Router(prefix="/v1/people", tags=["personal data"], responses=ERRORS)
    actor_dep = Depends(actor_dependency(tokens))
    command = Commands(router, actor_dep)

    @router.get("/{person_id}", response_model=PersonOut, summary="Whether a person's data is held or erased")
    def person(person_id: PersonId, actor: Actor = actor_dep) -> dict[str, Any]:
        return privacy.person(actor, person_id)

    @command.post(
        "/{person_id}/erase",
        response_model=PersonOut,
        summary="Erase a resident's personal data: their key is destroyed, the history stays verifiable",
    )
    def erase(ctx: Context, person_id: PersonId, body: EraseIn) -> Receipt:
        return privacy.erase(ctx, person_id, reason=body.reason)

    return router
