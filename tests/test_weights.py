"""Random initialisation, the safetensors round trip, and the checkpoint-folder errors."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from dsocr_perf.dsocr.config import load_preset
from dsocr_perf.dsocr.weights import WeightsError, load_model, random_model, save_model


@pytest.fixture(scope="module")
def tiny():
    return random_model(load_preset("tiny"), "cpu", torch.float32, seed=7)


@pytest.fixture(scope="module")
def checkpoint(tiny, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    save_model(tiny, folder / "model-00001-of-000001.safetensors")
    return folder


def test_random_weights_are_seeded(tiny):
    again = random_model(load_preset("tiny"), "cpu", torch.float32, seed=7)
    other = random_model(load_preset("tiny"), "cpu", torch.float32, seed=8)
    a, b, c = tiny.state_dict(), again.state_dict(), other.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["lm_head.weight"], c["lm_head.weight"])
    # the documented init: N(0, 0.02) matrices, ones for norm weights, zeros for biases
    assert abs(a["model.embed_tokens.weight"].std().item() - 0.02) < 2e-4
    assert torch.equal(a["model.norm.weight"], torch.ones(64))
    assert torch.equal(a["model.sam_model.neck.1.weight"], torch.ones(32))     # LayerNorm2d
    assert torch.equal(a["model.sam_model.blocks.0.norm1.bias"], torch.zeros(64))
    assert torch.equal(a["model.projector.layers.bias"], torch.zeros(64))


def test_random_weights_in_bf16_on_the_target_dtype():
    m = random_model(load_preset("tiny"), "cpu", torch.bfloat16, seed=0)
    assert {p.dtype for p in m.parameters()} == {torch.bfloat16}


def test_safetensors_round_trip_is_bit_exact(tiny, checkpoint):
    loaded = load_model(load_preset("tiny"), checkpoint, "cpu", torch.float32)
    a, b = tiny.state_dict(), loaded.state_dict()
    # tiny preset: decoder 80 (3 + 3 layers x 6 + dense MLP 3 + 2 MoE x (router 1 + 8 experts x 3 + shared 3))
    # + SAM 67 (3 + 4 blocks x 14 + neck 6 + 2 convs) + CLIP 29 (5 + 2 layers x 12) + projector 2 + 2 vectors
    assert a.keys() == b.keys() and len(a) == 80 + 67 + 29 + 2 + 2
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_index_json_names_the_shard(tiny, checkpoint, tmp_path):
    shard = "model-00001-of-000001.safetensors"
    (tmp_path / shard).symlink_to(checkpoint / shard)
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {k: shard for k in tiny.state_dict()}}))
    loaded = load_model(load_preset("tiny"), tmp_path, "cpu", torch.float32)
    assert torch.equal(loaded.lm_head.weight, tiny.lm_head.weight)
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "gone.safetensors"}}))
    with pytest.raises(WeightsError, match="names gone.safetensors but the file is not there"):
        load_model(load_preset("tiny"), tmp_path, "cpu", torch.float32)


def _broken_checkpoint(checkpoint, tmp_path, edit):
    tensors = load_file(str(checkpoint / "model-00001-of-000001.safetensors"))
    edit(tensors)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    return tmp_path


def test_missing_unexpected_and_misshapen_keys_in_one_message(checkpoint, tmp_path):
    def edit(t):
        del t["lm_head.weight"]
        del t["model.norm.weight"]
        t["model.extra.weight"] = torch.zeros(2)
        t["model.vision_model.embeddings.position_ids"] = torch.arange(257)[None]   # vendor buffer: tolerated
        t["model.image_newline"] = torch.zeros(65)

    folder = _broken_checkpoint(checkpoint, tmp_path, edit)
    with pytest.raises(WeightsError) as err:
        load_model(load_preset("tiny"), folder, "cpu", torch.float32)
    msg = str(err.value)
    assert "\n" not in msg
    assert "2 missing: lm_head.weight, model.norm.weight" in msg
    assert "1 unexpected: model.extra.weight" in msg
    assert "1 misshapen: model.image_newline [65] (expected [64])" in msg
    assert "position_ids" not in msg


def test_many_missing_keys_are_counted_not_listed(checkpoint, tmp_path):
    folder = _broken_checkpoint(checkpoint, tmp_path, lambda t: [t.pop(k) for k in list(t) if "experts" in k])
    with pytest.raises(WeightsError, match=r"missing: .* \(\+\d+ more\)"):
        load_model(load_preset("tiny"), folder, "cpu", torch.float32)


def test_folder_errors(tmp_path, checkpoint):
    with pytest.raises(WeightsError, match="weights folder not found"):
        load_model(load_preset("tiny"), tmp_path / "nope", "cpu", torch.float32)
    with pytest.raises(WeightsError, match=r"no \*\.safetensors file"):
        load_model(load_preset("tiny"), tmp_path, "cpu", torch.float32)
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsError, match="cannot read safetensors"):
        load_model(load_preset("tiny"), tmp_path, "cpu", torch.float32)
    # the official checkpoint's config.json against the tiny preset
    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "model.safetensors").symlink_to(checkpoint / "model-00001-of-000001.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 1280, "vocab_size": 129280}))
    with pytest.raises(WeightsError, match="does not describe preset 'tiny': hidden_size 1280 != 64"):
        load_model(load_preset("tiny"), tmp_path, "cpu", torch.float32)


def test_meta_build_makes_no_random_numbers():
    """Building on the meta device skips random init: the first random op there imports torch's compiler stack
    (seconds of every capture's model load). A fresh interpreter shows whether that import happened."""
    import subprocess
    import sys
    probe = ("import sys; from dsocr_perf.dsocr.config import load_preset; from dsocr_perf.dsocr.weights import "
             "meta_model; m = meta_model(load_preset('tiny')); print(m.model.image_newline.device, "
             "'torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.split() == ["meta", "False"]
