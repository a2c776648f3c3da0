"""The diffusion codec simulator f_theta(X', c) of Eq. 5 (§3.2.2, App. B.2), registered for BasicSR."""
from basicsr.utils.registry import ARCH_REGISTRY

from vrpsr_plugin.archs.one_step_diffusion import OneStepCodecDiffusion


@ARCH_REGISTRY.register()
class DiffusionCodecSimulator(OneStepCodecDiffusion):
    """Rate-target codec simulator: the SR output X' and the condition c = (codec, bpp) in, the simulated decoded
    image X^' out (Eq. 4/5). A one-step SD-Turbo model with LoRA and codec FiLM; see ``OneStepCodecDiffusion``.

    Option file: ``network_g: {type: DiffusionCodecSimulator, pretrained_model_name_or_path: stabilityai/sd-turbo,
    lora_rank: 32, lora_rank_vae: 16}``.
    """
