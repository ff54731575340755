"""Weights-only checkpoint loading that reads mmengine's checkpoints, from files and URLs.

For mmengine 0.10.x (checked on 0.10.7) on torch >= 2.6: mmengine calls ``torch.load``
without ``weights_only``, whose default became True in torch 2.6, so every checkpoint that
mmengine's Runner writes fails to load (its MessageHub state holds ``HistoryBuffer`` objects,
NumPy arrays, dtypes and scalars, and ``getattr(HistoryBuffer, 'min')``-style references).
Its URL schemes (``http(s)://``, ``torchvision://``, ``open-mmlab://``, ``mmcls://``) go
through ``torch.hub`` with full pickle. :func:`apply` registers :func:`load_from_weights_only`
for all of them (mmengine logs it as the ``weights_only`` backend) with mmengine's own
extension point, ``CheckpointLoader.register_scheme``; it does nothing on a torch whose
``torch.load`` still unpickles everything by default (< 2.6).

Safe by construction:

- The pickle is read by torch's weights-only unpickler, with our globals allowed only inside
  :func:`load_local` (``torch.serialization.safe_globals``); the process-wide list is
  never touched.
- Each global we allow is an inert stand-in (:class:`_Record` subclasses and small
  functions) that stores the plain data the file gives and runs nothing else: no NumPy or
  mmengine code runs during unpickling. After the unpickler has finished,
  :func:`_materialise` validates every record (numeric dtypes only, shapes that match the
  bytes, the fixed set of HistoryBuffer fields and statistics, plain attribute names of the
  ``argparse.Namespace`` that ImageNet training scripts save as ``args``) and builds the real
  objects.
- Before unpickling, the declared tensor sizes are compared with the bytes in the file
  (:func:`_check_declared_sizes`), so an absurd size is refused before memory is allocated.
- A ``.safetensors`` file (timm's and open_clip's Hugging Face hub copies) holds no pickle at
  all; it is recognised by its header, not its name, and read with ``safetensors``, which
  checks every tensor's offsets against the file (:func:`_load_safetensors`).
- A URL is downloaded once into torch's hub cache (temporary file, then rename; its SHA-256
  checked against a given prefix or the one in the file name) and loaded like a local file.

A file with anything else raises :class:`UnsafeCheckpointError`, which names the global or
the reason. A user who trusts a file sets ``CONVNEXT_DENSE_TRUST_CHECKPOINTS=1`` (read at each
load; logged with the file's name) to load it with full pickle.
"""
import contextlib
import hashlib
import io
import logging
import os
import os.path as osp
import pickle
import re
import struct
import tempfile
import urllib.parse
import zipfile
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch

TRUST_ENV = 'CONVNEXT_DENSE_TRUST_CHECKPOINTS'

#: HistoryBuffer statistics that a checkpoint may name (mmengine registers these four).
HISTORY_STATISTICS = frozenset({'min', 'max', 'mean', 'current'})
#: NumPy dtypes an array or scalar in a checkpoint may have (``dtype.str`` without byte order).
NUMERIC_DTYPES = frozenset({'b1', 'i1', 'u1', 'i2', 'u2', 'i4', 'u4', 'i8', 'u8', 'f2', 'f4',
                            'f8', 'c8', 'c16'})
