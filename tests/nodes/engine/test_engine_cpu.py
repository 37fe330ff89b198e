"""The engine on the CPU: the UNet's convolutions packed for oneDNN and TAESD's fused blocks, each
installed only for the run, leaving other extensions' forwards alone, with the host's bits."""

import torch

from devkit import graphs as g
from tests.support.engine_runs import PROMPT, turbo_latents, vae_encoded


def test_packed_convolutions_exist_only_during_an_engine_run_and_leave_other_forwards_alone(loaded, engine):
    """The host's Conv2d layers get the packed forward for the run only; a layer that another extension
    gave its own forward keeps it, and the result stays the normal path's."""
    import comfy.ops

    normal_model, clip, _ = loaded["sd_turbo"]["off"]
    engine_model = loaded["sd_turbo"]["on"][0]
    layers = [m for m in engine_model.model.diffusion_model.modules()
              if isinstance(m, comfy.ops.disable_weight_init.Conv2d)]
    foreign, seen_during_run = layers[1], []

    def foreign_forward(*args, **kwargs):
        seen_during_run.append(sum("forward" in m.__dict__ for m in layers))
        return type(foreign).forward(foreign, *args, **kwargs)

    foreign.forward = foreign_forward
    try:
        positive = g.encode(clip, PROMPT)
        got = turbo_latents(engine_model, positive)
        assert seen_during_run and all(n == len(layers) for n in seen_during_run)  # all wrapped while it ran
        assert foreign.forward is foreign_forward
    finally:
        del foreign.forward
    assert not any("forward" in m.__dict__ for m in layers)  # and none after
    assert torch.equal(got, turbo_latents(normal_model, positive))


def test_taesd_blocks_run_fused_during_decode_and_encode_only_with_the_same_bits(tiny_models, engine, rooms):
    """With the engine on, TAESD's blocks get the fused forward while the VAE decodes or encodes, a block
    that another extension gave its own forward keeps it, and images and latents stay the host's."""
    from comfy.taesd import taesd

    name = tiny_models["sd_turbo"].single_file.name
    _, _, host_vae = g.load(name, decoder="taesd")
    _, _, vae, message = g.load_with_message(name, decoder="taesd", engine="on")
    store = rooms.cpu_kernels.fused_store(vae)
    assert rooms.cpu_kernels.fused_store(host_vae) is None and store is not None
    assert message.endswith("; TAESD blocks run as fused oneDNN convolutions (ReLU and skip add inside)"), message
    blocks = [m for m in vae.first_stage_model.modules() if isinstance(m, taesd.Block)]
    foreign, fused_during_run = blocks[-1], []

    def foreign_forward(x):
        return type(foreign).forward(foreign, x)

    foreign.forward = foreign_forward
    decoder_blocks = [b for b in vae.first_stage_model.taesd_decoder.modules() if isinstance(b, taesd.Block)]
    hooks = [block.register_forward_pre_hook(lambda *_: fused_during_run.append(
        sum(type(b.__dict__.get("forward")).__name__ == "_FusedBlockForward" for b in blocks)))
        for block in (decoder_blocks[0], blocks[0])]  # blocks[0] is the encoder's
    latent = {"samples": torch.randn(2, 4, 8, 12, generator=torch.Generator().manual_seed(5))}
    try:
        image = g.decode(vae, latent)
        encoded = vae_encoded(vae, image)
        assert fused_during_run == [len(blocks) - 1, len(blocks) - 1]  # all but the foreign one, in both
        assert foreign.forward is foreign_forward
    finally:
        for hook in hooks:
            hook.remove()
        del foreign.forward
    assert not any("forward" in b.__dict__ for b in blocks)  # and none after
    assert torch.equal(image, g.decode(host_vae, latent))
    assert torch.equal(encoded["samples"], vae_encoded(host_vae, image)["samples"])
    assert all(store[b].exact for b in decoder_blocks if b is not foreign)  # each checked its shape
