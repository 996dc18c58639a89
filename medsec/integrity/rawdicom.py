"""A small raw DICOM reader/writer that keeps every element's exact bytes and file offsets.

Signatures are computed over raw element bytes, so this reader walks an explicit VR little endian data
set itself instead of going through pydicom's value conversion: each element keeps its header fields,
its value bytes and where they lie in the file (the fuzz tests and the tamper demo use the offsets).
Sequences keep their items, encapsulated Pixel Data keeps its fragments (Basic Offset Table first).
Files in other transfer syntaxes (implicit VR, big endian, deflated) are first re-encoded to explicit
VR little endian with pydicom, as DCMTK does when it builds the MAC stream.

The writer re-serialises the tree: leaf elements are written from their original bytes; only the
lengths of sequences/items that hold new elements change (undefined lengths stay undefined).
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass, field

from medsec.integrity.errors import UnreadableFileError

EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_BE = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
UNDEFINED = 0xFFFFFFFF
LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
ITEM = 0xFFFEE000
ITEM_DELIM = 0xFFFEE00D
SEQ_DELIM = 0xFFFEE0DD
PIXEL_DATA = 0x7FE00010


def tag_str(tag: int) -> str:
    """'(gggg,eeee)' for a 32-bit tag."""
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


@dataclass
class Fragment:
    """One item of encapsulated Pixel Data (the first is the Basic Offset Table)."""

    offset: int  # of the item tag
    value_offset: int
    data: bytes


@dataclass
class Item:
    """A sequence item: its elements and where it lies."""

    offset: int
    value_offset: int
    undefined_length: bool
    elements: list[Element] = field(default_factory=list)
    end: int = 0

    def find(self, tag: int) -> Element | None:
        """The element with `tag` in this item, or None."""
        for e in self.elements:
            if e.tag == tag:
                return e
        return None


@dataclass
class Element:
    """One data element with its raw bytes. `items` is set for SQ, `fragments` for encapsulated pixels."""

    tag: int
    vr: bytes
    offset: int
    value_offset: int
    length: int
    value: bytes = b""
    items: list[Item] | None = None
    fragments: list[Fragment] | None = None
    end: int = 0
    implicit: bool = False
    raw: bytes | None = None  # whole element, kept verbatim (UN with undefined length)

    @property
    def is_sequence(self) -> bool:
        return self.items is not None

    @property
    def undefined_length(self) -> bool:
        return self.length == UNDEFINED


@dataclass
class DicomFile:
    """A parsed file: the raw file meta bytes (preamble included), the data set, the transfer syntax."""

    meta_bytes: bytes
    dataset: Item
    transfer_syntax: str
    reencoded: bool  # True when the file was converted to explicit VR LE before parsing
    source: str

    @property
    def elements(self) -> list[Element]:
        return self.dataset.elements

    def find(self, tag: int) -> Element | None:
        return self.dataset.find(tag)

    def text(self, tag: int) -> str | None:
        """A top-level string element's value, stripped, or None."""
        e = self.find(tag)
        if e is None or e.is_sequence:
            return None
        return e.value.decode("ascii", "replace").rstrip("\x00 ")


def _dictionary_vr(tag: int) -> bytes:
    """VR from pydicom's dictionary for implicit-VR parsing (UN when unknown, first of ambiguous VRs)."""
    from pydicom.datadict import dictionary_VR

    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return b"UN"
    return vr.split(" ")[0][:2].encode()


