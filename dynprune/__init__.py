"""dynprune: dynamic N:M pruning for image-restoration networks (ClassPruning and kin).

>>> import dynprune, torch
>>> net = dynprune.convert(dynprune.create_model("dncnn"), ratios=["1:4", "2:4", "4:4"])
>>> with dynprune.use_branch("2:4"):
...     y = net(torch.rand(1, 1, 64, 64))
"""
from .audit import AuditReport as AuditReport, audit as audit
from .budget import calibrate_budget as calibrate_budget
from .branch import current_branch as current_branch, route as route, use_branch as use_branch
from .classifier import DifficultyClassifier as DifficultyClassifier
from .classpruning import ClassPruning as ClassPruning
from .convert import (ConversionReport as ConversionReport, conversion_report as conversion_report,
                      convert as convert, export_branch as export_branch, model_ratios as model_ratios)
from . import deploy as deploy  # the package, callable as deploy(model) (dynprune/deploy/__init__.py)
from .deploy import load_deployed as load_deployed
from .hookspecs import hookimpl as hookimpl
from .nm import NMRatio as NMRatio, nm_mask as nm_mask
from .plan import RatioPlan as RatioPlan
from .registry import create_model as create_model, list_models as list_models
from .models import load as load

__version__ = "0.1.0"
__all__ = ["AuditReport", "audit", "calibrate_budget", "current_branch", "route", "use_branch", "DifficultyClassifier", "ClassPruning",
           "ConversionReport", "conversion_report", "convert", "export_branch", "model_ratios", "deploy", "load_deployed", "load",
           "hookimpl",
           "NMRatio", "nm_mask", "RatioPlan", "create_model", "list_models"]
