"""SecureCore: the hardened, HSM-backed core service and its operator tooling."""

from importlib.metadata import PackageNotFoundError, version

try:  # the installed distribution's version (a release built from pyproject.toml)
    __version__ = version("securecore")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"
