from spikect.cli import run

run()
