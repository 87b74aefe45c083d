"""Which file is which: discovery under logs/ and file identity across renames, rotation,
truncation, copies and re-creation.

A file is known by a fingerprint of its first line. Two files may share one (a copy, a
log rotated by copy-and-truncate, or a log deleted and written anew with the same first
line), so an identity is proven, never assumed:

- the same inode with the same birth time is the same file (an inode number reused by a
  new file has another birth time);
- where the file system keeps no birth time, or the inode differs (a move across
  devices, a restore), the file must hold the same bytes up to the offset read: a CRC-32
  of everything read is kept per file, with the CRCs at the last few commits;
- anything else is a new file under an identity of its own, so the event ids derived
  from identity and offset never collide with the old file's.

Vector and Filebeat take a file for the one they know when its first bytes (Vector's
checksum, Filebeat's fingerprint) or its device and inode (both, by default) match: a
log deleted and written anew with the same first line, or on a reused inode, is read
from the old offset. The birth time and the CRC of the whole prefix rule that out here.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from pipeline.checkpoint import FileState
from pipeline.config import Home
from pipeline.errors import display_path
from pipeline.identity import (
    FINGERPRINT_BYTES,
    base_fingerprint,
    birth_time,
    crc_of,
    fingerprint_of,
    inode_at,
    marker_at,
)
from pipeline.sources import Root

FORGET_AFTER_SECONDS = 7 * 86400

Notify = Callable[[str], None]


# ---------------------------------------------------------------- the followed files


@dataclass
class OpenFile:
    """A followed file: its descriptor stays open through renames and deletion."""

    fd: int
    state: FileState
    path: str
    seen: bool = True
    checked: tuple[int, int] | None = None  # (size, mtime_ns) when last checked for rewrites
    root: Root | None = None  # the source it belongs to; None for a file under logs/


@dataclass(frozen=True)
class _Candidate:
    """A known identity sharing the new file's first line."""

    key: str
    state: FileState
    handle: OpenFile | None


@dataclass(frozen=True)
class _Dormant:
    """A source file read to its end and closed while idle: reopened once it changes."""

    identity: str
    size: int
    mtime_ns: int


