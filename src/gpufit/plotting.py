"""Plots (matplotlib, optional): the Brazil band of an upper-limit scan."""

from __future__ import annotations

from .exceptions import BackendUnavailable


def brazil_plot(result, path=None, ax=None):
    """CLs against the POI with the expected +-1/2 sigma bands; saved to ``path`` if given."""
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise BackendUnavailable("plots need matplotlib: pip install 'gpufit[plot]'") from err
    if ax is None and path is not None:
        ax = Figure(figsize=(6, 4.5)).subplots()  # no pyplot: the user's backend is left as it is
    elif ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(6, 4.5))
    mus, exp = result.mus, result.cls_exp
    ax.fill_between(mus, exp[:, 0], exp[:, 4], color="yellow", label=r"expected $\pm 2\sigma$")
    ax.fill_between(mus, exp[:, 1], exp[:, 3], color="limegreen", label=r"expected $\pm 1\sigma$")
    ax.plot(mus, exp[:, 2], "k--", label="expected")
    ax.plot(mus, result.cls_obs, "k.-", label="observed")
    ax.axhline(result.level, color="red", label=f"CLs = {result.level}")
    ax.set_xlabel(r"$\mu$")
    ax.set_ylabel(r"CL$_s$")
    ax.set_ylim(0, 1.05)
    ax.legend(loc="upper right")
    ax.set_title(f"observed limit {result.observed:.3f}, expected {result.expected[2]:.3f}")
    if path is not None:
        ax.figure.savefig(path, dpi=120, bbox_inches="tight")
    return ax
