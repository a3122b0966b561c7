"""Google client failures that mean "a backing service is unavailable", as a 503 naming it.

The adapters translate the errors they expect; this catches the rest at the
HTTP pipeline (via Runtime.dependency_error) so an unreachable emulator, an
exhausted retry or missing credentials is a 503, not a 500.
"""

from __future__ import annotations

from threatflow.platform.errors import DependencyError


def unavailable(exc: BaseException) -> DependencyError | None:
    seen: BaseException | None = exc
    while seen is not None:
        module = type(seen).__module__
        if module.startswith(("google.api_core", "google.auth")):
            from google.api_core import exceptions as api
            from google.auth import exceptions as auth

            if isinstance(seen, (api.ServiceUnavailable, api.DeadlineExceeded, api.RetryError, api.InternalServerError)):
                return DependencyError(f"a Google Cloud service is unavailable ({seen.__class__.__name__}); retry later")
            if isinstance(seen, auth.DefaultCredentialsError):
                return DependencyError("Google Cloud credentials are not available to this function (or the emulator is not configured)")
        seen = seen.__cause__ or seen.__context__
    return None
