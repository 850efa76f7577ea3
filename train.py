"""Trains LOGO-CAP: python train.py --config configs/<name>.py --workdir DIR.

The command is logocap_jax/commands/train.py (installed as `logocap-train`); --help lists its
flags.
"""

from logocap_jax.commands import train

if __name__ == "__main__":
    train.entry_point()
