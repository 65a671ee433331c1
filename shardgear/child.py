"""Entry point of a front or shard process, started by the supervisor.

``python -m shardgear.child ROLE INDEX SUPERVISOR_PID DOORBELLS CONFIG_JSON``

DOORBELLS is a comma-separated list of inherited eventfd numbers: the fronts' first, then the
shards'. Exit status EXIT_BOOT_ERROR tells the supervisor that restarting would not help. With the
environment variable SHARDGEAR_PROFILE=DIR each child runs under cProfile and writes its stats to
DIR when it stops (for profiling; see BENCHMARKS.md).
"""

from __future__ import annotations

import logging
import os
import signal
import sys

# A stop signal can come before the front or shard has installed its handlers (the supervisor
# starts a graceful stop the moment it is asked to); SIGUSR1's default action would kill us, with
# connections already queued on our SO_REUSEPORT listener. Until then, signals are recorded here
# and handed to the process's object.
_early_signals: list[int] = []


def _record(signum: int, frame: object) -> None:
    _early_signals.append(signum)


for _sig in (signal.SIGTERM, signal.SIGUSR1):
    signal.signal(_sig, _record)
signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the supervisor; it stops us

import orjson  # noqa: E402 (after the handlers: every moment counts)

from shardgear.config import Config  # noqa: E402
from shardgear.instance import Instance  # noqa: E402

EXIT_BOOT_ERROR = 3


def main(argv: list[str]) -> int:
    """Run one child process; return its exit status."""
    role, index_text, sup_text, bells_text, config_json = argv
    config = Config.from_json_dict(orjson.loads(config_json))
    index = int(index_text)
    logging.basicConfig(
        level=config.log_level.upper(),
        format=f"%(asctime)s shardgear[{os.getpid()}] {role}{index} %(levelname)s %(message)s",
    )
    instance = Instance(config.port, int(sup_text), config.fronts, config.shards)
    doorbells = [int(x) for x in bells_text.split(",")]
    from shardgear.shm.layout import control_view
    from shardgear.shm.segment import Segment

    try:
        control_seg = Segment.attach(instance.control)
        if role == "front":
            from shardgear.front import Front

            front = Front(config, index, instance, doorbells)
            front.install_signals(_early_signals)
            slot = instance.front_slot(index)
            runner = front.run
        elif role == "http":
            from shardgear import http_server

            control = control_view(control_seg.buf, instance.http_slot)
            http_server.run(config, control, _early_signals)
            return 0
        else:
            from shardgear.shard import Shard

            shard = Shard(config, index, instance, doorbells)
            shard.install_signals(_early_signals)
            slot = instance.shard_slot(index)
            runner = shard.run
    except OSError as exc:
        logging.getLogger("shardgear").critical("cannot start %s %d: %s", role, index, exc)
        return EXIT_BOOT_ERROR
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
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
