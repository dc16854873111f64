"""Registered presets (sambench/registry.py: Preset): variants that differ from a class only in
constructor arguments resolve by name, keep their task, and feed the pairing and type checks."""

from __future__ import annotations

import inspect

import pytest

from sambench.cli.config_types import check_section, signature_hints
from sambench.tasks import REFERRING, SEMANTIC_FEW_SHOT
from sambench.errors import ConfigError
from sambench.registry import DATASETS, METHODS, Preset, check_pairing, load_plugins, lookup

load_plugins()

METHOD_PRESETS = {
    "ssprompt": dict(learn_spatial=True, learn_semantic=True, coop=False),
    "spaprompt": dict(learn_spatial=True, learn_semantic=False, coop=False),
    "semprompt": dict(learn_spatial=False, learn_semantic=True, coop=False),
    "zero_shot_prompts": dict(learn_spatial=False, learn_semantic=False, coop=False),
    "coop": dict(learn_spatial=False, learn_semantic=False, coop=True),
}
INJECTIONS = {"dit_layerwise": "layerwise", "dit_e2e": "e2e", "sam_text": "none"}
REFER = {"refcocop": ("refcoco+", "unc"), "refcocog": ("refcocog", "umd")}


class Toy:
    """A toy class."""

    TASK = "toy"

    def __init__(self, *, size: int = 1, mode: str = "a", flag: bool = False):
        self.size, self.mode, self.flag = size, mode, flag


def test_preset_changes_defaults_fixes_arguments_and_reads_class_attributes():
    preset = Preset(Toy, defaults=dict(size=3), fixed=dict(flag=True), doc="A bigger toy.")
    built = preset(mode="b")
    assert isinstance(built, Toy) and (built.size, built.mode, built.flag) == (3, "b", True)
    assert preset(size=5).size == 5  # a default, not fixed
    with pytest.raises(ConfigError, match=r"flag=True is what this preset of Toy is"):
        preset(flag=False)
    parameters = inspect.signature(preset).parameters
    assert list(parameters) == ["size", "mode"] and parameters["size"].default == 3
    assert preset.TASK == "toy" and preset.__doc__ == "A bigger toy." and Preset(Toy).__doc__ == Toy.__doc__
    hints, open_ended = signature_hints(preset)
    assert {k: v for k, v in hints.items() if k != "self"} == {"size": int, "mode": str} and not open_ended
    with pytest.raises(TypeError, match="colour not constructor arguments"):
        Preset(Toy, defaults=dict(colour="red"))


def test_method_presets_resolve_with_their_task_and_arguments():
    for name, fixed in METHOD_PRESETS.items():
        preset = lookup(METHODS, name)
        assert isinstance(preset, Preset) and preset.fixed == fixed and preset.TASK == SEMANTIC_FEW_SHOT
        assert not set(fixed) & set(inspect.signature(preset).parameters)
    for name, injection in INJECTIONS.items():
        preset = lookup(METHODS, name)
        assert isinstance(preset, Preset) and preset.TASK == REFERRING
        assert inspect.signature(preset).parameters["injection"].default == injection
    assert lookup(METHODS, "ovsam").cls is lookup(METHODS, "clip2sam")


def test_dataset_presets_resolve_with_their_defaults():
    for name, (folder, split_by) in REFER.items():
        preset = lookup(DATASETS, name)
        assert isinstance(preset, Preset) and preset.cls is lookup(DATASETS, "refcoco")
        parameters = inspect.signature(preset).parameters
        assert (parameters["dataset"].default, parameters["split_by"].default) == (folder, split_by)
        assert preset.TASKS == (REFERRING,)


def test_pairing_check_works_with_presets():
    check_pairing("dit_e2e", "refcocog")
    check_pairing("coop", "cityscapes")
    with pytest.raises(ConfigError, match=r"method 'spaprompt' \(task 'semantic_few_shot'\) cannot run on dataset "
                                          r"'refcocop'; datasets that fit: acdc, ade20k, bdd100k, cityscapes"):
        check_pairing("spaprompt", "refcocop")
    with pytest.raises(ConfigError, match=r"datasets that fit: refcoco, refcocog, refcocop$"):
        check_pairing("sam_text", "cityscapes")


def test_config_type_check_reads_the_presets_signature():
    spaprompt = lookup(METHODS, "spaprompt")
    check_section("method", spaprompt, {"grid": 4, "fusion": "average"})
    with pytest.raises(ConfigError, match=r"method.grid='x': expected an integer"):
        check_section("method", spaprompt, {"grid": "x"})
    with pytest.raises(ConfigError, match=r"unknown key method.learn_semantic; valid: .*fusion"):
        check_section("method", spaprompt, {"learn_semantic": True})  # what the name says is fixed
    refcocog = lookup(DATASETS, "refcocog")
    check_section("dataset", refcocog, {"split_by": "google", "max_samples": 2})
    with pytest.raises(ConfigError, match=r"dataset.split_by=3: expected a string"):
        check_section("dataset", refcocog, {"split_by": 3})


def test_a_bad_preset_name_lists_the_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown method 'spaprompts' \(did you mean 'spaprompt'\?\); valid: .*coop, "
                                          r"dit_e2e, dit_layerwise.*semprompt.*ssprompt.*zero_shot_prompts"):
        lookup(METHODS, "spaprompts")
    with pytest.raises(ConfigError, match=r"unknown dataset 'refcocoq' \(did you mean '.*'\?\); valid: .*refcocog, refcocop"):
        lookup(DATASETS, "refcocoq")
