"""``data split``, ``data stats`` and ``data push`` (its error paths: there is no network here)."""

import json

import pytest
from click.testing import CliRunner

from csound_assistant.artifacts import read_record
from csound_assistant.data.cli import cli
from csound_assistant.data.push import push_dataset
from csound_assistant.data.split import SPLITS, split_dataset
from csound_assistant.errors import ArtifactError, DataError


def make_rows(path, n_groups=60):
    rows = []
    for g in range(n_groups):
        for k in range(1 + g % 5):  # groups of 1..5 rows
            rows.append({"instruction": f"Task {k} about example {g}", "output": f"answer {g}.{k}",
                         "meta": {"group": f"ex{g}", "task": f"t{k}", "category": f"c{g % 3}",
                                  "opcode": f"op{g % 7}"}})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def read_split(folder, name):
    return [json.loads(line) for line in (folder / f"{name}.jsonl").read_text().splitlines()]


def test_split_keeps_groups_together_and_is_deterministic(tmp_path):
    rows = make_rows(tmp_path / "rows.jsonl")
    record = split_dataset(tmp_path / "rows.jsonl", tmp_path / "a", seed=3, ratios=(0.7, 0.15, 0.15))
    splits = {s: read_split(tmp_path / "a", s) for s in SPLITS}
    groups = {s: {r["meta"]["group"] for r in rs} for s, rs in splits.items()}
    # no leakage: a source example never straddles two splits
    assert not groups["train"] & groups["test"]
    assert not groups["train"] & groups["validation"]
    assert not groups["validation"] & groups["test"]
    assert sum(len(rs) for rs in splits.values()) == len(rows)
    assert all(splits[s] for s in SPLITS)
    assert record["rows"]["train"] > record["rows"]["test"]
    assert abs(record["rows"]["test"] / len(rows) - 0.15) < 0.08
    assert read_record(tmp_path / "a")["test_groups"] == sorted(groups["test"])
    # same seed, same result; another seed, another result
    split_dataset(tmp_path / "rows.jsonl", tmp_path / "b", seed=3, ratios=(0.7, 0.15, 0.15))
    assert all(read_split(tmp_path / "b", s) == splits[s] for s in SPLITS)
    split_dataset(tmp_path / "rows.jsonl", tmp_path / "c", seed=4, ratios=(0.7, 0.15, 0.15))
    assert read_split(tmp_path / "c", "test") != splits["test"]


def test_keep_in_train_holds_an_adapters_rows_when_the_data_changes(tmp_path):
    """A rebuilt data set without a few examples deals every later group anew; an adapter
    trained on the first train split would then meet its own rows in test. Pinned, it cannot."""
    import gzip

    from csound_assistant.row_identity import ROW_HASHES, row_hash, trained_rows

    rows = make_rows(tmp_path / "rows.jsonl", 120)
    split_dataset(tmp_path / "rows.jsonl", tmp_path / "first", seed=0)
    seen = {row_hash(r) for r in read_split(tmp_path / "first", "train")}
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    with gzip.open(adapter / ROW_HASHES, "wt") as f:
        f.write("\n".join(sorted(seen)) + "\n")
    fewer = [r for r in rows if r["meta"]["group"] not in {"ex3", "ex4", "ex10"}]
    (tmp_path / "fewer.jsonl").write_text("".join(json.dumps(r) + "\n" for r in fewer))

    def held_out_seen(folder):
        return [r for s in ("validation", "test") for r in read_split(folder, s)
                if row_hash(r) in seen]

    split_dataset(tmp_path / "fewer.jsonl", tmp_path / "plain", seed=0)
    assert held_out_seen(tmp_path / "plain")  # what the pipeline's guard refused
    record = split_dataset(tmp_path / "fewer.jsonl", tmp_path / "kept", seed=0,
                           keep_in_train=trained_rows(adapter))
    assert not held_out_seen(tmp_path / "kept")
    assert all(read_split(tmp_path / "kept", s) for s in ("validation", "test"))
    assert record["kept_in_train"]["groups"] > 0
    result = CliRunner().invoke(cli, ["split", str(tmp_path / "fewer.jsonl"), "--out",
                                      str(tmp_path / "cli"), "--keep-in-train", str(adapter)])
    assert result.exit_code == 0, result.output
    assert all(read_split(tmp_path / "cli", s) == read_split(tmp_path / "kept", s) for s in SPLITS)
    (adapter / ROW_HASHES).unlink()
    result = CliRunner().invoke(cli, ["split", str(tmp_path / "fewer.jsonl"), "--out",
                                      str(tmp_path / "none"), "--keep-in-train", str(adapter)])
    assert result.exit_code != 0 and "lists no training rows" in result.output


def test_split_refuses_to_overwrite_and_bad_input_leaves_nothing(tmp_path):
    make_rows(tmp_path / "rows.jsonl", 10)
    split_dataset(tmp_path / "rows.jsonl", tmp_path / "out")
    with pytest.raises((ArtifactError, DataError), match="--force"):
        split_dataset(tmp_path / "rows.jsonl", tmp_path / "out")
    split_dataset(tmp_path / "rows.jsonl", tmp_path / "out", force=True, seed=1)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "x", "output": "y"}\n{oops\n')
    with pytest.raises(DataError, match="line 2: invalid JSON"):
        split_dataset(bad, tmp_path / "never")
    assert not (tmp_path / "never").exists()
    assert not list(tmp_path.glob(".never*"))
    with pytest.raises(DataError, match="ratios"):
        split_dataset(tmp_path / "rows.jsonl", tmp_path / "x", ratios="0.5,0.5")


def test_split_cli_and_rows_without_group(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"p{i}", "completion": "c"}) + "\n" for i in range(20)))
    result = CliRunner().invoke(cli, ["split", str(path), "--out", str(tmp_path / "s"),
                                      "--ratios", "0.8,0.1,0.1", "--seed", "2"])
    assert result.exit_code == 0, result.output
    record = read_record(tmp_path / "s")
    assert record["rows_without_group"] == 20
    assert sum(record["rows"].values()) == 20 and record["rows"]["test"] >= 1


