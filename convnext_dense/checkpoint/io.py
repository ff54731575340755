"""Weights-only loading of checkpoint files and URLs, safetensors, download cache, SHA-256.

:func:`load_checkpoint` reads a local path, an ``http(s)://`` URL or one of mmengine's named
schemes without running code from the file: torch's weights-only unpickler, with inert
stand-ins (:class:`_Record`) for the few globals mmengine saves (``HistoryBuffer``, NumPy
arrays, dtypes, scalars, ``argparse.Namespace``), which :func:`_materialise` validates and
turns into real objects afterwards. A pre-pass (:func:`_prepass`) walks the pickle and the zip
records first, so a hostile file is refused in time and memory proportional to its size.
Config text saved in a checkpoint is withheld unless the file is trusted. A ``.safetensors``
file is recognised by its header. A URL is downloaded once into torch's hub cache.

Anything else raises :class:`UnsafeCheckpointError`; ``CONVNEXT_DENSE_TRUST_CHECKPOINTS=1``
loads a trusted file with full pickle. The design is explained in docs/checkpoints.md.
"""
import contextlib
import hashlib
import io
import logging
import mmap
import os
import os.path as osp
import pickle
import re
import struct
import tempfile
import urllib.parse
from collections import Counter, OrderedDict
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch

from ..errors import ConfigError, ConfigKeyError, MissingFileError, UserError
from .pickle_scan import PickleRefused, PickleTruncated, UnknownGlobal, bounded, scan_pickle
from .zip_records import BadZip, zip_records

TRUST_ENV = 'CONVNEXT_DENSE_TRUST_CHECKPOINTS'

#: HistoryBuffer statistics that a checkpoint may name (mmengine registers these four).
HISTORY_STATISTICS = frozenset({'min', 'max', 'mean', 'current'})
#: NumPy dtypes an array or scalar in a checkpoint may have (``dtype.str`` without byte order).
NUMERIC_DTYPES = frozenset({'b1', 'i1', 'u1', 'i2', 'u2', 'i4', 'u4', 'i8', 'u8', 'f2', 'f4',
                            'f8', 'c8', 'c16'})
_HISTORY_FIELDS = frozenset({'max_length', '_log_history', '_count_history'})
_URL_SCHEMES = ('http://', 'https://')


class UnsafeCheckpointError(UserError, pickle.UnpicklingError):
    """A checkpoint holds something a weights-only load does not allow."""


class DamagedCheckpointError(UserError, ValueError):
    """A checkpoint file that is truncated, corrupt or not a torch checkpoint."""


