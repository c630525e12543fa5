"""The operator table of the PyTorch profiler pass: ops charged to their innermost stage, summed by hand."""
import torch

from dsocr_perf.dsocr import stages
from dsocr_perf.launch import torch_pass
from dsocr_perf.launch.torch_pass import OpEvent, StageRow, aggregate, collect, markdown


def test_aggregate_sums_per_stage_and_overall():
    ops = [OpEvent("aten::mm", "sam", 100.0, 150.0, 0.0, 0.0),
           OpEvent("aten::mm", "sam", 300.0, 350.0, 0.0, 0.0),
           OpEvent("aten::mm", "decode_step", 50.0, 50.0, 20.0, 20.0),
           OpEvent("aten::add", "(none)", 10.0, 10.0, 0.0, 0.0)]
    overall, stage_rows = aggregate(ops, {"sam": StageRow("sam", instances=1, wall_us=1000.0)})
    assert (overall["aten::mm"].calls, overall["aten::mm"].self_cpu_us, overall["aten::mm"].cuda_us) == (3, 450.0, 20.0)
    assert stage_rows["sam"].calls == 2 and stage_rows["sam"].self_cpu_us == 400.0
    assert stage_rows["decode_step"].self_cuda_us == 20.0 and stage_rows["decode_step"].instances == 0
    md = markdown("t", [], overall, stage_rows)
    # 400 us self CPU in sam -> 0.400 ms; all operators 460 us -> 0.460 ms.
    assert "| `sam` | 1 | 1.000 | 2 | 0.400 | 0.000 |" in md
    assert "| **all operators** | | | 4 | 0.460 | 0.020 |" in md
    assert md.index("## Stage `sam`") < md.index("## Stage `decode_step`") < md.index("## Stage `(none)`")


def test_real_profiler_events_land_in_their_innermost_stage():
    from torch.profiler import ProfilerActivity, profile
    a = torch.ones(64, 64)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        with stages.stage(stages.PREFILL):
            with stages.stage(stages.SAM):
                for _ in range(3):
                    torch.mm(a, a)
            torch.mm(a, a)                      # inside prefill, outside sam
        with stages.stage(stages.DECODE):
            for step in range(2):
                with stages.stage(stages.DECODE_STEP, payload=step):
                    torch.add(a, a)
    overall, stage_rows = aggregate(*collect(prof.events()))
    assert stage_rows["sam"].ops["aten::mm"].calls == 3
    assert stage_rows["prefill"].ops["aten::mm"].calls == 1
    assert stage_rows["decode_step"].instances == 2 and stage_rows["decode_step"].ops["aten::add"].calls == 2
    assert overall["aten::mm"].calls == 4
    assert torch_pass.NO_STAGE not in stage_rows or "aten::mm" not in stage_rows[torch_pass.NO_STAGE].ops
