"""A cold start's translation spread over the cores: forked children translate shares of the
Ingresses while this process translates its own, and their results seed its translation cache.

Fork, not spawn: a child inherits the parsed objects as they are (pickling 5,000 Ingresses to a
fresh interpreter costs about what translating them does). A child runs the pure translator only —
no grpc, logging or event loop — writes its share into an in-memory file and leaves with `os._exit`;
the threads of the parent (grpc's, the Kubernetes watches) do not exist in it. A child that fails or
overruns its deadline is killed and its share left to the full translation: the worst case is the
one-process time plus that deadline.
"""

from __future__ import annotations

import os
import pickle
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kxds.model.ingress import Ingress
from kxds.model.world import World
from kxds.settings import GatewaySettings
from kxds.translate import shards
from kxds.translate.gateway import TranslationCache

# Below this many Ingresses a share, a fork costs more than it saves.
MIN_SHARE = 500
# This process's share against a child's (measured at 10,000 Ingresses: pickling its share and the pages
# it copies on write add ~30 % to a child's translation).
OWN_SHARE_WEIGHT = 1.3
# A child may take this many times as long as this process took for its own share (plus a floor).
DEADLINE_FACTOR, DEADLINE_FLOOR = 3.0, 5.0

Share = Callable[[World, GatewaySettings, Sequence[Ingress]], shards.ShareData]


@dataclass(frozen=True, slots=True)
class Warmed:
    """What a spread translation did: processes used, Ingresses seeded from children, and why a
    child's share was translated here instead (one line per failed child)."""

    processes: int = 1
    seeded: int = 0
    problems: tuple[str, ...] = ()
    # Seconds: this process's own share, then waiting for the children, then seeding from them.
    own_seconds: float = 0.0
    wait_seconds: float = 0.0
    seed_seconds: float = 0.0


def warm(cache: TranslationCache, world: World, gateway: GatewaySettings, processes: int, *, share: Share = shards.share,
         deadline_floor: float = DEADLINE_FLOOR) -> Warmed:
    """Translate the Ingresses `cache` knows nothing of over up to `processes` processes (this one
    included) into `cache`; the full translation that follows then finds them there. `share` is
    what a child runs (tests make it fail)."""
    cold = [i for i in world.ingresses if i.key not in cache.ingresses]
    count = min(processes, len(cold) // MIN_SHARE)
    if count < 2 or not hasattr(os, "fork") or not hasattr(os, "memfd_create"):
        return Warmed()
    parts = _parts(cold, count)
    children = [_fork(world, gateway, part, share) for part in parts[1:]]
    started = time.monotonic()
    shards.warm(world, gateway, parts[0], cache)
    own = time.monotonic() - started
    deadline = time.monotonic() + max(deadline_floor, DEADLINE_FACTOR * own)
    seeded, problems, waited, seeding = 0, [], 0.0, 0.0
    for child, part in zip(children, parts[1:]):
        mark = time.monotonic()
        try:
            data = child.result(deadline)
        except ChildFailed as exc:
            problems.append(str(exc))
            continue
        finally:
            waited += time.monotonic() - mark
        mark = time.monotonic()
        seeded += shards.seed(cache, world, gateway, part, data)
        seeding += time.monotonic() - mark
    return Warmed(count, seeded, tuple(problems), own, waited, seeding)


def _parts(cold: list[Ingress], count: int) -> list[list[Ingress]]:
    """This process's share first, a child's smaller by OWN_SHARE_WEIGHT: a child also pays for the
    pages it copies on write and for pickling what it hands back."""
    weights = [OWN_SHARE_WEIGHT] + [1.0] * (count - 1)
    bounds = [round(len(cold) * sum(weights[:k]) / sum(weights)) for k in range(count + 1)]
    return [cold[bounds[k]:bounds[k + 1]] for k in range(count)]


class ChildFailed(Exception):
    pass


@dataclass(slots=True)
class _Child:
    pid: int
    fd: int

    def result(self, deadline: float) -> shards.ShareData:
        """The child's share once it exits; killed past `deadline`. Closes the file either way."""
        try:
            while True:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    break
                if time.monotonic() > deadline:
                    os.kill(self.pid, signal.SIGKILL)
                    os.waitpid(self.pid, 0)
                    raise ChildFailed(f"translation process {self.pid} overran its deadline and was killed")
                time.sleep(0.002)
            code = os.waitstatus_to_exitcode(status)
            if code != 0:
                raise ChildFailed(f"translation process {self.pid} exited with {code}")
            os.lseek(self.fd, 0, os.SEEK_SET)
            with open(self.fd, "rb", closefd=False) as file:
                data = pickle.load(file)  # noqa: S301 - written by our own fork a moment ago
            if not isinstance(data, shards.ShareData):
                raise ChildFailed(f"translation process {self.pid} wrote {type(data).__name__}")
            return data
        finally:
            os.close(self.fd)


def _fork(world: World, gateway: GatewaySettings, part: Sequence[Ingress], share: Share) -> _Child:
    fd = os.memfd_create("kxds-translation-share", os.MFD_CLOEXEC)
    pid = os.fork()
    if pid:
        return _Child(pid, fd)
    code = 1
    try:  # the child: never returns, whatever happens
        _quiet_signals()
        with open(fd, "wb", closefd=False) as file:
            pickle.dump(share(world, gateway, part), file, protocol=pickle.HIGHEST_PROTOCOL)
        code = 0
    finally:
        os._exit(code)


def _quiet_signals() -> None:
    """A signal sent to the child must not reach the parent's event loop (through the wake-up fd
    both hold) nor run the parent's handlers: default dispositions, no wake-up fd."""
    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, signal.SIG_DFL)
    signal.set_wakeup_fd(-1)
