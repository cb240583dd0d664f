"""CUDA out-of-memory recognition on the messages PyTorch, TensorFlow and JAX really print."""

from __future__ import annotations

import pytest

from colabkit import _oom

TORCH_2 = (
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
    "14.75 GiB of which 1.06 GiB is free. Process 12345 has 13.69 GiB memory in use. Of the allocated memory "
    "13.50 GiB is allocated by PyTorch, and 52.00 MiB is reserved by PyTorch but unallocated. If reserved but "
    "unallocated memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid "
    "fragmentation.  See documentation for Memory Management  (https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)"
)
TORCH_1 = (
    "RuntimeError: CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 14.76 GiB total capacity; "
    "13.41 GiB already allocated; 5.75 MiB free; 13.60 GiB reserved in total by PyTorch)"
)
TORCH_CUDA_CLASS = "torch.cuda.OutOfMemoryError: CUDA out of memory. Tried to allocate 512.00 MiB."
TF = (
    "tensorflow.python.framework.errors_impl.ResourceExhaustedError: {{function_node "
    "__wrapped__MatMul_device_/job:localhost/replica:0/task:0/device:GPU:0}} OOM when allocating tensor with "
    "shape[32768,32768] and type float on /job:localhost/replica:0/task:0/device:GPU:0 by allocator GPU_0_bfc [Op:MatMul]"
)
TF_SPLIT = "ResourceExhaustedError: Graph execution error:\n\nDetected at node 'dense/MatMul'\nOOM when allocating tensor with shape[4096,4096]"
TORCH_CUDA_ERROR = (
    "RuntimeError: CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported at some other "
    "API call, so the stacktrace below might be incorrect.\nFor debugging consider passing CUDA_LAUNCH_BLOCKING=1.\n"
    "Compile with `TORCH_USE_CUDA_DSA` to enable device-side assertions."
)
TORCH_CUBLAS = "RuntimeError: CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"
TORCH_CUDNN_WORKSPACE = "RuntimeError: cuDNN error: CUDNN_STATUS_NOT_ENOUGH_WORKSPACE"
TORCH_CUDNN_ALLOC = "RuntimeError: cuDNN error: CUDNN_STATUS_ALLOC_FAILED"
JAX = "jaxlib.xla_extension.XlaRuntimeError: RESOURCE_EXHAUSTED: Out of memory while trying to allocate 34359738368 bytes."


@pytest.mark.parametrize(
    ("text", "framework"),
    [
        (TORCH_2, "pytorch"),
        (TORCH_1, "pytorch"),
        (TORCH_CUDA_CLASS, "pytorch"),
        (TORCH_CUDA_ERROR, "pytorch"),
        (TORCH_CUBLAS, "pytorch"),
        (TORCH_CUDNN_WORKSPACE, "pytorch"),
        (TORCH_CUDNN_ALLOC, "pytorch"),
        (TF, "tensorflow"),
        (TF_SPLIT, "tensorflow"),
        (JAX, "jax"),
    ],
)
def test_recognised(text, framework):
    assert _oom.detect('Traceback (most recent call last):\n  File "train.py", line 9\n' + text) == framework


@pytest.mark.parametrize(
    "text",
    [
        "RuntimeError: CUDA error: device-side assert triggered",
        "RuntimeError: CUDA error: CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasSgemm( handle, opa, opb, m, n, k, ...)`",
        "RuntimeError: cuDNN error: CUDNN_STATUS_MAPPING_ERROR",
        "MemoryError",
        "RuntimeError: DefaultCPUAllocator: can't allocate memory: you tried to allocate 8589934592 bytes.",
        "ResourceExhaustedError: quota exceeded for bucket",
        "",
    ],
)
def test_not_an_oom(text):
    assert _oom.detect(text) is None


def test_tried_allocation_is_parsed():
    assert _oom.tried_bytes(TORCH_2) == 2 * 1024**3
    assert _oom.tried_bytes(TORCH_CUBLAS) is None  # a raw CUDA failure does not say the size
    assert _oom.tried_bytes(TORCH_1) == 20 * 1024**2
    assert _oom.tried_bytes(TF) is None


def test_advice_names_the_concrete_fixes():
    text = _oom.advice("pytorch")
    for needle in (
        "batch size",
        "mixed precision",
        "gradient checkpointing",
        "PYTORCH_CUDA_ALLOC_CONF': 'expandable_segments:True",
    ):
        assert needle in text
    assert "TF_FORCE_GPU_ALLOW_GROWTH=true" in _oom.advice("tensorflow")
    assert "XLA_PYTHON_CLIENT_PREALLOCATE=false" in _oom.advice("jax")


def test_message_names_peak_total_and_the_failed_allocation():
    assert _oom.message("pytorch", "train.py", 14 * 1024**3, 15 * 1024**3, 2 * 1024**3) == (
        "train.py ran out of GPU memory (PyTorch): peak seen 14.0 GiB of 15.0 GiB, failed allocating 2.0 GiB more"
    )
    assert (
        _oom.message("jax", "t.py", None, None, None)
        == "t.py ran out of GPU memory (JAX): peak seen n/a of n/a"
    )


def test_the_diagnosis_comes_from_the_final_traceback_only():
    """Promise: an out-of-memory traceback the script printed and recovered from is not the failure."""
    recovered = ["Traceback (most recent call last):", '  File "train.py", line 3, in <module>', TORCH_2]
    final = ["Traceback (most recent call last):", '  File "train.py", line 9, in <module>', "KeyError: 'label'"]
    lines = [*recovered, "retrying with batch size 16", "step 1", *final]
    assert _oom.failure_text(lines) == "\n".join(final)
    assert _oom.detect(_oom.failure_text(lines)) is None


def test_a_chained_out_of_memory_error_is_part_of_the_failure():
    """Promise: ``raise ... from`` an out-of-memory error keeps it in the diagnosis."""
    lines = [
        "step 9",
        "Traceback (most recent call last):",
        TORCH_CUDA_CLASS,
        "",
        "The above exception was the direct cause of the following exception:",
        "",
        "Traceback (most recent call last):",
        "RuntimeError: step failed",
    ]
    assert _oom.failure_text(lines) == "\n".join(lines[1:])
    assert _oom.detect(_oom.failure_text(lines)) == "pytorch"


def test_a_cpp_abort_and_a_bare_ending_are_read_from_their_last_lines():
    """Promise: without a Python traceback, the failure is a C++ ``terminate`` block, or the last few lines."""
    abort = ["terminate called after throwing an instance of 'c10::OutOfMemoryError'", "  what():  CUDA out of memory."]
    assert _oom.detect(_oom.failure_text(["CUDA out of memory (recovered)", "step 3", *abort])) == "pytorch"
    killed = ["CUDA out of memory. Tried to allocate 2.00 GiB (recovered)", *[f"step {i}" for i in range(10)]]
    assert _oom.failure_text(killed) == "\n".join(killed[-5:])
    assert _oom.detect(_oom.failure_text(killed)) is None
