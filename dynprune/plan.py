"""Ratio plans: a per-layer N:M assignment for a model (SLS, Oh et al., CVPR 2022, "Attentive
Fine-Grained Structured Sparsity for Image Restoration"), saved as YAML/JSON, usable as a branch of
:func:`dynprune.convert` beside global ratios.

A plan maps layer names (as ``model.named_modules()`` gives them) to ratios; layers it does not name stay
dense. A plain ``{layer name: "N:M"}`` dict is accepted wherever a plan is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Union

from .nm import NMRatio

__all__ = ["RatioPlan", "PlanLike", "is_plan_like"]

_SUFFIXES = (".yaml", ".yml", ".json")


def parse_text(text: str, what: str, json_: bool = False) -> Any:
    """``text`` parsed as YAML (or JSON); ``what`` names it in the error.

    Raises:
        ValueError: not valid YAML/JSON (``what`` and the parser's position named).
    """
    import yaml

    try:
        return json.loads(text) if json_ else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as err:
        raise ValueError(f"{what} is not valid {'JSON' if json_ else 'YAML'}: {' '.join(str(err).split())}") from None


@dataclass
class RatioPlan:
    """Per-layer N:M ratios.

    Attributes:
        ratios: {layer name: NMRatio}; layers not named stay dense.
        name: the branch label when the plan is a branch (not a ratio string such as "2:4").
        macs_fraction: effective MACs / dense MACs of the model under this plan (from :func:`dynprune.audit`),
            if known.
        budget: the MACs budget (fraction of dense) the plan was searched for, if any.
        model: class name of the model it was made for (checked by :func:`dynprune.convert`), if known.
    Raises:
        ValueError: an empty name, a name that parses as a ratio, or an invalid ratio (the layer is named).
    """

    ratios: dict[str, NMRatio]
    name: str = "plan"
    macs_fraction: float | None = None
    budget: float | None = None
    model: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"plan name {self.name!r} must be a non-empty string")
        try:
            NMRatio.parse(self.name)
        except (ValueError, TypeError):
            pass
        else:
            raise ValueError(f"plan name {self.name!r} reads as a ratio; name plans like 'sls-50'")
        parsed = {}
        for layer, r in dict(self.ratios).items():
            try:
                parsed[str(layer)] = NMRatio.parse(r)
            except (ValueError, TypeError) as err:
                raise ValueError(f"plan {self.name!r}, layer {layer!r}: {err}") from None
        self.ratios = parsed

    @classmethod
    def coerce(cls, value: "PlanLike", name: str | None = None) -> "RatioPlan":
        """A plan from a :class:`RatioPlan`, a ``{layer: "N:M"}`` dict, a saved plan's dict (with a
        ``ratios`` key) or a ``.yaml``/``.yml``/``.json`` file path.

        Raises:
            FileNotFoundError: a missing file. ValueError / TypeError: anything else that is not a plan.
        """
        if isinstance(value, RatioPlan):
            return value
        if isinstance(value, (str, Path)):
            return cls.load(value)
        if isinstance(value, Mapping):
            if "ratios" in value and isinstance(value["ratios"], Mapping):
                data = dict(value)
                known = {k: data.pop(k) for k in ("ratios", "name", "macs_fraction", "budget", "model") if k in data}
                if name is not None:
                    known.setdefault("name", name)
                return cls(**known, meta=data)
            return cls(dict(value), name=name or "plan")
        raise TypeError(f"not a ratio plan: {value!r} (expected a RatioPlan, a {{layer: 'N:M'}} dict or a plan file)")

    @classmethod
    def load(cls, path: str | Path) -> "RatioPlan":
        """Read a plan saved by :meth:`save` (YAML or JSON by suffix); the file stem is the default name.

        Raises:
            FileNotFoundError: no such file. ValueError: another suffix or content that is not a plan.
        """
        p = Path(path)
        if p.suffix.lower() not in _SUFFIXES:
            raise ValueError(f"plan file {str(p)!r}: expected a {'/'.join(_SUFFIXES)} file")
        if not p.is_file():
            raise FileNotFoundError(f"plan file {str(p)!r} does not exist")
        data = parse_text(p.read_text(), f"plan file {str(p)!r}", json_=p.suffix.lower() == ".json")
        if not isinstance(data, Mapping):
            raise ValueError(f"plan file {str(p)!r} holds {type(data).__name__}, not a mapping of layers to ratios")
        return cls.coerce(data, name=p.stem)

    def to_dict(self) -> dict[str, Any]:
        """JSON/YAML-ready dict (ratios as "N:M" strings)."""
        out: dict[str, Any] = {"name": self.name}
        for key in ("macs_fraction", "budget", "model"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out.update(self.meta)
        out["ratios"] = {k: str(v) for k, v in self.ratios.items()}
        return out

    def save(self, path: str | Path) -> Path:
        """Write the plan as YAML or JSON (by suffix). Returns the path.

        Raises:
            ValueError: another suffix.
        """
        p = Path(path)
        if p.suffix.lower() not in _SUFFIXES:
            raise ValueError(f"plan file {str(p)!r}: expected a {'/'.join(_SUFFIXES)} file")
        from .outputs import write_text

        if p.suffix.lower() == ".json":
            return write_text(p, json.dumps(self.to_dict(), indent=1) + "\n")
        import yaml

        return write_text(p, yaml.safe_dump(self.to_dict(), sort_keys=False))

    def ratio(self, layer: str, m: int) -> NMRatio:
        """The ratio of ``layer``; "m:m" (dense) if the plan does not name it."""
        return self.ratios.get(layer, NMRatio(m, m))

    def table(self) -> str:
        """Markdown table: layer, ratio, kept fraction."""
        head = f"plan {self.name}" + (f", {100 * self.macs_fraction:.1f}% of dense MACs" if self.macs_fraction else "")
        rows = [head, "", "| layer | N:M | kept |", "|---|---:|---:|"]
        rows += [f"| {k} | {r} | {r.density:.3f} |" for k, r in self.ratios.items()]
        return "\n".join(rows)

    def __str__(self) -> str:
        return self.table()


PlanLike = Union[RatioPlan, Mapping, str, Path]


def is_plan_like(value: Any) -> bool:
    """Whether a branch spec is a plan (a RatioPlan, a mapping, or a plan file path) rather than a ratio."""
    if isinstance(value, (RatioPlan, Mapping, Path)):
        return True
    return isinstance(value, str) and value.strip().lower().endswith(_SUFFIXES)


def coerce_branches(values: list) -> list:
    """Each plan-like entry of a branch list as a :class:`RatioPlan` (other entries, ratios, unchanged). A plan
    given as a mapping without a name is ``plan``, or, when there are several such, ``plan1``, ``plan2``, ...
    in their order (so unnamed plans make distinct branches)."""
    unnamed = [i for i, v in enumerate(values) if isinstance(v, Mapping) and not isinstance(v.get("name"), str)]
    names = {i: (f"plan{k + 1}" if len(unnamed) > 1 else "plan") for k, i in enumerate(unnamed)}
    return [RatioPlan.coerce(v, name=names.get(i)) if is_plan_like(v) else v for i, v in enumerate(values)]