# ----------------------------------------------------------------------------- stand-ins
def _what(value) -> str:
    """A value from the file in a message: short text, small ints and class names as they are,
    anything else by its type name only (its repr could be huge or slow)."""
    if isinstance(value, str):
        return bounded(value)
    if type(value) is int and value.bit_length() <= 64:
        return str(value)
    if isinstance(value, type):
        return bounded(value.__qualname__)
    return f'a {type(value).__name__}'


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
        raise UnsafeCheckpointError(f'checkpoint sets attribute {_what(name)} of '
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
        raise UnsafeCheckpointError(f'numpy _reconstruct of {_what(cls)}; only plain arrays load')
    return _ArrayRecord()


def _numpy_scalar(dtype, data=None) -> _ScalarRecord:
    """Stands in for NumPy's ``scalar(dtype, bytes)``."""
    return _ScalarRecord(dtype, data)


def _history_statistic(owner, name) -> _StatisticRecord:
    """Stands in for ``builtins.getattr``: only ``getattr(HistoryBuffer, <statistic>)``."""
    if owner is _HistoryBufferRecord and type(name) is str and name in HISTORY_STATISTICS:
        return _StatisticRecord(name)
    raise UnsafeCheckpointError(
        f'checkpoint asks for getattr({_what(owner)}, {_what(name)}); only HistoryBuffer statistics '
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
_STAND_IN_NAMES = frozenset(name for _, name in STAND_INS)


# ----------------------------------------------------------------------------- validation
def _fail(what: str):
    raise UnsafeCheckpointError(what)


class _Refused(UnsafeCheckpointError):
    """Refused for its structure or sizes: trusting the file would not make it load safely."""


def _refuse(what: str):
    raise _Refused(what)


def _bounded_reason(error: Exception, limit: int = 300) -> str:
    text = ' '.join(str(error).split())
    return text if len(text) <= limit else text[:limit] + '...'


def _dtype(record) -> np.dtype:
    if type(record) is not _DtypeRecord:
        _fail(f'expected a NumPy dtype, got {type(record).__name__}')
    args, state = record.args, record.state
    if not (1 <= len(args) <= 3 and type(args[0]) is str and args[0] in NUMERIC_DTYPES
            and all(type(a) is bool for a in args[1:])):
        _fail(f'NumPy dtype {_what(args[0] if args else args)} is not one of the numeric dtypes '
              f'({", ".join(sorted(NUMERIC_DTYPES))})')
    dtype = np.dtype(args[0])
    if state is _Record._NO_STATE:
        return dtype
    if not (type(state) is tuple and len(state) == 8 and state[0] == 3
            and state[1] in ('<', '>', '|', '=') and state[2:5] == (None, None, None)
            and state[5:] == (-1, -1, 0)):
        _fail(f'NumPy dtype {_what(args[0])} has a forged state')
    return dtype.newbyteorder(state[1]) if state[1] in '<>' else dtype


def _array(record) -> np.ndarray:
    state = record.state
    if not (type(state) is tuple and len(state) == 5 and state[0] == 1):
        _fail(f'NumPy array with an unknown state layout ({type(state).__name__})')
    _, shape, dtype, fortran, data = state
    dtype = _dtype(dtype)
    if not (type(shape) is tuple and all(type(n) is int and n >= 0 for n in shape)
            and type(fortran) is bool and type(data) in (bytes, bytearray)):
        _fail(f'NumPy array state (shape {_what(shape)}, data {type(data).__name__}) is not '
              f'plain')
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


#: Types a weights-only load yields that hold no record: taken as they are.
_LEAF_TYPES = (str, bytes, bytearray, int, float, complex, bool, type(None), torch.dtype,
               torch.device, torch.layout, torch.memory_format, torch.qscheme, torch.Size,
               torch.storage.TypedStorage, torch.UntypedStorage)


def _materialise(obj):
    """The loaded object with every stand-in record validated and replaced by the real
    object (``HistoryBuffer``, ``np.ndarray``, ``np.dtype``, NumPy scalar,
    ``argparse.Namespace``), wherever it sits: values, dictionary keys, tuples, sets, an
    OrderedDict's attributes (its BUILD state, e.g. ``_metadata``) and a tensor's. Any other
    type is refused. Containers are updated in place; shared references stay shared."""
    from mmengine.logging import HistoryBuffer
    done: Dict[int, Tuple[Any, Any]] = {}

    def convert_dict(value):
        items = [(convert(k), convert(v)) for k, v in value.items()]
        value.clear()
        value.update(items)

    def convert(value):
        key = id(value)
        if key in done:
            return done[key][1]
        kind = type(value)
        if isinstance(value, dict):  # dict, OrderedDict, Counter: in place
            if kind not in (dict, OrderedDict, Counter):
                _fail(f'a {kind.__name__} (a dict subclass) in the checkpoint')
            done[key] = (value, value)
            convert_dict(value)
            if getattr(value, '__dict__', None):  # OrderedDict BUILD state
                convert_dict(value.__dict__)
            return value
        if kind is list:
            done[key] = (value, value)
            value[:] = [convert(v) for v in value]
            return value
        if kind in (tuple, set, frozenset):
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
        elif isinstance(value, torch.Tensor):
            result = value
            if getattr(value, '__dict__', None):  # attributes set by _rebuild_from_type_v2
                convert_dict(value.__dict__)
        elif isinstance(value, _LEAF_TYPES):
            result = value
        else:
            _fail(f'a {kind.__name__} in the checkpoint, which a weights-only load does not '
                  f'yield')
        if isinstance(result, _Record):
            _fail(f'a {kind.__name__} left unvalidated')
        done[key] = (value, result)  # the original is kept alive, so its id stays unique
        return result

    return convert(obj)


# ----------------------------------------------------------------------------- pre-pass
def _allowed_global(name: str) -> bool:
    """torch's weights-only defaults and our stand-ins: what the unpickler will accept."""
    from torch._weights_only_unpickler import _get_allowed_globals
    return name in _get_allowed_globals() or name in _STAND_IN_NAMES


def _element_size(name: str) -> Optional[int]:
    """Bytes per element of the storage type a persistent id names (None: not a storage)."""
    from torch._weights_only_unpickler import _get_allowed_globals
    kind = _get_allowed_globals().get(name)
    if kind is torch.UntypedStorage:
        return 1
    dtype = getattr(kind, 'dtype', None)  # torch.serialization.StorageType('FloatStorage')
    return torch._utils._element_size(dtype) if isinstance(dtype, torch.dtype) else None


def _scan(stream, file_size: int) -> Dict[str, int]:
    return scan_pickle(stream, _allowed_global, _element_size, file_size)


def _prepass(filename: str) -> None:
    """Walk every pickle of the file (:func:`~convnext_dense.checkpoint.pickle_scan.scan_pickle`,
    nothing executed) and compare the storages it declares with the bytes the file holds,
    before ``torch.load`` reads or allocates anything.

    A zip checkpoint's directory is read as torch's own zip reader (``PyTorchFileReader``)
    finds it (:func:`~convnext_dense.checkpoint.zip_records.zip_records`), and that reader must
    list the same records at the same offsets: where two readers could disagree, the file is
    refused. Every record must be stored (not compressed, so none can inflate), inside the
    file and apart from the others, and each storage may declare at most its record's bytes.
    Any other file is torch's legacy format: five pickles (magic number, protocol, system
    info, the object, storage keys), then the storages, which must fit in the rest of the
    file."""
    size = os.path.getsize(filename)
    with open(filename, 'rb') as f:
        is_zip = f.read(4) == b'PK\x03\x04'  # torch.serialization._is_zipfile's test
        try:
            records = zip_records(f, size) if is_zip else None
        except BadZip as error:
            raise DamagedCheckpointError(f'not a zip archive torch reads as we do: {error}') \
                from None
    if is_zip:
        try:
            reader = torch._C.PyTorchFileReader(filename)
            names = reader.get_all_records()
            offsets = {n: reader.get_record_offset(n) for n in names}
        except RuntimeError as error:
            raise DamagedCheckpointError(_bounded_reason(error)) from None
        root = records[0].name.split('/', 1)[0] + '/' if records else ''
        ours = {r.name[len(root):]: r for r in records}
        if len(ours) != len(records) or len(set(names)) != len(names) or set(ours) != set(
                names) or any(ours[n].offset != offsets[n] for n in names):
            _refuse('torch\'s zip reader and a strict reading of the archive see different '
                    'records (two central directories?)')
        end = 0
        for record in sorted(records, key=lambda r: r.offset):
            if record.method != 0 or record.compressed != record.size or record.offset < end \
                    or record.offset + record.size > size:
                _refuse(f'zip record {bounded(record.name)} ({record.size} bytes at offset '
                        f'{record.offset}) is compressed, overlaps another record or reaches '
                        f'beyond the {size}-byte file (torch.save writes none of these)')
            end = record.offset + record.size
        if 'data.pkl' not in ours:
            raise DamagedCheckpointError('a torch zip checkpoint without data.pkl')
        declared = _scan(io.BytesIO(reader.get_record('data.pkl')), size)
        for key, nbytes in declared.items():
            held = ours[f'data/{key}'].size if f'data/{key}' in ours else 0
            if nbytes > held:
                _refuse(f'storage {bounded(key)} declares {nbytes} bytes, the file holds {held} '
                        f'for it')
        return
    with open(filename, 'rb') as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        declared = {}
        for _ in range(5):
            declared.update(_scan(data, size))
        total, rest = sum(declared.values()), size - data.tell()
    if total > rest:  # most likely cut short
        raise DamagedCheckpointError(f'its storages declare {total} bytes, the file holds {rest} '
                                     f'after its pickles')


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
    """Whether the user opted in to full pickle (:data:`TRUST_ENV`, read at every load).

    Returns:
        bool: True when the environment variable is 1, true or yes.
    """
    return os.environ.get(TRUST_ENV, '0').strip().lower() in ('1', 'true', 'yes')


def _reason(error: Exception) -> str:
    text = str(error)
    marker = 'WeightsUnpickler error:'
    if marker in text:
        text = text.split(marker, 1)[1].strip().split('\n\n')[0]
    match = re.search(r'GLOBAL (\S+)', text)
    if match:
        return f'it contains {bounded(match.group(1))}'
    return _bounded_reason(text.strip().splitlines()[0]) if text.strip() else \
        type(error).__name__


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


#: Largest config text whose ``gpu_ids`` is looked up (parsed, never executed).
_MAX_CONFIG_TEXT = 4 << 20
_MAX_GPU_IDS = 4096


def _gpu_ids(text: str) -> Optional[list]:
    """The ``gpu_ids`` a config text assigns at top level (a list / tuple of ints or
    ``range(...)``, as mmcv 1.x and mmengine write it), read by parsing, never by executing."""
    import ast
    if len(text) > _MAX_CONFIG_TEXT:
        return None
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name) and node.targets[0].id == 'gpu_ids'):
            continue
        value = node.value
        try:
            if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and \
                    value.func.id == 'range' and not value.keywords:
                bounds = [ast.literal_eval(a) for a in value.args]
                if 1 <= len(bounds) <= 3 and all(type(b) is int for b in bounds):
                    ids = range(*bounds)
                    return list(ids) if len(ids) <= _MAX_GPU_IDS else None
            ids = ast.literal_eval(value)
        except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
            return None
        if isinstance(ids, (list, tuple)) and len(ids) <= _MAX_GPU_IDS and all(
                type(i) is int for i in ids):
            return list(ids)
    return None


