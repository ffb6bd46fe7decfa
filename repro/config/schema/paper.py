"""Settings of the figures, tables and claim checks."""

from __future__ import annotations

from dataclasses import dataclass

from repro.config.schema.common import setting


@dataclass(frozen=True)
class PaperConfig:
    """Figures, tables and checks."""

    enforce_claims: bool = setting(True, "a FAIL of a claim check makes `make check` exit non-zero")
    enforce_references: bool = setting(True, "a result outside a reference value's tolerance makes `make check` fail")
    enforcement_note: str = setting("", "why checks are not enforced for this profile, shown with the results")
