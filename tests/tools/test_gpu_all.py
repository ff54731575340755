"""tools/gpu_all.sh without a GPU: the set-up is sourced after a carried mmcv wheel is put where
it looks, mmpretrain is moved aside for the checks and put back, the stages run in order, each
under a timeout of what is left less the later stages' minimum, skipped when too little is
left, and every stage line reaches summary.txt."""
import os
import os.path as osp
import re
import subprocess
import sys

from helpers import REPO

SCRIPT = osp.join(REPO, 'tools', 'gpu_all.sh')


def gpu_all(tmp_path, **env):
    result = subprocess.run(
        ['bash', SCRIPT], capture_output=True, text=True, timeout=600,
        env={**os.environ, 'PYTHON': sys.executable, 'GPU_ALL_OUT': str(tmp_path / 'out'),
             'GPU_ALL_WORK': str(tmp_path / 'work'), 'OMP_NUM_THREADS': '1', **env})
    summary = (tmp_path / 'out' / 'summary.txt').read_text()
    return result.returncode, result.stdout + result.stderr, summary


def stage_lines(summary):
    """(stage, event, at_s, timeout_s or None) for each '== stage' line."""
    return [(m[0], m[1], int(m[2]), int(m[3]) if m[3] else None) for m in re.findall(
        r'^== stage (\w+)(?: \(\w+\))?: (start|done|skipped) at (\d+) s'
        r'(?:, timeout (\d+) s)?', summary, re.M)]


def test_setup_sourced_after_the_wheel_is_placed_and_every_stage_skipped_when_out_of_time(
        tmp_path):
    setup_dir = tmp_path / 'setup'
    (setup_dir / 'dist').mkdir(parents=True)
    (setup_dir / 'dist' / 'mmcv-2.1.0-cp312-cp312-linux_x86_64.whl').write_text('wheel')
    site = tmp_path / 'site'  # an mmpretrain installed with pip --target, as a set-up does
    (site / 'mmpretrain').mkdir(parents=True)
    (site / 'mmpretrain' / '__init__.py').write_text('')
    (site / 'mmpretrain-1.2.0.dist-info').mkdir()
    (site / 'mmpretrain-1.2.0.dist-info' / 'METADATA').write_text(
        'Metadata-Version: 2.1\nName: mmpretrain\nVersion: 1.2.0\n')
    dist = tmp_path / 'dist'
    (setup_dir / 'setup.sh').write_text(
        f'ls "{dist}" > "{tmp_path}/dist_at_setup"\n'
        f'export PYTHONPATH={site}${{PYTHONPATH:+:$PYTHONPATH}}\n'
        'SECONDS=$((SECONDS + 1000))  # a set-up that took 1000 s\n')
    code, output, summary = gpu_all(tmp_path, GPU_SETUP=str(setup_dir / 'setup.sh'),
                                    GPU_SETUP_DIST=str(dist), GPU_ALL_BUDGET_S='540')
    assert code == 3, output[-3000:]
    # the carried wheel was in place when the set-up ran, and comes back with the outputs
    assert (tmp_path / 'dist_at_setup').read_text().split() == [
        'mmcv-2.1.0-cp312-cp312-linux_x86_64.whl']
    assert (tmp_path / 'out' / 'dist' / 'mmcv-2.1.0-cp312-cp312-linux_x86_64.whl').is_file()
    lines = stage_lines(summary)
    assert [line[:2] for line in lines] == [('setup', 'start'), ('setup', 'done')] + [
        (stage, 'skipped') for stage in 'abcdegf'], summary
    assert all(at >= 1000 for _, event, at, _ in lines if event == 'skipped')
    # the checks ran without mmpretrain; it is back afterwards
    assert 'mmpretrain moved aside' in summary
    assert re.search(r'mmpretrain -( |$)', summary, re.M), summary
    assert (site / 'mmpretrain' / '__init__.py').is_file()
    assert (site / 'mmpretrain-1.2.0.dist-info' / 'METADATA').is_file()


def test_stage_timeouts_keep_the_later_stages_minimum(tmp_path):
    code, output, summary = gpu_all(tmp_path, GPU_SETUP='', GPU_ALL_BUDGET_S='300',
                                    GPU_ALL_STAGES='b d g')
    assert code == 0, output[-3000:]
    lines = stage_lines(summary)
    assert [line[:2] for line in lines] == [
        ('b', 'start'), ('b', 'done'), ('d', 'start'), ('d', 'done'), ('g', 'start'),
        ('g', 'done')], summary
    starts = {stage: (at, timeout) for stage, event, at, timeout in lines if event == 'start'}
    # b: what is left less d's minimum (150 s); d: all that is left (the benchmark reserves
    # nothing); the benchmark: all that is left
    assert starts['b'][1] == 300 - starts['b'][0] - 150
    assert starts['d'][1] == 300 - starts['d'][0]
    assert starts['g'][1] == 300 - starts['g'][0]
    # without a GPU the CUDA tests skip (pytest passes) and the benchmark is not run
    assert summary.count('exit 0: passed') == 2
    assert 'exit 0: not run: no GPU' in summary
    junit = (tmp_path / 'out' / 'b_cascade' / 'junit.xml').read_text()
    assert 'skipped' in junit and 'test_cascade_t_resumes_from_the_checkpoint' in junit
