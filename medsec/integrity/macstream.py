"""The byte stream a DICOM digital signature's MAC is computed over, exactly as DCMTK's dcmsign builds it.

PS3.15 C.1 and DCMTK 3.6.7 (checked byte for byte against `dcmsign --dump` in the tests):
- the listed elements of the signed data set, in tag order, each in explicit VR little endian as in a
  file: tag, VR, 2- or 4-byte length, even-padded value (taken verbatim from the file);
- a sequence: tag + "SQ" + 00 00 with no length; each item as FE FF 00 E0 with no length followed by
  its signable elements (recursively), no item delimiter; after the last item FE FF DD E0, no length;
- encapsulated Pixel Data like a sequence whose items are the fragments (Basic Offset Table included),
  each as FE FF 00 E0 + raw fragment bytes, no length, then FE FF DD E0;
- then, from the signature item: MAC ID Number, Digital Signature UID, Digital Signature DateTime,
  Certificate Type, and the Digital Signature Purpose Code Sequence when present.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable

from medsec.integrity.rawdicom import Element, Item, header

ITEM_NO_LEN = struct.pack("<HH", 0xFFFE, 0xE000)
SEQ_END_NO_LEN = struct.pack("<HH", 0xFFFE, 0xE0DD)

MAC_PARAMETERS_SEQ = 0x4FFE0001
DIGITAL_SIGNATURES_SEQ = 0xFFFAFFFA
DATASET_TRAILING_PADDING = 0xFFFCFFFC
MAC_ID = 0x04000005
MAC_TS = 0x04000010
MAC_ALGORITHM = 0x04000015
DATA_ELEMENTS_SIGNED = 0x04000020
SIGNATURE_UID = 0x04000100
SIGNATURE_DATETIME = 0x04000105
CERTIFICATE_TYPE = 0x04000110
CERTIFICATE_OF_SIGNER = 0x04000115
SIGNATURE = 0x04000120
TIMESTAMP_TYPE = 0x04000305
TIMESTAMP = 0x04000310
PURPOSE_CODE_SEQ = 0x04000401
SIGNATURE_TRAILER_TAGS = (MAC_ID, SIGNATURE_UID, SIGNATURE_DATETIME, CERTIFICATE_TYPE, PURPOSE_CODE_SEQ)

# DICOM MAC Algorithm defined terms -> hashlib names
MAC_ALGORITHMS: dict[str, str] = {
    "RIPEMD160": "ripemd160",
    "MD5": "md5",
    "SHA1": "sha1",
    "SHA256": "sha256",
    "SHA384": "sha384",
    "SHA512": "sha512",
}


def mac_available(name: str) -> bool:
    """Whether the local hashlib/OpenSSL offers the DICOM MAC algorithm `name` (RIPEMD160 may be absent)."""
    try:
        hashlib.new(MAC_ALGORITHMS[name])
    except (KeyError, ValueError):
        return False
    return True


def contains_un(el: Element) -> bool:
    """True for a UN element or a sequence with UN anywhere inside (such a sequence is not signable)."""
    if el.vr == b"UN" or el.raw is not None:
        return True
    if el.items is not None:
        return any(contains_un(e) for it in el.items for e in it.elements)
    return False


def is_signable_tag(tag: int) -> bool:
    """PS3.15 C.1: group lengths, Length to End, groups below 0008 (file meta), group FFFA, the MAC
    Parameters Sequence, trailing padding and item/sequence delimiters are never signed."""
    group, elem = tag >> 16, tag & 0xFFFF
    if group < 0x0008 or elem == 0 or tag == 0x00080001:
        return False
    return not (group in (0xFFFA, 0xFFFE) or tag in (MAC_PARAMETERS_SEQ, DATASET_TRAILING_PADDING))


def is_signable(el: Element) -> bool:
    """PS3.15 C.1 / DCMTK: which elements a signature may cover (UN and sequences holding UN excluded)."""
    return is_signable_tag(el.tag) and not contains_un(el)


def encode_for_mac(el: Element) -> bytes:
    """One element as it enters the MAC stream."""
    tag = struct.pack("<HH", el.tag >> 16, el.tag & 0xFFFF)
    if el.items is not None:
        out = [tag, b"SQ\0\0"]
        for it in el.items:
            out.append(ITEM_NO_LEN)
            out.append(encode_item_for_mac(it))
        out.append(SEQ_END_NO_LEN)
        return b"".join(out)
    if el.fragments is not None:
        out = [tag, el.vr, b"\0\0"]
        for f in el.fragments:
            out.append(ITEM_NO_LEN)
            out.append(f.data)
        out.append(SEQ_END_NO_LEN)
        return b"".join(out)
    value = el.value if len(el.value) % 2 == 0 else el.value + b"\0"
    return header(el.tag, el.vr, len(value)) + value


def encode_item_for_mac(it: Item) -> bytes:
    """The signable elements of an item (nested signatures and group lengths left out)."""
    return b"".join(encode_for_mac(e) for e in it.elements if is_signable(e))


def mac_stream(dataset: Item, tags: Iterable[int], signature_item: Item) -> bytes:
    """The bytes hashed for one signature: the listed elements of `dataset` (tag order) then the
    signature item's trailer elements. Tags listed but absent are skipped (the verifier reports them)."""
    wanted = set(tags)
    parts = [encode_for_mac(e) for e in dataset.elements if e.tag in wanted]
    for t in SIGNATURE_TRAILER_TAGS:
        e = signature_item.find(t)
        if e is not None:
            parts.append(encode_for_mac(e))
    return b"".join(parts)
