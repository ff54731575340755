"""Convert an official / timm / mmpretrain / mmdet ConvNeXt checkpoint to our backbone layout.

    python tools/convert_checkpoint.py SRC DST [--prefix backbone.] [--add-prefix backbone.]

DST holds ``{'state_dict': {...}}`` and loads with ``init_cfg=dict(type='Pretrained',
checkpoint=DST)`` or, with ``--add-prefix backbone.``, with a detector's ``load_from``.
"""
import argparse
import os
import os.path as osp
import sys

import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
import convnext_dense  # noqa: E402,F401  (applies the safe-loading patches)
from convnext_dense.models import convert_checkpoint  # noqa: E402
from mmengine.runner.checkpoint import _load_checkpoint  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('src', help='checkpoint to convert')
    parser.add_argument('dst', help='where to write the converted checkpoint')
    parser.add_argument('--prefix', default=None,
                        help="take only keys under this prefix (default: 'backbone.' if present)")
    parser.add_argument('--add-prefix', default='', help="prepend this to every written key")
    args = parser.parse_args(argv)
    if not osp.isfile(args.src):
        parser.error(f'source checkpoint {args.src} does not exist')
    state_dict = convert_checkpoint(_load_checkpoint(args.src, map_location='cpu'),
                                    prefix=args.prefix)
    if not state_dict:
        parser.error(f'{args.src} holds no ConvNeXt backbone weights (prefix {args.prefix!r})')
    state_dict = {args.add_prefix + k: v for k, v in state_dict.items()}
    os.makedirs(osp.dirname(osp.abspath(args.dst)), exist_ok=True)
    tmp = args.dst + '.tmp'
    torch.save({'state_dict': state_dict}, tmp)
    os.replace(tmp, args.dst)
    print(f'wrote {len(state_dict)} tensors to {args.dst}')


if __name__ == '__main__':
    main()
