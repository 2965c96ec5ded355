"""``csound-assistant data push``: upload a split dataset to the Hugging Face Hub as one commit
(the three JSONL files plus a dataset card carrying the GFDL licence and attribution)."""

from __future__ import annotations

import os
from pathlib import Path

from csound_assistant.artifacts import read_record
from csound_assistant.errors import DataError

from .build import ATTRIBUTION
from .split import SPLITS

CARD = """---
license: gfdl
language:
- en
tags:
- csound
- code
- audio
pretty_name: Csound assistant training set
configs:
- config_name: default
  data_files:
{data_files}
---

# Csound assistant training set

Instruction, chat, completion, fill-in-the-middle and fix-the-bug rows built by
`csound-assistant data build` from the Csound Reference Manual's examples and opcode pages.
Every code answer was compile-checked with Csound {csound} and rendered briefly;
`meta.render` marks silent, clipping or NaN output and `meta.group` names the source example
(splits never share a group).

Rows: {rows}.

## Licence

{attribution} This derived dataset is distributed under the same licence (GFDL-1.2-or-later).
The full licence text: https://www.gnu.org/licenses/old-licenses/fdl-1.2.html
"""


def dataset_card(splits_dir: Path) -> str:
    record = read_record(splits_dir)
    files = "\n".join(f"  - split: {s}\n    path: {s}.jsonl" for s in SPLITS
                      if (splits_dir / f"{s}.jsonl").is_file())
    return CARD.format(data_files=files, rows=record.get("rows"), attribution=ATTRIBUTION,
                       csound=record.get("versions", {}).get("csound", "6.18"))


def push_dataset(splits_dir: str | Path, repo_id: str, *, token: str | None = None,
                 private: bool = True, endpoint: str | None = None) -> str:
    """Create (or reuse) the dataset repo ``repo_id`` and upload the splits; return its URL.

    The token comes from ``token`` or ``$HF_TOKEN``. Raises ``DataError`` with the fix when the
    token is missing, the Hub is unreachable, offline mode is on, or the token is refused.
    """
    splits_dir = Path(splits_dir)
    card = dataset_card(splits_dir)  # raises if the folder is not a finished split
    token = token or os.environ.get("HF_TOKEN")
    if not token:
        raise DataError("no Hugging Face token: set HF_TOKEN to a token with write access "
                        "(https://huggingface.co/settings/tokens), or pass --token")
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise DataError("offline mode is on (HF_HUB_OFFLINE is set): unset it to push to the Hub")
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    endpoint = endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    api = HfApi(endpoint=endpoint, token=token)
    ops = [CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode())]
    ops += [CommitOperationAdd(path_in_repo=f"{s}.jsonl",
                               path_or_fileobj=str(splits_dir / f"{s}.jsonl"))
            for s in SPLITS if (splits_dir / f"{s}.jsonl").is_file()]
    try:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        api.create_commit(repo_id, operations=ops, repo_type="dataset",
                          commit_message="Upload csound-assistant dataset")
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            raise DataError(f"the Hub refused the token (HTTP {status}): check that HF_TOKEN is "
                            f"valid and has write access to {repo_id}") from None
        raise DataError(f"the Hub answered an error for {repo_id}: {exc}") from None
    except (OSError, ConnectionError) as exc:
        raise DataError(f"cannot reach the Hugging Face Hub at {endpoint} ({exc}); check the "
                        "network or HF_ENDPOINT") from None
    except Exception as exc:  # httpx transport errors are not OSError subclasses
        if type(exc).__module__.startswith(("httpx", "httpcore", "requests", "urllib3")):
            raise DataError(f"cannot reach the Hugging Face Hub at {endpoint} "
                            f"({type(exc).__name__}: {exc}); check the network or HF_ENDPOINT"
                            ) from None
        raise
    return f"{endpoint.rstrip('/')}/datasets/{repo_id}"
