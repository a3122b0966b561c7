"""Routes of the auth function."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from threatflow.adapters.postgres import unit_of_work
from threatflow.auth import service, tokens
from threatflow.auth.model import Role
from threatflow.auth.repository import UserRepository
from threatflow.platform.web import Request, Router
from threatflow.runtime import Runtime


class TokenRequest(msgspec.Struct, forbid_unknown_fields=True):
    username: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    password: Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]


def authenticator(runtime: Runtime) -> service.BearerAuthenticator:
    """The wiring of the HTTP pipeline's authentication, shared by every function's router."""

    def is_active(user_id: int) -> bool:
        with unit_of_work(runtime.engine) as conn:
            return UserRepository(conn).is_active(user_id)

    return service.BearerAuthenticator(settings=runtime.settings, is_active=is_active)


def build_router(runtime: Runtime) -> Router:
    router = Router("auth", runtime=runtime, authenticator=authenticator(runtime))
    config = tokens.TokenSettings.from_settings(runtime.settings)  # fails start-up without JWT_SECRET

    @router.route("POST", "/api/v1/auth/token", role=None, body=TokenRequest, rate_limit="login")
    def token(request: Request, body: TokenRequest) -> dict[str, Any]:
        with unit_of_work(runtime.engine) as conn:
            return service.login(
                username=body.username,
                password=body.password,
                users=UserRepository(conn),
                config=config,
                now=runtime.clock.now(),
            )

    @router.route("GET", "/api/v1/auth/me", role=Role.READER)
    def me(request: Request) -> dict[str, Any]:
        principal = request.principal
        assert principal is not None
        return {"username": principal.username, "role": principal.role.value, "user_id": principal.user_id}

    return router
