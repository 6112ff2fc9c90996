"""Job types for lifecycle tests, written as a module OUTSIDE the repository (in a temp dir), as a
partner's would be, and registered the way an installed package registers its job types: an entry
point in the ``jobline.job_types`` group (a ``.dist-info`` folder next to the module, so that
``importlib.metadata`` finds it on the path, in this process and in subprocesses alike)."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

MODULE_NAME = "partner_jobtypes"
ECHO_IMAGE = "jobline-test/echo:1"
SCRIPT_IN_IMAGE = "/opt/echo/echo.sh"

#: The processing of the test job types, by product name prefix: ok-* exits 0 with an output;
#: flaky-* exits 2 on its first attempt, then 0; retry-* always exits 2; broken-* exits 1;
#: empty-* exits 0 without output; sleepy-* sleeps past any test timeout.
SCRIPT = r"""
set -eu
product=$(ls input)
echo "processing $product, attempt $JOBLINE_ATTEMPT"
case "$product" in
  flaky-*)
    if [ "$JOBLINE_ATTEMPT" = 1 ]; then
      echo "transient trouble, asking for a retry"
      exit 2
    fi ;;
  retry-*) echo "still transient"; exit 2 ;;
  broken-*) echo "cannot read the input"; exit 1 ;;
  empty-*) echo "nothing to produce"; exit 0 ;;
  sleepy-*) echo "sleeping"; sleep 60 ;;
esac
cat input/"$product"/data.txt > output/result.txt
echo done
"""


def write_partner_module(directory: Path, input_dir: Path, output_dir: Path) -> str:
    """Write the module into ``directory``, put it on sys.path, return the local job type's
    import path (``partner_jobtypes:Echo``; ``partner_jobtypes:DockerEcho`` runs in Docker)."""
    directory.mkdir(parents=True, exist_ok=True)
    source = f'''
        """A partner's job types, outside the jobline repository."""
        from jobtypes.base import JobType

        class Echo(JobType):
            name = "echo"
            queue = "echo"
            local_command = ["sh", "-c", {SCRIPT!r}]
            command = local_command
            runner = "local"
            max_attempts = 3
            timeout = 60
            input_storage = "file://{input_dir}"
            output_storage = "file://{output_dir}"

        class DockerEcho(Echo):
            name = "docker_echo"
            queue = "docker_echo"
            image = {ECHO_IMAGE!r}
            command = ["/bin/sh", {SCRIPT_IN_IMAGE!r}]
            runner = "docker"
            worker_flavor = "extra_small"
            timeout = 3

            def configure_job(self, job, store):
                from jobtypes.base import Configuration

                if job.product_id.startswith("noimage-"):
                    return Configuration(config={{"image": "jobline-test/absent:404"}})
                return Configuration()
        '''
    (directory / f"{MODULE_NAME}.py").write_text(textwrap.dedent(source))
    declare_job_types(
        directory,
        "partner-jobtypes",
        {"echo": f"{MODULE_NAME}:Echo", "docker_echo": f"{MODULE_NAME}:DockerEcho"},
    )
    if str(directory) not in sys.path:
        sys.path.insert(0, str(directory))
    sys.modules.pop(MODULE_NAME, None)
    return f"{MODULE_NAME}:Echo"


def declare_job_types(directory: Path, distribution: str, job_types: dict[str, str]) -> None:
    """Declare ``job_types`` (entry point name -> ``module:Class``) as an installed
    distribution in ``directory`` declares them (``[project.entry-points."jobline.job_types"]``
    in its pyproject.toml ends up as this ``entry_points.txt``)."""
    info = directory / f"{distribution.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 0.1\n")
    lines = [f"{name} = {path}" for name, path in job_types.items()]
    (info / "entry_points.txt").write_text("[jobline.job_types]\n" + "\n".join(lines) + "\n")


def write_products(input_dir: Path, names: list[str]) -> None:
    for name in names:
        folder = input_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "data.txt").write_text(f"data of {name}\n")


def write_snow_cover_on(directory: Path, input_url: str, output_url: str, name: str) -> str:
    """A module defining the demo job type on other storage (e.g. s3://); returns its path."""
    directory.mkdir(parents=True, exist_ok=True)
    module = f"snow_on_{name}"
    source = f"""
        from jobtypes.demo import SnowCover

        class Remote(SnowCover):
            name = {name!r}
            queue = {name!r}
            input_storage = {input_url!r}
            output_storage = {output_url!r}
        """
    (directory / f"{module}.py").write_text(textwrap.dedent(source))
    declare_job_types(directory, f"snow-on-{name}", {name: f"{module}:Remote"})
    if str(directory) not in sys.path:
        sys.path.insert(0, str(directory))
    sys.modules.pop(module, None)
    return f"{module}:Remote"
