"""Carry a per-channel scale along each stage's MB4D residual stream so every blend loses one Mul."""

from __future__ import annotations

import math

import torch
from torch import nn

from efexport.exporter.models.efficientformer import ConvMlp, Downsample, EfficientFormer, MetaBlock4d, Stage
from efexport.exporter.passes.base import ModelPass, PassResult
from efexport.exporter.passes.blend_pool_mixer import PoolBlend
from efexport.exporter.passes.fold_layer_scale import scale_output_channels

# The stored stream stays within this factor of its true value per channel, so an FP16 conversion of the
# artifact (Core ML, TensorRT, a user's own) sees activations at most 16x larger (or smaller) than the model's.
SCALE_BOUND = 16.0


def _folded_mlp(block: MetaBlock4d) -> ConvMlp | None:
    """The block's MLP when it is two plain convolutions (BN fused, ls2 folded); otherwise None."""
    mlp = block.mlp
    plain = isinstance(mlp, ConvMlp) and isinstance(mlp.norm1, nn.Identity) and isinstance(mlp.norm2, nn.Identity)
    return mlp if plain and isinstance(block.ls2, nn.Identity) else None


def _eligible(block: nn.Module) -> bool:
    return (isinstance(block, MetaBlock4d) and isinstance(block.token_mixer, PoolBlend)
            and block.token_mixer_includes_residual and _folded_mlp(block) is not None)


def _factor(tensor: torch.Tensor | None, channels: int) -> torch.Tensor:
    return torch.ones(channels, dtype=torch.float64) if tensor is None else tensor.double().flatten()


def _headroom(scale: torch.Tensor) -> float:
    """How many more halvings (or doublings) the scale can take before some channel leaves the bound."""
    log_bound, log_scale = math.log2(SCALE_BOUND), scale.abs().log2()
    return float(torch.minimum(log_bound - log_scale, log_scale + log_bound).min())


def _scale_input_channels(conv: nn.Conv2d, scale: torch.Tensor) -> None:
    conv.weight.copy_((conv.weight.double() * scale.view(1, -1, 1, 1)).to(conv.weight.dtype))


def _divide_output_channels(conv: nn.Conv2d, scale: torch.Tensor) -> None:
    conv.weight.copy_((conv.weight.double() / scale.view(-1, 1, 1, 1)).to(conv.weight.dtype))
    conv.bias.copy_((conv.bias.double() / scale).to(conv.bias.dtype))


def _rescale_block(block: MetaBlock4d, carried: torch.Tensor, may_carry: bool) -> torch.Tensor:
    """Rewrite one block whose input arrives as ``x / carried``; return the scale its output leaves with."""
    blend: PoolBlend = block.token_mixer
    channels = carried.numel()
    keep, mix = _factor(blend.keep, channels) * carried, _factor(blend.mix, channels) * carried
    dtype = block.mlp.fc1.weight.dtype
    # Dividing the blend's output by keep (or by mix) leaves x (or pool(x)) unmultiplied.
    candidates = [(s, None, mix / s) for s in (keep,)] + [(s, keep / s, None) for s in (mix,)]
    candidates = [c for c in candidates if may_carry and _headroom(c[0]) >= 0]
    if not candidates:  # keep both Muls; restart the carry at the top of the range (or hand over true values)
        restart = torch.full((channels,), SCALE_BOUND if may_carry else 1.0, dtype=torch.float64)
        block.token_mixer = PoolBlend(blend.pool, (keep / restart).to(dtype), (mix / restart).to(dtype))
        _scale_input_channels(block.mlp.fc1, restart)
        _divide_output_channels(block.mlp.fc2, restart)
        return restart
    # blend factors are mostly below 1 and the scale only shrinks: keep the smallest channel as large as possible
    scale, new_keep, new_mix = max(candidates, key=lambda c: float(c[0].abs().min()))
    block.token_mixer = PoolBlend(blend.pool, None if new_keep is None else new_keep.to(dtype),
                                  None if new_mix is None else new_mix.to(dtype))
    _scale_input_channels(block.mlp.fc1, scale)  # fc1 must see the true blend output
    _divide_output_channels(block.mlp.fc2, scale)  # the residual sum leaves divided by scale too
    return scale


