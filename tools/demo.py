"""Run a trained detector or segmentor on your images, a folder of them, or a video.

    python tools/demo.py CONFIG CHECKPOINT INPUT [--out DIR] [--score-thr 0.3] [--fast]
                         [--device cpu] [--debug]

INPUT is an image, a folder (its images, sorted by name, not its sub-folders) or a video
(.mp4, .avi, .mov, .mkv, .webm). The predictions are drawn with the config's stock visualizer
(mmdet's ``DetLocalVisualizer``: boxes, masks and labels; mmseg's ``SegLocalVisualizer``: the
segmentation map over the image) into ``--out`` under the input's file name; a video is
written as a video. One line per image says what was found, e.g.

    000000079841.jpg: 7 detections (person 3, car 2, dog 2)
    ADE_val_00000001.jpg: 12 classes, largest wall 34%, floor 21%, ceiling 9%

and a progress bar covers folders and videos. The class names come from the checkpoint
(``meta.dataset_meta``, as tools/train.py saves it). The checkpoint must fit the config's
model: a checkpoint of another model, or of the same one with another number of classes,
stops with an error naming the tensors. An expected error is one line on stderr and exit
status 2 (``--debug`` shows the traceback).
"""
import argparse
import os
import os.path as osp
import warnings
from collections import Counter

from _common import add_debug_arg, require_checkpoint, run_tool
from convnext_dense.errors import ConfigError, InputError, MissingFileError

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')
VIDEO_SUFFIXES = ('.mp4', '.avi', '.mov', '.mkv', '.webm', '.m4v')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Draw the predictions of a detection or '
                                     'segmentation checkpoint on images, a folder or a video')
    parser.add_argument('config', help='config file the checkpoint was trained with')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('input', help='an image, a folder of images, or a video')
    parser.add_argument('--out', default='demo_out',
                        help='folder for the drawn images / video (default: demo_out)')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='detection: draw and count only instances with at least this '
                        'score (default: 0.3)')
    parser.add_argument('--fast', action='store_true', help='fast inference '
                        '(convnext_dense.fast: channels-last, low precision where the '
                        'hardware runs it natively, torch.compile)')
    parser.add_argument('--device', default=None,
                        help='cpu, cuda or cuda:N (default: cuda when available, else cpu)')
    add_debug_arg(parser)
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------- inputs
def list_inputs(path: str):
    """``('images', [paths])`` or ``('video', [path])`` for an image, folder or video."""
    if osp.isdir(path):
        images = sorted(osp.join(path, name) for name in os.listdir(path)
                        if name.lower().endswith(IMAGE_SUFFIXES)
                        and osp.isfile(osp.join(path, name)))
        if not images:
            raise MissingFileError(f'{path} holds no images ({", ".join(IMAGE_SUFFIXES)}); '
                                   f'give an image, a folder of images or a video.')
        return 'images', images
    if not osp.isfile(path):
        raise MissingFileError(f'input {path} does not exist; give an image, a folder of '
                               f'images or a video.')
    if path.lower().endswith(VIDEO_SUFFIXES):
        return 'video', [path]
    if path.lower().endswith(IMAGE_SUFFIXES):
        return 'images', [path]
    raise InputError(f'input {path}: not an image ({", ".join(IMAGE_SUFFIXES)}) or a video '
                     f'({", ".join(VIDEO_SUFFIXES)}).')


def read_image(path: str):
    """The BGR image at ``path``; :class:`convnext_dense.datasets.CorruptImageError` naming it
    when it cannot be decoded."""
    from convnext_dense.datasets.checks import read_image as decode
    with open(path, 'rb') as f:
        return decode(f.read(), path)


