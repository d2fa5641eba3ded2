"""Sessions: ES256 access tokens signed on the HSM, rotating refresh tokens, revocation."""
