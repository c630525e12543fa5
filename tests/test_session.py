"""The session end to end on the tiny preset: results, stage nesting in the profiler's own trace, the CLI."""
import json

import pytest
import torch
from PIL import Image, ImageDraw

from dsocr_perf.dsocr.cli import PACKAGE_WEIGHTS, check_out, main
from dsocr_perf.dsocr.errors import DsocrError
from dsocr_perf.dsocr.session import DEFAULT_PROMPT, PageResult, Session


@pytest.fixture(scope="module")
def session():
    return Session.create("tiny", seed=0, device="cpu")


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    image = Image.new("RGB", (1300, 700), "white")   # aspect 1.86 -> Gundam 2x1 tiles
    ImageDraw.Draw(image).text((40, 40), "Quarterly report", fill="black")
    path = tmp_path_factory.mktemp("page") / "page.png"
    image.save(path)
    return path


def test_session_attributes(session):
    assert session.config.name == "tiny"
    assert (session.device.type, session.dtype, session.weights_source, session.seed) == ("cpu", torch.float32, "random", 0)


def test_tiny_page_to_text(session, page):
    r = session.run_page(page, mode="tiny", max_new_tokens=4, ignore_eos=True)
    assert isinstance(r, PageResult)
    assert r.workload.image_tokens == 73 and r.workload.text_tokens == 9 and r.workload.prompt_tokens == 83
    assert r.generated_tokens == len(r.token_ids) == 4
    assert r.decode_kv_lengths == [84, 85, 86, 87]
    assert r.text == session.tokenizer.decode(r.token_ids)
    assert set(r.host_times_s) == {"preprocess", "prefill", "decode", "total"}
    assert r.peak_gpu_memory_bytes is None
    # greedy decoding is deterministic
    assert session.run_page(page, mode="tiny", max_new_tokens=4, ignore_eos=True).token_ids == r.token_ids


@pytest.fixture(scope="module")
def fast_session():
    return Session.create("tiny", seed=0, device="cpu", engine="fast")


@pytest.mark.parametrize("engine", ["faithful", "fast"])
def test_stage_nesting_in_the_profiler_trace(engine, page, tmp_path, request):
    from torch.profiler import ProfilerActivity, profile

    session = request.getfixturevalue("fast_session" if engine == "fast" else "session")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        r = session.run_page(page, mode="gundam", max_new_tokens=3, ignore_eos=True)
    assert r.workload.tile_grid == (2, 1) and r.workload.image_tokens == 273 + 10 * 21
    prof.export_chrome_trace(str(tmp_path / "trace.json"))
    events = [e for e in json.loads((tmp_path / "trace.json").read_text())["traceEvents"]
              if e.get("cat") == "user_annotation"]
    spans = sorted((float(e["ts"]), float(e["ts"]) + float(e["dur"]), e["name"]) for e in events)

    def inside(parent):
        (p0, p1, _), = [s for s in spans if s[2] == parent]
        return [name for t0, t1, name in spans if p0 < t0 and t1 <= p1]

    assert [s[2] for s in spans if s[2] in ("preprocess", "prefill", "decode")] == ["preprocess", "prefill", "decode"]
    # tiles first, then the global view; each view batch sam -> clip -> projector; then the decoder
    assert inside("prefill") == ["sam", "clip", "projector"] * 2 + ["llm_prefill"]
    assert inside("decode") == ["decode_step"] * 3
    assert inside("preprocess") == []


def test_bad_inputs_raise_one_line_errors(session, tmp_path):
    (tmp_path / "not.png").write_text("hello")
    with pytest.raises(DsocrError, match="not an image file"):
        session.run_page(tmp_path / "not.png")
    with pytest.raises(DsocrError, match="exactly one <image>"):
        session.run_page(Image.new("RGB", (64, 64)), mode="tiny", prompt="Free OCR.")
    with pytest.raises(DsocrError, match="unknown mode"):
        session.run_page(Image.new("RGB", (64, 64)), mode="huge")
    with pytest.raises(DsocrError, match="unknown preset"):
        Session.create("giant", device="cpu")
    if not torch.cuda.is_available():
        with pytest.raises(DsocrError, match="CUDA is not available"):
            Session.create("tiny", device="cuda")


def test_cli_run_writes_outputs_and_refuses_to_overwrite(page, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["run", str(page), "--preset", "tiny", "--random-weights", "--mode", "tiny",
            "--max-new-tokens", "3", "--ignore-eos", "--device", "cpu", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "image tokens 73, prompt tokens 83, generated 3" in printed
    for stage in ("preprocess", "prefill", "decode", "decode/token"):
        assert f"{stage}:" in printed
    assert {p.name for p in out.iterdir()} == {"raw.txt", "result.mmd", "overlay.png", "images"}

    assert main(args) == 2
    assert capsys.readouterr().err.strip() == (f"Error: --out {out} is not empty; pass --force to overwrite it "
                                               "or choose another folder")
    check_out(out, force=True)      # what --force does before the run: the old outputs go
    assert not out.exists()


def test_cli_errors_are_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)      # no models/deepseek-ocr here
    assert main(["run", str(tmp_path / "missing.png"), "--preset", "tiny", "--device", "cpu"]) == 2
    assert capsys.readouterr().err == f"Error: image file not found: {tmp_path / 'missing.png'}\n"
    Image.new("RGB", (8, 8)).save(tmp_path / "p.png")
    assert main(["run", "p.png", "--preset", "tiny", "--device", "cpu", "--weights", "nowhere"]) == 2
    assert capsys.readouterr().err == ("Error: weights folder not found: nowhere "
                                       "(see models/README.md, or use --random-weights)\n")
    if not PACKAGE_WEIGHTS.is_dir():
        assert main(["run", "p.png", "--preset", "tiny", "--device", "cpu"]) == 2
        assert capsys.readouterr().err.startswith("Error: no checkpoint at models/deepseek-ocr/: place the")


def test_cli_shapes_json(capsys):
    assert main(["shapes", "--preset", "tiny"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert len(table) == 180 and table["model.layers.1.mlp.experts.7.down_proj.weight"] == [64, 32]


def test_default_prompt_is_the_markdown_prompt():
    assert DEFAULT_PROMPT == "<image>\n<|grounding|>Convert the document to markdown."


@pytest.mark.gpu
def test_official_preset_on_cuda(page):
    s = Session.create("official", device="cuda", seed=0)
    assert s.dtype == torch.bfloat16 and s.model.lm_head.weight.is_cuda
    r = s.run_page(page, max_new_tokens=4, ignore_eos=True, sync_stages=True)
    assert r.workload.prompt_tokens == 1 + 273 + 210 + 9 and r.generated_tokens == 4
    # 3.34e9 bf16 parameters = 6.67 GB, plus activations and the KV cache
    assert 6.2 * 2**30 < r.peak_gpu_memory_bytes < 12 * 2**30
