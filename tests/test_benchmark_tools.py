"""The benchmark tools' own logic, on the CPU and without timing anything: the machine and
load-average report, the round-robin order, the medians, where a synchronising call is
attributed, and that the recipe benchmark builds and steps both recipes' runners."""
import importlib.util
import os.path as osp
import traceback

import pytest
import torch
import torch.nn as nn

from helpers import SHARED_DATA, load_tool



def _load(name):
    return load_tool(f'analysis/{name}')


@pytest.fixture(scope='module')
def bench():
    return _load('benchmark')


@pytest.fixture(scope='module')
def common():
    return _load('bench_common')


@pytest.fixture(scope='module')
def recipe():
    return _load('benchmark_recipe')


# ----------------------------------------------------------------------------- machine, load
def test_busy_warning_threshold_is_half_the_cores(common):
    assert common.busy_warning((0.9, 0.1, 0.1), cores=2, when='at the start of') is None
    assert common.busy_warning((1.0, 5, 5), cores=2, when='at the start of') is None  # = 0.5 x
    warning = common.busy_warning((1.2, 0.1, 0.1), cores=2, when='at the end of')
    assert warning.startswith('WARNING') and '1.20' in warning and 'at the end of' in warning
    assert common.busy_warning(None, cores=2, when='x') is None  # no load average here
    assert common.busy_warning((3.0, 0, 0), cores=16, when='x') is None


def test_load_watch_warns_before_and_after_independently(common):
    no_proc_stat = dict(cpu_seconds=lambda: None)  # judged by the load average alone
    loads = iter([(1.5, 1.0, 1.0), (0.2, 0.5, 0.9)])  # busy at the start, idle at the end
    watch = common.LoadWatch(cores=2, getloadavg=lambda: next(loads), **no_proc_stat)
    assert len(watch.warnings()) == 1
    warnings = watch.stop()
    assert watch.before == (1.5, 1.0, 1.0) and watch.after == (0.2, 0.5, 0.9)
    assert len(warnings) == 1 and 'at the start of' in warnings[0]

    loads = iter([(0.1, 0, 0), (4.0, 0, 0)])
    watch = common.LoadWatch(cores=4, getloadavg=lambda: next(loads), **no_proc_stat)
    assert watch.warnings() == []
    assert ['at the end of' in w for w in watch.stop()] == [True]

    loads = iter([(0.1, 0, 0), (0.3, 0, 0)])
    watch = common.LoadWatch(cores=2, getloadavg=lambda: next(loads), **no_proc_stat)
    assert watch.stop() == []


def test_load_watch_judges_the_run_by_other_processes_cpu_time(common):
    """Our own threads load the machine (a load average of 2 on 2 cores at the end of a
    2-thread run): only the CPU time other processes used over the run counts."""
    def watch_for(machine_s, own_s, wall_s=10.0):
        readings = iter([(100.0, 5.0), (100.0 + machine_s, 5.0 + own_s)])
        clock = iter([0.0, wall_s])
        loads = iter([(0.1, 0, 0), (2.0, 0, 0)])
        watch = common.LoadWatch(cores=2, getloadavg=lambda: next(loads),
                                cpu_seconds=lambda: next(readings), clock=lambda: next(clock))
        return watch, watch.stop()
    watch, warnings = watch_for(machine_s=20.0, own_s=19.5)  # we used both cores
    assert warnings == [] and watch.others_share == pytest.approx(0.025)
    assert watch.after == (2.0, 0, 0)  # our own load, recorded, not judged
    watch, warnings = watch_for(machine_s=20.0, own_s=10.0)  # another process took a core
    assert watch.others_share == pytest.approx(0.5)
    assert len(warnings) == 1 and 'other processes used 50%' in warnings[0]


def test_finish_load_watch_records_the_load_in_the_report(common, capsys):
    loads = iter([(0.4, 0, 0), (2.5, 0, 0)])
    watch = common.LoadWatch(cores=2, getloadavg=lambda: next(loads), cpu_seconds=lambda: None)
    report = common.Report()
    warnings = common.finish_load_watch(report, watch)
    figures = {row['figure']: row['value'] for row in report.rows}
    assert figures == {'load_avg_1min_before': 0.4, 'load_avg_1min_after': 2.5}
    assert len(warnings) == 1 and warnings[0] in capsys.readouterr().out


