"""Cryptography of the core service: envelope encryption and signatures over the key ring."""
