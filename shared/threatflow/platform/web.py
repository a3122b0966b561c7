"""The HTTP surface every HTTP function shares.

A `Router` is a table of routes. `Router.handle(request)` is the whole request
pipeline, in this order: request id and log scope, CORS preflight, body size,
route match, per-IP rate limit, authentication and role check, per-user rate
limit, body decoding and validation (msgspec, the field named on error), the
handler, and the mapping of the error tree to a JSON error. `/health` and
`/ready` are added to every router.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from threatflow.platform import limits
from threatflow.platform import logging as tf_logging
from threatflow.platform.errors import (
    AuthError,
    ConfigError,
    DependencyError,
    ForbiddenError,
    NotFoundError,
    RateLimitedError,
    ThreatFlowError,
    ValidationError,
)
from threatflow.platform.identity import Authenticator, Principal, Role

if TYPE_CHECKING:
    from werkzeug.wrappers import Request as WerkzeugRequest
    from werkzeug.wrappers import Response as WerkzeugResponse

    from threatflow.platform.config import Settings

log = logging.getLogger("threatflow.http")
# The routes' decoder, kept in limits: the jobs that read a stored request decode with it too (it needs no request).
decode_body = limits.decode_body
_PARAM = re.compile(r"\{(\w+)(?::(path|int))?\}")
_PARAM_REGEX = {None: "[^/]+", "path": ".+", "int": "[0-9]+"}
_CORS_ALLOW_HEADERS = "Authorization, Content-Type, X-Request-Id"
_INTEGER = re.compile(r"-?[0-9]+")


@dataclass
class Request:
    method: str
    path: str
    headers: Mapping[str, str]
    query: Mapping[str, str]
    body: bytes
    client_ip: str
    request_id: str
    path_params: dict[str, str] = field(default_factory=dict)
    principal: Principal | None = None

    def json(self) -> Any:
        limits.check_raw_json(self.body)
        return decode_json(self.body) if self.body else None

    def refuse_repeated(self) -> None:
        """A 400 naming the first query parameter given more than once. For routes that read one value of each: of
        `srcip=a&srcip=b` the first was answered, silently. (Routes that take a list, such as export's `ids`, read
        every value and do not call this.)"""
        values_of = getattr(self.query, "getlist", None)  # werkzeug's MultiDict; a plain mapping holds one value each
        if values_of is None:
            return
        for name in self.query:
            if len(values_of(name)) > 1:
                raise ValidationError(f"query parameter {name!r} is given more than once; give it once", field=name)

    def only(self, *known: str) -> None:
        """A 400 naming the first unknown query parameter, or one given more than once: a misspelt parameter
        (`?explian=true`) was otherwise ignored, and the answer looked like the one asked for."""
        self.refuse_repeated()
        unknown = sorted(set(self.query) - set(known))
        if unknown:
            listed = ", ".join(known) if known else "none"
            raise ValidationError(f"unknown query parameter {unknown[0]!r}; known: {listed}", field=unknown[0])

    def query_int(self, name: str, default: int, *, minimum: int = 0, maximum: int | None = limits.INT64_MAX) -> int:
        text = self.query.get(name)
        if text is None or text == "":
            return default
        # ASCII digits only, as the events search's limit: int() also reads "１０", "٥", "1_0", "+5" and " 5".
        if not _INTEGER.fullmatch(text):
            raise ValidationError(f"query parameter {name!r} must be an integer", field=name)
        try:
            value = int(text)
        except ValueError:  # past int()'s 4,300 digits
            raise ValidationError(f"query parameter {name!r} must be an integer", field=name) from None
        if value < minimum or (maximum is not None and value > maximum):
            bound = f" and at most {maximum}" if maximum is not None else ""
            raise ValidationError(f"query parameter {name!r} must be at least {minimum}{bound}", field=name)
        return value

    def query_number(self, name: str, *, minimum: float = 0.0) -> float | None:
        """A finite number at least `minimum`, or None when absent (a cursor such as a timestamp)."""
        text = self.query.get(name)
        if text is None or text == "":
            return None
        value = limits.decimal_text(text)  # ASCII decimal syntax: float() read "１５", "1_5", " 5"
        if value is None:
            raise ValidationError(f"query parameter {name!r} must be a number", field=name)
        if not math.isfinite(value) or value < minimum:
            raise ValidationError(f"query parameter {name!r} must be a finite number at least {minimum:g}", field=name)
        return value


@dataclass
class Response:
    body: Any = None
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"


Handler = Callable[..., Any]


@dataclass(frozen=True)
class Route:
    method: str
    pattern: str
    regex: re.Pattern[str]
    handler: Handler
    role: Role | None  # None: public
    body: type | None
    rate_limit: str  # "default" or "login"


def decode_json(raw: bytes) -> Any:
    """Untyped JSON, without the depth, NUL and 64-bit walk (the caller screens what it needs:
    a 10,000-flow detect batch would always trip the walk's pre-screen). Malformed, or nested
    past the decoder's own guard (the interpreter's recursion limit): a 400 naming the body."""
    limits.check_utf8(raw)
    try:
        return msgspec.json.decode(raw)
    except RecursionError:
        raise _too_deep() from None
    except msgspec.DecodeError as exc:
        raise ValidationError(f"request body is not valid JSON: {exc}", field="body") from None


def _too_deep() -> ValidationError:
    return ValidationError(f"body: JSON nests deeper than {limits.MAX_JSON_DEPTH} levels", field="body")


class RateDecision(Protocol):
    @property
    def allowed(self) -> bool: ...
    @property
    def retry_after_seconds(self) -> float: ...


class RateRefusal(Protocol):
    @property
    def index(self) -> int: ...
    @property
    def retry_after_seconds(self) -> float: ...


class RateLimiter(Protocol):
    def hit(self, key: str, *, limit: int, period_seconds: int) -> RateDecision: ...
    def hit_all(self, checks: Sequence[tuple[str, int, int]]) -> RateRefusal | None: ...


class RouterRuntime(Protocol):
    """What the pipeline needs from the function's wiring (`threatflow.runtime.Runtime`)."""

    @property
    def settings(self) -> Settings: ...
    @property
    def rate_limiter(self) -> RateLimiter: ...
    def readiness(self) -> dict[str, dict[str, Any]]: ...
    def dependency_error(self, exc: BaseException) -> DependencyError | None: ...


