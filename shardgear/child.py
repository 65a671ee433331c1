"""Entry point of a front or shard process, started by the supervisor.

``SHARDGEAR_CHILD_CONFIG=JSON python -m shardgear.child ROLE INDEX SUPERVISOR_PID DOORBELLS``

DOORBELLS is a comma-separated list of inherited eventfd numbers: the fronts' first, then the
shards'. The config travels in the environment (CONFIG_ENV), which only our user can read, not
on the command line, which ``ps`` shows everyone. Exit status EXIT_BOOT_ERROR tells the
supervisor that restarting would not help; an uncaught exception is logged as one record and
exits with EXIT_CRASH. With the environment variable SHARDGEAR_PROFILE=DIR each child runs under
cProfile and writes its stats to DIR when it stops (for profiling; see BENCHMARKS.md).

A child never outlives its supervisor: the kernel sends it SIGTERM when the supervisor dies
(PR_SET_PDEATHSIG, Linux), and a child whose parent is already not the supervisor when it starts
exits at once. A front waits until every shard is READY before it listens, so that the supervisor
can start fronts and shards together and no connection is served before the store is replayed.

At its first start the supervisor does not exec this module: it forks its children, which call
`run_forked` instead of `main` (ARCHITECTURE.md, "Supervisor"); `python -m shardgear.child` is the
restart path. The environment variable SHARDGEAR_SPAWN=exec makes the first start exec too.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Iterable
from typing import NoReturn

# A stop signal can come before the front or shard has installed its handlers (the supervisor
# starts a graceful stop the moment it is asked to); SIGUSR1's default action would kill us, with
# connections already queued on our SO_REUSEPORT listener. Until then, signals are recorded here
# and handed to the process's object.
_early_signals: list[int] = []


def _record(signum: int, frame: object) -> None:
    _early_signals.append(signum)


def _die_with_parent() -> None:
    """PR_SET_PDEATHSIG: SIGTERM (a clean stop) when the process that started us dies."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


def _early_setup() -> None:
    """A child's signals before its front or shard takes over, and its parent-death signal."""
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, _record)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the supervisor; it stops us
    # A reload is the supervisor's business (it republishes the config; we read it from shared
    # memory), and `systemctl kill -s HUP` or a closing terminal signals the whole group.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})  # blocked by the supervisor's spawn
    _die_with_parent()


# Only as a program (``python -m shardgear.child``): the supervisor imports this module too, to
# fork its children, and must keep its own handlers and no parent-death signal of its own (with
# one, ``nohup shardgear &`` from a shell that then exits would stop the server).
if __name__ == "__main__":
    _early_setup()

import time  # noqa: E402

import orjson  # noqa: E402 (after the handlers: every moment counts)

from shardgear import logs  # noqa: E402
from shardgear.config import Config  # noqa: E402
from shardgear.instance import Instance  # noqa: E402

EXIT_BOOT_ERROR = 3
CONFIG_ENV = "SHARDGEAR_CHILD_CONFIG"  # the supervisor's Config as JSON, for an exec'd child
EXIT_CRASH = 1
SHARD_WAIT_POLL = 0.002  # seconds between looks at the shards' states while a front waits

log = logging.getLogger("shardgear.child")


