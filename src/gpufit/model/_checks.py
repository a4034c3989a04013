"""Numbers a model cannot be built from, refused with their JSON path.

pyhf's schema checks types and structure; it accepts NaN and Infinity (Python's JSON
reader does) and negative yields, from which the Poisson likelihood is undefined or
a fit returns garbage. These checks run when a workspace is loaded and when a model is
built from a spec.
"""

from __future__ import annotations

import numpy as np

from ..exceptions import InvalidWorkspace

# modifier type -> (data keys, what a valid value is)
_MODIFIER_DATA = {
    "normsys": (("hi", "lo"), "positive"),
    "histosys": (("hi_data", "lo_data"), "non-negative"),
    "shapesys": ((None,), "non-negative"),
    "staterror": ((None,), "non-negative"),
}


def _first_bad(values, rule: str):
    """Index and value of the first entry that is not finite or breaks ``rule``; None if all fine."""
    array = np.atleast_1d(np.asarray(values, dtype=float))
    ok = np.isfinite(array) & ((array > 0) if rule == "positive" else (array >= 0))
    bad = np.flatnonzero(~ok)
    return (int(bad[0]), float(array[bad[0]])) if bad.size else None


def check_channel_values(channels, checked=frozenset()) -> None:
    """Refuse sample yields, modifier data that are not finite and of the right sign;
    samples whose ``id`` is in ``checked`` (checked before: a grid's shared background)
    are skipped.

    Raises:
        InvalidWorkspace: naming the JSON path (``channels[0].samples[1].data[3]``), the
            value, and what a valid one is.
    """
    for c, channel in enumerate(channels):
        for s, sample in enumerate(channel["samples"]):
            if id(sample) in checked:
                continue
            where = f"sample {sample['name']!r} of channel {channel['name']!r}"
            bad = _first_bad(sample["data"], "non-negative")
            if bad:
                path = f"channels[{c}].samples[{s}].data[{bad[0]}]"
                raise InvalidWorkspace(
                    f"{path} ({where}) is {bad[1]:g}: yields must be finite and >= 0, since a negative "
                    "expected count leaves the Poisson likelihood undefined. Set the bin to 0 or a small "
                    "positive value", path=path, expected="a finite number >= 0",
                )
            for m, modifier in enumerate(sample["modifiers"]):
                keys, rule = _MODIFIER_DATA.get(modifier["type"], ((), ""))
                for key in keys:
                    values = modifier["data"] if key is None else modifier["data"][key]
                    bad = _first_bad(values, rule)
                    if bad:
                        path = f"channels[{c}].samples[{s}].modifiers[{m}].data" + (f".{key}" if key else "")
                        path += f"[{bad[0]}]" if np.ndim(values) else ""
                        raise InvalidWorkspace(
                            f"{path} ({modifier['type']} {modifier['name']!r} of {where}) is {bad[1]:g}: "
                            f"it must be finite and {rule}", path=path, expected=f"a finite {rule} number",
                        )


def check_poi_scales_something(channels, poi_name: str | None) -> None:
    """Refuse a POI whose samples are zero in every bin: its likelihood is flat, and
    every fit, test and limit on it would be a number computed from nothing."""
    if poi_name is None:
        return
    carriers = [(channel["name"], sample) for channel in channels for sample in channel["samples"]
                if any(m["name"] == poi_name for m in sample["modifiers"])]
    if carriers and not any(np.any(np.asarray(sample["data"], dtype=float) != 0) for _, sample in carriers):
        names = ", ".join(f"{sample['name']!r} in {channel!r}" for channel, sample in carriers[:5])
        raise InvalidWorkspace(
            f"the POI {poi_name!r} scales only samples that are zero in every bin ({names}): the data "
            "cannot say anything about it. Check the signal patch (was it applied?)",
            path="channels", expected=f"a non-zero yield in a sample that {poi_name!r} scales",
        )
