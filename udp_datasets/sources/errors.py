"""The error every reader raises for a source it cannot open (kept apart so that no reader imports another
reader, or a format module, for it)."""


class SourceError(ValueError):
    """SRC cannot be opened as a dataset, with the reason and the fix."""
