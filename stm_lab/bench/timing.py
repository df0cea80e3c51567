"""The one timer of every benchmark, and the provenance of their results.

A machine running other jobs makes timings drift by tens of percent from one minute to the next, so contenders
are never timed one after the other: :func:`interleaved` warms every contender up first, then runs *rounds*, and in
each round every contender is timed once (in an order rotated every round). A contender's figure is the median over
rounds, with the fastest round and the spread beside it, so all contenders see the same slow and fast moments.

:func:`provenance` is what a saved benchmark result records about the machine: the load average before and after,
torch's threads, the CPU model, the torch version (:func:`stm_lab.results.provenance`) and the OpenMP wait policy.

OpenMP threads that *spin* while they wait (libgomp's default) stall every other process on a shared machine at each
parallel region (measured here under load: ``u_dwconv_micro`` trained at 10 images/s with 2 spinning threads, at 108
with passive waiting). The policy is read once, when torch loads OpenMP: importing ``stm_lab`` sets
``OMP_WAIT_POLICY=PASSIVE`` unless the variable is set (the Makefile exports it too), which covers ``stm-lab bench``
and ``python -m stm_lab.bench``; a program that imports torch before ``stm_lab`` keeps libgomp's default. The policy
in force is recorded in the provenance.
"""
from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

Contender = Callable[[], object]


@dataclass
class Timing:
    """Seconds per call of one contender, one figure per round."""
    seconds: List[float] = field(default_factory=list)
    calls: int = 1  # calls per round

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def best(self) -> float:
        return min(self.seconds)

    @property
    def spread(self) -> float:
        """(slowest round - fastest round) / median: 0 on a quiet machine."""
        return (max(self.seconds) - min(self.seconds)) / self.median

    def rates(self, per_call: float = 1.0) -> List[float]:
        """``per_call`` (e.g. images in a call) per second, one figure per round."""
        return [per_call / s for s in self.seconds]


def interleaved(contenders: Dict[str, Contender], rounds: int = 5, calls: int = 1, warmup: int = 1,
                target_s: Optional[float] = None, sync: Optional[Callable[[], None]] = None,
                clock: Callable[[], float] = time.perf_counter, log: Optional[Callable[[str], None]] = None,
                fmt: Callable[[float], str] = lambda s: f'{1e3 * s:.1f} ms') -> Dict[str, Timing]:
    """Time ``contenders`` side by side: ``warmup`` calls each, then ``rounds`` rounds in which every contender runs
    ``calls`` calls back to back (rotated order: round r starts with contender r). With ``target_s``, one more call
    per contender sizes its calls per round so that its share of a round takes about ``target_s`` seconds. ``sync``
    runs before each clock reading (``torch.cuda.synchronize``: kernels are asynchronous). Returns a
    :class:`Timing` per contender, in the order given. ``log`` gets a line per round (seconds per call shown by
    ``fmt``)."""
    if rounds < 1:
        raise ValueError(f'rounds must be at least 1, not {rounds}')
    sync = sync or (lambda: None)
    names = list(contenders)
    n_calls: Dict[str, int] = {}
    for name in names:
        for _ in range(warmup):
            contenders[name]()
        n_calls[name] = max(1, calls)
        if target_s is not None:
            n_calls[name] = max(1, round(target_s / max(_time(contenders[name], 1, sync, clock), 1e-6)))
    out = {name: Timing(calls=n_calls[name]) for name in names}
    for r in range(rounds):
        k = r % len(names) if names else 0
        for name in names[k:] + names[:k]:
            out[name].seconds.append(_time(contenders[name], n_calls[name], sync, clock) / n_calls[name])
        if log:
            log(f'  round {r + 1}/{rounds}: ' + ', '.join(f'{n} {fmt(out[n].seconds[-1])}' for n in names))
    return out


def _time(fn: Contender, n: int, sync: Callable[[], None], clock: Callable[[], float]) -> float:
    sync()
    t0 = clock()
    for _ in range(n):
        fn()
    sync()
    return clock() - t0


def cuda_sync(device) -> Optional[Callable[[], None]]:
    """The ``sync`` for :func:`interleaved` on ``device`` (None on the CPU)."""
    import torch
    device = torch.device(device)
    return (lambda: torch.cuda.synchronize(device)) if device.type == 'cuda' else None


# ---------------------------------------------------------------------------------------------- provenance
def load_average() -> Optional[List[float]]:
    """The 1, 5 and 15 minute load averages (None where the system has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


@dataclass
class Watch:
    """Started when a benchmark starts: its wall time and the load average then, for :func:`provenance`."""
    t0: float = field(default_factory=time.time)
    load_start: Optional[List[float]] = field(default_factory=load_average)

    def load_now(self) -> float:
        """The highest 1-minute load average seen so far."""
        now = load_average()
        return max((x[0] for x in (self.load_start, now) if x), default=0.0)


def provenance(watch: Watch, profile: str = 'bench', **extra) -> dict:
    """The provenance of a benchmark result: :func:`stm_lab.results.provenance` (git commit, command, torch and
    timm versions, CPU model, torch's threads, GPU) with the wall time, the OpenMP wait policy and the load average
    at the start and at the end."""
    from ..results import provenance as base
    return base(profile, wall_s=round(time.time() - watch.t0, 1), **extra,
                omp_wait_policy=os.environ.get('OMP_WAIT_POLICY'), load_avg_start=watch.load_start,
                load_avg_end=load_average())


def busy_note(watch: Watch, threads: int) -> Optional[str]:
    """A warning when other processes competed for the CPUs during the benchmark, else None."""
    load, cpus = watch.load_now(), os.cpu_count() or 1
    if load <= cpus - 0.5 * threads:
        return None
    return (f'note: load average {load:.1f} on {cpus} CPUs: other processes were competing for the CPUs, so all '
            f'timings are inflated, multi-threaded ones most (each parallel region waits for its slowest, possibly '
            f'descheduled, thread); compare only figures of this run, or rerun on an idle machine / with --threads 1')
