"""User-facing errors: the CLI prints their message (no traceback) and exits with status 2."""


class EsgrpoError(Exception):
    """Bad input or an unavailable resource; the message names the key, file or value at fault."""


class ConfigError(EsgrpoError):
    """A config key or value is invalid."""


class DataSourceError(EsgrpoError):
    """A dataset could not be loaded (hub unreachable, file missing, wrong schema)."""


class ModelLoadError(EsgrpoError):
    """A model could not be loaded or built."""
