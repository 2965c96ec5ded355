"""The one prompt format: training text, the GGUF chat template, the Ollama TEMPLATE and the
editor configs are all rendered from a ``PromptFormat`` found here by name.

A training row is turned into ``segments``: (text, trained) pairs. Only assistant answers and
FIM middles are trained, and each one ends with the format's end token, so the model learns to
stop. Text renderers (``chat_prompt``, ``fim_prompt``), the Jinja chat template and the Go
template must agree byte for byte; tests render all of them and compare.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from .errors import ConfigError

DEFAULT_SYSTEM = (
    "You are csound-assistant, an expert in the Csound audio programming language. "
    "Answer with complete, working Csound code and short explanations."
)

ROW_KINDS = ("chat", "instruction", "completion", "fim")

Segment = tuple[str, bool]  # (text, trained)
# What an editor's whole-file prefix starts with: Ollama's TEMPLATE takes a lone user turn that
# starts so for a cursor at the end of the file (PromptFormat._ollama_template).
OLLAMA_FILE_START = "<CsoundSynthesizer>"
# llama.cpp's server, for a model without FIM_REP/FIM_SEP tokens (ours), puts each chunk of an
# /infill request's ``input_extra`` after this separator, before the FIM prefix token.
SNIPPET_SEPARATOR = "\n\n--- snippet ---\n\n"


def fim_extra_text(chunks) -> str:
    """Repository context (``input_extra``: [{filename, text}] or (filename, text) pairs) as the
    text a model without repository tokens reads before the FIM prefix: the one rendering for
    training rows (a FIM row's optional ``input_extra``) and the server's /infill."""
    texts = [c["text"] if isinstance(c, dict) else c[1] for c in chunks or ()]
    return "".join(SNIPPET_SEPARATOR + text for text in texts)


def row_kind(row: dict) -> str | None:
    """Which input format a row is in, judged by its keys; None when it fits none."""
    if "messages" in row:
        return "chat"
    if "instruction" in row and "output" in row:
        return "instruction"
    if "prompt" in row and "completion" in row:
        return "completion"
    if {"prefix", "middle", "suffix"} <= row.keys():
        return "fim"
    return None


def to_messages(row: dict) -> list[dict]:
    """An instruction row (or a chat row) as chat messages, without the default system turn."""
    if "messages" in row:
        return [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
    user = row["instruction"]
    if row.get("input"):
        user = f"{user}\n\n{row['input']}"
    return [{"role": "user", "content": user}, {"role": "assistant", "content": row["output"]}]


@dataclass(frozen=True)
class PromptFormat:
    """A chat format plus a fill-in-the-middle format, spelled as the base model's tokens."""

    name: str
    bos: str  # text put before everything (tokenize with add_special_tokens=False)
    eos: str  # ends every assistant answer
    fim_prefix: str
    fim_suffix: str
    fim_middle: str
    fim_end: str  # ends every FIM middle
    pad: str  # an existing token that is neither eos nor fim_end (the vocabulary never grows)
    system: str = DEFAULT_SYSTEM
    # Trained with the manual's synopses of the opcodes a request names under its last user
    # message (csound_assistant.opcode_reference); runtimes add them the same way.
    opcode_reference: bool = False
    # ... and before each FIM prefix, the synopses of the cursor line's opcodes as comments.
    fim_reference: bool = False

    # --- chat -----------------------------------------------------------------------------
    def _with_system(self, messages: list[dict]) -> list[dict]:
        if messages and messages[0]["role"] == "system":
            return messages
        return [{"role": "system", "content": self.system}, *messages]

    def chat_segments(self, messages: list[dict]) -> list[Segment]:
        raise NotImplementedError

    def chat_prompt(self, messages: list[dict]) -> str:
        """The text a runtime feeds the model to get the next assistant answer."""
        return "".join(text for text, _ in self.chat_segments(messages)) + self.generation_prompt

    generation_prompt = ""

    # --- fill in the middle ---------------------------------------------------------------
    def fim_prompt(self, prefix: str, suffix: str) -> str:
        return f"{self.fim_prefix}{prefix}{self.fim_suffix}{suffix}{self.fim_middle}"

    # --- training rows ----------------------------------------------------------------------
    def segments(self, row: dict) -> list[Segment]:
        kind = row_kind(row)
        if kind in ("chat", "instruction"):
            return [(self.bos, False), *self.chat_segments(to_messages(row))]
        if kind == "completion":
            return [(self.bos + row["prompt"], False), (row["completion"] + self.eos, True)]
        if kind == "fim":
            prompt = self.fim_prompt(row["prefix"], row["suffix"])
            extra = fim_extra_text(row.get("input_extra"))
            return [(extra + self.bos + prompt, False), (row["middle"] + self.fim_end, True)]
        raise ConfigError(f"row has none of the formats {', '.join(ROW_KINDS)}: keys {sorted(row)}")

    # --- stop strings and exported templates ----------------------------------------------
    @property
    def stop(self) -> list[str]:
        return list(dict.fromkeys([self.eos, self.fim_end]))

    def jinja_chat_template(self) -> str:
        raise NotImplementedError

    def ollama_template(self) -> str:
        raise NotImplementedError

    def _ollama_template(self, chat: str) -> str:
        """An Ollama TEMPLATE: FIM for a request with a suffix or for an editor's cursor at the
        end of a file, else ``chat`` (the format's turns over ``.Messages``).

        Ollama's ``/api/generate`` reads ``suffix`` into a plain string and sets ``.Suffix``
        only when it is not empty, so a cursor at the end of a file (an empty suffix) arrives
        as the chat values: the Modelfile's system message and one user message, the file.
        A conversation of one user turn that is a CSD file is taken for that cursor."""
        # `and` stops at its first false argument, so `slice` never runs past a short message
        starts_as_file = (f"(ge (len .Content) {len(OLLAMA_FILE_START)}) (eq (slice .Content 0 "
                          f"{len(OLLAMA_FILE_START)}) {_go_str(OLLAMA_FILE_START)})")
        return (
            "{{- if .Suffix }}" + self.fim_prefix + "{{ .Prompt }}" + self.fim_suffix
            + "{{ .Suffix }}" + self.fim_middle + "\n"
            "{{- else }}{{- $file := \"\" }}{{- $chat := false }}"
            "{{- range .Messages }}"
            "{{- if eq .Role \"system\" }}"
            "{{- else if and (eq .Role \"user\") (not $file) (not $chat) " + starts_as_file +
            " }}{{- $file = .Content }}"
            "{{- else }}{{- $chat = true }}{{- end }}"
            "{{- end }}"
            "{{- if and $file (not $chat) }}" + self.fim_prefix + "{{ $file }}" + self.fim_suffix
            + self.fim_middle + "\n"
            # no trim before the first end: a chat template's last text may end in a newline
            "{{- else }}" + chat + "{{ end }}"
            "{{- end }}"
        )

    def to_record(self) -> dict:
        return {**asdict(self), "stop": self.stop}


class ChatML(PromptFormat):
    """ChatML, as SmolLM2-Instruct was trained. SmolLM2 has no FIM tokens, so unused special
    tokens of its vocabulary are given the FIM roles (and written to the GGUF as such)."""

    generation_prompt = "<|im_start|>assistant\n"

    def chat_segments(self, messages):
        out: list[Segment] = []
        for m in self._with_system(messages):
            head = f"<|im_start|>{m['role']}\n"
            if m["role"] == "assistant":
                out += [(head, False), (m["content"] + self.eos, True), ("\n", False)]
            else:
                out.append((head + m["content"] + self.eos + "\n", False))
        return out

    def jinja_chat_template(self):
        return (
            "{%- if messages[0]['role'] != 'system' %}"
            "{{- '<|im_start|>system\\n' + " + _jinja_str(self.system) + " + '<|im_end|>\\n' }}"
            "{%- endif %}"
            "{%- for message in messages %}"
            "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
            "{%- endfor %}"
            "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
        )

    def ollama_template(self):
        return self._ollama_template(
            "{{- if ne (index .Messages 0).Role \"system\" }}<|im_start|>system\n{{ "
            + _go_str(self.system) + " }}<|im_end|>\n{{ end }}"
            "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
            "<|im_start|>assistant\n"
        )


class Llama2Inst(PromptFormat):
    """``[INST]`` turns for base CodeLlama (it has no chat template) with CodeLlama's FIM."""

    def chat_segments(self, messages):
        messages = self._with_system(messages)
        system, turns = messages[0]["content"], messages[1:]
        out: list[Segment] = []
        for i, m in enumerate(turns):
            if m["role"] == "user":
                sys_block = f"<<SYS>>\n{system}\n<</SYS>>\n\n" if i == 0 else ""
                opener = "" if i == 0 else self.bos
                out.append((f"{opener}[INST] {sys_block}{m['content']} [/INST]", False))
            else:
                out.append((f" {m['content']} {self.eos}", True))
        return out

    def chat_prompt(self, messages):
        return self.bos + "".join(text for text, _ in self.chat_segments(messages))

    def jinja_chat_template(self):
        return (
            "{%- if messages[0]['role'] == 'system' %}"
            "{%- set system = messages[0]['content'] %}{%- set turns = messages[1:] %}"
            "{%- else %}{%- set system = " + _jinja_str(self.system) + " %}"
            "{%- set turns = messages %}{%- endif %}"
            "{%- for m in turns %}"
            "{%- if m['role'] == 'user' %}"
            "{%- if loop.first %}{{- bos_token + '[INST] <<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n'"
            " + m['content'] + ' [/INST]' }}"
            "{%- else %}{{- bos_token + '[INST] ' + m['content'] + ' [/INST]' }}{%- endif %}"
            "{%- else %}{{- ' ' + m['content'] + ' ' + eos_token }}{%- endif %}"
            "{%- endfor %}"
        )

    def ollama_template(self):
        return self._ollama_template(
            "{{- $system := " + _go_str(self.system) + " }}{{- $first := true }}"
            "{{- range .Messages }}"
            "{{- if eq .Role \"system\" }}{{ $system = .Content }}"
            "{{- else if eq .Role \"user\" }}"
            "{{- if $first }}[INST] <<SYS>>\n{{ $system }}\n<</SYS>>\n\n{{ .Content }} [/INST]"
            "{{- $first = false }}"
            "{{- else }}" + self.bos + "[INST] {{ .Content }} [/INST]{{ end }}"
            "{{- else }} {{ .Content }} " + self.eos + "{{ end }}"
            "{{- end }}"
        )


def _go_str(text: str) -> str:
    """A Go string literal for ``text`` (JSON escapes are valid Go escapes; non-ASCII stays
    literal because Go rejects escaped surrogate pairs)."""
    return json.dumps(text, ensure_ascii=False)


def _jinja_str(text: str) -> str:
    """A Python/Jinja string literal for ``text``."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


FORMATS: dict[str, PromptFormat] = {
    "chatml": ChatML(
        name="chatml",
        bos="",
        eos="<|im_end|>",
        fim_prefix="<jupyter_start>",
        fim_suffix="<jupyter_text>",
        fim_middle="<jupyter_code>",
        fim_end="<|endoftext|>",
        pad="<empty_output>",
    ),
    # CodeLlama's FIM spacing is part of the token strings: "<PRE> {prefix} <SUF>{suffix} <MID>".
    "llama2-codellama": Llama2Inst(
        name="llama2-codellama",
        bos="<s>",
        eos="</s>",
        fim_prefix="<PRE> ",
        fim_suffix=" <SUF>",
        fim_middle=" <MID>",
        fim_end="<EOT>",
        pad="<unk>",
    ),
}


def get_format(name: str) -> PromptFormat:
    try:
        return FORMATS[name]
    except KeyError:
        raise ConfigError(
            f"unknown prompt format {name!r}; choose one of: {', '.join(FORMATS)}"
        ) from None


def format_for_model(model_type_or_name: str) -> PromptFormat:
    """The default format for a base model: CodeLlama gets [INST]+FIM, others ChatML."""
    key = model_type_or_name.lower()
    return FORMATS["llama2-codellama" if "codellama" in key or "code-llama" in key else "chatml"]


# Strings that open a new turn: a model that wrote one has finished its answer. The end tokens
# themselves come from ``PromptFormat.stop``.
TURN_MARKERS: dict[str, list[str]] = {
    "chatml": ["<|im_start|>"],
    "llama2-codellama": ["[INST]", "<s>"],
}


def stop_strings(prompt_format: PromptFormat) -> list[str]:
    """Every string that ends a generation: end tokens first, then turn markers (the Modelfile's
    PARAMETER stop lines, the server's /api/show and the editor configs all use this list)."""
    return list(dict.fromkeys([*prompt_format.stop, *TURN_MARKERS.get(prompt_format.name, [])]))
