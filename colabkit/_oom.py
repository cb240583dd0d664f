"""Recognise a CUDA out-of-memory crash in a child's output (PyTorch, TensorFlow, JAX) and say what to do.

The diagnosis comes from the failure itself: :func:`failure_text` picks the final traceback (with the
exceptions chained to it) out of the last lines, so an out-of-memory error the script caught and
recovered from earlier never turns an unrelated crash into ``CudaOutOfMemory``.
"""

from __future__ import annotations

import re

from . import _format

__all__ = ["advice", "detect", "failure_text", "message", "tried_bytes"]

# (framework, pattern) in the wording each framework prints
_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "pytorch",
        # the caching allocator's message; a raw CUDA/cuBLAS/cuDNN allocation failure as PyTorch words it
        re.compile(
            r"CUDA out of memory|torch\.(?:cuda\.)?OutOfMemoryError|CUDA error: out of memory"
            r"|CUDA error: CUBLAS_STATUS_ALLOC_FAILED"
            r"|cuDNN error: CUDNN_STATUS_(?:NOT_ENOUGH_WORKSPACE|ALLOC_FAILED)"
        ),
    ),
    (
        "tensorflow",
        re.compile(r"ResourceExhaustedError[\s\S]{0,2000}?OOM when allocating|OOM when allocating tensor"),
    ),
    ("jax", re.compile(r"RESOURCE_EXHAUSTED: Out of memory")),
)
_START = re.compile(r"^(?:Traceback \(most recent call last\):|terminate called after throwing)")
_CHAINED = (
    "During handling of the above exception, another exception occurred:",
    "The above exception was the direct cause of the following exception:",
)
_LAST_LINES = 5  # without a traceback, the failure is what the process said last
_TRIED = re.compile(r"Tried to allocate (\d+(?:\.\d+)?) (B|KiB|MiB|GiB|TiB)")
_UNITS = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4}


def failure_text(lines: tuple[str, ...] | list[str]) -> str:
    """The failure at the end of ``lines``: the last traceback (a C++ ``terminate called after throwing``
    counts as one) together with the exceptions chained before it; without one, the last few lines."""
    start = None
    for i in range(len(lines) - 1, -1, -1):
        if _START.match(lines[i]):
            start = i
            break
    if start is None:
        return "\n".join(lines[-_LAST_LINES:])
    while True:  # walk back over "During handling of the above exception ..." to the first of the chain
        j = start - 1
        while j >= 0 and not lines[j].strip():
            j -= 1
        if j < 0 or lines[j].strip() not in _CHAINED:
            break
        earlier = None
        for k in range(j - 1, -1, -1):
            if _START.match(lines[k]):
                earlier = k
                break
        if earlier is None:
            break
        start = earlier
    return "\n".join(lines[start:])


def detect(text: str) -> str | None:
    """The framework whose CUDA out-of-memory message ``text`` holds (``"pytorch"``, ``"tensorflow"``, ``"jax"``), else ``None``."""
    for framework, pattern in _PATTERNS:
        if pattern.search(text):
            return framework
    return None


def tried_bytes(text: str) -> int | None:
    """The size of the allocation that failed, from PyTorch's "Tried to allocate 2.00 GiB"."""
    found = _TRIED.findall(text)
    if not found:
        return None
    value, unit = found[-1]
    return int(float(value) * _UNITS[unit])


def advice(framework: str | None) -> str:
    """What to change, as instructions."""
    steps = [
        "halve the batch size (and raise gradient accumulation steps to keep the effective batch)",
        "use mixed precision (torch.autocast('cuda', dtype=torch.float16) with a GradScaler; bfloat16 on Ampere or newer)"
        if framework in (None, "pytorch")
        else "use mixed precision (tf.keras.mixed_precision.set_global_policy('mixed_float16') / jax bfloat16 params)",
        "enable gradient checkpointing (model.gradient_checkpointing_enable() or torch.utils.checkpoint)",
    ]
    if framework in (None, "pytorch"):
        steps.append(
            "against fragmentation, run with env={'PYTORCH_CUDA_ALLOC_CONF': 'expandable_segments:True'}"
        )
    if framework == "tensorflow":
        steps.append("set TF_FORCE_GPU_ALLOW_GROWTH=true so TensorFlow does not grab all memory up front")
    if framework == "jax":
        steps.append(
            "set XLA_PYTHON_CLIENT_PREALLOCATE=false so JAX does not reserve 75 % of the GPU up front"
        )
    return "; ".join(steps) + "."


def message(
    framework: str | None, script: str, peak: int | None, total: int | None, tried: int | None
) -> str:
    """The first line of ``CudaOutOfMemory``: which script, the peak seen and the GPU's total."""
    name = {"pytorch": "PyTorch", "tensorflow": "TensorFlow", "jax": "JAX"}.get(
        framework or "", "the framework"
    )
    text = (
        f"{script} ran out of GPU memory ({name}): peak seen {_format.format_bytes(peak)} "
        f"of {_format.format_bytes(total)}"
    )
    if tried is not None:
        text += f", failed allocating {_format.format_bytes(tried)} more"
    return text
