"""The engine from Python: load a model, tokenize, generate (or stream), evaluate, train.

    import moe_cpp
    model = moe_cpp.load("runs/fortunes")               # HF directory, run directory or .gguf file
    print(model.generate("The meaning of life", max_new_tokens=32, temperature=0).text)
    for tok in model.stream("Once upon a time", temperature=0.8, seed=1):
        print(tok.text, end="", flush=True)              # breaking out of the loop stops decoding
    model.eval("Some held-out text.")                    # {"loss", "ppl", "tokens", ...} as `moe eval`
    moe_cpp.train("runs/tiny", data="corpus.txt", steps=50, layers=2, hidden=64,
                  callback=lambda m: print(m["step"], m["loss"]))

Everything runs in the C++ library (moe_cpp._core), the GIL released around each compute call. Bad
input of any kind (a missing path, a truncated checkpoint, an argument of the wrong type) raises
moe_cpp.Error (a ValueError) with the engine's message. PyTorch is not needed.
"""
import codecs
import json
import operator
import os
from dataclasses import dataclass, field
from typing import Callable, Iterator, List, NamedTuple, Optional, Sequence, Union

from . import _core
from ._core import Error, Tokenizer

__all__ = ["load", "train", "Model", "Tokenizer", "Token", "TokenStream", "Generation"]

_DTYPES = ("f32", "bf16", "w8a8", "w4a8")


# ---- argument checks: wrong types are moe_cpp.Error, like every other bad input ----

def _type_error(name, what, v):
    return Error(f"{name} must be {what}, got {type(v).__name__}")


def _int(name, v, lo=None):
    if isinstance(v, bool):
        raise _type_error(name, "an int", v)
    try:
        v = operator.index(v)  # int, numpy integers
    except TypeError:
        raise _type_error(name, "an int", v) from None
    if lo is not None and v < lo:
        raise Error(f"{name} must be >= {lo}, got {v}")
    return v


def _num(name, v):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        try:
            return float(operator.index(v))
        except TypeError:
            raise _type_error(name, "a number", v) from None
    return float(v)


def _path(name, v):
    if not isinstance(v, (str, os.PathLike)):
        raise _type_error(name, "a path (str or os.PathLike)", v)
    return os.fspath(v)


def _ids(name, v):
    if isinstance(v, (str, bytes)) or not hasattr(v, "__iter__"):
        raise _type_error(name, "a list of token ids", v)
    out = []
    for i, t in enumerate(v):
        t = _int(f"{name}[{i}]", t, 0)
        if t > 0x7FFFFFFF:
            raise Error(f"{name}[{i}] = {t} is not a token id")
        out.append(t)
    return out


# ---- generation ----

class Token(NamedTuple):
    """One generated token: its id and the text it adds ("" for end-of-text, or while a UTF-8
    character is still incomplete)."""
    id: int
    text: str


@dataclass
class Generation:
    """The result of Model.generate."""
    text: Optional[str]        # the new tokens decoded (end-of-text left out); None without a tokenizer
    ids: List[int]             # the new token ids (an end-of-text id that stopped it included)
    finish_reason: str         # "eos", "length" (max_new_tokens or the context), "stopped"
    prompt_ids: List[int] = field(default_factory=list)
    prefill_s: float = 0.0
    decode_s: float = 0.0


class TokenStream:
    """A lazy iterator of Token: each next() runs one decoding step of the engine (the prompt's
    forward pass ran when the stream was made). Breaking out of the loop, close(), or leaving a
    `with` block stops it; nothing is computed ahead."""

    def __init__(self, core_stream, tokenizer):
        self._s = core_stream
        self._tok = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def __iter__(self) -> Iterator[Token]:
        return self

    def __next__(self) -> Token:
        t = next(self._s)  # StopIteration when finished
        return Token(t, self._piece(t))

    def _piece(self, t):
        tok = self._tok
        # A model may have more ids than its tokenizer (vocabulary padding): those add nothing.
        if tok is None or t == tok.eos_id or t >= tok.vocab_size:
            return ""
        return self._utf8.decode(tok.token_bytes(t))

    def close(self):
        """Stops the generation (finish_reason "stopped" unless it had finished)."""
        self._s.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def ids(self) -> List[int]:
        """The new token ids so far."""
        return self._s.tokens

    @property
    def prompt_ids(self) -> List[int]:
        return self._s.prompt

    @property
    def done(self) -> bool:
        return self._s.done

    @property
    def finish_reason(self) -> str:
        """"eos", "length", "stopped", or "" while running."""
        return self._s.finish_reason

    def result(self) -> Generation:
        """What was generated so far, as a Generation."""
        return Generation(_decode_shown(self._tok, self.ids), self.ids, self.finish_reason, self.prompt_ids,
                          self._s.prefill_s, self._s.decode_s)


