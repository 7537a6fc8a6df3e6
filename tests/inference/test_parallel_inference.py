"""Parallel inference: TP2, CP2 Ulysses and CP2 ring give one process's latents.

Each layout runs in a real gloo world (`spawn_world`), loads the same checkpoint through
`Generator` (the path tools/sample.py takes), samples two prompts with guidance, and
must match a world of one within float tolerance: the layouts only re-associate sums
(TP's row all-reduce, CP's attention merge), so differences are rounding, ~1e-6.
"""
import pytest
import torch

from dist_utils import spawn_world

PROMPTS = ["a red square moving right", "a blue circle"]


def _sample(run_dir: str, tp: int, cp: int, comm: str, sampler: str):
    import torch.distributed as dist
    from megatron_vdit.inference.generate import Generator, SampleOptions
    from megatron_vdit.inference.run_files import open_run
    from megatron_vdit.parallel.layout import ParallelLayout
    layout = ParallelLayout.from_world_size(dist.get_world_size(), tensor_model_parallel_size=tp,
                                            context_parallel_size=cp, cp_comm_type=comm)
    gen = Generator(open_run(run_dir), layout)
    return gen.sample_latents(PROMPTS, SampleOptions(sampler, 3, 3.0, seed=5))


@pytest.fixture(scope="module")
def reference(trained_run):
    return {s: spawn_world(_sample, 1, str(trained_run), 1, 1, "p2p", s)[0]
            for s in ("ddpm", "heun")}


@pytest.mark.parametrize("tp,cp,comm,sampler", [(2, 1, "p2p", "heun"), (1, 2, "a2a", "ddpm"),
                                                (1, 2, "p2p", "heun")],
                         ids=["tp2", "cp2-ulysses", "cp2-ring"])
def test_parallel_sampling_matches_one_process(trained_run, reference, tp, cp, comm, sampler):
    results = spawn_world(_sample, 2, str(trained_run), tp, cp, comm, sampler)
    for latents in results:
        torch.testing.assert_close(latents, reference[sampler], rtol=1e-4, atol=1e-4)
