"""CMP variants: the modules that turn local KEM features into KAMs, one file each, by name.

A variant called `name` is the module `logocap_jax.models.cmp_variants.<name>` (a file in this
package), or, when the name contains a dot, the module of that import path (a variant kept
outside the package, e.g. `my_lab.window_mlp`). The module defines `Model`, a Linen module with

- the fields `num_joints` (K) and `dtype` (compute dtype; parameters stay float32), which
  `LogoCap` sets; also `conv_form` (`conv_forms.FORMS`) if the variant declares it;
- its options as further fields, each with a default; `model.cmp_options` in a config sets
  them and may name no other key;
- `__call__(features, *, train, mask=None)`: features [N, S, S, K*C] (channel k*C + c is channel
  c of joint k's local KEM), `train` to use and update batch statistics, `mask` [N] bool the
  instances that count towards them; returns [N, S, S, K] unclamped KAMs.

`LogoCap` initialises the variant on an S x S window, so parameters may depend on S. Adding a
variant edits no other file: write the module and set `model.cmp_variant` (docs/design.md §4).
The helpers at the end are shared by the built-in variants; `models.layers.batch_mask` gives
BatchNorm the instance mask.
"""

import dataclasses
import importlib
import pkgutil
from collections.abc import Mapping
from typing import Any

import flax.linen as nn

# Fields every variant has, set by LogoCap rather than by model.cmp_options.
INTERFACE_FIELDS = ("num_joints", "dtype")
# Fields a variant may have, also set by LogoCap.
OPTIONAL_INTERFACE_FIELDS = ("conv_form",)
# Dataclass fields of every Linen module.
_LINEN_FIELDS = ("parent", "name")


def names() -> tuple[str, ...]:
    """The built-in variants: the modules of this package (names starting with '_' excluded)."""
    modules = pkgutil.iter_modules(__path__)
    return tuple(sorted(info.name for info in modules if not info.name.startswith("_")))


def module_path(name: str) -> str:
    """The import path of variant `name`."""
    return name if "." in name else f"{__name__}.{name}"


def get(name: str) -> type[nn.Module]:
    """The `Model` class of variant `name`.

    Raises:
      ValueError: no such module, or it defines no Linen `Model` with the interface fields.
    """
    path = module_path(name)
    try:
        module = importlib.import_module(path)
    except ModuleNotFoundError as error:
        # Only a missing variant module is an unknown name; a missing import inside it is not.
        if error.name is None or not path.startswith(error.name):
            raise
        raise ValueError(
            f"Unknown CMP variant {name!r}: no module {path}. Built-in variants: "
            f"{', '.join(names())}; a dotted name is the import path of a variant module."
        ) from None
    model = getattr(module, "Model", None)
    if not (isinstance(model, type) and issubclass(model, nn.Module)):
        raise ValueError(f"CMP variant module {path} defines no Linen module `Model`")
    fields = {field.name for field in dataclasses.fields(model)}
    missing = [field for field in INTERFACE_FIELDS if field not in fields]
    if missing:
        raise ValueError(f"CMP variant {name!r} lacks the interface fields {missing}")
    return model


def default_options(name: str) -> dict[str, Any]:
    """{option: default} of variant `name`: its fields besides the interface ones."""
    options = {}
    for field in dataclasses.fields(get(name)):
        if field.name in INTERFACE_FIELDS + OPTIONAL_INTERFACE_FIELDS + _LINEN_FIELDS:
            continue
        if field.default is dataclasses.MISSING:
            raise ValueError(f"CMP variant {name!r}: option {field.name!r} has no default")
        options[field.name] = field.default
    return options


def check_options(name: str, options: Mapping[str, Any]) -> None:
    """Raises ValueError naming the variant and its options if `options` has another key."""
    known = default_options(name)
    unknown = sorted(set(options) - set(known))
    if unknown:
        listed = ", ".join(f"{key}={value!r}" for key, value in known.items()) or "none"
        raise ValueError(
            f"Unknown option(s) {unknown} for CMP variant {name!r}; its options (defaults): "
            f"{listed}. On the command line, switching model.cmp_variant replaces the options "
            "as a whole, e.g. --config.model.cmp_options='{}' for the new variant's defaults."
        )


def create(
    name: str, options: Mapping[str, Any], *, num_joints: int, dtype, conv_form: str = "native"
) -> nn.Module:
    """Variant `name` with `options` (checked) and the interface fields (`conv_form` only if
    the variant declares it).

    Lists become tuples (command-line overrides may give lists), so the module stays hashable.
    """
    check_options(name, options)
    values = {key: tuple(v) if isinstance(v, list) else v for key, v in options.items()}
    model = get(name)
    if "conv_form" in {field.name for field in dataclasses.fields(model)}:
        values["conv_form"] = conv_form
    return model(num_joints=num_joints, dtype=dtype, **values)


def per_joint(features, num_joints: int):
    """[N, S, S, K*C] -> [N, S, S, K, C] (channel k*C + c is channel c of joint k)."""
    *lead, channels = features.shape
    if channels % num_joints:
        raise ValueError(f"{channels} feature channels are not K * C for K = {num_joints}")
    return features.reshape(*lead, num_joints, channels // num_joints)


def joint_kernel_init(scale: float = 1.0):
    """Fan-in scaled normal init (`nn.Dense`'s lecun_normal at scale 1) of a [G, fan_in, fan_out]
    kernel, one matrix per joint or per limb."""
    return nn.initializers.variance_scaling(
        scale, "fan_in", "truncated_normal", in_axis=-2, out_axis=-1, batch_axis=(0,)
    )


def depthwise_conv(channels: int, kernel_size: int, *, dtype, name: str) -> nn.Conv:
    """A k x k convolution of each channel on its own over the window ('same' size, no bias)."""
    pad = kernel_size // 2
    return nn.Conv(
        channels,
        (kernel_size, kernel_size),
        padding=((pad, pad), (pad, pad)),
        feature_group_count=channels,
        use_bias=False,
        dtype=dtype,
        name=name,
    )
