"""Errors that the command line reports as one clear line (no traceback) with a non-zero exit."""

from __future__ import annotations


class OrgansegError(Exception):
    """Base class of user-facing errors: bad input, bad checkpoint, bad configuration."""


class DataError(OrgansegError):
    """A data file or folder is missing, corrupt, or inconsistent. The message names the file."""


class CheckpointError(OrgansegError):
    """A checkpoint cannot be read, or does not fit the architecture. The message names the keys."""


class ConfigError(OrgansegError):
    """A configuration value is unknown or invalid."""


class UnknownModelError(ConfigError):
    """A network name the model registry does not know. The message names the key that gave it, the nearest
    registered name and all of them."""


class ExtraNotInstalledError(ConfigError):
    """An optional extra is not installed (a network's library, ONNX support). The message names what needs
    it, the missing package and the ``pip install 'organseg[EXTRA]'`` that brings it."""


class OutputError(OrgansegError):
    """An output cannot be written where asked: over an input, into a file or read-only place, or the disk is
    full. The message names the path."""


class NoRoomError(OutputError):
    """A write ran out of room (disk full, quota exceeded, file size limit): the message names the file, the
    space it needs and what is free, then what to do (``hint``), which a caller that knows better (``train``:
    resume) replaces with :meth:`with_hint`."""

    def __init__(self, path: object, problem: str, hint: str = "free some space and run the command again"):
        self.path, self.problem, self.hint = path, problem, hint
        super().__init__(f"{path}: {problem}: {hint}")

    def with_hint(self, hint: str) -> NoRoomError:
        return NoRoomError(self.path, self.problem, hint)
