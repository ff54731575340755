"""Convert a ConvNeXt checkpoint: a backbone (official / timm / mmpretrain / mmdet layouts) to
our backbone layout, or a whole official trained COCO / ADE20K model to our detector /
segmentor key names.

    python tools/convert_checkpoint.py SRC DST [--mode {auto,backbone,full}]
                                       [--prefix backbone.] [--add-prefix backbone.] [--debug]

``--mode backbone`` writes ``{'state_dict': {...}}`` with the backbone only; it loads with
``init_cfg=dict(type='Pretrained', checkpoint=DST)`` or, with ``--add-prefix backbone.``, with
a detector's ``load_from``. ``--mode full`` takes an official trained dense checkpoint (written
by mmcv 1.x: Cascade Mask R-CNN, Mask R-CNN or UperNet of facebookresearch/ConvNeXt) and writes
every tensor under our names, with the old runner state (optimizer, apex amp) dropped and a
plain ``meta`` naming the source (CLASSES, PALETTE, versions); DST loads with tools/test.py
or ``load_from`` of the config it belongs to. ``auto`` (the default) is ``full`` for such an
official checkpoint given without ``--prefix`` / ``--add-prefix``, else ``backbone``. DST is
written atomically: an interrupted run leaves no partial DST.
"""
import argparse

from _common import add_debug_arg, require_checkpoint, run_tool
from convnext_dense.errors import ConfigError, InputError
from convnext_dense.checkpoint import official as official_models, save_atomically
from convnext_dense.checkpoint.layouts import convert_checkpoint
from mmengine.runner.checkpoint import _load_checkpoint


def _full(checkpoint, src: str) -> dict:
    """The whole official dense model in our key names, with a plain provenance meta."""
    meta = official_models.old_runner_meta(checkpoint)
    if meta is None or not isinstance(checkpoint.get('state_dict'), dict):
        raise InputError(f'{src} is not an official trained ConvNeXt detection / segmentation '
                         f'checkpoint (no mmcv 1.x meta and state_dict); --mode full converts '
                         f'only those. Use --mode backbone for backbone weights.')
    state_dict = checkpoint['state_dict']  # already in our key names
    found = official_models.identify(state_dict)
    if found['family'] is None:
        raise InputError(f'{src} holds no Cascade Mask R-CNN, Mask R-CNN or UperNet heads '
                         f'(roi_head.* / decode_head.*); use --mode backbone.')
    configs = official_models.matching_configs(found['family'], found['arch'])
    print(f'{src}: {official_models.describe(meta, found)}'
          + (f'; load it with configs/{" or configs/".join(configs)}' if configs else ''))
    return dict(meta=official_models.converted_meta(meta, src), state_dict=state_dict)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('src', help='checkpoint to convert')
    parser.add_argument('dst', help='where to write the converted checkpoint')
    parser.add_argument('--mode', choices=['auto', 'backbone', 'full'], default='auto',
                        help='backbone: the backbone only; full: a whole official trained '
                        'detector / segmentor; auto: full for an official trained dense '
                        'checkpoint without --prefix / --add-prefix, else backbone')
    parser.add_argument('--prefix', default=None,
                        help="take only keys under this prefix (default: 'backbone.' if present)")
    parser.add_argument('--add-prefix', default='', help="prepend this to every written key")
    add_debug_arg(parser)
    args = parser.parse_args(argv)
    require_checkpoint(args.src, 'source checkpoint')
    checkpoint = _load_checkpoint(args.src, map_location='cpu')
    mode = args.mode
    if mode == 'auto':
        official = official_models.old_runner_meta(checkpoint) is not None and \
            official_models.identify(checkpoint.get('state_dict') or {})['family'] is not None
        mode = 'full' if official and args.prefix is None and not args.add_prefix \
            else 'backbone'
    if mode == 'full':
        if args.prefix is not None or args.add_prefix:
            raise ConfigError('--mode full writes the whole model under our names; --prefix and '
                              '--add-prefix apply to --mode backbone only.')
        converted = _full(checkpoint, args.src)
        save_atomically(converted, args.dst)
        print(f'wrote {len(converted["state_dict"])} tensors (whole model) to {args.dst}')
        return
    state_dict = convert_checkpoint(checkpoint, prefix=args.prefix)
    if not state_dict:
        raise InputError(f'{args.src} holds no ConvNeXt backbone weights (prefix '
                         f'{args.prefix!r}); give --prefix for weights under another key.')
    state_dict = {args.add_prefix + k: v for k, v in state_dict.items()}
    save_atomically({'state_dict': state_dict}, args.dst)
    print(f'wrote {len(state_dict)} tensors to {args.dst}')


if __name__ == '__main__':
    run_tool(main)
