"""Cross-domain intelligence: what needs both IoCs and threats (import, export, links, relations, correlation)."""
