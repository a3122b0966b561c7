"""Authentication use cases: log in, check a bearer token, manage users."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from threatflow.auth import passwords, tokens
from threatflow.auth.guard import LoginGuard
from threatflow.auth.model import Principal, Role
from threatflow.auth.repository import SecurityState, User, UserRepository
from threatflow.platform.errors import AuthError, ConflictError, ForbiddenError, NotFoundError, ValidationError

if TYPE_CHECKING:
    from threatflow.platform.config import Settings

_ACTIVE_CACHE_SECONDS = 30.0
_USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{1,63}")  # the same rule as the users table CHECK


def login(
    *,
    username: str,
    password: str,
    users: UserRepository,
    config: tokens.TokenSettings,
    now: datetime,
    guard: LoginGuard,
    client_ip: str | None = None,
) -> dict[str, Any]:
    guard.check(username)  # a locked account costs no hash
    user = users.get_by_username(username)
    with guard.hashing():
        ok = passwords.verify_password(user.password_hash if user else None, password)
    if not ok or user is None or user.disabled:
        guard.failed(username, client_ip=client_ip)
        raise AuthError("invalid username or password")
    guard.succeeded(username)
    if passwords.needs_rehash(user.password_hash):
        users.set_password_hash(user.id, passwords.hash_password(password))
    users.record_login(user.id)
    token, expires_in = tokens.issue(user.principal(), config=config, now=now)
    return {"access_token": token, "token_type": "bearer", "expires_in": expires_in}


class ActiveUserCheck:
    """Is the token's user still enabled, with the same role and password?

    `strict` (write and admin requests): read the user's security state from the
    database on every request, so disabling a user, changing a role or rotating
    a password takes effect at once (the token's `ver` no longer matches).
    Otherwise (reads) the state is remembered for 30 s per instance, unless the
    token is newer than it. The returned principal carries the current clearance."""

    def __init__(self, security_state: Callable[[int], SecurityState | None]) -> None:
        self._security_state = security_state
        self._seen: dict[int, tuple[float, SecurityState]] = {}
        self._lock = threading.Lock()

    def __call__(self, principal: Principal, *, strict: bool) -> Principal:
        now = time.monotonic()
        with self._lock:
            cached = self._seen.get(principal.user_id)
        # A token newer than the remembered state (issued after a rotation, role change or re-enable: versions only
        # grow) proves that state stale: read it again, or the new login was refused as predating the change.
        if not strict and cached is not None and now - cached[0] < _ACTIVE_CACHE_SECONDS and cached[1].version >= principal.version:
            state = cached[1]
        else:
            found = self._security_state(principal.user_id)
            if found is None or found.disabled:
                raise AuthError("user is disabled or no longer exists")
            state = found
            with self._lock:
                if len(self._seen) > 10_000:
                    self._seen.clear()
                self._seen[principal.user_id] = (now, state)
        if state.disabled:
            raise AuthError("user is disabled or no longer exists")
        if state.version != principal.version:
            raise AuthError("this token predates a change to the account (role, password or status); log in again")
        return Principal(principal.user_id, principal.username, state.role, state.clearance, state.version)


class BearerAuthenticator:
    """The `platform.identity.Authenticator` of every HTTP function: verifies the
    token's signature and expiry, then the account's current security state
    (ActiveUserCheck: strict = read from the database on this request) and
    returns the principal with the account's current role and clearance.

    The token settings are read on the first request, so building a router needs
    no JWT_SECRET; `security_state(user_id)` runs its own short read (the wiring opens it)."""

    def __init__(self, *, settings: Settings, security_state: Callable[[int], SecurityState | None]) -> None:
        self._settings = settings
        self._verified: tokens.VerifiedTokens | None = None
        self._active = ActiveUserCheck(security_state)

    def __call__(self, token: str, *, strict: bool) -> Principal:
        if self._verified is None:
            self._verified = tokens.VerifiedTokens(config=tokens.TokenSettings.from_settings(self._settings))
        # The token check may come from a 30 s per-process cache (never past exp); the account
        # check below runs on every request, so revocation is as prompt as without the cache.
        principal = self._verified.verify(token)
        return self._active(principal, strict=strict)


def create_user(
    *,
    username: str,
    password: str,
    role: Role,
    users: UserRepository,
    clearance: str | None,
    actor: str | None,
    actor_clearance: str | None,
) -> User:
    """`actor_clearance`: the creating admin's, which bounds the account's as it bounds what PATCH grants (403 above
    it); with no `clearance` given the account gets the default, lowered to it (a green admin made amber accounts).
    None with `actor` None (the command line, the bootstrap of clearances): any clearance, the default when none is
    given. Required, as `actor` is: a route that left them out would have granted any clearance, unrecorded. The new
    account is recorded in the security events (`user_created`: by whom, how, its role and clearance)."""
    if actor is not None and actor_clearance is None:
        raise TypeError("create_user: an admin's creation (actor given) needs their actor_clearance")
    from threatflow.auth import clearance as tlp_clearance

    level = tlp_clearance.parse(clearance) if clearance is not None else None
    if level is not None and actor_clearance is not None and not tlp_clearance.can_read(actor_clearance, level):
        raise ForbiddenError(f"clearance: {level} is above your own clearance ({actor_clearance})", details={"field": "clearance"})
    if level is None:
        level = (
            tlp_clearance.DEFAULT_CLEARANCE
            if actor_clearance is None
            else tlp_clearance.cap(tlp_clearance.DEFAULT_CLEARANCE, actor_clearance)
        )
    if len(password) < passwords.MIN_PASSWORD_LENGTH:
        raise ValidationError(f"password must be at least {passwords.MIN_PASSWORD_LENGTH} characters", field="password")
    if len(password) > passwords.MAX_PASSWORD_LENGTH:
        raise ValidationError("password is too long", field="password")
    if not _USERNAME.fullmatch(username):
        raise ValidationError("username: 2-64 characters, letters, digits and . _ @ -, starting with a letter or digit", field="username")
    user = users.create(username=username, password_hash=passwords.hash_password(password), role=role, clearance=level)
    if user is None:
        raise ConflictError(f"user {username!r} already exists", details={"field": "username"})
    detail = {"by": actor, "via": "cli" if actor is None else "api", "role": user.role.value, "clearance": user.clearance}
    users.record_event("user_created", username=user.username, client_ip=None, detail=detail)
    return user


def set_disabled(*, username: str, disabled: bool, users: UserRepository, actor: str | None, actor_clearance: str | None, via: str) -> None:
    """Disable or enable an account, recorded in the audit log in the same transaction (`actor`: the admin; None
    from the command line, which runs as whoever holds the database URL).

    `actor_clearance`: the admin's, which the account's may not exceed (403 naming `username`, checked under the
    account's row lock as update_user checks it): an amber admin re-enabled a red account a red admin had disabled.
    None with `actor` None (the command line, the bootstrap path): any account."""
    if actor is not None and actor_clearance is None:
        raise TypeError("set_disabled: an admin's change (actor given) needs their actor_clearance")
    target = _locked_target(username, users=users, actor_clearance=actor_clearance, field="username")
    if disabled and actor is not None:
        _keep_an_enabled_admin(target, users=users, field="username")
    found = users.set_disabled(target.username, disabled)
    if found is None:
        raise NotFoundError(f"no user named {username!r}")
    users.record_event("user_disabled" if disabled else "user_enabled", username=found, client_ip=None, detail={"by": actor, "via": via})


def revoke_tokens(
    *, username: str, users: UserRepository, actor: str, actor_clearance: str | None, token_version: int | None, via: str
) -> None:
    """End every token of the account `username` (its security version goes up), recorded in the security events
    (`tokens_revoked`: by whom, how) in the same transaction. `actor` is an admin, whose clearance the account's may
    not exceed (403 naming `username`), checked under the account's row lock as the other admin changes are, or the
    user themselves (POST /auth/revoke) with `actor_clearance` None: their own account, whatever its clearance now
    (a principal's may be up to 30 s old on a reader route). No such account, a 404.

    `token_version`: the caller's token's `ver` when they revoke their own account (None for an admin, whose route
    checks their token on the request). POST /auth/revoke is a reader route, whose account check may come from an
    instance's 30 s memory, so it is checked again here under the row lock: a token already revoked, or a disabled
    account's, is a 401 that ends nothing (it revoked again, ending the new login its owner had just made)."""
    target = _locked_target(username, users=users, actor_clearance=actor_clearance, field="username")
    if token_version is not None and (target.disabled or target.security_version != token_version):
        raise AuthError("this token predates a change to the account (role, password or status); log in again")
    found = users.bump_security_version(target.username)
    if found is None:
        raise NotFoundError(f"no user named {username!r}")
    users.record_event("tokens_revoked", username=found, client_ip=None, detail={"by": actor, "via": via})


def _keep_an_enabled_admin(target: User, *, users: UserRepository, field: str) -> None:
    """Refuse (409 naming `field`) a change that takes the enabled admin role from `target` (its caller's demotion or
    disable) when no other enabled admin would remain: the last admin demoted or disabled themselves, and only the
    command line (which skips this check: it is the way back) could make one again. Serialised with every other such
    change (UserRepository.lock_admin_changes), so two admins demoting each other at once cannot both succeed."""
    if target.role is not Role.ADMIN or target.disabled:
        return
    users.lock_admin_changes()
    if users.enabled_admins_besides(target.id) == 0:
        raise ConflictError(
            f"{field}: {target.username!r} is the last enabled admin; make or enable another admin first",
            details={"field": field},
        )


def _locked_target(username: str, *, users: UserRepository, actor_clearance: str | None, field: str) -> User:
    """The account an admin changes, its row locked until the caller's transaction ends (a concurrent raise of its
    clearance is waited for, never slipped past), and within `actor_clearance` (None: the command line, any
    account): above it, a 403 naming `field`; no such account, a 404."""
    from threatflow.auth import clearance as tlp_clearance

    current = users.get_by_username(username, for_update=True)
    if current is None:
        raise NotFoundError(f"no user named {username!r}")
    if actor_clearance is not None and not tlp_clearance.can_read(actor_clearance, current.clearance):
        raise ForbiddenError(
            f"{field}: {current.username!r} is cleared for {current.clearance}, above your own clearance ({actor_clearance})",
            details={"field": field},
        )
    return current


def update_user(
    *,
    username: str,
    role: Role | None,
    clearance: str | None,
    password: str | None,
    users: UserRepository,
    actor: str | None,
    actor_clearance: str,
) -> User:
    """An admin changes a user's role, clearance or password; role and password changes end the user's tokens at once.

    The admin's own clearance bounds it, as it bounds their deletes and reads: a clearance above it is not theirs to
    grant (to themselves either), and an account cleared above it is not theirs to change at all: not its password (a
    login at that clearance), its clearance, nor its role (what its login may do): a 403 naming `password`,
    `clearance` or `role`, whatever else the body holds. Its role was theirs to change."""
    from threatflow.auth import clearance as tlp_clearance

    level = tlp_clearance.parse(clearance) if clearance is not None else None
    if level is not None and not tlp_clearance.can_read(actor_clearance, level):
        raise ForbiddenError(f"clearance: {level} is above your own clearance ({actor_clearance})", details={"field": "clearance"})
    # Locked until the update below commits (the caller's one transaction): read unlocked, a raise of the target's
    # clearance committed between the check and the update slipped past the check.
    field = "password" if password is not None else "clearance" if level is not None else "role"
    target = _locked_target(username, users=users, actor_clearance=actor_clearance, field=field)
    if role is not None and role is not Role.ADMIN:
        _keep_an_enabled_admin(target, users=users, field="role")
    password_hash = None
    if password is not None:
        if not passwords.MIN_PASSWORD_LENGTH <= len(password) <= passwords.MAX_PASSWORD_LENGTH:
            raise ValidationError(f"password must be at least {passwords.MIN_PASSWORD_LENGTH} characters", field="password")
        password_hash = passwords.hash_password(password)
    user = users.update(username, role=role, clearance=level, password_hash=password_hash)
    if user is None:
        raise NotFoundError(f"no user named {username!r}")
    changed = {"role": role.value if role else None, "clearance": level, "password": password is not None}
    users.record_event("user_updated", username=user.username, client_ip=None, detail={"by": actor, **changed})
    return user
