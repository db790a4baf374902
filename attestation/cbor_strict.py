"""A strict, bounded reader for the small CBOR subset our formats use.

General CBOR decoders build whatever the input describes before anyone looks at it: a map of
80,000 bignum keys that all collide in Python's hash costs minutes before a schema check runs.
This reader accepts only what our encoders emit and refuses everything else at its first byte:

- unsigned integers (major 0), byte strings (2), UTF-8 text strings (3), arrays (4), maps (5);
- no negative integers, tags (so no bignums), floats, simple values (false/true/null),
  indefinite lengths or reserved encodings;
- every length and integer in its shortest form (the canonical form our encoders write);
- map keys are text, in canonical order (shorter encoded key first, then bytewise), so a
  duplicate is simply a key that does not increase.

The reader never builds a container: callers ask for the item they expect (with a size or count
limit that is checked against the item's header, before its contents are touched) and skip
what they do not know with :meth:`Reader.skip`, which walks without allocating. Every refusal is
a :class:`~attestation.errors.MalformedEvidence` subclass with a stable ``reason`` and the byte
``offset`` where reading stopped.
"""

from __future__ import annotations

from dataclasses import dataclass

from attestation.errors import MalformedEvidence, SizeLimitExceeded

UINT, BYTES, TEXT, ARRAY, MAP = 0, 2, 3, 4, 5
_NAMES = {
    0: "an unsigned integer",
    1: "a negative integer",
    2: "a byte string",
    3: "a text string",
    4: "an array",
    5: "a map",
    6: "a tag",
    7: "a float or simple value",
}
# The smallest argument each additional-information width may carry (shortest form).
_WIDTHS = {24: (1, 24), 25: (2, 1 << 8), 26: (4, 1 << 16), 27: (8, 1 << 32)}


class CborRejected(MalformedEvidence):
    """Input outside the accepted CBOR subset; ``offset`` is where reading stopped."""

    reason = "cbor_invalid"

    def __init__(self, detail: str, offset: int = 0) -> None:
        super().__init__(detail)
        self.offset = offset


class TruncatedCbor(CborRejected):
    reason = "cbor_truncated"


class ForbiddenCborItem(CborRejected):
    """A tag (bignums included), negative integer, float or simple value."""

    reason = "cbor_forbidden_item"


class IndefiniteLength(CborRejected):
    reason = "cbor_indefinite_length"


class NonCanonicalCbor(CborRejected):
    """A length or integer not in its shortest form, or map keys out of canonical order."""

    reason = "cbor_non_canonical"


class DuplicateKey(CborRejected):
    reason = "cbor_duplicate_key"


class UnexpectedType(CborRejected):
    """A well-formed item of another type than the schema asks for (e.g. an integer map key)."""

    reason = "cbor_unexpected_type"


class TrailingBytes(CborRejected):
    reason = "cbor_trailing_bytes"


class CborLimitExceeded(SizeLimitExceeded):
    """A count, size or depth over its cap (reason ``size_limit``, like every size refusal)."""

    def __init__(self, detail: str, offset: int = 0) -> None:
        super().__init__(detail)
        self.offset = offset


@dataclass(frozen=True)
class Head:
    """One item header: major type, argument (length, count or value) and where it started."""

    major: int
    arg: int
    offset: int

    @property
    def kind(self) -> str:
        return _NAMES[self.major]


@dataclass(frozen=True)
class SkipLimits:
    """Caps for values the schema does not know (skipped, never built)."""

    depth: int = 4
    count: int = 16
    size: int = 64 * 1024
    key_size: int = 64


