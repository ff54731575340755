"""What the benchmark scripts share: the machine they ran on, whether other processes competed
for the CPU, the report of figures, and round-robin timing.

Used by tools/analysis/benchmark.py and benchmark_recipe.py (``import bench_common``: the
scripts' own folder is on ``sys.path`` when they run).
"""
import datetime
import json
import os
import platform
import statistics
import subprocess
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from convnext_dense.inference.fast import bf16_supported

# ----------------------------------------------------------------------------- the machine
BUSY_FRACTION = 0.5  # a 1-minute load average above this fraction of the cores: busy machine
OTHERS_SHARE = 0.15  # other processes using more than this share of the cores during a run: busy
ISA_FLAGS = ('avx2', 'avx512f', 'avx512_bf16', 'amx_tile', 'amx_bf16')


def _cpuinfo_field(text: str, field: str) -> Optional[str]:
    for line in text.splitlines():
        name, _, value = line.partition(':')
        if name.strip() == field:
            return value.strip()
    return None


def cpu_description(cpuinfo: Optional[str] = None, lscpu: Optional[str] = None) -> dict:
    """The CPU model and the ISA flags that decide the fast paths, from /proc/cpuinfo (or
    ``lscpu`` where that file is missing). ``cpuinfo`` / ``lscpu`` give the texts (tests)."""
    if cpuinfo is None:
        try:
            with open('/proc/cpuinfo') as f:
                cpuinfo = f.read()
        except OSError:
            cpuinfo = ''
    model = _cpuinfo_field(cpuinfo, 'model name')
    flags = _cpuinfo_field(cpuinfo, 'flags')
    if model is None or flags is None:
        if lscpu is None:
            try:
                lscpu = subprocess.run(['lscpu'], capture_output=True, text=True,
                                       timeout=10).stdout
            except (OSError, subprocess.SubprocessError):
                lscpu = ''
        model = model or _cpuinfo_field(lscpu, 'Model name')
        flags = flags or _cpuinfo_field(lscpu, 'Flags')
    flags = set((flags or '').split())
    return dict(model=model or platform.processor() or platform.machine(),
                cores=os.cpu_count() or 1,
                isa={flag: flag in flags for flag in ISA_FLAGS})


def load_average() -> Optional[Sequence[float]]:
    """``os.getloadavg()`` (1, 5, 15 minutes), or None where the system has none."""
    try:
        return tuple(os.getloadavg())
    except (OSError, AttributeError):
        return None


def busy_warning(load: Optional[Sequence[float]], cores: int, when: str,
                 fraction: float = BUSY_FRACTION) -> Optional[str]:
    """A WARNING line when the 1-minute load average ``load[0]`` exceeded ``fraction`` x
    ``cores`` (other processes were running: timings measure them too), else None."""
    if load is None or load[0] <= fraction * cores:
        return None
    return (f'WARNING: the machine was busy {when} the run: 1-minute load average '
            f'{load[0]:.2f} on {cores} cores (above {fraction:g} x cores). Other processes '
            f'compete for the CPU; these timings are not those of an idle machine.')


def cpu_seconds() -> Optional[Tuple[float, float]]:
    """(CPU seconds that all processes on the machine have used since boot, from /proc/stat;
    CPU seconds of this process and its children), or None where /proc/stat is missing."""
    try:
        with open('/proc/stat') as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    busy = sum(ticks) - ticks[3] - ticks[4]  # everything but idle and iowait
    own = os.times()
    return (busy / os.sysconf('SC_CLK_TCK'),
            own.user + own.system + own.children_user + own.children_system)


class LoadWatch:
    """Whether other processes competed for the CPU: the load average when the run starts
    (then it is theirs alone) and, over the run, the CPU time that all processes used minus
    ours, as a share of the machine (the load average at the end counts our own threads too,
    so it is recorded but not judged, unless /proc/stat is missing)."""

    def __init__(self, cores: Optional[int] = None, getloadavg=load_average,
                 cpu_seconds=cpu_seconds, clock=time.monotonic):
        self.cores = cores or os.cpu_count() or 1
        self._getloadavg, self._cpu_seconds, self._clock = getloadavg, cpu_seconds, clock
        self.before = self._getloadavg()
        self.after = None
        self.others_share = None  # of cores x wall time, once stopped
        self._start = (self._cpu_seconds(), self._clock())

    def stop(self) -> List[str]:
        self.after = self._getloadavg()
        (cpu0, t0), cpu1 = self._start, self._cpu_seconds()
        if cpu0 is not None and cpu1 is not None:
            others = (cpu1[0] - cpu0[0]) - (cpu1[1] - cpu0[1])
            wall = max(self._clock() - t0, 1e-9)
            self.others_share = max(0.0, others / (wall * self.cores))
        return self.warnings()

    def warnings(self) -> List[str]:
        found = [busy_warning(self.before, self.cores, 'at the start of')]
        if self.others_share is not None:
            if self.others_share > OTHERS_SHARE:
                found.append(f'WARNING: other processes used {self.others_share:.0%} of the '
                             f'{self.cores} cores during the run (above {OTHERS_SHARE:.0%}); '
                             f'these timings are not those of an idle machine.')
        elif self.after is not None:
            found.append(busy_warning(self.after, self.cores, 'at the end of'))
        return [w for w in found if w]


