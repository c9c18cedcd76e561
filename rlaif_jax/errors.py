"""How an error that ends a command reaches the terminal: one line that says what and where (and
what to do for a full or read-only disk), and the noise from background threads and libraries
kept off the terminal, since the same failure reaches the stage itself. --verbose keeps it all.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import sys
import traceback


def error_line(e: BaseException) -> str:
  """One line for an error that ends a command: what and where, and what to do for a full or
  read-only disk (--verbose prints the traceback)."""
  filename = os.fsdecode(e.filename) if isinstance(e, OSError) and e.filename is not None else None
  code = e.errno if isinstance(e, OSError) else None
  said = _OS_ERROR.search(str(e))  # as gin passes it on: a copy of the message, without errno and filename
  if isinstance(e, OSError) and code is None and said:
    code, filename = int(said.group(1)), said.group(2)
  if code in (errno.ENOSPC, errno.EDQUOT):
    return (
      f"no space left on the disk writing {filename or 'a file'}; free space and rerun: it resumes from what was saved"
    )
  if code == errno.EROFS:
    return f"cannot write {filename or 'a file'} (read-only file system); give the job a folder it may write (WORKDIR)"
  if code in (errno.EACCES, errno.EPERM):
    return f"{filename or 'a file'}: permission denied; give the job files it may read and a folder it may write"
  text = str(e) if not filename or filename in str(e) else f"{filename}: {e}"
  text = _GIN_CALL.sub("", text)  # gin adds the configurable each error passed through
  if "No space left on device" in text or "RESOURCE_EXHAUSTED: Error writing" in text:  # tensorstore's full disk
    where = re.search(r'"(/[^"]+)"', text)
    return f"no space left on the disk writing {where.group(1) if where else 'a checkpoint'}; free space and rerun: " \
      "it resumes from the last complete checkpoint (an unfinished one is not used)"  # fmt: skip
  return " ".join(text.split()) or type(e).__name__


def quiet_background_errors() -> None:
  """Keeps what checkpointing's background threads print when a save fails (the same error again
  from orbax's thread and from asyncio per pending write, tensorstore's "Event loop is closed") off
  the terminal:
  the failure reaches the stage itself, which ends in one line. --verbose leaves them."""
  import threading

  default = threading.excepthook

  def thread_hook(args):
    frames = traceback.extract_tb(args.exc_traceback) if args.exc_traceback else []
    if any("orbax" in frame.filename for frame in frames):
      logging.debug("background thread %s: %r", args.thread and args.thread.name, args.exc_value)
    else:
      default(args)

  def closed_loop(hook):
    def quiet(*args):
      value = args[1] if len(args) > 1 else getattr(args[0], "exc_value", None)
      if not (isinstance(value, RuntimeError) and "Event loop is closed" in str(value)):
        hook(*args)

    return quiet

  threading.excepthook = thread_hook
  logging.getLogger("asyncio").setLevel(logging.CRITICAL)  # "Task exception was never retrieved", per write
  sys.excepthook = closed_loop(sys.excepthook)
  sys.unraisablehook = closed_loop(sys.unraisablehook)


_OS_ERROR = re.compile(r"\[Errno (\d+)\] [^:]*: '([^']+)'")
_GIN_CALL = re.compile(r"\s*In call to configurable '[^']*' \(<[^>]*>\)")


class QuietLibraries(logging.Filter):
  """Drops INFO chatter from orbax and the backend probe; warnings still pass. Orbax's reports of
  a failed background save (one per thread, each with its traceback) are dropped too: the failure
  reaches the stage, which ends in one line (verbose, from --verbose, keeps them)."""

  def __init__(self, verbose: bool = False):
    super().__init__()
    self.verbose = verbose

  def filter(self, record: logging.LogRecord) -> bool:
    noisy = "orbax" in record.pathname or "xla_bridge" in record.pathname
    if noisy and record.exc_info and not self.verbose:
      return False
    return record.levelno >= logging.WARNING or not noisy
