"""A plugin that answers badly on purpose, for the trust tests:
python -m tests.support.misbehaving_plugin MODE TLS_POLICY STATE_DIR PORT [NAME [CORE_PRINCIPALS]],
MODE one of good, bad_signature, replay, garbage; NAME "example" and CORE_PRINCIPALS
(comma-separated) "core/localhost" by default.

It is the SDK's PluginServer with only the sealing of answers changed.
"""

from __future__ import annotations

import base64
import sys
from typing import Any

from securecore.crypto.channel import Opened
from securecore.plugin_sdk.server import PluginServer


class Misbehaving(PluginServer):
    def __init__(self, mode: str, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.mode, self.first_answer = mode, None

    def seal_answer(self, request: Opened, answer: dict[str, Any]) -> Any:
        sealed = super().seal_answer(request, answer)
        if self.first_answer is None:  # the registration's test passes; then it turns
            self.first_answer = sealed
            return sealed
        if self.mode == "bad_signature":
            signature = bytearray(base64.b64decode(sealed["sig"]))
            signature[-1] ^= 1
            sealed["sig"] = base64.b64encode(bytes(signature)).decode()
        elif self.mode == "replay":
            sealed = self.first_answer  # every later answer is the first one again
        elif self.mode == "garbage":
            return {"lorem": "ipsum"}
        return sealed


def main() -> None:
    mode, policy, state, port = sys.argv[1:5]
    name = sys.argv[5] if len(sys.argv) > 5 else "example"
    cores = (sys.argv[6] if len(sys.argv) > 6 else "core/localhost").split(",")
    plugin = Misbehaving(
        mode,
        name,
        {"echo": lambda args, caller: args},
        tls_policy=policy,
        state_dir=state,
        core_principals=cores,
    )
    plugin.run("127.0.0.1", int(port))


if __name__ == "__main__":
    main()
