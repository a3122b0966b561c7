"""Threats: actors, campaigns, malware, tools and intrusion sets, tied to IoCs and ATT&CK."""