def test_cpu_description_from_cpuinfo_and_from_lscpu(common):
    cpuinfo = ('processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n'
               'flags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_tile amx_bf16\n')
    cpu = common.cpu_description(cpuinfo=cpuinfo)
    assert cpu['model'] == 'Intel(R) Xeon(R) Platinum 8480+'
    assert cpu['isa'] == dict(avx2=True, avx512f=True, avx512_bf16=True, amx_tile=True,
                              amx_bf16=True)
    lscpu = 'Architecture:  x86_64\nModel name:    AMD EPYC 7B13\nFlags:   fpu avx2 fma\n'
    cpu = common.cpu_description(cpuinfo='', lscpu=lscpu)
    assert cpu['model'] == 'AMD EPYC 7B13'
    assert cpu['isa']['avx2'] and not cpu['isa']['avx512_bf16'] and not cpu['isa']['amx_bf16']
    assert cpu['cores'] >= 1


def test_machine_description_names_cpu_and_bf16(common):
    info = common.machine_description('cpu')
    assert info['cpu']['model'] and isinstance(info['cpu_bf16_native'], bool)
    assert info['torch'] == torch.__version__ and 'gpu' not in info


# ----------------------------------------------------------------------------- round-robin
def test_run_times_is_round_robin_after_warmup(common):
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in 'ABC'}
    times = common.run_times(fns, warmup=2, repeats=3)
    assert calls == list('ABC') * 5
    assert {name: len(t) for name, t in times.items()} == dict(A=3, B=3, C=3)


def test_run_times_budget_stops_after_a_whole_round(common):
    now = [0.0]

    def clock():
        return now[0]

    def work(seconds):
        def fn():
            now[0] += seconds
        return fn

    fns = dict(ours=work(1.0), port=work(2.0))  # 3 s per round
    times = common.run_times(fns, warmup=1, repeats=30, budget_s=7.0, min_repeats=1,
                            clock=clock)
    # rounds end at 3, 6, 9 s: the third one passes 7 s, every contestant has 3 times
    assert times == dict(ours=[1.0] * 3, port=[2.0] * 3)
    times = common.run_times(fns, warmup=0, repeats=30, budget_s=0.5, min_repeats=4,
                            clock=clock)
    assert times == dict(ours=[1.0] * 4, port=[2.0] * 4)  # min_repeats before the budget


def test_summarise_medians_and_first_seen_shapes(recipe):
    rows = [dict(iter_s=t, data_s=0.01, step_s=t - 0.01, shape=s, new_shape=n, loss=1.0)
            for t, s, n in [(3.0, (800, 1216), True), (1.0, (800, 1216), False),
                            (2.0, (640, 960), True), (1.2, (800, 1216), False),
                            (1.1, (640, 960), False)]]
    summary = recipe.summarise(rows)
    assert summary['iters'] == 5 and summary['iter_s'] == 1.2
    assert summary['new_shape_iters'] == 2 and summary['new_shape_iter_s'] == 2.5
    assert summary['seen_shape_iters'] == 3 and summary['seen_shape_iter_s'] == 1.1
    assert summary['min_iter_s'] == 1.0 and summary['max_iter_s'] == 3.0


def test_padded_shape_is_the_batch_the_preprocessor_builds(recipe):
    batch = dict(inputs=[torch.zeros(3, 800, 1201), torch.zeros(3, 785, 1333)])
    assert recipe._padded_shape(batch) == (800, 1344)


def test_time_contestants_keeps_only_the_timed_records(recipe):
    class Fake:
        def __init__(self, name, order):
            self.name, self.records, self.order = name, [], order

        def step(self):
            self.order.append(self.name)
            self.records.append(dict(iter_s=float(len(self.records)), data_s=0.0,
                                     step_s=0.0, shape=(32, 32), new_shape=False))

    order = []
    timed = recipe.time_contestants([Fake('ours', order), Fake('port', order)], warmup=2,
                                    iters=3)
    assert order == ['ours', 'port'] * 5
    assert timed['ours']['iters'] == 3 and timed['ours']['iter_s'] == 3.0  # records 2, 3, 4


# ----------------------------------------------------------------------------- profiling
def test_sync_site_skips_torch_frames(recipe):
    frames = [traceback.FrameSummary('/x/site-packages/mmengine/runner/loops.py', 10, 'run'),
              traceback.FrameSummary('/x/site-packages/mmdet/models/roi_heads/a.py', 20, 'loss'),
              traceback.FrameSummary('/x/site-packages/mmdet/models/utils/b.py', 30, 'f'),
              traceback.FrameSummary('/x/site-packages/torch/_tensor.py', 40, 'item')]
    site = recipe.sync_site(frames, depth=2)
    assert site == ('mmdet/models/utils/b.py:30 (f) <- '
                    'mmdet/models/roi_heads/a.py:20 (loss)')
    assert recipe.sync_site(frames[-1:]) == '(inside torch)'


