"""llama-cpp-python, imported once with a guard against llama.cpp's AMX crash.

A llama.cpp built with ``-march=native`` on a CPU with AMX (Xeon Sapphire Rapids and later;
pip's wheel of llama-cpp-python 0.3.36 on such a machine) puts quantized weights in AMX
buffers, and its AMX matrix multiply crashes with SIGSEGV in the first decode of the embedded
SmolLM2 (ggml-org/llama.cpp#20824). AMX buffers are one of llama.cpp's "extra buffer types".
Where the build reports AMX, every model this process loads gets ``use_extra_bufts = False``
(llama-cli's ``--no-repack``). That also turns off x86 weight repacking, so Q4_0 and IQ4_NL
decode slower there than on CPUs without AMX, but they decode. Set
``CSOUND_ASSISTANT_LLAMA_AMX=1`` to keep AMX where a llama.cpp build runs it correctly.
"""

from __future__ import annotations

import functools
import os
import sys

AMX_FLAG = "AMX_INT8 = 1"
KEEP_AMX = "CSOUND_ASSISTANT_LLAMA_AMX"


@functools.cache
def load():
    """The ``llama_cpp`` module, guarded (see the module docstring). Call it instead of
    ``import llama_cpp``."""
    import llama_cpp
    import llama_cpp.llama_cpp as low

    if amx_in_build(llama_cpp) and os.environ.get(KEEP_AMX) != "1":
        default = low.llama_model_default_params

        def params():
            p = default()
            p.use_extra_bufts = False
            return p

        # llama_cpp.Llama reads the low-level module's attribute at each load
        low.llama_model_default_params = params
        llama_cpp.llama_model_default_params = params
        print("llama.cpp: this build uses AMX, whose matrix multiply crashes here "
              "(ggml-org/llama.cpp#20824): loading models without extra buffer types "
              f"(no weight repacking; {KEEP_AMX}=1 keeps them)", file=sys.stderr)
    return llama_cpp


def amx_in_build(llama_cpp) -> bool:
    """Whether this llama.cpp build carries AMX code (its system info line says so)."""
    return AMX_FLAG in llama_cpp.llama_print_system_info().decode(errors="replace")
