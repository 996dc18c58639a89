"""Shared machinery of the real-data readers: locating a dataset, reading CSVs, decoding and resizing
images, patient-level splits, parallel decoding into the uint8 interface, and an on-disk cache.

Each reader scans its publisher's layout into `Record`s (file paths, class/finding targets, patient id,
split), then `assemble` decodes them in parallel into a MedicalDataset. The scan is cheap; decoding
100k images is not, so the decoded result is cached under medsec.paths.cache_root() keyed by the
reader, options, size, seed and the (path, size, mtime) of every file read.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import zlib
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from medsec.data.base import SPLITS, DatasetInfo, MedicalDataset, Split, cached_npz
from medsec.errors import DataError
from medsec.paths import cache_root

log = logging.getLogger("medsec.data.formats")

Fit = Literal["squash", "crop", "pad"]
FITS: tuple[str, ...] = ("squash", "crop", "pad")
CACHE_FORMAT = 1


# ----------------------------------------------------------------------------------------------- layout
def _subdirs(p: Path) -> list[Path]:
    try:
        return sorted(c for c in p.iterdir() if c.is_dir() and not c.name.startswith("."))
    except OSError:
        return []


def locate(root: Path, marker: Callable[[Path], bool], names: Sequence[str], what: str, expect: str) -> Path:
    """The dataset folder: `root` itself if `marker(root)` holds, else the first folder up to two levels
    below it that does (conventional `names` first, case-insensitive, then any other subfolder).

    So --data-root may point at the dataset itself, at the folder an archive unpacked into, or at a
    folder holding several datasets."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{what}: data root {root} is not a folder (expected {expect})")
    if marker(root):
        return root
    wanted = [n.lower() for n in names]

    def ordered(p: Path) -> list[Path]:
        kids = _subdirs(p)
        return sorted(kids, key=lambda c: (wanted.index(c.name.lower()) if c.name.lower() in wanted
                                           else len(wanted), c.name))

    level1 = ordered(root)
    for p in level1:
        if marker(p):
            return p
    for p in level1:
        for q in ordered(p):
            if marker(q):
                return q
    raise DataError(f"{what}: {root} does not hold the expected layout: {expect}")


def require_dir(path: Path, what: str, expect: str) -> Path:
    """`path` if it is a folder, else a DataError naming it and what it should contain."""
    if not path.is_dir():
        raise DataError(f"{what}: missing folder {path} (expected {expect})")
    return path


def read_csv(path: Path, required: Sequence[str], what: str) -> list[dict[str, str]]:
    """Rows of a CSV file as dicts; a clear error if the file or one of the `required` columns is missing."""
    if not path.is_file():
        raise DataError(f"{what}: missing file {path} (expected a CSV with columns {', '.join(required)})")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in required if c not in header]
            if missing:
                raise DataError(f"{what}: {path} lacks column(s) {', '.join(missing)} "
                                f"(found: {', '.join(header) or 'no header'})")
            rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{what}: cannot read {path}: {e}") from e
    return rows