class _Parser:
    def __init__(self, buf: bytes, source: str) -> None:
        self.buf = buf
        self.source = source

    def fail(self, msg: str, pos: int) -> UnreadableFileError:
        return UnreadableFileError(f"{self.source}: {msg} at byte {pos}")

    def u16(self, pos: int) -> int:
        if pos + 2 > len(self.buf):
            raise self.fail("file ends inside an element header (truncated)", pos)
        return int(struct.unpack_from("<H", self.buf, pos)[0])

    def u32(self, pos: int) -> int:
        if pos + 4 > len(self.buf):
            raise self.fail("file ends inside an element header (truncated)", pos)
        return int(struct.unpack_from("<I", self.buf, pos)[0])

    def tag(self, pos: int) -> int:
        return (self.u16(pos) << 16) | self.u16(pos + 2)

    def dataset(self, pos: int, end: int | None, implicit: bool, depth: int = 0) -> tuple[list[Element], int]:
        """Parse elements from pos until `end` (defined length) or an item delimiter (end None)."""
        if depth > 64:
            raise self.fail("sequences nested too deep", pos)
        elems: list[Element] = []
        limit = len(self.buf) if end is None else end
        while pos < limit:
            t = self.tag(pos)
            if t == ITEM_DELIM:
                if end is not None:
                    raise self.fail("item delimiter inside a defined-length item", pos)
                return elems, pos + 8
            if t in (ITEM, SEQ_DELIM):
                raise self.fail(f"unexpected {tag_str(t)} in a data set", pos)
            el = self.element(pos, implicit, depth)
            if elems and el.tag <= elems[-1].tag:
                raise self.fail(f"element {tag_str(el.tag)} out of order", pos)
            elems.append(el)
            pos = el.end
        if end is None:
            if limit != len(self.buf):
                raise self.fail("item without delimiter", pos)
            return elems, pos
        if pos != end:
            raise self.fail("element runs past the end of its item", pos)
        return elems, pos

    def element(self, pos: int, implicit: bool, depth: int) -> Element:
        t = self.tag(pos)
        if implicit:
            vr = _dictionary_vr(t)
            length = self.u32(pos + 4)
            voff = pos + 8
            if length == UNDEFINED and vr != b"SQ" and t != PIXEL_DATA:
                vr = b"SQ"
        else:
            if pos + 6 > len(self.buf):
                raise self.fail("file ends inside an element header (truncated)", pos)
            vr = self.buf[pos + 4 : pos + 6]
            if not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
                raise self.fail(f"element {tag_str(t)} has no valid VR ({vr!r})", pos)
            if vr in LONG_VRS:
                length = self.u32(pos + 8)
                voff = pos + 12
            else:
                length = self.u16(pos + 6)
                voff = pos + 8
        el = Element(t, vr, pos, voff, length, implicit=implicit)
        if vr == b"UN" and length == UNDEFINED and not implicit:
            # UN with undefined length holds an implicit-VR little endian sequence (PS3.5 6.2.2): walk it
            # to find its end, keep it verbatim (UN is never signed, so its structure is not needed)
            _, el.end = self.sequence(voff, length, True, depth)
            el.raw = self.buf[pos : el.end]
        elif vr == b"SQ":
            el.items, el.end = self.sequence(voff, length, implicit, depth)
        elif length == UNDEFINED:
            if t != PIXEL_DATA:
                raise self.fail(f"element {tag_str(t)} has undefined length but is not a sequence", pos)
            el.fragments, el.end = self.fragments(voff)
        else:
            if voff + length > len(self.buf):
                raise self.fail(f"value of {tag_str(t)} runs past the end of the file (truncated)", pos)
            el.value = self.buf[voff : voff + length]
            el.end = voff + length
        return el

    def sequence(self, pos: int, length: int, implicit: bool, depth: int) -> tuple[list[Item], int]:
        items: list[Item] = []
        end = None if length == UNDEFINED else pos + length
        if end is not None and end > len(self.buf):
            raise self.fail("sequence runs past the end of the file (truncated)", pos)
        while True:
            if end is not None and pos >= end:
                if pos != end:
                    raise self.fail("item runs past the end of its sequence", pos)
                return items, pos
            t = self.tag(pos)
            if t == SEQ_DELIM:
                if end is not None:
                    raise self.fail("sequence delimiter inside a defined-length sequence", pos)
                return items, pos + 8
            if t != ITEM:
                raise self.fail(f"expected an item tag, found {tag_str(t)}", pos)
            ilen = self.u32(pos + 4)
            it = Item(pos, pos + 8, ilen == UNDEFINED)
            if ilen == UNDEFINED:
                it.elements, it.end = self.dataset(pos + 8, None, implicit, depth + 1)
            else:
                if pos + 8 + ilen > len(self.buf):
                    raise self.fail("item runs past the end of the file (truncated)", pos)
                it.elements, it.end = self.dataset(pos + 8, pos + 8 + ilen, implicit, depth + 1)
            items.append(it)
            pos = it.end

    def fragments(self, pos: int) -> tuple[list[Fragment], int]:
        frags: list[Fragment] = []
        while True:
            t = self.tag(pos)
            length = self.u32(pos + 4)
            if t == SEQ_DELIM:
                return frags, pos + 8
            if t != ITEM or length == UNDEFINED:
                raise self.fail(f"bad fragment {tag_str(t)} in encapsulated Pixel Data", pos)
            if pos + 8 + length > len(self.buf):
                raise self.fail("pixel data fragment runs past the end of the file (truncated)", pos)
            frags.append(Fragment(pos, pos + 8, self.buf[pos + 8 : pos + 8 + length]))
            pos += 8 + length


