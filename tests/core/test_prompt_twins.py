"""Queued prompts batched together, without ComfyUI: which prompts are twins, the latent stash, the noise."""

import copy

import torch

from add_turbo import noise, prompt_twins


def _prompt(seed=5, text="a cat", size=64, seed_node="4"):
    return {
        "1": {"class_type": "ADDTurboLoader", "inputs": {"ckpt_name": "sd_turbo.safetensors", "engine": "on"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": text}},
        "3": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        seed_node: {"class_type": "ADDTurboSample", "inputs": {"model": ["1", 0], "positive": ["2", 0],
                                                               "latent_image": ["3", 0], "seed": seed, "steps": 1}},
    }


def test_twins_differ_only_in_the_seed_of_this_node_and_keep_queue_order():
    pending = [("a", _prompt(6)), ("b", _prompt(7, text="a dog")), ("c", _prompt(8, size=128)), ("d", _prompt(9)),
               ("e", _prompt(6)), ("f", _prompt(5)), ("g", _prompt(10))]
    # b: another text; c: another size; e: seed 6 is taken by a; f: the running prompt's own seed.
    assert prompt_twins.queued_twins(_prompt(5), "4", pending, limit=8) == [("a", 6, None), ("d", 9, None),
                                                                           ("g", 10, None)]
    assert prompt_twins.queued_twins(_prompt(5), "4", pending, limit=2) == [("a", 6, None), ("d", 9, None)]
    assert prompt_twins.queued_twins(_prompt(5), "4", pending, limit=0) == []


def test_with_the_text_node_other_prompt_texts_are_twins_too():
    pending = [("a", _prompt(5, text="a dog")), ("b", _prompt(6, text="a dog")), ("c", _prompt(5)),
               ("d", _prompt(5, text="a dog")), ("e", _prompt(7, text="a cow", size=128)), ("f", _prompt(8))]
    # c: the running prompt's own seed and text; d: the same (seed, text) as a; e: another size.
    assert prompt_twins.queued_twins(_prompt(5), "4", pending, limit=8, text_node="2") == [
        ("a", 5, "a dog"), ("b", 6, "a dog"), ("f", 8, "a cat")]
    linked = _prompt(5)
    linked["2"]["inputs"]["text"] = ["9", 0]  # a text from another node: no twins
    assert prompt_twins.queued_twins(linked, "4", pending, limit=8, text_node="2") == []


def test_the_executors_bookkeeping_in_the_running_prompt_makes_no_difference():
    """The host's executor writes each fingerprinted node's value (is_changed) into the running prompt, and
    the editor adds titles (_meta): neither changes what a prompt computes."""
    running = _prompt(5)
    running["1"]["is_changed"] = [[("/models/sd_turbo.safetensors", 5, 1, 7)]]
    running["4"]["_meta"] = {"title": "ADD Turbo Sample"}
    assert prompt_twins.queued_twins(running, "4", [("a", _prompt(6))], limit=4) == [("a", 6, None)]
    other_model = _prompt(6)
    other_model["1"]["inputs"]["ckpt_name"] = "other.safetensors"  # but inputs still count
    assert prompt_twins.queued_twins(running, "4", [("a", other_model)], limit=4) == []


def test_no_twins_for_another_node_a_linked_seed_or_an_extra_node():
    pending = [("a", _prompt(6))]
    assert prompt_twins.queued_twins(_prompt(5, seed_node="9"), "9", pending, limit=4) == []
    linked = _prompt(5)
    linked["4"]["inputs"]["seed"] = ["7", 0]
    assert prompt_twins.queued_twins(linked, "4", [("a", copy.deepcopy(linked))], limit=4) == []
    extra = _prompt(6)
    extra["8"] = {"class_type": "PreviewImage", "inputs": {"images": ["5", 0]}}
    assert prompt_twins.queued_twins(_prompt(5), "4", [("a", extra)], limit=4) == []
    running = _prompt(5)
    prompt_twins.queued_twins(running, "4", pending, limit=4)
    assert running == _prompt(5) and pending == [("a", _prompt(6))]  # neither is changed


def test_same_values_compares_tensors_by_value_and_other_objects_by_identity_or_equality():
    model = object()
    cond = [[torch.ones(1, 77, 8), {"pooled_output": torch.zeros(1, 8)}]]
    same = [[torch.ones(1, 77, 8), {"pooled_output": torch.zeros(1, 8)}]]
    assert prompt_twins.same_values((model, cond, 1, "trailing"), (model, same, 1, "trailing"))
    assert not prompt_twins.same_values((model, cond), (object(), cond))
    other = [[torch.ones(1, 77, 8), {"pooled_output": torch.zeros(1, 8) + 1e-7}]]
    assert not prompt_twins.same_values(cond, other)
    assert not prompt_twins.same_values(torch.ones(2), torch.ones(2, dtype=torch.float64))
    assert not prompt_twins.same_values(torch.ones(2), torch.ones(1, 2))
    assert not prompt_twins.same_values([1, 2], (1, 2))
    assert not prompt_twins.same_values({"a": 1}, {"a": 1, "b": 2})


def test_the_stash_hands_each_latent_out_once_and_only_for_the_same_inputs():
    stash = prompt_twins.LatentStash()
    model, cond = object(), [[torch.ones(1, 4, 8), {}]]
    inputs = (model, cond, torch.zeros(1, 4, 8, 8), 1, 1.0)
    latent = torch.randn(1, 4, 8, 8)
    stash.put("p1", "4", 6, inputs, latent)
    assert stash.take("4", 7, inputs) is None  # another seed
    assert stash.take("5", 6, inputs) is None  # another node
    changed = (model, [[torch.ones(1, 4, 8) * 2, {}]], torch.zeros(1, 4, 8, 8), 1, 1.0)
    assert stash.take("4", 6, changed) is None  # the prompt's text gave another conditioning
    assert stash.take("4", 6, (model, cond, torch.zeros(1, 4, 8, 8), 1, 1.0)) is latent  # equal values suffice
    assert stash.take("4", 6, inputs) is None and len(stash) == 0  # once


def test_the_stash_drops_latents_of_prompts_no_longer_queued_and_stays_bounded():
    stash = prompt_twins.LatentStash(size=3)
    for i in range(5):
        stash.put(f"p{i}", "4", i, (), torch.zeros(1))
    assert stash.pending_ids() == {"p2", "p3", "p4"}  # oldest out first
    stash.keep_only({"p3", "p9"})
    assert stash.pending_ids() == {"p3"}
    assert stash.holds("p3", "4") and not stash.holds("p3", "5") and not stash.holds("p2", "4")


def test_grouped_noise_gives_each_group_the_noise_of_its_own_run():
    item = (4, 8, 8)
    together = noise.grouped_noise([(5, 2), (11, 1), (5, 1)], item, step=2)
    assert torch.equal(together[:2], noise.seeded_noise(5, (2, *item), step=2))
    assert torch.equal(together[2:3], noise.seeded_noise(11, (1, *item), step=2))
    assert torch.equal(together[3:], noise.seeded_noise(5, (1, *item), step=2))
    assert torch.equal(noise.grouped_noise([(3, 4)], item), noise.seeded_noise(3, (4, *item)))
