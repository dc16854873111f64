"""User-facing errors: one line saying which file/value is wrong and what was expected.

The CLI prints ``error: <message>`` for these and exits with status 2 (no traceback unless
``traceback=true`` is given). Anything else escaping is a bug and keeps its traceback.
"""


class SambenchError(Exception):
    """Base class of every error caused by user input (config, files, data)."""


class ConfigError(SambenchError):
    """An unknown config choice, an impossible method x dataset pairing, a bad value."""


class CheckpointError(SambenchError):
    """A checkpoint file that is missing, empty, not a weights file or for another model."""


class DatasetError(SambenchError):
    """A dataset root, annotation file or image that is missing or unreadable."""


class OutputError(SambenchError):
    """A result that cannot be written (disk full, read-only or missing folder): names the file."""
