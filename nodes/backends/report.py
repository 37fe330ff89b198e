"""What an engine's install says: which parts of the models it runs, and why it left the others."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Report:
    """One engine's install: `parts` maps each part it considered ("the UNet", "the TAESD decode") to
    None where the engine runs it, else the reason the host's own code runs it."""

    engine: str
    parts: dict = field(default_factory=dict)

    def took(self, part: str) -> "Report":
        self.parts[part] = None
        return self

    def left(self, part: str, reason: str) -> "Report":
        self.parts[part] = reason
        return self

    @property
    def taken(self) -> list:
        return [part for part, reason in self.parts.items() if reason is None]

    def __str__(self) -> str:
        left = "; ".join(f"{part}: {reason}" for part, reason in self.parts.items() if reason is not None)
        return f"{self.engine}: {', '.join(self.taken) or 'nothing'}" + (f" (not {left})" if left else "")
