"""One exception type for everything a user can get wrong.

The CLI turns a :class:`SiamfaceError` into a one-line message and exit code 2, so bad input
(wrong paths, bad config values, unreadable files) never shows a traceback. Anything else is
a bug: the CLI still answers with one line and exit code 2, and writes the traceback to a
file (``siamface --debug`` prints it instead).
"""


class SiamfaceError(Exception):
    """A problem with the user's input, environment or files, explained in the message."""


class ConfigError(SiamfaceError):
    """An invalid configuration value; raised before any work starts."""


class OutputError(SiamfaceError, OSError):
    """An output could not be written (full disk, read-only folder, a file where a folder
    should be...). Also an :class:`OSError`, so code that already handles failed writes as
    ``OSError`` keeps working."""
