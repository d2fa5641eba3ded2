"""The plugin SDK: a plugin server in a few lines.

    from securecore.plugin_sdk import PluginServer

    def create_ticket(args, caller):
        ...
        return {"id": ticket_id}

    plugin = PluginServer("ticket-store", {"tickets.create": create_ticket},
                          tls_policy="/etc/securecore/tls/policy.json",
                          state_dir="/var/lib/ticket-store",
                          core_principals=["core/core-01", "core/core-02"])
    plugin.run("0.0.0.0", 9443)

What the SDK does for the plugin: serves mutual TLS 1.3 only (the site's TLS
policy), accepts channel keys and calls only from the core principals it is
configured with, keeps the channel key the core hands over at registration,
checks the signature, freshness and uniqueness of every request and decrypts
it (securecore.crypto.channel),
signs and encrypts every answer, and answers the core's encryption test
(`securecore.ping`) and health checks. `register_with_core` asks the core to
register the plugin (the five steps run on the core, which calls back).
"""

from securecore.plugin_sdk.server import PluginError, PluginServer, register_with_core

__all__ = ["PluginError", "PluginServer", "register_with_core"]
