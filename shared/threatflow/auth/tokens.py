"""Access tokens: HS256 JWTs with exp, iat, nbf, sub, role, aud and iss, via PyJWT.

Only HS256 is accepted when decoding, which rejects `alg=none` and algorithm
confusion; audience and issuer are required, so a token minted for another
service does not work here.
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
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
    return verify_claims(token, config=config)[0]


def verify_claims(token: str, *, config: TokenSettings) -> tuple[Principal, int]:
    """The principal the token's claims name, and its exp (epoch seconds)."""
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
        principal = Principal(
            user_id=int(claims.get("uid", 0)),
            username=str(claims["sub"]),
            role=role,
            clearance=str(claims.get("clr") or "amber"),
            version=int(claims.get("ver", 0)),
        )
        return principal, int(claims["exp"])
    except (ValueError, TypeError):
        raise AuthError("invalid token: bad role or subject claim") from None


class VerifiedTokens:
    """`verify`, remembered per process for tokens that passed it: the hot path checks the same
    bearer token on every request, and the HS256 check and claims decode are a tenth of a read's CPU.

    Only the pure token check is cached: the signature, aud, iss, nbf and the claims a valid
    token carries cannot change for the same token string. An entry lives `ttl_seconds` and never
    past the token's exp (after that, `verify` decides again, with its leeway). Keys are SHA-256
    digests of the token, so a token altered in any byte is a miss and is verified (and refused) in
    full; failures are never cached. Revocation is unaffected: disabling a user, changing a role or
    rotating a password is the account check that runs after this on every request (`ActiveUserCheck`).
    A changed JWT_SECRET needs a restart today anyway (TokenSettings is read once per process).
    At most `max_entries` tokens, least recently used evicted first."""

    def __init__(
        self,
        *,
        config: TokenSettings,
        ttl_seconds: float = 30.0,
        max_entries: int = 1024,
        clock: Callable[[], float] = time.time,
        check: Callable[[str], tuple[Principal, int]] | None = None,
    ) -> None:
        self._check = check or (lambda token: verify_claims(token, config=config))
        self._ttl = ttl_seconds
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[bytes, tuple[float, Principal]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def verify(self, token: str) -> Principal:
        key = hashlib.sha256(token.encode()).digest()
        now = self._clock()
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                if now < entry[0]:
                    self._entries.move_to_end(key)
                    return entry[1]
                del self._entries[key]
        principal, exp = self._check(token)
        until = min(now + self._ttl, float(exp))
        if until > now:
            with self._lock:
                self._entries[key] = (until, principal)
                self._entries.move_to_end(key)
                while len(self._entries) > self._max:
                    self._entries.popitem(last=False)
        return principal