# Rate-limit keys refused by Redis that an instance remembers until their retry-after (RefusalMemo).
REFUSED_KEYS = 10_000


def _over_limit(limit: int, period_seconds: int, retry_after: float) -> RateLimitedError:
    """The 429 of a refused rate limit, whichever path (one key, or a request's keys at once) refused it."""
    return RateLimitedError(
        f"rate limit of {limit} requests per {period_seconds} s exceeded",
        retry_after=retry_after,
        details={"limit": limit, "period_seconds": period_seconds},
    )


class Router:
    def __init__(self, name: str, *, runtime: RouterRuntime, authenticator: Authenticator) -> None:
        self.name = name
        self.runtime = runtime
        self.authenticator = authenticator
        self.routes: list[Route] = []
        fallback = runtime.settings.login_fallback_per_instance
        self._login_fallback = limits.LocalRateLimiter(limit=fallback.limit, period_seconds=fallback.period_seconds)
        self._refused = limits.RefusalMemo(max_keys=REFUSED_KEYS, clock=time.monotonic)
        self.route("GET", "/health", role=None)(self._health)
        self.route("GET", "/ready", role=None)(self._ready)
        install_json_http_errors()

    def route(
        self, method: str, pattern: str, *, role: Role | None = Role.READER, body: type | None = None, rate_limit: str = "default"
    ) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            regex = "^" + _PARAM.sub(lambda m: f"(?P<{m.group(1)}>{_PARAM_REGEX[m.group(2)]})", pattern) + "$"
            self.routes.append(Route(method.upper(), pattern, re.compile(regex), handler, role, body, rate_limit))
            return handler

        return register

    # -- the pipeline -------------------------------------------------------

    def handle(self, flask_request: WerkzeugRequest) -> WerkzeugResponse:
        started = time.perf_counter()
        request_id = (
            flask_request.headers.get("X-Request-Id") or flask_request.headers.get("Function-Execution-Id") or tf_logging.new_execution_id()
        )[:64]
        origin = flask_request.headers.get("Origin")
        with tf_logging.execution_scope(request_id):
            request: Request | None = None
            try:
                request = self._request(flask_request, request_id)
                response = self._dispatch(request, origin)
            except ConfigError as exc:  # at request time: something this route needs is not set up
                response = self._error(DependencyError(exc.message))
            except ThreatFlowError as exc:
                response = self._error(exc)
            except Exception as exc:
                unavailable = self.runtime.dependency_error(exc)  # database down, Redis hung ... -> 503
                if unavailable is not None:
                    response = self._error(unavailable)
                else:
                    log.exception("unhandled error", extra={"fields": {"function": self.name}})
                    response = self._error(ThreatFlowError("internal error; see the logs for this request id"))
            response.headers["X-Request-Id"] = request_id
            self._cors_headers(response, origin)
            try:
                encoded = self._to_werkzeug(response)
            except (TypeError, NotImplementedError):
                log.exception("response not encodable", extra={"fields": {"function": self.name}})
                response = self._error(ThreatFlowError("internal error; see the logs for this request id"))
                encoded = self._to_werkzeug(response)
            tf_logging.log(
                log,
                logging.INFO if response.status < 500 else logging.ERROR,
                f"{flask_request.method} {flask_request.path} {response.status}",
                function=self.name,
                method=flask_request.method,
                path=flask_request.path,
                status=response.status,
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
                user=request.principal.username if request and request.principal else None,
                client_ip=request.client_ip if request else None,
            )
            return encoded

    def _request(self, fr: WerkzeugRequest, request_id: str) -> Request:
        # Read in pieces and stop at the limit, with or without Content-Length (chunked uploads).
        body = limits.read_body(fr.stream, limit=self.runtime.settings.max_request_bytes, content_length=fr.content_length)
        for name, value in fr.args.items(multi=True):
            limits.check_text(value, field=name)
        return Request(
            method=fr.method.upper(),
            path=fr.path.rstrip("/") or "/",
            headers=fr.headers,  # type: ignore[arg-type]
            query=fr.args,  # type: ignore[arg-type]
            body=body,
            client_ip=self._client_ip(fr),
            request_id=request_id,
        )

    def _client_ip(self, fr: WerkzeugRequest) -> str:
        hops = self.runtime.settings.trusted_proxy_hops
        forwarded = [p.strip() for p in fr.headers.get("X-Forwarded-For", "").split(",") if p.strip()]
        # Trust only as many entries from the right as there are proxies we run.
        if hops and len(forwarded) >= hops:
            return forwarded[-hops]
        return fr.remote_addr or "unknown"

    def _dispatch(self, request: Request, origin: str | None) -> Response:
        if request.method == "OPTIONS":
            return self._preflight(request, origin)
        route, params = self._match(request)
        for name, value in params.items():
            limits.check_text(value, field=name)
            if f"{{{name}:int}}" in route.pattern:
                limits.check_int(value, field=name)
        request.path_params = params
        is_probe = route.handler in (self._health, self._ready)
        if not is_probe and route.role is Role.READER and route.rate_limit != "login":  # login keeps its Redis-down fallback
            request.principal = self._authenticate_read(request, route)
        elif not is_probe:
            self._limit(f"ip:{route.rate_limit}:{request.client_ip}", self._ip_limit(route))
        if route.role is not None and request.principal is None:
            # Write and admin routes check the account's current state on every request; reads may use a 30 s cache.
            request.principal = self._authenticate(request, strict=route.role is not Role.READER)
            if not request.principal.role.allows(route.role):
                raise ForbiddenError(f"this needs the {route.role.value} role; you have {request.principal.role.value}")
            limit = self.runtime.settings.rate_limit_per_user
            self._limit(f"user:{request.principal.username}", (limit.limit, limit.period_seconds))
        args: list[Any] = [request]
        if route.body is not None:
            args.append(decode_body(request.body, route.body))
        result = route.handler(*args)
        return result if isinstance(result, Response) else Response(result)

    def _match(self, request: Request) -> tuple[Route, dict[str, str]]:
        allowed: list[str] = []
        for route in self.routes:
            match = route.regex.match(request.path)
            if match:
                if route.method == request.method or (route.method == "GET" and request.method == "HEAD"):
                    return route, match.groupdict()
                allowed.append(route.method)
        if allowed:
            raise _MethodNotAllowed(request.method, allowed)
        raise NotFoundError(f"no route for {request.method} {request.path}")

    def _authenticate_read(self, request: Request, route: Route) -> Principal:
        """Reads (the hot path): authenticate first, then both rate limits in one Redis round trip.

        The outcome is that of the write path's order (IP limit, authenticate, user limit): a refused
        IP limit answers 429 whatever the token; an authentication failure still charges the IP limit
        only; the user limit is charged only for an authenticated request whose IP limit allowed it.
        The difference: the first request over its IP limit costs a token check (cached, see
        BearerAuthenticator) before its 429; the ones after it, until the limit allows the address
        again, are refused from this instance's memory (RefusalMemo) before the token is looked at."""
        ip_key, ip_limit = f"ip:{route.rate_limit}:{request.client_ip}", self._ip_limit(route)
        self._refuse_remembered(ip_key, ip_limit)
        failure: Exception | None = None
        principal: Principal | None = None
        try:
            principal = self._authenticate(request, strict=False)
            if not principal.role.allows(Role.READER):
                raise ForbiddenError(f"this needs the {Role.READER.value} role; you have {principal.role.value}")
        except Exception as exc:  # re-raised below, after the IP limit has had its say
            failure, principal = exc, None
        checks = [(ip_key, *ip_limit)]
        if principal is not None:
            user = self.runtime.settings.rate_limit_per_user
            user_key = f"user:{principal.username}"
            self._refuse_remembered(user_key, (user.limit, user.period_seconds))
            checks.append((user_key, user.limit, user.period_seconds))
        self._limit_all(checks)
        if failure is not None or principal is None:
            raise failure or AuthError("missing bearer token (Authorization: Bearer <token>)")
        return principal

    def _limit_all(self, checks: list[tuple[str, int, int]]) -> None:
        asked_at = self._refused.now()  # before the call: a remembered refusal must not outlast Redis's
        try:
            refusal = self.runtime.rate_limiter.hit_all(checks)
        except DependencyError:
            # Fail open, as `_limit` does (never a login key here: the token route is public).
            log.warning("rate limiter unavailable; request allowed", extra={"fields": {"key": checks[0][0]}})
            return
        if refusal is not None:
            key, limit, period_seconds = checks[refusal.index]
            self._refused.refuse(key, refusal.retry_after_seconds, asked_at=asked_at)
            raise _over_limit(limit, period_seconds, refusal.retry_after_seconds)

    def _refuse_remembered(self, key: str, limit: tuple[int, int]) -> None:
        wait = self._refused.remaining(key)
        if wait > 0:
            raise _over_limit(limit[0], limit[1], wait)

    def _ip_limit(self, route: Route) -> tuple[int, int]:
        s = self.runtime.settings
        limit = s.rate_limit_login_per_ip if route.rate_limit == "login" else s.rate_limit_per_ip
        return limit.limit, limit.period_seconds

    def _limit(self, key: str, limit: tuple[int, int]) -> None:
        self._refuse_remembered(key, limit)
        asked_at = self._refused.now()
        try:
            decision = self.runtime.rate_limiter.hit(key, limit=limit[0], period_seconds=limit[1])
        except DependencyError:
            # Fail open: a Redis outage must not take the API down with it; /ready reports it.
            # Except for logins: a small in-process limit keeps password guessing bounded.
            log.warning("rate limiter unavailable; request allowed", extra={"fields": {"key": key}})
            if key.startswith("ip:login:"):
                wait = self._login_fallback.hit("login")
                if wait > 0:
                    raise RateLimitedError(
                        "the token endpoint is limited per instance while Redis is unavailable", retry_after=wait
                    ) from None
            return
        if not decision.allowed:
            self._refused.refuse(key, decision.retry_after_seconds, asked_at=asked_at)
            raise _over_limit(limit[0], limit[1], decision.retry_after_seconds)

    def _authenticate(self, request: Request, *, strict: bool) -> Principal:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError("missing bearer token (Authorization: Bearer <token>)")
        # The injected authenticator verifies the token and returns the account's current principal (role and
        # clearance); `strict` asks it to check the account's state in the database on this very request.
        return self.authenticator(token.strip(), strict=strict)

    # -- CORS ------------------------------------------------------------------

    def _origin_allowed(self, origin: str | None) -> bool:
        return bool(origin) and origin.rstrip("/") in self.runtime.settings.cors_allowed_origins  # type: ignore[union-attr]

    def _preflight(self, request: Request, origin: str | None) -> Response:
        if not self._origin_allowed(origin):
            raise ForbiddenError(f"origin {origin!r} is not in CORS_ALLOWED_ORIGINS")
        return Response(
            None,
            status=204,
            headers={
                "Access-Control-Allow-Methods": "GET, POST, PUT, PATCH, DELETE, OPTIONS",
                "Access-Control-Allow-Headers": _CORS_ALLOW_HEADERS,
                "Access-Control-Max-Age": "600",
            },
        )

    def _cors_headers(self, response: Response, origin: str | None) -> None:
        response.headers["Vary"] = "Origin"
        if self._origin_allowed(origin):
            response.headers["Access-Control-Allow-Origin"] = origin  # type: ignore[assignment]
            response.headers["Access-Control-Expose-Headers"] = "Retry-After, X-Request-Id"

    # -- responses ---------------------------------------------------------------

    def _error(self, exc: ThreatFlowError) -> Response:
        response = Response(exc.to_json(), status=exc.status)
        if isinstance(exc, RateLimitedError):
            response.headers["Retry-After"] = str(max(1, int(exc.retry_after + 0.999)))
        elif isinstance(exc, DependencyError):
            response.headers["Retry-After"] = str(exc.retry_after)
        if isinstance(exc, _MethodNotAllowed):
            response.headers["Allow"] = ", ".join(sorted(set(exc.allowed)))
        if isinstance(exc, AuthError):
            response.headers["WWW-Authenticate"] = 'Bearer realm="threatflow"'
        if exc.status >= 500 and not isinstance(exc, DependencyError):
            log.error(exc.message, extra={"fields": {"code": exc.code}})
        return response

    @staticmethod
    def _to_werkzeug(response: Response) -> WerkzeugResponse:
        from werkzeug.wrappers import Response as WerkzeugResponse

        if response.body is None:
            payload = b""
        elif isinstance(response.body, (bytes, str)):
            payload = response.body.encode() if isinstance(response.body, str) else response.body
        else:
            payload = msgspec.json.encode(response.body, enc_hook=_encode_extra)
        headers = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", **response.headers}
        return WerkzeugResponse(payload, status=response.status, headers=headers, content_type=response.content_type)

    # -- probes ------------------------------------------------------------------

    def _health(self, request: Request) -> dict[str, Any]:
        return {"status": "ok", "function": self.name}

    def _ready(self, request: Request) -> Response:
        checks = self.runtime.readiness()
        down = sorted(name for name, result in checks.items() if not result["ok"])
        if down:
            body = {
                "status": "unavailable",
                "down": down,
                "checks": checks,
                "error": {"code": "dependency_unavailable", "message": f"not ready: {', '.join(down)} down", "details": checks},
            }
            return Response(body, status=503)
        return Response({"status": "ready", "checks": checks})


