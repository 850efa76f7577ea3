"""The command lines' shared behaviour (logocap_jax/commands/cli.py): one-line user errors with
exit status 2, --verbose tracebacks, internal errors with tracebacks, and `--config.<key>=<value>`
overrides that reach the settings of eval.py and the predict CLI as they reach train.py's config.

In-process runs go through `cli.run_main` as the `__main__` blocks do; one subprocess per entry
point checks the real wiring. None of these runs predicts: errors come before the model runs, and
the override tests stop at the settings.
"""

import importlib
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from absl import flags

from logocap_jax import config_utils, errors, weights
from logocap_jax.commands import cli
from logocap_jax.commands import convert as convert_command
from logocap_jax.commands import predict as predict_command
from logocap_jax.inference import predict
from logocap_jax.weights import convert

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "tiny.py")
STATE_DICT = str(ROOT / "tests" / "data" / "golden" / "tiny_state_dict.npz")
IMAGE = str(ROOT / "data" / "coco_mini" / "images" / "000000197388.jpg")
MINI_ANNOTATIONS = str(ROOT / "data" / "coco_mini" / "annotations" / "person_keypoints_mini.json")
MINI_IMAGES = str(ROOT / "data" / "coco_mini" / "images")
# A tiny model that the golden state dict does not fit.
OTHER_MODEL = "--config.model.embedding_dim=4"
SUBPROCESS_TIMEOUT = 300


@pytest.fixture(scope="module")
def eval_script():
    return importlib.import_module("logocap_jax.commands.eval")


def run_in_process(main, argv, capsys):
    """(exit status, stderr lines) of `cli.run_main(main, argv)`."""
    with pytest.raises(SystemExit) as exit_info:
        cli.run_main(main, argv)
    return exit_info.value.code, capsys.readouterr().err.splitlines()


def run_command(args, timeout=SUBPROCESS_TIMEOUT):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def assert_one_line(lines, program, *fragments):
    """stderr is exactly `<program>: error: ...` naming every fragment."""
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{program}: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


# ---------------------------------------------------------------------------- overrides


def define_output_dir(flag_values):
    cli.definer(flag_values)(flags.DEFINE_string, "output_dir", None, "The outputs.")


def parse(argv):
    """(config, positional arguments) of a command line with a config and --output_dir."""
    args, positional = cli.parse(argv, define_output_dir, doc="", config=True, positional=True)
    return args.config, positional


@pytest.mark.parametrize(
    "argv, key, expected",
    [
        (["--config.logo_ca.reweigh=false"], "logo_ca.reweigh", False),
        (["--noconfig.logo_ca.reweigh"], "logo_ca.reweigh", False),
        (["--config.decode.flip_test"], "decode.flip_test", True),
        (["--config.logo_ca.local_half_size", "3"], "logo_ca.local_half_size", 3),
        (["--config.decode.scales=0.5,1"], "decode.scales", (0.5, 1.0)),
        (["--config.decode.scales=0.5", "--config.decode.scales=1"], "decode.scales", (0.5, 1)),
        (["--config.model.cmp_options.widths=(8,8,8)"], "model.cmp_options.widths", (8, 8, 8)),
        (["--config.eval.image_ids=785,343803"], "eval.image_ids", (785, 343803)),
    ],
)
def test_override_forms(argv, key, expected):
    config, rest = parse(["photo.jpg", "--config", CONFIG, *argv, "--output_dir", "out"])
    assert rest == ["photo.jpg"]
    value = config
    for part in key.split("."):
        value = value[part]
    assert value == expected
    tiny = config_utils.load_config(CONFIG)
    assert tiny.logo_ca.reweigh and tiny.logo_ca.local_half_size == 5  # the file's defaults


def test_arguments_after_double_dash_are_not_overrides():
    config, rest = parse(["--config", CONFIG, "--config.decode.flip_test=false", "--", "-x"])
    assert config.decode.flip_test is False and rest == ["-x"]


