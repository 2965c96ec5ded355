"""What the project takes from llama-cpp-python beyond its public ``Llama`` API, pinned.

The runtime reaches into ``llama_cpp._internals``, private ``Llama`` attributes (``_model``,
``_ctx``, ``_lora_adapter``, ``input_ids``/``n_tokens``) and the low-level ctypes bindings. None
of that is covered by llama-cpp-python's compatibility promises, so an upgrade can move it; each
check here names the project file that relies on the thing, so the failure says what to fix
rather than a user's first request failing with an AttributeError or a ctypes crash.
"""

from __future__ import annotations

import ctypes
import inspect
import re
import tomllib
from pathlib import Path

import pytest

from csound_assistant.constants import OUTPUT_TENSOR_TYPES, QUANT_TYPES
from csound_assistant.llamacpp import load

REPO = Path(__file__).resolve().parents[1]
_DEPS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
PINNED = next(re.sub(r"^llama-cpp-python==", "", d) for d in _DEPS
              if d.startswith("llama-cpp-python=="))

llama_cpp = load()
from llama_cpp import _internals  # noqa: E402  (after the guarded import)


def relied_on(user: str, purpose: str) -> str:
    return (f"{user} relies on this for {purpose}. Installed llama-cpp-python "
            f"{llama_cpp.__version__}, pinned in pyproject.toml {PINNED}: upgrading past "
            f"{PINNED} needs {user} checked against the new version")


P = ctypes.POINTER
# name -> (argtypes, restype, user, purpose): the low-level calls made with raw pointers, where
# a changed signature corrupts memory instead of raising.
FUNCTIONS = {
    "llama_vocab_is_eog": ([ctypes.c_void_p, ctypes.c_int32], ctypes.c_bool,
                           "runtime/backend.py", "LlamaBackend.is_eog on llm._model.vocab"),
    "llama_state_seq_get_size": ([ctypes.c_void_p, ctypes.c_int32], ctypes.c_size_t,
                                 "runtime/backend.py", "saving KV states for --cache-slots"),
    "llama_state_seq_get_data": ([ctypes.c_void_p, P(ctypes.c_uint8), ctypes.c_size_t,
                                  ctypes.c_int32], ctypes.c_size_t,
                                 "runtime/backend.py", "saving KV states for --cache-slots"),
    "llama_state_seq_set_data": ([ctypes.c_void_p, P(ctypes.c_uint8), ctypes.c_size_t,
                                  ctypes.c_int32], ctypes.c_size_t,
                                 "runtime/backend.py", "restoring KV states for --cache-slots"),
    "llama_batch_init": ([ctypes.c_int32] * 3, llama_cpp.llama_batch,
                         "runtime/batched.py", "the shared batch of serve --parallel"),
    "llama_batch_free": ([llama_cpp.llama_batch], None,
                         "runtime/batched.py", "the shared batch of serve --parallel"),
    "llama_decode": ([ctypes.c_void_p, llama_cpp.llama_batch], ctypes.c_int32,
                     "runtime/batched.py", "one decode step of serve --parallel"),
    "llama_memory_seq_rm": ([ctypes.c_void_p, ctypes.c_int32, ctypes.c_int32, ctypes.c_int32],
                            ctypes.c_bool, "runtime/batched.py",
                            "freeing a sequence's KV cells under serve --parallel"),
    "llama_memory_seq_cp": ([ctypes.c_void_p, ctypes.c_int32, ctypes.c_int32, ctypes.c_int32,
                             ctypes.c_int32], None, "runtime/batched.py",
                            "sharing a prompt prefix between sequences under serve --parallel"),
    "llama_set_adapters_lora": ([ctypes.c_void_p, P(P(ctypes.c_void_p)), ctypes.c_size_t,
                                 P(ctypes.c_float)], ctypes.c_int32,
                                "runtime/batched.py (lora_onto)",
                                "serve --lora with --parallel"),
    "llama_model_quantize": ([ctypes.c_char_p, ctypes.c_char_p,
                              P(llama_cpp.llama_model_quantize_params)], ctypes.c_uint32,
                             "convert/quantize.py", "every quantized export"),
    "llama_model_quantize_default_params": ([], llama_cpp.llama_model_quantize_params,
                                            "convert/quantize.py", "every quantized export"),
    "llama_print_system_info": ([], ctypes.c_char_p,
                                "csound_assistant/llamacpp.py", "detecting AMX builds"),
}

