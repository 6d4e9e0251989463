"""Suites: many SAEs (hookpoints × architectures × widths × target L0s) trained from one pass, then measured.

    train_suite(config, out)     # suite.json + one folder per SAE
    evaluate_suite(out)          # eval.json, eval.csv, plots/*.png
    describe(out)                # a short text description
"""

from saescope.suite.config import SuiteConfig, SuiteConfigError
from saescope.suite.evaluate import evaluate_suite, format_table
from saescope.suite.info import describe
from saescope.suite.runner import train_suite

__all__ = ["SuiteConfig", "SuiteConfigError", "describe", "evaluate_suite", "format_table", "train_suite"]
