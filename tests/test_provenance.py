"""Results name the device they were computed on: the CPU (model, AVX-512/AMX) or GPU, torch and threads."""

import json

import torch

from labelfactory.core.provenance import describe_device, device_line
from labelfactory.experiments.reporting import collect_scores, write_main_table

XEON = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu sse2 avx2 fma avx512f avx512dq avx512_bf16 amx_bf16 amx_tile
"""
EPYC = "processor\t: 0\nmodel name\t: AMD EPYC 7B12\nflags\t\t: fpu sse2 avx2 fma\n"


def test_the_cpu_model_and_its_vector_extensions_are_recorded(tmp_path):
    (tmp_path / "xeon").write_text(XEON)
    d = describe_device("cpu", 2, cpuinfo=tmp_path / "xeon")
    assert d == {"kind": "cpu", "name": "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz",
                 "cpu": "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz",
                 "isa": ["amx_bf16", "amx_tile", "avx512_bf16", "avx512dq", "avx512f"],
                 "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__, "threads": 2}
    assert device_line(d) == (f"Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz (AVX-512 + AMX; torch kernels "
                              f"{d['cpu_capability']}), torch {torch.__version__}, 2 threads")
    (tmp_path / "epyc").write_text(EPYC)
    epyc = describe_device("cpu", 1, cpuinfo=tmp_path / "epyc")
    assert epyc["isa"] == [] and device_line(epyc).startswith("AMD EPYC 7B12 (no AVX-512/AMX; ")
    assert device_line(epyc).endswith(", 1 thread")
    assert describe_device("cpu", cpuinfo=tmp_path / "absent")["isa"] == []  # no /proc/cpuinfo (macOS)
    assert describe_device("cpu")["threads"] == torch.get_num_threads()


def test_the_main_table_names_the_devices_of_its_runs(tmp_path):
    (tmp_path / "xeon").write_text(XEON)
    (tmp_path / "epyc").write_text(EPYC)
    devices = [describe_device("cpu", 2, cpuinfo=tmp_path / f) for f in ("epyc", "epyc", "xeon")]

    def scores(name, seed, device):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"setting": "few_shot", "seed": seed, "num_train_images": 4, "miou": 0.5,
                                    "pixel_accuracy": 0.9, "iou_by_class": {"bg": 0.9, "x": 0.1},
                                    **({"device": device} if device else {})}))
        return path

    one = collect_scores([scores("a", 0, devices[0]), scores("b", 1, devices[1])])
    write_main_table(one, tmp_path / "t.csv", tmp_path / "t.md", tmp_path / "runs.csv")
    md = (tmp_path / "t.md").read_text()
    assert md.endswith(f"\n\nDevice: {device_line(devices[0])}.\n") and md.count("Device") == 1
    assert list(one["device"]) == [device_line(devices[0])] * 2

    mixed = collect_scores([scores("a", 0, devices[0]), scores("b", 1, devices[2]), scores("c", 2, None)])
    write_main_table(mixed, tmp_path / "t.csv", tmp_path / "t.md", tmp_path / "runs.csv")
    assert (tmp_path / "t.md").read_text().endswith(
        f"\nDevices: {device_line(devices[0])} (1 run); {device_line(devices[2])} (1 run); unrecorded (1 run).\n")
