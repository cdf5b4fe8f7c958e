"""One exception type for everything a user can get wrong.

The CLI turns a :class:`SiamfaceError` into a one-line message and exit code 2, so bad input
(wrong paths, bad config values, unreadable files) never shows a traceback. Anything else is
a bug and is allowed to surface as one.
"""


class SiamfaceError(Exception):
    """A problem with the user's input, environment or files, explained in the message."""


class ConfigError(SiamfaceError):
    """An invalid configuration value; raised before any work starts."""