def split_meta(buf: bytes, source: str) -> tuple[int, str]:
    """Return (offset where the data set starts, transfer syntax UID) of a Part-10 file."""
    if len(buf) < 132 or buf[128:132] != b"DICM":
        raise UnreadableFileError(f"{source}: not a DICOM file (no 'DICM' marker after the 128-byte preamble)")
    p = _Parser(buf, source)
    pos = 132
    ts = None
    while pos + 8 <= len(buf) and p.u16(pos) == 0x0002:
        el = p.element(pos, False, 0)
        if el.tag == 0x00020010:
            ts = el.value.decode("ascii", "replace").rstrip("\x00 ")
        pos = el.end
    if ts is None:
        raise UnreadableFileError(f"{source}: file meta information has no Transfer Syntax UID (0002,0010)")
    return pos, ts


def _reencode(buf: bytes, source: str) -> bytes:
    """Re-encode a non-explicit-VR-LE file to explicit VR little endian with pydicom."""
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(buf))
        ds.file_meta.TransferSyntaxUID = pydicom.uid.UID(EXPLICIT_VR_LE)
        out = io.BytesIO()
        ds.save_as(out, implicit_vr=False, little_endian=True, enforce_file_format=True)
    except Exception as e:  # pydicom raises many types for bad files
        raise UnreadableFileError(f"{source}: cannot re-encode to explicit VR little endian ({e})") from e
    return out.getvalue()


def parse(buf: bytes, source: str = "<bytes>") -> DicomFile:
    """Parse a Part-10 DICOM file into a raw tree (explicit VR LE, re-encoding other syntaxes first)."""
    start, ts = split_meta(buf, source)
    reencoded = False
    if ts in (IMPLICIT_VR_LE, EXPLICIT_VR_BE, DEFLATED):
        buf = _reencode(buf, source)
        start, _ = split_meta(buf, source)
        reencoded = True
    p = _Parser(buf, source)
    try:
        elems, _ = p.dataset(start, len(buf), False)
    except RecursionError as e:
        raise UnreadableFileError(f"{source}: sequences nested too deep") from e
    ds = Item(start, start, False, elems, len(buf))
    return DicomFile(buf[:start], ds, ts, reencoded, source)


def read(path: str) -> DicomFile:
    """Read and parse a file; UnreadableFileError when it cannot be read or is not DICOM."""
    try:
        with open(path, "rb") as f:
            buf = f.read()
    except OSError as e:
        raise UnreadableFileError(f"cannot read {path}: {e.strerror or e}") from e
    return parse(buf, str(path))


# ---------------------------------------------------------------- writing

def header(tag: int, vr: bytes, length: int) -> bytes:
    """An explicit VR little endian element header."""
    t = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    if vr in LONG_VRS:
        return t + vr + b"\0\0" + struct.pack("<I", length)
    return t + vr + struct.pack("<H", length)


def make_element(tag: int, vr: str, value: bytes) -> Element:
    """A new leaf element (value padded to even length: NUL for UI/OB, space for text VRs)."""
    if len(value) % 2:
        value += b"\0" if vr in ("UI", "OB", "OW", "UN") else b" "
    return Element(tag, vr.encode(), 0, 0, len(value), value=value)


def make_sequence(tag: int, items: list[list[Element]]) -> Element:
    """A new sequence element (defined lengths)."""
    return Element(tag, b"SQ", 0, 0, 0, items=[Item(0, 0, False, sorted(els, key=lambda e: e.tag)) for els in items])


def encode_element(el: Element) -> bytes:
    """Serialise an element in explicit VR LE; leaf values are written from their original bytes."""
    if el.raw is not None:
        return el.raw
    if el.items is not None:
        body = b"".join(encode_item(it) for it in el.items)
        if el.undefined_length:
            return header(el.tag, b"SQ", UNDEFINED) + body + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
        return header(el.tag, b"SQ", len(body)) + body
    if el.fragments is not None:
        body = b"".join(struct.pack("<HHI", 0xFFFE, 0xE000, len(f.data)) + f.data for f in el.fragments)
        return header(el.tag, el.vr, UNDEFINED) + body + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    return header(el.tag, el.vr, len(el.value)) + el.value


def encode_item(it: Item) -> bytes:
    body = b"".join(encode_element(e) for e in it.elements)
    if it.undefined_length:
        return struct.pack("<HHI", 0xFFFE, 0xE000, UNDEFINED) + body + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
    return struct.pack("<HHI", 0xFFFE, 0xE000, len(body)) + body


def serialize(df: DicomFile) -> bytes:
    """The whole file: the original meta bytes followed by the re-serialised data set."""
    return df.meta_bytes + b"".join(encode_element(e) for e in df.dataset.elements)


def insert_element(dataset: Item, el: Element) -> None:
    """Insert `el` into `dataset` in tag order (replacing an element with the same tag)."""
    for i, e in enumerate(dataset.elements):
        if e.tag == el.tag:
            dataset.elements[i] = el
            return
        if e.tag > el.tag:
            dataset.elements.insert(i, el)
            return
    dataset.elements.append(el)
