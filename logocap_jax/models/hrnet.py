"""HRNet backbone as configured by LOGO-CAP (paper Sec. 3.1).

Submodule names follow the official state-dict keys (dots included), so that a converted
checkpoint maps one-to-one: Flax path ('stage3.2', 'fuse_layers.1.0.0.0', 'kernel') is the
PyTorch key 'stage3.2.fuse_layers.1.0.0.0.weight'.
"""

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from logocap_jax.models import remat
from logocap_jax.models.layers import Dtype, batch_norm, conv, relu, upsample_bilinear


def _conv3(module: nn.Module, features: int, **kwargs) -> nn.Conv:
    """A 3x3 convolution in `module`'s compute dtype and convolution form."""
    return conv(features, 3, dtype=module.dtype, form=module.conv_form, **kwargs)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity residual (input and output widths are equal)."""

    width: int
    dtype: Dtype = jnp.float32
    conv_form: str = "native"

    @nn.compact
    def __call__(self, x, *, train: bool):
        y = _conv3(self, self.width, name="conv1")(x)
        y = relu(batch_norm(train=train, dtype=self.dtype, name="bn1")(y))
        y = _conv3(self, self.width, name="conv2")(y)
        y = batch_norm(train=train, dtype=self.dtype, name="bn2")(y)
        return relu(y + x)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 (x4 expansion) residual block of layer1.

    Its 1x1 convolutions stay convolutions: as matrix products XLA:CPU fuses the four blocks,
    3x3 convolutions included, into one YNNPACK graph that ran 2x slower (layer1 of W32 at
    512 x 512, flip batch: 270 ms against 135 ms).
    """

    planes: int
    downsample: bool = False
    dtype: Dtype = jnp.float32
    conv_form: str = "native"

    @nn.compact
    def __call__(self, x, train: bool):
        norm = lambda name: batch_norm(train=train, dtype=self.dtype, name=name)
        pointwise = functools.partial(
            conv, kernel_size=1, dtype=self.dtype, pointwise_as_dot=False, form=self.conv_form
        )
        y = relu(norm("bn1")(pointwise(self.planes, name="conv1")(x)))
        y = relu(norm("bn2")(_conv3(self, self.planes, name="conv2")(y)))
        y = norm("bn3")(pointwise(4 * self.planes, name="conv3")(y))
        if self.downsample:
            x = norm("downsample.1")(pointwise(4 * self.planes, name="downsample.0")(x))
        return relu(y + x)


def concatenate_branches(branches):
    """The official HRNet feature map: every branch upsampled (bilinear) to the first branch's
    resolution and concatenated, [B, H/4, W/4, sum(stage_widths)]."""
    upsampled = [upsample_bilinear(branch, 2**i) for i, branch in enumerate(branches)]
    return jnp.concatenate(upsampled, axis=-1)


