"""The cold start's translation over real forked processes: what they translate seeds the cache, a
child that fails or hangs costs time, never correctness."""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Sequence
from pathlib import Path

from bench.generate import ingress, revision_objects
from kxds import coldstart, cores
from kxds.controller import build_world
from kxds.engine.incremental import Engine
from kxds.model.ingress import Ingress
from kxds.model.objects import Filters, parse_object
from kxds.model.world import World
from kxds.settings import DEFAULT_INGRESS_CLASS, GatewaySettings
from kxds.translate import shards
from kxds.translate.gateway import TranslationCache
from kxds.xds.snapshot import Snapshot

FILTERS = Filters(ingress_class=DEFAULT_INGRESS_CLASS, system_namespace="knative-serving")


@functools.cache
def knative_world(n: int = 2 * coldstart.MIN_SHARE + 100) -> World:
    parsed = [parse_object(doc, FILTERS) for i in range(n) for doc in (ingress(i), *revision_objects(i, [8001, 8002]))]
    return build_world([p[1] for p in parsed if p is not None])


def served(snapshot: Snapshot) -> dict[str, dict[str, tuple[str, bytes]]]:
    return {t: {n: (r.version, r.data) for n, r in of_type.items()} for t, of_type in snapshot.resources.items() if of_type}


def one_process() -> Snapshot:
    return Engine(GatewaySettings()).full(knative_world(), 1, None)[1]


def test_two_processes_serve_what_one_serves() -> None:
    world, engine = knative_world(), Engine(GatewaySettings())
    warmed = coldstart.warm(engine.cache, world, engine.gateway, 2)
    assert warmed.processes == 2 and not warmed.problems
    assert 0.4 * len(world.ingresses) < warmed.seeded < 0.5 * len(world.ingresses)  # the child's share
    assert warmed.own_seconds > 0 and warmed.seed_seconds > 0 and warmed.wait_seconds >= 0
    assert set(engine.cache.ingresses) == {i.key for i in world.ingresses}
    assert served(engine.full(world, 1, None)[1]) == served(one_process())


def test_a_small_world_stays_in_one_process() -> None:
    world = build_world([p[1] for p in (parse_object(d, FILTERS) for d in (ingress(0), *revision_objects(0, [8001]))) if p is not None])
    cache = TranslationCache()
    assert coldstart.warm(cache, world, GatewaySettings(), 4) == coldstart.Warmed()
    assert not cache.ingresses  # the full translation does it all


def failing(world: World, gateway: GatewaySettings, part: Sequence[Ingress]) -> shards.ShareData:
    raise RuntimeError("a translator bug in the child")


def hanging(world: World, gateway: GatewaySettings, part: Sequence[Ingress]) -> shards.ShareData:
    time.sleep(3600)
    raise AssertionError("unreachable")


def test_a_failing_child_leaves_its_share_to_the_full_translation() -> None:
    world, engine = knative_world(), Engine(GatewaySettings())
    warmed = coldstart.warm(engine.cache, world, engine.gateway, 2, share=failing)
    assert warmed.seeded == 0 and len(warmed.problems) == 1 and "exited with 1" in warmed.problems[0]
    assert 0.5 * len(world.ingresses) < len(engine.cache.ingresses) < 0.6 * len(world.ingresses)  # this process's share only
    assert served(engine.full(world, 1, None)[1]) == served(one_process())


def test_a_hanging_child_is_killed_at_its_deadline() -> None:
    world, engine = knative_world(), Engine(GatewaySettings())
    started = time.monotonic()
    warmed = coldstart.warm(engine.cache, world, engine.gateway, 2, share=hanging, deadline_floor=0.5)
    assert time.monotonic() - started < 30
    assert warmed.seeded == 0 and "overran its deadline and was killed" in warmed.problems[0]
    assert warmed.wait_seconds >= 0.5 and warmed.seed_seconds == 0  # it was waited for until the deadline, then nothing seeded
    assert served(engine.full(world, 1, None)[1]) == served(one_process())


def cgroup_tree(tmp_path: Path, membership: str, files: dict[str, str]) -> tuple[Path, Path]:
    """A /proc/self/cgroup and a /sys/fs/cgroup with these files (path under the root → content)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "proc_cgroup").write_text(membership)
    for name, content in files.items():
        (tmp_path / "root" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "root" / name).write_text(content)
    return tmp_path / "proc_cgroup", tmp_path / "root"


def test_a_pods_cpu_limit_caps_the_processes(tmp_path: Path) -> None:
    # cgroup v2: one and a half CPUs on the pod, none on the container: one process.
    proc, root = cgroup_tree(tmp_path / "v2", "0::/kubepods/pod1/container\n",
                             {"kubepods/pod1/cpu.max": "150000 100000\n", "kubepods/pod1/container/cpu.max": "max 100000\n"})
    assert cores.cgroup_cpu_limit(proc, root) == 1.5
    assert cores.available_cores(proc, root) == 1
    # cgroup v1 inside a container (its own cgroup mounted as the root): two CPUs.
    proc, root = cgroup_tree(tmp_path / "v1", "4:memory:/x\n3:cpu,cpuacct:/\n",
                             {"cpu,cpuacct/cpu.cfs_quota_us": "200000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"})
    assert cores.cgroup_cpu_limit(proc, root) == 2.0
    # No quota (v1's -1, v2's max), or nothing readable: the affinity decides.
    proc, root = cgroup_tree(tmp_path / "none", "3:cpu,cpuacct:/\n0::/\n",
                             {"cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n", "cpu.max": "max 100000\n"})
    assert cores.cgroup_cpu_limit(proc, root) is None
    assert cores.cgroup_cpu_limit(tmp_path / "missing", root) is None
    assert cores.available_cores(tmp_path / "missing", root) == len(os.sched_getaffinity(0))
