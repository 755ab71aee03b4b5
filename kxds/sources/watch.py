"""Which files under a source directory are read, and when they change: batches of paths to read
again, and a flag when every file must be looked at because something moved that no event names.

On Linux the kernel's inotify wakes kxds only when a file is closed after writing, renamed, created
or removed; nothing runs while nothing changes. Elsewhere (or when inotify cannot be had, e.g. the
user's watch limit is reached) watchfiles collects the changes and is polled every POLL_STEP_MS,
taking the GIL each time: ~10 ms of CPU per second with nothing to do (measured at idle).

A mounted ConfigMap is a directory whose visible files are symlinks through `..data`, a symlink the
kubelet swaps in one rename to a new `..<timestamp>` directory
(https://github.com/kubernetes/kubernetes/blob/master/pkg/volume/util/atomic_writer.go). No event
names a visible file then: the swap asks for every file to be looked at, and hidden entries are
never read themselves.
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

if TYPE_CHECKING:
    from asyncinotify import Event, Inotify

log = structlog.get_logger("kxds.sources.watch")

SUFFIXES = (".yaml", ".yml", ".json")
POLL_STEP_MS = 5
# Events read from the kernel at once (each at most ~270 bytes).
READ_EVENTS = 256


@dataclass(slots=True)
class Batch:
    paths: set[Path] = field(default_factory=set)  # source files an event named
    rescan: bool = False  # compare every source file with what was read
    directories: bool = False  # a directory came or went: watch the tree again

    def __bool__(self) -> bool:
        return bool(self.paths) or self.rescan


def _hidden(name: str) -> bool:
    # Editors' and kubectl's temporary files, and a ConfigMap volume's own entries ("..data").
    return name.startswith(".")


def is_source_name(name: str) -> bool:
    return name.endswith(SUFFIXES) and not _hidden(name)


def _walk(root: Path) -> Iterator[tuple[Path, list[str]]]:
    """`root` and the directories under it that are read (not hidden ones, not symlinked ones), with
    the names of their files."""
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = sorted(d for d in subdirectories if not _hidden(d))
        yield Path(directory), files


def source_files(root: Path) -> list[Path]:
    """Every source file under `root` in name order; a symlink to a file is followed."""
    found = [path for directory, files in _walk(root) for name in files if is_source_name(name) and (path := directory / name).is_file()]
    return sorted(found)


async def changes(root: Path, stop: asyncio.Event, *, polling: bool = False) -> AsyncIterator[Batch]:
    """The changes under `root` until `stop` is set (or the directory itself goes)."""
    reason = "polling was asked for"
    if not polling:
        try:
            from asyncinotify import Inotify

            inotify = Inotify(cache_size=READ_EVENTS)
        except (ImportError, AttributeError, OSError) as exc:  # not Linux, or the user's instance limit reached
            reason = str(exc) or type(exc).__name__
        else:
            with inotify:
                tree = _Tree(root, inotify)
                reason = tree.watch()
                if not reason:
                    async for batch in _notified(root, stop, inotify, tree):
                        yield batch
                    return
    log.info("source.polling", directory=str(root), reason=reason, step_ms=POLL_STEP_MS)
    async for batch in _polled(root, stop):
        yield batch


async def _notified(root: Path, stop: asyncio.Event, inotify: Inotify, tree: _Tree) -> AsyncIterator[Batch]:
    woken = asyncio.Event()
    pending = Batch()
    gone = False

    async def read() -> None:
        nonlocal gone
        async for event in inotify:
            gone = not tree.note(event, pending)
            woken.set()
            if gone:
                return

    async def relay_stop() -> None:
        await stop.wait()
        woken.set()

    tasks = [asyncio.create_task(read()), asyncio.create_task(relay_stop())]
    try:
        while True:
            # The reader drains what one read of the kernel gave before this runs: one batch.
            await woken.wait()
            woken.clear()
            if stop.is_set():
                return
            if tasks[0].done() and not gone:
                tasks[0].result()  # the reader failed: raise what it raised
            batch, pending = pending, Batch()
            if batch.directories:
                tree.watch()
            if batch:
                yield batch
            if gone:
                log.error("source.directory_gone", directory=str(root), kept="every object read so far")
                return
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class _Tree:
    """The inotify watches on `root` and the directories under it that are read."""

    def __init__(self, root: Path, inotify: Inotify) -> None:
        from asyncinotify import Mask

        self._root = root
        self._inotify = inotify
        self._mask = (Mask.CLOSE_WRITE | Mask.MOVED_TO | Mask.MOVED_FROM | Mask.CREATE | Mask.DELETE
                      | Mask.DELETE_SELF | Mask.MOVE_SELF | Mask.ONLYDIR)

    def watch(self) -> str:
        """Watch every directory that is read now; forget those gone or moved out of reach. Returns
        why the root itself cannot be watched (e.g. the user's watch limit), or "" when it is."""
        kept, problem = set(), ""
        for directory, _ in _walk(self._root):
            try:
                watch = self._inotify.add_watch(directory, self._mask)
            except OSError as exc:  # gone since the walk, or the user's watch limit
                if directory == self._root:
                    problem = str(exc)
                elif exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                    log.warning("source.unwatched", directory=str(directory), error=str(exc))
                continue
            watch.path = directory  # a directory moved within the tree keeps its watch
            kept.add(watch.wd)
        for watch in self._inotify.watches:
            if watch.wd not in kept:
                try:
                    self._inotify.rm_watch(watch)
                except OSError:
                    pass  # the kernel dropped it already
        return problem

    def note(self, event: Event, batch: Batch) -> bool:
        """Add what `event` means to `batch`; False once the root directory is gone."""
        from asyncinotify import Mask

        mask = event.mask
        if Mask.Q_OVERFLOW in mask:  # the kernel dropped events: look at everything
            batch.rescan = batch.directories = True
            return True
        path = event.path
        if path is None or Mask.IGNORED in mask:
            return True
        if event.name is None:  # the watched directory itself; its parent reports a subdirectory
            return not (path == self._root and mask & (Mask.DELETE_SELF | Mask.MOVE_SELF))
        if Mask.ISDIR in mask:
            batch.rescan = batch.directories = True
        elif is_source_name(path.name):
            batch.paths.add(path)
        elif mask & (Mask.CREATE | Mask.MOVED_TO) and path.is_symlink():
            batch.rescan = True  # e.g. a ConfigMap volume's `..data` swapped
        return True


async def _polled(root: Path, stop: asyncio.Event) -> AsyncIterator[Batch]:
    import watchfiles

    bases = {root.absolute(), root.resolve()}
    async for found in watchfiles.awatch(root, watch_filter=None, stop_event=stop, debounce=10, step=POLL_STEP_MS):
        batch = Batch()
        for _, changed in found:
            path = Path(changed)
            parts = next((path.relative_to(base).parts for base in bases if path.is_relative_to(base)), ("..",))
            if is_source_name(path.name) and not any(_hidden(part) for part in parts):
                batch.paths.add(root / Path(*parts))
            else:  # a directory, a ConfigMap's symlink swap, a hidden file: cheap to look at everything
                batch.rescan = True
        if batch:
            yield batch
