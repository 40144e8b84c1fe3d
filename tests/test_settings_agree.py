"""Each setting is declared once; everything that offers it (GradientSpec, the CLI's flags, YAML keys, the API,
the Airflow DAGs, docs/options.md) must agree with its declaration, and nothing may offer an undeclared one."""

import argparse
import ast
import dataclasses
import inspect
import pathlib
import re

import pytest

from pipeline.options import (
    GradientOptions,
    InfluenceOptions,
    OptionsError,
    flag_text,
    main_settings,
    mapping_args,
    all_options_parser,
    options_reference,
    parse,
)
from pipeline.settings import INFLUENCE_SHARED, influence_settings
from transforms.gradients.declared import SETTINGS as ENGINE_COPY
from transforms.gradients.settings import Setting, python_source
from transforms.gradients.spec import SETTINGS, GradientSpec, declared_settings, spec_from_kwargs

ROOT = pathlib.Path(__file__).resolve().parents[1]
MAIN = {s.name: s for s in main_settings()}
INFLUENCE = {s.name: s for s in influence_settings()}
# The DAGs' own params (where the day's partition is, which runner and cloud project), not the job's options.
DAG_OWN = {"runner", "input_base", "output_base", "project", "region"}
# The API takes the key columns as `keep_columns` (the CLI's name) or `key_columns` (its older name).
API_RENAMED = {"keep_columns": "key_columns"}


def actions(options_class) -> dict[str, argparse.Action]:
    parser = argparse.ArgumentParser(add_help=False)
    options_class._add_argparse_args(parser)
    return {flag: a for a in parser._actions for flag in a.option_strings}


def a_value(setting: Setting):
    """A valid value of the setting, not its default where one is allowed."""
    if setting.type is bool:
        return True
    if setting.choices:
        return [setting.choices[-1]] if setting.items else setting.choices[-1]
    if setting.type in (int, float):
        return setting.type(max(setting.minimum or 0, setting.above or 0) + 1 if setting.maximum is None else setting.maximum)
    return ["a", "b"] if setting.items else "x"


@pytest.mark.parametrize("options_class, declared", [(GradientOptions, MAIN), (InfluenceOptions, INFLUENCE)])
def test_every_declared_setting_is_a_flag_with_its_type_default_choices_and_help(options_class, declared):
    flags = actions(options_class)
    for name, setting in declared.items():
        action = flags[f"--{name}"]
        assert action.dest == name
        assert action.help == flag_text(setting.help)
        if setting.type is bool:
            assert isinstance(action, argparse._StoreTrueAction) and action.default is False
            undo = flags.get(f"--no_{name}")
            assert (undo is not None) == setting.negatable
            assert undo is None or (isinstance(undo, argparse._StoreFalseAction) and undo.dest == name)
            continue
        assert action.type is (None if setting.type is str else setting.type), name
        assert action.default == (None if setting.items else setting.default), name
        assert action.choices == (None if setting.items else setting.choices), name


@pytest.mark.parametrize("options_class, declared", [(GradientOptions, MAIN), (InfluenceOptions, INFLUENCE)])
def test_no_flag_exists_without_a_declaration(options_class, declared):
    names = set(declared) | {f"no_{n}" for n, s in declared.items() if s.negatable}
    assert {flag[2:] for flag in actions(options_class)} == names


def test_the_spec_fields_are_the_declared_spec_settings_with_their_defaults():
    fields = {f.name: f.default for f in dataclasses.fields(GradientSpec)}
    assert fields == {s.name: s.default for s in SETTINGS.values() if s.kind == "spec"}
    assert set(SETTINGS) == {s.name for s in ENGINE_COPY}  # the column settings are the rest
    assert {s.name for s in ENGINE_COPY if s.kind == "column"} == {"label_column", "class_column"}


def test_the_command_lines_copy_of_the_engines_declarations_is_current():
    text = (ROOT / "transforms/gradients/declared.py").read_text()
    assert text == python_source(declared_settings(), _doc(text)), "stale: run python docs/make_options.py"


def _doc(text: str) -> str:
    return ast.get_docstring(ast.parse(text), clean=False)


def test_docs_options_md_is_the_generated_reference():
    assert (ROOT / "docs/options.md").read_text() == options_reference(), "stale: run python docs/make_options.py"
    text = options_reference()
    for name in list(MAIN) + list(INFLUENCE):
        assert f"| `--{name}` |" in text


