"""The stage-range overhead helper on the CPU (tiny preset): alternation, medians, ratio."""
import json
import statistics

from dsocr_perf.dsocr import stages
from dsocr_perf.launch import overhead


def test_overhead_runs_alternate_and_the_ratio_is_the_median_quotient(tmp_path, capsys, monkeypatch):
    seen = []
    real = overhead.time_page

    def spy(session, image, args):
        seen.append(stages.enabled())
        return real(session, image, args)

    monkeypatch.setattr(overhead, "time_page", spy)
    out = tmp_path / "overhead.json"
    code = overhead.main(["--preset", "tiny", "--mode", "tiny", "--device", "cpu", "--max-new-tokens", "2",
                          "--runs", "3", "--json", str(out)])
    assert code == 0
    # warm-up (on), then pairs in alternating order, then one counting run (on); ranges on afterwards.
    assert seen == [True, True, False, False, True, True, False, True] and stages.enabled()
    r = json.loads(out.read_text())
    assert len(r["times_on_s"]) == len(r["times_off_s"]) == 3
    assert r["median_on_s"] == statistics.median(r["times_on_s"])
    assert r["ratio"] == r["median_on_s"] / r["median_off_s"]
    # tiny preset, mode tiny, 2 new tokens: request-free page = preprocess, prefill, sam, clip, projector,
    # llm_prefill, decode, 2 x decode_step
    assert r["ranges_per_page"] == 9
    assert r["direct_overhead"] == r["ranges_per_page"] * r["range_cost_s"] / r["median_off_s"]
    text = capsys.readouterr().out
    assert f"ratio on/off: {r['ratio']:.4f}" in text


def test_bad_image_is_one_line(tmp_path, capsys):
    bad = tmp_path / "x.png"
    bad.write_text("no")
    assert overhead.main([str(bad), "--preset", "tiny", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and "not an image file" in err
