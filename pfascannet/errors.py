"""User-facing errors: every command turns these into one line and a non-zero exit."""


class PfaError(Exception):
    """Base of the errors a user can cause (bad file, bad flag, bad geometry).

    Their message is a complete sentence naming what was received and what was
    expected; the command-line wrappers print it on one line, without a traceback.
    """
