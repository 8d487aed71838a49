"""The one exception type that means "the user asked for something we cannot do".

The command line turns a UserError into a single line on stderr and exit status 2. Everything
else that escapes is a bug in arclens and keeps its traceback.
"""


class UserError(Exception):
    """A usage or input error. ``str(err)`` is the whole message the user sees: it names the
    file, task or flag and says what was expected."""
