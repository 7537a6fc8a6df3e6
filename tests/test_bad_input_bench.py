"""The benchmark scripts' flags: a bad value exits 2 with one line naming the flag, before
any model is built or world forked (parsing is all that runs here)."""
import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def benches():
    return {name: _load(name) for name in ("bench_vs_diffusers", "bench_cp_scaling", "bench_precompute",
                                      "bench_zero3_memory", "bench_cpu_efficiency")}


def _cases(tmp):
    a_file = tmp / "a_file"
    return [
        ("bench_vs_diffusers", ["--repeats", "0"], "--repeats"),
        ("bench_vs_diffusers", ["--warmup", "-1"], "--warmup"),
        ("bench_vs_diffusers", ["--batch", "0"], "--batch"),
        ("bench_vs_diffusers", ["--latent", "3", "0", "16"], "--latent"),
        ("bench_vs_diffusers", ["--channels", "nan"], "--channels"),
        ("bench_vs_diffusers", ["--text-len", "-2"], "--text-len"),
        ("bench_vs_diffusers", ["--text-dim", "0"], "--text-dim"),
        ("bench_vs_diffusers", ["--threads", "0"], "--threads"),
        ("bench_vs_diffusers", ["--profile", "-1"], "--profile"),
        ("bench_vs_diffusers", ["--saved", "x"], "--saved"),
        ("bench_vs_diffusers", ["--presets", "no-such-preset"], "no-such-preset"),
        ("bench_vs_diffusers", ["--json", str(tmp)], "--json"),
        ("bench_vs_diffusers", ["--memory-probe", "theirs", "cpu-0.6m"], "--memory-probe"),
        ("bench_vs_diffusers", ["--memory-probe", "ours", "cpu-9t"], "cpu-9t"),
        ("bench_vs_diffusers", ["--json", str(a_file / "out.json")], "--json"),
        ("bench_cp_scaling", ["--ranks", "0"], "--ranks"),
        ("bench_cp_scaling", ["--ranks", "3"], "--ranks 3"),   # Ulysses: 3 does not divide 4 heads
        ("bench_cp_scaling", ["--tokens", "-5"], "--tokens"),
        ("bench_cp_scaling", ["--repeats", "0"], "--repeats"),
        ("bench_cp_scaling", ["--comm", "ring"], "--comm"),
        ("bench_cp_scaling", ["--dtype", "fp64"], "--dtype"),
        ("bench_cp_scaling", ["--json", str(tmp)], "--json"),
        ("bench_cp_scaling", ["--json", str(a_file / "out.json")], "--json"),
        ("bench_precompute", ["--clips", "0"], "--clips"),
        ("bench_precompute", ["--clips", "-4"], "--clips"),
        ("bench_precompute", ["--clips", "nan"], "--clips"),
        ("bench_precompute", ["--smoke", "yes"], "unrecognized arguments: yes"),
        ("bench_zero3_memory", ["--ranks", "1"], "--ranks"),
        ("bench_zero3_memory", ["--layers", "0"], "--layers"),
        ("bench_zero3_memory", ["--hidden", "100", "--heads", "16"], "--heads 16 does not divide"),
        ("bench_zero3_memory", ["--json", str(tmp)], "--json"),
        ("bench_zero3_memory", ["--heads", "0"], "--heads"),
        ("bench_zero3_memory", ["--hidden", "nan"], "--hidden"),
        ("bench_zero3_memory", ["--json", str(a_file / "out.json")], "--json"),
        ("bench_cpu_efficiency", ["--presets", "cpu-9t"], "cpu-9t"),
        ("bench_cpu_efficiency", ["--repeats", "0"], "--repeats"),
        ("bench_cpu_efficiency", ["--warmup", "-1"], "--warmup"),
        ("bench_cpu_efficiency", ["--batch", "0"], "--batch"),
        ("bench_cpu_efficiency", ["--latent", "3", "0", "16"], "--latent"),
        ("bench_cpu_efficiency", ["--latent", "3", "15", "16"], "latent height=15"),
        ("bench_cpu_efficiency", ["--channels", "nan"], "--channels"),
        ("bench_cpu_efficiency", ["--text-dim", "0"], "--text-dim"),
        ("bench_cpu_efficiency", ["--text-len", "-2"], "--text-len"),
        ("bench_cpu_efficiency", ["--threads", "0"], "--threads"),
        ("bench_cpu_efficiency", ["--gemm-size", "0"], "--gemm-size"),
        ("bench_cpu_efficiency", ["--compile", "max"], "--compile"),
        ("bench_cpu_efficiency", ["--profile-steps", "-1"], "--profile-steps"),
        ("bench_cpu_efficiency", ["--json", str(tmp)], "--json"),
        ("bench_cpu_efficiency", ["--json", str(a_file / "out.json")], "--json"),
        ("bench_cpu_efficiency", ["--smoke", "yes"], "unrecognized arguments: yes"),
    ]


def test_bad_flags_exit_2_with_one_line(benches, tmp_path, capsys):
    (tmp_path / "a_file").write_text("not a directory")
    for name, argv, named in _cases(tmp_path):
        with pytest.raises(SystemExit) as exit_info:
            benches[name].parse_args(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 2, (name, argv)
        errors = [line for line in err if "error:" in line]
        assert errors == [err[-1]] and err[-1].startswith(f"{name}.py: error:"), (name, argv, err)
        assert named in err[-1], (name, argv, err[-1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]   # nothing written


def test_good_flags_parse(benches, tmp_path):
    args = benches["bench_vs_diffusers"].parse_args(["--repeats", "1", "--warmup", "0",
                                                     "--json", str(tmp_path / "new" / "r.json")])
    assert args.repeats == 1 and args.latent == [3, 16, 16]
    args, shape = benches["bench_cp_scaling"].parse_args(["--ranks", "1", "2", "--smoke"])
    assert args.ranks == [1, 2] and args.tokens == list(shape["tokens"])
    args = benches["bench_cpu_efficiency"].parse_args(["--smoke", "--threads", "1"])
    assert args.presets == ["cpu-0.13m"] and args.compile == "none" and args.threads == 1
