"""One error tree; its branch decides what happens to a request or a message.

ThreatFlowError
├── ConfigError            bad or missing configuration: fail start-up, name the variable
├── PermanentError         retrying cannot help: HTTP 4xx, Pub/Sub ack and log
│   ├── ValidationError    400, names the field
│   ├── AuthError          401
│   ├── ForbiddenError     403
│   ├── NotFoundError      404
│   └── ConflictError      409
└── RetryableError         may succeed later: HTTP 5xx/429, Pub/Sub redelivers
    ├── RateLimitedError   429 with Retry-After
    └── DependencyError    503, a backing service is down
"""

from __future__ import annotations

from typing import Any


class ThreatFlowError(Exception):
    status = 500
    code = "internal"

    def __init__(self, message: str, *, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_json(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


class ConfigError(ThreatFlowError):
    code = "config"


class PermanentError(ThreatFlowError):
    status = 400
    code = "bad_request"


class ValidationError(PermanentError):
    code = "validation"

    def __init__(self, message: str, *, field: str | None = None, details: Any = None) -> None:
        if details is None and field is not None:
            details = {"field": field}
        super().__init__(message, details=details)
        self.field = field


class AuthError(PermanentError):
    status = 401
    code = "unauthenticated"


class ForbiddenError(PermanentError):
    status = 403
    code = "forbidden"


class NotFoundError(PermanentError):
    status = 404
    code = "not_found"


class ConflictError(PermanentError):
    status = 409
    code = "conflict"


class PayloadTooLargeError(PermanentError):
    status = 413
    code = "payload_too_large"


class RetryableError(ThreatFlowError):
    status = 503
    code = "unavailable"


class RateLimitedError(RetryableError):
    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: float, details: Any = None) -> None:
        super().__init__(message, details=details)
        self.retry_after = retry_after


class DependencyError(RetryableError):
    """503 with Retry-After; the message names the dependency (PostgreSQL, Redis, ATT&CK data ...)."""

    code = "dependency_unavailable"

    def __init__(self, message: str, *, details: Any = None, retry_after: int = 5) -> None:
        super().__init__(message, details=details)
        self.retry_after = retry_after