class Reader:
    """Reads one buffer front to back; each method consumes exactly one item (or its header)."""

    def __init__(self, data: bytes, where: str) -> None:
        self._data = memoryview(data)
        self._where = where
        self.pos = 0
        self.note = ""  # appended to limit messages, e.g. which TEE type's caps applied

    @property
    def remaining(self) -> int:
        return len(self._data) - self.pos

    def _take(self, n: int, what: str) -> memoryview:
        if n > self.remaining:
            raise TruncatedCbor(
                f"{what}: needs {n} bytes, {self.remaining} left of {len(self._data)}", self.pos
            )
        out = self._data[self.pos : self.pos + n]
        self.pos += n
        return out

    def head(self, what: str) -> Head:
        """The next item's header; refuses every item outside the subset before reading more."""
        start = self.pos
        initial = self._take(1, what)[0]
        major, info = initial >> 5, initial & 0x1F
        if major in (1, 6, 7):
            raise ForbiddenCborItem(f"{what}: {_NAMES[major]} is not allowed here", start)
        if info == 31:
            raise IndefiniteLength(f"{what}: indefinite-length {_NAMES[major]}", start)
        if info < 24:
            return Head(major, info, start)
        if info not in _WIDTHS:
            raise CborRejected(f"{what}: reserved additional information {info}", start)
        width, smallest = _WIDTHS[info]
        arg = int.from_bytes(self._take(width, what), "big")
        if arg < smallest:
            raise NonCanonicalCbor(
                f"{what}: {arg} encoded in {width + 1} bytes, not the shortest form", start
            )
        return Head(major, arg, start)

    def expect(self, major: int, what: str) -> Head:
        h = self.head(what)
        if h.major != major:
            raise UnexpectedType(f"{what}: {h.kind}, want {_NAMES[major]}", h.offset)
        return h

    def byte_string(self, what: str, limit: int) -> bytes:
        h = self.expect(BYTES, what)
        self._check_size(h, what, limit)
        return bytes(self._take(h.arg, what))

    def text(self, what: str, limit: int) -> str:
        h = self.expect(TEXT, what)
        self._check_size(h, what, limit)
        return self._utf8(self._take(h.arg, what), what, h.offset)

    def array(self, what: str, limit: int) -> int:
        """The array's element count, checked against ``limit`` before any element is read."""
        h = self.expect(ARRAY, what)
        if h.arg > limit:
            raise CborLimitExceeded(f"{what}: {h.arg} entries, limit {limit}{self.note}", h.offset)
        return h.arg

    def map(self, what: str, limit: int) -> MapKeys:
        """Iterate a map's keys in canonical order; the caller reads (or skips) each value."""
        h = self.expect(MAP, what)
        if h.arg > limit:
            raise CborLimitExceeded(
                f"{what}: map of {h.arg} entries, limit {limit}{self.note}", h.offset
            )
        return MapKeys(self, h.arg, what)

    def skip(self, what: str, limits: SkipLimits, depth: int = 1) -> None:
        """Walk one value without building it; the same subset and caps apply."""
        if depth > limits.depth:
            raise CborLimitExceeded(f"{what}: nested deeper than {limits.depth} levels", self.pos)
        h = self.head(what)
        if h.major in (BYTES, TEXT):
            self._check_size(h, what, limits.size)
            raw = self._take(h.arg, what)
            if h.major == TEXT:
                self._utf8(raw, what, h.offset)
        elif h.major == ARRAY:
            if h.arg > limits.count:
                raise CborLimitExceeded(f"{what}: {h.arg} entries, limit {limits.count}", h.offset)
            for i in range(h.arg):
                self.skip(f"{what}[{i}]", limits, depth + 1)
        elif h.major == MAP:
            if h.arg > limits.count:
                raise CborLimitExceeded(
                    f"{what}: map of {h.arg} entries, limit {limits.count}", h.offset
                )
            for key in MapKeys(self, h.arg, what, limits.key_size):
                self.skip(f"{what}[{key!r}]", limits, depth + 1)

    def since(self, start: int) -> bytes:
        """The raw bytes read since offset ``start`` (e.g. an encoded key, for ordering)."""
        return bytes(self._data[start : self.pos])

    def finish(self) -> None:
        if self.remaining:
            raise TrailingBytes(
                f"{self._where}: {self.remaining} trailing bytes after the CBOR item", self.pos
            )

    def _check_size(self, h: Head, what: str, limit: int) -> None:
        if h.arg > limit:
            raise CborLimitExceeded(f"{what}: {h.arg} bytes, limit {limit}{self.note}", h.offset)

    @staticmethod
    def _utf8(raw: memoryview, what: str, offset: int) -> str:
        try:
            return str(raw, "utf-8")
        except UnicodeDecodeError:
            raise CborRejected(f"{what}: text string is not valid UTF-8", offset) from None


class MapKeys:
    """Yields a map's text keys, refusing non-text, oversized, duplicate or unordered keys."""

    def __init__(self, reader: Reader, count: int, what: str, key_size: int = 64) -> None:
        self._r = reader
        self._left = count
        self._what = what
        self._key_size = key_size
        self._previous: bytes | None = None

    def __iter__(self) -> MapKeys:
        return self

    def __next__(self) -> str:
        if not self._left:
            raise StopIteration
        self._left -= 1
        start = self._r.pos
        key = self._r.text(f"{self._what} key", self._key_size)
        encoded = self._r.since(start)
        if self._previous is not None:
            if encoded == self._previous:
                raise DuplicateKey(f"{self._what}: duplicate key {key!r}", start)
            if (len(encoded), encoded) < (len(self._previous), self._previous):
                raise NonCanonicalCbor(f"{self._what}: key {key!r} out of canonical order", start)
        self._previous = encoded
        return key
