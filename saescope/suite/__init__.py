"""Suites: many SAEs (hookpoints × architectures × widths × target L0s) trained from one pass, then measured.

    train(plan, out)             # any plan: an array, a cache or a live model (plan: a RunPlan, a dict or a YAML/JSON file)
    train_suite(plan, out)       # suite.json + one folder per SAE
    evaluate_suite(out)          # eval.json, eval.csv, plots/*.png
    describe(out)                # a short text description

``SuiteConfig`` and ``SuiteConfigError`` are the earlier names of ``saescope.plan.RunPlan`` and ``PlanError``.
"""

from saescope.plan import PlanError as SuiteConfigError
from saescope.plan import RunPlan as SuiteConfig
from saescope.suite.evaluate import evaluate_suite, format_table
from saescope.suite.info import describe
from saescope.suite.runner import train, train_suite

__all__ = ["SuiteConfig", "SuiteConfigError", "describe", "evaluate_suite", "format_table", "train", "train_suite"]
