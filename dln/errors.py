"""The one exception type users see.

Every error caused by input (a bad URI, a missing file, a malformed config, an unreachable server) is raised
as `DLNError` with a message that names the problem and the fix. The CLI prints it as one line and exits 2;
anything else is a bug and keeps its traceback.
"""


class DLNError(Exception):
    """A user-facing error: the message says what is wrong and how to fix it."""
