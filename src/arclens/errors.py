"""The one exception type that means "the user asked for something we cannot do".

The command line turns a UserError into a single line on stderr and exit status 2. A
StorageUnavailable (and a full disk) is one line and exit status 1: the run stopped for a reason
outside arclens and resumes when rerun. Everything else that escapes is a bug in arclens and keeps
its traceback.
"""


class UserError(Exception):
    """A usage or input error. ``str(err)`` is the whole message the user sees: it names the
    file, task or flag and says what was expected."""


class StorageUnavailable(OSError):
    """A store operation kept failing with transient errors (network trouble, 5xx, throttling)
    until its retries ran out. An OSError, so callers that handle I/O failures still do; the
    command line prints it as one line, since committed work is safe and a rerun resumes."""
