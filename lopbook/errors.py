"""The base class of every *expected* failure: bad input, missing data, a busy or foreign output file.

``python -m lopbook`` prints such an error as one line (``error: <message>``) and exits with status 2;
its message names the fix. Anything else is a bug and keeps its traceback. ``--debug`` shows the
traceback of expected failures too.
"""

from __future__ import annotations


class LopbookError(Exception):
    """An expected failure whose message says what went wrong and how to fix it."""


class ConfigError(LopbookError, ValueError):
    """A config, preset, override, seed list or device that lopbook does not accept."""


class DatasetError(LopbookError, ValueError):
    """A dataset file exists but cannot be read (truncated, corrupt, not the expected format)."""


class DatasetMissingError(LopbookError, FileNotFoundError):
    """A dataset is not where the loader looked; the message names the folder and how to get the files."""


class OutputError(LopbookError):
    """An output path that cannot or must not be written (bad suffix, read-only, holds another result)."""


class BusyError(LopbookError):
    """Another process is writing the same output (it holds the output's lock)."""


__all__ = ["LopbookError", "ConfigError", "DatasetError", "DatasetMissingError", "OutputError", "BusyError"]
