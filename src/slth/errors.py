"""User-facing errors.

``SlthError`` carries a one-line message that names the problem and the fix; the CLI prints it and
exits with status 2. It subclasses ``ValueError`` so library callers can catch it the usual way.
"""


class SlthError(ValueError):
    """Bad input or settings. The message is one line: what is wrong and how to fix it."""
