"""Who is calling. The types live in `threatflow.platform.identity` (the HTTP
pipeline checks roles without importing auth); this name keeps working."""

from __future__ import annotations

from threatflow.platform.identity import Principal, Role

__all__ = ["Principal", "Role"]
