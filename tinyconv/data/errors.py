"""The exception types of the data pipeline."""


class DataError(ValueError):
    """Bad input to the data pipeline: a missing or malformed file, a stale or mismatched cache.

    The message always names the file or folder at fault (and the line, where there is one), so a
    user can fix it without a traceback. ``python -m tinyconv.data`` exits 1 on it.
    """


class UsageError(DataError):
    """A bad argument rather than bad data: an option out of range, an output path that must not be
    written, an unknown attribute name. ``python -m tinyconv.data`` exits 2 on it, as on a bad option."""
