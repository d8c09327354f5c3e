"""The one exception type of the data pipeline."""


class DataError(ValueError):
    """Bad input to the data pipeline: a missing or malformed file, a stale or mismatched cache.

    The message always names the file or folder at fault, so a user can fix it without a traceback.
    """