# ----------------------------------------------------------------------------- the model
class Predictor:
    """The config's model with the checkpoint loaded, its predict function and visualizer.

    Args:
        config (str): config file (default_scope ``'mmdet'`` or ``'mmseg'``).
        checkpoint (str): checkpoint file that fits the config's model.
        device (str): torch device.
        score_thr (float): detection score threshold for drawing and counting.
    """

    def __init__(self, config: str, checkpoint: str, device: str, score_thr: float = 0.3):
        from mmengine.config import Config
        from mmengine.registry import VISUALIZERS, init_default_scope
        if not osp.isfile(config):
            raise MissingFileError(f'config file {config} does not exist; give the config '
                                   f'the checkpoint was trained with.')
        require_checkpoint(checkpoint, 'checkpoint', 'give the path of a checkpoint file '
                           'written by training this config')
        cfg = Config.fromfile(config)
        self.scope = cfg.get('default_scope')
        if self.scope not in ('mmdet', 'mmseg'):
            raise ConfigError(f"{config}: default_scope is {self.scope!r}; tools/demo.py runs "
                              f"'mmdet' (detection) and 'mmseg' (segmentation) configs.")
        self._strip_pretrained(cfg)
        # record: init_* warn "checkpoint is None, use COCO classes" (we load it below)
        with warnings.catch_warnings(record=True):
            if self.scope == 'mmdet':
                from mmdet.apis import inference_detector, init_detector
                self.model = init_detector(cfg, None, device=device)
                self._infer = inference_detector
            else:
                from mmseg.apis import inference_model, init_model
                self.model = init_model(cfg, None, device=device)
                self._infer = inference_model
        self._load(checkpoint)
        init_default_scope(self.scope)
        self.visualizer = VISUALIZERS.build(
            dict(cfg.visualizer, name=f'demo-{id(self)}', vis_backends=None, save_dir=None))
        meta = self.model.dataset_meta
        if self.scope == 'mmdet':
            self.visualizer.dataset_meta = meta
        else:
            self.visualizer.set_dataset_meta(meta.get('classes'), meta.get('palette'))
        self.classes = list(meta.get('classes') or [])
        self.score_thr = score_thr

    @staticmethod
    def _strip_pretrained(cfg) -> None:
        """No ImageNet download: the checkpoint replaces every weight."""
        def walk(node):
            if isinstance(node, dict):
                if isinstance(node.get('init_cfg'), dict) and \
                        node['init_cfg'].get('type') == 'Pretrained':
                    node['init_cfg'] = None
                for value in node.values():
                    walk(value)
            elif isinstance(node, (list, tuple)):
                for value in node:
                    walk(value)
        walk(cfg.model)

    def _load(self, checkpoint: str) -> None:
        from mmengine.runner.checkpoint import _load_checkpoint, _load_checkpoint_to_model

        from convnext_dense.checkpoint.fit import check_checkpoint_fits
        from convnext_dense.checkpoint.official import adapt_checkpoint
        state = _load_checkpoint(checkpoint, map_location='cpu')
        adapt_checkpoint(self.model, state, checkpoint)
        check_checkpoint_fits(self.model, state, checkpoint, require_all=True)
        _load_checkpoint_to_model(self.model, state)
        saved = (state.get('meta') or {}).get('dataset_meta') or {}
        saved = {key.lower(): value for key, value in saved.items()}
        config = self._config_meta()
        meta = saved if saved.get('classes') else config
        if not meta.get('palette') and \
                list(config.get('classes') or []) == list(meta.get('classes') or []):
            meta = {**meta, 'palette': config.get('palette')}
        self.model.dataset_meta = meta

    def _config_meta(self) -> dict:
        """The test dataset's metainfo (classes, palette), built without reading data."""
        from mmengine.registry import DATASETS, init_default_scope
        init_default_scope(self.scope)
        dataset = self.model.cfg.test_dataloader.dataset
        try:
            return dict(DATASETS.build(dict(dataset, lazy_init=True)).metainfo)
        except Exception:  # a dataset that needs its files even lazily: no names then
            return {}

    def enable_fast(self) -> str:
        from convnext_dense.inference.fast import enable_fast_inference
        enable_fast_inference(self.model)
        return str(self.model.fast_inference)

    def __call__(self, image):
        """The data sample predicted for ``image`` (BGR array)."""
        return self._infer(self.model, image)

    def draw(self, image, sample, out_file=None):
        """``image`` (BGR) with ``sample`` drawn, as an RGB array; written to ``out_file``."""
        import mmcv
        rgb = mmcv.bgr2rgb(image)
        kwargs = dict(pred_score_thr=self.score_thr) if self.scope == 'mmdet' else {}
        self.visualizer.add_datasample('demo', rgb, sample, draw_gt=False, show=False,
                                       out_file=out_file, **kwargs)
        return self.visualizer.get_image()

    def _name(self, label: int) -> str:
        return self.classes[label] if 0 <= label < len(self.classes) else f'class {label}'

    def counts(self, sample) -> Counter:
        """Detection: instances per class name above the score threshold. Segmentation:
        pixels per class name."""
        if self.scope == 'mmdet':
            instances = sample.pred_instances
            labels = instances.labels[instances.scores >= self.score_thr].tolist()
            return Counter(self._name(label) for label in labels)
        import torch
        labels = sample.pred_sem_seg.data.flatten()
        found = torch.bincount(labels[labels >= 0].long())
        return Counter({self._name(i): int(n) for i, n in enumerate(found.tolist()) if n})

    def summary(self, counts: Counter) -> str:
        """``7 detections (person 3, car 2, dog 2)`` / ``12 classes, largest wall 34%, ...``."""
        if self.scope == 'mmdet':
            total = sum(counts.values())
            if not total:
                return f'no detections with score >= {self.score_thr:g}'
            listed = ', '.join(f'{name} {n}' for name, n in counts.most_common())
            return f'{total} detection{"s" if total != 1 else ""} ({listed})'
        pixels = sum(counts.values()) or 1
        top = ', '.join(f'{name} {_percent(n / pixels)}' for name, n in counts.most_common(3))
        return f'{len(counts)} class{"es" if len(counts) != 1 else ""}, largest {top}'


