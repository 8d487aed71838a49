"""The one exception type that means "the user asked for something we cannot do".

The command line turns a UserError into a single line on stderr and exit status 2. A RunFailed
(StorageUnavailable, DeviceOutOfMemory) or a full disk is one line and exit status 1: the run
stopped for a reason outside arclens, its committed work is kept, and a rerun resumes. Everything
else that escapes is a bug in arclens and keeps its traceback.
"""


class UserError(Exception):
    """A usage or input error. ``str(err)`` is the whole message the user sees: it names the
    file, task or flag and says what was expected."""


class RunFailed(Exception):
    """The run stopped for a reason outside arclens (the store stopped answering, the device ran
    out of memory). ``str(err)`` is the whole message, with what to do about it."""


class DeviceOutOfMemory(RunFailed):
    """The accelerator ran out of memory compiling or running a batch."""


def device_out_of_memory(err: BaseException, what: str, advice: str) -> BaseException:
    """``err`` as a DeviceOutOfMemory when it is XLA's RESOURCE_EXHAUSTED (raised at compile time
    on TPU, at allocation on GPU and CPU), else ``err`` itself, to be re-raised unchanged."""
    text = str(err)
    if "RESOURCE_EXHAUSTED" not in text:
        return err
    detail = next((ln.strip() for ln in text.splitlines() if "RESOURCE_EXHAUSTED" in ln), text)[:300]
    return DeviceOutOfMemory(f"the device ran out of memory on {what} ({detail}); {advice}")


class StorageUnavailable(RunFailed, OSError):
    """A store operation kept failing with transient errors (network trouble, 5xx, throttling)
    until its retries ran out. An OSError, so callers that handle I/O failures still do; the
    command line prints it as one line, since committed work is safe and a rerun resumes."""
