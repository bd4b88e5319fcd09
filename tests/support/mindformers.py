"""Real MindFormers 2.0.0 for the interop tests: its interpreter and the environment to run it in.

MINIMAL VERSION written by the resolver work (issue 14, item 2) until the MindFormers environment
(item 1) lands; same interface: `mindformers_python()`, `mindformers_env()`.

`import mindformers` needs `hyper_parallel`, which no registry serves and which MindFormers' resume
code never uses: `mindformers_env()` puts a TEST-ONLY stand-in for it on PYTHONPATH (any attribute
or submodule is an inert placeholder). Run MindFormers in a scratch working directory: it writes
`./output/log` there at import.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

VENV = Path(os.environ.get("RESPAWN_MINDFORMERS_VENV", "/work/mfvenv/venv"))

_STANDIN = '''"""TEST-ONLY stand-in for hyper_parallel (served by no registry), so that `import mindformers`
succeeds; MindFormers' checkpoint and resume code never uses it. Everything here is inert."""
import importlib.abc
import importlib.machinery
import sys
import types


class _Placeholder:
    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return _Placeholder()


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return type(name, (_Placeholder,), {})


class _Submodules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        if fullname.startswith("hyper_parallel."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__getattr__ = __getattr__
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


sys.meta_path.insert(0, _Submodules())
'''


def mindformers_python() -> Path:
    """MindFormers' interpreter (its own venv: MindSpore 2.10, numpy<2)."""
    return VENV / "bin" / "python"


def mindformers_env() -> dict[str, str]:
    """The environment to run it in: PYTHONPATH with the test-only hyper_parallel stand-in."""
    standin = Path(tempfile.gettempdir()) / "respawn-hyper-parallel-standin"
    init = standin / "hyper_parallel" / "__init__.py"
    if not init.is_file() or init.read_text() != _STANDIN:
        init.parent.mkdir(parents=True, exist_ok=True)
        init.write_text(_STANDIN)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RESPAWN_", "MS_", "RANK_"))}
    env["PYTHONPATH"] = str(standin)
    return env