_HISTORY_FIELDS = frozenset({'max_length', '_log_history', '_count_history'})
_URL_SCHEMES = ('http://', 'https://')


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint holds something a weights-only load does not allow."""


class DamagedCheckpointError(ValueError):
    """A checkpoint file that is truncated, corrupt or not a torch checkpoint."""


# ----------------------------------------------------------------------------- stand-ins
class _Record:
    """What a pickle builds in place of an allowed global: its arguments and its BUILD state,
    stored as given, validated only later by :func:`_materialise`. Nothing else can be set."""
    __slots__ = ('args', 'state')
    _NO_STATE = ()

    def __new__(cls, *args):
        record = object.__new__(cls)
        object.__setattr__(record, 'args', args)
        object.__setattr__(record, 'state', cls._NO_STATE)
        return record

    def __setstate__(self, state) -> None:
        if self.state is not self._NO_STATE:
            raise UnsafeCheckpointError(f'{type(self).__name__} built twice')
        object.__setattr__(self, 'state', state)

    def __setattr__(self, name, value):
        raise UnsafeCheckpointError(f'checkpoint sets attribute {name!r} of '
                                    f'{type(self).__name__}')

    __delattr__ = __setattr__

    def __reduce__(self):
        raise TypeError(f'{type(self).__name__} is a loading stand-in; it is never saved')


class _HistoryBufferRecord(_Record):
    """Stands in for ``mmengine.logging.HistoryBuffer``."""
    __slots__ = ()


class _ArrayRecord(_Record):
    """Stands in for ``numpy.ndarray`` (built by ``_reconstruct`` + BUILD)."""
    __slots__ = ()


class _DtypeRecord(_Record):
    """Stands in for ``numpy.dtype``."""
    __slots__ = ()


class _ScalarRecord(_Record):
    """A NumPy scalar: (dtype, bytes)."""
    __slots__ = ()


class _StatisticRecord(_Record):
    """``getattr(HistoryBuffer, name)`` for one of :data:`HISTORY_STATISTICS`."""
    __slots__ = ()


class _NamespaceRecord(_Record):
    """Stands in for ``argparse.Namespace``: the command-line ``args`` that training scripts of
    the ConvNeXt / ConvNeXt-V2 / DeiT family save beside the weights."""
    __slots__ = ()


def _reconstruct_array(cls, shape, typecode) -> _ArrayRecord:
    """Stands in for NumPy's ``_reconstruct(ndarray, (0,), b'b')``."""
    if cls is not _ArrayRecord:
        raise UnsafeCheckpointError(f'numpy _reconstruct of {cls!r}; only plain arrays load')
    return _ArrayRecord()


def _numpy_scalar(dtype, data=None) -> _ScalarRecord:
    """Stands in for NumPy's ``scalar(dtype, bytes)``."""
    return _ScalarRecord(dtype, data)


def _history_statistic(owner, name) -> _StatisticRecord:
    """Stands in for ``builtins.getattr``: only ``getattr(HistoryBuffer, <statistic>)``."""
    if owner is _HistoryBufferRecord and type(name) is str and name in HISTORY_STATISTICS:
        return _StatisticRecord(name)
    raise UnsafeCheckpointError(
        f'checkpoint asks for getattr({owner!r}, {name!r}); only HistoryBuffer statistics '
        f'({", ".join(sorted(HISTORY_STATISTICS))}) may be named in a checkpoint')


def _stand_ins():
    entries = [(_HistoryBufferRecord, 'mmengine.logging.history_buffer.HistoryBuffer'),
               (_ArrayRecord, 'numpy.ndarray'), (_DtypeRecord, 'numpy.dtype'),
               (_history_statistic, 'builtins.getattr'), (_NamespaceRecord, 'argparse.Namespace')]
    for module in ('numpy.core.multiarray', 'numpy._core.multiarray'):
        entries += [(_reconstruct_array, f'{module}._reconstruct'),
                    (_numpy_scalar, f'{module}.scalar')]
    return entries


#: The globals allowed beyond torch's own, each mapped to an inert stand-in.
STAND_INS = tuple(_stand_ins())


# ----------------------------------------------------------------------------- validation
def _fail(what: str):
    raise UnsafeCheckpointError(what)


def _dtype(record) -> np.dtype:
    if type(record) is not _DtypeRecord:
        _fail(f'expected a NumPy dtype, got {type(record).__name__}')
    args, state = record.args, record.state
    if not (1 <= len(args) <= 3 and type(args[0]) is str and args[0] in NUMERIC_DTYPES
            and all(type(a) is bool for a in args[1:])):
        _fail(f'NumPy dtype {args!r} is not one of the numeric dtypes '
              f'({", ".join(sorted(NUMERIC_DTYPES))})')
    dtype = np.dtype(args[0])
    if state is _Record._NO_STATE:
        return dtype
    if not (type(state) is tuple and len(state) == 8 and state[0] == 3
            and state[1] in ('<', '>', '|', '=') and state[2:5] == (None, None, None)
            and state[5:] == (-1, -1, 0)):
        _fail(f'NumPy dtype {args[0]!r} has a forged state {state!r}')
    return dtype.newbyteorder(state[1]) if state[1] in '<>' else dtype


