"""Errors a user can hit and fix: their message is one line naming the file, column or key."""


class DataError(ValueError):
    """Input data that the pipeline cannot use as it is."""
