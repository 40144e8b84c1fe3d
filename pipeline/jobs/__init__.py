"""The jobs: each builds its options' plan and its graph, and runs it through pipeline/staged.py."""