def test_a_bundled_config_by_name():
    config, _ = parse(["--config", "tiny", "--config.train.seed=3"])
    assert config.train.seed == 3 and config.model.to_dict() == (
        config_utils.load_config(CONFIG).model.to_dict()
    )


@pytest.mark.parametrize(
    "argv, error, message",
    [
        (
            ["--config.logo_ca.reweight=false"],
            errors.ConfigError,
            "no config key 'logo_ca.reweight' (logo_ca has: ",
        ),
        (
            ["--config.nothing.x=1"],
            errors.ConfigError,
            "no config key 'nothing.x' (the config has: data, decode",
        ),
        (
            ["--config.decode.flip_test.x=1"],
            errors.ConfigError,
            "decode.flip_test is a value, not a section",
        ),
        (
            ["--noconfig.logo_ca.local_half_size"],
            errors.UsageError,
            "Unknown command line flag 'noconfig.logo_ca.local_half_size'",
        ),
        (
            ["--config.logo_ca.local_half_size"],
            errors.UsageError,
            "Missing value for flag --config.logo_ca.local_half_size",
        ),
        (
            ["--config.logo_ca.local_half_size=three"],
            errors.UsageError,
            "invalid literal for int()",
        ),
        (["--config.decode.flip_test=maybe"], errors.UsageError, "--config.decode.flip_test=maybe"),
    ],
)
def test_bad_overrides(argv, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse(["--config", CONFIG, *argv])


def test_an_override_needs_a_config():
    with pytest.raises(errors.UsageError, match="--config is required"):
        parse(["--config.decode.flip_test=false"])


def test_overrides_come_after_the_config():
    with pytest.raises(errors.UsageError, match="before a value for --config"):
        parse(["--config.decode.flip_test=false", "--config", CONFIG])


def predictor_settings(argv):
    args, _ = predict_command.parse_args(
        [IMAGE, "--config", CONFIG, "--output_dir", "unused", *argv]
    )
    return predict.Predictor.from_config(args.config, None).settings


def test_readme_ablation_switches_reach_the_predict_settings():
    settings = predictor_settings(
        [
            "--config.logo_ca.reweigh=false",
            "--config.logo_ca.local_half_size=3",
            "--config.logo_ca.sampling=map_coordinates",
            "--config.decode.adaptation=partial",
            "--config.decode.flip_test=false",
            "--config.decode.scales=0.5,1",
        ]
    )
    assert settings.logo_ca.reweigh is False
    assert settings.logo_ca.local_half_size == 3
    assert settings.logo_ca.sampling == "map_coordinates"
    assert settings.adaptation == "partial" and settings.flip_test is False
    assert settings.scales == (0.5, 1.0)
    default = predictor_settings([])
    assert default.logo_ca.reweigh and default.adaptation == "full" and default.flip_test


def test_eval_flags_and_overrides_reach_the_settings(eval_script, monkeypatch):
    """eval.py builds its Predictor from the overridden config; its own flags win over it."""
    built = []

    def from_config(
        config, variables, *, batch_size=1, keep_outputs=False, time_stages=False, **overrides
    ):
        built.append(config_utils.decode_settings(config, **overrides))
        raise SystemExit("stop before predicting")

    monkeypatch.setattr(predict.Predictor, "from_config", staticmethod(from_config))
    monkeypatch.setattr(weights, "load", lambda *args: None)
    base = ["--config", CONFIG, "--annotations", "a.json", "--images", "x", "--state_dict", "s"]
    for extra in (
        ["--config.decode.adaptation=none", "--config.logo_ca.reweigh=false"],
        ["--config.decode.scales=0.5,1", "--config.decode.flip_test=false"],
        ["--config.decode.adaptation=none", "--adaptation", "partial", "--scales", "1,2"],
    ):
        with pytest.raises(SystemExit):
            eval_script.main(base + extra)
    assert built[0].adaptation == "none" and built[0].logo_ca.reweigh is False
    assert built[1].scales == (0.5, 1.0) and built[1].flip_test is False
    assert built[2].adaptation == "partial" and built[2].scales == (1.0, 2.0)
    assert built[2].flip_test and built[2].logo_ca.reweigh


# ---------------------------------------------------------------------------- run_main


def test_run_main_user_error_is_one_line_with_status_2(capsys):
    def main(argv):
        raise errors.InputNotFoundError("config file not found: nowhere.py")

    status, lines = run_in_process(main, [], capsys)
    assert status == cli.EXIT_USER_ERROR
    assert lines == [f"{cli._program()}: error: config file not found: nowhere.py"]


def test_run_main_verbose_adds_the_traceback(capsys):
    def main(argv):
        raise errors.ConfigError("a\nmultiline   message")

    status, lines = run_in_process(main, ["--verbose"], capsys)
    assert status == 2
    assert lines[0] == "Traceback (most recent call last):"
    assert lines[-1].endswith("error: a multiline message")


def test_run_main_os_errors_with_a_file_are_user_errors(capsys, tmp_path):
    def main(argv):
        open(tmp_path)  # a folder

    status, lines = run_in_process(main, [], capsys)
    assert status == 2
    assert_one_line(lines, cli._program(), str(tmp_path), "Is a directory")


@pytest.mark.parametrize("error", [ValueError("bug"), KeyError("bug"), TypeError("bug")])
def test_run_main_internal_errors_propagate(error):
    def main(argv):
        raise error

    with pytest.raises(type(error)):
        cli.run_main(main, [])


def test_run_main_passes_the_exit_status(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.run_main(lambda argv: cli.EXIT_SKIPPED, [])
    assert exit_info.value.code == 3
    with pytest.raises(SystemExit) as exit_info:
        cli.run_main(lambda argv: None, [])
    assert exit_info.value.code == 0


def test_internal_error_keeps_its_traceback_in_a_subprocess():
    proc = run_command(
        ["-c", "from logocap_jax.commands import cli; cli.run_main(lambda argv: 1 / 0)"]
    )
    assert proc.returncode == cli.EXIT_INTERNAL_ERROR
    assert "Traceback (most recent call last)" in proc.stderr
    assert proc.stderr.strip().endswith("ZeroDivisionError: division by zero")


# ---------------------------------------------------------------------------- entry points


@pytest.fixture(scope="module")
def mismatching_work_directory(tmp_path_factory):
    """A training work directory whose best model is the tiny model with 4-channel embeddings."""
    config = config_utils.load_config(CONFIG)
    config.model.embedding_dim = 4
    template = convert.model_template(config_utils.build_model(config))
    variables = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), template)
    workdir = tmp_path_factory.mktemp("other_config")
    with ocp.CheckpointManager(workdir / "best") as manager:
        manager.save(1, args=ocp.args.StandardSave(variables))
    return workdir


