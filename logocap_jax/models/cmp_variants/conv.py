"""The official CMP (paper Sec. 3.1): conv-norm-ReLU layers, Attentive Norm in the second.

The reference the other variants are compared with; converted official weights load into it.
Its options are `ConvMessagePassing`'s fields: widths, attentive_norm, num_affine, kernel_size.
"""

from logocap_jax.models.cmp import ConvMessagePassing

Model = ConvMessagePassing
