"""One-step codec-conditioned diffusion core shared by the codec simulator (Eq. 5, App. B.2) and the
S3Diff-style SR backbone (§3.2.3, App. B.3).

Pipeline (SD-Turbo / S3Diff): image -> VAE encoder (+LoRA) -> latent mean -> UNet2DConditionModel (+LoRA, codec
FiLM in every ResnetBlock2D, codec embedding added to the time embedding) conditioned on the CLIP embedding of
``CodecCondition.prompt()`` at the last training timestep -> x0 in one DDIM step -> VAE decoder -> image.
Images are in [0, 1] at the interface; internally the VAE works in [-1, 1].

The frozen base (VAE, UNet, text encoder) is loaded with the components' own ``from_pretrained`` from a diffusers
folder or hub id with SD-Turbo's layout. Only the trainable part (LoRA, FiLM/time heads) is in ``state_dict()``,
``save_pretrained`` and checkpoints; loading it is strict.
"""
import json
import os
import re
from collections import OrderedDict
from contextlib import nullcontext
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from vrpsr_plugin.archs.checkpoint import load_state_dict_strict, read_checkpoint
from vrpsr_plugin.archs.codec_embedding import CodecEmbedding
from vrpsr_plugin.archs.condition_heads import check_condition
from vrpsr_plugin.codecs.condition import CONDITION_CODECS, CodecCondition

# LoRA targets of S3Diff (its VAE adapter covers the encoder only: the decoder stays the pretrained one).
UNET_LORA_TARGETS = ['to_k', 'to_q', 'to_v', 'to_out.0', 'conv', 'conv1', 'conv2', 'conv_shortcut', 'conv_out',
                     'proj_in', 'proj_out', 'ff.net.2', 'ff.net.0.proj']
VAE_LORA_TARGETS = r'^encoder\..*(conv1|conv2|conv_in|conv_shortcut|conv|conv_out|to_k|to_q|to_v|to_out\.0)$'
TRAINABLE_PREFIXES = ('film_trunk.', 'film_heads.', 'time_head.', 'deg_modulation.')
TRAINABLE_FILE = 'trainable.safetensors'
CONFIG_FILE = 'config.json'
DTYPES = {None: None, 'fp32': None, 'float32': None, 'bf16': torch.bfloat16, 'bfloat16': torch.bfloat16,
          'fp16': torch.float16, 'float16': torch.float16}
_PROMPT_RE = re.compile(r'(\S+)\s+([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*bpp')