def test_annotated_labels_phases_and_restores_the_instances(recipe):
    from torch.profiler import ProfilerActivity, profile

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = nn.Linear(4, 4)
            self.decode_head = nn.Linear(4, 2)

    class Wrapper:
        def backward(self, loss):
            loss.backward()

        def step(self):
            pass

        def zero_grad(self):
            pass

    class Runner:
        def __init__(self):
            self.model, self.optim_wrapper, self.hooks = Model(), Wrapper(), []

        def call_hook(self, name, **kwargs):
            self.hooks.append(name)

    class Fake:
        runner = Runner()

    fake = Fake()
    model = fake.runner.model
    with recipe.annotated(fake), profile(activities=[ProfilerActivity.CPU]) as prof:
        fake.runner.call_hook('before_train_iter')
        loss = model.decode_head(model.backbone(torch.ones(1, 4))).sum()
        fake.runner.optim_wrapper.backward(loss)
    names = {e.name for e in prof.events()}
    assert {'## backbone.forward', '## decode_head.forward', '## optim_wrapper.backward',
            '## hook before_train_iter'} <= names
    assert fake.runner.hooks == ['before_train_iter']
    assert 'forward' not in vars(model.backbone) and 'call_hook' not in vars(fake.runner)
    assert 'backward' not in vars(fake.runner.optim_wrapper)


# ----------------------------------------------------------------------------- recipes
def test_copy_weights_matches_by_name_and_refuses_other_layouts(recipe):
    def make(out=3):
        model = nn.Module()
        model.backbone = nn.Module()
        model.backbone.downsample_layers = nn.ModuleList([nn.Linear(2, 2)])
        model.neck = nn.Linear(2, out)
        return model

    source, target = make(), make()
    note = recipe.copy_weights(source, target)
    assert note.startswith('weights shared')
    for key, value in source.state_dict().items():
        assert torch.equal(value, target.state_dict()[key])
    other = make(out=4)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    assert 'NOT shared' in recipe.copy_weights(source, other)
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())


def test_find_data_root(recipe, tmp_path, monkeypatch):
    (tmp_path / 'tiny_coco').mkdir()
    assert recipe.find_data_root(str(tmp_path)) == str(tmp_path)
    monkeypatch.setenv(recipe.DATA_ENV, str(tmp_path))
    assert recipe.find_data_root() == str(tmp_path)
    with pytest.raises(FileNotFoundError, match='missing has no tiny_coco or ade20k_sample'):
        recipe.find_data_root(str(tmp_path / 'missing'))
    monkeypatch.delenv(recipe.DATA_ENV)
    with pytest.raises(FileNotFoundError, match='no --data-root and no'):
        recipe.find_data_root()


needs_data = pytest.mark.skipif(
    not osp.isdir(osp.join(SHARED_DATA, 'tiny_coco')) or
    not osp.isdir(osp.join(SHARED_DATA, 'ade20k_sample')),
    reason=f'needs the COCO / ADE20K samples in {SHARED_DATA}')


def _port_available():
    return importlib.util.find_spec('mmpretrain') is not None


@needs_data
@pytest.mark.parametrize('task', ['det', 'seg'])
def test_recipe_configs_as_the_benchmark_runs_them(recipe, task, tmp_path):
    cfg = recipe.load_recipe_config(recipe.OURS_CONFIGS[task], task, SHARED_DATA,
                                    str(tmp_path), device='cpu')
    dataset = cfg.train_dataloader.dataset
    assert dataset.data_root == osp.join(SHARED_DATA, recipe.DATA_SUBDIRS[task])
    assert cfg.train_dataloader.batch_size == 2 and cfg.model.backbone.init_cfg is None
    assert cfg.val_dataloader is None and cfg.val_cfg is None and cfg.test_evaluator is None
    assert cfg.optim_wrapper.type == 'OptimWrapper'  # no AMP without an accelerator
    assert cfg.randomness == dict(seed=0)
    # the recipe's own augmentation stays
    names = [t['type'] for t in dataset.pipeline]
    assert ('RandomChoice' in names) if task == 'det' else ('RandomResize' in names)
    if _port_available():
        port = recipe.load_recipe_config(recipe.port_config_path(task), task, SHARED_DATA,
                                         str(tmp_path), device='cpu', port=True)
        assert port.model.backbone.type == 'mmpretrain.ConvNeXt'
        assert port.train_dataloader.dataset.data_root == dataset.data_root
        assert [t['type'] for t in port.train_dataloader.dataset.pipeline] == names
    else:
        with pytest.raises(recipe.PortUnavailable, match='mmpretrain'):
            recipe.load_recipe_config(recipe.port_config_path(task), task, SHARED_DATA,
                                      str(tmp_path), device='cpu', port=True)


