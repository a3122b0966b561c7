"""Who a queued job acts for when it runs: its requester's account as it is then.

Apart from `service` so that a worker that checks its requester (ioc-import) needs no token or password
libraries: only the users table (`repository`)."""

from __future__ import annotations

from threatflow.auth.model import Principal, Role
from threatflow.auth.repository import SecurityState, UserRepository
from threatflow.platform.errors import AuthError


def acting_for(users: UserRepository, *, user_id: int | None, username: str | None, version: int | None, role: Role) -> Principal:
    """The principal a queued job acts as when it runs: its requester's account as it is now, not as it was when
    the job was queued (the ioc-import job wrote with the clearance stored at queue time, for an account that may
    since have been disabled, demoted or lowered). The job is refused (AuthError, a permanent failure) when the
    token that queued it would now be refused, as ActiveUserCheck refuses one: the account is gone or disabled, or
    its security version moved (a role or password change, a disable); and when its role no longer allows `role`.
    A job queued before requesters' ids were stored (`user_id` None) is looked up by username, without the version."""
    if user_id is not None:
        state = users.security_state(user_id)
    else:
        user = users.get_by_username(username) if username else None
        state = SecurityState(user.disabled, user.role, user.clearance, user.security_version) if user else None
        user_id, username = (user.id, user.username) if user else (None, username)
    if state is None or state.disabled or user_id is None:
        raise AuthError(f"the account that queued this job ({username}) is disabled or no longer exists")
    if not state.role.allows(role):
        raise AuthError(f"the account that queued this job ({username}) no longer has the {role.value} role")
    if version is not None and state.version != version:
        raise AuthError(f"the account that queued this job ({username}) changed since (role, password or status); queue it again")
    return Principal(user_id, str(username), state.role, state.clearance, state.version)
