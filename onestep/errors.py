"""The one exception type users see: a one-line message saying what is wrong and what to do."""


class OnestepError(Exception):
    """A user-facing error. The CLI prints ``onestep: error: <message>`` and exits 2."""


class OnestepWarning(UserWarning):
    """A user-facing warning; the CLI prints it as ``onestep: warning: <message>``."""
