"""User-facing errors: the CLI prints their message (no traceback) and exits with status 2."""

from __future__ import annotations

import reprlib
from typing import Any


class EsgrpoError(Exception):
    """Bad input or an unavailable resource; the message names the key, file or value at fault."""


class ConfigError(EsgrpoError):
    """A config key or value is invalid."""


class DataSourceError(EsgrpoError):
    """A dataset could not be loaded (hub unreachable, file missing, wrong schema)."""


class ModelLoadError(EsgrpoError):
    """A model could not be loaded or built."""


# What an error message may echo of a value: a config value can be a million characters long, or a
# huge nested list, and the message is one line on a terminal.
_BRIEF = reprlib.Repr()
_BRIEF.maxstring = _BRIEF.maxother = 80
_BRIEF.maxlist = _BRIEF.maxtuple = _BRIEF.maxdict = _BRIEF.maxset = 8
_BRIEF.maxlevel = 3


def brief(value: Any) -> str:
    """repr(value) cut to a few dozen characters (a long string also says how long it is)."""
    text = _BRIEF.repr(value)
    if isinstance(value, str) and len(value) > _BRIEF.maxstring:
        text += f" ({len(value):,} characters)"
    return text


def clip(text: str, limit: int = 160) -> str:
    """Free text (an exception's message) on one line and at most `limit` characters, unquoted."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"
