"""tools/analysis/plot_loss.py: finds the training log among a work dir's runs, draws a PNG."""
import json
import os

import pytest

from helpers import load_tool

plot_loss = load_tool('analysis/plot_loss')


def write_run(work, stamp, records, mtime):
    path = work / stamp / 'vis_data' / 'scalars.json'
    path.parent.mkdir(parents=True)
    path.write_text(''.join(json.dumps(r) + '\n' for r in records))
    os.utime(path, (mtime, mtime))
    return path


def test_draws_the_newest_training_run_not_a_later_test_run(tmp_path):
    train = [dict(lr=1e-3, loss=2.0 / (i + 1), **{'decode.loss_ce': 1.5 / (i + 1)},
                  **{'decode.acc_seg': 50.0 + i}, iter=i * 10, step=i * 10)
             for i in range(1, 6)]
    old = write_run(tmp_path, '20260101_000000', train[:2], 1000)
    new = write_run(tmp_path, '20260102_000000', train + [dict(mIoU=88.7, aAcc=98.1, step=50)],
                    2000)
    write_run(tmp_path, '20260103_000000', [dict(mIoU=88.7, aAcc=98.1, step=50)], 3000)
    assert plot_loss.find_scalars(str(tmp_path)) == str(new) != str(old)
    records, vals = plot_loss.read_scalars(str(new))
    assert len(records) == 5 and vals == [dict(mIoU=88.7, aAcc=98.1, step=50)]
    assert plot_loss.loss_keys(records) == ['loss', 'decode.loss_ce']  # not acc_seg, not lr
    assert plot_loss.main([str(tmp_path)]) == 0
    png = (tmp_path / 'loss.png').read_bytes()
    assert png.startswith(b'\x89PNG') and len(png) > 10000


def test_clear_errors(tmp_path, capsys):
    write_run(tmp_path, '20260103_000000', [dict(mIoU=1.0, step=1)], 3000)
    assert plot_loss.main([str(tmp_path)]) == 2
    assert 'no training log under' in capsys.readouterr().err
    path = write_run(tmp_path, '20260104_000000', [dict(loss=1.0, step=1)], 4000)
    with pytest.raises(ValueError, match='has no loss_x; its loss keys are loss'):
        plot_loss.plot(str(path), str(tmp_path / 'x.png'), keys=['loss_x'])
    path.write_text('{"loss": 1.0, "step": 1}\nnot json\n')
    assert plot_loss.main([str(path)]) == 2
    assert 'scalars.json:2: not a JSON line' in capsys.readouterr().err


def test_one_logged_iteration_is_a_dot_and_a_note(tmp_path, capsys):
    path = write_run(tmp_path, '20260105_000000', [dict(loss=1.5, loss_cls=1.0, step=20)], 5000)
    assert plot_loss.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [
        f'loss curve of {path} written to {tmp_path / "loss.png"}',
        f'plot_loss.py: note: {path} has 1 logged training iteration (20), so there is no curve '
        'to draw, only a point; the logger writes every default_hooks.logger.interval '
        'iterations: train longer, or lower it with tools/train.py --cfg-options '
        'default_hooks.logger.interval=1.']
    assert (tmp_path / 'loss.png').read_bytes().startswith(b'\x89PNG')
