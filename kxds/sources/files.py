"""The file source: every *.yaml, *.yml and *.json under a directory (hidden ones aside), followed live.

A file that fails to parse is reported and its previously good objects are kept; a document
that is not a usable object is reported and, if it had a good version before, that is kept.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import structlog
import yaml

from kxds.model.errors import InvalidObject
from kxds.model.objects import Filters, ObjectKey, Parsed, object_key, parse_object
from kxds.sources import watch

log = structlog.get_logger("kxds.sources.files")

# libyaml's loader when PyYAML has it: the pure-Python one takes about 1 ms per document.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# A file that looks half-written (unparsable, or losing objects) is read again once it has not
# changed for SETTLE_SECONDS; after MAX_SETTLE_SECONDS its content is taken as it is.
SETTLE_SECONDS = 0.5
# 50,000 Knative-shaped objects take ~60 MB of YAML; a file far beyond that is not a source.
MAX_FILE_BYTES = 1024 * 1024 * 1024
MAX_SETTLE_SECONDS = 2.0
Sink = Callable[[Mapping[ObjectKey, Parsed], Iterable[ObjectKey]], None]


def _stamp(path: Path) -> tuple[int, int, int] | None:
    """What tells a file's content changed without reading it (a symlink is followed)."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


def read_documents(path: Path) -> Iterator[Any]:
    """The documents of a file as they are read (a v1 List's items one by one, as `kubectl get -o
    yaml` writes them); raises ValueError (with the file named) where it stops parsing."""
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ValueError(f"{path}: {size} bytes; files of at most {MAX_FILE_BYTES} are read")
        if path.suffix == ".json":
            value = json.loads(path.read_text(encoding="utf-8"))
            documents: Iterable[Any] = value if isinstance(value, list) else [value]
        else:
            documents = _yaml_documents(path)
        for doc in documents:
            if isinstance(doc, dict) and doc.get("kind") == "List" and isinstance(doc.get("items"), list):
                yield from doc["items"]
            elif doc is not None:
                yield doc
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: {exc}") from exc
    except RecursionError:
        raise ValueError(f"{path}: nested too deeply to parse") from None
    except MemoryError:
        raise ValueError(f"{path}: too large to parse") from None


def _yaml_documents(path: Path) -> Iterator[Any]:
    with path.open(encoding="utf-8") as stream:
        yield from yaml.load_all(stream, Loader=_LOADER)


