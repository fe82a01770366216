"""The rounds of a `sample_unique` stage driven from the Ray driver when the policy runs on vLLM: every sample the
stage will ask for is drawn through `ray.data.llm` on vLLM engine replicas and stored in the request cache (see
`xwin_data.llm.ray_llm`); the stage's units then read those samples from the cache as a local build would draw them.
"""
from __future__ import annotations

from xwin_data.ops.sets.sample_rounds import PromptState, next_round


def sample_on_ray(ctx, params, spec, sampling, prompts: list[dict], samples_bar, tokens_bar):
    """Fill the request cache with the samples of `prompts` on engine replicas: `policy.replicas` of them, else
    as many as the cluster's GPUs hold at `tensor_parallel` GPUs each. Returns the rounds' `Prefill`."""
    from xwin_data.core.executors import Resources
    from xwin_data.llm.cache import RequestCache
    from xwin_data.llm.ray_llm import RaySampler

    greedy = sampling.temperature == 0
    wanted = 1 if greedy else params.n_unique
    cap = 1 if greedy else int(params.max_samples)
    ray = ctx.executor.connected()
    stage = Resources.of(ctx.resources)
    tp = int(params.placement.get("tensor_parallel") or 1)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if stage.replicas or not gpus:
        replicas = ctx.executor.replicas(stage, True, len(prompts) * wanted) or 1
    else:  # as many engines as the cluster's GPUs hold, tensor_parallel GPUs each
        replicas = max(1, gpus // tp)

    def progress(samples: int, tokens: int) -> None:
        samples_bar.advance(samples)
        tokens_bar.advance(tokens)

    with RequestCache(str(ctx.cache_dir / "generation.sqlite")) as cache:
        sampler = RaySampler(spec, sampling, cache, replicas=replicas,
                             tensor_parallel=params.placement.get("tensor_parallel"), ray=ray)
        return sampler.run(prompts, wanted, cap, PromptState, next_round, on_samples=progress)
