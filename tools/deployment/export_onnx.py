"""Export a segmentor (whole-image logits), a Mask R-CNN / Cascade Mask R-CNN detector or a
backbone to ONNX and check it with onnxruntime.

    python tools/deployment/export_onnx.py CONFIG CHECKPOINT --out FILE.onnx
        [--shape H W] [--dynamic] [--part {model,backbone,features}]
        [--atol A] [--rtol R] [--benchmark ITERS] [--check-images IMG ...]
        [--cfg-options KEY=VALUE ...] [--debug]

CONFIG: a segmentation config (UperNet: --part model exports the logits, the default), a
detection config (Mask R-CNN / Cascade Mask R-CNN: --part model exports the whole detector;
any detector: --part backbone or features), or a bare-backbone config
(``model = dict(type='convnext_dense.ConvNeXt', arch=...)``).

A whole detector is written with the TorchScript exporter (opset 17, standard operators only;
height and width always dynamic, batch 1) and its outputs are boxes, scores, labels,
num_valid and 28x28 mask probabilities per image (convnext_dense.deployment.detector_export).
The check runs mmdet's own predict and onnxruntime on the same inputs (random images, or the
--check-images files through the config's test pipeline) at the export size and at a second
size, and compares the kept detections: count, labels, boxes, scores, mask probabilities and
pasted masks, with the tolerances it prints (DETECTOR_TOLERANCES).
The input of the ONNX file is the normalised image batch (N, 3, H, W) float32, as the config's
data_preprocessor makes it. After the export the file is run with onnxruntime on the same
random inputs as PyTorch (and, with --dynamic, on 2 images of another size); the maximum
absolute differences are printed, and the tool fails (exit status 2) when one exceeds
atol + rtol * max |PyTorch output|. --benchmark times PyTorch eager and onnxruntime on the CPU.
"""
import argparse
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # tools/ for _common
from _common import add_debug_arg, load_config, require_checkpoint, run_tool  # noqa: E402


def parse_args(argv=None):
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(description='Export a convnext_dense segmentor or '
                                     'backbone to ONNX and check it with onnxruntime')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint of that config (for a bare-backbone '
                        'config: any ConvNeXt checkpoint layout)')
    parser.add_argument('--out', required=True, help='the ONNX file to write')
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'),
                        help='input height and width of the export (default: '
                        "test_cfg.crop_size for sliding-window inference, else the "
                        "data_preprocessor's size, else 512 512)")
    parser.add_argument('--dynamic', action='store_true',
                        help='symbolic batch, height and width (checked at another size too)')
    parser.add_argument('--part', choices=['model', 'backbone', 'features'], default='model',
                        help='model: the segmentor logits or the whole Mask R-CNN / Cascade '
                        'Mask R-CNN detector (default); backbone: the backbone maps; '
                        "features: backbone + neck (a detector's FPN)")
    parser.add_argument('--atol', type=float, default=1e-4,
                        help='check tolerance: absolute part (default 1e-4)')
    parser.add_argument('--rtol', type=float, default=1e-4,
                        help='check tolerance: part relative to max |PyTorch output| '
                        '(default 1e-4)')
    parser.add_argument('--benchmark', type=int, default=0, metavar='ITERS',
                        help='also time PyTorch eager and onnxruntime on the CPU (median of '
                        'ITERS runs at the export shape, batch 1)')
    parser.add_argument('--check-images', nargs='+', metavar='IMG',
                        help='whole detectors: check on these image files (through the '
                        "config's test pipeline) besides two random inputs")
    parser.add_argument('--no-fallback', action='store_true', help='fail when the dynamo '
                        'exporter fails instead of falling back to the TorchScript exporter')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config keys, e.g. model.backbone.arch=small')
    add_debug_arg(parser)
    args = parser.parse_args(argv)
    args.launcher, args.work_dir, args.local_rank = 'none', None, 0  # for load_config
    return args


