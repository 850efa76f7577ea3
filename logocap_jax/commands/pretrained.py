"""The pretrained command: prints the path of cached official weights, downloading and
converting them on first use.

  python -m logocap_jax.commands.pretrained w32             # the COCO-trained model
  python -m logocap_jax.commands.pretrained w32 --imagenet  # the ImageNet backbone
"""

from logocap_jax.commands import cli
from logocap_jax.weights.pretrained import (
    CACHE_DIR_ENV,
    MODELS,
    RELEASE_URL_ENV,
    checkpoint_path,
    imagenet_checkpoint,
)


def main(argv=None) -> None:
    """Prints the path of the cached weights, downloading and converting them if needed.

    Raises:
      PretrainedError: a user error (`cli.run_main` prints it as one line).
    """
    parser = cli.ArgumentParser(
        description="Prints the path of cached official weights, downloading and converting "
        "them on first use."
    )
    parser.add_argument("name", choices=sorted(MODELS), help="the model (its HRNet width)")
    parser.add_argument(
        "--imagenet",
        action="store_true",
        help="the ImageNet-pretrained backbone for training instead of the COCO-trained model",
    )
    parser.add_argument(
        "--cache_dir", help=f"cache directory (default ${CACHE_DIR_ENV} or ~/.cache/logocap_jax)"
    )
    parser.add_argument(
        "--url", help=f"archive URL or path (default ${RELEASE_URL_ENV} or the release)"
    )
    parser.add_argument("--sha256", help="expected sha256 of the archive")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        cli.VERBOSE_FLAG, action="store_true", help="show the traceback of an error"
    )
    args = parser.parse_args(argv)
    options = dict(
        cache_dir=args.cache_dir, url=args.url, sha256=args.sha256, progress=not args.quiet
    )
    if args.imagenet:
        print(imagenet_checkpoint(args.name, **options))
    else:
        print(checkpoint_path(args.name, **options))


if __name__ == "__main__":
    cli.run_main(main)