def straight_through_clamp(x: torch.Tensor, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    """Clamp in the forward pass, identity gradient in the backward pass, so saturated pixels still pass
    gradients to the input (the SR model trains through the simulator, §3.3.3)."""
    return x + (x.clamp(low, high) - x).detach()


def check_image_and_condition(x: torch.Tensor, cond: torch.Tensor, num_scalars: int) -> None:
    """Raise ValueError unless ``x`` is B x 3 x H x W float; then check ``cond`` with
    :func:`~vrpsr_plugin.archs.condition_heads.check_condition`."""
    if not torch.is_tensor(x) or x.dim() != 4 or x.shape[1] != 3 or not x.is_floating_point():
        raise ValueError(f'x must be a float B x 3 x H x W tensor, got '
                         f'{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}')
    check_condition(cond, x, num_scalars)


def conditions_from_tensor(cond: torch.Tensor, codecs: Sequence[str]) -> List[CodecCondition]:
    """Invert ``CodecCondition.collate``: codec = argmax of the one-hot part, bpp = last column."""
    onehot, bpp = cond[:, :-1].detach().float().cpu(), cond[:, -1].detach().float().cpu()
    if (onehot.max(dim=1).values <= 0).any():
        raise ValueError('cond has a row without a codec in its one-hot part; cannot build the prompt (Eq. 5)')
    return [CodecCondition(codecs[int(i)], float(b)) for i, b in zip(onehot.argmax(dim=1), bpp)]


def check_prompts(prompts: Sequence[str], conditions: Sequence[CodecCondition]) -> None:
    """Raise ValueError unless each prompt names the codec and the bpp (to 4 decimals) of its condition."""
    if isinstance(prompts, str) or len(prompts) != len(conditions):
        raise ValueError(f'prompts must be a list of {len(conditions)} strings, got {prompts!r}')
    for i, (prompt, condition) in enumerate(zip(prompts, conditions)):
        match = _PROMPT_RE.search(prompt) if isinstance(prompt, str) else None
        if match is None:
            raise ValueError(f'prompt {i} {prompt!r} does not contain "<codec> <bpp> bpp" (Eq. 5)')
        codec, bpp = match.group(1), float(match.group(2))
        if codec != condition.codec or abs(bpp - condition.bpp) > 1e-4 + 1e-3 * condition.bpp:
            raise ValueError(f'prompt {i} {prompt!r} disagrees with cond ({condition.codec}, '
                             f'{condition.bpp:.4f} bpp)')


class _FilmContext:
    """The condition of the current UNet call (FiLM parameters flattened, time-embedding offset), set just
    before the call and read once by the time-embedding hook; never deep-copied (it holds autograd tensors)."""

    def __init__(self) -> None:
        self.film: Optional[torch.Tensor] = None
        self.time: Optional[torch.Tensor] = None
        self.base_width, self.base_dtype = 0, torch.float32

    def __deepcopy__(self, memo: Dict) -> '_FilmContext':
        return _FilmContext()


def _time_hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
    """Forward hook on the UNet's time embedding: add the codec embedding head's output (§3.2.3) and append the
    flattened FiLM parameters. The time embedding ``temb`` is an argument of every (checkpointed) ResnetBlock2D
    call, so a block recomputed during backward reads the FiLM parameters of its own call, not those of a later
    call with another condition."""
    context = module._vrpsr_time
    film, time, context.film, context.time = context.film, context.time, None, None  # consumed by this call
    context.base_width, context.base_dtype = output.shape[-1], output.dtype
    if time is not None:
        output = output + time.to(output.dtype)
    # the FiLM part keeps its precision (fp32) in the concatenation; the pre-hook restores the base dtype
    return output if film is None else torch.cat([output.to(film.dtype), film], dim=-1)


def _film_pre_hook(block: nn.Module, args: Tuple, kwargs: Dict) -> Tuple[Tuple, Dict]:
    """Forward pre-hook on a ResnetBlock2D: cut this block's (gamma, beta) out of ``temb`` for its norm2 hook
    and hand the block the plain time embedding."""
    context, start, channels = block._vrpsr_film
    args, kwargs = list(args), dict(kwargs)
    temb = kwargs['temb'] if 'temb' in kwargs else args[1]
    if temb is not None and temb.shape[-1] > context.base_width:
        block.norm2._vrpsr_params = temb[:, context.base_width + start:context.base_width + start + 2 * channels
                                         ].chunk(2, dim=1)
        temb = temb[:, :context.base_width].to(context.base_dtype)
    if 'temb' in kwargs:
        kwargs['temb'] = temb
    else:
        args[1] = temb
    return tuple(args), kwargs


def _film_release_hook(block: nn.Module, args: Tuple, output: torch.Tensor) -> None:
    """Forward hook on a ResnetBlock2D: drop the (gamma, beta) its norm2 used."""
    block.norm2._vrpsr_params = None


def _film_hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
    """Forward hook on a ResnetBlock2D's norm2: h * (1 + gamma) + beta (identity when no condition is set)."""
    params = getattr(module, '_vrpsr_params', None)
    if params is None:
        return output
    gamma, beta = params
    return output * (1 + gamma.to(output.dtype)[:, :, None, None]) + beta.to(output.dtype)[:, :, None, None]


class OneStepCodecDiffusion(nn.Module):
    """SD-Turbo-style one-step model conditioned on the codec prompt and embedding (Eq. 5, App. B.2/B.3).

    Args:
        pretrained_model_name_or_path: diffusers folder or hub id with SD-Turbo's layout.
        lora_rank / lora_rank_vae: LoRA ranks of the UNet / VAE encoder (S3Diff: 32 / 16); 0 disables LoRA.
        codecs: one-hot order of ``cond``. film / time_embedding: codec FiLM in every UNet ResnetBlock2D /
            codec embedding added to the time embedding; both zero-initialised. use_prompt: False feeds the
            empty prompt (ablation, Table 3 (c)).
        timestep: the one step's timestep (default: last training timestep, 999).
        sample_posterior: sample the VAE latent in training mode (eval always uses the mean).
        gradient_checkpointing, autocast_dtype ('bf16'/'fp16'), enable_xformers, base_dtype: GPU options.
        tile_size / tile_overlap: inputs larger than ``tile_size`` run in overlapping tiles, blended linearly.
        prompt_cache_size: CLIP embeddings kept (CPU LRU, see ``encode_prompts``); 0 disables the cache.
        train_unet_conv_in: the UNet's conv_in is trained (and saved) in full, as S3Diff does.
    """
    codec_aware = True
    extra_scalars = 0  # condition scalars after [one-hot(codec), bpp] (a subclass with a richer condition sets it)

    def __init__(self, pretrained_model_name_or_path: str, lora_rank: int = 32, lora_rank_vae: Optional[int] = 16,
                 lora_alpha: Optional[float] = None, codecs: Sequence[str] = CONDITION_CODECS, film: bool = True,
                 time_embedding: bool = True, film_hidden: int = 256, embed_dim_per_scalar: int = 64,
                 use_prompt: bool = True, timestep: Optional[int] = None, sample_posterior: bool = False,
                 gradient_checkpointing: bool = False, autocast_dtype: Optional[str] = None,
                 enable_xformers: bool = False, base_dtype: Optional[str] = None, tile_size: Optional[int] = None,
                 tile_overlap: int = 64, prompt_cache_size: int = 256, revision: Optional[str] = None,
                 variant: Optional[str] = None, train_unet_conv_in: bool = False) -> None:
        super().__init__()
        self.config = dict(pretrained_model_name_or_path=str(pretrained_model_name_or_path), lora_rank=lora_rank,
                           lora_rank_vae=lora_rank_vae, lora_alpha=lora_alpha, codecs=list(codecs), film=film,
                           time_embedding=time_embedding, film_hidden=film_hidden,
                           embed_dim_per_scalar=embed_dim_per_scalar, use_prompt=use_prompt, timestep=timestep,
                           sample_posterior=sample_posterior, gradient_checkpointing=gradient_checkpointing,
                           autocast_dtype=autocast_dtype, enable_xformers=enable_xformers, base_dtype=base_dtype,
                           tile_size=tile_size, tile_overlap=tile_overlap, prompt_cache_size=prompt_cache_size,
                           revision=revision, variant=variant, train_unet_conv_in=train_unet_conv_in)
        self.extra_trainable = ('unet.conv_in.',) if train_unet_conv_in else ()
        if autocast_dtype not in DTYPES or base_dtype not in DTYPES:
            raise ValueError(f'autocast_dtype/base_dtype must be one of {sorted(k for k in DTYPES if k)} or None')
        if tile_size is not None and not 0 <= tile_overlap < tile_size:
            raise ValueError(f'need 0 <= tile_overlap < tile_size, got {tile_overlap}, {tile_size}')
        self.codecs = tuple(codecs)
        self.use_prompt, self.sample_posterior = use_prompt, sample_posterior
        self.autocast_dtype = DTYPES[autocast_dtype]
        self.tile_size, self.tile_overlap = tile_size, tile_overlap
        self.prompt_cache_size = prompt_cache_size

        # Imported here: diffusers/transformers/peft take seconds to import (registration must stay fast).
        from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
        from diffusers.models.resnet import ResnetBlock2D
        from peft import LoraConfig
        from transformers import CLIPTextModel, CLIPTokenizer
        path = str(pretrained_model_name_or_path)
        load = dict(revision=revision, variant=variant, torch_dtype=DTYPES[base_dtype])
        self.tokenizer = CLIPTokenizer.from_pretrained(path, subfolder='tokenizer', revision=revision)
        self.text_encoder = CLIPTextModel.from_pretrained(path, subfolder='text_encoder', **load)
        self.vae = AutoencoderKL.from_pretrained(path, subfolder='vae', **load)
        self.unet = UNet2DConditionModel.from_pretrained(path, subfolder='unet', **load)
        # DDIM with eta=0 gives the deterministic x0 prediction of the single step (unclipped: the latent is
        # not bounded to [-1, 1]; DDIM's default would clip it when the config does not say otherwise).
        self.scheduler = DDIMScheduler.from_pretrained(path, subfolder='scheduler', revision=revision,
                                                       clip_sample=False, thresholding=False)
        self.scheduler.set_timesteps(1)
        self.timestep = self.scheduler.config.num_train_timesteps - 1 if timestep is None else int(timestep)
        for model in (self.text_encoder, self.vae, self.unet):
            model.requires_grad_(False)
        self.unet.conv_in.requires_grad_(train_unet_conv_in)
        self.text_encoder.eval()

        alpha = lora_alpha
        if lora_rank:
            self.unet.add_adapter(LoraConfig(r=lora_rank, lora_alpha=alpha or lora_rank, init_lora_weights='gaussian',
                                             target_modules=UNET_LORA_TARGETS))
        if lora_rank_vae:
            self.vae.add_adapter(LoraConfig(r=lora_rank_vae, lora_alpha=alpha or lora_rank_vae,
                                            init_lora_weights='gaussian', target_modules=VAE_LORA_TARGETS))

        self.embedding = CodecEmbedding(num_scalars=len(self.codecs) + 1 + self.extra_scalars,
                                        dim_per_scalar=embed_dim_per_scalar)
        self._film_context = _FilmContext()
        self.film_trunk = None
        self.film_heads = nn.ModuleDict()
        self.time_head = None
        if film or time_embedding:
            self.film_trunk = nn.Sequential(nn.Linear(self.embedding.out_dim, film_hidden), nn.SiLU(),
                                            nn.Linear(film_hidden, film_hidden), nn.SiLU())
        if film:
            start = 0
            for name, block in self.unet.named_modules():
                if isinstance(block, ResnetBlock2D):
                    channels = block.norm2.num_channels
                    self.film_heads[name.replace('.', '_')] = self._zero_linear(film_hidden, 2 * channels)
                    block._vrpsr_film = (self._film_context, start, channels)
                    start += 2 * channels
                    block.register_forward_pre_hook(_film_pre_hook, with_kwargs=True)
                    block.register_forward_hook(_film_release_hook)
                    block.norm2.register_forward_hook(_film_hook)
            if not self.film_heads:
                raise ValueError(f'{path}: the UNet has no ResnetBlock2D to condition')
        if time_embedding:
            self.time_head = self._zero_linear(film_hidden, self.unet.time_embedding.linear_2.out_features)
        if film or time_embedding:
            self.unet.time_embedding._vrpsr_time = self._film_context
            self.unet.time_embedding.register_forward_hook(_time_hook)

        if gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
            self.vae.enable_gradient_checkpointing()
        if enable_xformers:
            try:
                import xformers  # noqa: F401
            except ImportError as err:
                raise ImportError('enable_xformers=True but xformers is not installed; the default SDPA '
                                  'attention needs no option') from err
            self.unet.enable_xformers_memory_efficient_attention()
            self.vae.enable_xformers_memory_efficient_attention()

        self.vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.size_multiple = self.vae_scale * 2 ** (len(self.unet.config.block_out_channels) - 1)
        self._prompt_cache: 'OrderedDict[str, torch.Tensor]' = OrderedDict()
        self.prompt_cache_stats = {'hits': 0, 'misses': 0}
        self._base_keys = frozenset(k for k in nn.Module.state_dict(self) if not self.is_trainable_key(k))
        self._load_prefix = ''
        self.register_state_dict_post_hook(OneStepCodecDiffusion._drop_base_keys)
        self.register_load_state_dict_pre_hook(OneStepCodecDiffusion._reject_base_keys)
        self.register_load_state_dict_post_hook(OneStepCodecDiffusion._forgive_base_keys)

    @staticmethod
    def _zero_linear(in_features: int, out_features: int) -> nn.Linear:
        """Last layer of a condition head, zero-initialised (App. B.3)."""
        layer = nn.Linear(in_features, out_features)
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)
        return layer

    @property
    def computes_in_fp16(self) -> bool:
        """True when the forward runs in float16 (autocast or base weights): training then scales the loss."""
        return torch.float16 in (self.autocast_dtype, self.unet.dtype)

    # ----------------------------------------------------------------- trainable part / checkpoints
    def is_trainable_key(self, key: str) -> bool:
        """True for LoRA and condition-head weights (and ``unet.conv_in`` with ``train_unet_conv_in``): the part
        that is trained, saved and loaded."""
        return '.lora_' in key or key.startswith(TRAINABLE_PREFIXES + self.extra_trainable)

    def trainable_parameters(self) -> List[nn.Parameter]:
        """The parameters an optimizer should update (LoRA + condition heads)."""
        return [p for n, p in self.named_parameters() if self.is_trainable_key(n)]

    def requires_grad_(self, requires_grad: bool = True) -> 'OneStepCodecDiffusion':
        """Switch gradients of the trainable part only: the pretrained base stays frozen (it is never saved)."""
        for name, param in self.named_parameters():
            param.requires_grad_(requires_grad and self.is_trainable_key(name))
        return self

    def _drop_base_keys(self, state: Dict, prefix: str, local_metadata: Dict) -> None:
        for key in self._base_keys:
            state.pop(prefix + key, None)

    def _reject_base_keys(self, state: Dict, prefix: str, local_metadata: Dict, strict: bool, missing: List,
                          unexpected: List, errors: List) -> None:
        self._load_prefix = prefix
        for key in [k for k in state if k.startswith(prefix) and k[len(prefix):] in self._base_keys]:
            state.pop(key)
            unexpected.append(key)  # the frozen base comes from pretrained_model_name_or_path, never a checkpoint

    def _forgive_base_keys(self, incompatible: Any) -> None:
        prefix = self._load_prefix
        incompatible.missing_keys[:] = [k for k in incompatible.missing_keys
                                        if not (k.startswith(prefix) and k[len(prefix):] in self._base_keys)]

    @property
    def arch_spec(self) -> Dict[str, Any]:
        """``{'type': registry name, **config}``: what rebuilds this net (the base is named by
        ``pretrained_model_name_or_path``); stored with every checkpoint so ``inference.load_model`` needs no
        option file."""
        return {'type': type(self).__name__, **self.config}

    def save_pretrained(self, directory: str) -> None:
        """Write the trainable part (``trainable.safetensors``, its metadata ``arch`` = :attr:`arch_spec`) and
        ``config.json`` (which names the base), each atomically."""
        from safetensors.torch import save
        from vrpsr_plugin.atomic_io import write_bytes, write_json
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        write_bytes(os.path.join(directory, TRAINABLE_FILE), save(state, metadata={'arch': json.dumps(self.arch_spec)}))
        write_json(os.path.join(directory, CONFIG_FILE), self.arch_spec)

    @classmethod
    def from_pretrained(cls, directory: str, **overrides: Any) -> 'OneStepCodecDiffusion':
        """Rebuild from ``save_pretrained`` output: base from the config's path, trainable part loaded strictly."""
        with open(os.path.join(directory, CONFIG_FILE)) as f:
            config = json.load(f)
        saved_type = config.pop('type', None)
        if saved_type != cls.__name__:
            raise ValueError(f'{directory} holds a {saved_type}, not a {cls.__name__}')
        model = cls(**{**config, **overrides})
        path = os.path.join(directory, TRAINABLE_FILE)
        load_state_dict_strict(model, read_checkpoint(path), source=path)
        return model

    # ----------------------------------------------------------------- prompts
    def prompts_for(self, cond: torch.Tensor, prompts: Optional[Sequence[str]] = None) -> List[str]:
        """The Eq. 5 prompts of ``cond`` (or ``prompts``, after checking that they agree with ``cond``)."""
        conditions = conditions_from_tensor(cond, self.codecs)
        if prompts is None:
            return [c.prompt() for c in conditions]
        check_prompts(prompts, conditions)
        return list(prompts)

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """CLIP text embeddings (B x L x D) of ``prompts``, on the text encoder's device.

        The text encoder is frozen, so embeddings are cached per prompt in an LRU of ``prompt_cache_size`` entries
        kept on the CPU: the accelerator only ever holds the current batch. Training bpps are continuous (Eq. 5
        prompts carry 4 decimals), so the cache hits mostly at inference, where tiles, frames and clips share one
        rate; ``prompt_cache_stats`` counts hits and misses (per distinct prompt of a batch).
        """
        device = next(self.text_encoder.parameters()).device
        unique = list(dict.fromkeys(prompts))
        todo = [p for p in unique if p not in self._prompt_cache]
        self.prompt_cache_stats['hits'] += len(unique) - len(todo)
        self.prompt_cache_stats['misses'] += len(todo)
        found = {p: self._prompt_cache[p].to(device, non_blocking=True) for p in unique if p not in todo}
        if todo:
            ids = self.tokenizer(todo, padding='max_length', max_length=self.tokenizer.model_max_length,
                                 truncation=True, return_tensors='pt').input_ids.to(device)
            found.update(zip(todo, self.text_encoder(ids)[0]))
        for p in unique:
            self._prompt_cache[p] = found[p].to('cpu', copy=True) if p in todo else self._prompt_cache[p]
            self._prompt_cache.move_to_end(p)
        while len(self._prompt_cache) > self.prompt_cache_size:
            self._prompt_cache.popitem(last=False)
        return torch.stack([found[p] for p in prompts])

    # ----------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor, cond: torch.Tensor, prompts: Optional[Sequence[str]] = None) -> torch.Tensor:
        """x: B x 3 x H x W in [0, 1]; cond: B x (len(codecs)+1); returns the one-step output, same size."""
        check_image_and_condition(x, cond, len(self.codecs) + 1 + self.extra_scalars)
        prompts = self.prompts_for(cond, prompts)
        text = self.encode_prompts(prompts if self.use_prompt else [''] * len(prompts))
        if self.tile_size is not None and max(x.shape[-2:]) > self.tile_size:
            return self._tiled(x, cond, text)
        return self._one_step(x, cond, text)

    def _set_condition(self, cond: torch.Tensor) -> None:
        """FiLM parameters (concatenated in ResnetBlock2D order) and time offset of ``cond`` for the next UNet
        call; the time-embedding hook consumes them."""
        context = self._film_context
        context.film = context.time = None
        if self.film_trunk is None:
            return
        hidden = self.film_trunk(self.embedding(cond.float()))
        if self.film_heads:
            context.film = torch.cat([head(hidden) for head in self.film_heads.values()], dim=1)
        if self.time_head is not None:
            context.time = self.time_head(hidden)

    def _one_step(self, x: torch.Tensor, cond: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        pad_h, pad_w = -height % self.size_multiple, -width % self.size_multiple
        mode = 'reflect' if pad_h < height and pad_w < width else 'replicate'
        z = F.pad(x * 2 - 1, (0, pad_w, 0, pad_h), mode=mode) if pad_h or pad_w else x * 2 - 1
        base_dtype = self.unet.dtype
        autocast = (torch.autocast(device_type=x.device.type, dtype=self.autocast_dtype)
                    if self.autocast_dtype is not None else nullcontext())
        self._set_condition(cond)
        with autocast:
            posterior = self.vae.encode(z.to(base_dtype)).latent_dist
            latent = posterior.sample() if self.sample_posterior and self.training else posterior.mode()
            latent = latent * self.vae.config.scaling_factor
            timesteps = torch.full((x.shape[0],), self.timestep, device=x.device, dtype=torch.long)
            pred = self.unet(latent, timesteps, encoder_hidden_states=text.to(latent.dtype)).sample
            # x0 = (z_t - sqrt(1 - a_t) eps) / sqrt(a_t) amplifies eps ~15x at t=999: computed in fp32
            x0 = self.scheduler.step(pred.float(), self.timestep, latent.float()).pred_original_sample
            out = self.vae.decode((x0 / self.vae.config.scaling_factor).to(latent.dtype)).sample
        out = (out.float()[..., :height, :width] + 1) / 2
        return straight_through_clamp(out)

    def _tiled(self, x: torch.Tensor, cond: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Overlapping tiles of ``tile_size``, blended with linear ramps over the overlap."""
        height, width = x.shape[-2:]
        size, overlap = self.tile_size, self.tile_overlap
        out = x.new_zeros(x.shape)
        weight = x.new_zeros((1, 1, height, width))
        for top in _tile_starts(height, size, overlap):
            for left in _tile_starts(width, size, overlap):
                tile = x[..., top:top + size, left:left + size]
                ramp = _ramp(tile.shape[-2], overlap, top > 0, top + size < height, x)[:, None] * \
                    _ramp(tile.shape[-1], overlap, left > 0, left + size < width, x)[None, :]
                out[..., top:top + size, left:left + size] += self._one_step(tile, cond, text) * ramp
                weight[..., top:top + size, left:left + size] += ramp
        return out / weight


def _tile_starts(length: int, size: int, overlap: int) -> List[int]:
    if length <= size:
        return [0]
    stride = size - overlap
    starts = list(range(0, length - size, stride))
    return starts + [length - size]


def _ramp(length: int, overlap: int, rise: bool, fall: bool, like: torch.Tensor) -> torch.Tensor:
    """1-D blending weights: linear from ~0 to 1 over ``overlap`` at the sides that overlap a neighbour."""
    w = torch.ones(length, dtype=like.dtype, device=like.device)
    if overlap > 0:
        ramp = torch.arange(1, overlap + 1, dtype=like.dtype, device=like.device) / (overlap + 1)
        n = min(overlap, length)
        if rise:
            w[:n] = torch.minimum(w[:n], ramp[:n])
        if fall:
            w[-n:] = torch.minimum(w[-n:], ramp[:n].flip(0))
    return w