def _decode_shown(tok, ids):
    """The text of the new tokens as `moe generate --json` shows it (no end-of-text, no padding ids)."""
    if tok is None:
        return None
    return tok.decode([t for t in ids if t != tok.eos_id and t < tok.vocab_size])


# ---- models ----

class Model:
    """A model loaded for inference (see load). Its methods may be called from several threads; the
    compute calls of one model run one at a time."""

    def __init__(self, core_model):
        self._m = core_model
        self._config = None

    def __repr__(self):
        c = self.config
        return (f"moe_cpp.Model({self.path!r}, {c.get('model_type')}, {c.get('num_hidden_layers')} layers, "
                f"{c.get('num_local_experts', c.get('num_experts'))} experts)")

    @property
    def path(self) -> str:
        """The model directory (a run directory's checkpoint/) or .gguf file."""
        return self._m.path

    @property
    def config(self) -> dict:
        """The model's config.json (Hugging Face keys)."""
        if self._config is None:
            self._config = json.loads(self._m.config_json)
        return dict(self._config)

    @property
    def tokenizer(self) -> Optional[Tokenizer]:
        """The tokenizer next to the model (tokenizer.json, or a GGUF file's metadata), or None."""
        return self._m.tokenizer

    def _prompt(self, prompt):
        if isinstance(prompt, str):
            return self._m.prompt_ids(prompt)
        ids = _ids("prompt", prompt)
        if not ids:
            raise Error("generate: the prompt has no tokens")
        return ids

    def stream(self, prompt: Union[str, Sequence[int]], max_new_tokens: int = 64, *, temperature: float = 1.0,
               top_p: float = 1.0, top_k: int = 0, seed: int = 0, repetition_penalty: float = 1.0,
               frequency_penalty: float = 0.0, presence_penalty: float = 0.0, stop_at_eos: bool = True,
               eos_id: Optional[int] = None) -> TokenStream:
        """Continues the prompt token by token (see TokenStream). A str prompt is encoded as
        `moe generate --prompt` encodes it (the tokenizer's special tokens added; an empty one starts
        from end-of-text); a list is used as token ids. The options and their defaults are those of
        `moe generate` (temperature 0 = greedy). Generation stops after the end-of-text token (the
        tokenizer's, else the config's eos_token_id, or eos_id) unless stop_at_eos is False."""
        o = _core.GenerateOptions()
        o.max_new_tokens = _int("max_new_tokens", max_new_tokens, 0)
        o.temperature = _num("temperature", temperature)
        o.top_p = _num("top_p", top_p)
        o.top_k = _int("top_k", top_k, 0)
        o.seed = _int("seed", seed, 0)
        o.repetition_penalty = _num("repetition_penalty", repetition_penalty)
        o.frequency_penalty = _num("frequency_penalty", frequency_penalty)
        o.presence_penalty = _num("presence_penalty", presence_penalty)
        if not isinstance(stop_at_eos, bool):
            raise _type_error("stop_at_eos", "a bool", stop_at_eos)
        o.stop_at_eos = stop_at_eos
        if eos_id is not None:
            o.eos_id = _int("eos_id", eos_id, 0)
        return TokenStream(self._m.stream(self._prompt(prompt), o), self._m.tokenizer)

    def generate(self, prompt: Union[str, Sequence[int]], max_new_tokens: int = 64, *, stream: bool = False,
                 **options) -> Union[Generation, TokenStream]:
        """Continues the prompt (options as for stream()) and returns a Generation; with
        stream=True, returns the TokenStream instead."""
        s = self.stream(prompt, max_new_tokens, **options)
        if stream:
            return s
        for _ in s:
            pass
        return s.result()

    def eval(self, text_or_ids: Union[str, Sequence[int], None] = None, *, file=None, seq_len: Optional[int] = None,
             batch: int = 8) -> dict:
        """Mean next-token cross-entropy as `moe eval --json`: {"loss", "ppl", "tokens",
        "skipped_share"}. Give text (encoded with the model's tokenizer, no special tokens), token
        ids, or file= a text file or directory (as --data). Windows of seq_len + 1 tokens (default
        min(context, 512)), `batch` windows per forward pass."""
        if (text_or_ids is None) == (file is None):
            raise Error("eval: give exactly one of text (or token ids) and file=")
        if file is not None:
            ids = self._m.eval_ids(_path("file", file), True)
        elif isinstance(text_or_ids, str):
            ids = self._m.eval_ids(text_or_ids, False)
        else:
            ids = _ids("tokens", text_or_ids)
        o = _core.EvalOptions()
        if seq_len is not None:
            o.seq_len = _int("seq_len", seq_len, 1)
        o.batch = _int("batch", batch, 1)
        return self._m.eval_tokens(ids, o)


