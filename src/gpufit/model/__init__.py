"""Model compiler: a HistFactory spec becomes static arrays (:class:`CompiledModel`)."""

from ._checks import check_channel_values
from ._compiled import CompiledModel
from ._model import Model
from ._stack import pad_models, pad_shape, pad_to, stack, stack_key, take
from ._union import families, in_union, own_parameters, structure_key, union_data, union_layout
from .interpolation import DEFAULT_MODIFIER_SETTINGS, HISTOSYS_CODES, NORMSYS_CODES

__all__ = ["Model", "CompiledModel", "DEFAULT_MODIFIER_SETTINGS", "NORMSYS_CODES", "HISTOSYS_CODES", "check_channel_values", "stack", "stack_key", "take", "pad_models", "pad_shape", "pad_to",
           "structure_key", "families", "in_union", "union_layout", "union_data", "own_parameters"]
