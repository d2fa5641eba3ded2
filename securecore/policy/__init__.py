"""The policy engine in the request path: ACL, intrusion detection, rate limits, trust."""
