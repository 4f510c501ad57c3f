"""requirements.lock pins every dependency setup.sh installs: reproducible installs, checked against pyproject."""

import re
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def _lock(root) -> dict[str, str]:
    pins = {}
    for line in (root / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            match = re.fullmatch(r"([A-Za-z0-9_.\-\[\]]+)==([^\s;]+)", line.strip())
            assert match, f"requirements.lock: {line!r} is not an exact `name==version` pin"
            pins[canonicalize_name(match.group(1))] = match.group(2)
    return pins


def test_lock_pins_every_dependency_of_pyproject_exactly(root):
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + [d for extra in project["optional-dependencies"].values() for d in extra]
    pins = _lock(root)
    for text in wanted:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} (pyproject.toml) is not in requirements.lock; run scripts/lock.sh"
        assert req.specifier.contains(pins[name], prereleases=True), \
            f"requirements.lock pins {req.name}=={pins[name]}, outside pyproject's {req.specifier}"
    assert pins["torch"] == "2.13.0", "torch stays pinned at 2.13.0 (other versions pull CUDA packages here)"


def test_setup_installs_from_the_lock(root):
    setup = (root / "scripts" / "setup.sh").read_text()
    assert "-r requirements.lock" in setup and "--no-deps -e ." in setup


def test_installed_versions_match_the_lock(root):
    """The environment the tests run in is the locked one (catches a lock edited without reinstalling)."""
    from importlib.metadata import PackageNotFoundError, version

    mismatched = {}
    for name, pinned in _lock(root).items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            mismatched[name] = (pinned, "missing")
            continue
        if installed.split("+")[0] != pinned.split("+")[0]:
            mismatched[name] = (pinned, installed)
    assert not mismatched, f"installed versions differ from requirements.lock: {mismatched}"
