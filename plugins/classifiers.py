"""The built-in difficulty classifiers: ClassPruning's (section 3.2) and ClassSR's Class-Module."""

from __future__ import annotations

from dynprune.classifier import DifficultyClassifier
from dynprune.classsr import ClassSRClassifier
from dynprune.hookspecs import hookimpl


@hookimpl
def dynprune_register_classifiers(register):
    register("paper", DifficultyClassifier, "ClassPruning's classifier: 4 Conv-BN-ReLU (stride 2), pooling, FC; 84k params")
    register("classsr", ClassSRClassifier, "ClassSR's Class-Module (LR sub-images, 60k params for L = 3)")
