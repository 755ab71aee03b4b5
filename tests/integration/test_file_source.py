"""The file source against a real directory, followed live: with inotify, and with the polling fallback."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import threading
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml

from kxds.model.ingress import Ingress, RejectedIngress
from kxds.model.objects import Filters, ObjectKey, Parsed
from kxds.model.service import Service
from kxds.settings import DEFAULT_INGRESS_CLASS
from kxds.sources.files import FileSource
from tests.builders import ingress, path, rule, service, split

FILTERS = Filters(ingress_class=DEFAULT_INGRESS_CLASS, system_namespace="knative-serving")


class Mirror:
    """The sink: the objects the source currently reports."""

    def __init__(self) -> None:
        self.objects: dict[ObjectKey, Parsed] = {}
        self.changed = asyncio.Event()

    def __call__(self, upserts: Mapping[ObjectKey, Parsed], deletes: Iterable[ObjectKey]) -> None:
        self.objects.update(upserts)
        for key in deletes:
            self.objects.pop(key, None)
        self.changed.set()

    def names(self, kind: str) -> set[str]:
        return {k.name for k in self.objects if k.kind == kind}

    async def until(self, check: Any, timeout: float = 10.0) -> None:
        async def poll() -> None:
            while not check():
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(poll(), timeout)


class Recorder(Mirror):
    """A mirror that also remembers every deletion it was told about."""

    def __init__(self) -> None:
        super().__init__()
        self.deleted: list[ObjectKey] = []

    def __call__(self, upserts: Mapping[ObjectKey, Parsed], deletes: Iterable[ObjectKey]) -> None:
        deletes = list(deletes)
        self.deleted += deletes
        super().__call__(upserts, deletes)


def write(path: Path, *docs: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump_all(list(docs)))


@pytest.fixture(params=["inotify", "polling"])
async def live(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[tuple[Path, Recorder]]:
    write(tmp_path / "a.yaml", service("svc-a"), ingress("ing-a", rule(["a.example.com"], path(split("svc-a")))))
    mirror = Recorder()
    source = FileSource(tmp_path, FILTERS, mirror, polling=request.param == "polling")
    source.load()
    stop = asyncio.Event()
    task = asyncio.create_task(source.run(stop))
    await asyncio.sleep(0.3)  # let the watcher start
    yield tmp_path, mirror
    stop.set()
    await asyncio.wait_for(task, 5)


def port_of(mirror: Mirror, name: str) -> int | None:
    found = [o for o in mirror.objects.values() if isinstance(o, Service) and o.name == name]
    return found[0].ports[0].port if found else None


def mount_config_map(directory: Path, version: str, files: dict[str, list[dict[str, Any]]]) -> None:
    """What the kubelet does to a ConfigMap volume (its atomic writer): the files in a new hidden
    directory, `..data` swapped to it in one rename, a visible symlink per key, the old directory removed."""
    old = os.readlink(directory / "..data") if (directory / "..data").is_symlink() else None
    (directory / version).mkdir()
    for name, docs in files.items():
        write(directory / version / name, *docs)
    os.symlink(version, directory / "..data_tmp")
    os.rename(directory / "..data_tmp", directory / "..data")
    for name in files:
        if not (directory / name).is_symlink():
            os.symlink(f"..data/{name}", directory / name)
    if old is not None:
        shutil.rmtree(directory / old)


async def test_initial_load_reads_multi_document_yaml_and_json(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", service("one"), service("two"))
    (tmp_path / "b.json").write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": [service("three")]}))
    (tmp_path / "notes.txt").write_text("not a source file")
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub" / "c.yml", service("four"))
    mirror = Mirror()
    FileSource(tmp_path, FILTERS, mirror).load()
    assert mirror.names("Service") == {"one", "two", "three", "four"}
    assert all(isinstance(o, Service) for o in mirror.objects.values())


async def test_follows_create_edit_rename_and_delete(live: tuple[Path, Mirror]) -> None:
    directory, mirror = live
    write(directory / "b.yaml", service("svc-b"))
    await mirror.until(lambda: "svc-b" in mirror.names("Service"))
    write(directory / "b.yaml", service("svc-b", port=81))
    await mirror.until(lambda: any(isinstance(o, Service) and o.name == "svc-b" and o.ports[0].port == 81 for o in mirror.objects.values()))
    os.rename(directory / "b.yaml", directory / "c.yaml")
    await asyncio.sleep(0.3)
    assert "svc-b" in mirror.names("Service")  # a rename keeps the objects
    (directory / "c.yaml").unlink()
    await mirror.until(lambda: "svc-b" not in mirror.names("Service"))
    assert mirror.names("Ingress") == {"ing-a"}


async def test_a_broken_file_keeps_its_last_good_objects(live: tuple[Path, Mirror]) -> None:
    directory, mirror = live
    (directory / "a.yaml").write_text("kind: Service\nmetadata: {name: [unclosed\n")
    write(directory / "other.yaml", service("marker"))  # proves the watcher has moved past the broken write
    await mirror.until(lambda: "marker" in mirror.names("Service"))
    assert mirror.names("Ingress") == {"ing-a"} and "svc-a" in mirror.names("Service")


async def test_a_rejected_document_keeps_its_previous_version(live: tuple[Path, Mirror]) -> None:
    directory, mirror = live
    broken = service("svc-a")
    broken["spec"]["ports"][0]["port"] = "eighty"
    write(directory / "a.yaml", broken, ingress("ing-a", rule(["a.example.com"], path(split("svc-a", 50)))))
    await mirror.until(lambda: isinstance(mirror.objects.get(ObjectKey("Ingress", "ns", "ing-a")), RejectedIngress))
    kept = mirror.objects[ObjectKey("Service", "ns", "svc-a")]
    assert isinstance(kept, Service) and kept.ports[0].port == 80


async def test_other_classes_and_unknown_kinds_are_skipped(tmp_path: Path) -> None:
    write(
        tmp_path / "a.yaml",
        ingress("theirs", rule(["t.example.com"], path(split("s"))), ingress_class="istio.ingress.networking.knative.dev"),
        ingress("ours", rule(["o.example.com"], path(split("s")))),
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}},
    )
    mirror = Mirror()
    FileSource(tmp_path, FILTERS, mirror).load()
    assert list(mirror.objects) == [ObjectKey("Ingress", "ns", "ours")]
    assert isinstance(mirror.objects[ObjectKey("Ingress", "ns", "ours")], Ingress)


@pytest.mark.parametrize("partial", ["empty", "first document only", "cut mid-document"])
async def test_a_half_written_file_never_loses_its_objects(live: tuple[Path, Recorder], partial: str) -> None:
    directory, recorder = live
    full = yaml.safe_dump_all([service("svc-a", port=81), ingress("ing-a", rule(["a.example.com"], path(split("svc-a"))))])
    cut = {"empty": 0, "first document only": full.index("---"), "cut mid-document": full.index("---") + 40}[partial]
    # A writer that takes its time and closes the file in between, as `cat part1 > f; cat part2 >> f` does.
    (directory / "a.yaml").write_text(full[:cut])
    await asyncio.sleep(0.15)
    with open(directory / "a.yaml", "a") as slow_writer:
        slow_writer.write(full[cut:])
    await recorder.until(lambda: any(isinstance(o, Service) and o.name == "svc-a" and o.ports[0].port == 81 for o in recorder.objects.values()))
    assert recorder.deleted == [] and recorder.names("Ingress") == {"ing-a"}


async def test_a_file_emptied_for_good_does_delete_its_objects(live: tuple[Path, Recorder]) -> None:
    directory, recorder = live
    (directory / "a.yaml").write_text("")
    await recorder.until(lambda: not recorder.names("Ingress"), timeout=5)
    assert set(recorder.deleted) == {ObjectKey("Service", "ns", "svc-a"), ObjectKey("Ingress", "ns", "ing-a")}


async def test_an_object_in_two_files_comes_from_the_last_by_name_and_falls_back_when_it_goes(live: tuple[Path, Recorder]) -> None:
    directory, mirror = live

    def port() -> int | None:
        return port_of(mirror, "svc-a")

    write(directory / "z.yaml", service("svc-a", port=99))
    await mirror.until(lambda: port() == 99)  # z.yaml sorts after a.yaml: it wins
    write(directory / "b.yaml", service("svc-a", port=98))
    await asyncio.sleep(0.3)
    assert port() == 99  # b.yaml sorts before z.yaml: no change
    (directory / "z.yaml").unlink()
    await mirror.until(lambda: port() == 98)
    (directory / "b.yaml").unlink()
    await mirror.until(lambda: port() == 80)  # back to a.yaml's
    assert all(k.name != "svc-a" for k in mirror.deleted)  # never deleted while some file defines it


async def test_hidden_files_and_directories_are_not_read(tmp_path: Path) -> None:
    write(tmp_path / ".a.yaml", service("dotfile"))
    (tmp_path / ".git").mkdir()
    write(tmp_path / ".git" / "b.yaml", service("in-hidden-directory"))
    write(tmp_path / "c.yaml", service("visible"))
    mirror = Mirror()
    FileSource(tmp_path, FILTERS, mirror).load()
    assert mirror.names("Service") == {"visible"}


async def test_a_mounted_config_map_is_read_once_and_followed_through_its_symlink_swap(tmp_path: Path) -> None:
    mount_config_map(tmp_path, "..2026_12_06_01", {"app.yaml": [service("svc-a")], "more.yaml": [service("svc-b")]})
    mirror = Recorder()
    source = FileSource(tmp_path, FILTERS, mirror)
    with structlog.testing.capture_logs() as logs:
        source.load()
    assert mirror.names("Service") == {"svc-a", "svc-b"}
    assert logs == []  # the hidden copies are not read: no object is defined twice
    stop = asyncio.Event()
    task = asyncio.create_task(source.run(stop))
    await asyncio.sleep(0.3)
    # An update: no event names app.yaml, only the `..data` swap does.
    mount_config_map(tmp_path, "..2026_12_06_02", {"app.yaml": [service("svc-a", port=81)], "more.yaml": [service("svc-b")]})
    await mirror.until(lambda: port_of(mirror, "svc-a") == 81)
    assert mirror.deleted == [] and mirror.names("Service") == {"svc-a", "svc-b"}
    stop.set()
    await asyncio.wait_for(task, 5)


async def test_a_directory_created_or_moved_in_is_followed_and_one_moved_out_is_withdrawn(live: tuple[Path, Recorder]) -> None:
    directory, mirror = live
    (directory / "team").mkdir()
    write(directory / "team" / "b.yaml", service("svc-b"))
    await mirror.until(lambda: "svc-b" in mirror.names("Service"))
    write(directory / "team" / "b.yaml", service("svc-b", port=82))  # the new directory is watched too
    await mirror.until(lambda: port_of(mirror, "svc-b") == 82)
    elsewhere = directory.parent / f"{directory.name}-prepared"
    elsewhere.mkdir()
    write(elsewhere / "c.yaml", service("svc-c"))
    os.rename(elsewhere, directory / "prepared")  # files that were there before any watch
    await mirror.until(lambda: "svc-c" in mirror.names("Service"))
    os.rename(directory / "team", elsewhere)
    await mirror.until(lambda: "svc-b" not in mirror.names("Service"))
    assert mirror.names("Service") == {"svc-a", "svc-c"}


async def test_inotify_follows_a_directory_without_a_polling_thread(tmp_path: Path) -> None:
    """The default watcher sleeps in the event loop until the kernel has something: no thread wakes to poll."""
    write(tmp_path / "a.yaml", service("svc-a"))
    mirror = Mirror()
    source = FileSource(tmp_path, FILTERS, mirror)
    source.load()
    threads = threading.active_count()
    stop = asyncio.Event()
    task = asyncio.create_task(source.run(stop))
    await asyncio.sleep(0.3)
    write(tmp_path / "b.yaml", service("svc-b"))
    await mirror.until(lambda: "svc-b" in mirror.names("Service"))
    assert threading.active_count() == threads
    stop.set()
    await asyncio.wait_for(task, 5)