def _array(record) -> np.ndarray:
    state = record.state
    if not (type(state) is tuple and len(state) == 5 and state[0] == 1):
        _fail(f'NumPy array with an unknown state layout ({type(state).__name__})')
    _, shape, dtype, fortran, data = state
    dtype = _dtype(dtype)
    if not (type(shape) is tuple and all(type(n) is int and n >= 0 for n in shape)
            and type(fortran) is bool and type(data) in (bytes, bytearray)):
        _fail(f'NumPy array state (shape {shape!r}, data {type(data).__name__}) is not plain')
    size = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if size != len(data):
        _fail(f'NumPy array of shape {shape} and dtype {dtype} needs {size} bytes, the '
              f'checkpoint gives {len(data)}')
    if dtype.kind == 'b' and bytes(data).strip(b'\0\1'):
        _fail('NumPy bool array with bytes other than 0 and 1')
    return np.frombuffer(bytes(data), dtype=dtype).reshape(shape, order='F' if fortran else 'C'
                                                           ).copy(order='K')


def _scalar(record):
    if len(record.args) != 2:
        _fail('NumPy scalar without data')
    dtype, data = _dtype(record.args[0]), record.args[1]
    if type(data) not in (bytes, bytearray) or len(data) != dtype.itemsize:
        _fail(f'NumPy {dtype} scalar needs {dtype.itemsize} bytes')
    if dtype.kind == 'b' and bytes(data) not in (b'\0', b'\1'):
        _fail('NumPy bool scalar with a byte other than 0 and 1')
    return np.frombuffer(bytes(data), dtype=dtype)[0]


def _history_buffer(record, convert):
    """A real HistoryBuffer from its fields: two 1-D numeric histories of equal length within
    ``max_length``, and optionally ``statistics_methods``, where mmengine's ``__getstate__``
    puts its class-wide statistics table. Its own ``__setstate__`` merges that table into the
    class (which a crafted file could poison); here it may only name the stock statistics,
    which the constructor registers anyway, so it is checked and dropped."""
    from mmengine.logging import HistoryBuffer
    state = record.state
    if record.args or type(state) is not dict or not (
            _HISTORY_FIELDS <= set(state) <= _HISTORY_FIELDS | {'statistics_methods'}):
        _fail(f'HistoryBuffer state must have the fields {", ".join(sorted(_HISTORY_FIELDS))} '
              f'(and optionally statistics_methods), nothing else')
    logs, counts = convert(state['_log_history']), convert(state['_count_history'])
    max_length = state['max_length']
    if not (type(logs) is np.ndarray and type(counts) is np.ndarray and logs.ndim == 1
            and counts.shape == logs.shape and type(max_length) is int
            and 0 < max_length and len(logs) <= max_length):
        _fail('HistoryBuffer holds history that is not two 1-D arrays of equal length within '
              'max_length')
    methods = state.get('statistics_methods', {})
    if type(methods) is not dict or not all(
            type(k) is str and type(v) is _StatisticRecord and v.args == (k,)
            for k, v in methods.items()):
        _fail('HistoryBuffer statistics_methods may only name the stock statistics '
              f'({", ".join(sorted(HISTORY_STATISTICS))})')
    return HistoryBuffer(logs, counts, max_length)


def _namespace(record, convert):
    """A real ``argparse.Namespace`` (an inert attribute holder) from its BUILD state: a dict
    of identifier names, none of them dunder (``__class__`` and the like would reach the
    object itself), to values that are themselves validated."""
    import argparse
    state = {} if record.state is _Record._NO_STATE else record.state
    if record.args or type(state) is not dict or not all(
            type(k) is str and k.isidentifier() and not k.startswith('__') for k in state):
        _fail('argparse.Namespace state must be a dict of plain attribute names')
    return argparse.Namespace(**{k: convert(v) for k, v in state.items()})


