"""Prompts as token ids: chat through the model's Jinja chat template, FIM from token ids.

Where the template and FIM tokens come from is decided once, at start:
- ``--prompt-format NAME``: the project format (``csound_assistant.prompt_format``) supplies the
  chat template and the FIM tokens (for SmolLM2's ``chatml`` these are unused special tokens of
  its vocabulary);
- otherwise the GGUF's own ``tokenizer.chat_template`` and ``tokenizer.ggml.fim_*_token_id``.
There is no silent fallback: without a chat template the server refuses to start, and without
FIM tokens the FIM endpoints answer 501 saying which option to pass. The manual's synopses a
model was trained to read (lookups, ``opcode_reference.Lookups``) come from its GGUF
(``csound_assistant.synopses``), else the installed manual; with neither it is served without
them, said in the log and in /health.

FIM text (prefix, suffix, extra chunks) is tokenized with special tokens NOT parsed, so code
cannot inject a FIM marker; a rendered chat prompt is parsed with them, as llama.cpp does.
Extra context chunks (llama.vscode's ``input_extra``) are laid out as llama.cpp's server lays
them out, before the FIM prefix token: so a model served here sees what llama-server would show
it. A FIM training row may carry such chunks (``input_extra``), rendered by the same
``prompt_format.fim_extra_text``.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass

from csound_assistant.constants import (
    GGUF_ADD_BOS,
    GGUF_BOS_TOKEN_ID,
    GGUF_CHAT_TEMPLATE,
    GGUF_EOS_TOKEN_ID,
    GGUF_FIM_MID_TOKEN_ID,
    GGUF_FIM_PRE_TOKEN_ID,
    GGUF_FIM_REP_TOKEN_ID,
    GGUF_FIM_SEP_TOKEN_ID,
    GGUF_FIM_SUF_TOKEN_ID,
)
from csound_assistant.errors import ConfigError, CsoundAssistantError
from csound_assistant.opcode_reference import Lookups
from csound_assistant.prompt_format import (
    FORMATS,
    SNIPPET_SEPARATOR,
    fim_extra_text,
    get_format,
    stop_strings,
)

log = logging.getLogger("csound_assistant.serve")
# llama.cpp's format_infill: the repository line after FIM_REP and the file name after the last
# FIM_SEP (both fixed there); without FIM_SEP, prompt_format.fim_extra_text's separator.
FIM_REPO_NAME = "myproject\n"
FIM_CURRENT_FILE = "filename\n"
CHAT_ROLES = ("system", "user", "assistant", "tool")
# OpenAI's "developer" role is its newer name for "system" (o1 and later models).
ROLE_ALIASES = {"developer": "system"}


class PromptError(CsoundAssistantError):
    """A request's prompt cannot be built (bad messages, template error, no FIM tokens)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class FimTokens:
    pre: int
    suf: int
    mid: int


