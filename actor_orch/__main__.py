"""`python -m actor_orch ...` is the same command as `actor-orch ...` (see `actor_orch.cli`)."""

from actor_orch.cli import main

# Guarded so that importing this module (doctest collection, tooling) runs nothing.
if __name__ == "__main__":
    raise SystemExit(main())