class FileSet:
    """The files under logs/ and the sources' roots that are followed, each under its
    proven identity."""

    def __init__(self, home: Home, known: Callable[[], dict[str, FileState]],
                 notify: Notify, roots: tuple[Root, ...] = (), logs: bool = True) -> None:
        self.home = home
        self.known = known  # the committed checkpoint's file states, as of now
        self.notify = notify
        self.roots = roots
        self.logs = logs  # whether logs/ is followed (not by `tally import`)
        self.open: dict[str, OpenFile] = {}
        # Thousands of transcripts would hold as many descriptors, and every poll would
        # look at each: a source file idle at its end is closed until it changes.
        self.dormant: dict[tuple[int, int], _Dormant] = {}
        # Identities by first-line fingerprint, so that finding a new file's candidates
        # does not look at every file (a first import of thousands of transcripts).
        self._open_by_base: dict[str, dict[str, None]] = {}  # in the order they were opened
        self._open_by_inode: dict[tuple[int, int], str] = {}
        # (the dict they were made from, its size, the index): holding the dict keeps its id
        # from being reused by another
        self._known_by_inode: tuple[object, int, dict[tuple[int, int], str]] = (None, 0, {})
        self._known_by_base: tuple[object, int, dict[str, list[str]]] = (None, 0, {})
        self.live: set[tuple[int, int]] = set()  # (dev, ino) of every file the last scan saw
        self.unreadable: dict[str, str] = {}  # path -> why, for the files and directories
        self._logs_real = os.path.realpath(home.logs)
        self._warned: set[str] = set()

    # ------------------------------------------------------------ discovery

    def discover(self, sources: bool = True) -> list[str]:
        """Paths under logs/ matching the include patterns, symlinks kept inside logs/, and
        (unless `sources` is False) the files of the sources' roots.

        Files whose inode the checkpoint knows come first, so the original of a copy is
        followed before the copy is looked at.
        """
        found: list[str] = []
        tops = ([str(self.home.logs)] if self.logs else []) + \
            [r.path for r in self.roots if sources]
        for top in tops:
            for directory, _dirs, names in os.walk(top, followlinks=False,
                                                   onerror=self._unreadable_directory):
                for name in names:
                    path = os.path.join(directory, name)
                    if self.wanted(path):
                        found.append(path)
        known = {(s.dev, s.ino) for s in self.known().values()}
        inodes = {path: inode_at(path) for path in found}
        self.live = {inode for inode in inodes.values() if inode is not None}
        if sources:
            self.dormant = {inode: d for inode, d in self.dormant.items() if inode in self.live}
        else:  # the sources' files were not looked at: still there as far as we know
            self.live |= set(self.dormant) | {(h.state.dev, h.state.ino)
                                              for h in self.open.values() if h.root}
        return sorted(found, key=lambda p: (inodes[p] not in known, p))

    def _unreadable_directory(self, error: OSError) -> None:
        path = str(error.filename)
        self.unreadable[path] = f"cannot list directory ({error.strerror})"
        self.warn_once(path, f"{display_path(path)}: cannot list directory "
                             f"({error.strerror}); its logs are not read")

    def root_of(self, path: str) -> Root | None:
        """The source root `path` lies below, if any."""
        return next((root for root in self.roots if root.holds(path)), None)

    def wanted(self, path: str) -> bool:
        """Whether `path` is a file to follow: under logs/, matching the include patterns and
        staying inside; or under a source's root, matching its patterns (no symlinks, as
        ccusage reads them)."""
        name = os.path.basename(path)
        root = self.root_of(path)
        if root is not None:
            return any(fnmatch.fnmatch(name, p) for p in root.patterns) and \
                not os.path.islink(path)
        if not self.logs:
            return False
        if not any(fnmatch.fnmatch(name, pattern) for pattern in self.home.include):
            return False
        real = os.path.realpath(path)
        if real != self._logs_real and not real.startswith(self._logs_real + os.sep):
            self.warn_once(path, f"{display_path(path)}: symlink leads outside the logs "
                                 "directory; skipped")
            return False
        return True

    def relative(self, path: str) -> str:
        """`path` as the checkpoint keeps it: relative to the logs directory, or absolute for
        a source's file."""
        if self.root_of(path) is not None:
            return path
        try:
            return os.path.relpath(path, self.home.logs)
        except ValueError:
            return path

    def warn_once(self, key: str, message: str) -> None:
        """Tell `message` unless it was told for `key` already."""
        if key not in self._warned:
            self._warned.add(key)
            self.notify(message)

    # ------------------------------------------------------------ following

    def follow(self, path: str) -> str | None:
        """Open `path` unless it is followed already; the identity newly opened, if any."""
        try:
            st = os.stat(path)
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        dormant = self.dormant.get((st.st_dev, st.st_ino))
        if dormant is not None:
            if (dormant.size, dormant.mtime_ns) == (st.st_size, st.st_mtime_ns):
                return None
            del self.dormant[(st.st_dev, st.st_ino)]
        elif self._read_to_its_end(path, st):
            return None
        followed = self._open_by_inode.get((st.st_dev, st.st_ino))
        if followed is not None:
            handle = self.open[followed]
            handle.seen = True  # an open descriptor pins its inode: no reuse possible
            if not os.path.islink(path):  # an alias does not rename the file
                handle.path = path
                handle.state.path = self.relative(path)
            return None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            self.unreadable[path] = f"cannot open ({exc.strerror})"
            self.warn_once(path, f"{display_path(path)}: cannot open ({exc.strerror}); "
                                 "will retry")
            return None
        identity = self._open_as(path, fd)
        if identity is None:
            os.close(fd)  # not readable yet, or a copy of a file already followed
        return identity

    def _read_to_its_end(self, path: str, st: os.stat_result) -> bool:
        """Whether a source's file not followed yet is known, read to its end and unchanged
        since (by inode, size, and an mtime before the state was last seen): it rests
        without being opened, so a run over thousands of read transcripts opens none."""
        if self.root_of(path) is None:
            return False
        known = self.known()
        identity = self._known_inodes(known).get((st.st_dev, st.st_ino))
        state = known.get(identity) if identity is not None else None
        if identity is None or state is None or identity in self.open \
                or state.offset != st.st_size or st.st_mtime_ns >= int(state.last_seen * 1e9):
            return False
        self.dormant[(st.st_dev, st.st_ino)] = _Dormant(identity, st.st_size, st.st_mtime_ns)
        return True

    def _known_inodes(self, known: dict[str, FileState]) -> dict[tuple[int, int], str]:
        """The known identities by inode (made again as `_known_index` is)."""
        made_for, size, index = self._known_by_inode
        if made_for is not known or size != len(known):
            index = {(state.dev, state.ino): key for key, state in known.items()}
            self._known_by_inode = (known, len(known), index)
        return index

    def _open_as(self, path: str, fd: int) -> str | None:
        try:
            st = os.fstat(fd)  # what was opened, not what was stat'ed a moment before
            fingerprint = fingerprint_of(fd) if stat.S_ISREG(st.st_mode) else None
        except OSError as exc:
            self.unreadable[path] = f"cannot read ({exc.strerror})"
            self.warn_once(path, f"{display_path(path)}: cannot read ({exc.strerror}); "
                                 "will retry")
            return None
        self.unreadable.pop(path, None)
        if fingerprint is None:
            return None
        btime = birth_time(fd)
        resolved = self._resolve(fingerprint, fd, st, btime, self.relative(path))
        if resolved is None or resolved[0] in self.open:
            return None
        identity, state = resolved
        self._warned.discard(path)
        state.dev, state.ino, state.btime, state.path = st.st_dev, st.st_ino, btime, \
            self.relative(path)
        state.last_seen = time.time()
        self.open[identity] = OpenFile(fd, state, path, root=self.root_of(path))
        self._open_by_base.setdefault(base_fingerprint(identity), {})[identity] = None
        self._open_by_inode[(state.dev, state.ino)] = identity
        return identity

    def _resolve(self, fingerprint: str, fd: int, st: os.stat_result, btime: int,
                 relative: str) -> tuple[str, FileState] | None:
        """The identity of a newly opened file and the state to resume from; None to leave
        it alone (a copy of a followed file, or one whose original is yet to be followed)."""
        candidates = self._candidates(fingerprint)
        for candidate in candidates:
            if _same_inode(candidate.state, st, btime) and (
                    (candidate.state.btime and btime) or self._holds(fd, st, candidate.state)):
                return candidate.key, self._resumed(fd, st, candidate.state)
        for candidate in candidates:
            verdict = self._copy_verdict(fd, st, candidate, relative)
            if verdict == "followed-copy":
                return None
            if verdict == "moved":
                return candidate.key, _with(candidate.state, candidate.state.offset)
            if verdict == "old-copy":
                return candidate.key, self._skipped_copy(fd, st, candidate.state)
            if verdict == "defer":
                return None
        key = self._new_key(fingerprint, st, btime)
        return key, FileState(key, relative, st.st_dev, st.st_ino, first_path=relative,
                              btime=btime, crc=0)

    def _candidates(self, fingerprint: str) -> list[_Candidate]:
        found = {key: _Candidate(key, self.open[key].state, self.open[key])
                 for key in self._open_by_base.get(fingerprint, {})}
        known = self.known()
        for key in self._known_index(known).get(fingerprint, ()):
            if key not in found and key in known:
                found[key] = _Candidate(key, known[key], None)
        return list(found.values())

    def _known_index(self, known: dict[str, FileState]) -> dict[str, list[str]]:
        """The known identities by fingerprint. Made again for another dict or size: a
        commit makes a new dict holding every key of the last, and forgetting a file
        deletes its key in place (nothing adds one in place)."""
        made_for, size, index = self._known_by_base
        if made_for is not known or size != len(known):
            index = {}
            for key in known:
                index.setdefault(base_fingerprint(key), []).append(key)
            self._known_by_base = (known, len(known), index)
        return index

    def _holds(self, fd: int, st: os.stat_result, state: FileState) -> bool:
        """Whether the file holds the bytes read of `state` (its CRC, or for a state from
        before CRCs were kept, the marker)."""
        if st.st_size < state.offset:
            return False
        if state.crc is None:
            return marker_at(fd, state.offset) == state.marker
        return crc_of(fd, state.offset) == state.crc

    def _copy_verdict(self, fd: int, st: os.stat_result, candidate: _Candidate,
                      relative: str) -> str:
        """What a file of another inode is to a known identity with the same first line:
        "followed-copy", "moved", "old-copy", "defer" or "other"."""
        state, handle = candidate.state, candidate.handle
        if handle is not None:  # the original is followed: is this a copy of it?
            if fingerprint_of(handle.fd) != base_fingerprint(candidate.key):
                # The original was rewritten (copy-and-truncate): this may be the copy of what
                # was read of it. Decided once the original is followed anew, against its state.
                return "defer"
            # Compared over all both hold, not just what was read of the original: before
            # anything is read, any file with its first line would pass for a copy.
            size = min(st.st_size, os.fstat(handle.fd).st_size)
            same = crc_of(fd, size) == crc_of(handle.fd, size)
            return "followed-copy" if same else "other"
        original = _inode_of(state)
        if original != (st.st_dev, st.st_ino) and original in self.live \
                and original not in self._open_by_inode and original not in self.dormant:
            return "defer"  # the original is there, not opened yet: it goes first
        if self._holds(fd, st, state):
            return "moved"  # the same bytes under another inode: moved, copied, restored
        if st.st_size < state.offset and self._earlier_copy(fd, st, state, relative):
            return "old-copy"
        return "other"

    def _earlier_copy(self, fd: int, st: os.stat_result, state: FileState,
                      relative: str) -> bool:
        """Whether a file shorter than what was read of `state` is a copy taken earlier
        (copy-and-truncate rotation), by the CRC at the last commit it reaches."""
        if state.crc is None:  # a state from before CRCs: the marker's heuristic
            return True
        reached = [(offset, crc) for offset, crc in state.crcs if offset <= st.st_size]
        if reached:
            offset, crc = reached[-1]
            return crc_of(fd, offset) == crc
        # No commit point to compare with: a copy has a name of its own; a file written
        # anew under the old name is new.
        return relative != state.path

    def _new_key(self, fingerprint: str, st: os.stat_result, btime: int) -> str:
        """An identity no known state has: the fingerprint, else made unique by inode and
        birth time, so that derived event ids of the old file are never reused."""
        known = self.known()

        def taken(key: str) -> bool:
            return key in known or key in self.open

        keys = [fingerprint, f"{fingerprint}@{st.st_dev}:{st.st_ino}"]
        if btime:
            keys.append(f"{fingerprint}@{st.st_dev}:{st.st_ino}:{btime}")
        for key in keys:
            if not taken(key):
                return key
        generation = 2
        while taken(f"{keys[-1]}#{generation}"):
            generation += 1
        return f"{keys[-1]}#{generation}"

    def _resumed(self, fd: int, st: os.stat_result, state: FileState) -> FileState:
        """The state of a file proven to be the same, at a verified offset."""
        size = st.st_size
        if size >= state.offset and marker_at(fd, state.offset) == state.marker:
            resumed = _with(state, state.offset)
            if resumed.crc is None:  # a state from before CRCs: from now on it has one
                resumed.crc = crc_of(fd, state.offset)
            return resumed
        # Same file, rewritten in place beyond its first line: that line was read already.
        first_line_end = os.pread(fd, FINGERPRINT_BYTES, 0).find(b"\n") + 1
        self.notify(f"{display_path(state.path)}: content changed under the checkpoint; "
                    "resuming after line 1")
        offset = min(first_line_end, state.offset)
        resumed = _with(state, offset, marker_at(fd, offset), crc_of(fd, offset))
        resumed.carry = None  # an importer's state belonged to the old content
        return resumed

    def _skipped_copy(self, fd: int, st: os.stat_result, state: FileState) -> FileState:
        """An earlier copy of a file read further: all of it was read already."""
        return _with(state, st.st_size, marker_at(fd, st.st_size), crc_of(fd, st.st_size))

    # ------------------------------------------------------------ leaving files

    def close(self, identity: str) -> OpenFile:
        """Stop following a file; its handle."""
        handle = self.open.pop(identity)
        self._open_by_base.get(base_fingerprint(identity), {}).pop(identity, None)
        if self._open_by_inode.get((handle.state.dev, handle.state.ino)) == identity:
            del self._open_by_inode[(handle.state.dev, handle.state.ino)]
        with contextlib.suppress(OSError):
            os.close(handle.fd)
        return handle

    def rest(self, identity: str, idle_seconds: float) -> bool:
        """Close a source file read to its end and unchanged for `idle_seconds`; it stays
        known and is opened again when it changes. Whether it was closed."""
        handle = self.open[identity]
        try:
            st = os.fstat(handle.fd)
        except OSError:
            return False
        if handle.root is None or st.st_size != handle.state.offset or \
                time.time() - st.st_mtime < idle_seconds or st.st_nlink == 0:
            return False
        self.close(identity)
        self.dormant[(st.st_dev, st.st_ino)] = _Dormant(identity, st.st_size, st.st_mtime_ns)
        return True

    def close_all(self) -> None:
        """Close every followed file."""
        for identity in list(self.open):
            self.close(identity)

    def still_named(self, state: FileState) -> bool:
        """Whether the name the file was first seen under still leads to it (not rotated)."""
        try:
            st = os.stat(os.path.join(self.home.logs, state.first_path or state.path))
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == (state.dev, state.ino)

    def stale(self, files: dict[str, FileState]) -> list[str]:
        """Identities not followed and not seen for FORGET_AFTER_SECONDS, among those this
        set looks after (`tally import` leaves logs/ and the other sources alone)."""
        cutoff = time.time() - FORGET_AFTER_SECONDS
        resting = {d.identity for d in self.dormant.values()}
        return [key for key, state in files.items()
                if key not in self.open and key not in resting and state.last_seen < cutoff
                and self._looks_after(state)]

    def _looks_after(self, state: FileState) -> bool:
        if os.path.isabs(state.path):  # a source's file
            return self.root_of(state.path) is not None
        return self.logs

    def unread_at(self, paths: list[str]) -> int:
        """The bytes not read yet in files not opened (as far as their sizes and the
        checkpoint tell), for a pass's progress."""
        known = self.known()
        by_inode = self._known_inodes(known)
        total = 0
        for path in paths:
            try:
                st = os.stat(path)
            except OSError:
                continue
            identity = by_inode.get((st.st_dev, st.st_ino))
            state = known.get(identity) if identity is not None else None
            if identity not in self.open and (st.st_dev, st.st_ino) not in self.dormant:
                total += max(0, st.st_size - (state.offset if state else 0))
        return total

    def unread(self) -> list[int]:
        """Each followed file's bytes not yet consumed."""
        unread = []
        for handle in self.open.values():
            with contextlib.suppress(OSError):
                unread.append(max(0, os.fstat(handle.fd).st_size - handle.state.offset))
        return unread


def _with(state: FileState, offset: int, marker: str | None = None,
          crc: int | None = None) -> FileState:
    """A copy of `state`, moved to `offset` with that offset's marker and CRC if given."""
    copy = replace(state, crcs=list(state.crcs))
    if marker is not None:
        copy.offset, copy.marker, copy.crc = offset, marker, crc
    return copy


def _same_inode(state: FileState, st: os.stat_result, btime: int) -> bool:
    if (state.dev, state.ino) != (st.st_dev, st.st_ino):
        return False
    return not (state.btime and btime and state.btime != btime)


def _inode_of(state: FileState) -> tuple[int, int]:
    return state.dev, state.ino

