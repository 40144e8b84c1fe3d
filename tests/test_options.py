"""Options: YAML configs with command-line overrides, --help, and clear errors before any data is read."""

import os
import re
import subprocess
import sys

import keras
import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.options import GradientOptions, OptionsError, help_text, parse
from pipeline.run import main
from tests.conftest import assert_close, by_key, read_output, save, tensor_column, write_parquet

ROWS = 30


@pytest.fixture
def job(tmp_path):
    """A model with inputs 'img' and 'meta', a data file, and the options every run shares."""
    img, meta = keras.Input((2, 2), name="img"), keras.Input((3,), name="meta")
    joined = keras.layers.Concatenate()([keras.layers.Flatten()(img), meta])
    model = keras.Model([img, meta], keras.layers.Dense(1)(joined))
    rng = np.random.default_rng(13)
    write_parquet(
        tmp_path / "in/a.parquet",
        {
            "id": np.arange(ROWS),
            "img": rng.normal(size=(ROWS, 2, 2)).astype(np.float32),
            "meta": rng.normal(size=(ROWS, 3)).astype(np.float32),
            "y": rng.normal(size=ROWS),
        },
    )
    return model, [
        "--runner=DirectRunner",
        "--input",
        str(tmp_path / "in/*.parquet"),
        "--model",
        save(model, tmp_path),
        "--output",
        str(tmp_path / "out/g"),
    ]


def test_yaml_config_with_command_line_override(tmp_path, job):
    model, args = job
    config = tmp_path / "job.yaml"
    config.write_text(
        "runner: DirectRunner\n"
        f"input: {tmp_path / 'in/*.parquet'}\n"
        f"model: {args[4]}\n"
        f"output: {tmp_path / 'from-config/g'}\n"
        "keep_columns: [id]\n"
        "batch_size: 7\n"
        "emit: [norm]\n"
        "input_map: {img: img, meta: meta}\n"
    )
    assert main(["--config", str(config), "--batch_size", "11"]) == 0
    out = by_key(read_output(tmp_path / "from-config/g"))
    assert out.num_rows == ROWS and "norm__gradient__img" in out.column_names
    meta = pq.read_schema(next((tmp_path / "from-config").glob("g-*.parquet"))).metadata
    assert meta[b"beam_gradients.batch_size"] == b"11"  # the flag beat the file's 7
    w = model.layers[-1].kernel.numpy()[:, 0]
    assert_close(tensor_column(out, "gradient__meta"), np.broadcast_to(w[4:], (ROWS, 3)))


def test_config_errors_name_the_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("batch_sise: 3\n")
    with pytest.raises(OptionsError, match=r"bad.yaml: unknown option 'batch_sise'; did you mean 'batch_size'\?$"):
        parse(["--config", str(bad)])
    bad.write_text("batch_size: 64.5\n")  # argparse's own error would not name the file
    with pytest.raises(OptionsError, match=r"bad.yaml: batch_size takes an integer, not 64.5$"):
        parse(["--config", str(bad)])
    with pytest.raises(OptionsError, match="unknown option --batch_sise"):
        parse(["--batch_sise", "3"])
    bad.write_text("trust_model_code: 'false'\n")  # a string, not a boolean: never read as true
    with pytest.raises(OptionsError, match=r"bad.yaml: trust_model_code takes true or false, not 'false'"):
        parse(["--config", str(bad)])
    bad.write_text("input: [unclosed\n")
    with pytest.raises(OptionsError, match=r"bad.yaml: not valid YAML at line \d+ \([^\n]*\)$"):
        parse(["--config", str(bad)])
    with pytest.raises(OptionsError, match="--config is given 2 times"):
        parse(["--config", str(bad), f"--config={bad}"])


def test_a_flag_turns_off_a_boolean_the_config_turned_on(tmp_path):
    config = tmp_path / "job.yaml"
    config.write_text("trust_model_code: true\njit_compile: true\n")
    job = parse(["--config", str(config)]).view_as(GradientOptions)
    assert job.trust_model_code and job.jit_compile
    job = parse(["--config", str(config), "--no_trust_model_code", "--no_jit_compile"]).view_as(GradientOptions)
    assert not job.trust_model_code and not job.jit_compile


def test_help_lists_every_option_with_a_description():
    text = help_text()
    parser_options = []
    import argparse

    parser = argparse.ArgumentParser()
    GradientOptions._add_argparse_args(parser)
    for action in parser._actions:
        parser_options += [s for s in action.option_strings if s.startswith("--") and s != "--help"]
    assert len(parser_options) >= 20
    for option in parser_options:
        line = re.search(rf"^\s+{re.escape(option)}\b.*$", text, re.M)
        assert line, option
    for name in (
        "--input",
        "--output",
        "--model",
        "--feature_columns",
        "--keep_columns",
        "--target",
        "--label_column",
        "--loss",
        "--clip_norm",
        "--batch_size",
        "--config",
        "--input_map",
        "--unconnected",
        "--emit",
        "--trust_model_code",
    ):
        assert name in parser_options


