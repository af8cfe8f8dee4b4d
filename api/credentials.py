"""Credential routes: revoking a token, or every token an actor holds, recorded as events."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Depends

from api.common import ERRORS, Commands, Router, actor_dependency
from api.schemas import RevocationIn, RevocationOut
from api.tokens import InvalidToken, Tokens
from domain.errors import InvalidCommand
from services.access import Context
from services.base import Receipt
from services.credentials import CredentialsApp


def credentials_router(credentials: CredentialsApp, tokens: Tokens) -> APIRouter:
    router = Router(prefix="/v1/tokens", tags=["credentials"], responses=ERRORS)
    command = Commands(router, Depends(actor_dependency(tokens)))

    @command.post(
        "/revocations",
        status_code=201,
        response_model=RevocationOut,
        summary="Revoke one token, or every token issued to an actor so far (admin)",
    )
    def revoke(ctx: Context, body: RevocationIn) -> Receipt:
        if body.token is not None:
            try:
                claims = tokens.claims(body.token, verify_exp=False)
            except InvalidToken as exc:
                raise InvalidCommand(f"token: {exc}; only a token Baton issued can be revoked") from None
            if "jti" not in claims:
                raise InvalidCommand("token: it carries no token id (jti); revoke its actor instead")
            expires = datetime.fromtimestamp(float(claims["exp"]), UTC)
            receipt = credentials.revoke_token(ctx, claims["jti"], expires, body.reason)
        else:
            assert body.actor is not None
            receipt = credentials.revoke_actor(ctx, body.actor, body.reason)
        tokens.refresh()
        return receipt

    return router
