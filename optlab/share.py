"""A whole run setup in a link (TensorFlow Playground keeps its state in the URL the same way).

`encode(cfg)` is the settings that differ from RunConfig's defaults as compact JSON, the value of
the `setup` query parameter; `decode(text)` gives back the validated RunConfig. Defaults are left
out so links stay short and readable, and a link keeps working when a new setting is added.
"""
from __future__ import annotations

import json
from urllib.parse import quote

from optlab.config import ConfigError, RunConfig

PARAM = "setup"
MAX_CHARS = 4000          # browsers and proxies cut long URLs; a setup is far shorter


def encode(cfg: RunConfig) -> str:
    changed = cfg.changes_from(RunConfig())
    return json.dumps(changed, separators=(",", ":"), sort_keys=True)


def decode(text: str) -> RunConfig:
    """The RunConfig a `setup` value describes; ConfigError naming what is wrong."""
    if len(text) > MAX_CHARS:
        raise ConfigError(f"a shared setup is at most {MAX_CHARS} characters")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        raise ConfigError("the shared setup in this link is not readable (was the link cut?)") from None
    if not isinstance(data, dict):
        raise ConfigError("the shared setup in this link is not a set of settings")
    try:
        return RunConfig.from_dict(data).validate()
    except TypeError as e:
        raise ConfigError(f"the shared setup in this link is not a valid setup: {e}") from None


def link(base_url: str, cfg: RunConfig) -> str:
    """The Lab's address with this setup, e.g. http://192.0.2.7:8501/?setup=%7B...%7D."""
    return f"{base_url.rstrip('/')}/?{PARAM}={quote(encode(cfg), safe='')}"