def test_console_script_is_installed():
    script = os.path.join(os.path.dirname(sys.executable), "beam-gradients")
    done = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "--feature_columns" in done.stdout and "--clip_norm" in done.stdout


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ["--keep_columns", "id,nope"],
            r"key column 'nope' not found in .*a.parquet; its columns are: id, img, meta, y",
        ),
        (["--feature_columns", "img"], r"model input 'meta' is mapped to no column.*--input_map meta=<column>"),
        (["--input_map", "picture=img"], r"--input_map names 'picture', which the model does not have"),
        (  # both given: the map feeds every input, so --feature_columns would be ignored
            ["--input_map", "img=img,meta=meta", "--feature_columns", "y"],
            r"--feature_columns 'y': no model input reads it \(--input_map maps img=img, meta=meta\); drop it or map it",
        ),
        (["--target", "loss", "--loss", "mse"], r"--loss needs --label_column"),
        (  # a row input is named by the option that chose its column, not as a model input
            ["--input_map", "img=img,meta=meta", "--target", "loss", "--loss", "mse", "--label_column", "meta"],
            r"--label_column 'meta': column 'meta' holds shape \(3,\) per row, but the label needs shape \(1,\)",
        ),
        (["--target", "loss"], r"--target loss needs --loss"),
        (["--loss", "hinge_of_doom", "--label_column", "y"], r"unknown --loss 'hinge_of_doom'"),
        (["--batch_size", "0"], r"--batch_size must be 1 or more, not 0"),
        (["--input_map", "img=y,meta=meta"], r"model input 'img' takes 4 values per example \(shape \(2, 2\)\), but one scalar column was given: y"),
        (
            ["--input_map", "img=meta,meta=img"],
            r"column 'meta' holds shape \(3,\) per row, but model input 'img' needs shape \(2, 2\)",
        ),
        (["--target", "sideways"], r"argument --target: invalid choice: 'sideways'"),
        (
            ["--feature_columns", "pixels"],
            r"feature column 'pixels' not found in .*a.parquet; its columns are: id, img",
        ),
        (
            ["--input_map", "img=img,meta=meta", "--target", "loss", "--loss", "mse", "--label_column", "label"],
            r"label column 'label' not found in .*a.parquet; its columns are: id, img, meta, y",
        ),
        (["--target", "loss", "--loss", "os.system('x'):f", "--label_column", "y"], r"give a Keras loss name or module.path:function"),
        (["--output", "/proc/version/out/g"], r"--output '/proc/version/out/g': cannot write there"),
        # a marker vouches only for its own folder: --rejected elsewhere is refused before anything is written
        (["--rejected", "/proc/version/rejected"], r"--rejected '/proc/version/rejected' must sit in the folder of --output"),
    ],
)
def test_option_errors_are_one_clear_line_before_any_data_is_read(tmp_path, job, capsys, extra, message):
    _, args = job
    assert main(args + extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert re.search(message, err[-1]), err
    assert "Traceback" not in "\n".join(err)
    assert not list(tmp_path.glob("out/**/*"))  # nothing ran, nothing was written


def test_a_key_column_named_like_a_rejected_rows_column_is_refused_at_planning(tmp_path, job, capsys):
    """The rejected rows have their own stage, reason and source_file: a key so named would be there twice."""
    _, args = job
    table = pq.read_table(tmp_path / "in/a.parquet")
    pq.write_table(table.rename_columns(["stage", *table.column_names[1:]]), tmp_path / "staged.parquet")
    args = [args[0], "--input", str(tmp_path / "staged.parquet"), *args[3:], "--keep_columns", "stage"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "beam-gradients: error: key column 'stage' clashes with the rejected-rows output's own column of that name; "
        "rename the key column or drop it from --keep_columns"
    ]
    assert not list(tmp_path.glob("out/**/*"))  # nothing ran, nothing was written


def test_inputs_that_match_nothing_or_are_not_parquet(tmp_path, job, capsys):
    _, args = job
    args = [a for a in args if "in/*.parquet" not in a]
    args.remove("--input")
    assert main(args + ["--input", str(tmp_path / "missing/*.parquet")]) == 2
    assert "matches no file" in capsys.readouterr().err
    (tmp_path / "text.parquet").write_text("hello")
    assert main(args + ["--input", str(tmp_path / "text.parquet")]) == 2
    assert "text.parquet is not a readable Parquet file" in capsys.readouterr().err
    whole = (tmp_path / "in/a.parquet").read_bytes()
    (tmp_path / "cut.parquet").write_bytes(whole[: len(whole) // 2])  # a copy that stopped halfway
    assert main(args + ["--input", str(tmp_path / "cut.parquet")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cut.parquet is not a readable Parquet file" in err[0]


def test_a_list_given_on_the_command_line_replaces_the_defaults_list_not_adds_to_it():
    defaults = ["--emit=predictions,norm", "--feature_columns=image", "--keep_columns=id"]
    job = parse(["--emit", "norm", "--keep_columns=id", "--keep_columns=day"], defaults=defaults).view_as(
        GradientOptions
    )
    assert (job.emit, job.feature_columns, job.keep_columns) == ("norm", "image", "id,day")


def test_a_boolean_flag_in_a_config_is_given_for_true_whatever_its_name(tmp_path):
    """`no_trust_model_code: true` undoes an earlier `trust_model_code` (it was silently ignored before)."""
    config = tmp_path / "job.yaml"
    config.write_text("trust_model_code: true\nno_trust_model_code: true\njit_compile: false\n")
    job = parse(["--config", str(config)]).view_as(GradientOptions)
    assert job.trust_model_code is False and job.jit_compile is False
    config.write_text("trust_model_code: true\n")
    assert parse(["--config", str(config)]).view_as(GradientOptions).trust_model_code is True


def test_run_keyword_arguments_are_checked_like_a_configs_options():
    from pipeline.run import run

    with pytest.raises(OptionsError, match=r"^run\(\): unknown option 'batch_sise'; did you mean 'batch_size'\?$"):
        run(batch_sise=3)
    with pytest.raises(OptionsError, match=r"^run\(\): trust_model_code takes true or false, not 'yes'$"):
        run(trust_model_code="yes")
