"""convnext_dense.checkpoint.io: what a weights-only load gives back, the trust opt-in,
the scoped allow-list and the download path (hostile files: tests/test_checkpoint_attacks.py)."""
import hashlib
import http.server
import json
import os
import re
import pickle
import struct
import threading

import numpy as np
import pytest
import torch
from torch import nn

import convnext_dense  # noqa: F401  (registers the loader for mmengine's schemes)
from convnext_dense.checkpoint import io as sc


class TinyModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 2)


def mmengine_style_checkpoint():
    """What mmengine's Runner writes: meta with NumPy values, MessageHub, optimizer state."""
    from mmengine.logging import MessageHub
    model = TinyModel()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.linear.weight.sum().backward()
    optimizer.step()
    hub = MessageHub('safe-checkpoint-test')
    for step in range(3):
        hub.update_scalar('train/loss', 1.0 / (step + 1))
        hub.update_scalar('train/lr', np.float64(1e-3))
    hub.update_info('iter', 3)
    hub.update_info('rng', np.random.RandomState(3).get_state())
    return {'meta': {'epoch': 1, 'iter': 3, 'seed': np.int64(42), 'flag': np.bool_(True),
                     'mean': np.array([123.675, 116.28, 103.53]),
                     'big_endian': np.arange(6, dtype='>i4').reshape(2, 3),
                     'fortran': np.asfortranarray(np.arange(6.).reshape(2, 3)),
                     'dataset_meta': {'classes': ('a', 'b')}},
            'state_dict': model.state_dict(), 'optimizer': optimizer.state_dict(),
            'message_hub': hub.state_dict()}


def test_runner_checkpoint_comes_back_equal(tmp_path):
    """Everything a resume needs is rebuilt, equal to what was saved, with the real types."""
    from mmengine.logging import HistoryBuffer, MessageHub
    from mmengine.runner.checkpoint import _load_checkpoint, save_checkpoint
    original = mmengine_style_checkpoint()
    path = str(tmp_path / 'epoch_1.pth')
    save_checkpoint(original, path)
    loaded = _load_checkpoint(path, map_location='cpu')
    meta = loaded['meta']
    assert meta['seed'] == 42 and type(meta['seed']) is np.int64
    assert type(meta['flag']) is np.bool_ and meta['flag']
    for key in ('mean', 'big_endian', 'fortran'):
        assert type(meta[key]) is np.ndarray and meta[key].dtype == original['meta'][key].dtype
        np.testing.assert_array_equal(meta[key], original['meta'][key])
    assert meta['fortran'].flags.f_contiguous and meta['big_endian'].dtype.byteorder == '>'
    for key, value in original['state_dict'].items():
        assert torch.equal(loaded['state_dict'][key], value)
    assert loaded['optimizer']['state'][0]['step'] == original['optimizer']['state'][0]['step']
    hub = MessageHub('resumed')
    hub.load_state_dict(loaded['message_hub'])
    buffer = hub.log_scalars['train/loss']
    assert type(buffer) is HistoryBuffer
    assert buffer.mean() == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)
    assert buffer.current() == pytest.approx(1 / 3)
    assert buffer.max_length == original['message_hub']['log_scalars']['train/loss'].max_length
    saved_rng, got_rng = original['message_hub']['runtime_info']['rng'], \
        loaded['message_hub']['runtime_info']['rng']
    assert got_rng[0] == saved_rng[0] and got_rng[2:] == saved_rng[2:]
    np.testing.assert_array_equal(got_rng[1], saved_rng[1])


def test_statistic_references_come_back_as_the_functions():
    """mmengine pickles references to HistoryBuffer's statistics as getattr calls."""
    from mmengine.logging import HistoryBuffer
    record = sc._history_statistic(sc._HistoryBufferRecord, 'max')
    assert sc._materialise([record])[0] is HistoryBuffer.max


def test_allow_list_is_scoped_to_our_loads(tmp_path):
    """Plain torch.load in the same process does not inherit our allow-list."""
    path = str(tmp_path / 'ckpt.pth')
    torch.save(mmengine_style_checkpoint(), path)
    before = set(torch.serialization.get_safe_globals())  # a set in torch: order is arbitrary
    assert sc.load_checkpoint(path)['meta']['iter'] == 3
    assert set(torch.serialization.get_safe_globals()) == before
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)  # torch's own refusal, as without us


class Harmless:
    def __init__(self):
        self.value = 7


