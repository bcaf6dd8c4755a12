"""Entry point of the worker processes started by :mod:`dft.runner` (``python -m dft._worker FD``)."""

from dft.runner import worker_entry

if __name__ == "__main__":
    worker_entry()
