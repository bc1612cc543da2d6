"""Why `OrtConfig.allow_spinning` is off: ONNX Runtime's spinning threads slow the next candidate.

ResNet-18, batch 1, 2 threads each side. Times PyTorch eager alone, then interleaved with an ONNX Runtime
session whose idle threads spin (ORT's default) and with one whose threads don't. Writes
``benchmarks/results/ort_spinning.json``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from trtopt.backends.ort import OrtConfig
from trtopt.data import load_feed, take_batch
from trtopt.environment import environment
from trtopt.export import ExportConfig, export_onnx
from trtopt.files import write_json
from trtopt.measure.bench import onnx_candidate, torch_candidate
from trtopt.measure.profile import TimingConfig, latency_stats, time_interleaved
from trtopt.models.load import load_model

OUT = Path(__file__).resolve().parent / "results" / "ort_spinning.json"


def main() -> None:
    loaded = load_model("torchvision:resnet18")
    feed = take_batch(load_feed("skimage:photos", loaded.inputs, preprocess=loaded.preprocess), 1)
    timing = TimingConfig(warmup_iterations=10, iterations=60)
    torch_c = torch_candidate(loaded, threads=2)
    results = {"torch_alone": latency_stats(time_interleaved({"torch": torch_c.runner}, feed, timing)["torch"], 1)}
    with tempfile.TemporaryDirectory() as tmp:
        onnx = export_onnx(loaded, Path(tmp) / "r18.onnx", ExportConfig(check_parity=False), feed=feed)
        for spin in (True, False):
            ort_c = onnx_candidate(onnx, "ort", OrtConfig(intra_op_threads=2, allow_spinning=spin))
            samples = time_interleaved({"torch": torch_c.runner, "ort": ort_c.runner}, feed, timing)
            results[f"interleaved_spinning_{'on' if spin else 'off'}"] = {
                name: latency_stats(s, 1) for name, s in samples.items()}
            ort_c.runner.close()
    write_json(OUT, {"environment": environment(), "timing": timing.to_dict(), "results": results}, force=True)
    print(f"torch alone p50 {results['torch_alone']['latency_ms_p50']:.1f} ms")
    for key in ("interleaved_spinning_on", "interleaved_spinning_off"):
        r = results[key]
        print(f"{key}: torch p50 {r['torch']['latency_ms_p50']:.1f} ms, ort p50 {r['ort']['latency_ms_p50']:.1f} ms")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
