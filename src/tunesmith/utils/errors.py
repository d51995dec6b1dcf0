"""User-facing errors: the CLI prints their message alone, without a traceback."""


class TunesmithError(Exception):
    """An error caused by the user's input (config, data, model reference)."""


class ConfigError(TunesmithError):
    """The run configuration is invalid; the message names the key path."""


class DataError(TunesmithError):
    """A data file or record is invalid; the message starts with `file:line:`."""


class ModelError(TunesmithError):
    """A model reference cannot be resolved or loaded."""
