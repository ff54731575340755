"""Draw the training-loss curve of a run as a PNG.

    python tools/analysis/plot_loss.py WORK_DIR [--out WORK_DIR/loss.png] [--keys loss ...]

mmengine's LoggerHook appends one JSON object per logged iteration to
``WORK_DIR/<timestamp>/vis_data/scalars.json`` (``step`` = iteration, the summed ``loss`` and
each loss term, ``lr``, ...) and one per validation (its metrics). This tool reads the newest
such file that holds training losses (a later ``tools/test.py`` run in the same work dir writes
its own timestamp folder with metrics only), or the ``scalars.json`` given as WORK_DIR, and
plots every loss key against the iteration: the total thick, the terms thin, on a log axis.
The last validation metrics found in the file go into the title.
"""
import argparse
import glob
import json
import os
import os.path as osp
import sys
from typing import Dict, List, Optional, Tuple

# metrics worth a place in the title, in this order, when the file has them
TITLE_METRICS = ('mIoU', 'mAcc', 'aAcc', 'coco/bbox_mAP', 'coco/segm_mAP')


def read_scalars(path: str) -> Tuple[List[Dict], List[Dict]]:
    """(training records, validation records) of one scalars.json."""
    train, val = [], []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f'{path}:{number}: not a JSON line ({error})') from None
            (train if any('loss' in k for k in record) else val).append(record)
    return train, val


def find_scalars(work_dir: str) -> str:
    """The newest ``<timestamp>/vis_data/scalars.json`` under ``work_dir`` with training
    losses in it (``work_dir`` may also be such a file)."""
    if osp.isfile(work_dir):
        return work_dir
    candidates = sorted(glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json')),
                        key=lambda p: (osp.getmtime(p), p), reverse=True)
    for path in candidates:
        if read_scalars(path)[0]:
            return path
    raise FileNotFoundError(
        f'no training log under {work_dir}: expected {work_dir}/<timestamp>/vis_data/'
        f'scalars.json with loss values (written by tools/train.py); found '
        f'{len(candidates)} scalars.json file(s) without any')


def loss_keys(records: List[Dict]) -> List[str]:
    """Every loss key of the training records: ``loss`` (the sum) first, then the terms."""
    keys = {k for r in records for k, v in r.items()
            if isinstance(v, (int, float)) and 'loss' in k}
    return sorted(keys, key=lambda k: (k != 'loss', k))


def plot(path: str, out: str, keys: Optional[List[str]] = None, title: Optional[str] = None
         ) -> str:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    train, val = read_scalars(path)
    if not train:
        raise ValueError(f'{path} has no training losses')
    keys = keys or loss_keys(train)
    missing = [k for k in keys if not any(k in r for r in train)]
    if missing:
        raise ValueError(f'{path} has no {", ".join(missing)}; its loss keys are '
                         f'{", ".join(loss_keys(train))}')
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    if len(keys) > 10:  # the default cycle repeats after 10 colours
        ax.set_prop_cycle(color=plt.get_cmap('tab20').colors)
    for key in keys:
        points = [(r['step'], r[key]) for r in train if key in r and 'step' in r]
        xs, ys = zip(*points)
        # a single logged iteration is no line: draw it as a dot
        ax.plot(xs, ys, label=key, linewidth=2.0 if key == 'loss' else 0.9,
                alpha=1.0 if key == 'loss' else 0.75, marker='o' if len(points) < 2 else None)
    ax.set_xlabel('iteration')
    ax.set_ylabel('training loss (log scale)')
    ax.set_yscale('log')
    ax.grid(True, which='both', alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    if title is None:
        title = osp.basename(osp.dirname(osp.dirname(osp.dirname(osp.abspath(path)))))
        last = val[-1] if val else {}
        shown = [f'{k} {last[k]:.{3 if k.startswith("coco/") else 2}f}'
                 for k in TITLE_METRICS if isinstance(last.get(k), (int, float))]
        if shown:
            # an epoch-based loop logs its validations by epoch, its iterations by iteration
            when = 'epoch' if any('epoch' in r for r in train) else 'iteration'
            title += f'\nval after {when} {last.get("step", "?")}: ' + ', '.join(shown)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('work_dir', help='a tools/train.py work dir, or a scalars.json')
    parser.add_argument('--out', help='PNG to write (default: WORK_DIR/loss.png)')
    parser.add_argument('--keys', nargs='+', help='loss keys to draw (default: all)')
    parser.add_argument('--title', help='plot title (default: work dir name and last metrics)')
    args = parser.parse_args(argv)
    try:
        path = find_scalars(args.work_dir)
        out = args.out or osp.join(
            args.work_dir if osp.isdir(args.work_dir) else osp.dirname(path), 'loss.png')
        plot(path, out, args.keys, args.title)
    except (OSError, ValueError) as error:
        print(f'plot_loss.py: error: {error}', file=sys.stderr)
        return 2
    print(f'loss curve of {path} written to {out}')
    steps = sorted({r['step'] for r in read_scalars(path)[0] if 'step' in r})
    if len(steps) < 2:
        print(f'plot_loss.py: note: {path} has {len(steps)} logged training iteration'
              f'{"s" if len(steps) != 1 else ""} ({", ".join(map(str, steps))}), so there is '
              f'no curve to draw, only a point; the logger writes every '
              f'default_hooks.logger.interval iterations: train longer, or lower it with '
              f'tools/train.py --cfg-options default_hooks.logger.interval=1.')
    return 0


if __name__ == '__main__':
    sys.exit(main())
