"""Every storage call bounded: a deadline, and storage exceptions as one-line StorageErrors (exit 3).

Storage libraries (gcsfs/aiohttp, tensorstore, Orbax's commit threads) can block forever on an endpoint
that accepts connections and never answers, and some of their waits cannot be cancelled. So `call()` arms a
watchdog: if the call has not returned by its deadline, the installed handler reports the storage error
(one line, result file) and the process exits 3 at once. Deadlines, from the environment:

- `PAX_STORAGE_TIMEOUT_S` (default 60): listings, probes, small reads and writes (metadata, owner record).
- `PAX_STORAGE_BULK_TIMEOUT_S` (default 1800): moving checkpoint arrays (restore, waiting for a save).

Each at most MAX_SECONDS (a week); more is a ConfigError naming the variable.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import sys
import threading
import traceback
from collections.abc import Iterator
from typing import TYPE_CHECKING

from pax_contract import EnvError, parse_int_env

from pax_trainer.errors import ConfigError, StorageError, TrainerError, exit_from_thread

if TYPE_CHECKING:
    from sys import UnraisableHookArgs

ENV_TIMEOUT_S = "PAX_STORAGE_TIMEOUT_S"
ENV_BULK_TIMEOUT_S = "PAX_STORAGE_BULK_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 60
DEFAULT_BULK_TIMEOUT_S = 1800
# The most any of these from the environment may be (PAX_OWNER_STALE_S too): a storage call or an owner
# heartbeat gap a week long is a hang, not a slow store. Near threading.TIMEOUT_MAX (~292 years) a watchdog
# Timer's thread dies of OverflowError, leaving the call with no deadline at all.
MAX_SECONDS = 7 * 24 * 3600
# Exceptions from these packages are storage failures (HTTP errors, connection resets, auth refusals).
_STORAGE_PACKAGES = frozenset({"gcsfs", "aiohttp", "fsspec", "google", "requests", "urllib3", "etils"})
# tensorstore raises a failed storage call as a ValueError whose message starts with its status code.
_STORAGE_STATUS_CODES = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "ABORTED", "CANCELLED", "UNAUTHENTICATED")
# ... and a full disk or quota as RESOURCE_EXHAUSTED with the OS error code (not to be taken for memory).
_FULL_STORAGE_ERRNOS = ("os_error_code='28'", "os_error_code='122'")  # ENOSPC, EDQUOT

log = logging.getLogger(__name__)


def positive_seconds(env: str, default: int) -> float:
    """A positive whole number of seconds from `env` (the contract's integer rule), at most MAX_SECONDS;
    ConfigError if not."""
    try:
        value = parse_int_env(os.environ, env, default)
    except EnvError as err:
        raise ConfigError(str(err)) from None
    if value <= 0:
        raise ConfigError(f"{env}={value} must be a positive number of seconds")
    if value > MAX_SECONDS:
        raise ConfigError(f"{env}={value} is out of range: at most {MAX_SECONDS} seconds (a week)")
    return float(value)


def check_deadlines() -> None:
    """Read both storage deadlines once at start-up (ConfigError if malformed or out of range), not first at
    the first checkpoint save."""
    timeout_s()
    timeout_s(bulk=True)


def timeout_s(bulk: bool = False) -> float:
    """The deadline of one storage call (bulk: moving checkpoint arrays)."""
    if bulk:
        return positive_seconds(ENV_BULK_TIMEOUT_S, DEFAULT_BULK_TIMEOUT_S)
    return positive_seconds(ENV_TIMEOUT_S, DEFAULT_TIMEOUT_S)


def one_line(err: BaseException, limit: int = 300) -> str:
    """`Type: message` on one line, at most `limit` characters."""
    return " ".join(f"{type(err).__name__}: {err}".split())[:limit]


def is_full_storage(err: BaseException) -> bool:
    """tensorstore's RESOURCE_EXHAUSTED for a full disk or quota (ENOSPC, EDQUOT), not for memory."""
    return any(code in str(err) for code in _FULL_STORAGE_ERRNOS)


def is_storage_exception(err: BaseException) -> bool:
    """OSError (I/O, permissions, timeouts, connections), an error raised by a storage client package, or a
    tensorstore status that says the call failed (not what was read), including a full disk or quota."""
    text = str(err)
    if isinstance(err, OSError) or text.startswith(tuple(f"{code}:" for code in _STORAGE_STATUS_CODES)):
        return True
    if is_full_storage(err):
        return True
    return any(
        (getattr(cls, "__module__", "") or "").split(".")[0] in _STORAGE_PACKAGES for cls in type(err).__mro__
    )


def _expired(what: str, seconds: float) -> None:
    # Storage clients retry throttling and server errors (HTTP 429, 5xx) themselves, up to the deadline.
    exit_from_thread(
        StorageError(
            f"{what}: no answer from storage within {seconds:.0f} s: it is unreachable, stalled, or answering"
            f" only errors its client retries (HTTP 429, 5xx) (deadline {_env_for(seconds)})"
        )
    )


def _env_for(seconds: float) -> str:
    return ENV_BULK_TIMEOUT_S if seconds == timeout_s(bulk=True) else ENV_TIMEOUT_S


@contextlib.contextmanager
def call(what: str, *, bulk: bool = False) -> Iterator[None]:
    """Run the block under a deadline; storage exceptions leave it as StorageError(`what: reason`)."""
    seconds = timeout_s(bulk)
    watchdog = threading.Timer(seconds, _expired, args=(what, seconds))
    watchdog.daemon = True
    watchdog.start()
    try:
        yield
    except TrainerError:
        raise
    except Exception as err:
        if is_storage_exception(err):
            full = "storage full (ENOSPC/EDQUOT): " if is_full_storage(err) else ""  # first: the text is cut
            raise StorageError(f"{what}: {full}{one_line(err)}") from None
        raise
    finally:
        watchdog.cancel()


def quiet_late_completions() -> None:
    """Report a storage read that completes after its restore gave up as one debug line, not a traceback.

    When one read of a restore fails, Orbax closes the restore's event loop at once; tensorstore's other
    reads of that restore still finish later, and each calls `loop.call_soon_threadsafe` from a C++ thread
    into the closed loop. tensorstore hands every such RuntimeError to `sys.unraisablehook`, whose default
    prints a full traceback: dozens of them, interleaved with (and splitting) the trainer's one error line.
    The reads' coroutines, closed unawaited, add more: Orbax's read catches BaseException, so the
    GeneratorExit of `close()` comes back as an Exception, which Python prints as 'Exception ignored in'.
    """
    previous = sys.unraisablehook

    def hook(unraisable: UnraisableHookArgs) -> None:
        frames = traceback.extract_tb(unraisable.exc_traceback)
        late = unraisable.exc_type is RuntimeError and str(unraisable.exc_value) == "Event loop is closed"
        if late and frames and frames[0].name == "call_soon_threadsafe":  # called from C++, not from Python
            log.debug("a storage call completed after its event loop closed")
            return
        if _closed_coroutine_error(unraisable):
            log.debug("an abandoned coroutine raised on close: %s", one_line(unraisable.exc_value))
            return
        previous(unraisable)

    sys.unraisablehook = hook


def _closed_coroutine_error(unraisable: UnraisableHookArgs) -> bool:
    """A coroutine closed unawaited that re-raised the GeneratorExit of its `close()` as another error
    (`except BaseException as e: raise ... from e`); an error of its own during the close is still shown."""
    err = unraisable.exc_value
    if err is None or not inspect.iscoroutine(unraisable.object):
        return False
    return isinstance(err.__cause__, GeneratorExit)
