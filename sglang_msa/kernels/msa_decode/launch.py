"""Low-overhead relaunch of an already compiled Triton kernel.

``kernel[grid](...)`` re-derives Triton's specialisation of every argument on each call, which costs
tens of microseconds of Python per launch (it dominated eager decode). After the first launch we
keep the compiled handle, keyed by a conservative copy of what Triton specialises on (constexpr
values; dtype and 16-byte alignment of tensors; for ints ==1, %16 and 32-bit range), and call its
launcher directly. Anything unexpected (interpreter, another Triton) falls back to the normal path.
"""

from __future__ import annotations

from typing import Any, Dict, Sequence, Tuple

import torch


def int_spec(v: int) -> int:
    return (v == 1) | ((v % 16 == 0) << 1) | ((not -(2**31) <= v < 2**31) << 2)


def tensor_spec(t: torch.Tensor) -> Tuple[torch.dtype, bool]:
    return t.dtype, t.data_ptr() % 16 == 0


class LaunchCache:
    def __init__(self, kernel):
        self.kernel = kernel  # a JITFunction or an Autotuner over one
        self.compiled: Dict[Any, Any] = {}
        self.configs: Dict[Any, Any] = {}  # key -> autotuned config (reporting)

    def launch(self, grid: Tuple[int, int], key: Any, args: Sequence, constexprs: Dict[str, Any], options=None):
        """``args``: the runtime arguments in declaration order; ``constexprs`` follow them, in order."""
        compiled = self.compiled.get(key)
        if compiled is not None:
            device = args[0].device.index
            compiled.run(
                grid[0], grid[1], 1, torch._C._cuda_getCurrentRawStream(device), compiled.function,
                compiled.packed_metadata, None, None, None, *args, *constexprs.values(),
            )
            return
        compiled = self.kernel[grid](*args, **constexprs, **(options or {}))
        self.configs[key] = getattr(self.kernel, "best_config", None)
        if all(hasattr(compiled, a) for a in ("run", "function", "packed_metadata")) and args[0].is_cuda:
            self.compiled[key] = compiled
