"""The LOGO-CAP network: HRNet, the three heads and the CMP (paper Sec. 3.1).

The module only predicts. Decoding, LOGO-CA and losses are pure functions elsewhere.
"""

from collections.abc import Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax.numpy as jnp

from logocap_jax.models import cmp_variants, conv_forms, remat
from logocap_jax.models.hrnet import HRNet
from logocap_jax.models.layers import (
    Dtype,
    MultiResolutionPointwiseConv,
    batch_norm,
    conv,
    relu,
    torch_default_bias_init,
    torch_default_kernel_init,
)


class Predictions(NamedTuple):
    """Head outputs on the stride-4 grid.

    Attributes:
      heatmaps: [B, h, w, K + 1] keypoint heatmaps, the last channel the person center.
      offsets: [B, h, w, 2K] channel 2k = x, 2k + 1 = y of (pixel - keypoint k), in grid pixels.
      embeddings: [B, h, w, C] features sampled by the local KEMs.
    """

    heatmaps: Any
    offsets: Any
    embeddings: Any


class HeadTransition(nn.Module):
    """1x1 conv (no bias) + BatchNorm + ReLU of the HRNet feature map, named as the official
    `transition_*` Sequentials; the convolution runs on the branches at their own resolutions
    (`MultiResolutionPointwiseConv`)."""

    width: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, branches, train: bool):
        x = MultiResolutionPointwiseConv(
            self.width, kernel_init=torch_default_kernel_init, dtype=self.dtype, name="0"
        )(branches)
        return relu(batch_norm(train=train, dtype=self.dtype, name="1")(x))


class LogoCap(nn.Module):
    """LOGO-CAP's learned parts.

    Attributes:
      stage_widths, stage_modules, num_blocks: HRNet size (see `HRNet`).
      num_joints: K.
      heatmap_width: channels of the heatmap head's transition.
      offset_width: channels of the offset head's transition.
      embedding_dim: C, channels of the embedding sampled by the local KEMs.
      cmp_variant: name of the CMP variant (`cmp_variants`): a module of
        `logocap_jax.models.cmp_variants`, or the import path of one elsewhere.
      cmp_options: options of the CMP variant (its fields besides num_joints and dtype); keys
        it does not have are an error naming its options.
      local_half_size: r of the local KEM window the CMP sees, S = 2r + 1: the config's
        `logo_ca.local_half_size` (`config_utils.build_model` passes it).
      dtype: compute dtype; parameters stay float32 and outputs are returned as float32.
      conv_form: how the backbone's and the CMP's 3x3 convolutions are computed
        (`conv_forms.FORMS`; `auto` picks per layer, see there); the parameters are the same.
      remat: which blocks the training step rematerialises (`remat.SCOPES`: 'none', 'stages',
        'stages_and_heads'), under the `jax.checkpoint_policies` named by `remat_policy`;
        parameters and results are the same.
    """

    stage_widths: tuple = (32, 64, 128, 256)
    stage_modules: tuple = (1, 4, 3)
    num_blocks: int = 4
    num_joints: int = 17
    heatmap_width: int = 32
    offset_width: int = 256
    embedding_dim: int = 64
    cmp_variant: str = "conv"
    cmp_options: Mapping[str, Any] | None = None
    local_half_size: int = 5
    dtype: Dtype = jnp.float32
    conv_form: str = "auto"
    remat: str = "none"
    remat_policy: str = "nothing_saveable"

    def __post_init__(self):
        cmp_variants.check_options(self.cmp_variant, self.cmp_options or {})
        if self.conv_form not in conv_forms.FORMS:
            raise ValueError(
                f"Unknown conv_form {self.conv_form!r}; one of {', '.join(conv_forms.FORMS)}"
            )
        remat.check(self.remat, self.remat_policy)
        super().__post_init__()

    def setup(self):
        stage_policy, head_policy = remat.policies(self.remat, self.remat_policy)
        self.backbone = HRNet(
            tuple(self.stage_widths),
            tuple(self.stage_modules),
            self.num_blocks,
            dtype=self.dtype,
            conv_form=self.conv_form,
            remat_policy=stage_policy,
        )
        head = remat.wrap(HeadTransition, head_policy)
        self.transition_cls = head(self.heatmap_width, dtype=self.dtype)
        self.final_layer_cls = self._output_conv(self.num_joints + 1, self.heatmap_width)
        self.transition_reg = head(self.offset_width, dtype=self.dtype)
        self.final_layer_reg = self._output_conv(2 * self.num_joints, self.offset_width)
        self.transition_embedding = head(self.embedding_dim, dtype=self.dtype)
        self.joints_mlp = cmp_variants.create(
            self.cmp_variant,
            self.cmp_options or {},
            num_joints=self.num_joints,
            dtype=self.dtype,
            conv_form=self.conv_form,
        )

    def _output_conv(self, features, fan_in):
        return conv(
            features,
            1,
            use_bias=True,
            kernel_init=torch_default_kernel_init,
            bias_init=torch_default_bias_init(fan_in),
            dtype=self.dtype,
        )

    def __call__(self, images, *, train: bool) -> Predictions:
        """Runs backbone and heads.

        Args:
          images: [B, H, W, 3] normalised RGB, H and W multiples of 32.
          train: batch statistics in BatchNorm.

        Returns:
          float32 `Predictions` on the [B, H/4, W/4] grid.
        """
        branches = self.backbone(images, train=train)
        heatmaps = self.final_layer_cls(self.transition_cls(branches, train))
        offsets = self.final_layer_reg(self.transition_reg(branches, train))
        embeddings = self.transition_embedding(branches, train)
        return Predictions(
            heatmaps.astype(jnp.float32),
            offsets.astype(jnp.float32),
            embeddings.astype(jnp.float32),
        )

    def attraction_maps(self, features, *, train: bool, mask=None):
        """KAMs of local KEM features: [N, S, S, K*C] -> float32 [N, S, S, K] (see the CMP)."""
        return self.joints_mlp(features, train=train, mask=mask).astype(jnp.float32)

    def initialize(self, images):
        """Touches every parameter: heads on `images`, the CMP on one S x S window of zeros."""
        predictions = self(images, train=False)
        side = 2 * self.local_half_size + 1
        dummy = jnp.zeros((1, side, side, self.num_joints * self.embedding_dim), self.dtype)
        return predictions, self.attraction_maps(dummy, train=False)