class FileSource:
    def __init__(self, directory: Path, filters: Filters, sink: Sink, on_reject: Callable[[str], None] | None = None, *,
                 polling: bool = False) -> None:
        self.directory = directory
        self._polling = polling  # watch.py's fallback where inotify is missing, chosen (tests run both)
        self._filters = filters
        self._sink = sink
        self._on_reject = on_reject or (lambda kind: None)
        self._files: dict[Path, dict[ObjectKey, Parsed]] = {}
        self._merged: dict[ObjectKey, Parsed] = {}
        self._where: dict[ObjectKey, tuple[Path, ...]] = {}  # the files defining each object
        self._stamps: dict[Path, tuple[int, int, int] | None] = {}  # each file as last read

    def load(self) -> None:
        """Read everything once (before serving): the source's initial list."""
        if not self.directory.is_dir():
            raise FileNotFoundError(f"source directory {self.directory} does not exist")
        paths = watch.source_files(self.directory)
        for path in paths:
            self._read(path)
        self._emit(paths, set())

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Follow creates, edits, deletes and renames until `stop` is set."""
        async for batch in watch.changes(self.directory, stop or asyncio.Event(), polling=self._polling):
            paths = sorted((batch.paths | self._moved()) if batch.rescan else batch.paths)
            before: set[ObjectKey] = set()
            for path in paths:
                before |= self._files.get(path, {}).keys()
                if path.is_file():
                    if not self._read(path, final=False):
                        await self._settle(path)
                        self._read(path)
                else:
                    self._stamps.pop(path, None)
                    if self._files.pop(path, None) is not None:
                        log.info("source.file_removed", file=str(path))
            self._emit(paths, before)

    def _moved(self) -> set[Path]:
        """The files whose content may differ from what was read, found without any event naming
        them (a directory moved in or out, a symlink swapped): in proportion to the files, not the objects."""
        present = {path: _stamp(path) for path in watch.source_files(self.directory)}
        changed = {path for path, stamp in present.items() if self._stamps.get(path, ()) != stamp}
        return changed | (self._files.keys() - present.keys())

    @staticmethod
    async def _settle(path: Path) -> None:
        """Wait until the file stops changing (a writer still at work), for at most MAX_SETTLE."""
        deadline = asyncio.get_running_loop().time() + MAX_SETTLE_SECONDS
        before = _stamp(path)
        while asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(SETTLE_SECONDS)
            now = _stamp(path)
            if now == before:
                return
            before = now

    def _read(self, path: Path, final: bool = True) -> bool:
        """Read a file's objects. A read that fails to parse, or that would drop objects the file
        had, may be a half-written file: unless `final`, it is not applied and False is returned,
        so the caller can read again once the file has settled."""
        previous = self._files.get(path, {})
        stamp = _stamp(path)  # before reading: a write during the read shows as a change later
        objects: dict[ObjectKey, Parsed] = {}
        keys: set[ObjectKey] = set()
        rejections: list[tuple[int, InvalidObject, bool]] = []
        try:
            # Parsed as read: a file of 50,000 objects never holds all its raw documents at once
            # (measured: 150 MiB less resident memory at 10,000 Ingresses).
            for index, doc in enumerate(read_documents(path)):
                key = object_key(doc) if isinstance(doc, dict) else None
                if key is not None:
                    keys.add(key)
                try:
                    parsed = parse_object(doc, self._filters)
                except InvalidObject as exc:
                    kept = key is not None and key in previous
                    if kept and key is not None:
                        objects[key] = previous[key]
                    rejections.append((index, exc, kept))
                    continue
                except Exception as unexpected:  # noqa: BLE001 - RecursionError, MemoryError, a check nobody wrote
                    # A document no check anticipated: it fails alone, named, and kxds stays up.
                    problem = InvalidObject(key.kind if key else "document", key.namespace if key else "", key.name if key else "", "",
                                        f"cannot be read: {type(unexpected).__name__}: {str(unexpected)[:200]}")
                    rejections.append((index, problem, False))
                    continue
                if parsed is not None:
                    objects[parsed[0]] = parsed[1]
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            if not final:
                return False
            log.error("source.file_invalid", file=str(path), error=str(exc), kept=len(previous))
            self._on_reject("file")
            self._stamps[path] = stamp
            return True
        if not final and previous and not previous.keys() <= keys:
            return False
        for index, problem, kept in rejections:
            log.error("object.rejected", file=str(path), document=index, error=str(problem), kept_previous=kept)
            self._on_reject(problem.kind)
        self._files[path] = objects
        self._stamps[path] = stamp
        return True

    def _emit(self, paths: list[Path], before: set[ObjectKey]) -> None:
        """Send what changed in these files: objects they define now or defined before (`before`).
        Work in proportion to the files that changed, not to every object of the directory."""
        affected = set(before)
        for path in paths:
            now = self._files.get(path, {}).keys()
            affected |= now
            for key in before - now:
                self._where[key] = tuple(p for p in self._where.get(key, ()) if p != path)
            for key in now:
                where = self._where.get(key, ())
                if path not in where:
                    self._where[key] = (*where, path)
        upserts: dict[ObjectKey, Parsed] = {}
        deletes = []
        for key in sorted(affected):
            defined = sorted(p for p in self._where.get(key, ()) if key in self._files.get(p, {}))
            if not defined:
                self._where.pop(key, None)
                if self._merged.pop(key, None) is not None:
                    deletes.append(key)
                continue
            if len(defined) > 1:
                log.warning("source.duplicate_object", object=str(key), file=str(defined[-1]), overrides=str(defined[-2]))
            obj = self._files[defined[-1]][key]  # the last file in name order wins
            known = self._merged.get(key)
            if known is not obj and known != obj:
                upserts[key] = self._merged[key] = obj
        if upserts or deletes:
            self._sink(upserts, deletes)