def read_list(path: Path, what: str) -> list[str]:
    """First whitespace-separated token of each non-empty line (image names of a split list file)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{what}: cannot read split list {path}: {e}") from e
    return [ln.split()[0] for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def warn_skipped(what: str, n: int, reason: str, examples: Iterable[Any] = ()) -> None:
    """Log a warning counting skipped items (nothing is dropped silently)."""
    if n:
        ex = [str(e) for e in list(examples)[:3]]
        log.warning("%s: skipped %d %s%s", what, n, reason, f" (e.g. {', '.join(ex)})" if ex else "")


# ----------------------------------------------------------------------------------------------- images
def to_uint8(arr: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Linearly map [lo, hi] (default: the array's own min/max) to 0..255, clipping outside."""
    a = arr.astype(np.float32)
    lo = float(a.min()) if lo is None else lo
    hi = float(a.max()) if hi is None else hi
    if hi <= lo:
        return np.zeros(a.shape, np.uint8)
    return np.clip(np.rint((a - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)


def _fit_geometry(img: Image.Image, size: int, fit: str, resample: Image.Resampling) -> Image.Image:
    w, h = img.size
    if fit == "squash":
        return img.resize((size, size), resample) if (w, h) != (size, size) else img
    if fit == "crop":  # shorter side to `size`, then the central square
        s = size / min(w, h)
        nw, nh = max(size, round(w * s)), max(size, round(h * s))
        img = img.resize((nw, nh), resample) if (nw, nh) != (w, h) else img
        left, top = (nw - size) // 2, (nh - size) // 2
        return img.crop((left, top, left + size, top + size))
    if fit == "pad":  # longer side to `size`, centred on black
        s = size / max(w, h)
        nw, nh = max(1, round(w * s)), max(1, round(h * s))
        img = img.resize((nw, nh), resample) if (nw, nh) != (w, h) else img
        canvas = Image.new(img.mode, (size, size), 0)
        canvas.paste(img, ((size - nw) // 2, (size - nh) // 2))
        return canvas
    raise DataError(f"fit must be one of {', '.join(FITS)}, got {fit!r}")


def pil_to_mode(img: Image.Image, channels: int) -> Image.Image:
    """Grayscale ('L') for 1 channel, 'RGB' for 3. 16-bit and float images are min-max scaled to 8 bit
    first (Pillow's own conversion would clip them); RGBA/palette images are converted by Pillow."""
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        img = Image.fromarray(to_uint8(np.asarray(img)))
    return img.convert("L" if channels == 1 else "RGB")


def fit_image(img: Image.Image, size: int, channels: int, fit: str = "squash") -> np.ndarray:
    """An image as uint8 (C, size, size): converted to 1 or 3 channels, resized with Pillow's
    antialiased bilinear filter according to `fit`."""
    img = _fit_geometry(pil_to_mode(img, channels), size, fit, Image.Resampling.BILINEAR)
    a = np.asarray(img, dtype=np.uint8)
    return a[None] if a.ndim == 2 else np.ascontiguousarray(a.transpose(2, 0, 1))


def fit_mask(mask: np.ndarray, size: int, fit: str = "squash") -> np.ndarray:
    """A binary mask (any nonzero = lesion) as int64 (size, size): bilinear resize of the 0/255 mask,
    then threshold at half, which is smoother than nearest-neighbour on strong downsampling."""
    m = Image.fromarray(np.where(np.asarray(mask) > 0, 255, 0).astype(np.uint8))
    m = _fit_geometry(m, size, fit, Image.Resampling.BILINEAR)
    return (np.asarray(m) >= 128).astype(np.int64)


def open_image(path: Path, what: str, draft: int | None = None) -> Image.Image:
    """Open and fully decode an image file; a DataError naming it if it cannot be read.

    With `draft`, a JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) that still gives at
    least draft x draft pixels: much faster for large photographs, with a negligible difference
    after the final resize. The original (width, height) is kept in `img.info["original_size"]`."""
    try:
        with Image.open(path) as im:
            original = im.size
            if draft is not None and im.format == "JPEG":
                im.draft(im.mode, (draft, draft))
            im.load()
            out = im.copy() if im.mode != "P" else im.convert("RGBA")
    except FileNotFoundError as e:
        raise DataError(f"{what}: image {path} does not exist") from e
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(f"{what}: cannot read image {path}: {e}") from e
    out.info["original_size"] = original
    return out


# ----------------------------------------------------------------------------------------------- splits
def _rng(seed: int, salt: str) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(salt.encode())])


def group_split(groups: Sequence[str], fractions: Sequence[float], seed: int, salt: str) -> list[np.ndarray]:
    """Split item indices into len(fractions) parts so that all items of a group (patient) share a part.

    Groups are sorted, shuffled with a generator derived from `seed` and `salt`, and dealt out in
    proportion to `fractions` (of groups, not images). Each part with a positive fraction gets at least
    one group when there are enough groups. Deterministic given the seed."""
    fr = np.asarray(fractions, dtype=float)
    if (fr < 0).any() or fr.sum() <= 0:
        raise DataError(f"split fractions must be non-negative and not all zero, got {list(fractions)}")
    fr = fr / fr.sum()
    g = np.asarray([str(x) for x in groups])
    uniq = np.unique(g)
    perm = uniq[_rng(seed, salt).permutation(len(uniq))]
    counts = np.floor(fr * len(uniq)).astype(int)
    for i in np.argsort(-(fr * len(uniq) - counts)):  # largest remainders first
        if counts.sum() >= len(uniq):
            break
        counts[i] += 1
    positive = np.flatnonzero(fr > 0)
    if len(uniq) >= len(positive):
        for i in positive:
            while counts[i] == 0:
                j = int(np.argmax(counts))
                counts[j] -= 1
                counts[i] += 1
    bounds = np.concatenate([[0], np.cumsum(counts)])
    part_of = {grp: k for k in range(len(fr)) for grp in perm[bounds[k]:bounds[k + 1]]}
    labels = np.array([part_of[x] for x in g], dtype=int) if len(g) else np.zeros(0, int)
    return [np.flatnonzero(labels == k) for k in range(len(fr))]


def drop_overlap(keep_from: Sequence[str | None], other: set[str], what: str, split: str) -> np.ndarray:
    """Indices of items whose patient is not in `other`; the dropped ones are counted in the log."""
    mask = np.array([p is None or p not in other for p in keep_from], dtype=bool)
    warn_skipped(what, int((~mask).sum()), f"{split} images of patients who are also in the test split")
    return np.flatnonzero(mask)


# --------------------------------------------------------------------------------------------- assembly
@dataclass
class Record:
    """One image to decode: its files, split, patient, target (class index or finding vector; masks
    come from the decoder) and per-image extra values."""

    split: str
    files: tuple[Path, ...]
    target: Any = None
    patient: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # scalars, become Split.extra arrays
    meta: dict[str, Any] = field(default_factory=dict)  # anything else the decoder needs


# decode(record) -> (uint8 (C, S, S), mask int64 (S, S) or None)
Decoder = Callable[[Record], tuple[np.ndarray, np.ndarray | None]]


def _decode_all(records: Sequence[Record], decode: Decoder, workers: int
                ) -> Iterable[tuple[np.ndarray, np.ndarray | None]]:
    if workers <= 1 or len(records) < 8:
        yield from (decode(r) for r in records)
        return
    chunk = 512
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for i in range(0, len(records), chunk):
            yield from pool.map(decode, records[i:i + chunk])


def default_workers() -> int:
    """Decoding threads: Pillow and numpy release the GIL while decoding, so threads help."""
    return max(1, min(8, os.cpu_count() or 1))


def assemble(info: DatasetInfo, records: Sequence[Record], decode: Decoder, *, size: int,
             what: str, empty_hint: dict[str, str], workers: int | None = None) -> MedicalDataset:
    """Decode every record (in parallel) into the uint8 split arrays of a checked MedicalDataset.

    `empty_hint[split]` says where the split's images were expected, for the empty-split error."""
    by_split: dict[str, list[Record]] = {s: [] for s in SPLITS}
    for r in records:
        by_split[r.split].append(r)
    for s in SPLITS:
        if not by_split[s]:
            raise DataError(f"{what}: split {s!r} is empty: no usable images found "
                            f"({empty_hint.get(s, 'see the log for skipped files')})")
    n_workers = default_workers() if workers is None else int(workers)
    splits: dict[str, Split] = {}
    for s in SPLITS:
        recs = by_split[s]
        n = len(recs)
        pixels: np.ndarray | None = None
        masks: np.ndarray | None = None
        for i, (px, mask) in enumerate(_decode_all(recs, decode, n_workers)):
            if pixels is None:
                pixels = np.empty((n, *px.shape), np.uint8)
                if mask is not None:
                    masks = np.empty((n, size, size), np.int64)
            pixels[i] = px
            if masks is not None:
                if mask is None:
                    raise DataError(f"{what}: no mask decoded for {recs[i].files[0]}")
                masks[i] = mask
            if (i + 1) % 5000 == 0:
                log.info("%s: decoded %d/%d %s images", what, i + 1, n, s)
        assert pixels is not None
        if info.task == "segmentation":
            if masks is None:
                raise DataError(f"{what}: segmentation dataset without masks in split {s!r}")
            targets = masks
        elif info.task == "multilabel":
            targets = np.stack([np.asarray(r.target, np.float32) for r in recs]).astype(np.float32)
        else:
            targets = np.asarray([int(r.target) for r in recs], dtype=np.int64)
        pids = [r.patient for r in recs]
        patient_ids = None if all(p is None for p in pids) else np.asarray([str(p) for p in pids])
        keys = sorted({k for r in recs for k in r.extra})
        extra = {k: np.asarray([r.extra.get(k) for r in recs]) for k in keys}
        splits[s] = Split(pixels=pixels, targets=targets, patient_ids=patient_ids, extra=extra)
    ds = MedicalDataset(info=info, **splits)
    ds.check()
    log.info("%s: %s", what, ", ".join(f"{s} {len(splits[s])}" for s in SPLITS))
    return ds


def limit_records(records: Sequence[Record], max_images: int | None, seed: int) -> list[Record]:
    """At most `max_images` records per split, drawn with the seed (for quick runs on big datasets);
    the splits stay patient-disjoint because each is thinned on its own."""
    if max_images is None:
        return list(records)
    if int(max_images) < 1:
        raise DataError(f"max_images must be at least 1, got {max_images}")
    out: list[Record] = []
    for s in SPLITS:
        idx = [i for i, r in enumerate(records) if r.split == s]
        if len(idx) > max_images:
            idx = sorted(_rng(seed, f"limit-{s}").choice(idx, size=int(max_images), replace=False).tolist())
        out += [records[i] for i in idx]
    return out


def finish(info: DatasetInfo, folder: Path, records: Sequence[Record], decode: Decoder, *, size: int,
           seed: int, options: dict[str, Any], index_files: Sequence[Path], hints: dict[str, str],
           max_images: int | None, workers: int | None, cache: bool, cache_dir: str | Path | None
           ) -> MedicalDataset:
    """The common tail of every reader: thin to `max_images`, then decode (or read the cache)."""
    recs = limit_records(records, max_images, seed)
    files = [*index_files, *(f for r in recs for f in r.files)]
    opts = {**options, "max_images": max_images}
    return with_cache(info, folder, size, seed, opts, files,
                      lambda: assemble(info, recs, decode, size=size, what=info.name, empty_hint=hints,
                                       workers=workers), cache=cache, cache_dir=cache_dir)


# ------------------------------------------------------------------------------------------------ cache
def fingerprint(files: Iterable[Path]) -> str:
    """A digest of the (path, size, mtime) of `files`: changes when any file is added, removed or edited."""
    h = hashlib.sha256()
    for p in sorted(str(f) for f in files):
        try:
            st = os.stat(p)
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{p}\0missing\n".encode())
    return h.hexdigest()


def _cache_path(name: str, size: int, key: dict[str, Any], cache_dir: str | Path | None) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return cache_root(cache_dir) / "data" / f"real-{name}-{size}px-{digest}.npz"


def with_cache(info: DatasetInfo, root: Path, size: int, seed: int, options: dict[str, Any],
               files: Iterable[Path], build: Callable[[], MedicalDataset], *, cache: bool,
               cache_dir: str | Path | None) -> MedicalDataset:
    """`build()`, or its cached result when the same reader, options and files were decoded before.
    A corrupted cache entry is rebuilt, never trusted."""
    if not cache:
        return build()
    key = {"format": CACHE_FORMAT, "name": info.name, "root": str(Path(root).resolve()), "size": size,
           "seed": seed, "options": options, "files": fingerprint(files)}
    return cached_npz(_cache_path(info.name, size, key, cache_dir), info, build, "decoding the images again")
