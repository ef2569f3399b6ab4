"""Failure drills: the baked project on real Postgres, Redis and worker pools, broken on purpose."""
