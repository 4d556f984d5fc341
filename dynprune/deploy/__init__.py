"""Deployment: a converted or trained model as an inference module whose sparse branches run on CPU kernels.

- :func:`deploy` (:mod:`.api`): every dynamic ``Conv2d`` becomes a :class:`SparseConv2d` (:mod:`.layer`) that
  runs each branch on the backend chosen for it; BatchNorm that follows a convolution in an
  ``nn.Sequential`` is folded (:mod:`.fold`) and a following ReLU fused. Routing is unchanged: the layers read
  the branch from :func:`dynprune.use_branch`.
- Backends (:mod:`.backends`): a registry of name -> availability, packing, convolution. Built in:
  ``int8_cpu`` and ``bf16_cpu`` (the low-precision vector kernels, for ``deploy(precision="int8" | "bf16")``),
  ``vector_cpu`` (vector-pattern kernel), ``nm_cpu`` (element-pattern kernel), ``onednn`` (dense).
- Int8 calibration (:mod:`.calibration`): per-branch activation ranges on degraded images.
- Artifacts (:mod:`.artifact`): :func:`save_deployed` / :func:`load_deployed`, ``weights_only`` loadable.

Outputs equal the dynamic model's on every branch to float tolerance (BatchNorm folding and a different
summation order: max abs difference about 1e-5 on [0, 1] images).

``dynprune.deploy`` is this package *and* callable as the function: ``dynprune.deploy(model)`` is
``dynprune.deploy.deploy(model)``, so both the public function and ``dynprune.deploy.backends`` resolve.
"""

import sys
import types

from .api import DeployReport, deploy
from .artifact import DEPLOY_FORMAT, is_deployed_file, load_deployed, save_deployed
from .backends import Backend, backend_names, get_backend, register_backend
from .layer import LayerPlan, SparseConv2d

__all__ = ["deploy", "DeployReport", "SparseConv2d", "LayerPlan", "save_deployed", "load_deployed", "is_deployed_file",
           "DEPLOY_FORMAT", "Backend", "register_backend", "get_backend", "backend_names"]


class _CallablePackage(types.ModuleType):
    def __call__(self, *args, **kwargs):
        return deploy(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
