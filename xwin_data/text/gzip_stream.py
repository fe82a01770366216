"""Gzip streams that survive damage: a file that is cut short, corrupt or not gzip at all yields the bytes before the
damage and then ends, with `problem` set, instead of raising in the middle of a build. The stream seeks (forward by
decompressing and discarding, backward by starting over), so a block of a gzipped JSONL file is read from its
offset like a block of a plain one.
"""
from __future__ import annotations

import io
import zlib
from pathlib import Path

CHUNK = 1 << 20
GZIP_MAGIC = b"\x1f\x8b"


class GzipReader(io.RawIOBase):
    """Gzip members decompressed as far as they go; `problem` is (reason, detail) once damage ends the stream."""

    def __init__(self, raw) -> None:
        self.raw = raw
        self._start()

    def _start(self) -> None:
        self.problem: tuple[str, str] | None = None
        self._d = zlib.decompressobj(31)
        self._in_member = False
        self._out = b""
        self._at = 0
        self._done = False
        self._produced = 0  # decompressed bytes so far, including those still in `_out`
        head = self.raw.read(2)
        if head and head != GZIP_MAGIC:
            self.problem = ("not_gzip", f"named .gz but starts with {head!r}, not the gzip magic bytes")
            self._done = True
        self._pending = head

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._produced - (len(self._out) - self._at)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Seek in the decompressed bytes. Forward decompresses and discards; backward starts from the beginning;
        past the end (or the damage) stops there, as a read would."""
        if whence == io.SEEK_CUR:
            offset += self.tell()
        elif whence != io.SEEK_SET:
            raise io.UnsupportedOperation("a gzip stream seeks from its start or its current position only")
        if offset < 0:
            raise ValueError(f"negative seek position {offset}")
        if offset < self.tell():
            self.raw.seek(0)
            self._start()
        while self.tell() < offset:
            if self._at >= len(self._out):
                if self._done:
                    break
                self._fill()
                continue
            self._at += min(offset - self.tell(), len(self._out) - self._at)
        return self.tell()

    def _fill(self) -> None:
        if not self._pending:
            self._pending = self.raw.read(CHUNK)
            if not self._pending:
                if self._in_member:
                    self.problem = ("truncated_file", f"gzip stream cut short after {self._produced:,} bytes")
                self._done = True
                return
        try:
            out = self._d.decompress(self._pending, CHUNK)
        except zlib.error as err:
            self.problem = ("corrupt_file", f"gzip data is corrupt after {self._produced:,} bytes: {err}")
            self._done = True
            return
        self._pending = self._d.unconsumed_tail
        self._in_member = not self._d.eof
        if self._d.eof:  # a member ended: all input after it (the next member, or zero padding) is unused_data
            self._pending = self._d.unused_data  # (unconsumed_tail may repeat it: taking both read it twice)
            self._d = zlib.decompressobj(31)
            if not self._pending.strip(b"\x00"):
                self._pending = b""
        self._produced += len(out)
        self._out, self._at = out, 0

    def readinto(self, b) -> int:
        while self._at >= len(self._out) and not self._done:
            self._fill()
        n = min(len(b), len(self._out) - self._at)
        b[:n] = self._out[self._at:self._at + n]
        self._at += n
        return n

    def close(self) -> None:
        self.raw.close()
        super().close()


def open_binary(path: Path):
    """A binary stream of a file's bytes, gunzipped where the name ends in `.gz` (see `damage`)."""
    if path.suffix == ".gz":
        return io.BufferedReader(GzipReader(open(path, "rb")), CHUNK)
    return open(path, "rb")


def damage(fh) -> tuple[str, str] | None:
    """(reason, detail) of the damage a stream from `open_binary` met; None for a whole stream or a plain file."""
    return getattr(getattr(fh, "raw", None), "problem", None)
