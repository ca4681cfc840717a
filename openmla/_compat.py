"""Work-arounds for third-party behaviour, each with the reason it exists.

* Triton 3.6's CPU interpreter turns a scalar loaded inside a kernel (``tl.load(ptr)``) into a
  one-element 1-D array and converts it with ``int(array)`` when it is used as a loop bound;
  NumPy 2.4 refuses that conversion ("only 0-dimensional arrays can be converted to Python
  scalars"), so kernels whose loop bounds are loaded from memory fail under ``TRITON_INTERPRET=1``.
  :func:`patch_triton_interpreter` makes that conversion read the single element instead. It changes
  nothing for compiled kernels.
"""

from __future__ import annotations

_patched = False


def patch_triton_interpreter() -> None:
    """Let the Triton interpreter use one-element tensors as Python ints (idempotent)."""
    global _patched
    if _patched:
        return
    try:
        from triton.runtime import interpreter
    except Exception:
        return
    original = getattr(interpreter, "_patch_lang_tensor", None)
    if original is None:
        return

    def _index(self):
        data = self.handle.data
        return int(data.reshape(-1)[0]) if getattr(data, "size", 1) == 1 else int(data)

    def _patch_lang_tensor(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", _index)

    interpreter._patch_lang_tensor = _patch_lang_tensor
    _patched = True
