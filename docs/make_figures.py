"""Regenerate the figures the README shows (run from the repository root):

    python docs/make_figures.py

docs/toys-vs-asymptotic.png: the toy test-statistic distributions of pyhf's 2-bin
documentation model at mu = 1 (2,000 toys per hypothesis, seed 1) against the
asymptotic formulae, as ``gpufit hypotest example:docs --calculator toys --plot`` draws it.
"""

import os

import gpufit
from gpufit import plotting

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    ws = gpufit.Workspace.example("docs")
    model = ws.model()
    data = ws.data(model)
    asymptotic = gpufit.hypotest(model, data, mu=1.0)
    toys = gpufit.hypotest(model, data, mu=1.0, calculator="toys", ntoys=2000, seed=1, progress=False)
    path = os.path.join(HERE, "toys-vs-asymptotic.png")
    plotting.teststat_plot(toys, asymptotic, path=path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
