"""One error type for bad input: the CLI prints its message (no traceback) and exits non-zero."""


class MedsecError(Exception):
    """A problem with the user's input or environment, with a message that names what is wrong."""


class ConfigError(MedsecError):
    """An invalid experiment configuration (unknown key, bad value, unknown profile)."""


class DataError(MedsecError):
    """A dataset that cannot be read or generated (missing folder, bad file, empty split)."""
