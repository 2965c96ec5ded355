"""Domain exceptions. Library code raises these; only the CLI turns them into click errors."""


class CsoundAssistantError(Exception):
    """Base class: the message says what went wrong, what was found, and how to fix it."""


class ConfigError(CsoundAssistantError):
    """A configuration value or key is wrong."""


class ArtifactError(CsoundAssistantError):
    """A stage folder is missing, incomplete, or would be overwritten."""


class ModelLoadError(CsoundAssistantError):
    """A model file or folder cannot be read."""


class DataError(CsoundAssistantError):
    """A dataset file has problems; ``problems`` lists every one with its line number."""

    def __init__(self, message: str, problems: list[str] | None = None):
        self.problems = problems or []
        full = message if not self.problems else message + "\n" + "\n".join(self.problems)
        super().__init__(full)


class SandboxRefused(CsoundAssistantError):
    """Csound code was refused before running (shell, file-writing or Python opcodes)."""


class IsolationUnavailable(CsoundAssistantError):
    """No operating-system confinement for Csound works here, and the user has not opted in."""


class ExportError(CsoundAssistantError):
    """Merging, converting or quantizing a model failed, or llama.cpp's tools are missing."""


class GateFailed(ExportError):
    """A quantized GGUF drifted from the F16 GGUF beyond the quality gate's thresholds."""

    def __init__(self, message: str, results: dict | None = None):
        self.results = results or {}
        super().__init__(message)
