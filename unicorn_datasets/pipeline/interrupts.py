"""Ctrl-C and SIGTERM end a build cleanly within seconds; a second one ends it at once.

The first SIGINT or SIGTERM stops the build where it stands: a running generation engine is
cancelled (its hook, registered with `on_interrupt`), anything else gets `Interrupted` raised in
the main thread. Either way the build's own `finally`s run: parts being written land (atomically),
the journal is already on disk (flushed per generation), the lock is released, and `cli` prints one
line and exits 130 (SIGINT) or 143 (SIGTERM).

Python runs signal handlers only when the main thread executes bytecode, so a main thread blocked in
C (a process-group barrier waiting for a rank that already left) would never see the signal. A
watchdog thread therefore also hears every signal through `signal.set_wakeup_fd`: after a second
signal, or `GRACE_S` seconds after the first, it prints the line and ends the process itself (a part
is never half-visible: parts land by rename, and the lock is a flock the kernel releases).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator

LINE = "unicorn: interrupted; rerun the same command to resume"
SIGNALS = (signal.SIGINT, signal.SIGTERM)
GRACE_S = float(os.environ.get("UNICORN_INTERRUPT_GRACE_S", "20"))  # cleanup time before a forced exit


class Interrupted(KeyboardInterrupt):
    """The build was stopped by a signal; `exit_code` is 128 + the signal number (130, 143)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.exit_code = 128 + signum


class _State:
    def __init__(self) -> None:
        self.signum: int | None = None  # the first signal received
        self.hooks: list[Callable[[], None]] = []
        self.exiting = threading.Lock()


_state = _State()


def interrupted() -> int | None:
    """The signal that interrupted this process (None when none did)."""
    return _state.signum


def _say_and_exit(signum: int) -> None:
    if not _state.exiting.acquire(blocking=False):
        return  # the other thread is already ending the process
    if os.environ.get("RANK", "0") == "0":  # under accelerate/torchrun: one line, from rank 0
        with contextlib.suppress(Exception):
            sys.stderr.write(LINE + "\n")
            sys.stderr.flush()
    os._exit(128 + signum)


def _handler(signum: int, frame: object) -> None:
    if _state.signum is not None:  # the second signal: no more cleanup
        _say_and_exit(_state.signum)
        return  # the watchdog thread is already ending the process: raise nothing that could print twice
    _state.signum = signum
    if _state.hooks:  # a running engine stops itself; its caller raises Interrupted
        for hook in list(_state.hooks):
            hook()
        return
    raise Interrupted(signum)


@contextlib.contextmanager
def on_interrupt(hook: Callable[[], None]) -> Iterator[None]:
    """While the block runs, the first signal calls `hook` (it must be safe in a signal handler: set a flag,
    `call_soon_threadsafe`) instead of raising. The block then ends in `Interrupted`, however it ended."""
    _state.hooks.append(hook)
    try:
        yield
    except (asyncio.CancelledError, Exception):
        if _state.signum is not None:
            raise Interrupted(_state.signum) from None
        raise
    finally:
        _state.hooks.remove(hook)
    if _state.signum is not None:
        raise Interrupted(_state.signum)


def _watch(sock: socket.socket) -> None:
    first_at: float | None = None
    signum = 0
    while True:
        timeout = None if first_at is None else max(0.0, first_at + GRACE_S - time.monotonic())
        sock.settimeout(timeout)
        try:
            data = sock.recv(64)
        except TimeoutError:
            _say_and_exit(signum)  # the main thread did not finish in time (blocked in C, or stuck)
            return
        except OSError:
            return
        if not data:  # the block ended: the build is over
            sock.close()
            return
        for b in data:
            if b not in SIGNALS:
                continue
            if first_at is None:
                first_at, signum = time.monotonic(), b
            else:
                _say_and_exit(signum)


@contextlib.contextmanager
def handle_signals() -> Iterator[None]:
    """Install the handlers for the block (main thread only; elsewhere the block runs unchanged)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _state.signum = None
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    old_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    threading.Thread(target=_watch, args=(reader,), name="unicorn-interrupts", daemon=True).start()
    for s in SIGNALS:
        signal.signal(s, _handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        signal.set_wakeup_fd(old_fd)
        writer.close()  # the watchdog's recv sees the end and returns
