"""Damaged, unsafe or unsuitable checkpoints are refused by `load_model` with a clear reason."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import Qwen3Config, Qwen3ForCausalLM

from asru_lab.models.embedded import embedded_dir
from asru_lab.models.loading import ModelLoadError, load_model

TENSOR = "model.language_model.layers.3.mlp.down_proj.weight"


@pytest.fixture
def model_dir(tmp_path) -> Path:
    """A private copy of the embedded model, free to damage."""
    return Path(shutil.copytree(embedded_dir(), tmp_path / "model"))


@pytest.fixture
def sharded_dir(tmp_path) -> Path:
    """The embedded model saved as several safetensors shards with an index."""
    out = tmp_path / "sharded"
    lm = load_model()
    lm.model.save_pretrained(out, max_shard_size="3MB")
    lm.processor.save_pretrained(out)
    assert len(list(out.glob("model-*.safetensors"))) > 2
    return out


def _data_start(file: Path) -> int:
    """Byte offset of a safetensors file's tensor data (after its length and JSON header)."""
    return 8 + int.from_bytes(file.read_bytes()[:8], "little")


class _MarkerPayload:
    """Unpickling this creates `path`: proof that opening the file would run code."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_truncated_safetensors_is_refused_naming_the_file(model_dir):
    weights = model_dir / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 1000])
    with pytest.raises(ModelLoadError, match=r"model\.safetensors: .*truncated or damaged"):
        load_model(model_dir)


def test_file_cut_inside_its_header_is_refused(model_dir):
    weights = model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ModelLoadError, match="header does not fit in the file"):
        load_model(model_dir)


def test_corrupted_bytes_that_read_as_nan_are_refused(model_dir):
    weights = model_dir / "model.safetensors"
    data = bytearray(weights.read_bytes())
    middle = (_data_start(weights) + len(data)) // 2
    data[middle : middle + 4000] = b"\xff" * 4000  # float32 words of all ones are NaN
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match=r"model\.safetensors: tensor \S+ holds \d+ NaN/Inf"):
        load_model(model_dir)


def test_nan_in_one_tensor_names_file_and_tensor(model_dir):
    weights = model_dir / "model.safetensors"
    tensors = load_file(weights)
    tensors[TENSOR][0, :3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    save_file(tensors, weights, metadata={"format": "pt"})
    message = rf"model\.safetensors: tensor {TENSOR} holds 3 NaN/Inf values; the file is damaged"
    with pytest.raises(ModelLoadError, match=message):
        load_model(model_dir)
    unchecked = load_model(model_dir, check_finite=False)
    assert unchecked.model.state_dict()[TENSOR].isnan().any()


def test_large_finite_weights_whose_sum_overflows_load(model_dir):
    weights = model_dir / "model.safetensors"
    tensors = load_file(weights)
    tensors[TENSOR].fill_(60000.0)  # finite in float16, but its sum is not
    save_file(tensors, weights, metadata={"format": "pt"})
    lm = load_model(model_dir, dtype="float16")
    assert lm.model.state_dict()[TENSOR].isfinite().all()


def test_text_only_model_is_named_as_such(tmp_path):
    config = Qwen3Config(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
    )
    Qwen3ForCausalLM(config).save_pretrained(tmp_path)
    message = r"this is a text-only model \(Qwen3ForCausalLM\); asru_lab needs a vision-language"
    with pytest.raises(ModelLoadError, match=message):
        load_model(tmp_path)


@pytest.mark.parametrize("file_name", ["pytorch_model.bin", "model.pt", "weights.pth", "last.ckpt"])
def test_pickle_checkpoint_is_refused_without_running_it(model_dir, tmp_path, file_name):
    proof = tmp_path / "payload_runs"
    pickle.loads(pickle.dumps(_MarkerPayload(proof)))
    assert proof.exists(), "the payload must run code when unpickled"
    marker = tmp_path / "code_ran"
    (model_dir / "model.safetensors").unlink()
    (model_dir / file_name).write_bytes(pickle.dumps({"weight": _MarkerPayload(marker)}))
    with pytest.raises(ModelLoadError, match=rf"only pickle-format weights \({file_name}\)"):
        load_model(model_dir)
    assert not marker.exists()


@pytest.mark.parametrize("dtype", ["fp8", "int8", torch.int8, torch.float64, 16])
def test_unsupported_dtype_is_named_with_the_choices(dtype):
    with pytest.raises(ModelLoadError, match="unsupported dtype .*float32, float16, bfloat16"):
        load_model(dtype=dtype)


@pytest.mark.parametrize("dtype", ["bfloat16", torch.float16, "auto"])
def test_supported_dtypes_load(dtype):
    expected = torch.float32 if dtype == "auto" else getattr(torch, str(dtype).split(".")[-1])
    assert load_model(dtype=dtype).model.dtype == expected


def test_missing_shard_is_named(sharded_dir):
    shard = sorted(sharded_dir.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(ModelLoadError, match=rf"names the shard {shard.name}, which is missing"):
        load_model(sharded_dir)


def test_truncated_shard_is_named(sharded_dir):
    shard = sorted(sharded_dir.glob("model-*.safetensors"))[1]
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(ModelLoadError, match=rf"{shard.name}: .*truncated or damaged"):
        load_model(sharded_dir)


def test_index_pointing_at_the_wrong_shard_is_refused(sharded_dir):
    index_file = sharded_dir / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    shards = sorted(set(index["weight_map"].values()))
    tensor = next(t for t, s in index["weight_map"].items() if s == shards[0])
    index["weight_map"][tensor] = shards[1]
    index_file.write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match=rf"puts tensor {tensor} in {shards[1]}"):
        load_model(sharded_dir)


def test_nan_in_a_shard_names_that_shard(sharded_dir):
    index = json.loads((sharded_dir / "model.safetensors.index.json").read_text())
    shard = sharded_dir / index["weight_map"][TENSOR]
    tensors = load_file(shard)
    tensors[TENSOR][1, 1] = float("nan")
    save_file(tensors, shard, metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=rf"{shard.name}: tensor {TENSOR} holds 1 NaN/Inf"):
        load_model(sharded_dir)
    assert load_model(sharded_dir, check_finite=False).num_layers == 6