def default_shape(cfg):
    """(H, W) the config's network sees: the sliding-window crop, else the data
    preprocessor's size, else (detectors) the test pipeline's Resize scale padded to the
    pad_size_divisor, else 512x512."""
    model = cfg.model
    if cfg.get('default_scope') == 'mmdet' and 'test_dataloader' in cfg:
        resize = [s for s in cfg.test_dataloader.dataset.get('pipeline', [])
                  if s.get('type') == 'Resize' and s.get('scale')]
        if resize:
            divisor = (model.get('data_preprocessor') or {}).get('pad_size_divisor', 1) or 1
            width, height = resize[0]['scale']  # mmdet's Resize scale is (w, h)
            return tuple(-(-v // divisor) * divisor for v in (min(height, width),
                                                              max(height, width)))
    test_cfg = model.get('test_cfg') or {}
    if test_cfg.get('mode') == 'slide' and test_cfg.get('crop_size'):
        return tuple(test_cfg['crop_size'])
    size = (model.get('data_preprocessor') or {}).get('size')
    return tuple(size) if size else (512, 512)


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args)
    require_checkpoint(args.checkpoint, 'checkpoint', 'give the checkpoint of this config')
    from convnext_dense.deployment import (benchmark, build_pytorch_model, check_inputs,
                                           compare, export_module, export_onnx)
    from convnext_dense.deployment.onnx_export import check_part, is_whole_detector
    check_part(cfg, args.part)  # a detector's whole model: refused before it is built
    shape = tuple(args.shape) if args.shape else default_shape(cfg)
    model = build_pytorch_model(cfg, args.checkpoint)
    module, output_names = export_module(cfg, model, args.part)
    if is_whole_detector(cfg, args.part):
        return export_whole_detector(args, cfg, model, module, shape)
    inputs = check_inputs(shape, args.dynamic)
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    result = export_onnx(module, inputs[0], args.out, output_names, dynamic=args.dynamic,
                         fallback=not args.no_fallback)
    if result['fallback_reason']:
        print(f'dynamo exporter failed ({result["fallback_reason"]}); fell back to the '
              f'TorchScript exporter (dynamo=False, opset 17)')
    print(f'exported {args.part} of {args.config} at {shape[0]}x{shape[1]}'
          f'{" (dynamic batch/height/width)" if args.dynamic else ""} with the '
          f'{result["exporter"]} exporter in {result["seconds"]:.1f} s: {args.out} '
          f'({osp.getsize(args.out) / 2**20:.1f} MiB'
          f'{" + weights in " + args.out + ".data" if result["external_data"] else ""})')
    rows = compare(module, args.out, inputs, atol=args.atol, rtol=args.rtol)  # raises if off
    print('onnxruntime vs PyTorch (max abs difference / tolerance):')
    for row in rows:
        print(f'  input {row["input"]} {row["output"]} {row["shape"]}: '
              f'{row["max_abs_diff"]:.3g} / {row["tolerance"]:.3g}')
    print(f'check passed: max abs difference {max(r["max_abs_diff"] for r in rows):.3g}')
    if args.benchmark:
        speed = benchmark(module, args.out, inputs[0], iters=args.benchmark)
        print(f'CPU speed at 1x3x{shape[0]}x{shape[1]}, {speed["threads"]} thread(s): PyTorch '
              f'eager {speed["pytorch_s"] * 1e3:.1f} ms, onnxruntime '
              f'{speed["onnxruntime_s"] * 1e3:.1f} ms ({speed["speedup"]:.2f}x)')


def export_whole_detector(args, cfg, model, module, shape):
    """Export, check and optionally time a Mask R-CNN / Cascade Mask R-CNN detector."""
    import torch

    from convnext_dense.deployment.detector_export import (DETECTOR_TOLERANCES,
                                                           compare_detector, export_detector,
                                                           onnx_domains, preprocess_images)
    from convnext_dense.deployment.onnx_export import OnnxCheckError
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    height, width = shape
    example = torch.randn(1, 3, height, width, generator=generator)
    result = export_detector(module, example, args.out)
    domains = onnx_domains(args.out)
    print(f'exported the whole detector of {args.config} at {height}x{width} (dynamic '
          f'height/width, batch 1) with the TorchScript exporter, opset {result["opset"]}, in '
          f'{result["seconds"]:.1f} s: {args.out} ({osp.getsize(args.out) / 2**20:.1f} MiB); '
          f'operator domains {domains}')
    custom = [d for d in domains if d not in ('', 'ai.onnx')]
    if custom:
        raise OnnxCheckError(f'{args.out} uses non-standard operator domains {custom}.')
    inputs = [example, torch.randn(1, 3, height + 64, width - 32 if width > 96 else width + 32,
                                   generator=generator)]
    if args.check_images:
        inputs += preprocess_images(cfg, model, args.check_images)
    print('check tolerances (max |ONNX - PyTorch|): ' + ', '.join(
        f'{k} {v:g}' for k, v in DETECTOR_TOLERANCES.items()) + '; count and labels equal')
    rows = compare_detector(model, module, args.out, inputs)  # raises if off
    print('onnxruntime vs PyTorch (mmdet predict) per image:')
    for row in rows:
        print(f'  input {row["input"]}: {row["detections"]} detections, max diff boxes '
              f'{row["boxes"]:.3g} px, scores {row["scores"]:.3g}, mask probabilities '
              f'{row["mask_probs"]:.3g}, pasted mask pixels {row["mask_pixels"]:.3g}')
    if not any(row['detections'] for row in rows):
        print('warning: no input gave a detection, so only the counts were compared; pass '
              'real images with --check-images')
    print('check passed')
    if args.benchmark:  # the export module and the file as for any part, plus mmdet's predict
        from convnext_dense.deployment import benchmark
        from convnext_dense.deployment.detector_export import reference_predictions
        from convnext_dense.deployment.onnx_export import median_call_seconds
        speed = benchmark(module, args.out, example, iters=args.benchmark)
        predict = median_call_seconds(lambda: reference_predictions(model, example),
                                      args.benchmark)
        print(f'CPU speed at 1x3x{height}x{width}, {speed["threads"]} thread(s), median '
              f'of {args.benchmark}: mmdet predict (PyTorch eager) {predict * 1e3:.1f} ms, '
              f'export module (PyTorch eager) {speed["pytorch_s"] * 1e3:.1f} ms, onnxruntime '
              f'{speed["onnxruntime_s"] * 1e3:.1f} ms '
              f'({predict / speed["onnxruntime_s"]:.2f}x faster than mmdet predict)')


if __name__ == '__main__':
    run_tool(main)