def _shrink(cfg, task):
    """Small inputs (and, for Cascade, few sampled RoIs) so that a CPU iteration takes a
    second: this test checks the harness, not the recipe."""
    pipeline = cfg.train_dataloader.dataset.pipeline
    if task == 'seg':
        for t in pipeline:
            if t['type'] == 'RandomResize':
                t['scale'] = (128, 64)
            if t['type'] == 'RandomCrop':
                t['crop_size'] = (64, 64)
        cfg.model.data_preprocessor['size'] = (64, 64)
    else:
        def shrink(transforms):
            for t in transforms:
                if isinstance(t, list):
                    shrink(t)
                elif t['type'] == 'RandomChoice':
                    for branch in t['transforms']:
                        shrink(branch)
                elif t['type'] == 'RandomChoiceResize':
                    t['scales'] = [(96, 160), (128, 192)]
                elif t['type'] == 'RandomCrop':
                    t['crop_size'] = (64, 96)
        shrink(pipeline)
        for stage in cfg.model.train_cfg.rcnn:
            stage.sampler.num = 16
        cfg.model.train_cfg.rpn_proposal.max_per_img = 64
    return cfg


@needs_data
@pytest.mark.slow
@pytest.mark.parametrize('task', ['seg', 'det'])
def test_contestants_step_round_robin_on_cpu(recipe, task, tmp_path):
    """Both runners built in one process, prepared as Runner.train does, then stepped
    round-robin; the port's weights land in ours. Small inputs: a harness check."""
    contestants = []
    configs = [('ours', recipe.OURS_CONFIGS[task], False)]
    if _port_available():
        configs.append(('port', recipe.port_config_path(task), True))
    for name, path, port in configs:
        cfg = recipe.load_recipe_config(path, task, SHARED_DATA, str(tmp_path / name),
                                        workers=1, device='cpu', port=port)
        contestants.append(recipe.Contestant(name, recipe.build_runner(_shrink(cfg, task),
                                                                       task)))
    if len(contestants) == 2:
        note = recipe.copy_weights(recipe.unwrap(contestants[1].runner.model),
                                   recipe.unwrap(contestants[0].runner.model))
        assert note.startswith('weights shared'), note
    timed = recipe.time_contestants(contestants, warmup=1, iters=2)
    for contestant in contestants:
        figures = timed[contestant.name]
        assert figures['iters'] == 2 and figures['iter_s'] > 0
        assert len(figures['losses']) == 2 and all(l == l for l in figures['losses'])
        assert contestant.runner.train_loop.iter == 3  # the loop's own counter advanced
    if len(contestants) == 2:  # same seed, same pipeline: the same input shapes
        assert timed['ours']['shapes'] == timed['port']['shapes']
    if task == 'seg':  # the profile's phases (the CPU run has no sync sites to find)
        summary = recipe.profile_contestant(contestants[0], iters=1, sites=False)
        assert {'backbone.forward', 'decode_head.loss', 'optim_wrapper.backward',
                'hook after_train_iter'} <= set(summary['phases_ms_per_iter'])


def test_gpu_backbone_code_paths_on_cpu(bench):
    """main_cuda's inference / training logic with device='cpu' and small shapes (the
    compiled part is left out: compiling takes minutes on the CPU)."""
    import argparse
    args = argparse.Namespace(quick=True, repeats=1, warmup=0, no_fast=True)
    report = bench.main_cuda(args, bench.Report(), device='cpu', shapes=[(1, 3, 64, 64)],
                             train_shape=(1, 3, 64, 64))
    figures = {row['figure']: row for row in report.rows}
    value = lambda name: figures[f'cpu_backbone_{name}']['value']
    close = lambda a, b: a == pytest.approx(b, rel=2e-3, abs=2e-4)
    for precision in ('fp32', 'bf16'):  # ratios of times are the ratios of the img/s printed
        assert close(value(f'infer_1x3x64x64_ours_over_timm_{precision}'),
                     value(f'infer_1x3x64x64_ours_{precision}')
                     / value(f'infer_1x3x64x64_timm_{precision}'))
    assert close(value('train_1x3x64x64_ours_over_timm_bf16'),
                 value('train_1x3x64x64_ours_bf16') / value('train_1x3x64x64_timm_bf16'))
    mib = {name: figures[f'cpu_backbone_train_1x3x64x64_{name}_bf16']['step_peak_mib']
           for name in ('ours', 'timm', 'ours_with_cp')}
    assert min(mib.values()) >= 1  # a training step of ConvNeXt-T holds MiBs, not nothing

    def from_rounded(numerator, denominator):  # MiB printed to 0.1: the bounds of that
        return ((mib[numerator] - 0.05) / (mib[denominator] + 0.05) - 1e-3,
                (mib[numerator] + 0.05) / (mib[denominator] - 0.05) + 1e-3)
    low, high = from_rounded('ours', 'timm')
    assert low <= value('train_1x3x64x64_memory_ours_over_timm_bf16') <= high
    low, high = from_rounded('ours_with_cp', 'ours')
    assert low <= value('train_1x3x64x64_with_cp_memory_ratio_bf16') <= high