def install_json_http_errors() -> None:
    """Errors functions-framework (Flask) answers itself, before any route runs (a path its URL map
    cannot match, such as one with a newline; 405; a body that is not a CloudEvent), as JSON like ours.

    Called while functions-framework imports main.py, inside the app context it creates."""
    import flask
    from werkzeug.exceptions import HTTPException

    if not flask.has_app_context():
        return  # imported outside functions-framework: nothing is served

    def http_error(exc: HTTPException) -> Any:
        status = exc.code or 500
        body = {"error": {"code": "bad_request" if status < 500 else "internal", "message": exc.name, "details": None}}
        if status == 404:
            body["error"]["code"] = "not_found"
        return flask.Response(msgspec.json.encode(body), status=status, content_type="application/json")

    flask.current_app.register_error_handler(HTTPException, http_error)


def _encode_extra(obj: Any) -> Any:
    """Types msgspec does not encode natively (datetime subclasses from the Google clients, sets)."""
    if isinstance(obj, datetime):
        return obj.isoformat()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise NotImplementedError(f"cannot encode {type(obj).__name__} as JSON")


class _MethodNotAllowed(ThreatFlowError):
    status = 405
    code = "method_not_allowed"

    def __init__(self, method: str, allowed: list[str]) -> None:
        super().__init__(f"{method} is not allowed here; use {', '.join(sorted(set(allowed)))}")
        self.allowed = allowed
