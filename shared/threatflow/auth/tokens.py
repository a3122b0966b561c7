"""Access tokens: HS256 JWTs with exp, iat, nbf, sub, role, aud and iss, via PyJWT.

Only HS256 is accepted when decoding, which rejects `alg=none` and algorithm
confusion; audience and issuer are required, so a token minted for another
service does not work here.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from threatflow.auth.model import Principal, Role
from threatflow.platform.errors import AuthError, ConfigError

ALGORITHM = "HS256"
LEEWAY_SECONDS = 10


@dataclass(frozen=True)
class TokenSettings:
    secret: str
    audience: str
    issuer: str
    ttl_seconds: int

    @classmethod
    def from_settings(cls, settings: Any) -> TokenSettings:
        if not settings.jwt_secret:
            raise ConfigError("JWT_SECRET is not set; HTTP functions cannot issue or check tokens without it")
        return cls(settings.jwt_secret, settings.jwt_audience, settings.jwt_issuer, settings.jwt_ttl_seconds)


def issue(principal: Principal, *, config: TokenSettings, now: datetime) -> tuple[str, int]:
    import jwt

    issued = int(now.timestamp())
    claims = {
        "sub": principal.username,
        "uid": principal.user_id,
        "role": principal.role.value,
        "clr": principal.clearance,
        "ver": principal.version,
        "iat": issued,
        "nbf": issued,
        "exp": issued + config.ttl_seconds,
        "aud": config.audience,
        "iss": config.issuer,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, config.secret, algorithm=ALGORITHM), config.ttl_seconds


def verify(token: str, *, config: TokenSettings) -> Principal:
    import jwt

    try:
        claims = jwt.decode(
            token,
            config.secret,
            algorithms=[ALGORITHM],
            audience=config.audience,
            issuer=config.issuer,
            leeway=LEEWAY_SECONDS,
            options={"require": ["exp", "iat", "sub", "role", "aud", "iss"]},
        )
    except jwt.ExpiredSignatureError:
        raise AuthError("token has expired") from None
    except jwt.InvalidAudienceError:
        raise AuthError("token was issued for another audience") from None
    except jwt.InvalidTokenError as exc:
        raise AuthError(f"invalid token: {exc}") from None
    try:
        role = Role(claims["role"])
        return Principal(
            user_id=int(claims.get("uid", 0)),
            username=str(claims["sub"]),
            role=role,
            clearance=str(claims.get("clr") or "amber"),
            version=int(claims.get("ver", 0)),
        )
    except (ValueError, TypeError):
        raise AuthError("invalid token: bad role or subject claim") from None
