"""ansible-test's pip bootstrap, made from PyPI's pip wheel.

ansible-test creates each sanity venv without pip and runs a get-pip script it downloads
from ci-files.testing.ansible.com, which this network (and many staging hosts) cannot
reach. This does what that script does: run pip from its own wheel (a wheel is importable)
to install pip itself into the venv. The Makefile puts this file and the pinned pip wheel
where ansible-test looks for its cached copy (~/.ansible/test/cache/get_pip_<version>.py).
"""

import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
VERSION = pathlib.Path(__file__).stem.removeprefix("get_pip_").replace("_", ".")
WHEEL = HERE / f"pip-{VERSION}-py3-none-any.whl"

if __name__ == "__main__":
    sys.path.insert(0, str(WHEEL))
    from pip._internal.cli.main import main  # from the wheel just added

    options = [arg for arg in sys.argv[1:] if arg not in ("--no-setuptools", "--no-wheel")]
    sys.exit(main(["install", "--upgrade", "--force-reinstall", *options]))
