"""The influence job's pieces: reading projections (projections), scores, top-k, and the Beam steps that join them (steps)."""
