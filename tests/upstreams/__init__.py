"""Real HTTP servers on loopback that stand in for upstream providers in tests and benchmarks."""
