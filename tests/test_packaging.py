"""pyproject.toml declares lower bounds only (a user with a newer PyTorch can install nas-zoo), and the
versions the suite runs with meet them."""
from importlib.metadata import version
from pathlib import Path
from typing import List

import pytest
from packaging.requirements import Requirement

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def requirements(text: str, extras: bool = True) -> List[Requirement]:
    project = tomllib.loads(text)["project"]
    declared = list(project["dependencies"])
    if extras:
        declared += [r for group in project.get("optional-dependencies", {}).values() for r in group]
    return [Requirement(r) for r in declared]


def not_lower_bounds(declared: List[Requirement]) -> List[str]:
    """The requirements with a clause other than ``>=`` (an upper bound, a pin, an exclusion) or none."""
    return [str(r) for r in declared if not r.specifier or any(s.operator != ">=" for s in r.specifier)]


def test_the_check_finds_an_upper_bound_and_a_pin():
    text = '[project]\ndependencies = ["torch>=2.1,<=2.14.1", "timm==1.0.15", "rich", "safetensors>=0.4"]\n'
    assert not_lower_bounds(requirements(text)) == ["torch<=2.14.1,>=2.1", "timm==1.0.15", "rich"]


def test_every_dependency_has_a_lower_bound_only():
    declared = requirements(PYPROJECT.read_text())
    assert {"torch", "torchvision"} <= {r.name for r in declared}
    assert not_lower_bounds(declared) == []


def test_the_installed_versions_meet_the_lower_bounds():
    for requirement in requirements(PYPROJECT.read_text(), extras=False):
        assert requirement.specifier.contains(version(requirement.name), prereleases=True), \
            f"{requirement.name} {version(requirement.name)} does not meet {requirement}"