def load(path, dtype: str = "f32", threads: Optional[int] = None, skip_threshold: float = 0.0,
         router_top_p: Optional[float] = None) -> Model:
    """Loads a model for inference, as `moe generate --model` does: a Hugging Face directory
    (config.json + *.safetensors, a quantized one included), a run directory of `moe train` (its
    checkpoint/), or a .gguf file. dtype: "f32", "bf16" (bf16 weights, f32 accumulation), "w8a8" or
    "w4a8" (integer dense linears, bf16 otherwise). threads: CPU threads of the engine (process-wide;
    None keeps the current count). skip_threshold: skip routed experts whose routing weight is below
    it (0 = off). router_top_p: adaptive-k routing, each token's experts by score until their mass
    reaches it (at most the model's top-k; 0 = top-k always; None: the model's own)."""
    path = _path("path", path)
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        raise Error(f"load: dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
    threads = 0 if threads is None else _int("threads", threads, 1)
    top_p = -1.0 if router_top_p is None else _num("router_top_p", router_top_p)
    if router_top_p is not None and not 0.0 <= top_p <= 1.0:
        raise Error(f"load: router_top_p must be in [0, 1], got {router_top_p}")
    return Model(_core.load_model(path, dtype, threads, _num("skip_threshold", skip_threshold), top_p))


# ---- training ----

# Python names that differ from the options' own (the `moe train` flags' names).
_ALIASES = {"out": "run_dir", "warmup": "warmup_steps", "clip": "grad_clip", "init": "init_from"}
_RESUME_OPTIONS = {"steps", "halt_after", "time_limit_s", "quiet"}
_RECORDS = ("step", "eval", "skip")


def train(out=None, data=None, *, resume=None, config=None, callback: Optional[Callable[[dict], Optional[bool]]] = None,
          overwrite: bool = False, threads: Optional[int] = None, **options) -> dict:
    """Trains an MoE language model with the engine's trainer, as `moe train` does: a new run in
    directory `out` on the text in `data` (a file or directory; None = the fortunes corpus), or,
    with resume=RUN_DIR, the continuation of a run from its last checkpoint.

    options (None = the default of `moe train`): steps, vocab_size, seq_len, batch_size, grad_accum,
    lr, min_lr_ratio, warmup (warmup_steps), weight_decay, beta1, beta2, clip (grad_clip), bf16,
    seed, log_every, eval_every, eval_batches, checkpoint_every, time_limit_s, halt_after, quiet,
    init (init_from); the model: config (a config.json path, or a config dict) or arch, layers,
    hidden, heads, kv_heads, head_dim, experts, top_k, expert_width, shared_width, dense_width,
    dense_layers, tie, aux_coef, z_coef, routing, score, bias_update_rate, capacity_factor,
    n_groups, topk_groups. A resumed run takes only steps, halt_after, time_limit_s and quiet.

    callback(metrics) is called, with the GIL held, with every record the run writes to
    metrics.jsonl of type "step" (each optimizer step: step, loss, aux_loss, lr, grad_norm, tokens,
    tokens_per_s, expert_load, ...), "eval" (step, loss, ppl) and "skip"; returning False stops the
    run after that step, with a checkpoint. An exception it raises stops the run and propagates.

    Returns the summary: steps_done, final_loss, eval_loss, tokens_per_s, checkpoint, run_dir,
    stopped (True when the callback stopped it), last_step (the last step record)."""
    opts = {}
    for k, v in options.items():
        opts[_ALIASES.get(k, k)] = v
    if config is not None:
        if isinstance(config, dict):
            opts["model_config_json"] = json.dumps(config)
        else:
            opts["model_config"] = _path("config", config)
    if resume is not None:
        resume = _path("resume", resume)
        extra = sorted(k for k, v in opts.items() if v is not None and k not in _RESUME_OPTIONS)
        if out is not None or data is not None or extra:
            raise Error("train: a resumed run keeps its own options; with resume= give only steps, halt_after, "
                        f"time_limit_s, quiet (got {', '.join(extra + [n for n, v in (('out', out), ('data', data)) if v is not None])})")
    else:
        if out is None:
            raise Error("train: give the run directory (out=) or resume=")
        opts["run_dir"] = _path("out", out)
        if data is not None:
            opts["data"] = _path("data", data)
    if not isinstance(overwrite, bool):
        raise _type_error("overwrite", "a bool", overwrite)
    if callback is not None and not callable(callback):
        raise _type_error("callback", "callable", callback)
    threads = 0 if threads is None else _int("threads", threads, 1)
    last = {}

    def hook(line):
        rec = json.loads(line)
        if rec.get("type") not in _RECORDS:
            return True
        if rec["type"] == "step":
            last["step"] = rec
        return None if callback is None else callback(rec)

    summary = _core.train(opts, resume or "", overwrite, threads, hook)
    summary["last_step"] = last.get("step")
    return summary
