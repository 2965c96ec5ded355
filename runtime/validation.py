"""Request bodies: JSON parsing and field checks that end in one clear 400, never a 500."""

from __future__ import annotations

import itertools
import json
import re

from starlette.responses import JSONResponse

from csound_assistant.sampling import MIN_P, REPEAT_PENALTY, TEMPERATURE, TOP_K, TOP_P

from .backend import Sampling

MISSING = object()
MAX_STOP_STRINGS = 16
MAX_JSON_DEPTH = 64  # real requests nest 4 deep (messages -> content parts -> object)
KIND_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
              list: "a list", dict: "an object", "stop": "a string or a list of strings",
              "strings": "a list of strings"}
# A string, or an unterminated one up to the end: once started a match never fails, and the
# possessive quantifiers never backtrack, so stripping strings is one linear pass.
_JSON_STRING = re.compile(rb'"(?:[^"\\]++|\\.?)*+(?:"|\Z)', re.S)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_DEPTH_STEP = [0] * 256
_DEPTH_STEP[ord("[")] = _DEPTH_STEP[ord("{")] = 1
_DEPTH_STEP[ord("]")] = _DEPTH_STEP[ord("}")] = -1


class ApiError(Exception):
    """An HTTP error answer: status, message, and the offending field if any."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 headers: dict | None = None, kind: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param
        self.headers = headers or {}
        self.kind = kind or {400: "invalid_request_error", 401: "authentication_error",
                             403: "permission_error", 404: "not_found_error",
                             413: "request_too_large", 415: "invalid_request_error",
                             501: "not_implemented_error", 504: "timeout_error",
                             }.get(status, "server_busy_error")


def error_response(path: str, exc: ApiError) -> JSONResponse:
    """``exc`` in the error shape of the API ``path`` belongs to."""
    if path.startswith("/api/"):  # Ollama's shape
        body = {"error": exc.message}
    else:  # OpenAI's shape (llama.cpp's server uses it too)
        body = {"error": {"message": exc.message, "type": exc.kind, "param": exc.param,
                          "code": exc.status}}
    return JSONResponse(body, status_code=exc.status, headers=exc.headers)


def json_depth(raw: bytes) -> int:
    """How deeply arrays and objects nest in the JSON text ``raw``, counted on its brackets
    outside strings without parsing it: a hostile body cannot exhaust the parser's recursion
    (Python's json raises RecursionError near 1,000 levels)."""
    brackets = _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    return max(itertools.accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0)


def _no_constant(name: str):
    raise ApiError(400, f"the request body is not valid JSON: {name} is not a JSON number")


async def read_json(request) -> dict:
    raw = await request.body()
    if not raw.strip():
        raise ApiError(400, "the request body is empty; send a JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "the request body is not UTF-8 text") from None
    if json_depth(raw) > MAX_JSON_DEPTH:
        raise ApiError(400, f"the request body nests arrays and objects more than "
                            f"{MAX_JSON_DEPTH} levels deep (the limit); flatten it")
    try:
        data = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc.msg} at line "
                            f"{exc.lineno} column {exc.colno}") from None
    except RecursionError:  # the depth count above should make this unreachable
        raise ApiError(400, f"the request body nests more than {MAX_JSON_DEPTH} levels deep "
                            "(the limit)") from None
    except ValueError:  # Python refuses integers of more than 4,300 digits
        raise ApiError(400, "the request body has an integer too long to read (over 4,300 "
                            "digits); no field takes numbers that long") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(data).__name__}")
    return data


def _shown(value) -> str:
    text = str(value)
    return text if len(text) <= 40 else f"{text[:20]}...({len(text)} characters)"


class Fields:
    """Read typed fields from a JSON object, collecting every problem before failing."""

    def __init__(self, data: dict, where: str = ""):
        self.data, self.where, self.problems = data, where, []

    def _name(self, name):
        return f"{self.where}{name}"

    def get(self, name, kind, default=None, *, low=None, high=None, required=False):
        """``kind``: str, int, float, bool, list, dict, "stop" (str or list of str)."""
        value = self.data.get(name, MISSING)
        if value is MISSING or value is None:
            if required:
                self.problems.append(f"'{self._name(name)}' is required")
            return default
        ok = {
            str: isinstance(value, str),
            int: isinstance(value, int) and not isinstance(value, bool),
            float: isinstance(value, (int, float)) and not isinstance(value, bool),
            bool: isinstance(value, bool),
            list: isinstance(value, list),
            dict: isinstance(value, dict),
            "stop": isinstance(value, str) or (isinstance(value, list)
                                               and all(isinstance(x, str) for x in value)),
            "strings": isinstance(value, list) and all(isinstance(x, str) for x in value),
        }[kind]
        if not ok:
            label = KIND_NAMES[kind]
            self.problems.append(f"'{self._name(name)}' must be {label}, "
                                 f"got {json.dumps(value)[:60]}")
            return default
        if kind is float:
            value = float(value)
            if value != value or value in (float("inf"), float("-inf")):
                self.problems.append(f"'{self._name(name)}' must be a finite number")
                return default
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = (f"at most {high}" if low is None else f"at least {low}" if high is None
                      else f"between {low} and {high}")
            self.problems.append(f"'{self._name(name)}' must be {bounds}, got {_shown(value)}")
            return default
        if kind == "stop":
            value = [value] if isinstance(value, str) else value
            if len(value) > MAX_STOP_STRINGS:
                self.problems.append(f"'{self._name(name)}' has {len(value)} strings; at most "
                                     f"{MAX_STOP_STRINGS} are allowed")
                return default
        return value

    def check(self) -> None:
        if self.problems:
            raise ApiError(400, "invalid request: " + "; ".join(self.problems))


def sampling_from(f: Fields, settings, *, max_tokens_keys=("max_tokens",),
                  default_temperature: float = TEMPERATURE, unlimited=(-1,)) -> Sampling:
    """Common decoding fields (OpenAI, Ollama ``options`` and llama.cpp spellings alike)."""
    limit = settings.max_tokens_limit
    max_tokens = None
    for key in max_tokens_keys:
        value = f.get(key, int)
        if value is None:
            continue
        if value in unlimited:
            value = limit
        elif not 1 <= value <= limit:
            f.problems.append(f"'{f._name(key)}' must be between 1 and {limit}, got {value}")
            value = None
        max_tokens = value if max_tokens is None else max_tokens
    seed = f.get("seed", int, high=2**64 - 1)
    if seed is not None:  # llama.cpp and Ollama use -1 for "random"; llama.cpp seeds are 32-bit
        seed = None if seed < 0 else seed % 2**32
    return Sampling(
        max_tokens=max_tokens or settings.default_max_tokens,
        temperature=f.get("temperature", float, default_temperature, low=0.0, high=5.0),
        top_p=f.get("top_p", float, TOP_P, low=0.0, high=1.0),
        top_k=f.get("top_k", int, TOP_K, low=0, high=100_000),
        min_p=f.get("min_p", float, MIN_P, low=0.0, high=1.0),
        repeat_penalty=f.get("repeat_penalty", float, REPEAT_PENALTY, low=0.0, high=10.0),
        presence_penalty=f.get("presence_penalty", float, 0.0, low=-2.0, high=2.0),
        frequency_penalty=f.get("frequency_penalty", float, 0.0, low=-2.0, high=2.0),
        seed=seed,
        stop=tuple(f.get("stop", "stop", [])),
        ignore_eos=f.get("ignore_eos", bool, False),
    )