class PromptBuilder:
    def __init__(self, backend, prompt_format: str | None = None, *,
                 opcode_reference: bool = True):
        self.backend = backend
        meta = backend.metadata
        # Manual synopses in chat requests and before FIM prefixes, for a model trained so:
        # the GGUF's own, else the installed manual's, else none (said once, here and in
        # /health), so that a machine without csound-doc still serves.
        self.lookups = Lookups.of_gguf(meta, opcode_reference)
        if self.lookups.reference is None and self.lookups.note:
            log.warning("%s; re-export the model to carry its synopses, or install csound-doc",
                        self.lookups.note)
        elif self.lookups.reference is not None:
            log.info("lookups (%s): %d opcodes' synopses from the %s%s",
                     ", ".join(self.lookups.names), len(self.lookups.reference.synopses),
                     "GGUF" if self.lookups.source == "gguf" else "installed manual",
                     f" ({self.lookups.note})" if self.lookups.note else "")
        self.format = get_format(prompt_format) if prompt_format else None
        self.stop_ids: set[int] = set()
        if self.format:
            self.template = self.format.jinja_chat_template()
            self.template_source = f"prompt format {self.format.name}"
            self.bos_text = self.format.bos
            self.add_bos = False  # the format spells its BOS in the text
            self.fim = FimTokens(*(self._special_id(t) for t in (
                self.format.fim_prefix, self.format.fim_suffix, self.format.fim_middle)))
            self.stop_ids = {self._special_id(self.format.eos),
                             self._special_id(self.format.fim_end)}
            self.fim_source = f"prompt format {self.format.name}"
        else:
            self.template = meta.get(GGUF_CHAT_TEMPLATE)
            if not self.template:
                raise ConfigError(
                    f"{getattr(backend, 'model_path', 'the model')} has no chat template "
                    f"({GGUF_CHAT_TEMPLATE} is missing from the GGUF) and none is guessed: pass "
                    f"--prompt-format NAME (one of: {', '.join(FORMATS)}) to use the project's "
                    "format, or export the model with its template embedded"
                )
            self.template_source = "gguf"
            bos_id = meta.get(GGUF_BOS_TOKEN_ID)
            self.bos_text = backend.token_text(int(bos_id)) if bos_id is not None else ""
            self.add_bos = str(meta.get(GGUF_ADD_BOS, "false")).lower() == "true"
            ids = [meta.get(k) for k in (GGUF_FIM_PRE_TOKEN_ID, GGUF_FIM_SUF_TOKEN_ID,
                                         GGUF_FIM_MID_TOKEN_ID)]
            self.fim = FimTokens(*map(int, ids)) if all(i is not None for i in ids) else None
            self.fim_source = "gguf" if self.fim else None
        # Repository-level FIM tokens: only a GGUF names them (the project formats have none).
        rep, sep = (meta.get(k) for k in (GGUF_FIM_REP_TOKEN_ID, GGUF_FIM_SEP_TOKEN_ID))
        self.fim_rep = int(rep) if rep is not None and not self.format else None
        self.fim_sep = int(sep) if sep is not None and not self.format else None
        eos_id = meta.get(GGUF_EOS_TOKEN_ID)
        self.eos_text = backend.token_text(int(eos_id)) if eos_id is not None else ""
        self._jinja = _compile(self.template)

    def _special_id(self, text: str) -> int:
        ids = self.backend.tokenize(text.strip(), special=True)
        if len(ids) != 1:
            raise ConfigError(
                f"prompt format token {text!r} is not one token of this model's vocabulary "
                f"(it tokenizes to {ids}); is --prompt-format right for this model?"
            )
        return ids[0]

    # --- chat ------------------------------------------------------------------------------
    def chat_tokens(self, messages: list[dict]) -> list[int]:
        text = self.chat_text(self.lookups.messages(messages))
        ids = self.backend.tokenize(text, special=True)
        if self.add_bos and not text.startswith(self.bos_text or "\0"):
            ids = [int(self.backend.metadata[GGUF_BOS_TOKEN_ID]), *ids]
        return ids

    def chat_text(self, messages: list[dict]) -> str:
        try:
            return self._jinja.render(
                messages=messages, add_generation_prompt=True, bos_token=self.bos_text,
                eos_token=self.eos_text,
            )
        except PromptError:
            raise
        except Exception as exc:  # a template's own checks (e.g. "roles must alternate")
            raise PromptError(f"the chat template rejected these messages: {exc}") from None

    # --- raw text -------------------------------------------------------------------------
    def text_tokens(self, text: str) -> list[int]:
        """A raw prompt: special tokens are parsed, as in llama.cpp's /completion."""
        ids = self.backend.tokenize(text, special=True)
        if self.add_bos and (not ids or ids[0] != int(self.backend.metadata[GGUF_BOS_TOKEN_ID])):
            ids = [int(self.backend.metadata[GGUF_BOS_TOKEN_ID]), *ids]
        return ids

    # --- fill in the middle ----------------------------------------------------------------
    def require_fim(self) -> FimTokens:
        if self.fim is None:
            raise PromptError(
                "this model has no fill-in-the-middle tokens (the GGUF lacks "
                f"{GGUF_FIM_PRE_TOKEN_ID}); restart the server with --prompt-format NAME "
                f"(one of: {', '.join(FORMATS)}) to use the project's FIM tokens", status=501)
        return self.fim

    def fim_tokens(self, prefix: str, suffix: str, extra: list[tuple[str, str]] = (), *,
                   budget: int) -> tuple[list[int], bool]:
        """FIM prompt ids for at most ``budget`` tokens: the prefix's end, the suffix's start
        (a quarter of the budget at most) and, in the room left, the end of the extra context
        chunks, placed before the FIM prefix token as llama.cpp's server places them.
        Returns (ids, truncated)."""
        fim = self.require_fim()
        head = []
        if self.format and self.format.bos:
            head = self.backend.tokenize(self.format.bos, special=True)
        elif self.add_bos:
            head = [int(self.backend.metadata[GGUF_BOS_TOKEN_ID])]
        # Training tokenized the lookup comments and the prefix as one text; so does this,
        # unless the prefix must be cut: then its start goes and the comments stay.
        lookup = self.lookups.fim_comments(prefix, suffix)
        prefix_ids = self.backend.tokenize(lookup + prefix, special=False)
        suffix_ids = self._strip_dummy_space(suffix, self.backend.tokenize(suffix, special=False))
        room = budget - len(head) - 3
        if room < 2:
            raise PromptError(f"the context ({budget} tokens left) is too small for a FIM prompt")
        truncated = False
        suffix_take = min(len(suffix_ids), max(room // 4, room - len(prefix_ids)))
        if suffix_take < len(suffix_ids):
            suffix_ids, truncated = suffix_ids[:suffix_take], True
        prefix_take = room - len(suffix_ids)
        if prefix_take < len(prefix_ids):
            lookup_ids = self.backend.tokenize(lookup, special=False) if lookup else []
            if len(lookup_ids) >= prefix_take:
                lookup_ids = []  # no room for the comments: the code nearest the cursor wins
            code_ids = self.backend.tokenize(prefix, special=False) if lookup else prefix_ids
            keep = prefix_take - len(lookup_ids)
            prefix_ids, truncated = [*lookup_ids, *code_ids[len(code_ids) - keep:]], True
        extra_ids = self.extra_context(extra)
        extra_room = prefix_take - len(prefix_ids)
        if len(extra_ids) > extra_room:  # llama.cpp keeps the end: the chunks sent last
            extra_ids, truncated = extra_ids[len(extra_ids) - extra_room:], True
        ids = [*extra_ids, *head, fim.pre, *prefix_ids, fim.suf, *suffix_ids, fim.mid]
        return ids, truncated

    def extra_context(self, extra: list[tuple[str, str]]) -> list[int]:
        """llama.cpp's repository-level layout of extra chunks: FIM_REP, then FIM_SEP and the
        file name before each chunk and before the current file, when the model has those
        tokens; otherwise ``fim_extra_text`` (each chunk after a plain-text separator, no file
        names), tokenized as one text, as training tokenizes a row's ``input_extra``."""
        if not extra:
            return []
        if self.fim_rep is None and self.fim_sep is None:
            return self.backend.tokenize(fim_extra_text(extra), special=False)
        ids: list[int] = []
        if self.fim_rep is not None:
            ids += [self.fim_rep, *self.backend.tokenize(FIM_REPO_NAME, special=False)]
        for filename, text in extra:
            if self.fim_sep is not None:
                ids += [self.fim_sep, *self.backend.tokenize(f"{filename}\n", special=False)]
            else:
                ids += self.backend.tokenize(SNIPPET_SEPARATOR, special=False)
            ids += self.backend.tokenize(text, special=False)
        if self.fim_sep is not None:
            ids += [self.fim_sep, *self.backend.tokenize(FIM_CURRENT_FILE, special=False)]
        return ids

    def _strip_dummy_space(self, text: str, ids: list[int]) -> list[int]:
        """SentencePiece adds a leading space to the suffix that the reference FIM omits."""
        if ids and not text.startswith(" ") and self.backend.token_bytes(ids[0]) == b" ":
            return ids[1:]
        return ids

    def describe(self) -> dict:
        return {"chat_template_source": self.template_source, "fim_source": self.fim_source,
                "opcode_reference": self.lookups.describe(), "lookups": self.lookups.names,
                "fim_token_ids": None if self.fim is None else
                [self.fim.pre, self.fim.suf, self.fim.mid]}

    def stop_words(self) -> list[str]:
        """Every string that ends a generation, as the Modelfile of this format lists them
        (end tokens, then turn markers); without a format, the model's end tokens."""
        if self.format:
            return stop_strings(self.format)
        names = {self.backend.token_text(t) for t in self.stop_ids}
        return sorted(names | ({self.eos_text} if self.eos_text else set()))

    def ollama_template(self) -> str:
        """The TEMPLATE /api/show reports (Continue looks for ``.Suffix`` to allow FIM)."""
        if self.format:
            return self.format.ollama_template()
        if self.fim is None:
            return "{{ .Prompt }}"
        pre, suf, mid = (self.backend.token_text(t) for t in (self.fim.pre, self.fim.suf,
                                                              self.fim.mid))
        return (f"{{{{- if .Suffix }}}}{pre}{{{{ .Prompt }}}}{suf}{{{{ .Suffix }}}}{mid}"
                "{{- else }}{{ .Prompt }}{{- end }}")


def _compile(template: str):
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise PromptError(f"the chat template rejected these messages: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except TemplateError as exc:
        raise ConfigError(f"the chat template does not compile: {exc}") from None


def normalize_messages(messages) -> list[dict]:
    """Validate OpenAI/Ollama chat messages; text parts are joined, anything else is a 400."""
    if not isinstance(messages, list) or not messages:
        raise PromptError("'messages' must be a non-empty list of {role, content} objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise PromptError(f"messages[{i}] must be an object, got {type(m).__name__}")
        role, content = m.get("role"), m.get("content", "")
        role = ROLE_ALIASES.get(role, role) if isinstance(role, str) else role
        if role not in CHAT_ROLES:
            raise PromptError(f"messages[{i}].role must be one of "
                              f"{', '.join([*CHAT_ROLES, *ROLE_ALIASES])}, got {role!r}")
        if content is None:
            content = ""
        if isinstance(content, list):
            parts = []
            for j, part in enumerate(content):
                if not isinstance(part, dict) or part.get("type") != "text" \
                        or not isinstance(part.get("text"), str):
                    raise PromptError(f"messages[{i}].content[{j}]: only text parts "
                                      "({\"type\": \"text\", \"text\": ...}) are supported")
                parts.append(part["text"])
            content = "".join(parts)
        if not isinstance(content, str):
            raise PromptError(f"messages[{i}].content must be a string or a list of text parts")
        if m.get("images"):
            raise PromptError(f"messages[{i}]: images are not supported by this model")
        out.append({"role": role, "content": content})
    return out