def test_stats_writes_table_json_and_png(tmp_path):
    make_rows(tmp_path / "rows.jsonl", 12)
    result = CliRunner().invoke(cli, ["stats", str(tmp_path / "rows.jsonl"), "--out", str(tmp_path / "st")])
    assert result.exit_code == 0, result.output
    stats = json.loads((tmp_path / "st" / "stats.json").read_text())
    assert stats["formats"] == {"instruction": stats["rows"]}
    assert set(stats["categories"]) == {"c0", "c1", "c2"}
    assert stats["opcodes"] == 7
    assert sum(stats["tokens"]["histogram"].values()) == stats["rows"]
    assert (tmp_path / "st" / "tokens.png").read_bytes()[:4] == b"\x89PNG"
    assert "| Format | rows |" in (tmp_path / "st" / "stats.md").read_text()


def test_push_errors_are_clear_without_token_offline_or_unreachable(tmp_path, monkeypatch):
    make_rows(tmp_path / "rows.jsonl", 8)
    split_dataset(tmp_path / "rows.jsonl", tmp_path / "splits")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(DataError, match="no Hugging Face token: set HF_TOKEN"):
        push_dataset(tmp_path / "splits", "me/csound")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="offline mode is on"):
        push_dataset(tmp_path / "splits", "me/csound", token="hf_fake")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with pytest.raises(DataError, match="cannot reach the Hugging Face Hub at http://127.0.0.1:9"):
        push_dataset(tmp_path / "splits", "me/csound", token="hf_fake", endpoint="http://127.0.0.1:9")
    with pytest.raises(ArtifactError, match="no record.json"):
        push_dataset(tmp_path, "me/csound", token="hf_fake")
    result = CliRunner().invoke(cli, ["push", "me/csound", "--splits", str(tmp_path / "splits")],
                                env={"HF_TOKEN": ""})
    assert result.exit_code == 1 and "HF_TOKEN" in result.output


def test_synthetic_patch_rows_never_reach_the_test_split(tmp_path):
    rows = make_rows(tmp_path / "rows.jsonl")
    patches = [{"instruction": f"Patch {g}", "output": f"code {g}",
                "meta": {"group": f"patch:p{g % 40}", "task": "patch", "category": "patch",
                         "opcode": "vco2"}} for g in range(200)]
    with open(tmp_path / "rows.jsonl", "a") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in patches)
    record = split_dataset(tmp_path / "rows.jsonl", tmp_path / "s", seed=3,
                           ratios=(0.7, 0.15, 0.15))
    splits = {s: read_split(tmp_path / "s", s) for s in SPLITS}
    assert not [r for r in splits["test"] if r["meta"]["task"] == "patch"]
    assert {r["meta"]["task"] for r in splits["validation"]} >= {"patch"}
    assert sum(r["meta"]["task"] == "patch" for r in splits["train"]) > 100
    # the manual-derived rows split as they did without the patches
    alone = tmp_path / "alone.jsonl"
    alone.write_text("".join(json.dumps(r) + "\n" for r in rows))
    split_dataset(alone, tmp_path / "a", seed=3, ratios=(0.7, 0.15, 0.15))
    assert read_split(tmp_path / "a", "test") == splits["test"]
    assert record["tasks"]["test"].get("patch") is None


def test_extra_fim_cuts_train_only_and_held_out_splits_unchanged(tmp_path):
    """`data build --fim-cuts N`: the extra FIM rows of an example follow it into train and are
    dropped where it is held out, and the held-out splits are the rows they are with one cut."""
    rows = make_rows(tmp_path / "rows.jsonl")
    split_dataset(tmp_path / "rows.jsonl", tmp_path / "one", seed=3, ratios=(0.7, 0.15, 0.15))
    extra = [{"prefix": f"p{g}.{c}", "middle": "m", "suffix": "s",
              "meta": {"group": f"ex{g}", "task": "fim-line", "category": "c", "opcode": "op",
                       "cut": c}} for g in range(60) for c in (1, 2)]
    with open(tmp_path / "rows.jsonl", "a") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in extra)
    record = split_dataset(tmp_path / "rows.jsonl", tmp_path / "cuts", seed=3,
                           ratios=(0.7, 0.15, 0.15))
    for s in ("validation", "test"):
        assert read_split(tmp_path / "cuts", s) == read_split(tmp_path / "one", s)
    train = read_split(tmp_path / "cuts", "train")
    train_groups = {r["meta"]["group"] for r in read_split(tmp_path / "one", "train")}
    with_cuts = [r for r in train if r["meta"].get("cut")]
    assert {r["meta"]["group"] for r in with_cuts} == train_groups
    assert len(with_cuts) == 2 * len(train_groups)
    assert record["extra_fim_cuts"] == {"train": len(with_cuts),
                                        "dropped_from_held_out": 120 - len(with_cuts)}
