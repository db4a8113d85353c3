"""Where and how strongly a concept's key/value change acts: the binding names and strength schedules.

Settings-level (no torch import), so `check_inputs` validates them before any model loads; the
processors that carry them out are in cdvideo.binding, the schedule's callback in cdvideo.inject.
"""

from __future__ import annotations

from cdvideo.errors import ConfigError

BINDINGS = ("merged", "token", "token+class", "values", "locked", "locked+class", "region")
# What a concept trained before bindings existed (or by another tool) was trained as.
TRAINED_MERGED = "merged"


def check_binding(binding: str | None, source: str = "concept_binding") -> None:
    if binding is not None and binding not in BINDINGS:
        raise ConfigError(f"{source}: unknown binding {binding!r}; choose from {', '.join(BINDINGS)}")


def parse_schedule(text: str, source: str = "concept_schedule") -> list[tuple[float, float]]:
    """`"0:0, 0.2:0.4, 0.3:1"` -> [(0.0, 0.0), (0.2, 0.4), (0.3, 1.0)]: (share of the steps, strength factor).

    Each factor holds from its share of the steps until the next one; before the first share the
    factor is 1. Shares rise strictly within [0, 1); factors are finite and >= 0.
    """
    points = []
    for part in str(text).replace(";", ",").split(","):
        if not part.strip():
            continue
        share, sep, factor = part.partition(":")
        try:
            point = (float(share), float(factor))
        except ValueError:
            point = None
        if not sep or point is None:
            raise ConfigError(f"{source}: {part.strip()[:40]!r} is not SHARE:STRENGTH; write e.g. \"0:0, 0.2:0.4, 0.3:1\"")
        share_value, factor_value = point
        if not (0 <= share_value < 1):
            raise ConfigError(f"{source}: share {share_value} must be at least 0 and below 1 (a share of the steps)")
        if not (0 <= factor_value < float("inf")):
            raise ConfigError(f"{source}: strength {factor_value} must be a finite number >= 0")
        if points and share_value <= points[-1][0]:
            raise ConfigError(f"{source}: shares must rise ({points[-1][0]} then {share_value})")
        points.append((share_value, factor_value))
    if not points:
        raise ConfigError(f"{source}: empty; write e.g. \"0:0, 0.2:0.4, 0.3:1\"")
    return points


def step_factors(points: list[tuple[float, float]], steps: int) -> list[float]:
    """The strength factor of each denoising step: point j governs from step int(share_j * steps) on."""
    factors = []
    for step in range(steps):
        factor = 1.0
        for share, value in points:
            if int(share * steps) <= step:
                factor = value
        factors.append(factor)
    return factors
