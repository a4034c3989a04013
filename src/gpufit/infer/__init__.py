"""Inference: test statistics, calculators, hypothesis tests and intervals."""

from .asymptotics import AsymptoticScan, asimov_data
from .hypotest import HypoTestResult, hypotest
from .intervals import UpperLimitResult, upper_limit
from .scan import ScanResult, scan
from .test_statistics import q0, qmu, qmu_tilde, tmu, tmu_tilde

__all__ = [
    "hypotest",
    "upper_limit",
    "scan",
    "ScanResult",
    "HypoTestResult",
    "UpperLimitResult",
    "AsymptoticScan",
    "asimov_data",
    "q0",
    "qmu",
    "qmu_tilde",
    "tmu",
    "tmu_tilde",
]