def _withhold_config_text(checkpoint, filename: str):
    """Config text saved in a checkpoint is code: mmengine executes it on ``Runner.resume``
    (``meta['config']``, for its GPU-count check) and in ``BaseInferencer`` given only
    weights (``message_hub.runtime_info.cfg``, else ``meta['cfg']``). Unless the user trusts
    the file, those strings are replaced here, in the loaded copy only:

    - ``meta['config']`` by a text that only assigns the ``gpu_ids`` the original assigns
      (parsed, not run), so resume keeps its check;
    - ``meta['cfg']`` by a text that stops with an error asking for the config file;
    - ``runtime_info.cfg`` is dropped, so a resumed run keeps its own config there.
    """
    if not isinstance(checkpoint, dict):
        return checkpoint
    meta = checkpoint.get('meta')
    if isinstance(meta, dict):
        if isinstance(meta.get('config'), str):
            ids = _gpu_ids(meta['config'])
            meta['config'] = '# config text withheld by convnext_dense (it is code)\n' + (
                f'gpu_ids = {ids!r}\n' if ids is not None else '')
        if isinstance(meta.get('cfg'), str):
            message = (f'checkpoint {filename} carries its training config as text, which is '
                       f'code and is not executed; pass the config file too, e.g. '
                       f"DetInferencer(model='CONFIG.py', weights=...) or "
                       f"MMSegInferencer(model='CONFIG.py', weights=...) (or set {TRUST_ENV}=1 "
                       f'if you trust the file)')
            meta['cfg'] = f'raise RuntimeError({message!r})\n'
    hub = checkpoint.get('message_hub')
    if isinstance(hub, dict) and isinstance(hub.get('runtime_info'), dict):
        hub['runtime_info'].pop('cfg', None)
    return checkpoint


