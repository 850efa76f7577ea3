"""The pretrained command: prints the path of cached official weights, downloading and
converting them on first use.

  python -m logocap_jax.commands.pretrained w32             # the COCO-trained model
  python -m logocap_jax.commands.pretrained w32 --imagenet  # the ImageNet backbone
"""

from absl import flags

from logocap_jax import errors
from logocap_jax.commands import cli
from logocap_jax.weights import pretrained


def define_flags(flag_values: flags.FlagValues) -> None:
    define = cli.definer(flag_values)
    define(
        flags.DEFINE_bool,
        "imagenet",
        False,
        "The ImageNet-pretrained backbone for training instead of the COCO-trained model.",
    )
    define(
        flags.DEFINE_string,
        "cache_dir",
        None,
        f"Cache directory (default ${pretrained.CACHE_DIR_ENV} or ~/.cache/logocap_jax).",
    )
    define(
        flags.DEFINE_string,
        "url",
        None,
        f"Archive URL or path (default ${pretrained.RELEASE_URL_ENV} or the release).",
    )
    define(flags.DEFINE_string, "sha256", None, "The expected sha256 of the archive.")
    define(flags.DEFINE_bool, "quiet", False, "No progress bar.")


def main(argv=None) -> None:
    """Prints the path of the cached weights, downloading and converting them if needed.

    Raises:
      UsageError: not one model name (w32, w48) is given.
      PretrainedError: the weights cannot be downloaded or converted (`cli.run_main` prints
        it as one line).
    """
    args, names = cli.parse(argv, define_flags, doc=__doc__, positional=True)
    if len(names) != 1 or names[0] not in pretrained.MODELS:
        models = ", ".join(sorted(pretrained.MODELS))
        raise errors.UsageError(f"give one model name, one of {models}")
    options = dict(
        cache_dir=args.cache_dir, url=args.url, sha256=args.sha256, progress=not args.quiet
    )
    if args.imagenet:
        print(pretrained.imagenet_checkpoint(names[0], **options))
    else:
        print(pretrained.checkpoint_path(names[0], **options))


if __name__ == "__main__":
    cli.run_main(main)
