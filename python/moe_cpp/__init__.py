"""moe.cpp from Python.

    import moe_cpp                      # the engine: models, tokenizers, generation, training
    from moe_cpp.torch import MoE       # the engine's MoE layer as a torch.nn.Module (needs PyTorch)
    moe_cpp.torch.patch(model)          # a transformers MoE model's blocks replaced by the engine's

The extension moe_cpp._core holds the C++ engine; errors it raises are moe_cpp.Error (a ValueError)
carrying the engine's message.
"""
from . import _core
from ._core import Error, Layer, num_threads, set_num_threads

__version__ = getattr(_core, "__version__", "0")

__all__ = ["Error", "Layer", "num_threads", "set_num_threads", "__version__"]

# The engine: models, tokenizers, generation, evaluation, training (python/moe_cpp/engine.py).
from .engine import Generation, Model, Token, Tokenizer, TokenStream, load, train  # noqa: E402

__all__ += ["Generation", "Model", "Token", "Tokenizer", "TokenStream", "load", "train"]