# struct -> (fields, user, purpose): fields the project reads or writes.
STRUCTS = {
    "llama_batch": (["n_tokens", "token", "pos", "n_seq_id", "seq_id", "logits"],
                    "runtime/batched.py", "filling the batch of serve --parallel"),
    "llama_context_params": (["n_ctx", "n_batch", "n_ubatch", "n_seq_max", "kv_unified"],
                             "runtime/backend.py (parallel_context)",
                             "the batched context of serve --parallel"),
    "llama_model_params": (["use_extra_bufts"], "csound_assistant/llamacpp.py",
                           "the AMX guard (no extra buffer types)"),
    "llama_model_quantize_params": (["nthread", "ftype", "output_tensor_type", "imatrix"],
                                    "convert/quantize.py", "quantizing exports"),
    "llama_model_imatrix_data": (["name", "data", "size"], "convert/quantize.py",
                                 "importance-matrix quantization"),
}

# callable -> (how the project calls it, user, purpose): the call is bound to the signature.
CALLS = {
    "_internals.LlamaContext": (lambda f: inspect.signature(f).bind(
        model=None, params=None, verbose=False), "runtime/backend.py (parallel_context)",
        "the batched context of serve --parallel"),
    "_internals.LlamaContext.kv_cache_seq_rm": (
        lambda f: inspect.signature(f).bind(None, -1, 0, -1),
        "runtime/backend.py (_load)", "clearing the KV cache before restoring a saved state"),
    "_internals.LlamaSampler": (lambda f: inspect.signature(f).bind(), "runtime/batched.py",
                                "per-request sampler chains under serve --parallel"),
    "_internals.LlamaSampler.add_penalties": (lambda f: inspect.signature(f).bind(
        None, n_vocab=1, penalty_last_n=64, penalty_repeat=1.1, penalty_freq=0.0,
        penalty_present=0.0), "runtime/batched.py (make_sampler)", "repeat penalties"),
    **{f"_internals.LlamaSampler.{name}": (lambda f, args=args: inspect.signature(f).bind(
        None, *args), "runtime/batched.py (make_sampler)", "sampling under serve --parallel")
       for name, args in {"add_greedy": (), "add_top_k": (40,), "add_top_p": (0.95, 1),
                          "add_min_p": (0.05, 1), "add_temp": (0.8,), "add_dist": (0,),
                          "sample": (None, 0), "close": ()}.items()},
    "Llama.generate": (lambda f: inspect.signature(f).bind(
        None, [1], top_k=40, top_p=0.95, min_p=0.05, temp=0.8, repeat_penalty=1.0,
        frequency_penalty=0.0, presence_penalty=0.0, reset=True),
        "runtime/backend.py and eval/models.py", "every generated answer"),
}


def _resolve(dotted: str):
    owner = {"_internals": _internals, "Llama": llama_cpp.Llama}[dotted.split(".")[0]]
    for part in dotted.split(".")[1:]:
        owner = getattr(owner, part)
    return owner


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_low_level_function_signature(name):
    argtypes, restype, user, purpose = FUNCTIONS[name]
    function = getattr(llama_cpp, name, None)
    assert function is not None, f"llama_cpp.{name} is gone. " + relied_on(user, purpose)
    assert (list(function.argtypes), function.restype) == (argtypes, restype), (
        f"llama_cpp.{name} takes {function.argtypes} -> {function.restype}, not {argtypes} -> "
        f"{restype}. " + relied_on(user, purpose))


@pytest.mark.parametrize("name", sorted(STRUCTS))
def test_struct_fields(name):
    fields, user, purpose = STRUCTS[name]
    struct = getattr(llama_cpp, name, None)
    assert struct is not None, f"llama_cpp.{name} is gone. " + relied_on(user, purpose)
    missing = sorted(set(fields) - {f[0] for f in struct._fields_})
    assert not missing, f"llama_cpp.{name} has no field {missing}. " + relied_on(user, purpose)


def test_imatrix_entries_are_what_quantize_writes():
    fields = dict(llama_cpp.llama_model_imatrix_data._fields_)
    assert fields == {"name": ctypes.c_char_p, "data": P(ctypes.c_float),
                      "size": ctypes.c_size_t}, relied_on(
        "convert/quantize.py (_imatrix_array)", "importance-matrix quantization")
    assert dict(llama_cpp.llama_model_quantize_params._fields_)["imatrix"] is P(
        llama_cpp.llama_model_imatrix_data), relied_on("convert/quantize.py", "params.imatrix")