def _stream_producer(model: EfficientFormer, stage: Stage) -> nn.Module | None:
    """The layer whose per-channel output starts a stage's stream (a ReLU after it is fine: scales are > 0)."""
    if isinstance(stage.downsample, Downsample):
        return stage.downsample.norm if isinstance(stage.downsample.norm, nn.BatchNorm2d) else stage.downsample.conv
    if stage is model.stages[0]:
        return model.stem.norm2 if isinstance(model.stem.norm2, nn.BatchNorm2d) else model.stem.conv2
    return None


class CarryMixerScale(ModelPass):
    """Divide each MB4D block's output by one of its blend factors and let the next layer undo it.

    Before (per block, after blend-pool-mixer)::     After::

        x --+--> Mul(keep) -----------> Add          r --+-----------------------> Add        r = x / s
            +--> AvgPool --> Mul(mix) ---^               +--> AvgPool --> Mul(mix') --^
        -> fc1 -> GELU -> fc2 -> Add(residual)       -> fc1' -> GELU -> fc2' -> Add(residual)

    The stream leaves the block as ``y / s`` with ``s = keep * s_in`` (or ``mix * s_in``, which removes
    the other Mul); ``fc1'`` takes ``s`` into its input channels, ``fc2'`` divides its output rows by it,
    and the next block, or the next stage's downsample convolution, starts from ``s``. Pooling is
    per-channel linear, so it commutes with the scale; zero padding stays zero.

    The blend factors are mostly below 1, so ``s`` shrinks block by block. Each stage's stream therefore
    starts at ``s = 16`` (the stem's or downsample's output rows divided by 16; positive, so the stem's
    ReLU commutes) and may fall to 1/16: the stored stream stays within 16x of the true one either way
    (FP16 headroom for any later conversion). A block whose scale would leave that range, and the block
    before the 4D->3D switch (LayerNorm is not scale-equivariant per channel), keeps both Muls with the
    carried scale folded into them. Needs fuse-conv-bn, fold-layer-scale and blend-pool-mixer first.
    """

    name = "carry-mixer-scale"

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> PassResult:
        if not isinstance(model, EfficientFormer):
            return PassResult(changed=False)
        carried_blocks = 0
        stages = list(model.stages)
        for index, stage in enumerate(stages):
            following = stages[index + 1] if index + 1 < len(stages) else None
            # scaling a convolution's input channels is valid before or after its BN is fused
            absorber = following.downsample.conv if following is not None and isinstance(
                following.downsample, Downsample) else None
            producer = _stream_producer(model, stage)
            blocks = list(stage.blocks)
            end = next((i for i, b in enumerate(blocks) if not _eligible(b)), len(blocks))
            hands_to_absorber = end == len(blocks) and absorber is not None
            if producer is None or end < (1 if hands_to_absorber else 2):
                continue  # nothing could carry a scale here
            if any(b.token_mixer.keep is None or b.token_mixer.mix is None for b in blocks[:end]):
                continue  # carried already
            carried = torch.full((blocks[0].mlp.fc1.in_channels,), SCALE_BOUND, dtype=torch.float64)
            scale_output_channels(producer, 1 / carried)
            for position, block in enumerate(blocks[:end]):
                may_carry = position < end - 1 or hands_to_absorber
                carried = _rescale_block(block, carried, may_carry)
                carried_blocks += int(block.token_mixer.keep is None or block.token_mixer.mix is None)
            if hands_to_absorber:
                _scale_input_channels(absorber, carried)
        return PassResult(changed=carried_blocks > 0, rewrites=carried_blocks)