def _add_upsampled(total, x, factor: int):
    """total + x upsampled `factor` times (nearest), without materialising the upsampled x.

    Args:
      total: [B, H, W, C]; x: [B, H / factor, W / factor, C].
    """
    batch, height, width, channels = total.shape
    blocks = total.reshape(batch, height // factor, factor, width // factor, factor, channels)
    return (blocks + x[:, :, None, :, None, :]).reshape(total.shape)


class HighResolutionModule(nn.Module):
    """Parallel branches of BasicBlocks followed by the all-to-all fuse.

    Attributes:
      widths: channels of each branch, from the highest resolution down.
      num_blocks: BasicBlocks per branch.
    """

    widths: Sequence[int]
    num_blocks: int
    dtype: Dtype = jnp.float32
    conv_form: str = "native"

    @nn.compact
    def __call__(self, branches, train: bool):
        branches = list(branches)
        for b, width in enumerate(self.widths):
            for k in range(self.num_blocks):
                branches[b] = BasicBlock(
                    width, dtype=self.dtype, conv_form=self.conv_form, name=f"branches.{b}.{k}"
                )(branches[b], train=train)
        return [relu(self._fuse(branches, i, train)) for i in range(len(self.widths))]

    def _fuse(self, branches, i, train):
        total = None
        for j, x in enumerate(branches):
            prefix = f"fuse_layers.{i}.{j}"
            if j > i:
                x = conv(self.widths[i], 1, dtype=self.dtype, name=f"{prefix}.0")(x)
                x = batch_norm(train=train, dtype=self.dtype, name=f"{prefix}.1")(x)
                total = _add_upsampled(total, x, 2 ** (j - i))
                continue
            if j < i:
                for k in range(i - j):
                    last = k == i - j - 1
                    width = self.widths[i] if last else self.widths[j]
                    x = _conv3(self, width, stride=2, name=f"{prefix}.{k}.0")(x)
                    x = batch_norm(train=train, dtype=self.dtype, name=f"{prefix}.{k}.1")(x)
                    if not last:
                        x = relu(x)
            total = x if total is None else total + x
        return total


class HRNet(nn.Module):
    """HRNet returning its four branches (the official feature map is their concatenation at
    stride 4, `concatenate_branches`; the heads consume the branches directly).

    Attributes:
      stage_widths: branch widths of stage 4 (stages 2 and 3 use the leading 2 and 3);
        (32, 64, 128, 256) for W32, (48, 96, 192, 384) for W48.
      stage_modules: HighResolutionModules in stages 2, 3 and 4.
      num_blocks: BasicBlocks per branch in every module.
      stem_width: width of the two stride-2 stem convolutions.
      layer1_blocks: Bottlenecks in layer1 (planes = stem_width, output 4 * stem_width).
      conv_form: how the 3x3 convolutions are computed (`conv_forms.FORMS`).
      remat_policy: the `remat` policy of the layer1 bottlenecks and the stage modules; None
        keeps every activation.
    """

    stage_widths: Sequence[int] = (32, 64, 128, 256)
    stage_modules: Sequence[int] = (1, 4, 3)
    num_blocks: int = 4
    stem_width: int = 64
    layer1_blocks: int = 4
    dtype: Dtype = jnp.float32
    conv_form: str = "native"
    remat_policy: str | None = None

    @nn.compact
    def __call__(self, images, *, train: bool):
        """Runs the backbone.

        Args:
          images: [B, H, W, 3] normalised RGB, H and W multiples of 32.
          train: use batch statistics in BatchNorm and update the running averages.

        Returns:
          Branch i: [B, H / 2^(i + 2), W / 2^(i + 2), stage_widths[i]].
        """
        assert images.ndim == 4 and images.shape[-1] == 3, (
            f"Expected [B, H, W, 3], got {images.shape}"
        )
        norm = lambda name: batch_norm(train=train, dtype=self.dtype, name=name)
        x = relu(norm("bn1")(_conv3(self, self.stem_width, stride=2, name="conv1")(images)))
        x = relu(norm("bn2")(_conv3(self, self.stem_width, stride=2, name="conv2")(x)))
        bottleneck = remat.wrap(Bottleneck, self.remat_policy)
        stage_module = remat.wrap(HighResolutionModule, self.remat_policy)
        for k in range(self.layer1_blocks):
            x = bottleneck(
                self.stem_width,
                downsample=k == 0,
                dtype=self.dtype,
                conv_form=self.conv_form,
                name=f"layer1.{k}",
            )(x, train)

        branches = [x]
        for stage, num_modules in enumerate(self.stage_modules):
            widths = self.stage_widths[: stage + 2]
            branches = self._transition(branches, widths, stage + 1, train)
            for m in range(num_modules):
                branches = stage_module(
                    widths,
                    self.num_blocks,
                    dtype=self.dtype,
                    conv_form=self.conv_form,
                    name=f"stage{stage + 2}.{m}",
                )(branches, train)

        return branches

    def _transition(self, branches, widths, index, train):
        """Adapts existing branches to the new widths and adds one branch at half resolution."""
        out = []
        for i, width in enumerate(widths):
            prefix = f"transition{index}.{i}"
            if i < len(branches):
                x = branches[i]
                if x.shape[-1] != width:
                    x = _conv3(self, width, name=f"{prefix}.0")(x)
                    x = relu(batch_norm(train=train, dtype=self.dtype, name=f"{prefix}.1")(x))
            else:
                x = _conv3(self, width, stride=2, name=f"{prefix}.0.0")(branches[-1])
                x = relu(batch_norm(train=train, dtype=self.dtype, name=f"{prefix}.0.1")(x))
            out.append(x)
        return out
