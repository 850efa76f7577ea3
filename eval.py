"""Evaluates a LOGO-CAP checkpoint: python eval.py --config configs/w32.py --checkpoint DIR ...

The command is logocap_jax/commands/eval.py (installed as `logocap-eval`); --help lists its
options.
"""

from logocap_jax.commands import eval as eval_command

if __name__ == "__main__":
    eval_command.entry_point()
