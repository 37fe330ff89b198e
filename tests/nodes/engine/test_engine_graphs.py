"""The engine's CUDA graph logic, on the CPU: the UNet's, TAESD decode's and the text encoders' graphs.

The CUDA graph itself needs a GPU; here its static buffers and graph cache run with an eager stand-in
for the recording (`eager_record`), so everything but the CUDA calls is exercised on the CPU.
"""

import pytest
import torch

from devkit import graphs as g
from tests.support.engine_runs import FAMILIES, PROMPT, SEED, SIZE, smooth_photo, turbo_latents, vae_encoded
from tests.support.tolerances import assert_fp32_close


@pytest.mark.parametrize("sampler", ["euler_ancestral", "euler", "consistency"])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("steps", [1, 2, 4])
def test_noise_steps_are_the_steps_the_sampler_draws_noise_for(engine, sampler, eta, steps):
    """A recorded graph reads per-step noise from buffers filled before each replay: exactly these."""
    from add_turbo import samplers, schedules

    sigmas = schedules.turbo_sigmas(steps)
    asked = []

    def noise_for_step(step):
        asked.append(step)
        return torch.zeros(1, 4, 2, 2)

    samplers.sample(lambda x, sigma: x * 0.5, torch.ones(1, 4, 2, 2), sigmas, sampler, eta, noise_for_step)
    assert engine.noise_steps(sigmas, sampler, eta) == asked


class EagerGraph:
    """Stands in for a CUDA graph: `replay` runs the recorded body again into the same output buffer."""

    def __init__(self, body):
        self.body = body
        self.out = body()
        self.replays = 0

    def replay(self):
        self.replays += 1
        fresh = self.body()
        for buffer, value in zip(*(o if isinstance(o, (tuple, list)) else (o,) for o in (self.out, fresh)), strict=True):
            if buffer is not None:
                buffer.copy_(value)


@pytest.fixture
def eager_graphs(engine, cuda_graphs, monkeypatch):
    """The engine records 'graphs' on the CPU: every obstacle to recording lifted, recording eager."""
    recorded = []

    def eager_record(body, device):
        graph = EagerGraph(body)
        recorded.append(graph)
        return graph, graph.out

    monkeypatch.setattr(cuda_graphs, "record", eager_record)
    monkeypatch.setattr(engine.gates, "capture_obstacle", lambda patcher, unet: None)
    return recorded


@pytest.mark.parametrize("family", FAMILIES)
def test_graph_buffers_take_each_runs_inputs(tiny_models, loaded, engine, eager_graphs, family):
    """Recorded once per shape and schedule, then replayed with new noise, prompt, image and seed."""
    engine_model = g.load(tiny_models[family].single_file.name, engine="on")[0]  # a model of its own
    normal_model, clip, vae = loaded[family]["off"]
    state = engine.state_of(engine_model)
    assert state.runs["recorded"] == 1 and len(eager_graphs) == 1  # the loader's warm-up: 1 step
    del eager_graphs[:]
    fox, lighthouse = g.encode(clip, "a red fox"), g.encode(clip, PROMPT)
    image_latent = vae_encoded(vae, smooth_photo())

    runs = [  # (positive, latent, steps, strength, seed, sampler)
        (lighthouse, None, 4, 1.0, SEED, "euler_ancestral"),
        (lighthouse, None, 4, 1.0, SEED + 1, "euler_ancestral"),  # another seed: new start and step noise
        (fox, None, 4, 1.0, SEED, "euler_ancestral"),  # another prompt: new context (and pooled output)
        (fox, image_latent, 2, 0.5, SEED, "euler_ancestral"),  # refine: a new schedule, a new graph
        (lighthouse, image_latent, 2, 0.5, SEED + 2, "euler_ancestral"),
        (fox, None, 2, 1.0, SEED, "consistency"),
    ]
    for positive, latent, steps, strength, seed, sampler in runs:
        latent = g.empty_latent(SIZE) if latent is None else latent
        sample = {"seed": seed, "steps": steps, "strength": strength, "spacing": "trailing", "sampler": sampler,
                  "eta": 1.0}
        got = g.turbo_sample(engine_model, positive, latent, **sample)["samples"]
        want = g.turbo_sample(normal_model, positive, latent, **sample)["samples"]
        assert_fp32_close(got, want)
    assert state.runs["recorded"] == 1 + 3 and state.runs["replayed"] == 1 + len(runs) and state.runs["direct"] == 0
    assert [graph.replays for graph in eager_graphs] == [3, 2, 1]
    assert state.last == "CUDA graph"


