"""The errors that mean "what you gave cannot work", not "the code is broken".

Each names the file, key or value at fault and what to do. The tools print a :class:`UserError`
as one line (exit status 2) and keep the traceback of anything else. Every class also derives
from the built-in exception it stands for, so ``except ValueError`` still catches a
:class:`ConfigError`.
"""


class UserError(Exception):
    """Base class: an input of the user's (config, argument, file, data) is at fault."""


class ConfigError(UserError, ValueError):
    """A config key or value, or a command-line argument, that cannot work."""


class ConfigTypeError(ConfigError, TypeError):
    """A config value of the wrong type."""


class ConfigKeyError(ConfigError, KeyError):
    """A config key that is missing or unknown (printed without ``KeyError``'s quotes)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ''


class UnsupportedError(UserError, NotImplementedError):
    """A combination of settings that this code does not support, with the one to use."""


class InputError(UserError, ValueError):
    """The content of a file or folder the user gave (image, log, video, annotations)."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder that the config or the command line names does not exist."""


class MissingPackageError(UserError, ModuleNotFoundError):
    """An optional Python package that the chosen feature needs is not installed."""


class CheckpointMismatchError(UserError, ValueError):
    """A checkpoint whose tensor names or shapes do not fit the model it is loaded into."""