def predict_argv(*extra, inputs=(IMAGE,), output="unused"):
    return [*inputs, "--config", CONFIG, "--output_dir", str(output), *extra]


def eval_argv(*extra, annotations=MINI_ANNOTATIONS, images=MINI_IMAGES):
    return ["--config", CONFIG, "--annotations", str(annotations), "--images", str(images), *extra]


@pytest.mark.parametrize(
    "case, argv, fragments",
    [
        ("missing config", ["--config", "nowhere.py"], ["config file not found: nowhere.py"]),
        ("unknown key", ["--config.decode.flipp=false"], ["'decode.flipp'", "decode has:"]),
        ("bad value", ["--config.decode.adaptation=most"], ["config.decode", "adaptation"]),
        ("missing checkpoint", ["--checkpoint", "no_ckpt"], ["No weights at no_ckpt"]),
        ("missing state dict", ["--state_dict", "no.npz"], ["No weights at no.npz"]),
        ("mismatch", ["--state_dict", STATE_DICT, OTHER_MODEL], ["does not fit the model"]),
        ("no weights", [], ["give exactly one of --checkpoint"]),
    ],
)
def test_predict_user_errors(case, argv, fragments, capsys, tmp_path):
    status, lines = run_in_process(
        predict_command.main, predict_argv(*argv, output=tmp_path), capsys
    )
    assert status == 2, case
    assert_one_line(lines, cli._program(), *fragments)
    assert not (tmp_path / "results.json").exists()