def test_a_graph_reads_only_buffers_it_owns(tiny_models, loaded, engine, host_api, eager_graphs, monkeypatch):
    """A CUDA graph replays reads by address: what the recording run allocated is freed (and reused)
    once that run ends. Here each run's tensors are overwritten with NaN when it ends; replays must
    not notice."""
    original_exit = host_api.DirectUNet.__exit__

    def exit_and_scribble(self, *exc):
        self.sigmas.fill_(float("nan"))
        self.start.fill_(float("nan"))
        for value in self.inputs.values():
            value.fill_(float("nan"))
        return original_exit(self, *exc)

    monkeypatch.setattr(host_api.DirectUNet, "__exit__", exit_and_scribble)
    engine_model, clip, _ = g.load(tiny_models["sd_turbo"].single_file.name, engine="on")
    positive = g.encode(clip, PROMPT)
    want = turbo_latents(loaded["sd_turbo"]["off"][0], positive, steps=2)
    for _ in range(2):  # recorded, then replayed after the recording run's tensors were scribbled over
        got = turbo_latents(engine_model, positive, steps=2)
        assert torch.isfinite(got).all()
        assert_fp32_close(got, want)
    assert engine.state_of(engine_model).runs["replayed"] >= 2


def test_graphs_are_dropped_when_the_weights_move_and_kept_to_a_few(tiny_models, loaded, engine, cuda_graphs,
                                                                    eager_graphs):
    engine_model, clip, _ = g.load(tiny_models["sd_turbo"].single_file.name, engine="on")
    normal_model = loaded["sd_turbo"]["off"][0]
    positive = g.encode(clip, PROMPT)
    state = engine.state_of(engine_model)
    want = turbo_latents(normal_model, positive)
    assert_fp32_close(turbo_latents(engine_model, positive), want)
    assert state.runs["recorded"] == 2 and len(state.graphs) == 2  # the loader's warm-up (1 step), then 2 steps

    # A recorded graph reads the weights where they were: a reload elsewhere (same values) voids it.
    bias = engine_model.model.diffusion_model.out[2].bias
    bias.data = bias.data.clone()
    assert_fp32_close(turbo_latents(engine_model, positive), want)
    assert state.runs["recorded"] == 3 and len(state.graphs) == 1

    for steps in range(1, cuda_graphs.GRAPHS_KEPT + 3):
        turbo_latents(engine_model, positive, steps=steps)
    assert len(state.graphs) == cuda_graphs.GRAPHS_KEPT


def test_a_recording_that_fails_leaves_the_direct_path_for_good(tiny_models, loaded, engine, cuda_graphs, monkeypatch):
    """Should some host's UNet not be recordable, the run (and every later one) takes the direct path."""
    attempts = []

    def failing_record(body, device):
        attempts.append(device)
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(cuda_graphs, "record", failing_record)
    monkeypatch.setattr(engine.gates, "capture_obstacle", lambda patcher, unet: None)
    engine_model, clip, _, message = g.load_with_message(tiny_models["sd_turbo"].single_file.name, engine="on")
    assert message.startswith("engine: direct path (recording a CUDA graph failed: operation not permitted")
    positive = g.encode(clip, PROMPT)
    assert_fp32_close(turbo_latents(engine_model, positive), turbo_latents(loaded["sd_turbo"]["off"][0], positive))
    state = engine.state_of(engine_model)
    assert len(attempts) == 1 and state.runs["direct"] == 2 and not state.graphs  # the warm-up and this run


