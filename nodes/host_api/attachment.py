"""What the engines hang on a host object (the CLIP, the VAE): one typed Attachment of stand-ins.

A stand-in replaces one method of some of the object's modules with an engine's call (an OpenVINO
model, a CUDA graph, fused kernels) for the length of one host call, wherever nothing is in the way;
where something is, it says why once and the host's own method runs. Every engine follows that
pattern; it is written once, here. The host objects enter their attachment around the methods the
stand-ins serve (CachedTextCLIP.encode_from_tokens, TurboVAE.decode and encode).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from ...add_turbo.log_once import log_once
from .module_swaps import instance_attributes

log = logging.getLogger(__name__)

HOST_SYMBOLS: list = []  # builds on no host symbol: the stand-ins' modules are named by their engines


@dataclass(eq=False)
class StandIn:
    """One engine's replacement of `attribute` on some modules of a host object.

    targets(host) -> {module: callable} to install now; obstacle(host) -> why not now, or None;
    logged(host) -> whether that obstacle is worth a line in the log (a CUDA graph's absence on a CPU
    is not). `hooks` names the host methods it serves; it steps aside where a stand-in of an engine in
    `yields_to` runs in the same call (OpenVINO converts the host's TAESD blocks, not fused ones).
    """

    engine: str  # who runs it, in the log: "OpenVINO", "engine"
    part: str  # what it runs, in the log and the reports: "the text encoders", "the TAESD decode"
    fallback: str  # what happens instead, in the log: "run in torch"
    hooks: frozenset
    attribute: str
    targets: Callable
    obstacle: Callable
    calls: list = field(default_factory=list)  # the engine's call objects (OpenVINOCall, GraphedCall ...)
    logged: Callable = lambda host: True
    yields_to: tuple = ()

    @contextlib.contextmanager
    def installed(self, host):
        """Within: the stand-in runs in place of the host's method where nothing is in the way. Yields
        whether it does."""
        reason = self.obstacle(host)
        if reason is not None and self.logged(host):
            log_once(log, f"ADD Turbo {self.engine}: {reason}: {self.part} {self.fallback}", owner=self,
                     level=logging.INFO)
        targets = {} if reason is not None else {m: fn for m, fn in self.targets(host).items()
                                                  if self.attribute not in m.__dict__}
        with instance_attributes(self.attribute, targets):
            yield bool(targets)


@dataclass(eq=False)
class Attachment:
    """The stand-ins on one host object; clones of the object share it."""

    stand_ins: list = field(default_factory=list)

    def add(self, stand_in: StandIn) -> StandIn:
        self.stand_ins = [s for s in self.stand_ins if (s.engine, s.part) != (stand_in.engine, stand_in.part)]
        self.stand_ins.append(stand_in)
        return stand_in

    def find(self, engine: str, part: str) -> StandIn | None:
        return next((s for s in self.stand_ins if (s.engine, s.part) == (engine, part)), None)

    def calls(self, engine: str) -> list:
        """Every call object of `engine`'s stand-ins (to count their runs, read their failures)."""
        return [call for s in self.stand_ins if s.engine == engine for call in s.calls]

    @contextlib.contextmanager
    def entered(self, hook: str, host):
        """Within: every stand-in serving `hook` installed, in the order they were added. Yields the
        names of the engines whose stand-ins run."""
        running: set = set()
        with contextlib.ExitStack() as stack:
            for stand_in in self.stand_ins:
                if hook in stand_in.hooks and not running.intersection(stand_in.yields_to):
                    if stack.enter_context(stand_in.installed(host)):
                        running.add(stand_in.engine)
            yield running


def attachment_of(host) -> Attachment:
    """`host`'s attachment, made on first use (host objects of the pack's classes carry one)."""
    if host.engines is None:
        host.engines = Attachment()
    return host.engines


def calls_on(host, engine: str, part: str) -> list:
    """The call objects that `engine`'s stand-in for `part` put on `host` (a CLIP or a VAE); [] where none."""
    engines = getattr(host, "engines", None)
    stand_in = None if engines is None else engines.find(engine, part)
    return [] if stand_in is None else list(stand_in.calls)