def _materialise(obj):
    """The loaded object with every stand-in record validated and replaced by the real
    object (``HistoryBuffer``, ``np.ndarray``, ``np.dtype``, NumPy scalar,
    ``argparse.Namespace``). Containers are
    updated in place; shared references stay shared."""
    from mmengine.logging import HistoryBuffer
    done: Dict[int, Tuple[Any, Any]] = {}

    def convert(value):
        key = id(value)
        if key in done:
            return done[key][1]
        kind = type(value)
        if isinstance(value, dict):  # dict, OrderedDict, Counter: in place
            done[key] = (value, value)
            for k in list(value):
                if isinstance(k, _Record):
                    _fail(f'a {type(k).__name__} used as a dictionary key')
                value[k] = convert(value[k])
            return value
        if kind is list:
            done[key] = (value, value)
            value[:] = [convert(v) for v in value]
            return value
        if kind in (tuple, set):
            result = kind(convert(v) for v in value)
        elif kind is _HistoryBufferRecord:
            result = _history_buffer(value, convert)
        elif kind is _ArrayRecord:
            result = _array(value)
        elif kind is _DtypeRecord:
            result = _dtype(value)
        elif kind is _ScalarRecord:
            result = _scalar(value)
        elif kind is _StatisticRecord:
            result = getattr(HistoryBuffer, value.args[0])
        elif kind is _NamespaceRecord:
            result = _namespace(value, convert)
        else:
            result = value
            if isinstance(value, torch.Tensor) and getattr(value, '__dict__', None):
                for k in list(value.__dict__):  # attributes set by _rebuild_from_type_v2
                    value.__dict__[k] = convert(value.__dict__[k])
        done[key] = (value, result)  # the original is kept alive, so its id stays unique
        return result

    return convert(obj)


# ----------------------------------------------------------------------------- sizes
def _storage_sizes(stream, prefix_pickles: int = 0):
    """Declared {key: nbytes} of every storage that the pickle in ``stream`` (a binary file)
    asks for, and the stream position after it; read with the weights-only unpickler and
    meta storages (nothing allocated), after skipping ``prefix_pickles`` pickles."""
    from torch._weights_only_unpickler import Unpickler
    declared = {}

    def persistent_load(pid):
        if not (type(pid) is tuple and len(pid) >= 5):
            _fail(f'unexpected persistent id {pid!r}')
        storage_type, key, numel = pid[1], pid[2], pid[4]
        if type(numel) is not int or numel < 0:
            _fail(f'storage {key!r} declares {numel!r} elements')
        dtype = torch.uint8 if storage_type is torch.UntypedStorage else storage_type.dtype
        nbytes = numel * torch._utils._element_size(dtype)
        declared[str(key)] = max(nbytes, declared.get(str(key), 0))
        storage = torch.UntypedStorage(nbytes, device='meta')
        return torch.storage.TypedStorage(wrap_storage=storage, dtype=dtype, _internal=True)

    for _ in range(prefix_pickles):
        Unpickler(stream, encoding='utf-8').load()
    unpickler = Unpickler(stream, encoding='utf-8')
    unpickler.persistent_load = persistent_load
    unpickler.load()
    return declared, stream.tell()