def test_taesd_decode_replays_a_graph_per_latent_size_with_the_hosts_bits(tiny_models, engine, cuda_graphs, rooms,
                                                                           eager_graphs, monkeypatch):
    """With the engine on, TAESD's decode is one recorded graph per latent size; its input buffer takes each
    decode's latent, and a move of the weights, a failed recording or another extension's decode are
    respected. (On CPU no graph is used: the obstacle is lifted here, the recording eager.)"""
    name = tiny_models["sd_turbo"].single_file.name
    plain_vae = g.load(name, decoder="taesd")[2]
    vae = g.load(name, decoder="taesd", engine="on")[2]
    room = rooms.cuda_graphs
    (graph,) = room.graphs_of(vae, room.DECODE)
    assert isinstance(graph, cuda_graphs.GraphedCall) and room.graphs_of(plain_vae, room.DECODE) == []
    obstacle = room.taesd_graph_obstacle
    assert obstacle(vae) == "no CUDA graphs on cpu"
    shapes = [(1, 4, 8, 8)] * 3 + [(2, 4, 8, 12)]
    latents = [{"samples": torch.randn(shape, generator=torch.Generator().manual_seed(i)) * 3}
               for i, shape in enumerate(shapes)]
    g.decode(vae, latents[0])
    assert sum(graph.runs.values()) == 0  # on CPU the host's decode ran, no graph

    monkeypatch.setattr(room, "taesd_graph_obstacle", lambda vae: None)
    for latent in latents:
        assert torch.equal(g.decode(vae, latent), g.decode(plain_vae, latent))
    assert graph.runs == {"recorded": 2, "replayed": 4}  # two sizes; each decode replays
    with torch.inference_mode(False), torch.no_grad():  # outside inference mode: the host's decode
        assert torch.equal(g.decode(vae, latents[0]), g.decode(plain_vae, latents[0]))
    assert graph.runs == {"recorded": 2, "replayed": 4, "direct": 1}
    assert "decode" not in vae.first_stage_model.__dict__  # installed only during a decode

    weight = next(vae.first_stage_model.parameters())
    weight.data = weight.data.clone()  # the weights moved: graphs read them by address
    assert torch.equal(g.decode(vae, latents[1]), g.decode(plain_vae, latents[1]))
    assert graph.runs["recorded"] == 3 and len(graph.graphs) == 1

    def foreign_decode(x):
        raise AssertionError("an extension's own decode")

    # The reasons met on a GPU (the obstacle only reads the VAE's device attribute).
    monkeypatch.setattr(vae, "device", torch.device("cuda"))
    assert obstacle(vae) is None
    vae.first_stage_model.decode = foreign_decode
    assert obstacle(vae) == "another extension replaced the TAESD decode"
    del vae.first_stage_model.decode
    vae.patcher.add_object_patch("taesd_decoder", torch.nn.Identity())
    assert obstacle(vae) == "the VAE carries patches"

    monkeypatch.setattr(room, "taesd_graph_obstacle", lambda vae: None)
    monkeypatch.setattr(cuda_graphs, "record", lambda body, device: (_ for _ in ()).throw(RuntimeError("not capturable")))
    fresh = g.load(name, decoder="taesd", engine="on")[2]
    assert torch.equal(g.decode(fresh, latents[3]), g.decode(plain_vae, latents[3]))
    (fresh_graph,) = room.graphs_of(fresh, room.DECODE)
    assert fresh_graph.failure == "recording a CUDA graph failed: not capturable"
    g.decode(fresh, latents[3])
    assert fresh_graph.runs == {"direct": 2}  # not tried again