def _percent(share: float) -> str:
    return '<1%' if 0 < share < 0.005 else f'{100 * share:.0f}%'


# ----------------------------------------------------------------------------- running
def _progress(total: int, enabled: bool):
    """A rich progress bar (lines printed through its console stay above it) or a stand-in."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
    console = Console(highlight=False, soft_wrap=True)
    if not enabled or not console.is_terminal:  # a log file gets the lines only
        return None, console
    progress = Progress('[progress.description]{task.description}', BarColumn(),
                        MofNCompleteColumn(), TimeRemainingColumn(), console=console,
                        transient=True)
    return progress, console


def run_images(predictor: Predictor, paths, out_dir: str) -> Counter:
    progress, console = _progress(len(paths), enabled=len(paths) > 1)
    seen, skipped = Counter(), []
    from convnext_dense.datasets import CorruptImageError
    if progress is not None:
        progress.start()
        task = progress.add_task('images', total=len(paths))
    try:
        for path in paths:
            name = osp.basename(path)
            try:
                image = read_image(path)
            except CorruptImageError as error:
                if len(paths) == 1:
                    raise
                skipped.append(path)
                console.print(f'{name}: skipped, {error}')
            else:
                sample = predictor(image)
                predictor.draw(image, sample, osp.join(out_dir, name))
                counts = predictor.counts(sample)
                seen.update(counts)
                console.print(f'{name}: {predictor.summary(counts)}')
            if progress is not None:
                progress.advance(task)
    finally:
        if progress is not None:
            progress.stop()
    drawn = len(paths) - len(skipped)
    console.print(f'drew {drawn} image{"s" if drawn != 1 else ""} in {out_dir}'
                  + (f' ({len(skipped)} skipped)' if skipped else ''))
    return seen


def run_video(predictor: Predictor, path: str, out_dir: str) -> Counter:
    import cv2
    import mmcv
    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        raise InputError(f'video {path} cannot be opened (OpenCV reads .mp4 / .avi with its '
                         f'built-in codecs); convert it, e.g. with ffmpeg -i {path} out.mp4.')
    frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    out_file = osp.join(out_dir, osp.splitext(osp.basename(path))[0] + '.mp4')
    progress, console = _progress(frames or 0, enabled=True)
    writer, seen, done = None, Counter(), 0
    if progress is not None:
        progress.start()
        task = progress.add_task('frames', total=frames)
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            sample = predictor(frame)
            drawn = mmcv.rgb2bgr(predictor.draw(frame, sample))
            if writer is None:
                height, width = drawn.shape[:2]
                writer = cv2.VideoWriter(out_file, cv2.VideoWriter_fourcc(*'mp4v'), fps,
                                         (width, height))
            writer.write(drawn)
            seen.update(predictor.counts(sample))
            done += 1
            if progress is not None:
                progress.advance(task)
    finally:
        if progress is not None:
            progress.stop()
        capture.release()
        if writer is not None:
            writer.release()
    if not done:
        raise InputError(f'video {path} has no frame that OpenCV can decode.')
    summary = predictor.summary(seen)
    if predictor.scope == 'mmdet':
        summary = summary.replace(' (', ' in all (', 1)
    console.print(f'{osp.basename(path)}: {done} frame{"s" if done != 1 else ""}, {summary}; '
                  f'drawn in {out_file}')
    return seen


# What the stock drawing and mask pasting say about every frame: noise for a demo.
QUIET = (r'Warning: The (bbox|polygon) is out of bounds', r'To copy construct from a tensor')


def main(argv=None):
    args = parse_args(argv)
    for message in QUIET:
        warnings.filterwarnings('ignore', message=message)
    kind, paths = list_inputs(args.input)  # before the model: a wrong path fails fast
    import torch
    device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    predictor = Predictor(args.config, args.checkpoint, device, args.score_thr)
    if args.fast:
        print(f'fast inference: {predictor.enable_fast()}')
    os.makedirs(args.out, exist_ok=True)
    if kind == 'video':
        run_video(predictor, paths[0], args.out)
    else:
        run_images(predictor, paths, args.out)


if __name__ == '__main__':
    run_tool(main)
