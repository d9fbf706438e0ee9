"""Turning config dicts into MLflow params/tags: flatten, redact secrets, respect size limits.

Secrets: an environment variable whose NAME contains TOKEN, KEY, SECRET, PASSWORD or
CREDENTIAL is a secret; its VALUE must never reach a param or tag. Config keys themselves are
not matched by those words, because this project's configs legitimately have keys such as
`tokenizer` or `max_tokens`; instead we redact (1) any occurrence of a secret env value inside
a value, (2) passwords embedded in URLs (`https://user:pw@host`), and (3) values of keys that
name a credential outright (`*_token`, `*api_key`, `password`, ...; see _SECRET_KEY_RE).
"""
from __future__ import annotations

import os
import re
from typing import Any, Dict, Mapping, Optional, Tuple

SECRET_NAME_WORDS = ("TOKEN", "KEY", "SECRET", "PASSWORD", "CREDENTIAL")
REDACTED = "[REDACTED]"
# Shorter env values ("1", "true", "cpu") would redact innocent substrings everywhere; a real
# secret is longer than this.
MIN_SECRET_LEN = 6

PARAM_VALUE_MAX = 6000   # MLflow MAX_PARAM_VAL_LENGTH
TAG_VALUE_MAX = 8000     # MLflow MAX_TAG_VAL_LENGTH
KEY_MAX = 250            # MLflow MAX_ENTITY_KEY_LENGTH

# Leaf key names that hold a credential by name. Deliberately narrow (see module docstring):
# `pad_token` in a tokenizer config is a vocabulary entry, not a secret, so bare `token`
# matches only as the whole leaf name or with an auth-ish prefix.
_SECRET_KEY_RE = re.compile(
    r"^(token|secret|password|passwd|credentials?)$"
    r"|(auth|access|api|hf|bearer|refresh|session|secret)_?token$"
    r"|(api|access|secret|private|signing)_?key$"
    r"|_?(secret|password|passwd|credentials?)$",
    re.IGNORECASE)
_URL_PASSWORD_RE = re.compile(r"(\w+://[^/\s:@]+:)([^/\s@]+)(@)")


def is_secret_env_name(name: str) -> bool:
    upper = name.upper()
    return any(word in upper for word in SECRET_NAME_WORDS)


def secret_env_values(environ: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """value -> env var name, for every secret-named env var with a non-trivial value."""
    env = os.environ if environ is None else environ
    return {v: k for k, v in env.items()
            if is_secret_env_name(k) and v and len(v) >= MIN_SECRET_LEN}


def redact_value(key: str, value: str, secrets: Mapping[str, str]) -> Tuple[str, bool]:
    leaf = key.rsplit(".", 1)[-1]
    if _SECRET_KEY_RE.search(leaf) and value:
        return REDACTED, True
    out = value
    # Longest first, so a secret that contains another one is removed whole.
    for secret in sorted(secrets, key=len, reverse=True):
        if secret in out:
            out = out.replace(secret, REDACTED)
    out = _URL_PASSWORD_RE.sub(rf"\g<1>{REDACTED}\g<3>", out)
    return out, out != value


def redact(values: Mapping[str, Any], environ: Optional[Mapping[str, str]] = None
           ) -> Tuple[Dict[str, str], int]:
    """Redacted copy of a flat str->value mapping and how many values were changed."""
    secrets = secret_env_values(environ)
    out: Dict[str, str] = {}
    n = 0
    for k, v in values.items():
        out[k], changed = redact_value(k, str(v), secrets)
        n += changed
    return out, n


def flatten(d: Dict[str, Any], prefix: str = "") -> Dict[str, str]:
    out: Dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)
    return out


def truncate(value: str, limit: int) -> Tuple[str, bool]:
    """Cut a value to MLflow's limit, saying so inside the value (the full text goes to an
    artifact, see MLflowTracker.log_params)."""
    if len(value) <= limit:
        return value, False
    marker = f"...[truncated {len(value)} chars; full value in artifact params/params.json]"
    return value[: limit - len(marker)] + marker, True


def prepare(values: Mapping[str, Any], value_max: int,
            environ: Optional[Mapping[str, str]] = None) -> Tuple[Dict[str, str], Dict[str, int]]:
    """Redact then size-limit a flat mapping; returns it and counts for the log line."""
    red, n_red = redact(values, environ)
    out: Dict[str, str] = {}
    n_cut = 0
    for k, v in red.items():
        if len(k) > KEY_MAX:
            # A key cannot be shortened without colliding or losing meaning; refuse loudly
            # rather than let the whole batch be rejected by the server.
            raise ValueError(f"tracking key longer than {KEY_MAX} chars: {k[:80]}...")
        out[k], cut = truncate(v, value_max)
        n_cut += cut
    return out, {"redacted": n_red, "truncated": n_cut}
