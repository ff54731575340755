"""Hostile checkpoints, built from raw pickle opcodes (never by pickling a class), at pickle
protocols 2 and 5, in torch's zip and legacy formats. Each is loaded in a child process through
every load path of ours (compat loader, mmengine's ``_load_checkpoint`` / ``load_checkpoint``,
a backbone ``init_cfg``, tools/convert_checkpoint.py) and plain ``torch.load``. The child must
survive (no signal), the payload must not run (no marker file) and every path must refuse the
file with an error naming the global or the reason. The tools' own paths (load_from,
--resume, tools/test.py) are attacked in tests/test_reliability.py."""
import json
import os
import os.path as osp
import pickle
import re
import struct
import subprocess
import sys
import textwrap
import zipfile

import pytest

from helpers import REPO, TOOLS

# ----------------------------------------------------------------------------- opcodes
MARK, STOP, TUPLE, EMPTY_TUPLE = b'(', b'.', b't', b')'
EMPTY_DICT, EMPTY_LIST, SETITEMS, APPENDS = b'}', b']', b'u', b'e'
REDUCE, BUILD, NEWOBJ, BINPERSID = b'R', b'b', b'\x81', b'Q'
NONE, TRUE, FALSE = b'N', b'\x88', b'\x89'
BINPUT, BINGET = b'q', b'h'


def glob(path):
    module, name = path.rsplit('.', 1)
    return b'c' + module.encode() + b'\n' + name.encode() + b'\n'


def s(text):
    data = text.encode()
    return b'X' + struct.pack('<I', len(data)) + data


