"""Build a randomly initialised Stable-Diffusion folder with SD-Turbo's layout, fully offline (§3.2.2, App. B.2).

``build_sd_folder(path, 'tiny')`` writes ``scheduler/ text_encoder/ tokenizer/ unet/ vae/`` (+ ``model_index.json``)
with the components' own ``save_pretrained``; the simulators then load it with the same ``from_pretrained`` code
that loads ``stabilityai/sd-turbo``. ``'full'`` uses SD-Turbo's shapes (SD 2.1 UNet and VAE, OpenCLIP-H text
tower) for GPU benchmarks (random weights: no download). The tokenizer is a byte-level CLIP BPE vocabulary
without merges, made from scratch (hub downloads are unavailable here), so it tokenises any prompt.
"""
import argparse
import os
from typing import Dict, Optional

import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
from tokenizers import pre_tokenizers
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

# SD-Turbo's scheduler/scheduler_config.json (an SD 2.1 scaled-linear schedule, trailing spacing).
SCHEDULER_CONFIG: Dict = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule='scaled_linear', prediction_type='epsilon', timestep_spacing='trailing',
                              steps_offset=1, interpolation_type='linear', use_karras_sigmas=False)

CONFIGS: Dict[str, Dict[str, Dict]] = {
    'tiny': dict(
        unet=dict(sample_size=16, block_out_channels=(32, 64), layers_per_block=1,
                  down_block_types=('CrossAttnDownBlock2D', 'DownBlock2D'),
                  up_block_types=('UpBlock2D', 'CrossAttnUpBlock2D'), cross_attention_dim=32,
                  attention_head_dim=(2, 4), norm_num_groups=8, use_linear_projection=True),
        vae=dict(block_out_channels=(16, 32, 32), layers_per_block=1, latent_channels=4, norm_num_groups=8,
                 down_block_types=('DownEncoderBlock2D',) * 3, up_block_types=('UpDecoderBlock2D',) * 3,
                 sample_size=64, scaling_factor=0.18215),
        text=dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2,
                  projection_dim=32, max_position_embeddings=77, hidden_act='gelu')),
    'full': dict(
        unet=dict(sample_size=64, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                  down_block_types=('CrossAttnDownBlock2D',) * 3 + ('DownBlock2D',),
                  up_block_types=('UpBlock2D',) + ('CrossAttnUpBlock2D',) * 3, cross_attention_dim=1024,
                  attention_head_dim=(5, 10, 20, 20), use_linear_projection=True),
        vae=dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                 down_block_types=('DownEncoderBlock2D',) * 4, up_block_types=('UpDecoderBlock2D',) * 4,
                 sample_size=768, scaling_factor=0.18215),
        text=dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=23,
                  projection_dim=512, max_position_embeddings=77, hidden_act='gelu')),
}


def byte_level_tokenizer(model_max_length: int = 77) -> CLIPTokenizer:
    """A CLIP tokenizer made without files: every byte symbol (and its end-of-word form) is a token, no merges."""
    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = symbols + [s + '</w>' for s in symbols] + ['<|startoftext|>', '<|endoftext|>']
    vocab = {tok: i for i, tok in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=model_max_length)


def build_sd_folder(path: str, config: str = 'tiny', seed: int = 0, dtype: Optional[torch.dtype] = None) -> str:
    """Write a random SD-Turbo-layout diffusers folder at ``path`` and return ``path``."""
    if config not in CONFIGS:
        raise ValueError(f'unknown config {config!r}; choose one of {sorted(CONFIGS)}')
    spec = CONFIGS[config]
    torch.manual_seed(seed)
    tokenizer = byte_level_tokenizer()
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                                eos_token_id=tokenizer.eos_token_id,
                                                pad_token_id=tokenizer.pad_token_id, **spec['text']))
    unet = UNet2DConditionModel(in_channels=4, out_channels=4, **spec['unet'])
    vae = AutoencoderKL(in_channels=3, out_channels=3, **spec['vae'])
    if dtype is not None:
        for model in (text_encoder, unet, vae):
            model.to(dtype)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=EulerDiscreteScheduler(**SCHEDULER_CONFIG), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    os.makedirs(path, exist_ok=True)
    pipe.save_pretrained(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('path')
    parser.add_argument('--config', default='tiny', choices=sorted(CONFIGS))
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    print(build_sd_folder(args.path, args.config, args.seed))


if __name__ == '__main__':
    main()
