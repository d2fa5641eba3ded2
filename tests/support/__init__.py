"""What the tests share: helpers to run the project's commands, development servers,
PostgreSQL and SoftHSM set-ups, and the way to reach the lab hosts. Test modules
import from here (or get fixtures from a conftest.py), never from each other."""
