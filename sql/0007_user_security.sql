-- User security (issue 7): TLP clearance, a security version that invalidates
-- tokens at once, and the security events admins can list (lockouts ...).
ALTER TABLE users ADD COLUMN IF NOT EXISTS clearance text NOT NULL DEFAULT 'amber'
    CHECK (clearance IN ('clear', 'green', 'amber', 'amber+strict', 'red'));
-- Bumped when a user is disabled or enabled, changes role or password: tokens carry the
-- version they were issued under, and write and admin requests compare it with this.
ALTER TABLE users ADD COLUMN IF NOT EXISTS security_version integer NOT NULL DEFAULT 0;

CREATE TABLE IF NOT EXISTS security_events (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT now(),
    kind       text        NOT NULL,   -- account_locked, user_disabled, role_changed ...
    username   text        NOT NULL,
    client_ip  text,
    detail     jsonb       NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX IF NOT EXISTS security_events_at_idx ON security_events (id DESC);
