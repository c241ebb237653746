"""The project's exceptions: small, and each one names what was wrong."""


class LabError(Exception):
    """Base class of every error img2img_lab raises on purpose."""


class ValidationError(LabError, ValueError):
    """Bad user input (an argument, a spec key, a notebook parameter), found before any model runs.

    The message always names the argument and the offending value, e.g.
    ``"`strength` must be in [0, 1], got 1.2"``.
    """


class StoreError(LabError):
    """A sweep folder cannot be read or written (corrupt table, unwritable folder)."""