def _check_declared_sizes(filename: str) -> None:
    """Refuse a file whose declared storages need more bytes than it holds, before
    ``torch.load`` allocates them. Zip format: each storage against its own record; legacy
    format: all storages together against the rest of the file."""
    size = os.path.getsize(filename)
    if zipfile.is_zipfile(filename):
        with zipfile.ZipFile(filename) as archive:
            infos = archive.infolist()
            records = {info.filename: info for info in infos}
            if len(records) != len(infos):
                _fail('the zip archive names a record twice')
            for info in infos:
                if info.compress_type != zipfile.ZIP_STORED or info.file_size != info.compress_size \
                        or info.header_offset + info.file_size > size:
                    _fail(f'zip record {info.filename} declares {info.file_size} bytes that the '
                          f'{size}-byte file cannot hold (or is compressed)')
            pickles = [n for n in records if n.endswith('/data.pkl') or n == 'data.pkl']
            if len(pickles) != 1:
                _fail(f'a torch zip checkpoint has one data.pkl, this one has {len(pickles)}')
            root = pickles[0][:-len('data.pkl')]
            declared, _ = _storage_sizes(io.BytesIO(archive.read(pickles[0])))
        for key, nbytes in declared.items():
            record = records.get(f'{root}data/{key}')
            if record is None or nbytes > record.file_size:
                _fail(f'storage {key} declares {nbytes} bytes, the file holds '
                      f'{record.file_size if record else 0} for it')
        return
    # legacy format: magic number, protocol version, sys info, then the object pickle
    with open(filename, 'rb') as f:
        declared, end = _storage_sizes(f, prefix_pickles=3)
    total = sum(declared.values())
    if total > size - end:
        _fail(f'storages declare {total} bytes, the file holds {size - end} after its pickle')


# ----------------------------------------------------------------------------- loading
def _global_name(entry) -> str:
    return entry[1] if isinstance(entry, tuple) else f'{entry.__module__}.{entry.__qualname__}'


@contextlib.contextmanager
def _stand_ins_only():
    """Our stand-ins allowed for one load (``torch.serialization.safe_globals``). Where the
    process has allowed the real object under one of their names (``add_safe_globals([np.dtype])``
    elsewhere), that entry is set aside meanwhile: otherwise torch picks either one."""
    names = {name for _, name in STAND_INS}
    shadowing = [g for g in torch.serialization.get_safe_globals() if _global_name(g) in names]
    if shadowing:
        torch._weights_only_unpickler._remove_safe_globals(shadowing)
    try:
        with torch.serialization.safe_globals(list(STAND_INS)):
            yield
    finally:
        if shadowing:
            torch.serialization.add_safe_globals(shadowing)


def trusted() -> bool:
    """Whether the user opted in to full pickle (read at every load)."""
    return os.environ.get(TRUST_ENV, '0').strip().lower() in ('1', 'true', 'yes')


def _reason(error: Exception) -> str:
    text = str(error)
    marker = 'WeightsUnpickler error:'
    if marker in text:
        text = text.split(marker, 1)[1].strip().split('\n\n')[0]
    match = re.search(r'GLOBAL (\S+)', text)
    if match:
        return f'it contains {match.group(1)}'
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__


def _is_safetensors(filename: str) -> bool:
    """A safetensors file starts with its JSON header's length (u64, little-endian) and the
    header's ``{``; a torch zip starts with ``PK``, a legacy torch file with a pickle opcode."""
    with open(filename, 'rb') as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b'{' and not head.startswith((b'PK', b'\x80'))