def wait_for_shards(control: memoryview, instance: Instance, supervisor: int) -> bool:
    """(A front) wait until every shard is READY; False if we must stop instead (a stop signal,
    or the supervisor is gone)."""
    from shardgear.shm import layout

    slots = [instance.shard_slot(s) for s in range(instance.shards)]
    while True:
        if all(
            control[slot * layout.CONTROL_BYTES // 8 + layout.CTRL_STATE] == layout.CHILD_READY
            for slot in slots
        ):
            return True
        if signal.SIGTERM in _early_signals or os.getppid() != supervisor:
            return False
        time.sleep(SHARD_WAIT_POLL)


def main(argv: list[str]) -> int:
    """Run one child process (``python -m shardgear.child`` ARGV); return its exit status."""
    role, index_text, sup_text, bells_text = argv
    supervisor = int(sup_text)
    config = Config.from_json_dict(orjson.loads(os.environ.pop(CONFIG_ENV)))
    if os.getppid() != supervisor:
        return _exit_orphaned(supervisor, config)
    doorbells = [int(x) for x in bells_text.split(",")]
    return run(role, int(index_text), supervisor, doorbells, config)


def run_forked(
    role: str,
    index: int,
    supervisor: int,
    doorbells: list[int],
    config: Config,
    keep_fds: list[int],
    env: dict[str, str],
    mask: Iterable[int],
) -> NoReturn:
    """Become ROLE INDEX in a process the supervisor has just forked, then exit; never returns.

    What exec and `main` give a child, done by hand: the signal setup of this module's import
    (the supervisor's handlers and wakeup fd go; `mask` is the supervisor's signal mask before it
    blocked signals for the fork), PR_SET_PDEATHSIG (a fork clears it), only the file descriptors
    of `keep_fds` besides stdio (what ``pass_fds`` would pass), stdin from /dev/null, `env` added
    to the environment, and a command line that names the role (``ps``, tests). It ends with
    ``os._exit``: nothing of the supervisor (its ``finally`` blocks, which unlink the shared
    memory, its atexit handlers, buffered output) may run here.
    """
    status = EXIT_CRASH
    try:
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGQUIT, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        _early_signals.clear()
        _early_setup()
        signal.pthread_sigmask(signal.SIG_SETMASK, set(mask) - {signal.SIGHUP})  # pending: now
        _close_fds_except(keep_fds)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.environ.update(env)
        _set_title(f"shardgear.child\0{role}\0{index}\0")
        if os.getppid() == supervisor:
            status = run(role, index, supervisor, doorbells, config)
        else:
            status = _exit_orphaned(supervisor, config)
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    except BaseException:
        log.critical("%s %d crashed", role, index, exc_info=True)
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(status)


def _close_fds_except(keep: list[int]) -> None:
    """Close every file descriptor above stderr but those in `keep` (as subprocess does)."""
    low = 3
    for fd in sorted(set(keep)):
        if fd >= low:
            os.closerange(low, fd)
            low = fd + 1
    os.closerange(low, max(os.sysconf("SC_OPEN_MAX"), low))


def _set_title(title: str) -> None:
    """Write `title` over this process's command line (``/proc/PID/cmdline``, what ``ps`` shows),
    NUL-padded and cut to the original's length, as setproctitle(3) does on Linux. A forked child
    would otherwise show the supervisor's command line; NULs in `title` separate arguments."""
    try:
        import ctypes

        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (proc(5): 48, 49)
        if not start or end <= start:
            return
        data = title.encode()[: end - start - 1]
        ctypes.memmove(start, data.ljust(end - start, b"\0"), end - start)
    except (OSError, ValueError, IndexError):  # pragma: no cover - not Linux
        pass


def run(role: str, index: int, supervisor: int, doorbells: list[int], config: Config) -> int:
    """Run front, shard or http `index` until it stops; return the process's exit status.

    A child that outlives its supervisor (killed with SIGKILL, so its own cleanup never ran; the
    child is stopped by PR_SET_PDEATHSIG) removes the run's shared memory on its way out: no one
    else will until a server starts again on the same port (`shm.segment.sweep_stale`)."""
    logs.setup(f"{role}{index}", config.log_level, config.log_format)
    instance = Instance(config.port, supervisor, config.fronts, config.shards)
    try:
        return _serve(role, index, supervisor, doorbells, config, instance)
    finally:
        if os.getppid() != supervisor:
            _remove_orphaned(instance)


def _exit_orphaned(supervisor: int, config: Config) -> int:
    """The supervisor died before PR_SET_PDEATHSIG took effect, so this child would not be told:
    remove the run's shared memory as `run` does on its way out, and return exit status 0."""
    _remove_orphaned(Instance(config.port, supervisor, config.fronts, config.shards))
    return 0


def _remove_orphaned(instance: Instance) -> None:
    """Unlink every segment and job log in /dev/shm of `instance`, whose supervisor is gone (a
    name is unlinked at most once; what another child or a new server removed first is skipped)."""
    from shardgear.shm.segment import list_segments, unlink_quietly

    names = list_segments(instance.prefix + ".")
    for name in names:
        unlink_quietly(name)
    if names:
        log.info("the supervisor is gone: removed %d shared memory objects", len(names))


def _serve(
    role: str,
    index: int,
    supervisor: int,
    doorbells: list[int],
    config: Config,
    instance: Instance,
) -> int:
    """`run`'s body: start the role's object and run its loop."""
    from shardgear.shm.layout import control_view
    from shardgear.shm.segment import Segment

    try:
        control_seg = Segment.attach(instance.control)
        if role == "front":
            from shardgear.front import Front

            words = control_seg.buf.cast("Q")
            try:
                if not wait_for_shards(words, instance, supervisor):
                    return 0
            finally:
                words.release()
            front = Front(config, index, instance, doorbells)
            front.install_signals(_early_signals)
            slot = instance.front_slot(index)
            runner = front.run
        elif role == "http":
            from shardgear import http_server

            control = control_view(control_seg.buf, instance.http_slot)
            http_server.run(config, instance, control, _early_signals)
            return 0
        else:
            from shardgear.shard import Shard

            shard = Shard(config, index, instance, doorbells)
            shard.install_signals(_early_signals)
            slot = instance.shard_slot(index)
            runner = shard.run
    except OSError as exc:
        log.critical("cannot start %s %d: %s", role, index, exc)
        return EXIT_BOOT_ERROR
    try:
        profile_dir = os.environ.get("SHARDGEAR_PROFILE")
        if profile_dir:  # a development aid: cProfile each child, stats written at exit
            import cProfile

            cProfile.runctx(
                "runner(control_view(control_seg.buf, slot))",
                globals(),
                {
                    "runner": runner,
                    "control_view": control_view,
                    "control_seg": control_seg,
                    "slot": slot,
                },
                os.path.join(profile_dir, f"{role}{index}.{os.getpid()}.prof"),
            )
        else:
            runner(control_view(control_seg.buf, slot))
    except Exception:
        # one record (the journal format keeps a traceback on one line), then a restart
        log.critical("%s %d crashed", role, index, exc_info=True)
        return EXIT_CRASH
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
