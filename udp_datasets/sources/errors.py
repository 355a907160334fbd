"""The errors every reader raises for data it cannot use (kept apart so that no reader imports another reader,
or a format module, for them)."""


class SourceError(ValueError):
    """SRC cannot be opened as a dataset, with the reason and the fix."""


class ColumnError(KeyError):
    """The data lacks the image (or key, or caption) column; the message lists what it has."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0])