def test_a_yaml_config_accepts_exactly_the_declared_keys(tmp_path):
    parser = all_options_parser()
    for name, setting in MAIN.items():
        if name in ("config", "demo"):
            continue
        args = mapping_args({name: a_value(setting)}, parser, "c.yaml")
        assert args and args[0].startswith(f"--{name}"), name
    with pytest.raises(OptionsError, match="c.yaml: unknown option 'stepz'"):
        mapping_args({"stepz": 3}, parser, "c.yaml")
    config = tmp_path / "c.yaml"
    config.write_text("".join(f"{name}: {a_value(s)!r}\n".replace("'", "") for name, s in SETTINGS.items()
                              if s.type is not bool and not s.items and s.name != "weights"))
    job = parse(["--config", str(config)]).view_as(GradientOptions)
    for name, setting in SETTINGS.items():
        if setting.type is not bool and not setting.items and name != "weights":
            assert getattr(job, name) == a_value(setting), name


def test_the_api_accepts_exactly_the_declared_settings():
    for name, setting in SETTINGS.items():
        if setting.kind == "spec":
            assert getattr(spec_from_kwargs(**{name: setting.default}), name) == setting.default
    for name in ("label_column", "batch_size", "stepz"):
        with pytest.raises(TypeError, match=f"unexpected setting '{name}'"):
            spec_from_kwargs(**{name: 1})
    from transforms.api import ComputeGradients

    params = inspect.signature(ComputeGradients.__init__).parameters
    explicit = set(params) - {"self", "model", "schema", "spec_options"}
    declared = {n for n, s in MAIN.items() if s.kind in ("spec", "column")}
    declared |= {s.name for s in __import__("transforms.job_settings").job_settings.COMPUTE_SETTINGS}
    offered = declared | {API_RENAMED[n] for n in declared if n in API_RENAMED}  # the name, or its older alias
    assert explicit <= offered, explicit - offered  # every explicit keyword is a declared setting
    assert params["batch_size"].default == MAIN["batch_size"].default
    for name in explicit & set(SETTINGS):
        assert params[name].default in (SETTINGS[name].default, tuple(SETTINGS[name].default or ())), name


@pytest.mark.parametrize("dag, declared", [("gradients_dag.py", MAIN), ("influence_dag.py", {**INFLUENCE, **{
    n: MAIN[n] for n in INFLUENCE_SHARED}})])
def test_the_dags_params_are_declared_settings(dag, declared):
    tree = ast.parse((ROOT / "dags" / dag).read_text())
    defaults = next(ast.literal_eval(node.value) for node in ast.walk(tree)
                    if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "DEFAULTS")
    job_params = set(defaults) - DAG_OWN
    assert job_params <= set(declared), job_params - set(declared)
    for name in job_params:  # a DAG leaves the job's default to the job: None, or a value the setting allows
        assert defaults[name] is None or declared[name].type is str, name
    keys = {k.value for node in ast.walk(tree) if isinstance(node, ast.keyword) and node.arg == "pipeline_options"
            and isinstance(node.value, ast.Dict) for k in node.value.keys}
    assert keys <= set(declared) | {"rejected"}, keys - set(declared)


def test_a_help_names_only_declared_settings():
    every = set(MAIN) | set(INFLUENCE)
    for setting in list(MAIN.values()) + list(INFLUENCE.values()):
        named = set(re.findall(r"\{(\w+)\}", setting.help))
        assert named <= every, (setting.name, named - every)


def test_a_value_out_of_its_declared_range_is_refused_alike_by_the_cli_and_the_spec():
    from transforms.gradients import SpecError

    for name in ("steps", "samples", "k", "chunk", "projection_dim", "weight_memory_mb", "noise", "clip_norm"):
        setting = SETTINGS[name]
        bad = (setting.minimum if setting.minimum is not None else setting.above) - 1
        with pytest.raises(SpecError) as spec_error:
            GradientSpec(**{name: setting.type(bad)})
        with pytest.raises(SpecError) as cli_error:
            from pipeline.options import check_values

            check_values(parse([f"--{name}", str(setting.type(bad))]).view_as(GradientOptions))
        assert str(cli_error.value) == str(spec_error.value).replace(name, f"--{name}", 1)
    with pytest.raises(SpecError, match="^steps takes an integer, not '5'$"):
        GradientSpec(method="integrated_gradients", steps="5")