@pytest.mark.parametrize("family", FAMILIES)
def test_text_encoders_replay_a_graph_per_shape_with_the_hosts_bits(tiny_models, engine, host_api, rooms,
                                                                    eager_graphs, monkeypatch, family):
    """With the engine on, each text encoder's layer stack is a recorded graph whose buffers take each new
    prompt; the prompt cache still answers repeated prompts without any encoder run. (On CPU no graph is
    used: the obstacle is lifted here, the recording eager.)"""
    name = tiny_models[family].single_file.name
    plain_clip = g.load(name)[1]
    clip = g.load(name, engine="on")[1]
    room = rooms.cuda_graphs
    graphs = room.graphs_of(clip, room.TEXT)
    assert len(graphs) == (2 if family == "sdxl_turbo" else 1) and room.graphs_of(plain_clip, room.TEXT) == []
    assert room.text_graph_obstacle(clip) == "no CUDA graphs on cpu"
    g.encode(clip, "warm")
    assert all(sum(graph.runs.values()) == 0 for graph in graphs)  # on CPU: the host's encoders

    monkeypatch.setattr(room, "text_graph_obstacle", lambda clip: None)
    prompts = ["a red fox", "a lighthouse at dusk, oil painting", "a red fox"]
    for prompt in prompts:
        got, want = g.encode(clip, prompt), g.encode(plain_clip, prompt)
        assert torch.equal(got[0][0], want[0][0])
        assert got[0][1].keys() == want[0][1].keys()
        assert all(torch.equal(got[0][1][k], want[0][1][k]) for k in want[0][1] if torch.is_tensor(want[0][1][k]))
    for graph in graphs:
        assert graph.runs == {"recorded": 1, "replayed": 2}  # one shape; the third prompt came from the cache
    assert all("forward" not in m.__dict__ for m in host_api.text_encoders(clip))  # installed only during an encode

    (skipped,) = g.run(g.builtin("CLIPSetLastLayer"), clip=clip, stop_at_clip_layer=-3)
    got = g.encode(skipped, "a red fox")  # another intermediate layer: another graph
    (plain_skipped,) = g.run(g.builtin("CLIPSetLastLayer"), clip=plain_clip, stop_at_clip_layer=-3)
    assert torch.equal(got[0][0], g.encode(plain_skipped, "a red fox")[0][0])
    assert sum(graph.runs["recorded"] for graph in graphs) > len(graphs)


def test_text_graph_obstacles_are_named(tiny_models, rooms, monkeypatch):
    obstacle = rooms.cuda_graphs.text_graph_obstacle
    clip = g.load(tiny_models["sd_turbo"].single_file.name, engine="on")[1]
    assert obstacle(clip) == "no CUDA graphs on cpu"
    # The reasons met on a GPU (the obstacle only reads the patcher's load device).
    monkeypatch.setattr(clip.patcher, "load_device", torch.device("cuda"))
    assert obstacle(clip) is None
    layer = next(m for m in clip.cond_stage_model.modules() if hasattr(m, "weight_function"))
    layer.weight_function = [lambda w: w]
    assert obstacle(clip) == "the text encoder's layers patch their weights on each call"
    layer.weight_function = []
    clip.patcher.add_object_patch("manual_cast_dtype", torch.float32)  # a plain value: no obstacle
    assert obstacle(clip) is None
    clip.patcher.add_object_patch("final_layer_norm", torch.nn.Identity())
    assert obstacle(clip) == "the text encoder has modules swapped in by object patches"
    clip.apply_hooks_to_conds = object()
    assert obstacle(clip) == "the text encoder has hooks"


def test_the_cuda_warm_up_note_says_how_the_graphs_went(engine, cuda_graphs):
    module = torch.nn.Linear(2, 2)
    recorded, failed = cuda_graphs.GraphedCall(module, module, "a"), cuda_graphs.GraphedCall(module, module, "b")
    recorded.runs["recorded"] = 1
    failed.cache.failure = "recording a CUDA graph failed: not capturable"
    assert engine.graph_note("text encoders", []) == ""
    assert engine.graph_note("text encoders", [recorded]) == "; text encoders: CUDA graphs per input size"
    assert engine.graph_note("TAESD decode", [recorded, failed]) == \
        "; TAESD decode: the host's (recording a CUDA graph failed: not capturable)"


def test_the_weight_index_sees_every_way_the_host_moves_or_replaces_weights(cuda_graphs):
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    index = cuda_graphs.WeightIndex(model)
    assert len(index.tensors()) == len(list(model.parameters())) + len(list(model.buffers()))
    first = index.fingerprint()
    assert index.fingerprint() == first  # nothing moved
    model[0].weight = torch.nn.Parameter(model[0].weight.detach().clone())  # as the host's set_attr_param
    second = index.fingerprint()
    assert second != first
    model[0].bias.data = model[0].bias.data.clone()  # a new storage under the same Parameter
    third = index.fingerprint()
    assert third != second
    model.to(torch.float64)  # a move or cast of the whole module
    assert index.fingerprint() != third