def load_local(filename: str, map_location=None):
    """Load a local checkpoint weights-only (see the module docstring).

    Args:
        filename (str): the file (``~`` expanded).
        map_location: as for ``torch.load``.

    Returns:
        Any: the loaded checkpoint, config text withheld.

    Raises:
        FileNotFoundError: no such file.
        UnsafeCheckpointError: the file holds something a weights-only load refuses.
        DamagedCheckpointError: the file is truncated, corrupt or not a checkpoint.
    """
    filename = osp.expanduser(str(filename))
    if not osp.isfile(filename):
        raise MissingFileError(f'checkpoint {filename} does not exist; check the path given as '
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
            _prepass(filename)
            loaded = torch.load(filename, map_location=map_location, weights_only=True)
            return _withhold_config_text(_materialise(loaded), filename)
    except UnknownGlobal as error:
        what = str(error)
    except (_Refused, PickleRefused) as error:
        raise UnsafeCheckpointError(
            f'Refusing to load checkpoint {filename}: {error}. torch.save never writes this; the '
            f'file is damaged or crafted, and no setting loads it safely.') from None
    except UnsafeCheckpointError as error:
        what = str(error)
    except (pickle.UnpicklingError, AttributeError, TypeError, ValueError, KeyError,
            IndexError, UnicodeDecodeError, OverflowError, RecursionError) as error:
        if isinstance(error, (PickleTruncated, DamagedCheckpointError)):
            raise DamagedCheckpointError(
                f'checkpoint {filename} is damaged (truncated?) or not a torch checkpoint: '
                f'{error}') from None
        what = _reason(error)
    except (EOFError, RuntimeError, AssertionError, struct.error, MemoryError) as error:
        raise DamagedCheckpointError(
            f'checkpoint {filename} is damaged (truncated?) or not a torch checkpoint: '
            f'{_reason(error)}') from None
    raise UnsafeCheckpointError(
        f'Refusing to load checkpoint {filename}: {what}. A weights-only load allows tensors, '
        f'plain Python data and the bookkeeping mmengine saves; loading anything else could '
        f'run code from the file. If you trust this file, set the environment variable '
        f'{TRUST_ENV}=1 to load it with full pickle.') from None


_HASH_IN_NAME = re.compile(r'-([a-f0-9]{8,64})\.')


#: Our own folder in torch's hub cache: only :func:`download` writes there.
CACHE_SUBDIR = osp.join('checkpoints', 'convnext_dense')
_MAX_CACHE_NAME = 200


def _escape(part: str) -> str:
    """A URL part as a file-name piece: percent-quoted, ``-`` too, so that ``--`` only ever
    separates parts and distinct URLs give distinct names."""
    return urllib.parse.quote(part, safe='').replace('-', '%2D')


def _cache_name(url: str) -> Tuple[str, str]:
    """(the name ``url`` is cached under, the URL's own file name). The name spells out the
    scheme, host (with port) and every path part, and the query, joined by ``--``
    (``https--huggingface.co--timm--convnext_tiny.a--resolve--main--model.safetensors``), so two
    URLs never share an entry, wherever they are hosted and whatever their file is called. A
    name that would be too long for a file system ends in the URL's SHA-256 instead."""
    parsed = urllib.parse.urlparse(url)
    parts = [p for p in urllib.parse.unquote(parsed.path).split('/') if p]
    if not parts or parts[-1] in ('.', '..'):
        raise ConfigError(f'checkpoint URL {url} names no file')
    pieces = [parsed.scheme, parsed.netloc] + parts + ([f'?{parsed.query}'] if parsed.query
                                                      else [])
    name = '--'.join(_escape(p) for p in pieces)
    if len(name) > _MAX_CACHE_NAME:
        digest = hashlib.sha256(url.encode()).hexdigest()
        name = f'{name[:100]}--{digest}'
    return name, parts[-1]


def download(url: str, model_dir: Optional[str] = None,
             hash_prefix: Optional[str] = None) -> str:
    """Download ``url`` once into our folder of torch's hub cache (``<hub dir>/checkpoints/
    convnext_dense``, one entry per URL, see :func:`_cache_name`) and return the path. The file
    appears under its final name only when complete: a failed or truncated download, or a
    SHA-256 that does not start with ``hash_prefix`` (default: the hex after the last ``-`` in
    the file name, torch.hub's convention, when there is one), leaves nothing in the cache.
    Files that torch.hub or an older version of this package cached elsewhere are not used: the
    URL is downloaded again.

    Args:
        url (str): an ``http(s)://`` URL.
        model_dir (str, optional): the cache folder.
        hash_prefix (str, optional): a hex prefix of the file's SHA-256.

    Returns:
        str: the cached file's path.
    """
    model_dir = model_dir or osp.join(torch.hub.get_dir(), CACHE_SUBDIR)
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
    handle, partial = tempfile.mkstemp(dir=model_dir, prefix=f'.{name[:100]}.',
                                       suffix='.partial')
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


def verify_sha256(path: str, hash_prefix: Optional[str]) -> str:
    """Check that a file's SHA-256 starts with ``hash_prefix``.

    Args:
        path (str): the file.
        hash_prefix (str, optional): hex, any case; nothing is checked when None or empty.

    Returns:
        str: ``path``.

    Raises:
        UnsafeCheckpointError: the digest does not match.
    """
    if hash_prefix:
        digest = _sha256(path)
        if not digest.startswith(hash_prefix.lower()):
            raise UnsafeCheckpointError(
                f'checkpoint {path} has SHA-256 {digest}, which does not start with the '
                f'expected {hash_prefix.lower()} (sha256 in the config); is it another file?')
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
                    raise ConfigKeyError(f'{filename}: no model {name!r} is known for {prefix}')
                url = models[name]
                return url if url.startswith(_URL_SCHEMES) else osp.join(
                    mm._get_mmengine_home(), url)
    return filename


def fetch(url: str, hash_prefix: Optional[str] = None) -> str:
    """:func:`download` in a distributed run: rank 0 first, the others after a barrier
    (they find the file in the cache).

    Args:
        url (str): an ``http(s)://`` URL.
        hash_prefix (str, optional): a hex prefix of the file's SHA-256.

    Returns:
        str: the local path.
    """
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
    like a local file.

    Args:
        filename (str): a path, URL or ``torchvision://`` / ``open-mmlab://`` / ``mmcls://``
            name.
        map_location: as for ``torch.load``.

    Returns:
        Any: the loaded checkpoint.
    """
    original, filename = str(filename), _resolve(str(filename))
    if filename.startswith(_URL_SCHEMES):
        filename = fetch(filename)
    checkpoint = load_local(filename, map_location=map_location)
    if original.startswith('mmcls://'):
        from mmengine.runner.checkpoint import _process_mmcls_checkpoint
        checkpoint = _process_mmcls_checkpoint(checkpoint)
    return checkpoint