def test_trusted_file_loads_only_with_explicit_opt_in(tmp_path, monkeypatch):
    from mmengine.logging import MMLogger
    from mmengine.runner.checkpoint import _load_checkpoint
    path = str(tmp_path / 'custom.pth')
    torch.save({'meta': Harmless()}, path)
    with pytest.raises(sc.UnsafeCheckpointError, match=r'test_safe_checkpoint\.Harmless.*' +
                       sc.TRUST_ENV):
        _load_checkpoint(path, map_location='cpu')
    monkeypatch.setenv(sc.TRUST_ENV, '1')
    logger = MMLogger.get_instance('trust-test', log_file=str(tmp_path / 'log.txt'))
    MMLogger._instance_dict.move_to_end('trust-test')  # 'current'
    assert _load_checkpoint(path, map_location='cpu')['meta'].value == 7
    for handler in logger.handlers:
        handler.flush()
    assert f'loading {path} with full pickle' in (tmp_path / 'log.txt').read_text()
    monkeypatch.setenv(sc.TRUST_ENV, '0')  # read at every load
    with pytest.raises(sc.UnsafeCheckpointError):
        _load_checkpoint(path, map_location='cpu')


@pytest.mark.parametrize('legacy', [False, True], ids=['zip', 'legacy'])
def test_truncated_checkpoint_is_reported_as_damaged(tmp_path, legacy):
    """Cut anywhere, a checkpoint is DamagedCheckpointError naming the file, never 'unsafe',
    and the message does not suggest trusting it (that would not help)."""
    path = tmp_path / 'epoch_1.pth'
    torch.save(mmengine_style_checkpoint(), str(path),
               _use_new_zipfile_serialization=not legacy)
    whole = path.read_bytes()
    for keep in (len(whole) - 300, len(whole) // 2, len(whole) // 10, 3):
        path.write_bytes(whole[:keep])
        with pytest.raises(sc.DamagedCheckpointError, match=re.escape(str(path))) as error:
            sc.load_checkpoint(str(path))
        assert sc.TRUST_ENV not in str(error.value), (keep, str(error.value))


def test_legacy_format_loads(tmp_path):
    path = str(tmp_path / 'legacy.pth')
    torch.save({'w': torch.arange(5.), 'meta': {'seed': np.int64(3)}}, path,
               _use_new_zipfile_serialization=False)
    loaded = sc.load_checkpoint(path)
    assert loaded['w'].tolist() == [0., 1., 2., 3., 4.] and loaded['meta']['seed'] == 3


# ----------------------------------------------------------------------------- downloads
class _Server:
    """A threaded HTTP server on 127.0.0.1 serving ``files`` (name -> bytes); ``truncate``
    names files sent with a Content-Length larger than the body."""

    def __init__(self, files, truncate=()):
        files, truncate = dict(files), set(truncate)

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = files.get(self.path.lstrip('/'))
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header('Content-Length', str(len(body) * (2 if self.path.lstrip('/')
                                                                    in truncate else 1)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.url = f'http://127.0.0.1:{self.httpd.server_address[1]}'
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, '_hub_dir', str(tmp_path / 'hub'))
    return tmp_path / 'hub' / 'checkpoints' / 'convnext_dense'


def cache_name(url):
    """What the cache calls ``url``: scheme, host and path parts joined by ``--``."""
    from urllib.parse import quote, urlparse
    parsed = urlparse(url)
    parts = [parsed.scheme, parsed.netloc] + [p for p in parsed.path.split('/') if p]
    return '--'.join(quote(p, safe='').replace('-', '%2D') for p in parts)


def _checkpoint_bytes(tmp_path):
    path = tmp_path / 'src.pth'
    torch.save({'state_dict': {'w': torch.arange(4.)}, 'meta': {'seed': np.int64(1)}},
               str(path))
    return path.read_bytes()


def test_url_is_downloaded_once_into_the_hub_cache(tmp_path, hub_dir):
    from mmengine.runner.checkpoint import _load_checkpoint
    body = _checkpoint_bytes(tmp_path)
    digest = hashlib.sha256(body).hexdigest()
    name = f'weights-{digest[:8]}.pth'
    server = _Server({name: body})
    try:
        loaded = _load_checkpoint(f'{server.url}/{name}', map_location='cpu')
    finally:
        server.close()
    assert loaded['state_dict']['w'].tolist() == [0., 1., 2., 3.]
    assert os.listdir(hub_dir) == [cache_name(f'{server.url}/{name}')]
    # the server is gone: the cached copy is used
    assert _load_checkpoint(f'{server.url}/{name}')['meta']['seed'] == 1


@pytest.mark.parametrize('failure', ['server gone', 'truncated', 'wrong hash', 'not found'])
def test_failed_download_leaves_no_file(tmp_path, hub_dir, failure):
    body = _checkpoint_bytes(tmp_path)
    name = 'weights-0123abcd.pth' if failure == 'wrong hash' else 'weights.pth'
    server = _Server({name: body}, truncate=[name] if failure == 'truncated' else [])
    url = f'{server.url}/{"missing.pth" if failure == "not found" else name}'
    if failure == 'server gone':
        server.close()
    try:
        with pytest.raises((OSError, sc.UnsafeCheckpointError), match=r'download|SHA-256'):
            sc.load_checkpoint(url)
    finally:
        if failure != 'server gone':
            server.close()
    assert not hub_dir.exists() or os.listdir(hub_dir) == []


def test_named_schemes_resolve_to_urls_through_the_same_loader(tmp_path, monkeypatch,
                                                                 hub_dir):
    from mmengine.runner import checkpoint as mm
    body = _checkpoint_bytes(tmp_path)
    server = _Server({'tv.pth': body})
    monkeypatch.setattr(mm, 'get_torchvision_models', lambda: {'tiny': f'{server.url}/tv.pth'})
    try:
        assert mm._load_checkpoint('torchvision://tiny')['meta']['seed'] == 1
    finally:
        server.close()
    with pytest.raises(KeyError, match='no model'):
        mm._load_checkpoint('torchvision://no-such-model')


def test_backbone_init_cfg_downloads_checks_the_hash_and_loads(tmp_path, hub_dir):
    """A config's init_cfg URL: downloaded once, SHA-256 checked, weights equal the served
    ones; a wrong sha256 is refused and leaves nothing in the cache."""
    from convnext_dense.models import ConvNeXt
    source = ConvNeXt('v2-atto')
    with torch.no_grad():
        for k, p in enumerate(source.parameters()):
            p.copy_(torch.randn_like(p) + k)
    path = tmp_path / 'official.pth'
    torch.save({'model': source.state_dict()}, str(path))
    body = path.read_bytes()
    digest = hashlib.sha256(body).hexdigest()
    server = _Server({'convnext_atto.pth': body})
    url = f'{server.url}/convnext_atto.pth'
    try:
        with pytest.raises(sc.UnsafeCheckpointError, match='SHA-256'):
            ConvNeXt('v2-atto', init_cfg=dict(type='Pretrained', checkpoint=url,
                                              sha256='00000000')).init_weights()
        assert not hub_dir.exists() or os.listdir(hub_dir) == []
        model = ConvNeXt('v2-atto', init_cfg=dict(type='Pretrained', checkpoint=url,
                                                  sha256=digest[:12]))
        model.init_weights()
    finally:
        server.close()
    assert os.listdir(hub_dir) == [cache_name(url)]
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_process_wide_numpy_allow_list_does_not_reach_our_loads(tmp_path):
    """Code elsewhere that allows NumPy's real objects process-wide does not weaken our loads:
    an object-dtype array is still refused, and that code's list is restored afterwards."""
    from test_checkpoint_attacks import ATTACKS, hostile_file
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:
        from numpy.core.multiarray import _reconstruct
    theirs = [np.dtype, np.ndarray, (_reconstruct, 'numpy.core.multiarray._reconstruct')]
    path = hostile_file(tmp_path, 'object dtype', 2, 'zip', tmp_path / 'marker')
    torch.serialization.add_safe_globals(theirs)
    try:
        with pytest.raises(sc.UnsafeCheckpointError, match=ATTACKS['object dtype'][1]):
            sc.load_checkpoint(path)
        assert set(theirs) <= set(torch.serialization.get_safe_globals())
    finally:
        torch._weights_only_unpickler._remove_safe_globals(theirs)


def test_training_script_args_namespace_loads_as_a_namespace(tmp_path):
    """ImageNet training scripts (ConvNeXt, ConvNeXt-V2, DeiT) save ``args``, an
    argparse.Namespace, beside the weights: it loads, with its values, and the backbone's
    init_cfg takes the weights of such a file."""
    import argparse

    from convnext_dense.models import ConvNeXt
    source = ConvNeXt(dict(depths=[1, 1, 1, 1], dims=[8, 16, 24, 32]))
    args = argparse.Namespace(model='convnextv2_atto', lr=2e-4, betas=None, input_size=224,
                              layer_decay=0.9, mean=np.float64(0.5), nested={'a': [1, 2]})
    path = str(tmp_path / 'checkpoint-best.pth')
    torch.save({'model': source.state_dict(), 'epoch': 299, 'args': args}, path)
    loaded = sc.load_checkpoint(path)
    assert type(loaded['args']) is argparse.Namespace
    assert vars(loaded['args']) == vars(args) and type(loaded['args'].mean) is np.float64
    target = ConvNeXt(dict(depths=[1, 1, 1, 1], dims=[8, 16, 24, 32]),
                      init_cfg=dict(type='Pretrained', checkpoint=path))
    target.init_weights()
    assert torch.equal(target.stages[3][0].pwconv2.weight, source.stages[3][0].pwconv2.weight)


class _CraftedNamespace:
    """Pickles as ``argparse.Namespace()`` followed by BUILD with ``state``."""

    def __init__(self, state):
        self.state = state

    def __reduce__(self):
        import argparse
        return argparse.Namespace, (), self.state


@pytest.mark.parametrize('state', [{'__class__': 1}, {'__dict__': {}}, {1: 'x'},
                                   {'not an identifier': 1}, ['model', 'x']])
def test_namespace_with_other_than_plain_attributes_is_refused(tmp_path, state):
    path = str(tmp_path / 'crafted.pth')
    torch.save({'args': _CraftedNamespace(state)}, path)
    with pytest.raises(sc.UnsafeCheckpointError, match='plain attribute names'):
        sc.load_checkpoint(path)


# ----------------------------------------------------------------------------- safetensors
def safetensors_file(path, tensors, header_edit=None):
    """Write ``tensors`` in the safetensors format; ``header_edit(header)`` may corrupt the
    JSON header (a dict) before it is written, the data bytes staying as they were."""
    from safetensors.torch import save_file
    save_file(tensors, str(path), metadata={'format': 'pt'})
    if header_edit is not None:
        raw = path.read_bytes()
        size = struct.unpack('<Q', raw[:8])[0]
        header = json.loads(raw[8:8 + size])
        header_edit(header)
        text = json.dumps(header).encode()
        path.write_bytes(struct.pack('<Q', len(text)) + text + raw[8 + size:])
    return str(path)


def test_safetensors_file_loads_as_a_plain_state_dict(tmp_path):
    tensors = {'stem.0.weight': torch.randn(8, 3, 4, 4), 'stages.0.0.gamma': torch.rand(8),
               'counter': torch.arange(5), 'half': torch.randn(3).to(torch.bfloat16)}
    path = safetensors_file(tmp_path / 'model.safetensors', tensors)
    loaded = sc.load_checkpoint(path, map_location='cpu')
    assert sorted(loaded) == sorted(tensors)
    for key, value in tensors.items():
        assert loaded[key].dtype == value.dtype and torch.equal(loaded[key], value), key
    # recognised by its header, not its name; mmengine's own entry point reaches it too
    renamed = tmp_path / 'weights.pth'
    os.rename(path, renamed)
    from mmengine.runner.checkpoint import _load_checkpoint
    assert torch.equal(_load_checkpoint(str(renamed))['stem.0.weight'], tensors['stem.0.weight'])


def _set(name, **fields):
    return lambda header: header[name].update(fields)


@pytest.mark.parametrize('edit,cut', [
    (None, 4),                                                   # truncated
    (_set('a', shape=[100000, 100000]), 0),                      # shape larger than the data
    (_set('a', data_offsets=[0, 10 ** 12]), 0),                  # offset past the end
    (_set('a', data_offsets=[24, 48]), 0),                       # overlaps b
    (_set('a', dtype='OBJECT'), 0),                              # no such dtype
    (_set('a', shape=[2 ** 62, 2 ** 62, 0]), 0),                 # overflowing size
    (lambda h: h.update(__metadata__={'x': {'nested': 1}}), 0),  # metadata must be strings
])
def test_damaged_safetensors_file_is_refused_by_name(tmp_path, edit, cut):
    path = safetensors_file(tmp_path / 'bad.safetensors',
                            {'a': torch.randn(6), 'b': torch.randn(6)}, edit)
    if cut:
        with open(path, 'r+b') as f:
            f.truncate(os.path.getsize(path) - cut)
    with pytest.raises(sc.DamagedCheckpointError, match=f'{path}.*safetensors'):
        sc.load_checkpoint(path)


def test_safetensors_header_longer_than_the_file_is_damaged_not_a_pickle(tmp_path):
    path = tmp_path / 'bad.safetensors'
    path.write_bytes(struct.pack('<Q', 1 << 40) + b'{"a": {}}')
    with pytest.raises(sc.DamagedCheckpointError, match='safetensors'):
        sc.load_checkpoint(str(path))


def test_hub_style_urls_with_the_same_file_name_are_cached_apart(tmp_path, hub_dir):
    """Every Hugging Face hub repository names its weights model.safetensors: two of them must
    not share one cache entry (the second would silently load the first one's weights)."""
    bodies = {}
    for repo, value in (('timm/convnext_tiny.a', 1.), ('timm/convnext_tiny.b', 2.)):
        path = safetensors_file(tmp_path / f'{value}.safetensors', {'w': torch.full((3,), value)})
        bodies[f'{repo}/resolve/main/model.safetensors'] = open(path, 'rb').read()
    server = _Server(bodies)
    try:
        loaded = [sc.load_checkpoint(f'{server.url}/{name}')['w'].tolist() for name in bodies]
    finally:
        server.close()
    assert loaded == [[1.] * 3, [2.] * 3]
    assert sorted(os.listdir(hub_dir)) == sorted(cache_name(f'{server.url}/{name}')
                                                 for name in bodies)


def test_cache_entries_are_per_url_whatever_the_host_or_file_name(tmp_path, hub_dir):
    """The same hub path on another host, and a plain URL whose file name looks like a cache
    name, each get their own entry: after loading the attacker's URLs, the genuine URL still
    loads the genuine weights. A file that torch.hub cached under the bare name is not used."""
    path = 'timm/convnext_tiny.a/resolve/main/model.safetensors'
    bodies = {}
    for value in (1., 2., 3.):
        written = safetensors_file(tmp_path / f'{value}.safetensors', {'w': torch.full((2,), value)})
        bodies[value] = open(written, 'rb').read()
    genuine, evil = _Server({path: bodies[1.]}), _Server({path: bodies[2.]})
    look_alike = cache_name(f'{genuine.url}/{path}')
    evil_plain = _Server({f'x/{look_alike}': bodies[3.], 'model.safetensors': bodies[3.]})
    os.makedirs(hub_dir.parent, exist_ok=True)
    (hub_dir.parent / 'model.safetensors').write_bytes(bodies[3.])  # torch.hub's old entry
    try:
        assert sc.load_checkpoint(f'{evil.url}/{path}')['w'].tolist() == [2., 2.]
        assert sc.load_checkpoint(f'{evil_plain.url}/x/{look_alike}')['w'].tolist() == [3., 3.]
        assert sc.load_checkpoint(f'{genuine.url}/{path}')['w'].tolist() == [1., 1.]
    finally:
        for server in (genuine, evil, evil_plain):
            server.close()
    assert len(os.listdir(hub_dir)) == 3
    # a URL with a query is another URL
    assert sc._cache_name('https://h/a/b.pth?x=1')[0] != sc._cache_name('https://h/a/b.pth')[0]
    assert sc._cache_name('https://h/a-b/c.pth')[0] != sc._cache_name('https://h/a/b--c.pth')[0]
    assert len(sc._cache_name('https://h/' + 'd/' * 300 + 'w.pth')[0]) <= 200


def test_sha256_pin_is_checked_for_local_files(tmp_path):
    """init_cfg's sha256 holds for a local file too (the README's offline copy)."""
    from convnext_dense.models import ConvNeXt
    path = tmp_path / 'atto.pth'
    torch.save({'model': ConvNeXt('v2-atto').state_dict()}, str(path))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(sc.UnsafeCheckpointError, match=r'atto\.pth has SHA-256 .* expected 00000000'):
        ConvNeXt('v2-atto', init_cfg=dict(type='Pretrained', checkpoint=str(path),
                                          sha256='00000000')).init_weights()
    ConvNeXt('v2-atto', init_cfg=dict(type='Pretrained', checkpoint=str(path),
                                      sha256=digest[:16].upper())).init_weights()


def test_zip_records_match_torchs_reader_on_a_real_checkpoint(tmp_path):
    """The strict directory reading finds every record of a torch.save file at the offset
    torch's own reader gives (the pre-pass uses no reader method newer than torch 2.x's
    get_all_records / get_record_offset; torch 2.11 has no get_record_size)."""
    from convnext_dense.checkpoint.zip_records import zip_records
    path = tmp_path / 'real.pth'
    torch.save({'a': torch.arange(1000.), 'b': torch.zeros(3, dtype=torch.int64)}, str(path))
    with open(path, 'rb') as f:
        records = zip_records(f, os.path.getsize(path))
    reader = torch._C.PyTorchFileReader(str(path))
    assert sorted(r.name.split('/', 1)[1] for r in records) == sorted(reader.get_all_records())
    for record in records:
        assert record.offset == reader.get_record_offset(record.name.split('/', 1)[1])
        assert record.method == 0 and record.compressed == record.size
    assert {r.name.split('/', 1)[1]: r.size for r in records}['data/0'] == 4000