def test_sync_sites_counts_the_lines_that_synchronised(recipe, monkeypatch):
    """The set_sync_debug_mode warnings are counted by the Python line that made the call
    (here a stand-in: no GPU; torch's C++ warning arrives as this Python warning)."""
    import warnings
    modes = []
    monkeypatch.setattr(torch.cuda, 'set_sync_debug_mode', modes.append)

    def synchronising_call():
        warnings.warn('called a synchronizing CUDA operation', UserWarning)

    def step():
        for _ in range(3):
            synchronising_call()
        warnings.warn('something else', UserWarning)

    with pytest.warns(UserWarning, match='something else'):
        found = recipe.sync_sites(step, iters=2)
    assert modes == ['warn', 0]
    (site, count), = found.items()
    assert count == 6 and 'test_benchmark_tools.py' in site and 'synchronising_call' in site


def test_peak_memory_sees_what_checkpointing_saves(bench):
    """Where activations dominate (V2-atto, 3.4 M parameters, at 2x3x256x256), the benchmark's
    peak measure shows with_cp=True holding far less: only the block being recomputed keeps
    its activations. Measured 139 MiB without, 52 MiB with (13 MiB of weight gradients)."""
    from convnext_dense.models import ConvNeXt
    x = torch.randn(2, 3, 256, 256)
    peaks = {}
    for with_cp in (False, True):
        torch.manual_seed(0)
        model = ConvNeXt('v2-atto', with_cp=with_cp).train()

        def step():
            model.zero_grad(set_to_none=True)
            sum(o.mean() for o in model(x)).backward()
        peaks[with_cp] = bench.peak_memory_bytes(step) / 2 ** 20
    assert peaks[False] > 100 and peaks[True] < 0.5 * peaks[False], peaks


@pytest.mark.slow
def test_benchmark_quick_mode_figures_agree_with_each_other(bench):
    """The ratios the CPU benchmark prints are the ratios of the figures it prints (4 digits)."""
    report = bench.main(['--quick', '--repeats', '1'])
    rows = {row['figure']: row for row in report.rows}
    value = lambda name: rows[name]['value']
    close = lambda a, b: a == pytest.approx(b, rel=2e-3, abs=2e-4)
    tag = '1x3x64x96'
    assert close(value(f'backbone_infer_{tag}_ours_over_timm'),
                 value(f'backbone_infer_{tag}_ours_fp32')
                 / value(f'backbone_infer_{tag}_timm_fp32'))
    # headroom: the fp32 matmul peak over what our eager backbone achieved (GFLOP/s, printed
    # to 0.1: the bounds of that rounding)
    gflops = rows[f'backbone_infer_{tag}_ours_fp32']['gflops']
    headroom = value(f'backbone_infer_{tag}_fp32_headroom')
    peak = value('matmul_peak_fp32')
    assert peak / (gflops + 0.05) * 0.999 <= headroom <= peak / max(gflops - 0.05, 1e-3) * 1.001
    train = '2x3x64x64'
    assert close(value(f'backbone_train_{train}_ours_over_timm'),
                 value(f'backbone_train_{train}_ours') / value(f'backbone_train_{train}_timm'))
    mib = [rows[f'backbone_train_{train}_{name}']['peak_mib'] for name in ('ours_with_cp', 'ours')]
    ratio = value(f'backbone_train_{train}_with_cp_memory_ratio')  # MiB printed to 0.1
    assert (mib[0] - 0.05) / (mib[1] + 0.05) - 1e-3 <= ratio <= (mib[0] + 0.05) / (mib[1] - 0.05)
    # (at 64x64 the weight gradients dominate the peak, so checkpointing need not save there:
    # CI measured 1.08; test_peak_memory_sees_what_checkpointing_saves checks the claim)
    assert close(value('detector_test_step_128x192_fast_over_eager'),
                 value('detector_test_step_128x192_eager_fp32')
                 / value('detector_test_step_128x192_fast'))
