"""Errors that cnncli reports to the user as one sentence and an exit code, never as a traceback."""

from __future__ import annotations


class CnncliError(Exception):
    """A problem the user can fix; the message says what is wrong and what to do. Exit code 1."""

    exit_code = 1


class UsageError(CnncliError):
    """The command was asked for something that cannot be done as asked (unknown model, no images). Exit 2."""

    exit_code = 2


class ImageError(CnncliError):
    """One image could not be read; batch jobs report it and go on with the others."""


class ImageTooLargeError(ImageError):
    """An image over the decompression-bomb pixel limit (CNNCLI_MAX_PIXELS)."""


class ModelFileError(CnncliError):
    """A model file is missing, corrupt, of the wrong type, or not a cnncli model file; its card or ONNX graph is
    damaged. A usage error (exit 2): the command cannot run with that model, and says so before any work."""

    exit_code = 2


class WeightsError(CnncliError):
    """Pretrained weights could not be found, downloaded or verified."""


class MissingFileError(ModelFileError):
    """A model or weights file named on the command line does not exist: a usage error (exit 2)."""

    exit_code = 2
