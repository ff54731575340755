"""The records of a torch zip checkpoint, read the way torch's own zip reader finds them.

torch reads zip checkpoints with miniz (``torch._C.PyTorchFileReader``), which takes the end
record at the end of the file and the central directory at the offset that record names.
Python's ``zipfile`` finds the directory another way (end record position minus directory
size), so a crafted file can show the two readers different records. :func:`zip_records`
follows miniz's rule, accepts only files where the rules agree (no comment, no data before the
archive, no gaps around the directory), and returns each record's compression method, sizes
and data offset, without reading or inflating any record.
"""
import struct
from typing import List, NamedTuple

_EOCD = struct.Struct('<IHHHHIIH')  # end of central directory, 22 bytes
_EOCD64_LOCATOR = struct.Struct('<IIQI')  # 20 bytes
_EOCD64 = struct.Struct('<IQHHIIQQQQ')  # 56 bytes
_CENTRAL = struct.Struct('<IHHHHHHIIIHHHHHII')  # 46 bytes
_LOCAL = struct.Struct('<IHHHHHIIIHH')  # 30 bytes
_U32, _U16 = 0xFFFFFFFF, 0xFFFF


class ZipRecord(NamedTuple):
    """One record: ``name`` as stored, compression ``method`` (0: stored), ``compressed`` and
    ``size`` (uncompressed) in bytes, and ``offset`` of its data in the file."""
    name: str
    method: int
    compressed: int
    size: int
    offset: int


class BadZip(ValueError):
    """The file is not a zip archive that torch's reader and a strict reader see alike."""


def _zip64_extra(extra: bytes, wanted: List[int]) -> List[int]:
    """The zip64 extended-information field's values for the header fields that hold
    0xFFFFFFFF (``wanted``, in the order the format stores them)."""
    pos = 0
    while pos + 4 <= len(extra):
        tag, length = struct.unpack_from('<HH', extra, pos)
        if tag == 1:
            if length < 8 * len(wanted):
                raise BadZip('a zip64 extra field shorter than its header needs')
            return list(struct.unpack_from(f'<{len(wanted)}Q', extra, pos + 4))
        pos += 4 + length
    raise BadZip('a record with 0xFFFFFFFF sizes but no zip64 extra field')


def zip_records(f, file_size: int) -> List[ZipRecord]:
    """The records of the zip archive in the binary file ``f`` (``file_size`` bytes).

    Raises:
        BadZip: no end record at the very end, a directory that is not exactly where the end
            record says and directly before it, an entry or local header that does not parse,
            or names that differ between the directory and the local headers.
    """
    if file_size < _EOCD.size:
        raise BadZip('shorter than a zip end record')
    f.seek(file_size - _EOCD.size)
    sig, disk, cd_disk, _, count, cd_size, cd_offset, comment = _EOCD.unpack(f.read(_EOCD.size))
    if sig != 0x06054B50 or comment or disk or cd_disk:
        raise BadZip('no zip end record (without a comment) at the end of the file')
    directory_end = file_size - _EOCD.size
    # a zip64 locator directly before the end record (torch always writes one) takes over,
    # in miniz as in Python's zipfile
    start = directory_end - _EOCD64_LOCATOR.size
    locator = b''
    if start >= 0:
        f.seek(start)
        locator = f.read(_EOCD64_LOCATOR.size)
    if locator[:4] == b'PK\x06\x07':
        _, _, eocd64, _ = _EOCD64_LOCATOR.unpack(locator)
        if eocd64 + _EOCD64.size != start:
            raise BadZip('a zip64 end record that is not directly before its locator')
        f.seek(eocd64)
        fields = _EOCD64.unpack(f.read(_EOCD64.size))
        if fields[0] != 0x06064B50:
            raise BadZip('no zip64 end record where its locator points')
        count, cd_size, cd_offset = fields[7], fields[8], fields[9]
        directory_end = eocd64
    elif _U32 in (cd_size, cd_offset) or count == _U16:
        raise BadZip('zip64 sizes without a zip64 end record')
    if cd_offset + cd_size != directory_end:  # Python's zipfile and miniz would differ
        raise BadZip(f'the central directory ({cd_size} bytes at {cd_offset}) does not end '
                     f'where the end record begins ({directory_end})')
    f.seek(cd_offset)
    directory = f.read(cd_size)
    records, pos = [], 0
    for _ in range(count):
        if pos + _CENTRAL.size > len(directory):
            raise BadZip('the central directory ends inside an entry')
        (sig, _, _, flags, method, _, _, _, compressed, size, name_len, extra_len, comment_len,
         _, _, _, header) = _CENTRAL.unpack_from(directory, pos)
        if sig != 0x02014B50 or flags & 1:
            raise BadZip('a central directory entry that does not parse (or is encrypted)')
        name = directory[pos + 46:pos + 46 + name_len]
        extra = directory[pos + 46 + name_len:pos + 46 + name_len + extra_len]
        wanted = [v for v in (size, compressed, header) if v == _U32]
        if wanted:
            values = iter(_zip64_extra(extra, wanted))
            size = next(values) if size == _U32 else size
            compressed = next(values) if compressed == _U32 else compressed
            header = next(values) if header == _U32 else header
        pos += 46 + name_len + extra_len + comment_len
        f.seek(header)
        local = f.read(_LOCAL.size)
        if len(local) < _LOCAL.size:
            raise BadZip('a local header beyond the end of the file')
        sig, *_, local_name_len, local_extra_len = _LOCAL.unpack(local)
        if sig != 0x04034B50 or f.read(local_name_len) != name:
            raise BadZip(f'the local header of {name[:80]!r} does not match its directory entry')
        offset = header + _LOCAL.size + local_name_len + local_extra_len
        records.append(ZipRecord(name.decode('utf-8', 'replace'), method, compressed, size,
                                 offset))
    if pos != len(directory):
        raise BadZip('the central directory holds more than its entries')
    return records
