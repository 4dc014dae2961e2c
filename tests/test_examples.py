"""Every shipped example config validates, and the demo preset equals its file."""

from pathlib import Path

import pytest
import yaml

from ddray.config import load_config
from ddray.presets import DEMO, demo_config

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_validates(path):
    load_config(path)


def test_demo_preset_matches_examples_file():
    path = Path(__file__).resolve().parents[1] / "examples" / "digits.yaml"
    assert load_config(path) == demo_config()
    assert yaml.safe_load(path.read_text()) == DEMO


def test_default_output_folders_never_collide(tmp_path):
    from ddray.cli import fresh_output

    base = tmp_path / "runs" / "demo"
    assert fresh_output(base) == base
    base.mkdir(parents=True)
    (base / "config.yaml").write_text("{}")
    assert fresh_output(base) == tmp_path / "runs" / "demo-2"
    (tmp_path / "runs" / "demo-2").mkdir()
    (tmp_path / "runs" / "demo-2" / "config.yaml").write_text("{}")
    assert fresh_output(base) == tmp_path / "runs" / "demo-3"