def i(n):
    if -2 ** 31 <= n < 2 ** 31:
        return b'J' + struct.pack('<i', n)
    data = n.to_bytes((n.bit_length() + 8) // 8, 'little', signed=True)
    return b'\x8a' + bytes([len(data)]) + data  # LONG1


def tup(*items):
    return MARK + b''.join(items) + TUPLE


def call(path, *args):
    return glob(path) + tup(*args) + REDUCE


def raw(data: bytes):
    """bytes, the way protocol 2 writes them: _codecs.encode(latin-1 text, 'latin1')."""
    return call('_codecs.encode', s(data.decode('latin1')), s('latin1'))


def dict_(**items):
    return EMPTY_DICT + MARK + b''.join(s(k) + v for k, v in items.items()) + SETITEMS


def wrap(body, proto):
    return b'\x80' + bytes([proto]) + body + STOP


HB = 'mmengine.logging.history_buffer.HistoryBuffer'
MA = 'numpy.core.multiarray'


def dtype(code='f8', state=None):
    state = state if state is not None else tup(i(3), s('<'), NONE, NONE, NONE, i(-1), i(-1),
                                                  i(0))
    return call('numpy.dtype', s(code), FALSE, TRUE) + state + BUILD


def array(data: bytes, shape, dt=None, module=MA):
    return (call(f'{module}._reconstruct', glob('numpy.ndarray'), tup(i(0)), raw(b'b'))
            + tup(i(1), tup(*[i(n) for n in shape]), dt or dtype(), FALSE, raw(data)) + BUILD)


def history_buffer(state):
    return glob(HB) + EMPTY_TUPLE + NEWOBJ + state + BUILD


def namespace(state):
    return glob('argparse.Namespace') + EMPTY_TUPLE + NEWOBJ + state + BUILD


def getattr_(owner, name):
    return call('builtins.getattr', owner, s(name))


def storage(key, numel, legacy, kind='torch.FloatStorage'):
    """A persistent storage id: zip format (5 fields) or legacy (6, with view metadata)."""
    fields = [s('storage'), glob(kind), s(key), s('cpu'), i(numel)] + ([NONE] if legacy else [])
    return tup(*fields) + BINPERSID


def tensor(key, numel, size, legacy=False):
    strides = [1]
    for n in reversed(size[1:]):
        strides.insert(0, strides[0] * n)
    return call('torch._utils._rebuild_tensor_v2', storage(key, numel, legacy), i(0),
                tup(*[i(n) for n in size]), tup(*[i(st) for st in strides]), FALSE,
                call('collections.OrderedDict'))


SHELL = "touch {marker}"
GOOD_BUFFER = dict_(max_length=i(10), _log_history=array(b'\0' * 8, (1,)),
                    _count_history=array(b'\0' * 8, (1,), dtype('i8')))

# name -> (pickle body builder taking the marker path, expected words in every error)
ATTACKS = {
    # direct calls: torch's own refusal, through our loader too
    'os.system': (lambda m: call('os.system', s(SHELL.format(marker=m))), 'system'),
    'subprocess': (lambda m: call('subprocess.getoutput', s(SHELL.format(marker=m))),
                   'subprocess.getoutput'),
    # getattr beyond the statistics, on the allowed class and on others
    'getattr __init__': (lambda m: getattr_(glob(HB), '__init__'), "'__init__'"),
    'getattr update': (lambda m: getattr_(glob(HB), 'update'), "'update'"),
    'getattr register_statistics': (lambda m: getattr_(glob(HB), 'register_statistics'),
                                    'register_statistics'),
    'getattr on torch.Tensor': (lambda m: getattr_(glob('torch.Tensor'), 'max'), 'getattr'),
    'getattr chain to globals': (
        lambda m: getattr_(getattr_(getattr_(glob(HB), 'min'), '__globals__'), 'os'),
        'getattr'),
    # the old chain: getattr result called through torch's default-allowed rebuild function
    'rebuild_from_type_v2(getattr result)': (
        lambda m: call('torch._tensor._rebuild_from_type_v2', getattr_(glob(HB), 'min'),
                       glob('torch.Tensor'), tup(s(SHELL.format(marker=m))), dict_()),
        'not callable'),
    'rebuild_from_type_v2(getattr)': (
        lambda m: call('torch._tensor._rebuild_from_type_v2', glob('builtins.getattr'),
                       glob('torch.Tensor'), tup(glob(HB), s('__init__')), dict_()),
        '__init__'),
    'rebuild_from_type_v2(stand-in class) + state': (
        lambda m: call('torch._tensor._rebuild_from_type_v2', glob(HB), glob(HB), tup(),
                       tup(dict_(_statistics_methods=dict_(system=s('x'))), NONE)),
        'HistoryBuffer'),
    'rebuild_device_tensor_from_numpy(forged array)': (
        lambda m: call('torch._utils._rebuild_device_tensor_from_numpy',
                       array(struct.pack('<Q', 0x41414141), (1,), dtype('i8')),
                       glob('torch.float32'), s('cpu'), FALSE),
        'ndarray'),
    'rebuild_tensor_v2 beyond its storage': (lambda m, legacy: tensor('0', 4, (1 << 20,), legacy),
                                             'storage'),
    # BUILD / __setstate__ on every allowed class
    'BUILD HistoryBuffer poisoning': (
        lambda m: history_buffer(dict_(_statistics_methods=dict_(system=s('x')))),
        'HistoryBuffer'),
    'BUILD HistoryBuffer statistics table': (  # mmengine's __setstate__ merges it into the class
        lambda m: history_buffer(dict_(
            max_length=i(10), _log_history=array(b'\0' * 8, (1,)),
            _count_history=array(b'\0' * 8, (1,), dtype('i8')),
            statistics_methods=dict_(update=getattr_(glob(HB), 'min')))),
        'statistics_methods'),
    'BUILD HistoryBuffer slot state': (
        lambda m: history_buffer(tup(dict_(), dict_(__class__=glob('torch.Tensor')))),
        'HistoryBuffer'),
    'BUILD HistoryBuffer twice': (
        lambda m: history_buffer(GOOD_BUFFER) + GOOD_BUFFER + BUILD, 'built twice'),
    'BUILD HistoryBuffer with array interface': (
        lambda m: history_buffer(dict_(max_length=i(10), _log_history=dict_(
            __array_interface__=dict_(data=tup(i(0x41414141), FALSE), shape=tup(i(4)),
                                      typestr=s('<f8'), version=i(3))),
            _count_history=array(b'\0' * 8, (1,), dtype('i8')))),
        'HistoryBuffer'),
    'BUILD dtype forged flags': (
        lambda m: dtype('f8', tup(i(3), s('<'), NONE, NONE, NONE, i(-1), i(-1), i(0x3f))),
        'forged'),
    'BUILD dtype with fields': (
        lambda m: dtype('f8', tup(i(3), s('|'), NONE, tup(s('a')), dict_(a=tup(dtype('O'), i(0))),
                                  i(8), i(1), i(0x3f))), 'dtype'),
    'BUILD ndarray twice': (
        lambda m: array(b'\0' * 8, (1,)) + tup(i(1), tup(i(1)), dtype('O'), FALSE,
                                                raw(b'\0' * 8)) + BUILD, 'built twice'),
    'BUILD getattr record': (
        lambda m: getattr_(glob(HB), 'min') + dict_(args=tup(s('__init__'))) + BUILD,
        'StatisticRecord'),
    'BUILD Namespace with __class__': (
        lambda m: namespace(dict_(__class__=glob('torch.Tensor'))), 'plain attribute names'),
    'BUILD Namespace twice': (
        lambda m: namespace(dict_(a=i(1))) + dict_(__class__=glob('torch.Tensor')) + BUILD,
        'built twice'),
    'BUILD Namespace with a getattr value': (
        lambda m: namespace(dict_(a=getattr_(glob(HB), 'update'))), "'update'"),
    'NEWOBJ ndarray with args': (
        lambda m: glob('numpy.ndarray') + tup(i(1 << 40)) + NEWOBJ, 'array'),
    # NumPy: object, void and forged dtypes; bytes that do not match the shape
    'object dtype': (lambda m: array(struct.pack('<Q', 0x41414141), (1,), dtype('O')), "'O'"),
    'object dtype via numpy._core': (
        lambda m: array(struct.pack('<Q', 0x41414141), (1,), dtype('O'), 'numpy._core.multiarray'),
        "'O'"),
    'void dtype': (lambda m: array(b'\0' * 8, (1,), dtype('V8')), "'V8'"),
    'object scalar': (lambda m: call(f'{MA}.scalar', dtype('O'), raw(struct.pack('<Q', 1))),
                      "'O'"),
    'scalar of wrong size': (lambda m: call(f'{MA}.scalar', dtype('f8'), raw(b'\0' * 3)),
                             '8 bytes'),
    'array shorter than its shape': (lambda m: array(b'\0' * 8, (1000, 1000)), 'needs'),
    'array of a subclass': (
        lambda m: call(f'{MA}._reconstruct', glob('numpy.dtype'), tup(i(0)), raw(b'b')),
        'only plain arrays'),
    'unbuilt array': (
        lambda m: call(f'{MA}._reconstruct', glob('numpy.ndarray'), tup(i(0)), raw(b'b')),
        'state layout'),
    # absurd declared sizes
    'storage far larger than the file': (
        lambda m, legacy: tensor('0', 1 << 40, (1 << 40,), legacy), 'declare'),
}


def write_zip(path, data_pkl, storages=None):
    with zipfile.ZipFile(path, 'w', zipfile.ZIP_STORED) as archive:
        archive.writestr('archive/data.pkl', data_pkl)
        archive.writestr('archive/byteorder', 'little')
        for key, data in (storages or {}).items():
            archive.writestr(f'archive/data/{key}', data)
        archive.writestr('archive/version', '3\n')


def write_legacy(path, data_pkl, storages=None):
    storages = storages or {}
    header = b''.join(pickle.dumps(x, protocol=2) for x in (
        0x1950a86a20f9469cfc6c, 1001,
        dict(protocol_version=1001, little_endian=True, type_sizes=dict(short=2, int=4,
                                                                         long=4))))
    body = pickle.dumps(sorted(storages), protocol=2)
    for key in sorted(storages):
        body += struct.pack('<q', len(storages[key]) // 4) + storages[key]
    with open(path, 'wb') as f:
        f.write(header + data_pkl + body)


def hostile_file(tmp_path, name, proto, fmt, marker):
    build, _ = ATTACKS[name]
    legacy = fmt == 'legacy'
    uses_storage = build.__code__.co_argcount == 2  # builders that take the format
    payload = dict_(state_dict=dict_(), meta=build(marker, legacy) if uses_storage
                    else build(marker))
    path = tmp_path / f'{fmt}-p{proto}.pth'
    write = write_legacy if legacy else write_zip
    write(str(path), wrap(payload, proto), {'0': b'\0' * 16} if uses_storage else {})
    return str(path)


CHILD = textwrap.dedent('''
    import json, sys
    import torch
    import convnext_dense
    from convnext_dense.compat import load_checkpoint
    from convnext_dense.checkpoint import io as sc
    from mmengine.runner.checkpoint import _load_checkpoint, load_checkpoint as mm_load
    from convnext_dense.models import ConvNeXt
    sys.path.insert(0, sys.argv[1])
    import convert_checkpoint
    paths = sys.argv[2:]
    attempts = {
        'compat loader': lambda p: load_checkpoint(p),
        'mmengine _load_checkpoint': lambda p: _load_checkpoint(p, map_location='cpu'),
        'mmengine load_checkpoint': lambda p: mm_load(torch.nn.Linear(1, 1), p),
        'backbone init_cfg': lambda p: ConvNeXt('v2-atto', init_cfg=dict(
            type='Pretrained', checkpoint=p)).init_weights(),
        'tools/convert_checkpoint.py': lambda p: convert_checkpoint.main([p, p + '.out']),
        'plain torch.load': lambda p: torch.load(p),
    }
    results = {}
    for path in paths:
        for how, attempt in attempts.items():
            try:
                attempt(path)
                outcome = 'LOADED'
            except SystemExit as error:
                outcome = f'SystemExit: {error}'
            except BaseException as error:
                outcome = f'{type(error).__name__}: {error}'
            results[f'{path} | {how}'] = outcome
    results['statistics unchanged'] = sorted(sc.HISTORY_STATISTICS)
    print('RESULTS' + json.dumps(results))
''')


def run_child(paths, script=CHILD, timeout=300, preexec_fn=None):
    """Run ``script`` on ``paths`` in a child process; its RESULTS line as a dict. The child
    must neither die of a signal nor fail."""
    result = subprocess.run([sys.executable, '-c', script, TOOLS, *paths], cwd=REPO,
                            capture_output=True, text=True, timeout=timeout,
                            preexec_fn=preexec_fn, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert result.returncode >= 0, f'child killed by signal {-result.returncode}:\n' \
                                   f'{result.stderr[-3000:]}'
    assert result.returncode == 0, result.stderr[-3000:]
    line = [x for x in result.stdout.splitlines() if x.startswith('RESULTS')][-1]
    return json.loads(line[len('RESULTS'):])


GROUPS = {  # one child process per group
    'calls': ['os.system', 'subprocess'],
    'getattr': [n for n in ATTACKS if n.startswith('getattr')],
    'rebuild chains': [n for n in ATTACKS if n.startswith('rebuild')],
    'BUILD and NEWOBJ': [n for n in ATTACKS if n.startswith(('BUILD', 'NEWOBJ'))],
    'numpy': ['object dtype', 'object dtype via numpy._core', 'void dtype', 'object scalar',
              'scalar of wrong size', 'array shorter than its shape', 'array of a subclass',
              'unbuilt array'],
    'sizes': ['storage far larger than the file'],
}


def test_groups_cover_every_attack():
    assert sorted(n for names in GROUPS.values() for n in names) == sorted(ATTACKS)


@pytest.mark.parametrize('group', list(GROUPS))
def test_hostile_files_are_refused_on_every_path(tmp_path, group):
    marker = tmp_path / 'pwned'
    files = {}
    for k, name in enumerate(GROUPS[group]):
        folder = tmp_path / str(k)
        folder.mkdir()
        for proto in (2, 5):
            for fmt in ('zip', 'legacy'):
                files[hostile_file(folder, name, proto, fmt, marker)] = name
    results = run_child(list(files))
    assert not marker.exists(), f'{group}: a payload ran'
    assert results.pop('statistics unchanged') == ['current', 'max', 'mean', 'min']
    assert len(results) == 6 * len(files)
    for where, outcome in results.items():
        name = files[where.split(' | ')[0]]
        assert outcome != 'LOADED', f'{name}: {where} loaded the file'
        if 'plain torch.load' in where or 'convert' in where:
            continue  # torch's own message; the tool prints ours on stderr (exit 2)
        assert ATTACKS[name][1] in outcome, f'{name}: {where}: {outcome}'
        assert 'CONVNEXT_DENSE_TRUST_CHECKPOINTS' in outcome or 'damaged' in outcome, outcome
    for path in files:
        assert not osp.exists(path + '.out')


def test_poisoning_does_not_outlive_the_file(tmp_path):
    """A poisoning attempt, then reads beyond the statistics, then a good file, in one
    process: every hostile file refused, the good one loads, the constants unchanged."""
    marker = tmp_path / 'pwned'
    order = ['BUILD HistoryBuffer statistics table', 'BUILD HistoryBuffer poisoning',
             'rebuild_from_type_v2(stand-in class) + state',
             'getattr update', 'getattr chain to globals', 'rebuild_from_type_v2(getattr result)']
    paths = []
    for k, name in enumerate(order):
        folder = tmp_path / str(k)
        folder.mkdir()
        paths.append(hostile_file(folder, name, 2, 'zip', marker))
    good = tmp_path / 'good.pth'
    write_zip(str(good), wrap(dict_(meta=dict_(buffer=history_buffer(GOOD_BUFFER),
                                               stat=getattr_(glob(HB), 'mean'))), 2))
    results = run_child(paths + [str(good)])
    assert not marker.exists()
    for path in paths:
        assert results[f'{path} | compat loader'] != 'LOADED'
    assert results[f'{good} | compat loader'] == 'LOADED'
    assert results[f'{good} | mmengine _load_checkpoint'] == 'LOADED'


def test_raw_built_good_file_loads_with_real_types(tmp_path):
    """The same builders, used benignly, give a file our loader reads: the suite's files are
    refused for what they carry, not for how they are written."""
    from mmengine.logging import HistoryBuffer

    from convnext_dense.compat import load_checkpoint
    for proto in (2, 5):
        for fmt, write in (('zip', write_zip), ('legacy', write_legacy)):
            path = str(tmp_path / f'{fmt}{proto}.pth')
            write(path, wrap(dict_(
                w=tensor('0', 4, (2, 2), fmt == 'legacy'), buffer=history_buffer(GOOD_BUFFER),
                stat=getattr_(glob(HB), 'max'), mean=array(struct.pack('<3d', 1, 2, 3), (3,)),
                seed=call(f'{MA}.scalar', dtype('i8'), raw(struct.pack('<q', 7)))), proto),
                {'0': struct.pack('<4f', 1, 2, 3, 4)})
            loaded = load_checkpoint(path)
            assert loaded['w'].tolist() == [[1., 2.], [3., 4.]]
            assert type(loaded['buffer']) is HistoryBuffer and loaded['buffer'].current() == 0
            assert loaded['stat'] is HistoryBuffer.max
            assert loaded['mean'].tolist() == [1., 2., 3.] and loaded['seed'] == 7


def test_payload_served_over_http_is_refused(tmp_path, monkeypatch):
    """A hostile file at an http:// URL on 127.0.0.1 is downloaded to the cache and refused
    by the same loader; its payload never runs."""
    from test_safe_checkpoint import _Server

    import torch

    from convnext_dense.compat import UnsafeCheckpointError, load_checkpoint
    marker = tmp_path / 'pwned'
    monkeypatch.setattr(torch.hub, '_hub_dir', str(tmp_path / 'hub'))
    for name in ('os.system', 'getattr chain to globals', 'object dtype'):
        path = hostile_file(tmp_path, name, 2, 'zip', marker)
        with open(path, 'rb') as f:
            server = _Server({'evil.pth': f.read()})
        try:
            with pytest.raises(UnsafeCheckpointError, match=ATTACKS[name][1]):
                load_checkpoint(f'{server.url}/evil.pth')
        finally:
            server.close()
        cached = tmp_path / 'hub' / 'checkpoints' / 'convnext_dense'
        assert len(os.listdir(cached)) == 1
        for entry in os.listdir(cached):  # the next attack is served under the same URL
            os.remove(cached / entry)
    assert not marker.exists()


# ----------------------------------------------------------------------------- round 2
# Attacks that crash or exhaust the process rather than run code. Each file is loaded through
# every path in a child process with its address space capped (RLIMIT_AS) and a timeout; the
# child reports per path the outcome and seconds, and its peak memory above what imports took.
MEMORY_CAP = 4 << 30

BOUNDED_CHILD = textwrap.dedent('''
    import json, resource, sys, time
    import torch
    import convnext_dense
    from convnext_dense.compat import load_checkpoint
    from mmengine.runner.checkpoint import _load_checkpoint
    from convnext_dense.models import ConvNeXt
    sys.path.insert(0, sys.argv[1])
    import convert_checkpoint
    path = sys.argv[2]
    attempts = {
        'compat loader': lambda: load_checkpoint(path),
        'mmengine _load_checkpoint': lambda: _load_checkpoint(path, map_location='cpu'),
        'backbone init_cfg': lambda: ConvNeXt('v2-atto', init_cfg=dict(
            type='Pretrained', checkpoint=path)).init_weights(),
        'tools/convert_checkpoint.py': lambda: convert_checkpoint.main([path, path + '.out']),
    }
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    results = {}
    for how, attempt in attempts.items():
        start = time.perf_counter()
        try:
            attempt()
            outcome = 'LOADED'
        except SystemExit as error:
            outcome = f'SystemExit: {error}'
        except BaseException as error:
            outcome = f'{type(error).__name__}: {str(error)[:3000]}'
        results[how] = dict(outcome=outcome, seconds=time.perf_counter() - start)
    results['peak MiB over imports'] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                        - base) / 1024
    print('RESULTS' + json.dumps(results))
''')


def _cap_memory():
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def run_bounded_child(path):
    return run_child([path], BOUNDED_CHILD, timeout=240, preexec_fn=_cap_memory)


def nested_tuple_key(m):
    """About 100 KB of nested 1-tuples used as a dict key: hashing it overflows the C stack."""
    return EMPTY_DICT + i(1) + b'\x85' * 100_000 + i(2) + b's'  # TUPLE1 ..., SETITEM


def dag(levels, leaf=None):
    """A tuple DAG: each level is (x, x) of the one below, through the memo (5 bytes a level);
    its printed or hashed form doubles per level."""
    return (leaf or i(1)) + (BINPUT + b'\0' + BINGET + b'\0' + b'\x86') * levels  # TUPLE2


def dag_key(m):
    return EMPTY_DICT + dag(60) + i(2) + b's'


def stride_zero_kernel(m):
    """An FCMAE sparse kernel: 4 bytes of storage viewed with stride 0 at shape (49, 2**24)."""
    kernel = call('torch._utils._rebuild_tensor_v2', storage('0', 1, False), i(0),
                  tup(i(49), i(1 << 24)), tup(i(0), i(0)), FALSE, call('collections.OrderedDict'))
    return dict_(model=dict_(**{'encoder.stages.0.0.dwconv.kernel': kernel}))


def ordered_dict_state(m):
    """An OrderedDict whose BUILD state (``_metadata``) holds an object array."""
    return dict_(state_dict=call('collections.OrderedDict') + dict_(
        _metadata=array(struct.pack('<Q', 0x41414141), (1,), dtype('O'))) + BUILD)


# name -> (payload builder, regex every refusal must match, format)
ROUND2 = {
    'nested tuple as a dict key': (nested_tuple_key, 'nested deeper', 'zip'),
    'tuple DAG as a dict key': (dag_key, 'dictionary key|pickle bomb', 'zip'),
    'tuple DAG printed in a message': (lambda m: dict_(meta=dag(60) + BINPERSID),
                                       'pickle bomb', 'zip'),
    'bytearray(3 GiB)': (lambda m: dict_(meta=call('builtins.bytearray', i(3 << 30))),
                         'bytearray', 'zip'),
    'quadratic punycode': (lambda m: dict_(meta=call('_codecs.encode', s(''.join(
        chr(0x4e00 + (k * 7919) % 20000) for k in range(20_000))), s('punycode'))),
        '_codecs.encode', 'zip'),
    'dtype record as a dict key': (lambda m: EMPTY_DICT + dtype('f8') + i(1) + b's',
                                   'dictionary key', 'zip'),
    'OrderedDict BUILD state with an object array': (ordered_dict_state, "'O'", 'zip'),
    'stride-0 FCMAE kernel': (stride_zero_kernel, 'views', 'zip'),
    'legacy: stride-0 kernel': (stride_zero_kernel, 'views', 'legacy'),
}


def round2_file(tmp_path, name, marker):
    build, _, fmt = ROUND2[name]
    path = tmp_path / f'{fmt}.pth'
    write = write_legacy if fmt == 'legacy' else write_zip
    write(str(path), wrap(build(marker), 2), {'0': b'\0' * 4})
    return str(path)


@pytest.mark.parametrize('name', list(ROUND2))
def test_small_files_cannot_crash_or_exhaust_the_process(tmp_path, name):
    marker = tmp_path / 'pwned'
    path = round2_file(tmp_path, name, marker)
    size = osp.getsize(path)
    results = run_bounded_child(path)
    peak = results.pop('peak MiB over imports')
    for how, result in results.items():
        assert result['outcome'] != 'LOADED', f'{name}: {how} loaded the file'
        if 'convert' not in how:  # the tool prints the same message and exits 2
            assert re.search(ROUND2[name][1], result['outcome']), (name, how, result)
        assert result['seconds'] < 5, (name, how, result)
    # memory in proportion to the file (it is at most 200 KB), not to what it declares
    assert peak < 64 + 64 * size / 2 ** 20, (name, peak, size)
    assert not marker.exists() and not osp.exists(path + '.out')


def test_messages_name_no_object_the_file_built(tmp_path):
    """A persistent id, a dtype and a getattr owner built as a DAG or a huge string are named
    by type or cut short, never printed whole."""
    from convnext_dense.compat import UnsafeCheckpointError, load_checkpoint
    long_text = 'A' * 100_000
    for body in (dict_(meta=tup(s(long_text), s('x')) + BINPERSID),
                 dict_(meta=call('numpy.dtype', s(long_text), FALSE, TRUE)),
                 dict_(meta=getattr_(glob(HB), long_text))):
        path = tmp_path / 'file.pth'
        write_zip(str(path), wrap(body, 2))
        with pytest.raises(UnsafeCheckpointError) as error:
            load_checkpoint(str(path))
        assert len(str(error.value)) < 1000, str(error.value)[:300]


# ----------------------------------------------------------------------------- raw zips
def raw_zip(records, second_directory=None):
    """A zip file written byte by byte: ``records`` is a list of (name, stored bytes, method,
    uncompressed size). With ``second_directory`` (same names, other methods and sizes), a
    second central directory of the same length precedes the end record, which points at the
    first by its offset field while its size field makes Python's zipfile, which locates the
    directory as 'end record position - size', read the second."""
    out, directory = b'', []
    for name, data, method, size, crc in records:
        header = struct.pack('<IHHHHHIIIHH', 0x04034b50, 20, 0, method, 0, 0, crc, len(data),
                             size, len(name), 0) + name.encode()
        directory.append((name, method, crc, len(data), size, len(out)))
        out += header + data

    def central(entries):
        block = b''
        for name, method, crc, csize, size, offset in entries:
            block += struct.pack('<IHHHHHHIIIHHHHHII', 0x02014b50, 20, 20, 0, method, 0, 0, crc,
                                 csize, size, len(name), 0, 0, 0, 0, 0, offset) + name.encode()
        return block

    first = central(directory)
    cd_offset = len(out)
    out += first
    if second_directory is not None:
        out += central([(n, m, c, cs, sz, off) for (n, _, _, _, _, off), (m, c, cs, sz) in
                        zip(directory, second_directory)])
    out += struct.pack('<IHHHHIIH', 0x06054b50, 0, 0, len(directory), len(directory),
                       len(first), cd_offset, 0)
    return out


def test_zip_whose_readers_disagree_cannot_inflate(tmp_path):
    """torch's zip reader follows the end record's offset to a directory of deflated records
    (64 MiB of zeros in 64 KB); Python's zipfile finds a second, harmless directory. The
    directory is read as torch's reader finds it, and a file where the two rules point to
    different places is refused before anything inflates."""
    import zlib
    pickled = wrap(dict_(w=call('torch._utils._rebuild_tensor_v2', storage('0', 1 << 24, False),
                                i(0), tup(i(1 << 24)), tup(i(1)), FALSE,
                                call('collections.OrderedDict'))), 2)
    big = b'\0' * (64 << 20)
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    deflated = packer.compress(big) + packer.flush()
    crc_big = zlib.crc32(big)
    records = [('archive/data.pkl', pickled, 0, len(pickled), zlib.crc32(pickled)),
               ('archive/byteorder', b'little', 0, 6, zlib.crc32(b'little')),
               ('archive/data/0', deflated, 8, len(big), crc_big),
               ('archive/version', b'3\n', 0, 2, zlib.crc32(b'3\n'))]
    harmless = [(0, zlib.crc32(pickled), len(pickled), len(pickled)),
                (0, zlib.crc32(b'little'), 6, 6),
                (0, zlib.crc32(deflated), len(deflated), len(deflated)),
                (0, zlib.crc32(b'3\n'), 2, 2)]
    path = tmp_path / 'two-directories.pth'
    path.write_bytes(raw_zip(records, second_directory=harmless))
    # the two readers do see different records
    with zipfile.ZipFile(path) as archive:
        assert archive.getinfo('archive/data/0').compress_type == zipfile.ZIP_STORED
    import torch
    reader = torch._C.PyTorchFileReader(str(path))
    assert reader.get_record_size('data/0') == 64 << 20
    results = run_bounded_child(str(path))
    peak = results.pop('peak MiB over imports')
    for how, result in results.items():
        assert result['outcome'] != 'LOADED', how
        if 'convert' not in how:
            assert 'central directory' in result['outcome'], (how, result)
    assert peak < 48, peak  # the 64 MiB record was never inflated


@pytest.mark.parametrize('body, reason', [
    (call('builtins.set', EMPTY_LIST + MARK + tup(tup(i(1))) + APPENDS),
     r'set\(\) called with other than one list of constants'),
    (call('collections.Counter', EMPTY_LIST + MARK + i(1) + APPENDS),
     'collections.Counter called with other than one dict'),
    (call('collections.OrderedDict') + EMPTY_LIST + MARK + tup(i(1), i(1)) + APPENDS + BUILD,
     'BUILD of collections.OrderedDict with a list, not a dict'),
], ids=['set of nested tuples', 'Counter of a list', 'OrderedDict BUILD with a list of pairs'])
def test_other_ways_to_hash_what_the_file_built_are_refused(tmp_path, body, reason):
    """set(list), Counter(list) and an OrderedDict's BUILD with a list hash what they are given,
    as a dict key would be: only constants may be hashed (depth and size bounds apart)."""
    from convnext_dense.compat import UnsafeCheckpointError, load_checkpoint
    path = tmp_path / 'file.pth'
    write_zip(str(path), wrap(dict_(meta=body), 2))
    with pytest.raises(UnsafeCheckpointError, match=reason):
        load_checkpoint(str(path))
