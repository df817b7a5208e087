"""The one exception type users see: a one-line message that names the file or field and the fix."""


class JepaFastError(Exception):
    """A user-facing error. The CLI prints ``error: <message>`` and exits with status 2."""