def machine_description(device: str = 'cpu') -> dict:
    """What a figure depends on: CPU, native bf16, threads, torch, and the GPU if used."""
    info = dict(date=datetime.datetime.now().isoformat(timespec='seconds'),
                host=platform.node(), python=platform.python_version(),
                torch=torch.__version__, threads=torch.get_num_threads(),
                cpu=cpu_description(), cpu_bf16_native=bf16_supported('cpu'))
    if device == 'cuda':
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=torch.cuda.get_device_name(0),
                    gpu_memory_gib=round(props.total_memory / 2 ** 30, 1),
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                    gpu_bf16_native=bf16_supported('cuda'),
                    float32_matmul_precision=torch.get_float32_matmul_precision(),
                    cudnn_allow_tf32=torch.backends.cudnn.allow_tf32)
    return info


def print_machine(info: dict, watch: LoadWatch) -> None:
    cpu = info['cpu']
    isa = ', '.join(f for f, present in cpu['isa'].items() if present) or 'none of ' + \
        '/'.join(ISA_FLAGS)
    print(f"# {info['date']} {info['host']}: {cpu['model']}, {cpu['cores']} cores "
          f"({isa}); native bf16 (oneDNN): {info['cpu_bf16_native']}; torch {info['torch']}, "
          f"{info['threads']} threads", flush=True)
    if 'gpu' in info:
        print(f"# GPU {info['gpu']} ({info['gpu_memory_gib']} GiB), CUDA {info['cuda']}, "
              f"cuDNN {info['cudnn']}, bf16: {info['gpu_bf16_native']}, fp32 matmul "
              f"precision {info['float32_matmul_precision']!r}, cuDNN TF32 "
              f"{info['cudnn_allow_tf32']}", flush=True)
    print(f'# load average before: {_fmt_load(watch.before)}', flush=True)
    for warning in watch.warnings():
        print(warning, flush=True)


def _fmt_load(load) -> str:
    return 'unknown' if load is None else ' '.join(f'{x:.2f}' for x in load)


def finish_load_watch(report, watch: LoadWatch) -> List[str]:
    """Record the load average before / after in ``report`` and print the warnings."""
    warnings = watch.stop()
    for when, load in (('before', watch.before), ('after', watch.after)):
        if load is not None:
            report.add(f'load_avg_1min_{when}', load[0], f'(on {watch.cores} cores)')
    if watch.others_share is not None:
        report.add('cpu_share_of_other_processes', watch.others_share,
                   f'(of {watch.cores} cores x the run)')
    print(f'# load average after: {_fmt_load(watch.after)}', flush=True)
    for warning in warnings:
        print(warning, flush=True)
    return warnings


class Report:
    """Collects figures; prints each as a JSON line and, at the end, as a table."""

    def __init__(self):
        self.rows = []

    def add(self, figure: str, value: float, unit: str, **extra):
        row = dict(figure=figure, value=round(value, 4), unit=unit, **extra)
        self.rows.append(row)
        print(json.dumps(row), flush=True)

    def table(self) -> str:
        width = max(len(r['figure']) for r in self.rows)
        return '\n'.join(f"{r['figure']:<{width}}  {r['value']:>12.4g} {r['unit']}"
                         for r in self.rows)


def run_times(fns: Dict[str, Callable], warmup: int, repeats: int,
              budget_s: Optional[float] = None, min_repeats: int = 1,
              clock: Callable[[], float] = time.perf_counter) -> Dict[str, List[float]]:
    """Wall times (s) of ``repeats`` calls of each function, called round-robin (A B A B ...)
    after ``warmup`` rounds, so that drifts of a shared machine hit every contestant alike.
    With ``budget_s``, the timed rounds stop after the first round that ends more than
    ``budget_s`` after they began, once ``min_repeats`` rounds are done: every function keeps
    the same number of times."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    began = clock()
    for done in range(1, repeats + 1):
        for name, fn in fns.items():
            start = clock()
            fn()
            times[name].append(clock() - start)
        if budget_s is not None and done >= min_repeats and clock() - began > budget_s:
            break
    return times


def median_seconds(fns: Dict[str, Callable], warmup: int, repeats: int) -> Dict[str, float]:
    """Median of :func:`run_times` per function."""
    return {name: statistics.median(t) for name, t in run_times(fns, warmup, repeats).items()}
