"""ADDTurboScheduler, ADDTurboSampler and the one-node ADDTurboSample."""

from comfy_api.v0_0_2 import io

from ..add_turbo import samplers, schedules
from .latent_sampling import model_sigmas, turbo_sampler
from .queue_batching import describe, sample_with_queued_twins
from .schema import turbo_schema

HOST_SYMBOLS = [
    ("comfy_api.v0_0_2", "io.ComfyNode.define_schema", ()),
    ("comfy_api.v0_0_2", "io.ComfyNode.execute", ()),
    ("comfy_api.v0_0_2", "io.Int.Input", ("id", "default", "min", "max", "control_after_generate", "optional",
                                          "tooltip")),
    ("comfy_api.v0_0_2", "io.Float.Input", ("id", "default", "min", "max", "step", "round", "tooltip")),
    ("comfy_api.v0_0_2", "io.Combo.Input", ("id", "options", "default", "tooltip")),
    ("comfy_api.v0_0_2", "io.Model.Input", ("id", "tooltip")),
    ("comfy_api.v0_0_2", "io.Conditioning.Input", ("id", "tooltip")),
    ("comfy_api.v0_0_2", "io.Latent.Input", ("id", "tooltip")),
    ("comfy_api.v0_0_2", "io.Latent.Output", ("tooltip",)),
    ("comfy_api.v0_0_2", "io.Sigmas.Output", ("tooltip",)),
    ("comfy_api.v0_0_2", "io.Sampler.Output", ("tooltip",)),
    ("comfy_api.v0_0_2", "io.Hidden.prompt", None),
    ("comfy_api.v0_0_2", "io.Hidden.unique_id", None),
    ("comfy_api.v0_0_2", "io.NodeOutput", ("ui",)),
]
SEED_MAX = 0xFFFFFFFFFFFFFFFF
QUEUE_BATCH_MAX = 16
STEPS_TOOLTIP = "Number of steps actually run (1-4 is what ADD models are made for). Never rounded to zero."
STRENGTH_TOOLTIP = ("How much of the image is re-generated, continuous in (0, 1]: 1.0 starts from pure noise "
                    "(text to image); 0.5 runs the steps over the lower half of the noise schedule.")
SPACING_TOOLTIP = ("'trailing': the ADD paper / diffusers spacing (4 steps: 999, 749, 499, 249). "
                   "'sai': Stability's 100-step grid, as the built-in SDTurboScheduler (999, 899, 799, 699).")
SAMPLER_TOOLTIP = ("euler_ancestral: the reference sampler (eta 1 = Stability / SDXL-Turbo card); "
                   "euler: deterministic (SD-Turbo card); consistency: full re-noise each step.")
ETA_TOOLTIP = "Ancestral noise for euler_ancestral: 1.0 is the reference, 0 equals euler. Unused by other samplers."


def _steps_input(default=1):
    return io.Int.Input("steps", default=default, min=1, max=schedules.MAX_STEPS, tooltip=STEPS_TOOLTIP)


def schedule_inputs():
    return [
        _steps_input(),
        io.Float.Input("strength", default=1.0, min=0.001, max=1.0, step=0.01, round=False, tooltip=STRENGTH_TOOLTIP),
        io.Combo.Input("spacing", options=list(schedules.SPACINGS), default="trailing", tooltip=SPACING_TOOLTIP),
    ]


def sampler_inputs():
    return [
        io.Combo.Input("sampler", options=list(samplers.SAMPLERS), default="euler_ancestral", tooltip=SAMPLER_TOOLTIP),
        io.Float.Input("eta", default=1.0, min=0.0, max=1.0, step=0.01, round=False, tooltip=ETA_TOOLTIP),
    ]


class ADDTurboScheduler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return turbo_schema(
            node_id="ADDTurboScheduler",
            display_name="ADD Turbo Scheduler",
            description="Guidance-free turbo timesteps -> SIGMAS for SamplerCustom. Steps are the steps run; "
                        "strength is continuous and never rounds to zero steps.",
            inputs=[io.Model.Input("model", tooltip="The turbo model whose noise schedule gives the sigmas."),
                    *schedule_inputs()],
            outputs=[io.Sigmas.Output(tooltip="steps + 1 sigmas, highest first, ending in 0.")],
        )

    @classmethod
    def execute(cls, model, steps, strength, spacing) -> io.NodeOutput:
        return io.NodeOutput(model_sigmas(model, steps, strength, spacing))


class ADDTurboSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return turbo_schema(
            node_id="ADDTurboSampler",
            display_name="ADD Turbo Sampler",
            description="A few-step turbo sampler for SamplerCustom / SamplerCustomAdvanced. Its per-step noise "
                        "comes from a CPU generator keyed by the seed: the same image on CPU and GPU.",
            inputs=sampler_inputs(),
            outputs=[io.Sampler.Output(tooltip="Connect to SamplerCustom's sampler input (use cfg 1.0).")],
        )

    @classmethod
    def execute(cls, sampler, eta) -> io.NodeOutput:
        return io.NodeOutput(turbo_sampler(sampler, eta))


class ADDTurboSample(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return turbo_schema(
            node_id="ADDTurboSample",
            display_name="ADD Turbo Sample",
            description="One-node turbo sampling: exactly one model evaluation per step, no negative prompt and "
                        "no unconditional pass. Image k of a batch equals a single run with seed + k.",
            inputs=[
                io.Model.Input("model", tooltip="A turbo model from ADD Turbo Loader."),
                io.Conditioning.Input("positive", tooltip="The prompt. There is no negative: turbo models run "
                                                          "without classifier-free guidance."),
                io.Latent.Input("latent_image", tooltip="Empty latent for text to image (512x512 is what the "
                                                        "models were trained at), or an encoded image with strength < 1."),
                io.Int.Input("seed", default=0, min=0, max=SEED_MAX, control_after_generate=True,
                             tooltip="Noise seed; image k of a batch uses seed + k."),
                *schedule_inputs(),
                *sampler_inputs(),
                io.Int.Input("queue_batch", default=1, min=1, max=QUEUE_BATCH_MAX, optional=True,
                             tooltip="Most prompts per UNet call. Above 1, with the loader's engine on: prompts "
                                     "waiting in the queue that differ from this one only in this node's seed "
                                     "(queueing a graph several times with a random seed) or in the text of the "
                                     "CLIP Text Encode feeding it are sampled together with it in one UNet call, "
                                     "and take their latents from it when they run. Each image equals its lone "
                                     "run up to float rounding, as images of one batch do. 1: each prompt "
                                     "samples alone."),
            ],
            outputs=[io.Latent.Output(tooltip="The sampled latent; decode with VAE Decode.")],
            hidden=[io.Hidden.prompt, io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, positive, latent_image, seed, steps, strength, spacing, sampler, eta,
                queue_batch=1) -> io.NodeOutput:
        hidden = getattr(cls, "hidden", None)  # None when the node is called outside the executor
        samples, batching = sample_with_queued_twins(model, positive, latent_image["samples"], seed, steps, strength,
                                                     spacing, sampler, eta, queue_batch, getattr(hidden, "prompt", None),
                                                     getattr(hidden, "unique_id", None), latent_image.get("noise_mask"))
        out = {**latent_image, "samples": samples}
        out.pop("noise_mask", None)
        if batching is None:
            return io.NodeOutput(out)
        # The editor reads the structured entry; the text is for people reading the history.
        return io.NodeOutput(out, ui={"text": [describe(batching)], "add_turbo": [batching]})
