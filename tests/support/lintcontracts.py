"""An import-linter contract type the built-in ones cannot express: no module imports a pytest
test module (`test_*`) or a `conftest`. Shared test code lives in tests.support instead, so a
test module can move or be deselected without breaking another. Registered in pyproject.toml."""

from __future__ import annotations

from typing import Any

from importlinter import Contract, ContractCheck, fields, output


def _is_test_module(name: str) -> bool:
    last = name.rsplit(".", 1)[-1]
    return last.startswith("test_") or last == "conftest"


class NoTestModuleImports(Contract):
    source_modules = fields.ListField(subfield=fields.ModuleField())

    def check(self, graph: Any, verbose: bool) -> ContractCheck:
        roots = [m.name for m in self.source_modules]  # type: ignore[attr-defined]
        found = sorted(
            (importer, imported)
            for importer in graph.modules
            if any(importer == r or importer.startswith(f"{r}.") for r in roots)
            for imported in graph.find_modules_directly_imported_by(importer)
            if _is_test_module(imported)
        )
        return ContractCheck(kept=not found, warnings=[], metadata={"imports": found})

    def render_broken_contract(self, check: ContractCheck) -> None:
        for importer, imported in check.metadata["imports"]:
            output.print_error(f"{importer} imports the test module {imported}")
            output.new_line()
