"""Convert an official / timm / mmpretrain / mmdet ConvNeXt checkpoint to our backbone layout.

    python tools/convert_checkpoint.py SRC DST [--prefix backbone.] [--add-prefix backbone.]
                                       [--debug]

DST holds ``{'state_dict': {...}}`` and loads with ``init_cfg=dict(type='Pretrained',
checkpoint=DST)`` or, with ``--add-prefix backbone.``, with a detector's ``load_from``. It is
written atomically: an interrupted run leaves no partial DST.
"""
import argparse

from _common import add_debug_arg, require_checkpoint, run_tool
from convnext_dense.engine import save_atomically
from convnext_dense.models import convert_checkpoint
from mmengine.runner.checkpoint import _load_checkpoint


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('src', help='checkpoint to convert')
    parser.add_argument('dst', help='where to write the converted checkpoint')
    parser.add_argument('--prefix', default=None,
                        help="take only keys under this prefix (default: 'backbone.' if present)")
    parser.add_argument('--add-prefix', default='', help="prepend this to every written key")
    add_debug_arg(parser)
    args = parser.parse_args(argv)
    require_checkpoint(args.src, 'source checkpoint')
    state_dict = convert_checkpoint(_load_checkpoint(args.src, map_location='cpu'),
                                    prefix=args.prefix)
    if not state_dict:
        raise ValueError(f'{args.src} holds no ConvNeXt backbone weights (prefix '
                         f'{args.prefix!r}); give --prefix for weights under another key.')
    state_dict = {args.add_prefix + k: v for k, v in state_dict.items()}
    save_atomically({'state_dict': state_dict}, args.dst)
    print(f'wrote {len(state_dict)} tensors to {args.dst}')


if __name__ == '__main__':
    run_tool(main)
