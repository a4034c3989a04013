"""The exceptions gpufit raises, one per kind of failure.

Every message says what was received, what was expected, and what to do.
"""

from __future__ import annotations

import difflib

__all__ = [
    "GpufitError",
    "InvalidWorkspace",
    "UnknownName",
    "InvalidModel",
    "InvalidShape",
    "InvalidInterpCode",
    "UnspecifiedPOI",
    "BackendUnavailable",
    "InvalidArgument",
    "ToyFitsFailed",
    "LimitOutsideGrid",
    "CampaignError",
    "BrokenResult",
]


class GpufitError(Exception):
    """Base class of every error raised by gpufit."""


class InvalidWorkspace(GpufitError, ValueError):
    """A workspace spec that does not follow the pyhf JSON schema or cannot form a model.

    ``path`` is the JSON path of the offending value (``channels[0].samples[1].data``),
    ``expected`` what the schema asked for there.
    """

    def __init__(self, message: str, path: str | None = None, expected: str | None = None):
        super().__init__(message)
        self.path = path
        self.expected = expected

    def __reduce__(self):  # pickled with its fields (errors come back from worker processes)
        return type(self), (self.args[0], self.path, self.expected)


class UnknownName(GpufitError, KeyError):
    """A measurement, patch, parameter, channel or sample name that does not exist."""

    def __init__(self, kind: str, name: str, valid):
        valid = list(valid)
        close = difflib.get_close_matches(str(name), [str(v) for v in valid], n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        shown = ", ".join(repr(v) for v in valid[:40])
        more = f" (and {len(valid) - 40} more)" if len(valid) > 40 else ""
        msg = f"unknown {kind} {name!r}.{hint} Valid {_plural(kind)}: {shown}{more}."
        super().__init__(msg)
        self.kind, self.name, self.valid = kind, name, valid

    def __reduce__(self):
        return type(self), (self.kind, self.name, self.valid)

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.args[0]


def _plural(kind: str) -> str:
    """English plural of the last word: patch -> patches, parameter of interest -> parameters of interest."""
    head, sep, tail = kind.partition(" of ")
    head = head + ("es" if head.endswith(("ch", "sh", "s", "x")) else "s")
    return head + sep + tail


class InvalidArgument(GpufitError, ValueError):
    """An argument outside its valid range (a POI value outside its bounds, a grid that
    does not increase, ``ntoys < 1``, a CLs level outside (0, 1), ...)."""


class InvalidModel(GpufitError, ValueError):
    """A model that cannot be used for the requested operation (e.g. a fixed POI in a hypotest)."""


class InvalidShape(GpufitError, ValueError):
    """Parameters or data whose last axis does not match the model."""


class InvalidInterpCode(GpufitError, ValueError):
    """An interpolation code that the modifier type does not support."""


class UnspecifiedPOI(InvalidModel):
    """The operation needs a parameter of interest, and the measurement names none."""


class BackendUnavailable(GpufitError, ImportError):
    """A device or optional backend that is asked for but not present (``--require-gpu`` on a CPU)."""


class ToyFitsFailed(GpufitError, RuntimeError):
    """More toys than the tolerated fraction have a fit that failed after every retry.

    ``result`` holds everything computed (failed toys are NaN in the distributions), so
    nothing is lost.
    """

    def __init__(self, message: str, result=None, n_failed: int = 0, n_toys: int = 0, max_failed: float = 0.0):
        super().__init__(message)
        self.result = result
        self.n_failed, self.n_toys, self.max_failed = n_failed, n_toys, max_failed


class LimitOutsideGrid(UserWarning):
    """An upper limit that the scanned POI values do not bracket: the result holds a
    bound (``observed_bound`` / ``expected_bound`` say which way), not a crossing."""


class CampaignError(GpufitError, RuntimeError):
    """A campaign directory, job or result that cannot be used as it is."""


class BrokenResult(CampaignError):
    """A result or checkpoint file that is truncated, corrupt or inconsistent."""
