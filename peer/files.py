"""Files held by content: expense receipts and product images.

A file is named by the SHA-256 of its bytes.  An entry body or a master record refers to
it with a ``file_ref`` (``schemas/common.json``: hash, size, media type), so the device's
signature covers the file.  The bytes live in a directory (the till's ``DIR/files``, the
relay's ``DATA/files/STORE``), laid out so that the directory itself is the table::

    ab/abcdef...        a whole file, its hash checked; written to a temporary file,
                        fsynced, then renamed (a crash leaves it whole or absent)
    partial/abcdef...   the bytes received so far of a file coming in over a link: a
                        link that is cut resumes from its length
    at-relay/abcdef...  (till) an empty marker: the relay confirmed it holds the file.
                        The till keeps every file; those without a marker are offered to
                        the relay at each round.

Uploads no entry names.  A file goes to the relay and the LAN peers only once an entry
(any device's, rejected ones too: they stay in the log) or a master record names it;
until then it stays at the till it was added to.  A file added for an entry that was
never recorded (an upload through ``POST /api/files`` the front end then dropped) is
so never sent anywhere, and ``peer files DIR --prune`` removes those older than
``--hours`` (``PRUNE_HOURS``: a file being named right now is kept).  A file a deleted
product named is no longer named by a record: not sent again, and pruned like an
upload (the relay keeps what it had).

The media type is what the file's first bytes show (``sniff``); a file whose bytes are
no known type is refused when added, so a till and the relay agree on every type.
Everything here is blocking file I/O: async callers run it in a thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from tillsync.peer.errors import InvalidInput

FILES_DIR = "files"
PRUNE_HOURS = 24.0  # ``peer files --prune``: unnamed files older than this go
CHUNK = 256 * 1024  # bytes of a file_chunk frame
MAX_FILE = 64 * 1024 * 1024  # the most a till takes into its store (the relay sets its own)
HASH_RE = re.compile(r"^[0-9a-f]{64}$")
MEDIA_TYPES = ("image/jpeg", "image/png", "image/webp", "image/gif", "application/pdf")
# The entry kinds and master collections that refer to a file, and by which field.
ENTRY_FIELDS = {"expense": "receipt_file"}
RECORD_FIELDS = {"products": "image"}


def sniff(head: bytes) -> str | None:
    """The media type the first bytes of a file show, or None for none we know."""
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if head.startswith(b"%PDF-"):
        return "application/pdf"
    return None


@dataclass(frozen=True)
class FileRef:
    """What an entry or record says of a file (``common.json#/$defs/file_ref``)."""

    sha256: str
    size: int
    media_type: str

    def to_json(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "size": self.size, "media_type": self.media_type}

    @classmethod
    def from_json(cls, value: object) -> FileRef | None:
        """A ref from a body's field, or None if it is not one (the schema says why)."""
        if not isinstance(value, Mapping):
            return None
        sha, size, media = value.get("sha256"), value.get("size"), value.get("media_type")
        if isinstance(sha, str) and isinstance(size, int) and isinstance(media, str):
            return cls(sha, size, media)
        return None


def check_hash(sha256: str) -> str:
    if not HASH_RE.match(sha256):
        raise InvalidInput(f"{sha256[:80]!r} is not a SHA-256 (64 lowercase hex digits)")
    return sha256


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ContentDir:
    """Whole files by hash, and partial ones coming in (see the module's docstring)."""

    def __init__(self, root: Path, max_size: int = MAX_FILE) -> None:
        self.root = root
        self.max_size = max_size

    def path_of(self, sha256: str) -> Path:
        check_hash(sha256)
        return self.root / sha256[:2] / sha256

    def _partial(self, sha256: str) -> Path:
        return self.root / "partial" / check_hash(sha256)

    def has(self, sha256: str) -> bool:
        return self.path_of(sha256).is_file()

    def ref(self, sha256: str) -> FileRef | None:
        """The ref of a whole file held here, or None."""
        path = self.path_of(sha256)
        try:
            with open(path, "rb") as handle:
                media = sniff(handle.read(16))
                size = os.fstat(handle.fileno()).st_size
        except FileNotFoundError:
            return None
        return FileRef(sha256, size, media or "application/octet-stream")

    def hashes(self) -> Iterator[str]:
        """Every whole file held here."""
        if not self.root.is_dir():
            return
        for sub in sorted(self.root.iterdir()):
            if len(sub.name) == 2 and sub.is_dir():
                for path in sorted(sub.iterdir()):
                    if HASH_RE.match(path.name):
                        yield path.name

    def read(self, sha256: str, offset: int, size: int) -> bytes:
        with open(self.path_of(sha256), "rb") as handle:
            handle.seek(offset)
            return handle.read(size)

    # -- adding a file -----------------------------------------------------------------

    def add(self, source: BinaryIO, media_type: str | None = None) -> tuple[FileRef, bool]:
        """Copy a file in from ``source``, hashing it on the way; returns its ref and
        whether it is new here.  Refused (``InvalidInput``, nothing kept): an empty file,
        one above ``max_size``, one whose bytes are no known type or not the type
        ``media_type`` says."""
        (self.root / "partial").mkdir(parents=True, exist_ok=True)
        tmp = self.root / "partial" / f"add-{os.getpid()}-{id(source)}.tmp"
        digest, size, head = hashlib.sha256(), 0, b""
        try:
            with open(tmp, "wb") as out:
                while block := source.read(CHUNK):
                    size += len(block)
                    if size > self.max_size:
                        raise InvalidInput(f"the file is larger than {self.max_size} bytes, "
                                           "the most a file may be")
                    if len(head) < 16:
                        head += block[:16 - len(head)]
                    digest.update(block)
                    out.write(block)
                out.flush()
                os.fsync(out.fileno())
            found = sniff(head)
            if size == 0:
                raise InvalidInput("the file is empty")
            if found is None:
                raise InvalidInput("the file is not one of the types a file may be "
                                   f"({', '.join(MEDIA_TYPES)}), by its first bytes")
            if media_type is not None and media_type != found:
                raise InvalidInput(f"the file is {found}, not {media_type} as given")
            ref = FileRef(digest.hexdigest(), size, found)
            self.drop_partial(ref.sha256)  # a cut transfer of it needs no resuming now
            return ref, self._keep(tmp, ref.sha256)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def add_bytes(self, data: bytes, media_type: str | None = None) -> tuple[FileRef, bool]:
        import io

        return self.add(io.BytesIO(data), media_type)

    def _keep(self, tmp: Path, sha256: str) -> bool:
        """Rename a checked temporary file into place; False if it was there already
        (then the temporary file is dropped)."""
        final = self.path_of(sha256)
        if final.exists():
            tmp.unlink()
            with contextlib.suppress(OSError):
                os.utime(final)  # added again: its age for --prune starts anew
            return False
        final.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(tmp, 0o444)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
        return True

    def copy_whole_to(self, dest: Path) -> tuple[int, int, list[str]]:
        """Copy every whole file into the directory ``dest`` (same layout), checking
        each one's hash on the way: (files, bytes, problems).  ``partial/`` is not
        copied.  A whole file never changes once in place, so the copy of a live
        directory holds every file that was whole when the scan reached it."""
        count = total = 0
        problems: list[str] = []
        for sha in self.hashes():
            target = dest / sha[:2] / sha
            target.parent.mkdir(parents=True, exist_ok=True)
            digest, tmp = hashlib.sha256(), target.with_suffix(".tmp")
            try:
                with open(self.path_of(sha), "rb") as source, open(tmp, "wb") as out:
                    while block := source.read(CHUNK):
                        digest.update(block)
                        out.write(block)
                    out.flush()
                    os.fsync(out.fileno())
            except FileNotFoundError:  # discarded meanwhile (an entry refused)
                tmp.unlink(missing_ok=True)
                continue
            if digest.hexdigest() != sha:
                tmp.unlink()
                problems.append(f"file {sha} does not hash to its name: not copied")
                continue
            os.chmod(tmp, 0o444)
            os.replace(tmp, target)
            count, total = count + 1, total + os.stat(target).st_size
        return count, total, problems

    def discard(self, sha256: str) -> None:
        """Drop a file added just now for an entry that was then refused."""
        with contextlib.suppress(FileNotFoundError):
            self.path_of(sha256).unlink()

    # -- a file coming in over a link --------------------------------------------------

    def received(self, sha256: str) -> int:
        """How many bytes of the file have come in so far (0 if none)."""
        try:
            return self._partial(sha256).stat().st_size
        except FileNotFoundError:
            return 0

    def drop_partial(self, sha256: str) -> bool:
        """Drop what came in so far of a file; whether there was anything."""
        try:
            self._partial(sha256).unlink()
        except FileNotFoundError:
            return False
        return True

    def settled(self, sha256: str) -> bool:
        """Whether the whole file is held; if so, any partial of it is dropped (it came
        whole by another link meanwhile, or was added)."""
        if not self.has(sha256):
            return False
        self.drop_partial(sha256)
        return True

    def drop_stale_partials(self) -> list[str]:
        """Drop every partial whose file is held whole; the hashes dropped."""
        folder = self.root / "partial"
        if not folder.is_dir():
            return []
        return [path.name for path in sorted(folder.iterdir())
                if HASH_RE.match(path.name) and self.has(path.name)
                and self.drop_partial(path.name)]

    def append(self, sha256: str, offset: int, data: bytes) -> int | None:
        """Write a chunk at ``offset`` (the length received so far: a chunk elsewhere is
        not taken); returns the length now, or None if the whole file is held already
        (another link brought it: the partial is dropped, nothing is written)."""
        if self.settled(sha256):
            return None
        path = self._partial(sha256)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab") as handle:
            if handle.tell() != offset:
                return handle.tell()
            handle.write(data)
            return handle.tell()

    def finish(self, sha256: str, size: int, media_type: str) -> str:
        """The file has come in whole: keep it if its bytes hash to ``sha256`` and are
        of ``media_type`` ("ok"); else drop what came ("hash": it is asked for again
        from the start; "type": it is refused)."""
        path = self._partial(sha256)
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            head = handle.read(16)
            digest.update(head)
            total = len(head)
            while block := handle.read(CHUNK):
                digest.update(block)
                total += len(block)
            ok = total == size and digest.hexdigest() == sha256
            if ok:
                os.fsync(handle.fileno())
        if not ok or sniff(head) != media_type:
            path.unlink()
            return "type" if ok else "hash"
        self._keep(path, sha256)  # drops the partial if the file was whole already
        return "ok"


class TillFiles(ContentDir):
    """A till's files (``DIR/files``), and which of them the relay has confirmed."""

    def __init__(self, store_dir: Path) -> None:
        super().__init__(Path(store_dir) / FILES_DIR)

    def _marker(self, sha256: str) -> Path:
        return self.root / "at-relay" / check_hash(sha256)

    def at_relay(self, sha256: str) -> bool:
        return self._marker(sha256).exists()

    def mark_at_relay(self, sha256: str) -> None:
        marker = self._marker(sha256)
        if not marker.exists():
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
            _fsync_dir(marker.parent)

    def prune(self, named: set[str], older_than: float, now: float) -> list[FileRef]:
        """Remove the files no entry or record names (``named``) last changed before
        ``now - older_than`` seconds, with their markers, and partial files of that age
        (leftovers of cut links, of adds that crashed); the refs of files removed."""
        gone = []
        for sha in self.hashes():
            path = self.path_of(sha)
            ref = self.ref(sha)
            if sha in named or ref is None or path.stat().st_mtime > now - older_than:
                continue
            path.unlink()
            with contextlib.suppress(FileNotFoundError):
                self._marker(sha).unlink()
            gone.append(ref)
        self.drop_stale_partials()
        partial = self.root / "partial"
        for path in sorted(partial.iterdir()) if partial.is_dir() else []:
            if path.is_file() and path.stat().st_mtime <= now - older_than:
                path.unlink()
        return gone

    def not_at_relay(self) -> list[FileRef]:
        """The files the relay has not confirmed yet."""
        refs = [self.ref(sha) for sha in self.hashes() if not self.at_relay(sha)]
        return [r for r in refs if r is not None]

    def listing(self) -> list[dict[str, Any]]:
        out = []
        for sha in self.hashes():
            ref = self.ref(sha)
            if ref is not None:
                out.append({**ref.to_json(), "at_relay": self.at_relay(sha)})
        return out

    def check_held(self, where: str, value: object) -> None:
        """An entry or record may refer only to a file this till holds, as it says."""
        ref = FileRef.from_json(value)
        if ref is None:
            return  # the schema refuses it
        held = self.ref(ref.sha256)
        if held is None:
            raise InvalidInput(f"{where}: this till holds no file {ref.sha256}; add the "
                               "file first (--attach FILE, or POST /api/files)")
        if held != ref:
            raise InvalidInput(f"{where}: the file {ref.sha256} is {held.size} bytes of "
                               f"{held.media_type}, not {ref.size} bytes of {ref.media_type}")


def entry_file_name(kind: str, body: bytes) -> str:
    """The hash of the file an entry's stored (msgpack) body names, or ""."""
    import msgpack

    name = ENTRY_FIELDS.get(kind)
    if name is None:
        return ""
    try:
        decoded = msgpack.unpackb(body, raw=False)
    except (ValueError, msgpack.UnpackException):
        return ""
    ref = FileRef.from_json(decoded.get(name)) if isinstance(decoded, dict) else None
    return "" if ref is None else ref.sha256


def check_entry_files(store_dir: Path, kind: str, body: Mapping[str, Any]) -> None:
    """Refuse an entry that refers to a file this till does not hold."""
    name = ENTRY_FIELDS.get(kind)
    if name is not None and name in body:
        TillFiles(store_dir).check_held(f"body.{name}", body[name])


def check_record_files(store_dir: Path, collection: str, patch: Mapping[str, Any]) -> None:
    """Refuse a master record change that refers to a file this till does not hold."""
    name = RECORD_FIELDS.get(collection)
    if name is not None and patch.get(name) is not None:
        TillFiles(store_dir).check_held(name, patch[name])
