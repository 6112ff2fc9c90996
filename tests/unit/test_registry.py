"""The job type allow-list (``jobtypes.registry``): what is registered, how references resolve,
and that nothing unregistered is ever imported."""

from __future__ import annotations

import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobline.exceptions import JobTypeError
from jobline.settings import Settings
from jobtypes.base import load_job_type
from jobtypes.registry import JobTypeRegistry, registry_for
from tests.support.jobtypes import declare_job_types

TYPES = """
    from jobtypes.base import JobType

    class Ice(JobType):
        name = "lake_ice"
        command = ["true"]

    class OtherIce(JobType):
        name = "lake_ice"
        command = ["true"]

    class Broken(JobType):
        name = ""
        command = []

    Alias = Ice
    NOT_A_CLASS = 42
    """


@pytest.fixture
def module(tmp_path: Path) -> Iterator[str]:
    """A partner module on the path, never imported by the fixture itself."""
    name = f"partner_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(TYPES))
    sys.path.insert(0, str(tmp_path))
    yield name
    sys.path.remove(str(tmp_path))
    sys.modules.pop(name, None)


def test_only_the_demo_is_registered_by_default() -> None:
    registry = JobTypeRegistry.of([])
    assert registry.paths()[0] == "jobtypes.demo:SnowCover"
    assert registry.job_type_class("snow_cover").import_path() == "jobtypes.demo:SnowCover"


def test_an_unlisted_module_is_refused_and_not_imported(module: str) -> None:
    registry = JobTypeRegistry.of([])
    with pytest.raises(JobTypeError, match="not a registered job type") as refused:
        registry.job_type_class(f"{module}:Ice")
    assert module not in sys.modules
    same = pytest.raises(JobTypeError)
    with same as other:
        registry.job_type_class("no_such_module:Ice")
    shown = str(refused.value).replace(f"{module}:Ice", "X")
    assert shown == str(other.value).replace("no_such_module:Ice", "X")


def test_settings_register_import_paths(module: str) -> None:
    settings = Settings(job_types=f"{module}:Ice, {module}:Alias")
    assert settings.job_types == [f"{module}:Ice", f"{module}:Alias"]
    kind = load_job_type(f"{module}:Ice", settings)
    assert kind.name == "lake_ice"
    assert load_job_type("lake_ice", settings).import_path() == f"{module}:Ice"
    # An alias resolves to the class it names, stored by its defining path.
    assert registry_for(settings).canonical(f"{module}:Alias") == f"{module}:Ice"


def test_settings_refuse_what_is_not_an_import_path() -> None:
    with pytest.raises(ValueError, match="not import paths"):
        Settings(job_types=["this"])
    assert Settings(job_types='["a.b:C"]').job_types == ["a.b:C"]


def test_a_name_two_registered_job_types_share_is_ambiguous(module: str) -> None:
    settings = Settings(job_types=[f"{module}:Ice", f"{module}:OtherIce"])
    with pytest.raises(JobTypeError, match="ambiguous") as ambiguous:
        load_job_type("lake_ice", settings)
    assert f"{module}:Ice" in str(ambiguous.value) and f"{module}:OtherIce" in str(ambiguous.value)
    assert load_job_type(f"{module}:OtherIce", settings).import_path() == f"{module}:OtherIce"
    assert "lake_ice" not in registry_for(settings).accepted_references()


@pytest.mark.parametrize(
    ("attribute", "reason"),
    [("Broken", "malformed"), ("NOT_A_CLASS", "not a subclass"), ("Missing", "not a subclass")],
)
def test_a_registered_but_malformed_job_type_is_named(
    module: str, attribute: str, reason: str
) -> None:
    settings = Settings(job_types=[f"{module}:{attribute}"])
    with pytest.raises(JobTypeError, match=reason):
        load_job_type(f"{module}:{attribute}", settings)


def test_installed_packages_register_through_the_entry_point_group(tmp_path: Path) -> None:
    name = f"declared_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(TYPES))
    declare_job_types(tmp_path, f"{name}-dist", {"ice": f"{name}:Ice"})
    sys.path.insert(0, str(tmp_path))
    try:
        settings = Settings()
        registry = registry_for(settings)
        (registration,) = [r for r in registry.registrations() if r.path == f"{name}:Ice"]
        assert registration.label == "ice" and "entry point" in registration.source
        assert load_job_type("ice", settings).import_path() == f"{name}:Ice"  # its entry name
        assert load_job_type("lake_ice", settings).name == "lake_ice"  # its own name
        assert {"ice", "lake_ice", f"{name}:Ice"} <= set(registry.accepted_references())
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(name, None)
    assert f"{name}:Ice" not in registry_for(Settings()).paths(), "gone with its path"


def test_odd_references_are_refused_before_any_lookup() -> None:
    registry = JobTypeRegistry.of([])
    for reference in ["", "a b", "../x", "x:", ":y", "a:b:c", "\ud800", "x" * 300]:
        with pytest.raises(JobTypeError, match="not a registered job type"):
            registry.job_type_class(reference)