def _load_safetensors(filename: str, map_location=None) -> Dict[str, torch.Tensor]:
    """A ``.safetensors`` file as a plain {key: tensor} state dict, on the CPU, or on the device
    that ``map_location`` names as a string or ``torch.device`` (a dict or callable keeps the CPU,
    where torch.load would map a CPU-saved file). Nothing in the file is executed."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        state_dict = load_file(filename, device='cpu')
    except (SafetensorError, ValueError, TypeError, OSError) as error:
        raise DamagedCheckpointError(
            f'checkpoint {filename} looks like a safetensors file but is damaged (truncated?): '
            f'{error}') from None
    if isinstance(map_location, (str, torch.device)) and str(map_location) != 'cpu':
        state_dict = {k: v.to(map_location) for k, v in state_dict.items()}
    return state_dict


def load_local(filename: str, map_location=None):
    """Load a local checkpoint weights-only (see the module docstring)."""
    filename = osp.expanduser(str(filename))
    if not osp.isfile(filename):
        raise FileNotFoundError(f'checkpoint {filename} does not exist; check the path given as '
                                f'load_from, --resume, init_cfg checkpoint or to tools/test.py')
    if _is_safetensors(filename):
        return _load_safetensors(filename, map_location)
    if trusted():
        from mmengine.logging import print_log
        print_log(f'{TRUST_ENV} is set: loading {filename} with full pickle, which can run '
                  f'code from the file.', logger='current', level=logging.WARNING)
        return torch.load(filename, map_location=map_location, weights_only=False)
    try:
        with _stand_ins_only():
            _check_declared_sizes(filename)
            loaded = torch.load(filename, map_location=map_location, weights_only=True)
            return _materialise(loaded)
    except UnsafeCheckpointError as error:
        what = str(error)
    except (pickle.UnpicklingError, AttributeError, TypeError, ValueError, KeyError,
            IndexError, UnicodeDecodeError, OverflowError, RecursionError) as error:
        what = _reason(error)
    except (EOFError, RuntimeError, AssertionError, struct.error, zipfile.BadZipFile,
            MemoryError) as error:
        raise DamagedCheckpointError(
            f'checkpoint {filename} is damaged (truncated?) or not a torch checkpoint: '
            f'{_reason(error)}') from None
    raise UnsafeCheckpointError(
        f'Refusing to load checkpoint {filename}: {what}. A weights-only load allows tensors, '
        f'plain Python data and the bookkeeping mmengine saves; loading anything else could '
        f'run code from the file. If you trust this file, set the environment variable '
        f'{TRUST_ENV}=1 to load it with full pickle.') from None


_HASH_IN_NAME = re.compile(r'-([a-f0-9]{8,64})\.')


def _cache_name(url: str) -> Tuple[str, str]:
    """(the name ``url`` is cached under, the URL's own file name). The cache name is the file
    name, as torch.hub names it (so a file torch.hub already downloaded is found), except for
    Hugging Face hub style URLs, ``.../<org>/<repo>/resolve/<revision>/<file>``, whose file names
    (``model.safetensors``, ``open_clip_pytorch_model.bin``) are the same in every repository:
    those are cached as ``<org>--<repo>--<revision>--<file>``."""
    parts = [p for p in urllib.parse.unquote(urllib.parse.urlparse(url).path).split('/') if p]
    if not parts or parts[-1] in ('.', '..'):
        raise ValueError(f'checkpoint URL {url} names no file')
    if 'resolve' in parts[1:-2]:
        i = parts.index('resolve', 1)
        return '--'.join(parts[:i] + parts[i + 1:]), parts[-1]
    return parts[-1], parts[-1]


def download(url: str, model_dir: Optional[str] = None,
             hash_prefix: Optional[str] = None) -> str:
    """Download ``url`` once into torch's hub cache (``<hub dir>/checkpoints``) and return the
    path. The file appears under its final name only when complete: a failed or truncated
    download, or a SHA-256 that does not start with ``hash_prefix`` (default: the hex after
    the last ``-`` in the file name, torch.hub's convention, when there is one), leaves
    nothing in the cache."""
    model_dir = model_dir or osp.join(torch.hub.get_dir(), 'checkpoints')
    name, file_name = _cache_name(url)
    path = osp.join(model_dir, name)
    if hash_prefix is None:
        match = _HASH_IN_NAME.search(file_name)
        hash_prefix = match.group(1) if match else None
    hash_prefix = hash_prefix.lower() if hash_prefix else None
    if osp.isfile(path):
        if hash_prefix and not _sha256(path).startswith(hash_prefix):
            raise UnsafeCheckpointError(f'cached checkpoint {path} does not match the SHA-256 '
                                        f'prefix {hash_prefix}; delete it to download again')
        return path
    os.makedirs(model_dir, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=model_dir, prefix=f'.{name}.', suffix='.partial')
    try:
        with os.fdopen(handle, 'wb') as out:
            digest = _stream(url, out)
        if hash_prefix and not digest.startswith(hash_prefix):
            raise UnsafeCheckpointError(f'download of {url} has SHA-256 {digest}, which does not '
                                        f'start with the expected {hash_prefix}')
        os.replace(partial, path)
    finally:
        if osp.exists(partial):
            os.remove(partial)
    return path


def _stream(url: str, out, chunk: int = 1 << 20) -> str:
    """Copy ``url`` into the open file ``out``; return its SHA-256. A body shorter than the
    server's Content-Length is an error."""
    import urllib.request
    digest, received = hashlib.sha256(), 0
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            expected = response.headers.get('Content-Length')
            while True:
                block = response.read(chunk)
                if not block:
                    break
                out.write(block)
                digest.update(block)
                received += len(block)
    except OSError as error:  # URLError, HTTPError, connection errors, timeouts
        raise OSError(f'could not download checkpoint {url}: {error}') from None
    if expected is not None and received != int(expected):
        raise OSError(f'could not download checkpoint {url}: got {received} of {expected} bytes '
                      f'(connection closed early)')
    return digest.hexdigest()


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def _resolve(filename: str) -> str:
    """A URL or local path for mmengine's named schemes (``torchvision://resnet50``, ...)."""
    from mmengine.runner import checkpoint as mm
    named = [(('torchvision://', 'modelzoo://'), mm.get_torchvision_models),
             (('open-mmlab://', 'openmmlab://'), mm.get_external_models),
             (('mmcls://',), mm.get_mmcls_models)]
    for prefixes, table in named:
        for prefix in prefixes:
            if filename.startswith(prefix):
                name = filename[len(prefix):]
                if prefix.startswith('open'):
                    name = mm.get_deprecated_model_names().get(name, name)
                models = table()
                if name not in models:
                    raise KeyError(f'{filename}: no model {name!r} is known for {prefix}')
                url = models[name]
                return url if url.startswith(_URL_SCHEMES) else osp.join(
                    mm._get_mmengine_home(), url)
    return filename


def fetch(url: str, hash_prefix: Optional[str] = None) -> str:
    """:func:`download` in a distributed run: rank 0 first, the others after a barrier
    (they find the file in the cache); returns the local path."""
    from mmengine.dist import barrier, get_dist_info
    rank, world_size = get_dist_info()
    path = download(url, hash_prefix=hash_prefix) if rank == 0 else None
    if world_size > 1:
        barrier()
        if rank > 0:
            path = download(url, hash_prefix=hash_prefix)
    return path


def load_checkpoint(filename: str, map_location=None):
    """Load a checkpoint from a local path, ``http(s)://`` or one of mmengine's named schemes,
    weights-only. URLs are downloaded into the hub cache first (:func:`fetch`), then loaded
    like a local file."""
    original, filename = str(filename), _resolve(str(filename))
    if filename.startswith(_URL_SCHEMES):
        filename = fetch(filename)
    checkpoint = load_local(filename, map_location=map_location)
    if original.startswith('mmcls://'):
        from mmengine.runner.checkpoint import _process_mmcls_checkpoint
        checkpoint = _process_mmcls_checkpoint(checkpoint)
    return checkpoint


def load_from_weights_only(filename: str, map_location=None):
    """mmengine's ``CheckpointLoader`` entry (it logs the name after ``load_from_``)."""
    return load_checkpoint(filename, map_location)


_SCHEMES = ('', 'http://', 'https://', 'torchvision://', 'modelzoo://', 'open-mmlab://',
            'openmmlab://', 'mmcls://')


def _needed() -> bool:
    """torch < 2.6 loads everything by default; the fix is for >= 2.6."""
    version = tuple(int(p) for p in re.findall(r'\d+', torch.__version__)[:2])
    return version >= (2, 6)


def apply() -> None:
    """Register :func:`load_from_weights_only` for mmengine's local and URL schemes."""
    if not _needed():
        return
    from mmengine.runner.checkpoint import CheckpointLoader
    for prefix in _SCHEMES:
        CheckpointLoader.register_scheme(prefixes=prefix, loader=load_from_weights_only,
                                         force=True)
