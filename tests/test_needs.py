"""The one rule for what tests need from outside: skip naming the install step, fail under CI."""

import shutil

import needs
import pytest


@pytest.fixture
def no_mosquitto(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name, path=None: None)


def test_an_absent_program_skips_with_its_install_step(no_mosquitto, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(
        pytest.skip.Exception, match=r"the program `mosquitto` is not installed .*apt-get install -y mosquitto"
    ):
        needs.require_program("mosquitto")


@pytest.mark.parametrize("value", ["true", "1", "yes"])
def test_under_ci_an_absent_program_is_a_failure_naming_it(no_mosquitto, monkeypatch, value):
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.fail.Exception, match=r"CI=true and the program `mosquitto_passwd` is missing"):
        needs.require_program("mosquitto_passwd")


def test_an_absent_extra_is_named_and_a_missing_import_is_recognised(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setattr(needs.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(pytest.skip.Exception, match=r"`torch` \(extra `export`\) .*pip install -e \"\.\[export\]\""):
        needs.require_torch_side()
    assert needs.missing_optional_module("ModuleNotFoundError: No module named 'torchvision.ops'") == "torchvision"
    assert needs.missing_optional_module("ModuleNotFoundError: No module named 'zsad_edge.nope'") is None
