"""User-facing error types.

Every error a user can cause with bad input derives from :class:`TalkfastError`; the CLI prints its
message (no traceback) and exits non-zero.
"""


class TalkfastError(Exception):
    """Base class for errors whose message is meant for the user."""

    exit_code = 2


class InputError(TalkfastError, ValueError):
    """An input file (portrait, audio, manifest) is missing, unreadable or unusable."""


class OutputError(TalkfastError, OSError):
    """The output path cannot be written."""

    exit_code = 3


class CheckpointError(TalkfastError, FileNotFoundError):
    """A checkpoint folder or file is missing, incomplete or does not match the model."""

    exit_code = 4