def test_predict_checkpoint_of_another_config(mismatching_work_directory, capsys, tmp_path):
    argv = predict_argv("--checkpoint", str(mismatching_work_directory), output=tmp_path)
    status, lines = run_in_process(predict_command.main, argv, capsys)
    assert status == 2
    assert_one_line(
        lines, cli._program(), str(mismatching_work_directory), "does not fit the model", "(8,)"
    )


@pytest.mark.parametrize(
    "case, argv, fragments",
    [
        (
            "unknown data set",
            ["--dataset", "coco_val2016"],
            ["--dataset=coco_val2016", "coco_val2017"],
        ),
        ("missing file", ["--annotations", "no.json"], ["COCO annotation file not found: no.json"]),
        ("unknown key", ["--config.test.input_sise=64"], ["'test.input_sise'"]),
        ("mismatch", ["--state_dict", STATE_DICT, OTHER_MODEL], ["does not fit the model"]),
        ("image ids", ["--state_dict", STATE_DICT, "--image_ids", "1"], ["image ids not in"]),
    ],
)
def test_eval_user_errors(eval_script, case, argv, fragments, capsys, tmp_path):
    base = eval_argv("--output_dir", str(tmp_path))
    if "--dataset" in argv:
        base = ["--config", CONFIG, "--data_root", str(tmp_path)]
    elif "--annotations" in argv:
        base = ["--config", CONFIG, "--images", MINI_IMAGES, "--state_dict", STATE_DICT]
    status, lines = run_in_process(eval_script.main, base + argv, capsys)
    assert status == 2, case
    assert_one_line(lines, cli._program(), *fragments)


def test_eval_checkpoint_of_another_config(
    eval_script, mismatching_work_directory, capsys, tmp_path
):
    argv = eval_argv("--checkpoint", str(mismatching_work_directory))
    status, lines = run_in_process(eval_script.main, argv, capsys)
    assert status == 2
    assert_one_line(lines, cli._program(), "does not fit the model")


def test_convert_user_errors(capsys, tmp_path):
    base = ["--config", CONFIG, "--output", str(tmp_path / "out")]
    not_npz = tmp_path / "broken.npz"
    not_npz.write_bytes(b"not a zip archive")
    cases = [
        (["--input", "no.npz"], ["Checkpoint not found: no.npz"]),
        (["--input", STATE_DICT, OTHER_MODEL], ["does not fit the model"]),
        (["--input", str(not_npz)], ["broken.npz is not a readable .npz state dict"]),
    ]
    for argv, fragments in cases:
        status, lines = run_in_process(convert_command.main, base + argv, capsys)
        assert status == 2, argv
        assert_one_line(lines, cli._program(), *fragments)
    (tmp_path / "out").mkdir()
    status, lines = run_in_process(convert_command.main, base + ["--input", STATE_DICT], capsys)
    assert status == 2
    assert_one_line(lines, cli._program(), "already exists")


@pytest.mark.parametrize(
    "content, fragments",
    [
        ("def get_config(:\n", ["broken.py fails: SyntaxError", "(line 1)"]),
        (
            "import ml_collections\n\n\ndef get_config():\n    return undefined\n",
            ["NameError", "(line 5)"],
        ),
        ("CONFIG = 1\n", ["defines no get_config()"]),
        ("def get_config():\n    return {}\n", ["returns a dict, expected an ml_collections"]),
    ],
)
def test_broken_config_files_are_one_line(content, fragments, capsys, tmp_path):
    config = tmp_path / "broken.py"
    config.write_text(content)
    argv = [IMAGE, "--config", str(config), "--output_dir", str(tmp_path)]
    status, lines = run_in_process(predict_command.main, argv, capsys)
    assert status == 2
    assert_one_line(lines, cli._program(), str(config), *fragments)


