"""Who may deliver to a push endpoint: Pub/Sub, and nobody else.

`PushVerifier.verify(authorization=..., query=...)` raises AuthError unless the
request carries the push authentication this deployment configured:

- `oidc` (the cloud): the Google-signed OIDC token Pub/Sub attaches to each push
  (`Authorization: Bearer ...`), checked with google-auth: signature against
  Google's certificates, expiry, the audience (PUSH_AUTH_AUDIENCE, the endpoint
  URL Terraform configured) and the pushing service account
  (PUSH_AUTH_SERVICE_ACCOUNT, with `email_verified`).
- `token` (the local stack): the Pub/Sub emulator does not attach OIDC tokens
  (it stores a subscription's `oidcToken` but pushes without an Authorization
  header), so the dev stack generates a random
  secret and puts it in each push subscription's endpoint URL
  (`/_push/<fn>?token=...`), which is what Pub/Sub documented for push
  authentication before OIDC. It is compared in constant time.

Both run through the same hook in front of every topic function
(`platform.events.protect_push_endpoint`); with neither configured every push
is refused, so a forgotten setting fails closed.
"""

from __future__ import annotations

import functools
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from threatflow.platform.errors import AuthError, ConfigError

_GOOGLE_ISSUERS = ("accounts.google.com", "https://accounts.google.com")
GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"


@dataclass(frozen=True)
class PushVerifier:
    mode: str  # "oidc" | "token" | "off" (refuse everything)
    audience: str | None = None
    service_account: str | None = None
    token: str | None = None
    certs_url: str = GOOGLE_CERTS_URL

    @classmethod
    def from_settings(cls, settings: Any) -> PushVerifier:
        mode = settings.push_auth_mode
        if mode == "oidc":
            if not settings.push_auth_audience or not settings.push_auth_service_account:
                raise ConfigError("PUSH_AUTH_MODE=oidc needs PUSH_AUTH_AUDIENCE and PUSH_AUTH_SERVICE_ACCOUNT")
            return cls(
                "oidc",
                audience=settings.push_auth_audience,
                service_account=settings.push_auth_service_account,
                certs_url=settings.push_auth_certs_url or GOOGLE_CERTS_URL,
            )
        if mode == "token":
            if not settings.push_auth_token:
                return cls("off")
            return cls("token", token=settings.push_auth_token)
        return cls("off")

    def verify(self, *, authorization: str | None, query: Mapping[str, str]) -> None:
        if self.mode == "token":
            given = query.get("token") or ""
            if not given or not hmac.compare_digest(given.encode(), (self.token or "").encode()):
                raise AuthError("push delivery is not authenticated: missing or wrong push token")
            return
        if self.mode == "oidc":
            self._verify_oidc(authorization)
            return
        raise AuthError("push delivery refused: no push authentication is configured (PUSH_AUTH_MODE / PUSH_AUTH_TOKEN)")

    def _verify_oidc(self, authorization: str | None) -> None:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError("push delivery is not authenticated: no OIDC bearer token")
        claims = _verify_google_id_token(token.strip(), audience=self.audience or "", certs_url=self.certs_url)
        if claims.get("iss") not in _GOOGLE_ISSUERS:
            raise AuthError("push token was not issued by Google")
        if claims.get("email") != self.service_account or not claims.get("email_verified"):
            raise AuthError("push token belongs to another service account")


def _verify_google_id_token(token: str, *, audience: str, certs_url: str) -> dict[str, Any]:
    """Signature, expiry and audience, by google-auth against Google's published certificates."""
    import jwt
    from google.auth import exceptions
    from google.oauth2 import id_token

    try:
        return dict(id_token.verify_token(token, _transport(), audience=audience, certs_url=certs_url))
    except (ValueError, exceptions.GoogleAuthError, jwt.PyJWTError) as exc:
        raise AuthError(f"push token is not valid: {exc}") from None


@functools.lru_cache(maxsize=1)
def _transport() -> Any:
    """One HTTP session per instance; google-auth caches the certificates by their HTTP caching headers."""
    import google.auth.transport.requests

    return google.auth.transport.requests.Request()
