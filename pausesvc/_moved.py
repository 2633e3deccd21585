"""Module paths that moved when the package got its folders keep working: ``import
pausesvc.sampling_tinker`` gives :mod:`pausesvc.sampling.tinker` itself (the same module object,
so ``isinstance`` and monkeypatching agree), imported only when asked for."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types

#: old name -> where it lives now
MOVED = {
    "pausesvc.sampling_protocol": "pausesvc.sampling.continuation",
    "pausesvc.sampling_waiters": "pausesvc.sampling.waiters",
    "pausesvc.sampling_tinker": "pausesvc.sampling.tinker",
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module: types.ModuleType) -> None:
        pass  # the real module is already executed


def install() -> None:
    if not any(isinstance(f, _Alias) for f in sys.meta_path):
        sys.meta_path.append(_Alias())