def test_a_state_dict_that_is_a_folder(capsys, tmp_path):
    argv = predict_argv("--state_dict", str(tmp_path), output=tmp_path / "out")
    status, lines = run_in_process(predict_command.main, argv, capsys)
    assert status == 2
    assert_one_line(lines, cli._program(), f"{tmp_path} is neither a variables checkpoint")


def test_usage_errors_are_one_line(capsys):
    for main, argv in (
        (predict_command.main, ["--config", CONFIG]),
        (predict_command.main, predict_argv("--batch_size", "0")),
        (convert_command.main, ["--config", CONFIG, "--input", STATE_DICT]),
    ):
        status, lines = run_in_process(main, argv, capsys)
        assert status == 2 and len(lines) == 1 and ": error: " in lines[0], lines


# One subprocess per entry point: the real `__main__` wiring, one line and status 2, and
# --verbose with the traceback.
@pytest.mark.parametrize(
    "args, fragments",
    [
        (
            ["-m", "logocap_jax.commands.predict", *predict_argv("--config.decode.flipp=1")],
            ["flipp"],
        ),
        pytest.param(
            ["eval.py", *eval_argv("--checkpoint", "no_ckpt")],
            ["No weights at no_ckpt"],
            marks=pytest.mark.slow,
        ),
        pytest.param(
            [
                "-m",
                "logocap_jax.commands.convert",
                "--config",
                CONFIG,
                "--input",
                "x.npz",
                "--output",
                "o",
            ],
            ["Checkpoint not found: x.npz"],
            marks=pytest.mark.slow,
        ),
        (
            ["train.py", "--config", CONFIG, "--workdir", "WORKDIR", "--config.train.stepz=1"],
            ["'train.stepz'", "train has:"],
        ),
        pytest.param(
            ["train.py", "--config", "nowhere.py", "--workdir", "WORKDIR"],
            ["nowhere.py"],
            marks=pytest.mark.slow,
        ),
        pytest.param(
            ["train.py", "--config", CONFIG, "--workdir", "WORKDIR", "--config.data.dataset=cocoa"],
            ["data set 'cocoa' is not built in", "coco_mini"],
            marks=pytest.mark.slow,
        ),
    ],
)
def test_entry_points_print_one_line(args, fragments, tmp_path):
    # `python -m package.module` names the module's file as the program.
    program = f"{args[1].rsplit('.', 1)[1]}.py" if args[0] == "-m" else args[0]
    args = [str(tmp_path / "work") if arg == "WORKDIR" else arg for arg in args]
    proc = run_command(args)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert_one_line(proc.stderr.splitlines(), program, *fragments)
    verbose = run_command([*args, "--verbose"])
    assert verbose.returncode == 2
    assert "Traceback (most recent call last)" in verbose.stderr
    assert verbose.stderr.splitlines()[-1] == proc.stderr.strip()


@pytest.mark.slow
def test_train_on_a_work_directory_of_another_config(mismatching_work_directory):
    """Found before anything trains; --verbose shows where."""
    args = ["train.py", "--config", CONFIG, "--workdir", str(mismatching_work_directory)]
    proc = run_command(args)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert_one_line(
        proc.stderr.splitlines(),
        "train.py",
        str(mismatching_work_directory / "best"),
        "variable batch_stats/transition_embedding/1/mean has shape (4,) where the model has (8,)",
    )
    verbose = run_command([*args, "--verbose"])
    assert verbose.returncode == 2
    assert "Traceback (most recent call last)" in verbose.stderr
    assert "in check_fits" in verbose.stderr
