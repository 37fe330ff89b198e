"""A CPU decode that would not fit in free memory goes tiled (and a failed allocation retries tiled)."""

import logging

import pytest
import torch

from devkit import graphs as g

SIZE = 384  # latent 48 x 48: tiles of 16 and 32 latent pixels split it several ways
GIB = 2**30
# Tiled vs whole decode: each tile normalises with its own GroupNorm statistics, so tiles differ from
# the whole image by more than rounding. The stated bound (README), with room over what the tiny
# random-weight VAE shows here (max 10.6/255, mean 1.2/255):
TILED_MAX, TILED_MEAN = 16 / 255, 4 / 255


@pytest.fixture(scope="module")
def vae_and_latent(tiny_models):
    model, clip, vae = g.load(tiny_models["sd_turbo"].single_file.name)
    latent = g.turbo_sample(model, g.encode(clip, "a harbour at dawn"), g.empty_latent(SIZE), seed=3)
    return vae, latent


def _free_memory(monkeypatch, gib):
    import comfy.model_management

    monkeypatch.setattr(comfy.model_management, "get_free_memory", lambda *args, **kwargs: int(gib * GIB))


def test_an_image_that_fits_is_decoded_whole_by_the_host(vae_and_latent):
    import comfy.sd

    vae, latent = vae_and_latent
    with torch.inference_mode():
        assert torch.equal(g.decode(vae, latent), comfy.sd.VAE.decode(vae, latent["samples"]))


def test_an_image_that_does_not_fit_is_decoded_in_tiles(vae_and_latent, monkeypatch, caplog):
    vae, latent = vae_and_latent
    with torch.inference_mode():
        whole = g.decode(vae, latent)
        _free_memory(monkeypatch, 0.5)  # 384 px needs 0.56 GiB of 0.4 usable; a 256 px tile fits
        with caplog.at_level(logging.WARNING):
            tiled = g.decode(vae, latent)
        expected = vae.decode_tiled(latent["samples"], tile_x=32, tile_y=32, overlap=8)
    assert "decoding 384x384 in 256 px tiles" in caplog.text
    assert torch.equal(tiled, expected)
    diff = (tiled - whole).abs()
    print(f"tiled vs whole: max {diff.max() * 255:.2f}/255, mean {diff.mean() * 255:.2f}/255")
    assert diff.max() <= TILED_MAX and diff.mean() <= TILED_MEAN


def test_a_failed_allocation_is_retried_in_tiles(vae_and_latent, monkeypatch, caplog):
    vae, latent = vae_and_latent
    decode = vae.first_stage_model.decode

    def whole_image_fails(z, *args, **kwargs):
        if z.shape[-1] == latent["samples"].shape[-1]:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9663676416 bytes.")
        return decode(z, *args, **kwargs)

    monkeypatch.setattr(vae.first_stage_model, "decode", whole_image_fails)
    with torch.inference_mode(), caplog.at_level(logging.WARNING):
        tiled = g.decode(vae, latent)
        expected = vae.decode_tiled(latent["samples"], tile_x=16, tile_y=16, overlap=4)
    assert "retrying in tiles" in caplog.text
    assert torch.equal(tiled, expected)


def test_other_decode_errors_are_not_hidden(vae_and_latent, monkeypatch):
    vae, latent = vae_and_latent

    def broken(z, *args, **kwargs):
        raise RuntimeError("expected input to have 4 channels")

    monkeypatch.setattr(vae.first_stage_model, "decode", broken)
    with pytest.raises(RuntimeError, match="4 channels"):
        g.decode(vae, latent)
