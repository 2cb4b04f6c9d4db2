"""A custom import-linter contract: parts of an external package confined to named modules.

import-linter's own contracts see an external package only by its top-level name
(`opentelemetry`), so they cannot say "the OpenTelemetry *SDK* only in telemetry.py" while the
API stays allowed everywhere outside core. This contract reads the graph's recorded import
lines of every module importing the external package and refuses the listed sub-packages
outside `allowed_importers`. Registered in pyproject.toml under `contract_types`.
"""

from __future__ import annotations

import re
from typing import Any

from grimp import ImportGraph
from importlinter.application import output
from importlinter.domain import fields
from importlinter.domain.contract import Contract, ContractCheck


class ConfinedSubpackagesContract(Contract):
    """Only `allowed_importers` may import `subpackages` (dotted, of an external package)."""

    subpackages = fields.ListField(subfield=fields.StringField())
    allowed_importers = fields.ListField(subfield=fields.StringField())

    def check(self, graph: ImportGraph, verbose: bool) -> ContractCheck:
        """Every direct import of a confined sub-package by a module not allowed to."""
        subs: list[str] = list(self.subpackages)  # type: ignore[call-overload]
        allowed: list[str] = list(self.allowed_importers)  # type: ignore[call-overload]
        pattern = re.compile(r"\b(" + "|".join(re.escape(s) for s in subs) + r")\b")
        roots = {s.split(".")[0] for s in subs}
        broken: list[dict[str, Any]] = []
        for root in sorted(roots):
            if root not in graph.modules:
                continue
            for importer in sorted(graph.find_modules_that_directly_import(root)):
                if any(importer == a or importer.startswith(a + ".") for a in allowed):
                    continue
                for detail in graph.get_import_details(importer=importer, imported=root):
                    line = str(detail["line_contents"])
                    if pattern.search(line):
                        broken.append({"importer": importer, "line": detail["line_number"],
                                       "contents": line})
        return ContractCheck(kept=not broken, metadata={"broken": broken})

    def render_broken_contract(self, check: ContractCheck) -> None:
        """One line per offending import."""
        for b in check.metadata["broken"]:
            output.print_error(f"{b['importer']}:{b['line']}: {b['contents']}", bold=False)
            output.new_line()
