"""One lock around building models in this process: stages run on threads beside each other.

diffusers' `from_pretrained` builds modules inside accelerate's `init_empty_weights`, which replaces
`torch.nn.Module.register_parameter` for the whole process, not the calling thread. optimum-quanto's
`quantize`/`freeze` registers quantized tensors as parameters: run beside a load on another thread
(quantize next to cache_vae or cache_text), the patched function rebuilds the quantized tensor from its
`__dict__` and fails (`WeightQBytesTensor.__new__() missing ... '_qtype'`), or puts another thread's
weights on the meta device. Every load and every quantize/requantize holds this lock; encoding and
training, which register nothing, run in parallel as before.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any, TypeVar

MODEL_BUILD_LOCK = threading.RLock()

F = TypeVar("F", bound=Callable[..., Any])


def building(fn: F) -> F:
    """Run `fn` holding MODEL_BUILD_LOCK."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with MODEL_BUILD_LOCK:
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
