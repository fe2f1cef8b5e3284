"""Stand-ins for heavy modules, imported on first use.

`import torch` costs seconds and a few hundred MB; `superres --help`, `--version` and usage errors
must not pay for it. A module that needs torch only inside its functions binds
`torch = lazy_module("torch")` at the top instead: the first attribute access imports the real module,
and code that reads `torch.Tensor` or calls `torch.zeros` works unchanged.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable


class _LazyModule:
    __slots__ = ("_lazy_name",)

    def __init__(self, name: str) -> None:
        self._lazy_name = name

    def __getattr__(self, attr: str) -> Any:
        # import_module returns the cached module after the first call, so this stays cheap
        return getattr(importlib.import_module(self._lazy_name), attr)

    def __repr__(self) -> str:
        return f"<lazy module {self._lazy_name!r}>"


def lazy_module(name: str) -> Any:
    """A stand-in for `import name` that imports the module on first attribute access."""
    return _LazyModule(name)


def lazy_function(module: str, name: str) -> Callable[..., Any]:
    """A stand-in for `from module import name` (a function) that imports `module` on the first call."""
    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = f"{module}.{name}, imported on the first call."
    return call
