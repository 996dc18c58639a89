"""A small MetaImage (.mhd + .raw) reader in numpy: headers, world <-> voxel, lazy slices.

Enough of the MetaIO format for LUNA16 and similar CT exports: NDims, DimSize, ElementType,
ElementSpacing, Offset (alias Position/Origin), TransformMatrix (alias Rotation/Orientation),
BinaryDataByteOrderMSB, CompressedData (zlib), HeaderSize and ElementDataFile (a file name or LOCAL).
Voxel (i, j, k) -> world: Offset + sum_a index_a * spacing_a * d_a, where d_a is row a of the
TransformMatrix as written (ITK's MetaImageIO reads each row as the direction of one image axis).
The array is indexed [k, j, i] (x varies fastest on disk).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medsec.errors import DataError

ELEMENT_TYPES: dict[str, str] = {
    "MET_CHAR": "i1", "MET_UCHAR": "u1", "MET_SHORT": "i2", "MET_USHORT": "u2", "MET_INT": "i4",
    "MET_UINT": "u4", "MET_LONG": "i4", "MET_ULONG": "u4", "MET_LONG_LONG": "i8", "MET_ULONG_LONG": "u8",
    "MET_FLOAT": "f4", "MET_DOUBLE": "f8",
}


@dataclass(frozen=True)
class MetaImage:
    """A parsed .mhd header: where the voxels are and how they map to world (mm) coordinates."""

    path: Path
    dims: tuple[int, ...]  # (nx, ny, nz)
    spacing: np.ndarray  # (3,) mm per voxel along x, y, z
    offset: np.ndarray  # (3,) world position of voxel (0, 0, 0)
    direction: np.ndarray  # (3, 3), row a = world direction of axis a
    dtype: np.dtype
    data_file: Path
    data_offset: int
    compressed: bool

    def voxel_to_world(self, ijk: np.ndarray) -> np.ndarray:
        """World (x, y, z) mm of voxel coordinates (i, j, k)."""
        return self.offset + (np.asarray(ijk, float) * self.spacing) @ self.direction

    def world_to_voxel(self, xyz: np.ndarray) -> np.ndarray:
        """Continuous voxel coordinates (i, j, k) of world (x, y, z) mm."""
        scaled = np.linalg.solve(self.direction.T, np.asarray(xyz, float) - self.offset)
        return scaled / self.spacing

    def volume(self) -> np.ndarray:
        """The voxel array [k, j, i]: a read-only memory map when uncompressed (slices load lazily)."""
        shape = tuple(reversed(self.dims))
        try:
            if not self.compressed:
                return np.memmap(self.data_file, dtype=self.dtype, mode="r", offset=self.data_offset,
                                 shape=shape)
            raw = self.data_file.read_bytes()[self.data_offset:]
            data = np.frombuffer(zlib.decompress(raw), dtype=self.dtype)
            return data.reshape(shape)
        except (OSError, ValueError, zlib.error) as e:
            raise DataError(f"cannot read voxel data {self.data_file} for {self.path}: {e} "
                            f"(expected {int(np.prod(self.dims))} {self.dtype} values)") from e


def _floats(v: str, n: int, key: str, path: Path) -> np.ndarray:
    try:
        a = np.array([float(x) for x in v.split()], float)
    except ValueError as e:
        raise DataError(f"{path}: {key} = {v!r} is not numeric") from e
    if a.size != n:
        raise DataError(f"{path}: {key} has {a.size} values, expected {n}")
    return a


def read_header(path: Path) -> MetaImage:
    """Parse a .mhd (or .mha) header; a DataError naming the file for anything it cannot use."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read MetaImage header {path}: {e}") from e
    fields: dict[str, str] = {}
    pos = 0
    while pos < len(raw):
        end = raw.find(b"\n", pos)
        end = len(raw) if end < 0 else end
        line = raw[pos:end].decode("latin-1").strip()
        pos = end + 1
        if not line or "=" not in line:
            continue
        k, v = (s.strip() for s in line.split("=", 1))
        fields[k] = v
        if k == "ElementDataFile":
            break
    if "ElementDataFile" not in fields or "DimSize" not in fields or "ElementType" not in fields:
        raise DataError(f"{path} is not a MetaImage header (expected DimSize, ElementType, ElementDataFile)")
    ndims = int(fields.get("NDims", len(fields["DimSize"].split())))
    if ndims != 3:
        raise DataError(f"{path}: NDims = {ndims}, expected a 3-D volume")
    dims = tuple(int(x) for x in _floats(fields["DimSize"], 3, "DimSize", path))
    etype = fields["ElementType"].upper()
    if etype not in ELEMENT_TYPES:
        raise DataError(f"{path}: unsupported ElementType {etype} (expected one of {', '.join(ELEMENT_TYPES)})")
    if int(fields.get("ElementNumberOfChannels", "1")) != 1:
        raise DataError(f"{path}: only single-channel volumes are supported")
    msb = fields.get("BinaryDataByteOrderMSB", fields.get("ElementByteOrderMSB", "False")).lower() == "true"
    dtype = np.dtype(ELEMENT_TYPES[etype]).newbyteorder(">" if msb else "<")
    spacing = _floats(fields.get("ElementSpacing", fields.get("ElementSize", "1 1 1")), 3, "ElementSpacing", path)
    off = fields.get("Offset", fields.get("Position", fields.get("Origin", "0 0 0")))
    offset = _floats(off, 3, "Offset", path)
    tm = fields.get("TransformMatrix", fields.get("Rotation", fields.get("Orientation", "1 0 0 0 1 0 0 0 1")))
    direction = _floats(tm, 9, "TransformMatrix", path).reshape(3, 3)
    if abs(np.linalg.det(direction)) < 1e-6:
        raise DataError(f"{path}: TransformMatrix {tm!r} is singular")
    compressed = fields.get("CompressedData", "False").lower() == "true"
    data_name = fields["ElementDataFile"]
    if data_name.upper() == "LOCAL":
        data_file, data_offset = path, pos
    elif data_name.upper().startswith("LIST") or "%" in data_name:
        raise DataError(f"{path}: ElementDataFile {data_name!r} (file lists) is not supported")
    else:
        data_file = path.parent / data_name
        data_offset = int(fields.get("HeaderSize", "0"))
        if data_offset < 0:  # -1: the data are the last bytes of the file
            data_offset = max(0, data_file.stat().st_size - int(np.prod(dims)) * dtype.itemsize) \
                if data_file.exists() else 0
    if not data_file.is_file():
        raise DataError(f"{path}: its ElementDataFile {data_file} does not exist")
    if not compressed:
        need = data_offset + int(np.prod(dims)) * dtype.itemsize
        have = data_file.stat().st_size
        if have < need:
            raise DataError(f"{data_file}: {have} bytes, expected at least {need} for DimSize "
                            f"{' '.join(map(str, dims))} of {etype}")
    return MetaImage(path=path, dims=dims, spacing=spacing, offset=offset, direction=direction, dtype=dtype,
                     data_file=data_file, data_offset=data_offset, compressed=compressed)


