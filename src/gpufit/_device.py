"""How many fits to run at once, from the device the work lands on.

Two sizes matter:

* the **chunk**: fits per compiled call. Inputs, outputs and, on an accelerator, every
  fit's temporaries live at once, so it is set from the device's memory;
* the **lockstep group**: fits that step together in one vmapped ``while_loop``. A group
  runs as long as its slowest member, and on a CPU a group's temporaries should stay in
  cache, so CPUs use small groups (slots that take the chunk's fits from a queue, one
  after another, inside the compiled call) and accelerators the whole chunk.
"""

from __future__ import annotations

import functools
import math
import os

import jax
from jax.experimental.compilation_cache import compilation_cache

from .exceptions import BackendUnavailable

# a CPU's lockstep slots x one fit's temporaries (bytes_per_fit): benchmarks/slots.py
_CPU_SLOT_BYTES = 48 * 2**20
CPU_SLOTS_MIN, CPU_SLOTS_MAX = 8, 64
_CPU_BUDGET = 512 * 2**20  # bytes per chunk on a CPU (inputs, outputs, one group's temporaries)
_ACCELERATOR_FRACTION = 0.4  # of the device memory that JAX may use
_MAX_CHUNK = 2**16


def platform() -> str:
    """Where new arrays land: ``"cpu"``, ``"gpu"`` or ``"tpu"``.

    JAX's default backend, unless ``jax.default_device(...)`` points elsewhere (how
    ``gpufit info`` and the GPU tests run the same work on the CPU beside a GPU).
    """
    device = jax.config.jax_default_device
    if device is None:
        return jax.default_backend()
    return device if isinstance(device, str) else device.platform


def require_gpu(where: str = "--require-gpu") -> None:
    """Raise :class:`~gpufit.BackendUnavailable` unless JAX computes on a GPU here (a job
    that asked for one and landed on a CPU, or a JAX without CUDA); ``where`` names the
    option or place that asked."""
    if platform() != "gpu":
        devices = ", ".join(f"{d.platform}:{d.id}" for d in jax.devices())
        raise BackendUnavailable(
            f"{where}: JAX runs on {platform()} ({devices}), no GPU in use; install JAX with CUDA "
            "(pip install 'gpufit[cuda12]' or 'gpufit[cuda13]') and check CUDA_VISIBLE_DEVICES and the job's GPU request"
        )


def describe(device) -> str:
    """A JAX device as ``"gpu:0 NVIDIA H100 80GB HBM3"`` (platform, id, kind)."""
    return f"{device.platform}:{device.id} {getattr(device, 'device_kind', '')}".strip()


def device_memory_bytes(device=None) -> int | None:
    """Memory JAX may use on ``device`` (default: its first), or None where it does not
    say (CPUs)."""
    try:
        stats = (device or jax.devices()[0]).memory_stats() or {}
    except Exception:  # noqa: BLE001 - backends without memory_stats
        return None
    return stats.get("bytes_limit")


def bytes_per_fit(m, n_pars: int, n_main: int, n_aux: int) -> int:
    """Rough bytes of one fit's solver temporaries (float64), from the model's tables."""
    k, width_f = m.factor_index.shape
    width_d = m.delta_index.shape[1]
    z, width_l = m.jac_entries.shape
    n_terms = m.normsys_par.shape[0] + m.histosys_par.shape[0]
    words = 8 * k * (width_f + width_d) + 3 * z * width_l + 8 * n_terms + 12 * n_main * n_pars + 8 * (n_pars + n_aux)
    return 8 * words


def cpu_slots(m, n_pars: int, n_main: int, n_aux: int) -> int:
    """Fits that step in lockstep on a CPU (the queue's slots): the power of two at most
    ``_CPU_SLOT_BYTES / bytes_per_fit``, within [CPU_SLOTS_MIN, CPU_SLOTS_MAX]. Measured
    (benchmarks/slots.py, every slot count compiled and alternated in one process): best
    at 64 for gen40 (86 KB a fit) and sbottom (487 KB; 10.3 against 15.1 us a fit-step
    at 16), 16 for 1Lbb (2.6 MB), 8 for gen300 (4.2 MB; 593 against 702)."""
    fits = max(_CPU_SLOT_BYTES // bytes_per_fit(m, n_pars, n_main, n_aux), 1)
    return int(min(max(2 ** int(math.floor(math.log2(fits))), CPU_SLOTS_MIN), CPU_SLOTS_MAX))


def default_chunk_size(m, n_pars: int, n_main: int, n_aux: int) -> int:
    """Fits per compiled call: a power of two that fits the device's memory.

    ``GPUFIT_CHUNK_SIZE`` in the environment overrides it (the ``chunk_size`` argument
    overrides both).
    """
    forced = os.environ.get("GPUFIT_CHUNK_SIZE")
    if forced:
        return max(1, int(forced))
    per_fit = bytes_per_fit(m, n_pars, n_main, n_aux)
    if platform() == "cpu":
        per_fit_io = 8 * (4 * n_pars + 2 * (n_main + n_aux) + 8)
        slots = cpu_slots(m, n_pars, n_main, n_aux)
        budget = _CPU_BUDGET - slots * per_fit
        fits = max(budget // per_fit_io, slots)
    else:
        memory = device_memory_bytes() or 8 * 2**30
        fits = int(memory * _ACCELERATOR_FRACTION) // per_fit
    return int(2 ** max(0, min(int(math.log2(_MAX_CHUNK)), math.floor(math.log2(max(fits, 1))))))


def lockstep_group(chunk: int, slots: int) -> int:
    """Fits that step together: ``slots`` (:func:`cpu_slots`, or the largest divisor of
    ``chunk`` below it) on a CPU, the whole chunk elsewhere."""
    if platform() != "cpu":
        return chunk
    group = min(chunk, slots)
    while chunk % group:
        group -= 1
    return group


def use_compilation_cache(path: str) -> bool:
    """Keep compiled kernels in JAX's persistent cache at ``path`` (made if missing), for
    this process and from now on: a later process, job or Dask worker pointed at the same
    folder (a shared file system) loads them instead of compiling again. Returns False
    where the folder cannot be made (a read-only home: compile every time)."""
    path = os.path.abspath(path)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return False
    # every kernel, also those that compile in under a second (JAX's default threshold):
    # a job's start-up is a dozen of them
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    if jax.config.jax_compilation_cache_dir != path:
        jax.config.update("jax_compilation_cache_dir", path)
        compilation_cache.reset_cache()  # a cache already opened elsewhere is re-opened here
    return True


def jit(fun=None, **options):
    """``jax.jit`` for gpufit's kernels: the function is traced with every matrix
    product at full float32 precision. JAX's default lets float32 products run in TF32
    on NVIDIA GPUs since Ampere (a 10-bit mantissa): too coarse for the solver's normal
    equations, whose float32 fits then stall short of their minima on an H100/H200 and
    never on a CPU. float64 products are unaffected. Used as ``@jit`` or
    ``@functools.partial(jit, static_argnames=...)``."""
    if fun is None:
        return functools.partial(jit, **options)

    @functools.wraps(fun)
    def traced(*args, **kwargs):
        with jax.default_matmul_precision("highest"):
            return fun(*args, **kwargs)

    return jax.jit(traced, **options)
