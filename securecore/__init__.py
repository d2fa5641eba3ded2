"""SecureCore: the hardened, HSM-backed core service and its operator tooling."""

__version__ = "0.1.0"