def write_metaimage(path: Path, volume: np.ndarray, spacing: tuple[float, float, float],
                    offset: tuple[float, float, float],
                    direction: tuple[float, ...] = (1, 0, 0, 0, 1, 0, 0, 0, 1)) -> Path:
    """Write `volume` [k, j, i] as path (.mhd) + path.with_suffix('.raw'), LUNA16 style (MET_SHORT for int16)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    inv = {np.dtype(v).str[1:]: k for k, v in ELEMENT_TYPES.items() if k not in ("MET_LONG", "MET_ULONG")}
    vol = np.ascontiguousarray(volume)
    etype = inv[vol.dtype.newbyteorder("<").str[1:]]
    raw = path.with_suffix(".raw")
    vol.astype(vol.dtype.newbyteorder("<")).tofile(raw)
    nz, ny, nx = vol.shape
    text = "\n".join([
        "ObjectType = Image", "NDims = 3", "BinaryData = True", "BinaryDataByteOrderMSB = False",
        "CompressedData = False", f"TransformMatrix = {' '.join(str(float(x)).rstrip('0').rstrip('.') for x in direction)}",
        f"Offset = {' '.join(repr(float(x)) for x in offset)}", "CenterOfRotation = 0 0 0",
        "AnatomicalOrientation = RAI", f"ElementSpacing = {' '.join(repr(float(x)) for x in spacing)}",
        f"DimSize = {nx} {ny} {nz}", f"ElementType = {etype}", f"ElementDataFile = {raw.name}", "",
    ])
    path.write_text(text, encoding="latin-1")
    return path