def test_quantization_type_constants():
    names = [*QUANT_TYPES.values(), *(f"GGML_TYPE_{t}" for t in OUTPUT_TENSOR_TYPES.values())]
    missing = [n for n in names if not isinstance(getattr(llama_cpp, n, None), int)]
    assert not missing, f"llama_cpp has no {missing}. " + relied_on(
        "convert/quantize.py (via csound_assistant/constants.py)", "--quant types")


def test_lora_adapter_pointer_type():
    assert llama_cpp.llama_adapter_lora_p_ctypes is P(ctypes.c_void_p), relied_on(
        "runtime/batched.py (lora_onto)", "serve --lora with --parallel")


@pytest.mark.parametrize("name", sorted(CALLS))
def test_call_binds_to_the_signature(name):
    bind, user, purpose = CALLS[name]
    try:
        bind(_resolve(name))
    except (AttributeError, TypeError) as exc:
        pytest.fail(f"{name} no longer accepts the call the project makes ({exc}). "
                    + relied_on(user, purpose))


# --- attributes only an instance has: the embedded GGUF, loaded once ----------------------------

@pytest.fixture(scope="module")
def llm(embedded_gguf):
    model = llama_cpp.Llama(str(embedded_gguf), n_ctx=64, n_batch=64, n_threads=2,
                            verbose=False, seed=0)
    yield model
    model.close()


def test_model_internals(llm):
    why = relied_on("runtime/backend.py", "the vocabulary handle, /api/show's parameter count "
                    "and the batched context of serve --parallel")
    assert isinstance(llm._model, _internals.LlamaModel), why
    assert llm._model.vocab, why
    assert llama_cpp.llama_vocab_is_eog(llm._model.vocab, llm.token_eos()), why
    assert 100_000_000 < llm._model.n_params() < 200_000_000, why  # SmolLM2-135M


def test_no_lora_adapter_without_a_lora(llm):
    assert llm._lora_adapter is None and llm.lora_scale == 1.0, relied_on(
        "runtime/batched.py (lora_onto)", "knowing whether a LoRA adapter is applied")


def test_context_internals_and_the_kv_state_round_trip(llm):
    why = relied_on("runtime/backend.py (_save_live, _load)",
                    "prompt-prefix cache slots: the live tokens and saved KV states")
    tokens = llm.tokenize(b"instr 1\n asig poscil 0.3, 440\n", add_bos=False)
    llm.reset()
    llm.eval(tokens)
    assert llm.n_tokens == len(tokens) and list(llm.input_ids[:llm.n_tokens]) == tokens, why
    assert isinstance(llm._ctx, _internals.LlamaContext) and llm._ctx.ctx, why
    ctx = llm._ctx.ctx
    size = llama_cpp.llama_state_seq_get_size(ctx, 0)
    data = (ctypes.c_uint8 * size)()
    assert size > 0 and llama_cpp.llama_state_seq_get_data(ctx, data, size, 0) > 0, why
    assert llm._ctx.kv_cache_seq_rm(-1, 0, -1), why
    assert llama_cpp.llama_state_seq_set_data(ctx, data, size, 0) > 0, why
    assert hasattr(llm, "_requires_eval"), why


def test_batched_context_decodes_two_sequences(llm):
    """What serve --parallel does each step: a second context of the same model, one batch of
    two sequences, a sampler per sequence."""
    why = relied_on("runtime/backend.py (parallel_context) and runtime/batched.py",
                    "serve --parallel")
    params = type(llm.context_params).from_buffer_copy(llm.context_params)
    params.n_ctx, params.n_seq_max, params.kv_unified = 64, 2, True
    ctx = _internals.LlamaContext(model=llm._model, params=params, verbose=False)
    batch = llama_cpp.llama_batch_init(ctx.params.n_batch, 0, 1)
    try:
        tokens = llm.tokenize(b"instr 1", add_bos=False)
        for seq_id in (0, 1):
            for i, token in enumerate(tokens):
                k = batch.n_tokens
                batch.token[k], batch.pos[k], batch.n_seq_id[k] = token, i, 1
                batch.seq_id[k][0] = seq_id
                batch.logits[k] = i == len(tokens) - 1
                batch.n_tokens = k + 1
        assert llama_cpp.llama_decode(ctx.ctx, batch) == 0, why
        sampler = _internals.LlamaSampler()
        sampler.add_greedy()
        first = sampler.sample(ctx, len(tokens) - 1)
        assert first == sampler.sample(ctx, 2 * len(tokens) - 1), why  # same prompt, same token
        sampler.close()
        assert llama_cpp.llama_memory_seq_rm(ctx.memory, 1, 0, -1), why
    finally:
        llama_cpp.llama_batch_free(batch)
        ctx.close()
