"""Self-contained modeling code copied into every export folder (trust_remote_code)."""
